//! The catalog: a state machine driven by [`Command`]s.
//!
//! [`Catalog::apply`] is pure: no I/O, no clock, no randomness; time comes in as an
//! argument. Every command that changes anything bumps the global index exactly
//! once and stamps it as the `modify_index` of what it touched. The state lives in
//! persistent maps ([`imbl`]) so publishing a read snapshot after a write is an
//! O(1) clone: readers do not wait for writers (`Registry::snapshot` says when
//! one does, once), and a write copies only the tree nodes it shares with a
//! published snapshot.
//!
//! Leases are tracked with one ordered timer set (`Timers`, by due, kind and id):
//! each instance has at most one lease timer and one removal timer in it. A
//! heartbeat only moves the lease's atomic deadline; when a lease timer comes due,
//! [`Command::Tick`] either finds the lease renewed and re-arms the timer at the
//! new deadline (once per TTL at most, not once per heartbeat) or expires it.

mod batch;
#[cfg(test)]
mod batch_tests;
mod guard;
mod instance;
#[cfg(test)]
mod tests;
mod timers;
mod wire;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use imbl::OrdMap;
use roster_api::Health;
use tokio::time::Instant;

use crate::checks::CheckState;
use crate::clock::nanos;
use crate::lease::{Lease, LeaseTable};
use crate::model::{InstanceId, InstanceSpec, ServiceName};

pub use batch::{ItemError, MAX_BATCH_ITEMS};
use batch::{batch_text, expect_text};

/// The catalog's own hash maps (instance ids to records, and the like),
/// hashed with foldhash, seeded per process: every write and expiry looks
/// up here (SipHash was 4 % of a batch registration's time).
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Drops the later copies of every name in `names`, keeping the first of
/// each in place. By hash, not by sorting: a batch of a hundred instances
/// over a hundred services sorted its lists of services and ids (string
/// compares) for 5 % of its time, and nothing needs them in order.
pub(crate) fn dedup_names(names: &mut Vec<Arc<str>>) {
    match names.len() {
        0 | 1 => {}
        2 => {
            if names[0] == names[1] {
                names.pop();
            }
        }
        n => {
            let mut seen: std::collections::HashSet<&str, foldhash::fast::RandomState> =
                std::collections::HashSet::with_capacity_and_hasher(n, Default::default());
            let keep: Vec<bool> = names.iter().map(|name| seen.insert(&**name)).collect();
            drop(seen);
            let mut keep = keep.into_iter();
            names.retain(|_| keep.next().unwrap_or(true));
        }
    }
}
pub use guard::{GuardStatus, SelfPreservation};
pub use instance::{HealthCounts, Instance, ServiceState, Snapshot};

