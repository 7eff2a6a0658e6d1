//! The health checker: runs every active check (`http`, `tcp`, `grpc`) of every
//! instance on one task.
//!
//! One ordered queue of due times drives everything, not a timer per check:
//! the loop sleeps until the earliest check is due, waits for a free slot
//! (a semaphore caps the checks in flight, so thousands of targets that hang
//! until their timeout cannot exhaust sockets or memory), and starts it. First
//! runs are spread over the interval with jitter so a restart does not probe
//! everything at once. A check still running when it comes due again is not
//! started twice. Results pass the anti-flap counters ([`Flap`]); only a
//! reported status or output that differs from what the catalog holds becomes
//! a catalog command.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::catalog::{CheckSource, Command, Instance};
use crate::checks::probe::{ProbeResult, Prober};
use crate::checks::{CheckSpec, Flap};
use crate::registry::{Change, ChangeReceiver, Registry};

/// Checker settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckerConfig {
    /// Most checks in flight at once.
    pub concurrency: usize,
    /// Longest delay before the first run of a newly registered check (the
    /// delay is random, below the check's interval and below this).
    pub first_run_jitter: Duration,
}

impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            concurrency: 256,
            first_run_jitter: Duration::from_secs(1),
        }
    }
}

/// A check is known by its instance and its id.
type Key = (Arc<str>, Arc<str>);

#[derive(Debug)]
struct Run {
    service: Arc<str>,
    spec: CheckSpec,
    /// The instance's check list this run belongs to; a result is applied only
    /// while the catalog still holds the same list.
    checks: Arc<[CheckSpec]>,
    flap: Arc<std::sync::Mutex<Flap>>,
    generation: u64,
    running: bool,
}

/// The scheduler. Build it with [`Checker::new`] and drive it with [`Checker::run`].
#[derive(Debug)]
pub struct Checker {
    registry: Arc<Registry>,
    prober: Arc<dyn Prober>,
    config: CheckerConfig,
    runs: HashMap<Key, Run>,
    /// Per instance, the check list the runs were made from.
    instances: HashMap<Arc<str>, Arc<[CheckSpec]>>,
    queue: BTreeSet<(Instant, u64, Key)>,
    generation: u64,
}

/// A finished probe, sent back to the loop.
#[derive(Debug)]
struct Done {
    key: Key,
    generation: u64,
    result: ProbeResult,
}

impl Checker {
    /// A checker over `registry` that probes with `prober`.
    pub fn new(registry: Arc<Registry>, prober: Arc<dyn Prober>, config: CheckerConfig) -> Self {
        Checker {
            registry,
            prober,
            config: CheckerConfig {
                concurrency: config.concurrency.max(1),
                ..config
            },
            runs: HashMap::new(),
            instances: HashMap::new(),
            queue: BTreeSet::new(),
            generation: 0,
        }
    }

    /// Runs checks until `cancel` fires; in-flight probes are dropped then.
    /// `changes` is the registry's change feed ([`Registry::feed_changes`]).
    pub async fn run(mut self, mut changes: ChangeReceiver, cancel: CancellationToken) {
        let slots = Arc::new(Semaphore::new(self.config.concurrency));
        let mut probes: JoinSet<Done> = JoinSet::new();
        let metrics = self.registry.metrics().clone();
        loop {
            let now = Instant::now();
            let next = self.queue.first().map(|(at, _, _)| *at);
            let due = next.is_some_and(|at| at <= now);
            let waiting = if due {
                self.queue
                    .iter()
                    .take_while(|(at, _, _)| *at <= now)
                    .count()
            } else {
                0
            };
            metrics.checks_scheduled(self.runs.len(), waiting);
            tokio::select! {
                biased;
                () = cancel.cancelled() => break,
                Some(done) = probes.join_next(), if !probes.is_empty() => {
                    if let Ok(done) = done {
                        self.finish(done);
                    }
                }
                change = changes.recv() => match change {
                    Some(Change::One(id, inst)) => self.sync(id, inst, now),
                    Some(Change::All(active)) => self.sync_all(active, now),
                    None => break,
                },
                permit = slots.clone().acquire_owned(), if due => {
                    let permit = permit.expect("the semaphore is never closed");
                    self.start_next(permit, &mut probes);
                }
                () = sleep_until(next), if !due => {}
            }
        }
        probes.abort_all();
    }

    /// Brings every run in line with a replaced catalog, of which `active`
    /// are the instances with an active check: the others held are gone (or
    /// have no active check any more).
    fn sync_all(&mut self, active: Vec<(Arc<str>, Arc<Instance>)>, now: Instant) {
        let keep: HashMap<Arc<str>, Arc<Instance>> = active.into_iter().collect();
        let gone: Vec<Arc<str>> = self
            .instances
            .keys()
            .filter(|id| !keep.contains_key(*id))
            .cloned()
            .collect();
        for id in gone {
            self.sync(id, None, now);
        }
        for (id, inst) in keep {
            self.sync(id, Some(inst), now);
        }
    }

