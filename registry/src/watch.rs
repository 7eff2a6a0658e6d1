//! Change notification: one broadcast topic per watched service, one watch
//! channel for the service list.
//!
//! Topics are created when somebody watches a service and dropped once nobody
//! does, so unwatched services cost nothing on the write path. Every topic keeps
//! its latest event, whose JSON is built at most once however many watchers send
//! it. A topic holds a bounded number of events ([`TOPIC_CAPACITY`]): a watcher
//! that falls further behind is told it lagged and gets the latest state instead
//! (coalescing), so a slow reader never grows memory or slows writers.
//!
//! Streams over many services or the whole catalog (`GET /v1/catalog/watch`)
//! read one more topic, the catalog feed: one [`CatalogDelta`] per change,
//! holding only the instances that changed, built once and shared by every
//! such stream. The feed starts with the first catalog watcher (until then a
//! change costs nothing more) and keeps the last [`CATALOG_HISTORY`] deltas, so
//! a reconnecting stream gets only what it missed.

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use roster_api as api;
use tokio::sync::{broadcast, watch};

use crate::catalog::{Instance, ServiceState, Snapshot};

/// Events a topic buffers for its slowest reader.
pub const TOPIC_CAPACITY: usize = 64;

/// Deltas the catalog feed keeps for resuming streams and buffers for its
/// slowest reader.
pub const CATALOG_HISTORY: usize = 1024;
/// Changed instances the kept deltas may hold in all; older deltas are dropped
/// past it (a restore of a large catalog is one big delta).
pub(crate) const CATALOG_HISTORY_INSTANCES: usize = 100_000;

/// The state of one service at one index, as sent to watchers.
///
/// A service without instances has the index of the last change to the set of
/// names; when other services come and go that index moves without an event for
/// it (its data did not change), so compare a client's index with
/// [`Snapshot::service_index`], not with the latest event.
#[derive(Debug)]
pub struct ServiceEvent {
    /// Service name.
    pub service: Arc<str>,
    /// [`Snapshot::service_index`] of this state.
    pub index: u64,
    /// The service; `None` when it has no instances.
    pub state: Option<ServiceState>,
    json: OnceLock<String>,
    /// The event as one Server-Sent Events frame, and the registry run
    /// (epoch) its id names: the same bytes for every stream that sends it.
    sse: OnceLock<(u64, bytes::Bytes)>,
}

impl ServiceEvent {
    /// The state of `service` in `snap`.
    pub(crate) fn from_snapshot(snap: &Snapshot, service: &Arc<str>) -> Self {
        ServiceEvent {
            service: service.clone(),
            index: snap.service_index(service),
            state: snap.services.get(service).cloned(),
            json: OnceLock::new(),
            sse: OnceLock::new(),
        }
    }

    /// The event as a Server-Sent Events frame whose id (the resume token)
    /// is `epoch.index`: built once and shared by every stream.
    pub(crate) fn sse_frame(&self, epoch: u64) -> bytes::Bytes {
        let (cached, frame) = self
            .sse
            .get_or_init(|| (epoch, sse_frame(epoch, self.index, self.json())));
        if *cached == epoch {
            frame.clone()
        } else {
            sse_frame(epoch, self.index, self.json())
        }
    }

    /// The event as JSON ([`api::ServiceEvent`]), built once.
    pub(crate) fn json(&self) -> &str {
        self.json.get_or_init(|| {
            let event = api::ServiceEvent {
                service: self.service.to_string(),
                index: self.index,
                instances: self
                    .state
                    .iter()
                    .flat_map(|s| s.instances.values())
                    .map(|i| i.to_api())
                    .collect(),
            };
            serde_json::to_string(&event).expect("events serialize")
        })
    }
}

/// A `service` event with id `epoch.token` (epoch in hex) and `json` as its
/// data, one `data:` line per line of it.
pub(crate) fn sse_frame(epoch: u64, token: u64, json: &str) -> bytes::Bytes {
    let mut out = String::with_capacity(json.len() + 48);
    let _ = write!(out, "event: service\nid: {epoch:x}.{token}\n");
    for line in json.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    bytes::Bytes::from(out)
}