/// A write to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
// Fields named `service`, `id`, `check` and `output` are what they say; a
// doc line repeating the name would add nothing.
#[allow(missing_docs)]
pub enum Command {
    /// Register or replace an instance. Registering proves the instance alive, so it
    /// also renews its lease.
    Register {
        service: ServiceName,
        /// Instance id (unique in the registry).
        id: InstanceId,
        /// Validated registration.
        spec: InstanceSpec,
    },
    /// Remove an instance.
    Deregister {
        service: ServiceName,
        id: InstanceId,
    },
    /// Renew an instance's lease.
    Heartbeat {
        service: ServiceName,
        id: InstanceId,
    },
    /// Enter (`Some(reason)`) or leave (`None`) maintenance.
    SetMaintenance {
        service: ServiceName,
        id: InstanceId,
        /// Reason while in maintenance.
        reason: Option<String>,
    },
    /// Record a result of one of an instance's checks.
    SetCheck {
        service: ServiceName,
        id: InstanceId,
        check: String,
        /// New status.
        status: Health,
        /// Output to show with it.
        output: String,
        /// Who reports it: the health checker (active checks only) or the
        /// instance itself (TTL checks only; this also restarts the check's TTL).
        source: CheckSource,
    },
    /// Several registrations, deregistrations, heartbeats, maintenance changes
    /// and [`Command::Expect`]s, applied in order as one change: every item
    /// is checked first and, if any would fail, none is applied
    /// ([`CatalogError::Batch`] names them). Everything it changes gets the
    /// same new index, so watchers see it as one change. Deregistering an
    /// instance that is not registered is no error here, so that a batch sent
    /// again after a lost answer does the same.
    Batch {
        /// At most [`MAX_BATCH_ITEMS`].
        items: Vec<Command>,
    },
    /// A condition, changing nothing: the instance is registered in `service`
    /// (`index: None`), is not registered (`Some(0)`), or is registered with
    /// modify index `n` (`Some(n)`). In a batch it makes the whole batch
    /// conditional (compare-and-set); it sees the effects of the items before
    /// it, and an `Some(n)` on an instance an earlier item wrote fails.
    Expect {
        service: ServiceName,
        id: InstanceId,
        /// The expected modify index, see above.
        index: Option<u64>,
    },
    /// Expire overdue leases and remove instances critical for too long. In a
    /// replicated catalog ([`Catalog::set_replicated`]) the tick changes nothing
    /// itself: it only decides, and leaves the effect commands below in
    /// [`Catalog::take_effects`] for the leader to replicate.
    Tick,
    /// Effect of a tick: the instance's lease ran out. Applies only while the
    /// instance is the same registration (`create_index`) and its lease passing.
    ExpireLease {
        service: ServiceName,
        id: InstanceId,
        /// The registration the decision was about.
        create_index: u64,
    },
    /// Effect of a tick: a TTL check ran out.
    ExpireCheck {
        service: ServiceName,
        id: InstanceId,
        check: String,
        /// Output to record with the critical status.
        output: String,
    },
    /// Effect of a tick: remove an instance critical for too long. Applies only
    /// while it is the same registration and still critical (its lease, or
    /// the named check).
    Reap {
        service: ServiceName,
        id: InstanceId,
        /// The registration the decision was about.
        create_index: u64,
        /// The check whose `deregister_critical_after` ran out; `None`: the lease's.
        check: Option<String>,
    },
    /// Replace the whole catalog (start-up load, snapshot restore). Every lease
    /// gets `grace` on top of its TTL, and nothing is removed during the grace,
    /// so instances have time to heartbeat before anything expires.
    Restore {
        /// Index of the data; the catalog continues at or above it, never below
        /// its current index.
        index: u64,
        /// Index of the last change to the set of names.
        names_index: u64,
        /// The instances (shared, so a store's decoders can allocate them on
        /// their own threads; one still shared elsewhere is copied once).
        instances: Vec<Arc<Instance>>,
        /// Extra time for every lease.
        grace: Duration,
        /// Stamp every service and instance with the new index, so that watchers
        /// see the restore as a change (runtime restore); otherwise keep the
        /// stored indexes (start-up load).
        stamp: bool,
    },
}

impl Command {
    /// About how many instances the command writes: what a group of commands
    /// applied under one hold of the registry's lock is bounded by.
    pub(crate) fn weight(&self) -> usize {
        match self {
            Command::Batch { items } => items.len().max(1),
            Command::Restore { instances, .. } => instances.len().max(1),
            _ => 1,
        }
    }
}

/// Who reports a check result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckSource {
    /// The registry's health checker, for `http`, `tcp` and `grpc` checks.
    Probe,
    /// The instance, for `ttl` checks.
    Report,
}

/// What a command did. Between nodes it travels as
/// [`crate::cluster::ops::OutcomeWire`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Global index after the command.
    pub index: u64,
    /// Whether anything changed (and the index moved).
    pub changed: bool,
    /// Leases expired by this command.
    pub expired: u32,
    /// Instances removed for being critical too long.
    pub reaped: u32,
    /// Leases overdue but kept alive by self-preservation by this command.
    pub held: u32,
    /// Instances new to the catalog that this command registered. Not
    /// carried between nodes: 0 in the answer to a forwarded write.
    pub created: u32,
}

