//! Overload protection: past a limit the registry answers at once with 503 and
//! `Retry-After` (or 429 for a client over its write rate) instead of queueing
//! work until everything is slow.
//!
//! - Requests in flight and watchers (blocking queries and event streams) have
//!   separate caps, so thousands of idle watchers never starve writes and a burst
//!   of writes never closes watches.
//! - Writes can be rate-limited per client IP (a token bucket each).
//! - A request that is not a watch gets a deadline once its body is in; the body
//!   has its own, shorter one, and no slot is held while it arrives.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::gate::{Style, refuse};
use super::{ApiError, AppState, is_consul};

/// Overload settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitConfig {
    /// Requests in flight at once, watches excluded.
    pub max_requests: usize,
    /// Blocking queries and event streams open at once.
    pub max_watchers: usize,
    /// Writes per second per client IP (burst: twice that); 0 is no limit.
    pub write_rate: f64,
    /// Deadline of a request that is not a watch, from the moment its body
    /// has arrived.
    pub request_timeout: Duration,
    /// Time a client has to send a request's body once its headers are in;
    /// 408 past it.
    pub body_timeout: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            max_requests: 1024,
            max_watchers: 16_384,
            write_rate: 0.0,
            request_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(10),
        }
    }
}

/// The shared state of the limits.
#[derive(Debug)]
pub struct Limiter {
    config: LimitConfig,
    requests: Arc<Semaphore>,
    watchers: Arc<Semaphore>,
    buckets: DashMap<IpAddr, (f64, Instant)>,
}

/// Most client IPs tracked for write rates; past it, idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

impl Limiter {
    /// Limits per `config`.
    pub fn new(config: LimitConfig) -> Self {
        Limiter {
            requests: Arc::new(Semaphore::new(config.max_requests.max(1))),
            watchers: Arc::new(Semaphore::new(config.max_watchers.max(1))),
            buckets: DashMap::new(),
            config,
        }
    }

    /// Takes one write token for `ip`; false when it has none left.
    fn allow_write(&self, ip: IpAddr, now: Instant) -> bool {
        let rate = self.config.write_rate;
        if rate <= 0.0 {
            return true;
        }
        let burst = rate * 2.0;
        if self.buckets.len() > MAX_BUCKETS {
            // Buckets full again after a second of silence carry no state.
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + rate * now.duration_since(*at).as_secs_f64() < burst
            });
        }
        let mut entry = self.buckets.entry(ip).or_insert((burst, now));
        let (tokens, at) = &mut *entry;
        *tokens = (*tokens + rate * now.duration_since(*at).as_secs_f64()).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new(LimitConfig::default())
    }
}

/// Whether a request writes (is rate-limited per address, and is given its
/// caller's address by the server: `serve.rs`).
pub(super) fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a request is a watch: an event stream, or a blocking query
/// (`?index=` on a GET). Watches take a watcher's slot, not a request's.
pub(super) fn is_watch(req: &Request) -> bool {
    let path = req.uri().path();
    if path == "/v1/watch" || path.ends_with("/watch") {
        return true;
    }
    req.method() == Method::GET
        && req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("index=")))
}

/// A concurrency slot a request holds while it runs.
#[derive(Debug)]
pub(super) enum Slot {
    /// None needed (probes, peers).
    Free,
    /// One of `max_requests`.
    Request(#[allow(dead_code)] OwnedSemaphorePermit),
    /// One of `max_watchers`, held while the response streams.
    Watcher(OwnedSemaphorePermit),
}

impl Limiter {
    /// The settings.
    pub fn config(&self) -> &LimitConfig {
        &self.config
    }

    /// A request's slot, or the 503 that says there is none.
    pub(super) fn request(&self) -> Result<Slot, ApiError> {
        self.requests
            .clone()
            .try_acquire_owned()
            .map(Slot::Request)
            .map_err(|_| {
                ApiError::overloaded(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many requests in flight; retry shortly",
                )
            })
    }

    /// A watcher's slot, or the 503 that says there is none.
    pub(super) fn watcher(&self) -> Result<Slot, ApiError> {
        self.watchers
            .clone()
            .try_acquire_owned()
            .map(Slot::Watcher)
            .map_err(|_| {
                ApiError::overloaded(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many watchers open; retry shortly",
                )
            })
    }
}

/// Most bytes of request headers, names and values together.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The checks in front of every route (and of the 404s), run first by each
/// group's gate (`gate.rs`) and by the router's fallbacks: headers over their
/// limit, and writes over the client's rate. `None` lets the request on.
/// Slots are taken by the gate, once the request's body has arrived.
pub(super) fn refusal(state: &AppState, req: &Request) -> Option<Response> {
    let path = req.uri().path();
    if matches!(path, "/health" | "/ready" | "/metrics") {
        return None;
    }
    let style = if is_consul(path) {
        Style::Consul
    } else {
        Style::Native
    };
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return Some(refuse(style, ApiError::headers_too_large(MAX_HEADER_BYTES)));
    }
    if is_write(req.method())
        && let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>()
        && !state.limiter.allow_write(peer.ip(), Instant::now())
    {
        return Some(refuse(
            style,
            ApiError::overloaded(
                StatusCode::TOO_MANY_REQUESTS,
                "too many writes from this address; slow down",
            ),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_with_a_503_and_retry_after() {
        let l = Limiter::new(LimitConfig {
            max_requests: 1,
            max_watchers: 1,
            ..LimitConfig::default()
        });
        let held = l.request().unwrap();
        let refused = l.request().unwrap_err();
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(refused.retry_after_secs(), Some(1));
        let watching = l.watcher().unwrap();
        assert!(l.watcher().is_err(), "watchers have their own cap");
        drop(held);
        assert!(
            l.request().is_ok(),
            "a slot comes back when its request ends"
        );
        drop(watching);
    }

    #[tokio::test(start_paused = true)]
    async fn write_buckets_refill_with_time() {
        let l = Limiter::new(LimitConfig {
            write_rate: 5.0,
            ..LimitConfig::default()
        });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| l.allow_write(a, t0)).count();
        assert_eq!(allowed, 10, "a burst of twice the rate");
        assert!(l.allow_write(b, t0), "another address has its own bucket");
        assert!(!l.allow_write(a, t0 + Duration::from_millis(100)));
        assert!(
            l.allow_write(a, t0 + Duration::from_millis(300)),
            "refilled"
        );
    }
}