/// Which services a catalog stream follows: named ones, ones whose name starts
/// with a prefix, or (neither given) all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CatalogFilter {
    /// Services named exactly.
    pub services: BTreeSet<Arc<str>>,
    /// Name prefixes.
    pub prefixes: Vec<String>,
}

impl CatalogFilter {
    /// Whether the filter lets every service through.
    pub(crate) fn is_all(&self) -> bool {
        self.services.is_empty() && self.prefixes.is_empty()
    }

    /// Whether `service` passes.
    pub(crate) fn matches(&self, service: &str) -> bool {
        self.is_all()
            || self.services.contains(service)
            || self
                .prefixes
                .iter()
                .any(|p| service.starts_with(p.as_str()))
    }
}

/// What changed in one service.
#[derive(Debug)]
pub struct ServiceDelta {
    /// Service name.
    pub service: Arc<str>,
    /// The service's index after the change.
    pub index: u64,
    /// Instances added or changed, in id order.
    pub upsert: Vec<Arc<Instance>>,
    /// Ids of removed instances, in order.
    pub remove: Vec<Arc<str>>,
    /// Whether the service lost its last instance.
    pub gone: bool,
    json: OnceLock<String>,
}

impl ServiceDelta {
    /// `"name":{"index":N,"upsert":[...],"remove":[...]}`, built once.
    fn json(&self) -> &str {
        self.json.get_or_init(|| {
            let mut out = String::new();
            write_service(
                &mut out,
                &self.service,
                self.index,
                &self.upsert,
                &self.remove,
            );
            out
        })
    }
}

/// Writes one entry of an event's `services` object.
fn write_service(
    out: &mut String,
    service: &str,
    index: u64,
    upsert: &[Arc<Instance>],
    remove: &[Arc<str>],
) {
    let json = |s: &str| serde_json::to_string(s).expect("strings serialize");
    let _ = write!(out, "{}:{{\"index\":{index},\"upsert\":[", json(service));
    for (n, inst) in upsert.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(&inst.to_api()).expect("instances serialize"));
    }
    out.push_str("],\"remove\":[");
    for (n, id) in remove.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&json(id));
    }
    out.push_str("]}");
}

/// One change of the catalog as the catalog feed sends it: only the instances
/// that changed. Its JSON ([`api::CatalogEvent`]) is built once, and the part
/// of every service once, whatever the streams' filters.
#[derive(Debug)]
pub struct CatalogDelta {
    /// Global index before the change.
    pub prev: u64,
    /// Global index after it.
    pub index: u64,
    /// Changed services, in name order.
    pub services: Vec<ServiceDelta>,
    json: OnceLock<String>,
}

impl CatalogDelta {
    /// The change from `old` to `new` of the `touched` services, whose
    /// `changed` instances (ids) are the only ones that may differ. With many
    /// changed ids (a restore) each touched service is compared whole instead,
    /// which costs little: unchanged instances are the same `Arc`.
    pub(crate) fn between(
        old: &Snapshot,
        new: &Snapshot,
        touched: &[Arc<str>],
        changed: &[Arc<str>],
    ) -> Self {
        let empty = Default::default();
        let mut services = Vec::new();
        for service in touched {
            let before = old.services.get(service).map_or(&empty, |s| &s.instances);
            let Some(after) = new.services.get(service) else {
                if !before.is_empty() {
                    services.push(ServiceDelta {
                        service: service.clone(),
                        index: new.names_index,
                        upsert: Vec::new(),
                        remove: before.keys().cloned().collect(),
                        gone: true,
                        json: OnceLock::new(),
                    });
                }
                continue;
            };
            let (mut upsert, mut remove) = (Vec::new(), Vec::new());
            let mut compare = |id: &Arc<str>| match (before.get(id), after.instances.get(id)) {
                (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {}
                (_, Some(b)) => upsert.push(b.clone()),
                (Some(_), None) => remove.push(id.clone()),
                (None, None) => {}
            };
            if changed.len() <= 64 {
                let mut ids: Vec<&Arc<str>> = changed.iter().collect();
                ids.sort_unstable();
                ids.into_iter().for_each(&mut compare);
            } else {
                let ids: BTreeSet<&Arc<str>> =
                    before.keys().chain(after.instances.keys()).collect();
                ids.into_iter().for_each(&mut compare);
            }
            if !upsert.is_empty() || !remove.is_empty() {
                services.push(ServiceDelta {
                    service: service.clone(),
                    index: after.modify_index,
                    upsert,
                    remove,
                    gone: false,
                    json: OnceLock::new(),
                });
            }
        }
        // `touched` comes in no particular order.
        services.sort_unstable_by(|a, b| a.service.cmp(&b.service));
        CatalogDelta {
            prev: old.index,
            index: new.index,
            services,
            json: OnceLock::new(),
        }
    }

    /// Instances this delta holds.
    fn size(&self) -> usize {
        self.services
            .iter()
            .map(|s| s.upsert.len() + s.remove.len())
            .sum::<usize>()
            .max(1)
    }

    /// The delta as JSON, every service in it.
    pub(crate) fn json(&self) -> &str {
        self.json.get_or_init(|| self.build(|_| true))
    }

    /// The delta as JSON for a stream with `filter`: `None` when no service in
    /// it passes. The shared JSON when every one does; otherwise the shared
    /// parts of the services that pass, put together.
    pub(crate) fn json_for(&self, filter: &CatalogFilter) -> Option<Cow<'_, str>> {
        if filter.is_all() {
            return Some(Cow::Borrowed(self.json()));
        }
        let passing = self
            .services
            .iter()
            .filter(|s| filter.matches(&s.service))
            .count();
        if passing == 0 {
            None
        } else if passing == self.services.len() {
            Some(Cow::Borrowed(self.json()))
        } else {
            Some(Cow::Owned(self.build(|s| filter.matches(s))))
        }
    }

