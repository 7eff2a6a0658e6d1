//! Client-side discovery: a cached, watched copy of a service's instances.
//!
//! [`Discovery::service`] returns a [`ServiceHandle`] whose instance set is kept
//! fresh by the registry's catalog stream (`GET /v1/catalog/watch`, resumed
//! with `Last-Event-ID` after a broken connection, on the client's next
//! registry address when it has several). All the services one `Discovery`
//! follows share one stream, whatever their number: it sends a snapshot of
//! the set, then only what changes. Every handle for the same service shares
//! one copy; the stream stops when the last handle is dropped. While the registry
//! is unreachable the last known set keeps being served, up to a configurable
//! staleness, after which [`ServiceHandle::instances`] reports the error.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use tokio::sync::Notify;

use crate::api::{Health, Instance, ServiceChange};
use crate::watch::CatalogEventKind;
use crate::{CatalogFilter, Error, RosterClient, Unavailable};

/// Longest pause between reconnection attempts (jittered ±50 %): short, so a
/// restarted registry is followed within about a second.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Default settle period after a registry restart (see [`Discovery::with_settle`]).
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(30);
/// Most services the catalog stream names; more, and it follows the whole
/// catalog instead.
const MAX_NAMED: usize = 512;
/// Longest settle period, whatever the instances' TTLs.
const MAX_SETTLE: Duration = Duration::from_secs(300);

/// How far a [`ServiceState`] can be trusted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Connected, and the set is exactly what the registry says now.
    Fresh,
    /// Connected to a registry run this copy had not seen before (a restart
    /// of an in-memory registry, or a move to another node): instances the
    /// new run does not know yet are held over from the last good set,
    /// listed in [`ServiceState::stale`], until they reappear or their
    /// settle period ends (at [`ServiceState::settle_until`] for the last).
    Settling,
    /// Not connected (or connected, but no answer yet from a registry whose
    /// run is not known): the last good set, as it was.
    Stale,
}

/// One state of a watched service.
///
/// # Registry restarts
///
/// `index` is the registry's index, comparable only within one run of the
/// registry, named by `epoch`: after a restart (or a move to another node)
/// `epoch` changes and `index` may go backwards. To order states, use
/// `version`, which this copy bumps on every change and never reuses.
#[derive(Clone, Debug)]
pub struct ServiceState {
    /// Index of the last answer this state holds; 0 before the first answer.
    pub index: u64,
    /// The registry run `index` belongs to (random per run and per node, from
    /// the watch stream); `None` before the first answer.
    pub epoch: Option<u64>,
    /// Local version of this copy: strictly increasing with every change.
    pub version: u64,
    /// Instances that can take traffic (passing or warning), ordered by id;
    /// held-over instances included.
    pub healthy: Arc<[Instance]>,
    /// Every instance, critical ones too, held-over ones included.
    pub all: Arc<[Instance]>,
    /// Ids of the instances held over from a previous registry run.
    pub stale: Arc<[String]>,
    /// Whether the set can be trusted now.
    pub freshness: Freshness,
    /// When the last held-over instance is dropped unless it reappears.
    pub settle_until: Option<Instant>,
    /// Whether the watch stream is connected (see `freshness` for whether
    /// its data has arrived).
    pub connected: bool,
    /// When the stream last broke, while it is down.
    pub disconnected_since: Option<Instant>,
}

impl ServiceState {
    fn empty() -> Self {
        ServiceState {
            index: 0,
            epoch: None,
            version: 0,
            healthy: Arc::from(Vec::new()),
            all: Arc::from(Vec::new()),
            stale: Arc::from(Vec::new()),
            freshness: Freshness::Stale,
            settle_until: None,
            connected: false,
            disconnected_since: None,
        }
    }
}

