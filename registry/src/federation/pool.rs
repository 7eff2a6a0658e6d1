//! One remote datacenter: its servers with what the prober last measured, the
//! circuit that makes calls to a dead datacenter fail at once, and the bound
//! on calls in flight, so a datacenter that hangs cannot pile up connections
//! or tasks here.
//!
//! The circuit opens after [`OPEN_AFTER`] consecutive failed calls or probe
//! rounds, and only a successful probe (or call already in flight) closes
//! it: the prober asks every probe interval anyway, so no caller's request
//! is ever spent as a trial against a datacenter known to be down.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use reqwest::header::HeaderMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::FederationError;
use crate::config::RemoteServer;

/// Consecutive failed calls (or probe rounds) that open a circuit.
pub const OPEN_AFTER: u32 = 3;
/// Most calls in flight to one datacenter (watches included); more fail at once.
pub const MAX_IN_FLIGHT: usize = 512;

/// One configured server and what the prober last saw of it.
#[derive(Debug)]
pub struct ServerState {
    /// As configured.
    pub server: RemoteServer,
    /// `scheme://host:port`.
    pub base: String,
    /// The last probe succeeded (true until a probe says otherwise, so the
    /// first calls need not wait for the prober).
    pub healthy: AtomicBool,
    /// Smoothed probe RTT in microseconds; 0 before the first answer.
    pub rtt_us: AtomicU64,
    /// Why the last probe failed.
    pub error: Mutex<Option<String>>,
}

/// Whether calls go through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    /// Calls go through.
    Closed,
    /// Calls fail at once, until a probe succeeds.
    Open,
}

impl CircuitState {
    /// As `/v1/datacenters` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
        }
    }
}

#[derive(Debug)]
struct Circuit {
    failures: u32,
    open: bool,
}

/// Counters of calls, for `/metrics`.
#[derive(Debug, Default)]
pub struct CallCounts {
    /// Calls that got an HTTP answer.
    pub ok: AtomicU64,
    /// Calls that failed on the wire (refused, reset, timed out).
    pub failed: AtomicU64,
    /// Calls refused at once by the open circuit or the in-flight bound.
    pub fast_failed: AtomicU64,
}

/// A remote datacenter.
#[derive(Debug)]
pub struct RemoteDc {
    /// Its name.
    pub name: String,
    /// Its servers.
    pub servers: Vec<ServerState>,
    circuit: Mutex<Circuit>,
    /// How often the prober asks: when an open circuit may close.
    probe_interval: Duration,
    in_flight: Arc<Semaphore>,
    /// Call counters.
    pub counts: CallCounts,
    /// A probe round has finished.
    pub probed: AtomicBool,
}

impl RemoteDc {
    /// A datacenter of `servers`, probed every `probe_interval`.
    pub fn new(name: &str, servers: &[RemoteServer], probe_interval: Duration) -> RemoteDc {
        RemoteDc {
            name: name.to_owned(),
            servers: servers
                .iter()
                .map(|s| ServerState {
                    base: s.base_url(),
                    server: s.clone(),
                    healthy: AtomicBool::new(true),
                    rtt_us: AtomicU64::new(0),
                    error: Mutex::new(None),
                })
                .collect(),
            circuit: Mutex::new(Circuit {
                failures: 0,
                open: false,
            }),
            probe_interval,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            counts: CallCounts::default(),
            probed: AtomicBool::new(false),
        }
    }

    fn circuit(&self) -> std::sync::MutexGuard<'_, Circuit> {
        self.circuit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The circuit's state now.
    pub fn circuit_state(&self) -> CircuitState {
        if self.circuit().open {
            CircuitState::Open
        } else {
            CircuitState::Closed
        }
    }

    /// A call or probe reached the datacenter.
    pub fn success(&self) {
        let mut c = self.circuit();
        if c.open {
            tracing::info!(dc = %self.name, "datacenter reachable again: circuit closed");
        }
        c.failures = 0;
        c.open = false;
    }

    /// A call or probe round did not reach the datacenter.
    pub fn failure(&self) {
        let mut c = self.circuit();
        c.failures = c.failures.saturating_add(1);
        if !c.open && c.failures >= OPEN_AFTER {
            tracing::warn!(dc = %self.name, failures = c.failures, "datacenter unreachable: circuit open, calls fail at once until a probe succeeds");
            c.open = true;
        }
    }

    /// Consecutive failures now.
    pub fn failures(&self) -> u32 {
        self.circuit().failures
    }

    /// Seconds until the next probe may close the circuit.
    fn retry_secs(&self) -> u32 {
        u32::try_from(self.probe_interval.as_secs() + 1).unwrap_or(u32::MAX)
    }

    /// Whether some server answered the last probe round.
    pub fn up(&self) -> bool {
        self.servers
            .iter()
            .any(|s| s.healthy.load(Ordering::Relaxed))
            && self.circuit_state() != CircuitState::Open
    }

    /// The best smoothed RTT of a healthy server.
    pub fn rtt(&self) -> Option<Duration> {
        self.servers
            .iter()
            .filter(|s| s.healthy.load(Ordering::Relaxed))
            .map(|s| s.rtt_us.load(Ordering::Relaxed))
            .filter(|us| *us > 0)
            .min()
            .map(Duration::from_micros)
    }