    fn build(&self, keep: impl Fn(&str) -> bool) -> String {
        let mut out = format!("{{\"index\":{},\"services\":{{", self.index);
        let mut first = true;
        for s in self.services.iter().filter(|s| !s.gone && keep(&s.service)) {
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(s.json());
        }
        out.push('}');
        let mut gone = self.services.iter().filter(|s| s.gone && keep(&s.service));
        if let Some(s) = gone.next() {
            let json = |s: &str| serde_json::to_string(s).expect("strings serialize");
            let _ = write!(out, ",\"gone\":[{}", json(&s.service));
            for s in gone {
                let _ = write!(out, ",{}", json(&s.service));
            }
            out.push(']');
        }
        out.push('}');
        out
    }
}

/// Every delta of `deltas` (in order) that `filter` passes, merged into one
/// ([`api::CatalogEvent`] at `index`): per service the latest state of each
/// instance changed, and every id removed (also those of a service gone and
/// created again meanwhile, so a reader that had them drops them).
pub(crate) fn merge_deltas(
    deltas: &[Arc<CatalogDelta>],
    filter: &CatalogFilter,
    index: u64,
) -> api::CatalogEvent {
    #[derive(Default)]
    struct Merged {
        index: u64,
        upsert: std::collections::BTreeMap<Arc<str>, Arc<Instance>>,
        remove: BTreeSet<Arc<str>>,
        gone: bool,
    }
    let mut merged: std::collections::BTreeMap<Arc<str>, Merged> = Default::default();
    for delta in deltas {
        for s in delta.services.iter().filter(|s| filter.matches(&s.service)) {
            let m = merged.entry(s.service.clone()).or_default();
            m.index = s.index;
            m.gone = s.gone;
            for id in &s.remove {
                m.upsert.remove(id);
                m.remove.insert(id.clone());
            }
            for inst in &s.upsert {
                m.remove.remove(&inst.id);
                m.upsert.insert(inst.id.clone(), inst.clone());
            }
        }
    }
    let mut event = api::CatalogEvent {
        index,
        ..Default::default()
    };
    for (name, m) in merged {
        if m.gone {
            event.gone.push(name.to_string());
        } else {
            event.services.insert(
                name.to_string(),
                api::ServiceChange {
                    index: m.index,
                    upsert: m.upsert.values().map(|i| i.to_api()).collect(),
                    remove: m.remove.iter().map(|id| id.to_string()).collect(),
                },
            );
        }
    }
    event
}

/// Each service's part of a catalog snapshot (`"name":{"index":..,"upsert":[..],"remove":[]}`),
/// kept against the service's index: a snapshot of a large catalog is put
/// together from these pieces rather than serialized again for every stream
/// that opens (only the services changed since are serialized).
#[derive(Debug, Default)]
pub(crate) struct SnapshotPieces {
    pieces: dashmap::DashMap<Arc<str>, (u64, Arc<str>)>,
    /// `names_index` of the snapshot the pieces were last pruned against.
    pruned: std::sync::atomic::AtomicU64,
}