/// Entry point of client-side discovery: a cheap [`Clone`] handle; clones
/// share the watched copies, so every [`Router`](crate::Router) built from
/// clones of one `Discovery` shares them, and one catalog stream for all the
/// services followed. Following one more service reopens that stream on the
/// new set (a snapshot of the set, then deltas again); dropping the last
/// handle of one does not.
///
/// # Registry restarts
///
/// A copy is never replaced by the state of a registry run it has not seen
/// before: instances the new run does not know yet stay (held over, marked
/// stale in [`ServiceState::stale`]) for a settle period, or until they
/// register again; instances the new run has join at once, and one it
/// reports critical is dropped at once. The settle period is 30 s by
/// default ([`Discovery::with_settle`]), stretched to an instance's TTL when
/// that is longer (up to 5 minutes): an instance that heartbeats within its
/// TTL comes back within it. A copy already too old to serve (see
/// [`Discovery::with_max_staleness`]) is replaced, not merged.
///
/// ```no_run
/// # async fn demo() -> Result<(), roster_client::Error> {
/// use std::time::Duration;
/// use roster_client::{Discovery, Freshness, RosterClient};
///
/// let discovery = Discovery::new(RosterClient::new("http://127.0.0.1:8500")?)
///     .with_settle(Duration::from_secs(30));
/// let shared = discovery.clone(); // same copies, same watch streams
/// let web = shared.service("web");
/// web.ready().await?;
/// let state = web.changes().borrow().clone();
/// if state.freshness == Freshness::Settling {
///     println!("registry restarted (run {:x?}); still serving {:?}", state.epoch, state.stale);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Discovery {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: RosterClient,
    config: Config,
    services: Mutex<HashMap<String, Weak<Shared>>>,
    /// The task following every service on one stream, while any handle lives.
    group: Mutex<Weak<Group>>,
}

/// Senders of the services followed, by name, each with the id of its handle.
type Members = Arc<Mutex<BTreeMap<String, (u64, watch::Sender<ServiceState>)>>>;

/// The one stream of a `Discovery`: the set of services it follows and the
/// task following them. Held by every handle; the task stops with the last.
#[derive(Debug)]
struct Group {
    members: Members,
    /// Wakes the task when the set changes.
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Drop for Group {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone, Copy, Debug)]
struct Config {
    max_staleness: Duration,
    settle: Duration,
}

impl Discovery {
    /// Discovery through `client`, serving a disconnected copy for at most 5 minutes.
    pub fn new(client: RosterClient) -> Self {
        Self::with_config(
            client,
            Config {
                max_staleness: Duration::from_secs(300),
                settle: DEFAULT_SETTLE,
            },
        )
    }

    fn with_config(client: RosterClient, config: Config) -> Self {
        Discovery {
            inner: Arc::new(Inner {
                client,
                config,
                services: Mutex::new(HashMap::new()),
                group: Mutex::new(Weak::new()),
            }),
        }
    }

    /// Sets how long a copy may be served while the registry is unreachable.
    /// Returns a new `Discovery`, sharing no copies with earlier clones.
    pub fn with_max_staleness(self, max: Duration) -> Self {
        let config = Config {
            max_staleness: max,
            ..self.inner.config
        };
        Self::with_config(self.inner.client.clone(), config)
    }

    /// Sets the settle period after a registry restart (default 30 s): how
    /// long instances the new registry run does not know yet keep being
    /// served. Returns a new `Discovery`, sharing no copies with earlier
    /// clones.
    pub fn with_settle(self, settle: Duration) -> Self {
        let config = Config {
            settle,
            ..self.inner.config
        };
        Self::with_config(self.inner.client.clone(), config)
    }

    /// The registry client.
    pub fn client(&self) -> &RosterClient {
        &self.inner.client
    }

    /// Discovery of the services of datacenter `dc`, through this
    /// registry (which forwards the catalog stream there): a new
    /// `Discovery` with the same settings, sharing no copies with this one.
    pub fn in_datacenter(&self, dc: &str) -> Discovery {
        Self::with_config(
            self.inner.client.clone().with_datacenter(dc),
            self.inner.config,
        )
    }

    /// Follows `service`'s healthy-only answer, failover across datacenters
    /// included: when the registry's datacenter has no healthy instance and
    /// the service has a failover list, the instances of the datacenter the
    /// registry fails over to ([`crate::HealthyWatch::datacenter`] names it).
    /// One blocking-query loop per call, stopped when the watch is dropped.
    pub fn healthy(&self, service: &str) -> crate::HealthyWatch {
        crate::HealthyWatch::new(
            self.inner.client.clone(),
            service,
            self.inner.config.max_staleness,
        )
    }