/// Why a command was refused. Refused commands change nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
// Fields named `service`, `id`, `check` and `output` are what they say; a
// doc line repeating the name would add nothing.
#[allow(missing_docs)]
pub enum CatalogError {
    /// No such instance in that service.
    #[error("instance {id:?} of service {service:?} is not registered")]
    NotFound { service: String, id: String },
    /// The id is taken by an instance of another service.
    #[error(
        "instance id {id:?} already belongs to service {existing:?}; ids are unique in the registry"
    )]
    Conflict {
        id: String,
        /// The service that owns it.
        existing: String,
    },
    /// No check with that id on the instance.
    #[error("instance {id:?} has no check {check:?}")]
    CheckNotFound { id: String, check: String },
    /// The check cannot be updated that way.
    #[error("{0}")]
    WrongCheckKind(String),
    /// A capacity limit was reached.
    #[error("{what}: the limit is {limit}")]
    Full {
        /// Which limit.
        what: &'static str,
        /// Its value.
        limit: usize,
    },
    /// A snapshot restore would set the index above [`MAX_RESTORE_INDEX`].
    #[error(
        "index {index} is above {max}, the highest a restore may set (it must leave room for later writes)"
    )]
    IndexTooHigh {
        /// The index asked for.
        index: u64,
        /// [`MAX_RESTORE_INDEX`].
        max: u64,
    },
    /// A [`Command::Expect`] does not hold.
    #[error("instance {id:?} of service {service:?} {}", expect_text(*expected, *actual))]
    Unexpected {
        service: String,
        id: String,
        /// The condition (see [`Command::Expect`]).
        expected: Option<u64>,
        /// The instance's modify index, `None` when it is not registered (or
        /// was written earlier in the same batch: `Some(u64::MAX)`).
        actual: Option<u64>,
    },
    /// Items of a batch that would fail; nothing of the batch was applied.
    #[error("{}", batch_text(errors))]
    Batch {
        /// Each failing item, in item order.
        errors: Vec<ItemError>,
    },
    /// A command that cannot be an item of a batch.
    #[error(
        "a batch may hold registrations, deregistrations, heartbeats, maintenance changes and conditions, not {kind}"
    )]
    NotInBatch {
        /// What it was.
        kind: &'static str,
    },
    /// The global index cannot move on (it is at `u64::MAX`). Restores are
    /// capped at [`MAX_RESTORE_INDEX`], so only a catalog that applied 2^63
    /// changes gets here; the index is never wrapped.
    #[error("the catalog index is exhausted; no further change can be recorded")]
    IndexExhausted,
}

/// Highest index a snapshot restore ([`Command::Restore`] with `stamp`) may
/// bring: 2^63, which leaves 2^63 − 1 indexes for later writes (about 290,000
/// years at a million changes a second), so the index never wraps.
pub const MAX_RESTORE_INDEX: u64 = 1 << 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    Lease,
    Reap,
    /// A TTL check, by its position in the spec.
    Check(u16),
    /// Removal of an instance whose check has been critical for the check's
    /// `deregister_critical_after`.
    CheckReap(u16),
}

#[derive(Debug, Default)]
struct Record {
    service: Arc<str>,
    lease: Option<Arc<Lease>>,
    lease_timer: Option<u64>,
    reap_timer: Option<u64>,
    /// Deadlines of the TTL checks: (position in the spec, due).
    check_timers: Vec<(u16, u64)>,
    /// Removal deadlines of critical checks with `deregister_critical_after`.
    check_reaps: Vec<(u16, u64)>,
    /// The lease is overdue and held by self-preservation: the deadline it
    /// is held at (its key in `Catalog::held`).
    held: Option<u64>,
    /// The end of the instance's self-preservation budget: set by its first
    /// hold (that deadline plus `max_hold`), cleared once it proves alive.
    hold_until: Option<u64>,
}

/// Capacity limits enforced by the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogLimits {
    /// Most instances in one service.
    pub max_instances_per_service: usize,
    /// Most instances in the registry.
    pub max_instances: usize,
}

/// Default of [`CatalogLimits::max_instances`]: room for a million instances
/// twice over (a blue/green deploy of all of them), about 2 GiB of memory at
/// the measured size of an instance (bench/RESULTS.md, "one node at a million
/// instances").
pub const DEFAULT_MAX_INSTANCES: usize = 2_000_000;

/// Default of [`CatalogLimits::max_instances_per_service`]: larger than any
/// one Kubernetes service is likely to be; a healthy-only list of such a
/// service is a response of several megabytes.
pub const DEFAULT_MAX_INSTANCES_PER_SERVICE: usize = 100_000;

impl Default for CatalogLimits {
    fn default() -> Self {
        CatalogLimits {
            max_instances_per_service: DEFAULT_MAX_INSTANCES_PER_SERVICE,
            max_instances: DEFAULT_MAX_INSTANCES,
        }
    }
}

/// The catalog state machine.
#[derive(Debug)]
pub struct Catalog {
    epoch: Instant,
    state: Snapshot,
    /// Boxed: the map's slots are the size of their entries, and a map of a
    /// million entries has two million slots (after its last doubling), so
    /// an inline record would cost its size twice per instance.
    records: FastMap<Arc<str>, Box<Record>>,
    timers: timers::Timers,
    leases: Arc<LeaseTable>,
    limits: CatalogLimits,
    touched: Vec<Arc<str>>,
    changed: Vec<Arc<str>>,
    preservation: SelfPreservation,
    /// Instances by the ids of their TTL checks, for APIs that address a check
    /// by its id alone (Consul's).
    ttl_index: FastMap<Arc<str>, Vec<Arc<str>>>,
    /// Instances with a check the registry runs itself (HTTP, TCP, gRPC):
    /// while there are none, nothing needs telling the health checker.
    actively_checked: usize,
    /// The time of the command being applied.
    now: u64,
    /// When the self-preservation decision was last made (0: never).
    guard_at: u64,
    /// Times of recent lease expirations, oldest first (not those of held
    /// leases released: a held lease counts as late only while held).
    expirations: std::collections::VecDeque<u64>,
    preserving: bool,
    /// When the guard last turned on (0: it is off).
    guard_since: u64,
    /// When the guard last turned off.
    guard_off_at: u64,
    /// Leases held now, by (deadline, id).
    held: BTreeSet<(u64, Arc<str>)>,
    /// Times of recent releases of held leases, oldest first.
    released: std::collections::VecDeque<u64>,
    released_total: u64,
    /// Replicated mode: effects of ticks wait here instead of being applied.
    effects: Option<Vec<Command>>,
    /// New instances registered by the command being applied.
    created: u32,
}