impl SnapshotPieces {
    /// The piece of service `name` in `state`.
    fn piece(&self, name: &Arc<str>, state: &ServiceState) -> Arc<str> {
        if let Some(hit) = self.pieces.get(name)
            && hit.0 == state.modify_index
        {
            return hit.1.clone();
        }
        let mut out = String::new();
        let upsert: Vec<Arc<Instance>> = state.instances.values().cloned().collect();
        write_service(&mut out, name, state.modify_index, &upsert, &[]);
        let piece: Arc<str> = out.into();
        self.pieces
            .entry(name.clone())
            .and_modify(|cached| {
                // Another stream may have built a newer one meanwhile.
                if cached.0 <= state.modify_index {
                    *cached = (state.modify_index, piece.clone());
                }
            })
            .or_insert_with(|| (state.modify_index, piece.clone()));
        piece
    }

    /// Drops the pieces of services gone since the last call.
    fn prune(&self, snap: &Snapshot) {
        use std::sync::atomic::Ordering;
        let moved = self.pruned.load(Ordering::Relaxed) != snap.names_index
            && self.pruned.swap(snap.names_index, Ordering::Relaxed) != snap.names_index;
        if moved {
            self.pieces
                .retain(|name, _| snap.services.contains_key(name.as_ref()));
        }
    }

    /// Number of services with a piece.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pieces.len()
    }

    /// The state of every service in `snap` that passes `filter`, as a
    /// catalog stream's `snapshot` event ([`api::CatalogEvent`]).
    pub(crate) fn snapshot_json(&self, snap: &Snapshot, filter: &CatalogFilter) -> String {
        self.prune(snap);
        let mut parts: Vec<Arc<str>> = Vec::new();
        if filter.is_all() || !filter.prefixes.is_empty() {
            for (name, state) in &snap.services {
                if filter.matches(name) {
                    parts.push(self.piece(name, state));
                }
            }
        } else {
            // Named services only: look them up rather than walk the catalog.
            for name in &filter.services {
                if let Some((name, state)) = snap.services.get_key_value(name) {
                    parts.push(self.piece(name, state));
                }
            }
        }
        let head = format!("{{\"index\":{},\"services\":{{", snap.index);
        let len = head.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>() + 2;
        let mut out = String::with_capacity(len);
        out.push_str(&head);
        for (n, part) in parts.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(part);
        }
        out.push_str("}}");
        out
    }
}

/// The state of every service in `snap` that passes `filter`, as a catalog
/// stream's `snapshot` event, serialized afresh (see [`SnapshotPieces`] for
/// the cached form streams use).
#[cfg(test)]
pub(crate) fn snapshot_json(snap: &Snapshot, filter: &CatalogFilter) -> String {
    SnapshotPieces::default().snapshot_json(snap, filter)
}

/// The catalog feed: the last published state (to diff the next one against),
/// the deltas kept for resuming, and the channel of new ones.
#[derive(Debug)]
struct Feed {
    prev: Snapshot,
    history: VecDeque<Arc<CatalogDelta>>,
    /// Instances the kept deltas hold.
    held: usize,
    tx: broadcast::Sender<Arc<CatalogDelta>>,
}

/// A subscription to the catalog feed.
#[derive(Debug)]
pub(crate) struct CatalogSubscription {
    /// The state to send first, when the stream cannot resume from its token.
    pub snapshot: Option<Snapshot>,
    /// Kept deltas the resuming stream missed, in order.
    pub backlog: Vec<Arc<CatalogDelta>>,
    /// The global index the stream's reader is at once it has the snapshot or
    /// the backlog.
    pub at: u64,
    /// Every later delta, in index order (or `Lagged` for a reader that fell behind).
    pub changes: broadcast::Receiver<Arc<CatalogDelta>>,
}

#[derive(Debug)]
struct Topic {
    tx: broadcast::Sender<Arc<ServiceEvent>>,
    latest: Arc<ServiceEvent>,
}

