//! `roster agent`: a sidecar or host registrar for processes that cannot
//! register themselves.
//!
//! It reads a TOML file of services, registers each with a lease it keeps
//! alive (the client library's [`Registration`]: heartbeats, registering again
//! when the registry forgets), runs each service's checks locally (HTTP, TCP,
//! gRPC; no scripts), reports their results as TTL checks, deregisters
//! everything on shutdown, and applies an edited file on SIGHUP without a
//! restart: only the services that changed are touched.
//!
//! ```toml
//! [[service]]
//! name = "billing"
//! id = "billing-1"          # default: NAME-HOSTNAME
//! address = "10.0.0.5"      # default: the address the registry sees
//! port = 8080
//! tags = ["v1"]
//! ttl = "15s"               # the lease (default 15s)
//!
//!   [[service.check]]
//!   http = "http://127.0.0.1:8080/health"
//!   interval = "5s"
//!   failures_before_critical = 3
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use roster_api::{BatchOp, CheckDefinition, Health, RegisterRequest, duration};
use roster_client::{Registration, RosterClient};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use roster_registry::checks::probe::{ProbeResult, Prober};
use roster_registry::checks::{CheckSpec, Flap};
use roster_registry::model::Limits;

/// One service of the agent's file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceEntry {
    /// Service name.
    pub name: String,
    /// Instance id (default `NAME-HOSTNAME`).
    #[serde(default)]
    pub id: Option<String>,
    /// Address (default: the one the registry sees the agent at).
    #[serde(default)]
    pub address: Option<String>,
    /// Port.
    pub port: u16,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Lease length (default 15s).
    #[serde(default, with = "duration::option")]
    pub ttl: Option<Duration>,
    /// Checks the agent runs locally: `http`, `tcp` or `grpc`.
    #[serde(default)]
    pub check: Vec<CheckDefinition>,
}

/// Why the agent's file was refused, or a service could not be kept
/// registered.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file was read and is wrong.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong in it.
        #[source]
        source: Box<AgentError>,
    },
    /// Not TOML, or not the agent file's shape (an unknown field, a wrong
    /// type).
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
    /// A check definition the server would refuse too.
    #[error("service {service:?}: {source}")]
    Check {
        /// The service it belongs to.
        service: String,
        /// The field and what is wrong with it.
        #[source]
        source: roster_registry::model::FieldError,
    },
    /// A TTL check: somebody else would have to report it.
    #[error(
        "service {service:?}: check {check:?} is a ttl check; the agent runs http, tcp and grpc checks"
    )]
    TtlCheck {
        /// The service it belongs to.
        service: String,
        /// The check's id.
        check: String,
    },
    /// Two services with the same instance id.
    #[error("instance id {0:?} is used twice")]
    DuplicateId(String),
    /// The registry refused or could not take the registration.
    #[error(transparent)]
    Register(#[from] roster_client::Error),
    /// SIGHUP (reload) could not be listened for.
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(#[source] std::io::Error),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    #[serde(default)]
    service: Vec<ServiceEntry>,
}

impl ServiceEntry {
    /// The instance id.
    pub fn instance_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("{}-{}", self.name, host_name()))
    }

    /// The local checks, validated; only checks the agent can run.
    fn specs(&self) -> Result<Vec<CheckSpec>, AgentError> {
        let specs =
            CheckSpec::parse_all(self.check.clone(), &Limits::default()).map_err(|source| {
                AgentError::Check {
                    service: self.name.clone(),
                    source,
                }
            })?;
        if let Some(ttl) = specs.iter().find(|s| !s.is_active()) {
            return Err(AgentError::TtlCheck {
                service: self.name.clone(),
                check: ttl.id.to_string(),
            });
        }
        Ok(specs)
    }

    /// The registration: the lease, and one TTL check per local check, due
    /// within three of its intervals plus its timeout (at least 1 s).
    fn request(&self, specs: &[CheckSpec]) -> RegisterRequest {
        RegisterRequest {
            address: self.address.clone(),
            port: self.port,
            tags: self.tags.clone(),
            meta: self.meta.clone(),
            ttl: Some(self.ttl.unwrap_or(Duration::from_secs(15))),
            checks: specs
                .iter()
                .map(|s| CheckDefinition {
                    id: Some(s.id.to_string()),
                    name: s.name.clone().or_else(|| s.target_text()),
                    notes: Some(format!("run by roster agent: {}", s.target)),
                    ttl: Some((s.interval * 3 + s.timeout).max(Duration::from_secs(1))),
                    ..CheckDefinition::default()
                })
                .collect(),
            ..RegisterRequest::default()
        }
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "agent".into())
}