    /// Servers in the order calls try them: healthy ones by RTT, then the rest.
    fn order(&self) -> Vec<&ServerState> {
        let mut v: Vec<&ServerState> = self.servers.iter().collect();
        // Ties (no RTT yet) are broken at random so calls spread.
        fastrand::shuffle(&mut v);
        v.sort_by_key(|s| {
            let rtt = s.rtt_us.load(Ordering::Relaxed);
            (
                !s.healthy.load(Ordering::Relaxed),
                if rtt == 0 { u64::MAX } else { rtt },
            )
        });
        v
    }

    /// Sends a request to one server after another until one answers with
    /// HTTP (any status), within `within` in total for the answer's head.
    /// Fails at once while the circuit is open or too many calls are in
    /// flight. The permit returned must be held while the body is read.
    /// A request is sent to a second server only when the first could not
    /// have received it (connection refused) or it only reads.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path_and_query: &str,
        headers: HeaderMap,
        body: axum::body::Bytes,
        within: Duration,
    ) -> Result<(reqwest::Response, OwnedSemaphorePermit), FederationError> {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            self.counts.fast_failed.fetch_add(1, Ordering::Relaxed);
            return Err(FederationError::Overloaded {
                dc: self.name.clone(),
                limit: MAX_IN_FLIGHT,
            });
        };
        if self.circuit_state() == CircuitState::Open {
            self.counts.fast_failed.fetch_add(1, Ordering::Relaxed);
            return Err(FederationError::CircuitOpen {
                dc: self.name.clone(),
                failures: self.failures(),
                retry_secs: self.retry_secs(),
            });
        }
        let idempotent = matches!(method, reqwest::Method::GET | reqwest::Method::HEAD);
        let deadline = Instant::now() + within;
        let mut last = String::from("no server configured");
        for server in self.order() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let req = http
                .request(method.clone(), format!("{}{path_and_query}", server.base))
                .headers(headers.clone())
                .body(body.clone());
            match tokio::time::timeout(left, req.send()).await {
                Ok(Ok(resp)) => {
                    self.counts.ok.fetch_add(1, Ordering::Relaxed);
                    self.success();
                    return Ok((resp, permit));
                }
                Ok(Err(e)) => {
                    last = format!("{}: {}", server.server.authority(), error_chain(&e));
                    if !(idempotent || e.is_connect()) {
                        break;
                    }
                }
                Err(_) => {
                    last = format!("{}: no answer in time", server.server.authority());
                    if !idempotent {
                        break;
                    }
                }
            }
        }
        self.counts.failed.fetch_add(1, Ordering::Relaxed);
        self.failure();
        if Instant::now() >= deadline {
            return Err(FederationError::Timeout {
                dc: self.name.clone(),
                timeout: within,
            });
        }
        Err(FederationError::Unreachable {
            dc: self.name.clone(),
            last,
        })
    }
}

/// An error with its sources, as one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dc() -> RemoteDc {
        RemoteDc::new(
            "dc2",
            &[RemoteServer {
                host: "127.0.0.1".into(),
                port: 1,
                https: false,
            }],
            Duration::from_secs(1),
        )
    }

    #[test]
    fn circuit_opens_after_failures_and_closes_on_success() {
        let dc = dc();
        assert_eq!(dc.circuit_state(), CircuitState::Closed);
        for _ in 0..OPEN_AFTER - 1 {
            dc.failure();
        }
        assert_eq!(dc.circuit_state(), CircuitState::Closed);
        dc.failure();
        assert_eq!(dc.circuit_state(), CircuitState::Open);
        dc.failure();
        assert_eq!(dc.circuit_state(), CircuitState::Open, "stays open");
        dc.success();
        assert_eq!(dc.circuit_state(), CircuitState::Closed);
        assert_eq!(dc.failures(), 0);
    }

    #[tokio::test]
    async fn an_open_circuit_fails_fast_without_a_call() {
        let dc = dc();
        for _ in 0..OPEN_AFTER {
            dc.failure();
        }
        let err = get_health(&dc).await;
        assert!(matches!(err, FederationError::CircuitOpen { .. }), "{err}");
        assert_eq!(dc.counts.fast_failed.load(Ordering::Relaxed), 1);
        assert_eq!(dc.counts.failed.load(Ordering::Relaxed), 0);
    }

    /// `GET /health` through `dc`, expected to fail.
    async fn get_health(dc: &RemoteDc) -> FederationError {
        dc.send(
            &reqwest::Client::new(),
            reqwest::Method::GET,
            "/health",
            HeaderMap::new(),
            axum::body::Bytes::new(),
            Duration::from_secs(2),
        )
        .await
        .unwrap_err()
    }

    #[tokio::test]
    async fn a_refused_connection_fails_and_counts() {
        let dc = dc();
        let err = get_health(&dc).await;
        assert!(matches!(err, FederationError::Unreachable { .. }), "{err}");
        assert_eq!(dc.counts.failed.load(Ordering::Relaxed), 1);
    }
}