/// A subscription to one service.
#[derive(Debug)]
pub struct Subscription {
    /// The state at the moment of subscribing.
    pub current: Arc<ServiceEvent>,
    /// Every later state, in index order (or `Lagged` for a reader that fell behind).
    pub changes: broadcast::Receiver<Arc<ServiceEvent>>,
}

/// All topics. Lives under the registry's write lock, so subscribing and
/// publishing are ordered with catalog changes.
#[derive(Debug)]
pub(crate) struct Hub {
    topics: HashMap<Arc<str>, Topic>,
    list: watch::Sender<u64>,
    feed: Option<Feed>,
    /// The server is shutting down: every topic's channel is closed, and a
    /// subscription gets the current state and a closed channel.
    closed: bool,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            topics: HashMap::new(),
            list: watch::Sender::new(0),
            feed: None,
            closed: false,
        }
    }
}

impl Hub {
    /// Publishes a change: the new global index to list watchers, the new
    /// state of every touched service that somebody watches, and (once a
    /// catalog stream was opened) the delta of the `changed` instances to the
    /// catalog feed.
    pub(crate) fn publish(&mut self, snap: &Snapshot, touched: &[Arc<str>], changed: &[Arc<str>]) {
        self.list.send_replace(snap.index);
        if let Some(feed) = &mut self.feed {
            let delta = Arc::new(CatalogDelta::between(&feed.prev, snap, touched, changed));
            feed.prev = snap.clone();
            feed.held += delta.size();
            feed.history.push_back(delta.clone());
            while feed.history.len() > CATALOG_HISTORY
                || (feed.held > CATALOG_HISTORY_INSTANCES && feed.history.len() > 1)
            {
                let old = feed.history.pop_front().expect("not empty");
                feed.held -= old.size();
            }
            // Fails only without receivers: the delta is kept for resuming.
            let _ = feed.tx.send(delta);
        }
        for service in touched {
            let Some(topic) = self.topics.get_mut(service) else {
                continue;
            };
            if topic.tx.receiver_count() == 0 {
                self.topics.remove(service);
                continue;
            }
            let event = Arc::new(ServiceEvent::from_snapshot(snap, service));
            topic.latest = event.clone();
            // Fails only without receivers, checked above.
            let _ = topic.tx.send(event);
        }
    }

    /// Ends every service watch: the topics' senders are dropped, so each
    /// receiver reads "closed" once it has what was sent before, and later
    /// subscriptions start closed. What a shutting-down server calls, so that
    /// streams need no shutdown wait of their own (polled after every event,
    /// it cost each stream a lock).
    pub(crate) fn close(&mut self) {
        self.closed = true;
        self.topics.clear();
    }

    /// How many receivers follow `service`.
    #[cfg(test)]
    pub(crate) fn receivers_of(&self, service: &str) -> usize {
        self.topics
            .get(service)
            .map_or(0, |t| t.tx.receiver_count())
    }

    /// Subscribes to `service` (which need not exist yet).
    pub(crate) fn subscribe(&mut self, snap: &Snapshot, service: &Arc<str>) -> Subscription {
        if self.closed {
            // Its sender dropped at once: the receiver reads "closed".
            let (_, changes) = broadcast::channel(1);
            return Subscription {
                current: Arc::new(ServiceEvent::from_snapshot(snap, service)),
                changes,
            };
        }
        if self.topics.len() > 2 * snap.services.len() + 1024 {
            self.topics.retain(|_, t| t.tx.receiver_count() > 0);
        }
        let topic = self.topics.entry(service.clone()).or_insert_with(|| Topic {
            tx: broadcast::Sender::new(TOPIC_CAPACITY),
            latest: Arc::new(ServiceEvent::from_snapshot(snap, service)),
        });
        Subscription {
            current: topic.latest.clone(),
            changes: topic.tx.subscribe(),
        }
    }