/// Reads and validates the agent's file.
pub fn load(path: &Path) -> Result<Vec<ServiceEntry>, AgentError> {
    let text = std::fs::read_to_string(path).map_err(|source| AgentError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|e| AgentError::Invalid {
        path: path.to_owned(),
        source: Box::new(e),
    })
}

/// Parses and validates the text of an agent file.
pub fn parse(text: &str) -> Result<Vec<ServiceEntry>, AgentError> {
    let file: AgentFile = toml::from_str(text)?;
    let mut ids = std::collections::BTreeSet::new();
    for entry in &file.service {
        entry.specs()?;
        if !ids.insert(entry.instance_id()) {
            return Err(AgentError::DuplicateId(entry.instance_id()));
        }
    }
    Ok(file.service)
}

/// One registered service and its check loops.
#[derive(Debug)]
struct Running {
    entry: ServiceEntry,
    registration: Registration,
    checks: JoinSet<()>,
}

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    client: RosterClient,
    prober: Arc<dyn Prober>,
    running: BTreeMap<String, Running>,
}

impl Agent {
    /// An agent with nothing registered yet.
    pub fn new(client: RosterClient, prober: Arc<dyn Prober>) -> Agent {
        Agent {
            client,
            prober,
            running: BTreeMap::new(),
        }
    }

    /// Ids of the instances it keeps registered.
    pub fn instances(&self) -> Vec<String> {
        self.running.keys().cloned().collect()
    }