    /// Whether two handles share their copies.
    pub fn same_as(&self, other: &Discovery) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The handle for `service`, shared with every other caller asking for it.
    /// Needs a Tokio runtime (the first call starts the watch task).
    pub fn service(&self, service: &str) -> ServiceHandle {
        let inner = &self.inner;
        let mut services = inner.services.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = services.get(service).and_then(Weak::upgrade) {
            return ServiceHandle(shared);
        }
        services.retain(|_, weak| weak.strong_count() > 0);
        let group = {
            let mut slot = inner.group.lock().unwrap_or_else(|p| p.into_inner());
            match slot.upgrade() {
                Some(group) => group,
                None => {
                    let members = Members::default();
                    let changed = Arc::new(Notify::new());
                    let task = tokio::spawn(follow(
                        inner.client.clone(),
                        inner.config,
                        members.clone(),
                        changed.clone(),
                    ));
                    let group = Arc::new(Group {
                        members,
                        changed,
                        task,
                    });
                    *slot = Arc::downgrade(&group);
                    group
                }
            }
        };
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = watch::channel(ServiceState::empty());
        group
            .members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service.to_owned(), (id, tx));
        group.changed.notify_one();
        let shared = Arc::new(Shared {
            service: service.to_owned(),
            max_staleness: inner.config.max_staleness,
            state: rx,
            id,
            group,
        });
        services.insert(service.to_owned(), Arc::downgrade(&shared));
        ServiceHandle(shared)
    }

    /// Services with a live handle now.
    pub fn watched(&self) -> usize {
        let services = self
            .inner
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        services.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[derive(Debug)]
struct Shared {
    service: String,
    max_staleness: Duration,
    state: watch::Receiver<ServiceState>,
    /// Tells this handle's sender from a later one for the same service.
    id: u64,
    group: Arc<Group>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let mut members = self.group.members.lock().unwrap_or_else(|p| p.into_inner());
        if members
            .get(&self.service)
            .is_some_and(|(id, _)| *id == self.id)
        {
            members.remove(&self.service);
            drop(members);
            self.group.changed.notify_one();
        }
    }
}

/// A watched service. Cheap to clone; clones share the copy.
#[derive(Clone, Debug)]
pub struct ServiceHandle(Arc<Shared>);

impl ServiceHandle {
    /// The service name.
    pub fn name(&self) -> &str {
        &self.0.service
    }

    /// Whether two handles share one copy.
    pub fn same_as(&self, other: &ServiceHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The healthy instances now. Served from the copy while the registry is
    /// unreachable, until the copy is older than the maximum staleness.
    pub fn instances(&self) -> Result<Arc<[Instance]>, Error> {
        let state = self.0.state.borrow();
        if state.index == 0 {
            return Err(Unavailable::NoAnswerYet {
                service: self.0.service.clone(),
            }
            .into());
        }
        if let Some(since) = state.disconnected_since {
            let age = since.elapsed();
            if age > self.0.max_staleness {
                return Err(Unavailable::TooStale {
                    service: self.0.service.clone(),
                    age,
                    max_staleness: self.0.max_staleness,
                }
                .into());
            }
        }
        Ok(state.healthy.clone())
    }

    /// Waits until the first state has arrived.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.0.state.clone();
        rx.wait_for(|s| s.index > 0)
            .await
            .map(drop)
            .map_err(|_| Unavailable::DiscoveryStopped.into())
    }

    /// Every change of the copy, including connection changes.
    pub fn changes(&self) -> watch::Receiver<ServiceState> {
        self.0.state.clone()
    }
}

/// The follow task's copy: the registry's last answer in the current run,
/// and the instances held over from earlier runs.
struct Copy {
    config: Config,
    /// The registry run the answer comes from.
    epoch: Option<u64>,
    index: u64,
    /// The registry's last answer (every instance), ordered by id.
    current: Vec<Instance>,
    /// Held over from an earlier run: the instance and when it is dropped.
    held: BTreeMap<String, (Instance, Instant)>,
    version: u64,
}

impl Copy {
    fn new(config: Config) -> Self {
        Copy {
            config,
            epoch: None,
            index: 0,
            current: Vec::new(),
            held: BTreeMap::new(),
            version: 0,
        }
    }

    /// A registry run this copy has not seen: everything it served that the
    /// new run may not know yet is held over, unless the copy is too old to
    /// serve (then the new run's state replaces it).
    fn new_epoch(&mut self, epoch: u64, too_old: bool, now: Instant) {
        if self.epoch == Some(epoch) {
            return;
        }
        let had = self.epoch.is_some();
        self.epoch = Some(epoch);
        if !had {
            return;
        }
        if too_old {
            self.held.clear();
            self.current.clear();
            return;
        }
        for i in self.current.drain(..) {
            if i.health == Health::Critical || self.held.contains_key(&i.id) {
                continue;
            }
            let settle = self
                .config
                .settle
                .max(i.ttl.unwrap_or_default().min(MAX_SETTLE));
            self.held.insert(i.id.clone(), (i, now + settle));
        }
    }