    /// Subscribes to the catalog feed (starting it on first use). `resume` is
    /// the global index a reconnecting stream's reader is at: when the kept
    /// deltas reach back to it, the subscription brings only the deltas since;
    /// otherwise (or without `resume`) the whole current state.
    pub(crate) fn subscribe_catalog(
        &mut self,
        snap: &Snapshot,
        resume: Option<u64>,
    ) -> CatalogSubscription {
        let feed = self.feed.get_or_insert_with(|| Feed {
            prev: snap.clone(),
            history: VecDeque::new(),
            held: 0,
            tx: broadcast::Sender::new(CATALOG_HISTORY),
        });
        let changes = feed.tx.subscribe();
        let covered = resume.filter(|&r| {
            r == snap.index
                || feed
                    .history
                    .iter()
                    .find(|d| d.index > r)
                    .is_some_and(|d| d.prev <= r && r < snap.index)
        });
        match covered {
            Some(r) => CatalogSubscription {
                snapshot: None,
                backlog: feed
                    .history
                    .iter()
                    .filter(|d| d.index > r)
                    .cloned()
                    .collect(),
                at: r,
                changes,
            },
            None => CatalogSubscription {
                snapshot: Some(snap.clone()),
                backlog: Vec::new(),
                at: snap.index,
                changes,
            },
        }
    }

    /// A receiver of the global index, for list watchers.
    pub(crate) fn subscribe_list(&self) -> watch::Receiver<u64> {
        self.list.subscribe()
    }

    /// Number of live topics.
    #[cfg(test)]
    pub(crate) fn topics(&self) -> usize {
        self.topics.len()
    }
}

#[cfg(test)]
mod tests {
    use roster_api::RegisterRequest;
    use tokio::time::Instant;

    use super::*;
    use crate::catalog::{Catalog, CatalogLimits, Command};
    use crate::model::{InstanceId, InstanceSpec, Limits, ServiceName};

    fn register(catalog: &mut Catalog, service: &str, id: &str, port: u16) {
        let req = RegisterRequest {
            address: Some("10.0.0.1".into()),
            port,
            ..Default::default()
        };
        let spec = InstanceSpec::from_request(req, None, &Limits::default()).unwrap();
        let cmd = Command::Register {
            service: ServiceName::parse(service).unwrap(),
            id: InstanceId::parse(id).unwrap(),
            spec,
        };
        catalog.apply(cmd, Instant::now()).unwrap();
    }

    #[test]
    fn topics_exist_only_while_watched() {
        let mut catalog = Catalog::new(Instant::now(), CatalogLimits::default());
        let mut hub = Hub::default();
        register(&mut catalog, "web", "a", 80);
        hub.publish(catalog.snapshot(), catalog.touched(), catalog.changed());
        assert_eq!(hub.topics(), 0, "nobody watches: no topic, no work");

        let web: Arc<str> = "web".into();
        let mut sub = hub.subscribe(catalog.snapshot(), &web);
        assert_eq!(hub.topics(), 1);
        assert_eq!(sub.current.index, catalog.snapshot().service_index("web"));
        register(&mut catalog, "web", "b", 81);
        hub.publish(catalog.snapshot(), catalog.touched(), catalog.changed());
        let event = sub.changes.try_recv().expect("the change is published");
        assert_eq!(event.index, catalog.snapshot().index);
        assert_eq!(event.state.as_ref().unwrap().instances.len(), 2);

        drop(sub);
        register(&mut catalog, "web", "c", 82);
        hub.publish(catalog.snapshot(), catalog.touched(), catalog.changed());
        assert_eq!(
            hub.topics(),
            0,
            "the last watcher left: the topic is dropped"
        );
    }

    #[test]
    fn event_json_is_built_once_and_lists_every_instance() {
        let mut catalog = Catalog::new(Instant::now(), CatalogLimits::default());
        register(&mut catalog, "web", "a", 80);
        let event = ServiceEvent::from_snapshot(catalog.snapshot(), &"web".into());
        let first: *const str = event.json();
        assert!(std::ptr::eq(first, event.json()), "cached");
        let parsed: api::ServiceEvent = serde_json::from_str(event.json()).unwrap();
        assert_eq!(parsed.instances.len(), 1);
        let missing = ServiceEvent::from_snapshot(catalog.snapshot(), &"db".into());
        assert_eq!(missing.index, catalog.snapshot().names_index);
        assert!(missing.json().contains("\"instances\":[]"));
    }

    fn deregister(catalog: &mut Catalog, service: &str, id: &str) {
        let cmd = Command::Deregister {
            service: ServiceName::parse(service).unwrap(),
            id: InstanceId::parse(id).unwrap(),
        };
        catalog.apply(cmd, Instant::now()).unwrap();
    }