    /// Brings the registered services in line with `entries`: deregisters the
    /// ones gone, registers new ones, re-registers changed ones, leaves the
    /// rest alone. Returns the first error; the other services are still
    /// applied.
    pub async fn apply(&mut self, entries: Vec<ServiceEntry>) -> Result<(), AgentError> {
        let wanted: BTreeMap<String, ServiceEntry> =
            entries.into_iter().map(|e| (e.instance_id(), e)).collect();
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(id, r)| wanted.get(*id) != Some(&r.entry))
            .map(|(id, _)| id.clone())
            .collect();
        let stopping: Vec<Running> = stale
            .iter()
            .filter_map(|id| self.running.remove(id))
            .collect();
        stop_all(&self.client, stopping).await;
        let mut first_error = None;
        // Every new service's checks are validated first; the valid ones are
        // registered together, in as few requests as the registry allows.
        let mut new = Vec::new();
        for (id, entry) in wanted {
            if self.running.contains_key(&id) {
                continue;
            }
            match entry.specs() {
                Ok(specs) => {
                    let request = entry.request(&specs);
                    new.push((id, entry, specs, request));
                }
                Err(e) => {
                    tracing::error!(instance = %id, error = %e, "agent: cannot register");
                    first_error.get_or_insert(e);
                }
            }
        }
        let ops: Vec<BatchOp> = new
            .iter()
            .map(|(id, entry, _, request)| BatchOp::register(&entry.name, id, request.clone()))
            .collect();
        let results = self.client.batch_each(&ops).await;
        for ((id, entry, specs, request), result) in new.into_iter().zip(results) {
            match result {
                Ok(()) => {
                    let running = self.start(&id, entry, specs, request);
                    self.running.insert(id, running);
                }
                Err(e) => {
                    let e = AgentError::from(e);
                    tracing::error!(instance = %id, error = %e, "agent: cannot register");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Keeps a registered service alive and starts its check loops.
    fn start(
        &self,
        id: &str,
        entry: ServiceEntry,
        specs: Vec<CheckSpec>,
        request: RegisterRequest,
    ) -> Running {
        let registration = Registration::adopt(self.client.clone(), &entry.name, id, request);
        let mut checks = JoinSet::new();
        for spec in specs {
            checks.spawn(check_loop(
                self.client.clone(),
                self.prober.clone(),
                entry.name.clone(),
                id.to_owned(),
                spec,
            ));
        }
        tracing::info!(service = %entry.name, instance = %id, "agent: registered");
        Running {
            entry,
            registration,
            checks,
        }
    }

    /// Deregisters everything.
    pub async fn shutdown(mut self) {
        let all = std::mem::take(&mut self.running).into_values().collect();
        stop_all(&self.client, all).await;
    }

    /// Runs until `cancel`: applies `path` now and again on every SIGHUP (a
    /// broken file is logged and the running services kept), then deregisters.
    pub async fn run(mut self, path: &Path, cancel: CancellationToken) -> Result<(), AgentError> {
        // Listen before registering anything, so a SIGHUP sent once the
        // services show up can never hit the default action (exit).
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(AgentError::Signal)?;
        self.apply(load(path)?).await?;
        loop {
            #[cfg(unix)]
            let hangup = hup.recv();
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = hangup => match load(path) {
                    Ok(entries) => {
                        if let Err(e) = self.apply(entries).await {
                            tracing::error!(error = %e, "agent: reload incomplete");
                        } else {
                            tracing::info!(instances = self.running.len(), "agent: reloaded");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "agent: reload refused; keeping the running services"),
                },
            }
        }
        self.shutdown().await;
        Ok(())
    }
}

/// Stops the services' checks and heartbeats, then deregisters them
/// together.
async fn stop_all(client: &RosterClient, running: Vec<Running>) {
    let mut ops = Vec::with_capacity(running.len());
    for mut r in running {
        r.checks.abort_all();
        ops.push(BatchOp::deregister(&r.entry.name, &r.entry.instance_id()));
        r.registration.detach().await;
    }
    for (op, result) in ops.iter().zip(client.batch_each(&ops).await) {
        if let Err(e) = result {
            tracing::warn!(instance = %op.id(), error = %e, "agent: deregistration failed");
        }
    }
}

/// Probes one check every interval and reports the status its thresholds
/// allow; an unchanged status is reported again, which keeps the registry's
/// TTL check alive.
async fn check_loop(
    client: RosterClient,
    prober: Arc<dyn Prober>,
    service: String,
    id: String,
    spec: CheckSpec,
) {
    let mut flap = Flap::default();
    let mut reported: Option<(Health, String)> = None;
    let mut tick = tokio::time::interval(spec.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let result = match tokio::time::timeout(spec.timeout, prober.probe(&spec)).await {
            Ok(r) => r,
            Err(_) => ProbeResult {
                status: Health::Critical,
                output: format!("timed out after {}", duration::format(spec.timeout)),
            },
        };
        if let Some(status) = flap.observe_spec(result.status, &spec) {
            reported = Some((status, result.output));
        }
        let Some((status, output)) = &reported else {
            continue;
        };
        if let Err(e) = client
            .report_check(&service, &id, &spec.id, *status, output)
            .await
        {
            tracing::debug!(instance = %id, check = %spec.id, error = %e, "agent: report failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_validated() {
        let ok = parse(
            r#"
            [[service]]
            name = "billing"
            id = "b-1"
            port = 8080
            ttl = "10s"
              [[service.check]]
              http = "http://127.0.0.1:8080/health"
              interval = "2s"
              timeout = "1s"
            "#,
        )
        .unwrap();
        let req = ok[0].request(&ok[0].specs().unwrap());
        assert_eq!(req.ttl, Some(Duration::from_secs(10)));
        assert_eq!(req.checks[0].id.as_deref(), Some("http"));
        assert_eq!(req.checks[0].ttl, Some(Duration::from_secs(7)));
        for (text, needle) in [
            (
                "[[service]]\nname = \"a\"\nport = 1\n[[service.check]]\nttl = \"5s\"\n",
                "ttl check",
            ),
            (
                "[[service]]\nname = \"a\"\nport = 1\ncolour = 2\n",
                "unknown field",
            ),
            (
                "[[service]]\nname = \"a\"\nid = \"x\"\nport = 1\n[[service]]\nname = \"b\"\nid = \"x\"\nport = 2\n",
                "twice",
            ),
            (
                "[[service]]\nname = \"a\"\nport = 1\n[[service.check]]\ntcp = \"nohost\"\n",
                "tcp",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
