//! Failover: when the local datacenter has no healthy instance of a service,
//! healthy-only answers come from the first datacenter on the service's list
//! that has some.
//!
//! The remote answers live in a cache, one entry per (datacenter, service),
//! each kept fresh by its own poller: a task that asks the remote datacenter
//! with blocking queries (`?index=&wait=`), so a remote change reaches this
//! node within one round trip, and that lives only while someone asks (it
//! ends [`LINGER`] after the last question). Every change of an entry bumps
//! [`Failover::subscribe`], which is what wakes local blocking queries on a
//! failed-over service.
//!
//! [`Failover::resolve`] (async, may wait a bounded time for a first remote
//! answer) and [`Failover::resolve_now`] (never waits: DNS and xDS) are the
//! one place that decides which datacenter answers. A datacenter that is
//! down (no server answered the last probe round, or its circuit is open)
//! is skipped without a call.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use roster_api::{Health, Instance, ServiceInstances};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::pool::RemoteDc;
use super::probe::read_limited;
use super::{FederationError, federation_headers};
use crate::config::FailoverPolicy;

/// How long a poller lives after the last question about its service.
pub const LINGER: Duration = Duration::from_secs(60);
/// `wait` of a poller's blocking queries.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// Largest remote answer read.
const MAX_ANSWER: usize = 16 << 20;
/// Most instances taken from one remote answer.
const MAX_INSTANCES: usize = 10_000;
/// Most entries, and so pollers, per remote datacenter. Questions about
/// services nobody has (random DNS names, say) would otherwise make this
/// node start a poller, and a WAN call, per name: past the bound a new entry
/// is not made, and the question is answered locally. Half the datacenter's
/// in-flight bound, so pollers never starve `?dc=` calls.
pub const MAX_ENTRIES: usize = super::pool::MAX_IN_FLIGHT / 2;
/// Set in the index of a failover answer, so it never equals a local index
/// (blocking queries compare indexes for equality only). Bit 52, not a higher
/// one: the whole index stays below 2^53, so JavaScript and other readers of
/// JSON numbers as doubles send back exactly the index they got (a rounded
/// one would never match, and their blocking queries would spin).
pub const FAILOVER_INDEX_BIT: u64 = 1 << 52;

/// What one datacenter said about one service: its healthy instances.
#[derive(Clone, Debug, PartialEq)]
pub struct RemoteAnswer {
    /// The datacenter that answered.
    pub datacenter: String,
    /// The service.
    pub service: String,
    /// The remote datacenter's index of the service.
    pub index: u64,
    /// A number that changes with every change of any entry here (never
    /// reused in this process): part of failover indexes.
    pub version: u64,
    /// The healthy instances (passing or warning), by id.
    pub instances: Vec<Instance>,
}

impl RemoteAnswer {
    /// The index a local answer made of this one carries, given the local
    /// service's index: it moves when either moves, and never equals a
    /// plain local index (those stay far below 2^52).
    pub fn failover_index(&self, local_index: u64) -> u64 {
        FAILOVER_INDEX_BIT | (local_index.wrapping_add(self.version) & (FAILOVER_INDEX_BIT - 1))
    }
}

/// The state of one (datacenter, service) entry.
#[derive(Clone, Debug)]
pub enum Slot {
    /// Asked, no answer yet.
    Cold,
    /// The last call failed.
    Down(String),
    /// The last answer.
    Ready(Arc<RemoteAnswer>),
}

#[derive(Debug)]
struct Entry {
    dc: Arc<RemoteDc>,
    service: String,
    slot: watch::Sender<Slot>,
    /// Milliseconds since [`Inner::epoch`] of the last question.
    asked: AtomicU64,
}

#[derive(Debug)]
struct Inner {
    policy: FailoverPolicy,
    remotes: Vec<Arc<RemoteDc>>,
    http: reqwest::Client,
    headers: reqwest::header::HeaderMap,
    timeout: Duration,
    shutdown: CancellationToken,
    entries: Mutex<HashMap<(String, String), Arc<Entry>>>,
    changed: watch::Sender<u64>,
    version: AtomicU64,
    tracker: TaskTracker,
    epoch: Instant,
    /// Failover answers served, per datacenter.
    served: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Entries not made because [`MAX_ENTRIES`] were there.
    refused: AtomicU64,
}