    fn parse(json: &str) -> api::CatalogEvent {
        serde_json::from_str(json).unwrap()
    }

    /// The catalog's list of touched services comes in no order; the
    /// feed's delta is in name order all the same.
    #[test]
    fn a_catalog_delta_lists_its_services_in_name_order() {
        let mut catalog = Catalog::new(Instant::now(), CatalogLimits::default());
        let mut hub = Hub::default();
        let sub = hub.subscribe_catalog(catalog.snapshot(), None);
        let items = ["web", "api", "db", "api", "cache"]
            .iter()
            .enumerate()
            .map(|(i, service)| Command::Register {
                service: ServiceName::parse(service).unwrap(),
                id: InstanceId::parse(&format!("i{i}")).unwrap(),
                spec: InstanceSpec::from_request(
                    RegisterRequest {
                        address: Some("10.0.0.1".into()),
                        port: 80,
                        ..Default::default()
                    },
                    None,
                    &Limits::default(),
                )
                .unwrap(),
            })
            .collect();
        catalog
            .apply(Command::Batch { items }, Instant::now())
            .unwrap();
        assert_eq!(catalog.touched().len(), 4, "each service once");
        hub.publish(catalog.snapshot(), catalog.touched(), catalog.changed());
        let mut sub = sub;
        let delta = sub.changes.try_recv().unwrap();
        let names: Vec<&str> = delta.services.iter().map(|s| &*s.service).collect();
        assert_eq!(names, ["api", "cache", "db", "web"]);
        assert_eq!(delta.services[0].upsert.len(), 2);
    }

    #[test]
    fn the_catalog_feed_sends_only_what_changed_and_shares_the_json() {
        let mut catalog = Catalog::new(Instant::now(), CatalogLimits::default());
        let mut hub = Hub::default();
        register(&mut catalog, "web", "a", 80);
        register(&mut catalog, "web", "b", 81);
        let mut sub = hub.subscribe_catalog(catalog.snapshot(), None);
        let snap = sub
            .snapshot
            .take()
            .expect("a first subscription gets the state");
        assert_eq!(sub.at, snap.index);
        let all = CatalogFilter::default();
        let first = parse(&snapshot_json(&snap, &all));
        assert_eq!(first.services["web"].upsert.len(), 2);

        register(&mut catalog, "web", "b", 82);
        hub.publish(catalog.snapshot(), catalog.touched(), catalog.changed());
        let delta = sub.changes.try_recv().unwrap();
        assert_eq!(
            (delta.prev, delta.index),
            (snap.index, catalog.snapshot().index)
        );
        let event = parse(delta.json());
        assert_eq!(event.services["web"].upsert.len(), 1, "b alone, not a");
        assert_eq!(event.services["web"].upsert[0].port, 82);

        // Every stream whose filter passes all of it gets the same string.
        let web = CatalogFilter {
            services: BTreeSet::from(["web".into()]),
            prefixes: Vec::new(),
        };
        let shared: *const str = delta.json();
        match delta.json_for(&web).unwrap() {
            Cow::Borrowed(s) => assert!(std::ptr::eq(s, shared)),
            Cow::Owned(_) => panic!("built again for one stream"),
        }
        let db = CatalogFilter {
            services: BTreeSet::new(),
            prefixes: vec!["db".into()],
        };
        assert!(delta.json_for(&db).is_none());

        deregister(&mut catalog, "web", "a");
        hub.publish(catalog.snapshot(), catalog.touched(), catalog.changed());
        deregister(&mut catalog, "web", "b");
        hub.publish(catalog.snapshot(), catalog.touched(), catalog.changed());
        let removed = parse(sub.changes.try_recv().unwrap().json());
        assert_eq!(removed.services["web"].remove, ["a"]);
        let gone = parse(sub.changes.try_recv().unwrap().json());
        assert!(gone.services.is_empty());
        assert_eq!(gone.gone, ["web"]);

        // Resuming inside the kept deltas gets just the missed ones; at the
        // current index, none; too far back, the state.
        let resumed = hub.subscribe_catalog(catalog.snapshot(), Some(delta.index));
        assert!(resumed.snapshot.is_none());
        assert_eq!(resumed.backlog.len(), 2);
        let current = hub.subscribe_catalog(catalog.snapshot(), Some(catalog.snapshot().index));
        assert!(current.snapshot.is_none() && current.backlog.is_empty());
        let old = hub.subscribe_catalog(catalog.snapshot(), Some(1));
        assert!(old.snapshot.is_some() && old.backlog.is_empty());
    }