    /// An answer of the current run.
    fn answer(&mut self, index: u64, instances: Vec<Instance>) {
        self.index = index;
        for i in &instances {
            self.held.remove(&i.id);
        }
        self.current = instances;
    }

    /// A delta of the current run: instances added or changed, ids removed.
    fn delta(&mut self, index: u64, change: ServiceChange) {
        self.index = index;
        let replaced: std::collections::HashSet<&str> = change
            .remove
            .iter()
            .map(String::as_str)
            .chain(change.upsert.iter().map(|i| i.id.as_str()))
            .collect();
        self.current.retain(|i| !replaced.contains(i.id.as_str()));
        for i in &change.upsert {
            self.held.remove(&i.id);
        }
        self.current.extend(change.upsert);
        self.current.sort_by(|a, b| a.id.cmp(&b.id));
    }

    /// Drops held-over instances whose settle period is over; true when any was.
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.held.len();
        self.held.retain(|_, (_, until)| *until > now);
        self.held.len() != before
    }

    fn next_expiry(&self) -> Option<Instant> {
        self.held.values().map(|(_, until)| *until).min()
    }

    fn state(&mut self, connected: bool, confirmed: bool, since: Option<Instant>) -> ServiceState {
        self.version += 1;
        let mut all: Vec<Instance> = self.current.clone();
        all.extend(self.held.values().map(|(i, _)| i.clone()));
        all.sort_by(|a, b| a.id.cmp(&b.id));
        let all: Arc<[Instance]> = all.into();
        let healthy: Arc<[Instance]> = all
            .iter()
            .filter(|i| i.health != Health::Critical)
            .cloned()
            .collect();
        let freshness = if !connected || !confirmed {
            Freshness::Stale
        } else if self.held.is_empty() {
            Freshness::Fresh
        } else {
            Freshness::Settling
        };
        ServiceState {
            index: self.index,
            epoch: self.epoch,
            version: self.version,
            healthy,
            all,
            stale: self.held.keys().cloned().collect(),
            freshness,
            settle_until: self.held.values().map(|(_, until)| *until).max(),
            connected,
            disconnected_since: since,
        }
    }
}

/// The registry run an event id (`{epoch:x}.{index}`) comes from.
fn epoch_of(id: &str) -> Option<u64> {
    let (epoch, _) = id.split_once('.')?;
    u64::from_str_radix(epoch, 16).ok()
}

/// One followed service in the follow task: its copy, where to publish it,
/// and whether the current stream has confirmed it.
struct Member {
    copy: Copy,
    tx: watch::Sender<ServiceState>,
    confirmed: bool,
}

/// How a stream ended.
enum End {
    /// It broke (or the registry closed it).
    Broke,
    /// The set of services changed: open a stream on the new set.
    SetChanged,
}

