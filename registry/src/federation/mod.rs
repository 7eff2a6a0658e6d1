//! Federation: this datacenter and the others it knows.
//!
//! Each datacenter is its own cluster and the only authority on its catalog.
//! Between datacenters only reads travel: queries forwarded with `?dc=`
//! (blocking queries and event streams proxied as they are), failover answers
//! for services with no healthy local instance, and probes. Writes are never
//! replicated; a write with another `?dc=` is forwarded once, on the caller's
//! token, when that token may cross datacenters.
//!
//! Every call to another datacenter carries the federation token and the
//! sender's name ([`TOKEN_HEADER`], [`FORWARDED_HEADER`]). A receiving node
//! refuses such a call without the right token, answers it from its own
//! catalog only (no failover), and never forwards it again: so a loop of
//! misconfigured datacenters costs one refused call, not a storm.
//!
//! Pieces: [`pool`] (a remote datacenter's servers, circuit and in-flight
//! bound), `probe` (the periodic, jittered prober) and [`failover`] (the
//! remote answers a failover needs, each kept fresh by a blocking-query
//! poller that lives only while someone asks).

pub mod failover;
pub mod pool;
mod probe;

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::FederationConfig;
pub use failover::{Failover, RemoteAnswer};
pub use pool::{CircuitState, RemoteDc};
pub(crate) use probe::read_limited as read_body;

/// Header carrying the federation token on calls between datacenters.
pub const TOKEN_HEADER: &str = "x-roster-federation-token";
/// Header naming the datacenter that forwarded a call.
pub const FORWARDED_HEADER: &str = "x-roster-forwarded-dc";