/// The failover resolver (cheap to clone).
#[derive(Clone, Debug)]
pub struct Failover(Arc<Inner>);

impl Failover {
    pub(super) fn new(
        policy: FailoverPolicy,
        remotes: Vec<Arc<RemoteDc>>,
        http: reqwest::Client,
        local: &str,
        token: &str,
        timeout: Duration,
        shutdown: CancellationToken,
    ) -> Failover {
        Failover(Arc::new(Inner {
            policy,
            remotes,
            http,
            headers: federation_headers(token, local),
            timeout,
            shutdown,
            entries: Mutex::default(),
            changed: watch::Sender::new(0),
            version: AtomicU64::new(1),
            tracker: TaskTracker::new(),
            epoch: Instant::now(),
            served: Mutex::default(),
            refused: AtomicU64::new(0),
        }))
    }

    /// The datacenters `service` fails over to, in order.
    pub fn targets(&self, service: &str) -> &[String] {
        self.0.policy.targets(service)
    }

    /// Wakes whenever any remote answer kept here changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.changed.subscribe()
    }

    /// The first datacenter on `service`'s list with healthy instances, from
    /// the cache only; starts (or keeps alive) the pollers of the
    /// datacenters it walks past. Never waits: for DNS and xDS.
    pub fn resolve_now(&self, service: &str) -> Option<Arc<RemoteAnswer>> {
        for dc in self.targets(service) {
            let Some(entry) = self.entry(dc, service) else {
                continue;
            };
            if let Slot::Ready(a) = &*entry.slot.borrow()
                && !a.instances.is_empty()
            {
                return Some(a.clone());
            }
        }
        None
    }

    /// Like [`Failover::resolve_now`], but a datacenter not asked before is
    /// waited for (all of them together at most the federation timeout), so
    /// the first question during an outage already gets a failover answer.
    pub async fn resolve(&self, service: &str) -> Option<Arc<RemoteAnswer>> {
        let deadline = Instant::now() + self.0.timeout;
        for dc in self.targets(service) {
            let Some(entry) = self.entry(dc, service) else {
                continue;
            };
            let mut rx = entry.slot.subscribe();
            let got =
                tokio::time::timeout_at(deadline, rx.wait_for(|s| !matches!(s, Slot::Cold))).await;
            if let Ok(Ok(slot)) = got
                && let Slot::Ready(a) = &*slot
                && !a.instances.is_empty()
            {
                return Some(a.clone());
            }
        }
        None
    }

    /// What datacenter `dc` said about `service`, from the cache; starts its
    /// poller when there is none. `None` when `dc` is not federated.
    pub fn remote_now(&self, dc: &str, service: &str) -> Option<Slot> {
        let remote = self.0.remotes.iter().find(|r| r.name == dc)?;
        if !remote.up() {
            return Some(Slot::Down(format!("datacenter {dc:?} is unreachable")));
        }
        let entry = self.entry(dc, service)?;
        let slot = entry.slot.borrow().clone();
        Some(slot)
    }

    /// Counts one failover answer served from `dc`.
    pub fn served(&self, dc: &str) {
        let mut served = self.0.served.lock().unwrap_or_else(|p| p.into_inner());
        *served.entry(dc.to_owned()).or_default() += 1;
    }

    /// Keeps the pollers `service`'s list walks past alive (a long blocking
    /// query calls it now and then).
    pub fn touch(&self, service: &str) {
        let _ = self.resolve_now(service);
    }

    /// Pollers running now.
    pub fn pollers(&self) -> usize {
        self.0.entries.lock().map_or(0, |e| e.len())
    }

    /// Prometheus lines of failover.
    pub(super) fn metrics_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP roster_federation_failover_answers_total Healthy-only answers served from another datacenter because no local instance was healthy.\n# TYPE roster_federation_failover_answers_total counter"
        );
        for dc in &self.0.remotes {
            let n = self
                .0
                .served
                .lock()
                .map_or(0, |s| s.get(&dc.name).copied().unwrap_or(0));
            let _ = writeln!(
                out,
                "roster_federation_failover_answers_total{{dc=\"{}\"}} {n}",
                dc.name
            );
        }
        let _ = writeln!(
            out,
            "# HELP roster_federation_pollers Remote (datacenter, service) answers kept fresh by a poller now.\n# TYPE roster_federation_pollers gauge\nroster_federation_pollers {}",
            self.pollers()
        );
        let _ = writeln!(
            out,
            "# HELP roster_federation_pollers_refused_total Remote answers not followed because {MAX_ENTRIES} pollers of their datacenter were running.\n# TYPE roster_federation_pollers_refused_total counter\nroster_federation_pollers_refused_total {}",
            self.0.refused.load(Ordering::Relaxed)
        );
        out
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The entry of (`dc`, `service`), marked as asked now; a new one gets
    /// its poller. `None` for a datacenter that is not federated, or that is
    /// down: its circuit is open, or no server answered the last probe round
    /// (skipped at once, before the circuit opens: a poller's copy may be
    /// older than the outage; its poller, if any, lingers).
    fn entry(&self, dc: &str, service: &str) -> Option<Arc<Entry>> {
        let remote = self.0.remotes.iter().find(|r| r.name == dc)?;
        if !remote.up() {
            return None;
        }
        let now = self.now_ms();
        let mut entries = self.0.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (dc.to_owned(), service.to_owned());
        if let Some(e) = entries.get(&key) {
            e.asked.store(now, Ordering::Relaxed);
            return Some(e.clone());
        }
        // Pollers are tasks: without a runtime (a unit test of a view) the
        // cache is only read.
        if tokio::runtime::Handle::try_current().is_err() || self.0.shutdown.is_cancelled() {
            return None;
        }
        if entries.keys().filter(|(d, _)| d == dc).count() >= MAX_ENTRIES {
            self.0.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let entry = Arc::new(Entry {
            dc: remote.clone(),
            service: service.to_owned(),
            slot: watch::Sender::new(Slot::Cold),
            asked: AtomicU64::new(now),
        });
        entries.insert(key, entry.clone());
        let this = self.clone();
        let polled = entry.clone();
        self.0.tracker.spawn(async move { this.poll(polled).await });
        Some(entry)
    }

    /// Whether anyone asked about `entry` lately; if not, removes it (under
    /// the lock questions take, so a question and the removal cannot cross).
    fn still_wanted(&self, entry: &Arc<Entry>) -> bool {
        let mut entries = self.0.entries.lock().unwrap_or_else(|p| p.into_inner());
        let idle = self
            .now_ms()
            .saturating_sub(entry.asked.load(Ordering::Relaxed));
        if idle <= LINGER.as_millis() as u64 && !self.0.shutdown.is_cancelled() {
            return true;
        }
        let key = (entry.dc.name.clone(), entry.service.clone());
        if entries.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            entries.remove(&key);
        }
        false
    }

    fn publish(&self, entry: &Entry, slot: Slot) {
        entry.slot.send_replace(slot);
        self.0.changed.send_modify(|v| *v += 1);
    }

    /// The poller of one entry.
    async fn poll(self, entry: Arc<Entry>) {
        let mut index = 0u64;
        let mut backoff = Duration::from_millis(250);
        while self.still_wanted(&entry) {
            let fetched = tokio::select! {
                () = self.0.shutdown.cancelled() => return,
                r = self.fetch(&entry, index) => r,
            };
            match fetched {
                Ok(mut answer) => {
                    backoff = Duration::from_millis(250);
                    let changed = match &*entry.slot.borrow() {
                        Slot::Ready(old) => {
                            old.index != answer.index || old.instances != answer.instances
                        }
                        _ => true,
                    };
                    index = answer.index;
                    if changed {
                        answer.version = self.0.version.fetch_add(1, Ordering::Relaxed);
                        self.publish(&entry, Slot::Ready(Arc::new(answer)));
                    }
                }
                Err(e) => {
                    tracing::debug!(dc = %entry.dc.name, service = %entry.service, error = %e, "failover poll failed");
                    index = 0;
                    if !matches!(&*entry.slot.borrow(), Slot::Down(_)) {
                        self.publish(&entry, Slot::Down(e.to_string()));
                    }
                    let pause = backoff.mul_f64(0.5 + fastrand::f64());
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    tokio::select! {
                        () = self.0.shutdown.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }

    /// One blocking query of `entry`'s service in its datacenter.
    async fn fetch(&self, entry: &Entry, index: u64) -> Result<RemoteAnswer, FederationError> {
        let dc = &entry.dc;
        let garbage = |detail: String| FederationError::Garbage {
            dc: dc.name.clone(),
            detail,
        };
        let (path, within) = if index == 0 {
            (format!("/v1/services/{}", entry.service), self.0.timeout)
        } else {
            (
                format!(
                    "/v1/services/{}?index={index}&wait={}s",
                    entry.service,
                    POLL_WAIT.as_secs()
                ),
                // The remote adds up to a sixteenth of jitter.
                POLL_WAIT + POLL_WAIT / 8 + self.0.timeout,
            )
        };
        let (resp, _permit) = dc
            .send(
                &self.0.http,
                reqwest::Method::GET,
                &path,
                self.0.headers.clone(),
                Default::default(),
                within,
            )
            .await?;
        let status = resp.status();
        let body = tokio::time::timeout(self.0.timeout, read_limited(resp, MAX_ANSWER))
            .await
            .map_err(|_| FederationError::Timeout {
                dc: dc.name.clone(),
                timeout: self.0.timeout,
            })?
            .map_err(garbage)?;
        if !status.is_success() {
            return Err(FederationError::Refused {
                dc: dc.name.clone(),
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&body).chars().take(200).collect(),
            });
        }
        let answer: ServiceInstances = serde_json::from_slice(&body)
            .map_err(|e| garbage(format!("not an instance list: {e}")))?;
        if answer.service != entry.service {
            return Err(garbage(format!(
                "asked for {:?}, got {:?}",
                entry.service, answer.service
            )));
        }
        // A remote in panic mode answers critical instances too: failover
        // only ever hands out healthy ones.
        let instances: Vec<Instance> = answer
            .instances
            .into_iter()
            .filter(|i| i.health != Health::Critical && i.service == entry.service)
            .take(MAX_INSTANCES)
            .collect();
        Ok(RemoteAnswer {
            datacenter: dc.name.clone(),
            service: entry.service.clone(),
            index: answer.index,
            version: 0,
            instances,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn questions_about_many_names_start_a_bounded_number_of_pollers() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let dc = Arc::new(RemoteDc::new(
            "dc2",
            &[crate::config::RemoteServer {
                host: "127.0.0.1".into(),
                port,
                https: false,
            }],
            Duration::from_secs(60),
        ));
        let shutdown = CancellationToken::new();
        let failover = Failover::new(
            FailoverPolicy {
                default: vec!["dc2".into()],
                ..FailoverPolicy::default()
            },
            vec![dc],
            reqwest::Client::new(),
            "dc1",
            "a-federation-token-1",
            Duration::from_millis(100),
            shutdown.clone(),
        );
        for i in 0..MAX_ENTRIES + 50 {
            assert!(failover.resolve_now(&format!("random-{i}")).is_none());
        }
        assert_eq!(failover.pollers(), MAX_ENTRIES);
        assert!(
            failover
                .metrics_text()
                .contains("roster_federation_pollers_refused_total 50")
        );
        shutdown.cancel();
    }

    #[test]
    fn failover_indexes_move_with_either_side_and_stay_exact_in_doubles() {
        let answer = |version| RemoteAnswer {
            datacenter: "dc2".into(),
            service: "web".into(),
            index: 7,
            version,
            instances: Vec::new(),
        };
        let a = answer(5).failover_index(100);
        assert_ne!(a, 100);
        assert_ne!(a, answer(6).failover_index(100), "remote change");
        assert_ne!(a, answer(5).failover_index(101), "local change");
        for index in [a, answer(u64::MAX).failover_index(u64::MAX)] {
            assert!(index < 1 << 53);
            assert_eq!(index as f64 as u64, index);
            assert!(index & FAILOVER_INDEX_BIT != 0);
        }
    }
}