/// Follows the services in `members` on one catalog stream forever,
/// reconnecting with backoff, and reopening it when the set changes. A stream
/// that breaks has moved `client` off its address, so the reconnect goes to
/// the next one; every copy keeps its last set meanwhile, and merges the
/// state of a registry run it has not seen before (see [`Discovery`]).
async fn follow(client: RosterClient, config: Config, members: Members, changed: Arc<Notify>) {
    let mut followed: BTreeMap<String, Member> = BTreeMap::new();
    // The set of the last stream and its last event id, to resume with.
    let mut streamed: Vec<String> = Vec::new();
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut since: Option<Instant> = None;
    loop {
        let notified = changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let members = members.lock().unwrap_or_else(|p| p.into_inner());
            followed.retain(|name, _| members.contains_key(name));
            for (name, (_, tx)) in members.iter() {
                let m = followed.entry(name.clone()).or_insert_with(|| Member {
                    copy: Copy::new(config),
                    tx: tx.clone(),
                    confirmed: false,
                });
                if !m.tx.same_channel(tx) {
                    // A new handle for a service whose last one was dropped.
                    *m = Member {
                        copy: Copy::new(config),
                        tx: tx.clone(),
                        confirmed: false,
                    };
                }
            }
        }
        if followed.is_empty() {
            notified.await;
            continue;
        }
        let names: Vec<String> = followed.keys().cloned().collect();
        // A resume token is good only for the same set: a service new to the
        // set needs its state, which only a snapshot brings.
        let token = (names == streamed).then_some(last_id.as_deref()).flatten();
        // Past a few hundred names the URL grows long (the registry takes at
        // most 4096, within a 64 KiB request head): follow the whole catalog
        // and keep only the services followed.
        let filter = if names.len() > MAX_NAMED {
            CatalogFilter::all()
        } else {
            CatalogFilter::services(&names)
        };
        let end = match client.watch_catalog(&filter, token).await {
            Ok(mut stream) => {
                streamed = names;
                let too_old = since.is_some_and(|s| s.elapsed() > config.max_staleness);
                since = None;
                // With the registry's epoch header the run is known at once:
                // the same run resumed (the copy is current), or a new one
                // (merge). Without it, the first event tells.
                for m in followed.values_mut() {
                    m.confirmed = false;
                    if let Some(epoch) = stream.epoch() {
                        m.copy.new_epoch(epoch, too_old, Instant::now());
                        m.confirmed = m.copy.index > 0 || !m.copy.held.is_empty();
                    }
                    m.tx.send_replace(m.copy.state(true, m.confirmed, None));
                }
                let end = loop {
                    let expiry = followed.values().filter_map(|m| m.copy.next_expiry()).min();
                    let next = tokio::select! {
                        next = stream.next() => next,
                        () = &mut notified => {
                            notified.set(changed.notified());
                            notified.as_mut().enable();
                            let members = members.lock().unwrap_or_else(|p| p.into_inner());
                            let fewer = members.iter().all(|(name, (_, tx))| {
                                followed.get(name).is_some_and(|m| m.tx.same_channel(tx))
                            });
                            if !fewer {
                                break End::SetChanged;
                            }
                            // Services were only dropped: the stream goes on,
                            // their changes are ignored until it is reopened.
                            followed.retain(|name, _| members.contains_key(name));
                            continue;
                        }
                        () = sleep_until(expiry) => {
                            let now = Instant::now();
                            for m in followed.values_mut() {
                                if m.copy.expire(now) {
                                    m.tx.send_replace(m.copy.state(true, m.confirmed, None));
                                }
                            }
                            continue;
                        }
                    };
                    match next {
                        Ok(Some(event)) => {
                            backoff = Duration::from_millis(100);
                            let now = Instant::now();
                            let epoch = event.id.as_deref().and_then(epoch_of);
                            let index = event.event.index;
                            let mut services = event.event.services;
                            let mut touched: Vec<String> = Vec::new();
                            if event.kind == CatalogEventKind::Snapshot {
                                // Every followed service, present or not.
                                for (name, m) in followed.iter_mut() {
                                    let change = services.remove(name).unwrap_or(ServiceChange {
                                        index,
                                        ..Default::default()
                                    });
                                    if let Some(epoch) = epoch {
                                        m.copy.new_epoch(epoch, too_old, now);
                                    }
                                    m.copy.answer(change.index, change.upsert);
                                    touched.push(name.clone());
                                }
                            } else {
                                for (name, change) in services {
                                    if let Some(m) = followed.get_mut(&name) {
                                        if let Some(epoch) = epoch {
                                            m.copy.new_epoch(epoch, too_old, now);
                                        }
                                        m.copy.delta(change.index, change);
                                        touched.push(name);
                                    }
                                }
                                for name in event.event.gone {
                                    if let Some(m) = followed.get_mut(&name) {
                                        m.copy.answer(index, Vec::new());
                                        touched.push(name);
                                    }
                                }
                            }
                            for (name, m) in followed.iter_mut() {
                                let expired = m.copy.expire(now);
                                let first = !m.confirmed;
                                m.confirmed = true;
                                if expired || first || touched.contains(name) {
                                    m.tx.send_replace(m.copy.state(true, true, None));
                                }
                            }
                        }
                        Ok(None) => break End::Broke,
                        Err(e) => {
                            tracing::debug!(error = %e, "catalog stream broke");
                            break End::Broke;
                        }
                    }
                };
                last_id = stream.last_event_id().map(str::to_owned);
                end
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot open the catalog stream");
                End::Broke
            }
        };
        if let End::SetChanged = end {
            // Handles often come in bursts (a router's services at start-up):
            // let them gather into one new stream.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        let down = *since.get_or_insert_with(Instant::now);
        for m in followed.values_mut() {
            m.tx.send_replace(m.copy.state(false, false, Some(down)));
        }
        let pause = backoff.mul_f64(0.5 + fastrand::f64());
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str, health: Health) -> Instance {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "id": id, "service": "web", "address": "10.0.0.1", "port": 80,
            "health": "passing", "deregister_critical_after": "1m",
            "create_index": 1, "modify_index": 1
        }))
        .unwrap();
        i.health = health;
        i
    }

    fn ids(s: &ServiceState) -> Vec<&str> {
        s.healthy.iter().map(|i| i.id.as_str()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_run_is_merged_and_held_over_instances_settle() {
        let settle = Duration::from_secs(30);
        let mut copy = Copy::new(Config {
            max_staleness: Duration::from_secs(300),
            settle,
        });
        let t0 = Instant::now();
        copy.new_epoch(1, false, t0);
        copy.answer(
            7,
            vec![
                instance("a", Health::Passing),
                instance("b", Health::Passing),
                instance("c", Health::Passing),
                instance("d", Health::Critical),
            ],
        );
        let s = copy.state(true, true, None);
        assert_eq!(
            (ids(&s), s.freshness),
            (vec!["a", "b", "c"], Freshness::Fresh)
        );

        // The registry restarts empty: nothing is dropped.
        copy.new_epoch(2, false, t0);
        let s = copy.state(true, true, None);
        assert_eq!(ids(&s), ["a", "b", "c"]);
        assert_eq!(
            (s.epoch, s.index, s.freshness),
            (Some(2), 7, Freshness::Settling)
        );
        assert_eq!(&s.stale[..], ["a", "b", "c"]);
        assert_eq!(s.settle_until, Some(t0 + settle));

        // a comes back, e is new, b is critical in the new run.
        copy.answer(
            1,
            vec![
                instance("a", Health::Passing),
                instance("b", Health::Critical),
                instance("e", Health::Passing),
            ],
        );
        let s = copy.state(true, true, None);
        assert_eq!(
            ids(&s),
            ["a", "c", "e"],
            "b dropped at once, c held, e joined"
        );
        assert_eq!(&s.stale[..], ["c"]);
        assert!(
            s.index < 7 && s.version > 2,
            "index is per run; version only grows"
        );

        assert!(!copy.expire(t0 + settle - Duration::from_millis(1)));
        assert!(copy.expire(t0 + settle));
        let s = copy.state(true, true, None);
        assert_eq!((ids(&s), s.freshness), (vec!["a", "e"], Freshness::Fresh));
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_too_old_to_serve_is_replaced() {
        let mut copy = Copy::new(Config {
            max_staleness: Duration::from_secs(1),
            settle: DEFAULT_SETTLE,
        });
        copy.new_epoch(1, false, Instant::now());
        copy.answer(3, vec![instance("a", Health::Passing)]);
        copy.new_epoch(2, true, Instant::now());
        assert!(copy.state(true, true, None).healthy.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delta_changes_only_its_instances_and_settles_held_ones() {
        let mut copy = Copy::new(Config {
            max_staleness: Duration::from_secs(300),
            settle: DEFAULT_SETTLE,
        });
        copy.new_epoch(1, false, Instant::now());
        copy.answer(
            3,
            vec![
                instance("a", Health::Passing),
                instance("b", Health::Passing),
            ],
        );
        // A restart holds a and b over; a delta of the new run brings b back.
        copy.new_epoch(2, false, Instant::now());
        copy.answer(1, vec![instance("c", Health::Passing)]);
        copy.delta(
            2,
            ServiceChange {
                index: 2,
                upsert: vec![instance("b", Health::Warning)],
                remove: vec!["c".into()],
            },
        );
        let s = copy.state(true, true, None);
        assert_eq!(ids(&s), ["a", "b"]);
        assert_eq!(&s.stale[..], ["a"], "b came back in the delta");
        assert_eq!(
            s.all.iter().find(|i| i.id == "b").unwrap().health,
            Health::Warning
        );
        assert_eq!(s.index, 2);
    }

    #[test]
    fn event_ids_carry_the_epoch() {
        assert_eq!(epoch_of("ff.12"), Some(255));
        assert_eq!(epoch_of("12"), None);
    }
}
