//! Overload protection: past a limit the registry answers at once with 503 and
//! `Retry-After` (or 429 for a client over its write rate) instead of queueing
//! work until everything is slow.
//!
//! - Requests in flight and watchers (blocking queries and event streams) have
//!   separate caps, so thousands of idle watchers never starve writes and a burst
//!   of writes never closes watches.
//! - Writes can be rate-limited per client IP (a token bucket each).
//! - A request that is not a watch gets a deadline.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use dashmap::DashMap;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::AppState;
use super::auth::is_consul;

/// Overload settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LimitConfig {
    /// Requests in flight at once, watches excluded.
    pub max_requests: usize,
    /// Blocking queries and event streams open at once.
    pub max_watchers: usize,
    /// Writes per second per client IP (burst: twice that); 0 is no limit.
    pub write_rate: f64,
    /// Deadline of a request that is not a watch.
    pub request_timeout: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig {
            max_requests: 1024,
            max_watchers: 16_384,
            write_rate: 0.0,
            request_timeout: Duration::from_secs(30),
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

fn is_watch(req: &Request) -> bool {
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

fn refuse(path: &str, status: StatusCode, detail: &str) -> Response {
    let mut resp = if is_consul(path) {
        (status, detail.to_owned()).into_response()
    } else {
        let problem = roster_client::api::Problem {
            kind: "urn:roster:problem:overloaded".into(),
            title: if status == StatusCode::TOO_MANY_REQUESTS {
                "Too many writes".into()
            } else {
                "Overloaded".into()
            },
            status: status.as_u16(),
            detail: detail.to_owned(),
            field: None,
        };
        let mut r = (status, serde_json::to_vec(&problem).expect("serializes")).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        r
    };
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// The middleware.
pub(super) async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if matches!(path.as_str(), "/health" | "/ready" | "/metrics") {
        return next.run(req).await;
    }
    let limiter = &state.limiter;
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if write
        && let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>()
        && !limiter.allow_write(peer.ip(), Instant::now())
    {
        return refuse(
            &path,
            StatusCode::TOO_MANY_REQUESTS,
            "too many writes from this address; slow down",
        );
    }
    if is_watch(&req) {
        let Ok(permit) = limiter.watchers.clone().try_acquire_owned() else {
            return refuse(
                &path,
                StatusCode::SERVICE_UNAVAILABLE,
                "too many watchers open; retry shortly",
            );
        };
        let resp = next.run(req).await;
        // The slot is held while the body streams, not only while the handler runs.
        return resp.map(|body| {
            Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _held = &permit;
                chunk
            }))
        });
    }
    let Ok(_permit) = limiter.requests.clone().try_acquire_owned() else {
        return refuse(
            &path,
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in flight; retry shortly",
        );
    };
    match tokio::time::timeout(limiter.config.request_timeout, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => refuse(
            &path,
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long; retry shortly",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