impl Catalog {
    /// An empty catalog. `epoch` is the origin of the lease clock; pass the current
    /// time.
    pub fn new(epoch: Instant, limits: CatalogLimits) -> Self {
        Catalog {
            epoch,
            // The empty catalog is at index 1, so no state ever has index 0: a
            // client passing 0 in a blocking query means "I have nothing yet".
            state: Snapshot {
                index: 1,
                names_index: 1,
                services: OrdMap::new(),
            },
            records: FastMap::default(),
            timers: timers::Timers::default(),
            leases: Arc::new(LeaseTable::default()),
            limits,
            touched: Vec::new(),
            changed: Vec::new(),
            preservation: SelfPreservation::default(),
            ttl_index: FastMap::default(),
            actively_checked: 0,
            now: 0,
            guard_at: 0,
            expirations: std::collections::VecDeque::new(),
            preserving: false,
            guard_since: 0,
            guard_off_at: 0,
            held: BTreeSet::new(),
            released: std::collections::VecDeque::new(),
            released_total: 0,
            effects: None,
            created: 0,
        }
    }

    /// Replicated mode: a tick no longer changes the state, it only decides what
    /// ran out; the leader replicates those effect commands
    /// ([`Catalog::take_effects`]) and every node applies them in log order.
    /// Soft state (lease deadlines, timers) stays local.
    pub fn set_replicated(&mut self) {
        self.effects.get_or_insert_with(Vec::new);
    }

    /// Sets services' modify indexes as a snapshot recorded them (a restore
    /// derives them from the instances, which misses removals).
    pub(crate) fn set_service_indexes(
        &mut self,
        indexes: &std::collections::BTreeMap<String, u64>,
    ) {
        for (name, index) in indexes {
            if let Some(svc) = self.state.services.get_mut(name.as_str()) {
                svc.modify_index = (*index).min(self.state.index);
            }
        }
    }

    /// The effect commands decided by ticks since the last call.
    pub fn take_effects(&mut self) -> Vec<Command> {
        self.effects
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Changes the self-preservation settings.
    pub fn set_self_preservation(&mut self, settings: SelfPreservation) {
        self.preservation = settings;
    }

    /// Instances that have a TTL check with this id.
    pub(crate) fn instances_with_ttl_check(&self, check: &str) -> &[Arc<str>] {
        self.ttl_index.get(check).map_or(&[], Vec::as_slice)
    }

    /// Whether self-preservation is holding overdue leases right now.
    pub fn self_preservation_active(&self) -> bool {
        self.preserving
    }

    /// Whether some instance has a check the registry runs itself. A change
    /// made while there is none, before and after, has nothing for the
    /// health checker.
    pub(crate) fn has_active_checks(&self) -> bool {
        self.actively_checked > 0
    }

    /// The lease table, for the heartbeat fast path.
    pub fn leases(&self) -> &Arc<LeaseTable> {
        &self.leases
    }

    /// The current state.
    pub fn snapshot(&self) -> &Snapshot {
        &self.state
    }

    /// Converts an instant to the lease clock (nanoseconds since the epoch).
    pub fn clock(&self, t: Instant) -> u64 {
        crate::clock::since(self.epoch, t)
    }

    /// When the next timer comes due, if any: the time to run [`Command::Tick`].
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        let timer = self.timers.next_due();
        // While the guard is on, look again every HOLD_RECHECK even if no
        // timer is due, so it lets go as soon as it may.
        let recheck = self
            .preserving
            .then(|| self.guard_at.saturating_add(nanos(HOLD_RECHECK)));
        timer
            .into_iter()
            .chain(recheck)
            .min()
            .map(|due| self.epoch + Duration::from_nanos(due))
    }

    /// Services changed by the last [`Catalog::apply`], each once (in no
    /// particular order).
    pub fn touched(&self) -> &[Arc<str>] {
        &self.touched
    }