/// Why a call to another datacenter failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// Recent calls and probes all failed: this one was not even tried.
    #[error(
        "datacenter {dc:?} is unreachable: its circuit is open after {failures} failed calls or probes; retry in {retry_secs}s"
    )]
    CircuitOpen {
        /// The datacenter.
        dc: String,
        /// Consecutive failures.
        failures: u32,
        /// Seconds until a trial call.
        retry_secs: u32,
    },
    /// Too many calls to it are in flight.
    #[error("datacenter {dc:?} has {limit} calls in flight already")]
    Overloaded {
        /// The datacenter.
        dc: String,
        /// The bound.
        limit: usize,
    },
    /// No server answered in time.
    #[error("datacenter {dc:?} did not answer within {}", roster_api::duration::format(*timeout))]
    Timeout {
        /// The datacenter.
        dc: String,
        /// The bound.
        timeout: Duration,
    },
    /// Every server refused or dropped the connection.
    #[error("datacenter {dc:?}: no server answered ({last})")]
    Unreachable {
        /// The datacenter.
        dc: String,
        /// The last server's error.
        last: String,
    },
    /// It answered with an error status.
    #[error("datacenter {dc:?} answered {status}: {detail}")]
    Refused {
        /// The datacenter.
        dc: String,
        /// The HTTP status.
        status: u16,
        /// The start of its body.
        detail: String,
    },
    /// It answered something that is not what was asked for.
    #[error("datacenter {dc:?} answered something unreadable: {detail}")]
    Garbage {
        /// The datacenter.
        dc: String,
        /// What was wrong.
        detail: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the federation HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The peer TLS files could not be loaded.
    #[error("federation TLS: {0}")]
    Tls(#[from] crate::http::serve::TlsError),
}

/// This node's view of the federation.
#[derive(Debug)]
pub struct Federation {
    local: String,
    token: String,
    remotes: Vec<Arc<RemoteDc>>,
    http: reqwest::Client,
    timeout: Duration,
    probe_interval: Duration,
    failover: Failover,
}

impl Federation {
    /// The federation of `config` seen from datacenter `local`; pollers stop
    /// when `shutdown` is cancelled.
    pub fn new(
        config: &FederationConfig,
        local: &str,
        shutdown: CancellationToken,
    ) -> Result<Arc<Federation>, FederationError> {
        let remotes: Vec<Arc<RemoteDc>> = config
            .remotes
            .iter()
            .map(|r| Arc::new(RemoteDc::new(&r.name, &r.servers, config.probe_interval)))
            .collect();
        let mut builder = reqwest::Client::builder()
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            // Answers are proxied as they are; a redirect would send the
            // token to a host nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            // Proxied answers and watches keep the HTTP/1.1 they were
            // measured with.
            .http1_only();
        if let Some(tls) = &config.tls {
            builder = builder.tls_backend_preconfigured(tls.client_config()?);
        }
        let http = builder.build().map_err(FederationError::Client)?;
        let failover = Failover::new(
            config.failover.clone(),
            remotes.clone(),
            http.clone(),
            local,
            &config.token,
            config.timeout,
            shutdown,
        );
        Ok(Arc::new(Federation {
            local: local.to_owned(),
            token: config.token.clone(),
            remotes,
            http,
            timeout: config.timeout,
            probe_interval: config.probe_interval,
            failover,
        }))
    }

    /// Starts one prober per remote datacenter.
    pub fn start(
        self: &Arc<Self>,
        tasks: &mut JoinSet<std::io::Result<()>>,
        shutdown: &CancellationToken,
    ) {
        for dc in &self.remotes {
            let prober = probe::Prober {
                dc: dc.clone(),
                http: self.http.clone(),
                local: self.local.clone(),
                token: self.token.clone(),
                timeout: self.timeout,
                interval: self.probe_interval,
            };
            tasks.spawn(prober.run(shutdown.clone()));
        }
        if !self.remotes.is_empty() {
            tracing::info!(
                datacenters = ?self.remotes.iter().map(|r| &r.name).collect::<Vec<_>>(),
                "federated with other datacenters"
            );
        }
    }

    /// This node's datacenter.
    pub fn local(&self) -> &str {
        &self.local
    }

    /// The remote datacenter `name`, if configured.
    pub fn remote(&self, name: &str) -> Option<&Arc<RemoteDc>> {
        self.remotes.iter().find(|r| r.name == name)
    }

    /// Every remote datacenter, in configuration order.
    pub fn remotes(&self) -> &[Arc<RemoteDc>] {
        &self.remotes
    }

    /// Every known datacenter name, local first.
    pub fn names(&self) -> Vec<&str> {
        std::iter::once(self.local.as_str())
            .chain(self.remotes.iter().map(|r| r.name.as_str()))
            .collect()
    }

    /// The HTTP client of calls to other datacenters.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The bound of a call that is not a watch.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The failover resolver.
    pub fn failover(&self) -> &Failover {
        &self.failover
    }

    /// Whether `given` is the federation token (constant time).
    pub fn token_matches(&self, given: &[u8]) -> bool {
        crate::acl::secrets_equal(given, self.token.as_bytes())
    }

    /// The headers every call to another datacenter carries.
    pub fn call_headers(&self) -> reqwest::header::HeaderMap {
        federation_headers(&self.token, &self.local)
    }

    /// The datacenters as `GET /v1/datacenters` lists them: the local one
    /// first, then the others by RTT (unmeasured ones last, by name).
    pub fn status(&self) -> Vec<roster_api::Datacenter> {
        let mut remotes: Vec<roster_api::Datacenter> =
            self.remotes.iter().map(|dc| describe(dc)).collect();
        remotes.sort_by(|a, b| {
            let key = |d: &roster_api::Datacenter| d.rtt_ms.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b)).then_with(|| a.name.cmp(&b.name))
        });
        let mut out = vec![local_dc(&self.local)];
        out.extend(remotes);
        out
    }

    /// Names of remote datacenters that are down now.
    pub fn down(&self) -> Vec<&str> {
        self.remotes
            .iter()
            .filter(|dc| dc.probed.load(Ordering::Relaxed) && !dc.up())
            .map(|dc| dc.name.as_str())
            .collect()
    }

    /// Prometheus lines, one series per remote datacenter.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let mut family =
            |name: &str, help: &str, kind: &str, value: &dyn Fn(&RemoteDc) -> String| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for dc in &self.remotes {
                    let _ = writeln!(out, "{name}{{dc=\"{}\"}} {}", dc.name, value(dc));
                }
            };
        family(
            "roster_federation_datacenter_up",
            "1 while some server of the remote datacenter answers probes and its circuit is not open.",
            "gauge",
            &|dc| u8::from(dc.up()).to_string(),
        );
        family(
            "roster_federation_rtt_seconds",
            "Smoothed probe round-trip time of the remote datacenter's best server (NaN before one answered).",
            "gauge",
            &|dc| {
                dc.rtt()
                    .map_or("NaN".into(), |r| r.as_secs_f64().to_string())
            },
        );
        family(
            "roster_federation_circuit_open",
            "1 while calls to the remote datacenter fail at once (until a probe succeeds).",
            "gauge",
            &|dc| u8::from(dc.circuit_state() == CircuitState::Open).to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP roster_federation_calls_total Calls to remote datacenters by result: ok (an HTTP answer), failed (on the wire), fast_failed (refused at once by the circuit or the in-flight bound).\n# TYPE roster_federation_calls_total counter"
        );
        for dc in &self.remotes {
            for (result, n) in [
                ("ok", &dc.counts.ok),
                ("failed", &dc.counts.failed),
                ("fast_failed", &dc.counts.fast_failed),
            ] {
                let _ = writeln!(
                    out,
                    "roster_federation_calls_total{{dc=\"{}\",result=\"{result}\"}} {}",
                    dc.name,
                    n.load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(&self.failover.metrics_text());
        out
    }
}

/// The headers of a call from `local` carrying `token`.
pub(crate) fn federation_headers(token: &str, local: &str) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Ok(v) = reqwest::header::HeaderValue::from_str(token) {
        h.insert(TOKEN_HEADER, v);
    }
    if let Ok(v) = reqwest::header::HeaderValue::from_str(local) {
        h.insert(FORWARDED_HEADER, v);
    }
    h
}

/// The local datacenter's row.
pub fn local_dc(name: &str) -> roster_api::Datacenter {
    roster_api::Datacenter {
        name: name.to_owned(),
        local: true,
        state: "up".into(),
        circuit: None,
        rtt_ms: None,
        servers: Vec::new(),
    }
}

fn describe(dc: &RemoteDc) -> roster_api::Datacenter {
    let ms = |us: u64| (us > 0).then(|| (us as f64 / 1000.0 * 100.0).round() / 100.0);
    roster_api::Datacenter {
        name: dc.name.clone(),
        local: false,
        state: if !dc.probed.load(Ordering::Relaxed) {
            "unknown"
        } else if dc.up() {
            "up"
        } else {
            "down"
        }
        .into(),
        circuit: Some(dc.circuit_state().as_str().into()),
        rtt_ms: dc.rtt().and_then(|r| ms(r.as_micros() as u64)),
        servers: dc
            .servers
            .iter()
            .map(|s| roster_api::DatacenterServer {
                address: s.server.authority(),
                healthy: s.healthy.load(Ordering::Relaxed),
                rtt_ms: ms(s.rtt_us.load(Ordering::Relaxed)),
                error: s.error.lock().ok().and_then(|e| e.clone()),
            })
            .collect(),
    }
}