    /// Brings the runs of one instance in line with the catalog.
    fn sync(&mut self, id: Arc<str>, inst: Option<Arc<Instance>>, now: Instant) {
        let checks = inst.as_ref().map(|i| i.spec.checks.clone());
        match (self.instances.get(&id), &checks) {
            (Some(old), Some(new)) if Arc::ptr_eq(old, new) => return,
            (None, None) => return,
            (None, Some(new)) if !new.iter().any(CheckSpec::is_active) => return,
            _ => {}
        }
        if let Some(old) = self.instances.remove(&id) {
            for spec in old.iter() {
                self.runs.remove(&(id.clone(), spec.id.clone()));
            }
        }
        let (Some(inst), Some(checks)) = (inst, checks) else {
            return;
        };
        for spec in checks.iter().filter(|s| s.is_active()) {
            self.generation += 1;
            let key = (id.clone(), spec.id.clone());
            let cap = spec.interval.min(self.config.first_run_jitter);
            let jitter = Duration::from_nanos(fastrand::u64(0..=cap.as_nanos() as u64));
            self.queue
                .insert((now + jitter, self.generation, key.clone()));
            self.runs.insert(
                key,
                Run {
                    service: inst.service.clone(),
                    spec: spec.clone(),
                    checks: checks.clone(),
                    flap: Arc::default(),
                    generation: self.generation,
                    running: false,
                },
            );
        }
        // Only instances with something to run are held: one whose active
        // checks are gone is forgotten (the catalog stops telling the
        // checker about changes once no instance has an active check).
        if checks.iter().any(CheckSpec::is_active) {
            self.instances.insert(id, checks);
        }
    }

    /// Starts the earliest due check, holding `permit` while it runs.
    fn start_next(
        &mut self,
        permit: tokio::sync::OwnedSemaphorePermit,
        probes: &mut JoinSet<Done>,
    ) {
        let Some((_, generation, key)) = self.queue.pop_first() else {
            return;
        };
        let Some(run) = self.runs.get_mut(&key) else {
            return;
        };
        if run.generation != generation {
            return;
        }
        // The next run is due one interval after this start, whether or not
        // this one has finished; an overrunning check skips a beat instead of
        // running twice at once.
        let now = Instant::now();
        self.queue
            .insert((now + run.spec.interval, generation, key.clone()));
        // In a cluster only the leader probes (its results go through the log);
        // followers keep the schedule, so a new leader starts at once.
        if run.running || !self.registry.is_leading() {
            return;
        }
        run.running = true;
        let probe = self.prober.probe(&run.spec);
        let timeout = run.spec.timeout;
        let running = self.registry.metrics().checks_running().clone();
        probes.spawn(async move {
            running.inc();
            let result = match tokio::time::timeout(timeout, probe).await {
                Ok(result) => result,
                Err(_) => ProbeResult {
                    status: roster_api::Health::Critical,
                    output: format!("timed out after {}", roster_api::duration::format(timeout)),
                },
            };
            running.dec();
            drop(permit);
            Done {
                key,
                generation,
                result,
            }
        });
    }

    /// Counts a result and reports it to the catalog when the thresholds say so.
    fn finish(&mut self, done: Done) {
        let Some(run) = self.runs.get_mut(&done.key) else {
            return;
        };
        if run.generation != done.generation {
            return;
        }
        run.running = false;
        self.registry
            .metrics()
            .check_run(run.spec.kind().as_str(), done.result.status);
        let report = run
            .flap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe_spec(done.result.status, &run.spec);
        let Some(status) = report else { return };
        let (id, check) = done.key;
        let snap = self.registry.snapshot();
        let current = snap.instance(&run.service, &id);
        let Some(current) = current.filter(|i| Arc::ptr_eq(&i.spec.checks, &run.checks)) else {
            return;
        };
        // Nothing new: no command, no index bump, no wake-up for watchers.
        let pos = current.spec.checks.iter().position(|c| c.id == check);
        if let Some(state) = pos.and_then(|p| current.checks.get(p))
            && state.status == status
            && state.output == crate::checks::truncate_output(done.result.output.clone())
        {
            return;
        }
        let service = crate::model::ServiceName::parse(&run.service);
        let instance = crate::model::InstanceId::parse(&id);
        let (Ok(service), Ok(instance)) = (service, instance) else {
            return;
        };
        let cmd = Command::SetCheck {
            service,
            id: instance,
            check: check.to_string(),
            status,
            output: done.result.output,
            source: CheckSource::Probe,
        };
        if let Err(e) = self.registry.report(cmd) {
            tracing::debug!(error = %e, "check result not applied");
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