    /// Instances changed or removed by the last [`Catalog::apply`], each once
    /// (in no particular order).
    pub(crate) fn changed(&self) -> &[Arc<str>] {
        &self.changed
    }

    /// Looks up an instance by id alone.
    pub(crate) fn instance_by_id(&self, id: &str) -> Option<&Arc<Instance>> {
        let rec = self.records.get(id)?;
        self.state.instance(&rec.service, id)
    }

    /// Applies `cmd` at time `now`.
    pub fn apply(&mut self, cmd: Command, now: Instant) -> Result<Outcome, CatalogError> {
        self.touched.clear();
        self.changed.clear();
        self.created = 0;
        let now = self.clock(now);
        self.now = now;
        // Checked: a wrapped index would run watches and blocking queries backwards.
        let next = self
            .state
            .index
            .checked_add(1)
            .ok_or(CatalogError::IndexExhausted)?;
        let mut out = Outcome {
            index: self.state.index,
            ..Outcome::default()
        };
        out.changed = match cmd {
            Command::Register { service, id, spec } => {
                self.register(service, id, spec, now, next)?
            }
            Command::Deregister { service, id } => {
                self.find(&service, &id)?;
                self.remove(id.as_arc(), next);
                true
            }
            Command::Heartbeat { service, id } => {
                self.find(&service, &id)?;
                self.renew(id.as_arc(), now, next)
            }
            Command::SetMaintenance {
                service,
                id,
                reason,
            } => self.set_maintenance(&service, &id, reason, next)?,
            Command::SetCheck {
                service,
                id,
                check,
                status,
                output,
                source,
            } => self.set_check(&service, &id, &check, status, output, source, now, next)?,
            Command::Tick => self.tick(now, next, &mut out),
            Command::Batch { items } => self.apply_batch(items, now, next)?,
            Command::Expect { service, id, index } => {
                self.check_expect(&service, &id, index)?;
                false
            }
            Command::ExpireLease {
                service,
                id,
                create_index,
            } => {
                let current = self.find(&service, &id)?;
                let expired = current.create_index == create_index
                    && current.lease == Some(Health::Passing)
                    && self.expire_lease(current, now, next);
                out.expired += u32::from(expired);
                expired
            }
            Command::ExpireCheck {
                service,
                id,
                check,
                output,
            } => {
                let current = self.find(&service, &id)?;
                self.expire_check(current, &check, output, next)
            }
            Command::Reap {
                service,
                id,
                create_index,
                check,
            } => {
                let current = self.find(&service, &id)?;
                let critical = match &check {
                    None => current.lease == Some(Health::Critical),
                    Some(c) => current
                        .spec
                        .checks
                        .iter()
                        .zip(&current.checks)
                        .any(|(d, s)| &*d.id == c && s.status == Health::Critical),
                };
                if current.create_index == create_index && critical {
                    self.remove(id.as_arc(), next);
                    out.reaped += 1;
                    true
                } else {
                    false
                }
            }
            Command::Restore {
                index,
                names_index,
                instances,
                grace,
                stamp,
            } => {
                // Data from outside (a snapshot file, also when it travels
                // through the replicated log) must leave room; the catalog's
                // own data (the store, a replicated snapshot) may be above the
                // bound after such a restore and is taken as it is.
                if stamp && index > MAX_RESTORE_INDEX {
                    return Err(CatalogError::IndexTooHigh {
                        index,
                        max: MAX_RESTORE_INDEX,
                    });
                }
                let target = index.max(if stamp { next } else { self.state.index });
                self.restore(target, names_index, instances, now, grace, stamp);
                self.state.index = target;
                out.index = target;
                dedup_names(&mut self.touched);
                out.changed = true;
                return Ok(out);
            }
        };
        out.created = self.created;
        if out.changed {
            self.state.index = next;
            out.index = next;
            dedup_names(&mut self.touched);
            dedup_names(&mut self.changed);
        }
        Ok(out)
    }

    fn find(&self, service: &ServiceName, id: &InstanceId) -> Result<Arc<Instance>, CatalogError> {
        self.state
            .instance(service.as_str(), id.as_str())
            .cloned()
            .ok_or_else(|| CatalogError::NotFound {
                service: service.to_string(),
                id: id.to_string(),
            })
    }
}

/// How often self-preservation looks again at a lease it holds.
const HOLD_RECHECK: Duration = Duration::from_secs(1);

fn spec_checks_initial(checks: &[crate::checks::CheckSpec]) -> Vec<CheckState> {
    checks.iter().map(CheckState::initial).collect()
}