    #[test]
    fn snapshots_reuse_the_json_of_unchanged_services() {
        let mut catalog = Catalog::new(Instant::now(), CatalogLimits::default());
        register(&mut catalog, "web", "a", 80);
        register(&mut catalog, "db", "d", 5432);
        register(&mut catalog, "cache", "c", 6379);
        let pieces = SnapshotPieces::default();
        let all = CatalogFilter::default();
        let snap = catalog.snapshot().clone();
        let first = pieces.snapshot_json(&snap, &all);
        assert_eq!(first, snapshot_json(&snap, &all), "same bytes as uncached");
        assert_eq!(pieces.len(), 3);
        let web_before = pieces.pieces.get("web").unwrap().1.clone();
        let db_before = pieces.pieces.get("db").unwrap().1.clone();

        // web changes, cache leaves: web is serialized again, db is not,
        // cache's piece is dropped.
        register(&mut catalog, "web", "b", 81);
        deregister(&mut catalog, "cache", "c");
        let snap = catalog.snapshot().clone();
        let second = pieces.snapshot_json(&snap, &all);
        assert_eq!(second, snapshot_json(&snap, &all));
        let event = parse(&second);
        assert_eq!(event.services["web"].upsert.len(), 2);
        assert!(!event.services.contains_key("cache"));
        assert!(!Arc::ptr_eq(
            &web_before,
            &pieces.pieces.get("web").unwrap().1
        ));
        assert!(Arc::ptr_eq(&db_before, &pieces.pieces.get("db").unwrap().1));
        assert_eq!(pieces.len(), 2, "the piece of a service gone is dropped");

        // Filters take the same pieces.
        let only_db = CatalogFilter {
            services: [Arc::from("db")].into_iter().collect(),
            ..CatalogFilter::default()
        };
        let db = parse(&pieces.snapshot_json(&snap, &only_db));
        assert_eq!(db.services.keys().collect::<Vec<_>>(), ["db"]);
        assert_eq!(db.index, snap.index);
    }

    #[test]
    fn a_restore_is_one_delta_over_every_service_filtered_per_stream() {
        let mut catalog = Catalog::new(Instant::now(), CatalogLimits::default());
        for s in 0..10 {
            for i in 0..10 {
                register(&mut catalog, &format!("svc-{s}"), &format!("i-{s}-{i}"), 80);
            }
        }
        let old = catalog.snapshot().clone();
        // Rebuild the catalog without svc-0 and with svc-1's i-1-0 changed:
        // more changed ids than the cheap path takes, so services are compared whole.
        let mut next = Catalog::new(Instant::now(), CatalogLimits::default());
        for s in 1..10 {
            for i in 0..10 {
                register(&mut next, &format!("svc-{s}"), &format!("i-{s}-{i}"), 80);
            }
        }
        let mut new = old.clone();
        new.index = old.index + 1;
        new.services.remove("svc-0");
        let svc1 = new.services.get_mut("svc-1").unwrap();
        let changed = next.snapshot().services["svc-1"].instances["i-1-0"].clone();
        svc1.instances.insert("i-1-0".into(), changed);
        svc1.modify_index = new.index;
        let touched: Vec<Arc<str>> = old.services.keys().cloned().collect();
        let ids: Vec<Arc<str>> = old
            .services
            .values()
            .flat_map(|s| s.instances.keys().cloned())
            .collect();
        let delta = CatalogDelta::between(&old, &new, &touched, &ids);
        let event = parse(delta.json());
        assert_eq!(event.gone, ["svc-0"]);
        assert_eq!(event.services.len(), 1, "only svc-1 changed: {event:?}");
        assert_eq!(event.services["svc-1"].upsert[0].id, "i-1-0");
        let only_svc1 = CatalogFilter {
            services: BTreeSet::new(),
            prefixes: vec!["svc-1".into()],
        };
        let filtered = parse(&delta.json_for(&only_svc1).unwrap());
        assert!(filtered.gone.is_empty(), "svc-0 is filtered out");
        assert_eq!(filtered.services.len(), 1);
    }
}
