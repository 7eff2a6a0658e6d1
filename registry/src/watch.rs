//! Change notification: one broadcast topic per watched service, one watch
//! channel for the service list.
//!
//! Topics are created when somebody watches a service and dropped once nobody
//! does, so unwatched services cost nothing on the write path. Every topic keeps
//! its latest event, whose JSON is built at most once however many watchers send
//! it. A topic holds a bounded number of events ([`TOPIC_CAPACITY`]): a watcher
//! that falls further behind is told it lagged and gets the latest state instead
//! (coalescing), so a slow reader never grows memory or slows writers.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use roster_api as api;
use tokio::sync::{broadcast, watch};

use crate::catalog::{ServiceState, Snapshot};

/// Events a topic buffers for its slowest reader.
pub const TOPIC_CAPACITY: usize = 64;

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
}

impl ServiceEvent {
    /// The state of `service` in `snap`.
    pub fn from_snapshot(snap: &Snapshot, service: &Arc<str>) -> Self {
        ServiceEvent {
            service: service.clone(),
            index: snap.service_index(service),
            state: snap.services.get(service).cloned(),
            json: OnceLock::new(),
        }
    }

    /// The event as JSON ([`api::ServiceEvent`]), built once.
    pub fn json(&self) -> &str {
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
pub struct Hub {
    topics: HashMap<Arc<str>, Topic>,
    list: watch::Sender<u64>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            topics: HashMap::new(),
            list: watch::Sender::new(0),
        }
    }
}

impl Hub {
    /// Publishes a change: the new global index to list watchers, and the new
    /// state of every touched service that somebody watches.
    pub fn publish(&mut self, snap: &Snapshot, touched: &[Arc<str>]) {
        self.list.send_replace(snap.index);
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

    /// Subscribes to `service` (which need not exist yet).
    pub fn subscribe(&mut self, snap: &Snapshot, service: &Arc<str>) -> Subscription {
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

    /// A receiver of the global index, for list watchers.
    pub fn subscribe_list(&self) -> watch::Receiver<u64> {
        self.list.subscribe()
    }

    /// Number of live topics.
    pub fn topics(&self) -> usize {
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
        hub.publish(catalog.snapshot(), catalog.touched());
        assert_eq!(hub.topics(), 0, "nobody watches: no topic, no work");

        let web: Arc<str> = "web".into();
        let mut sub = hub.subscribe(catalog.snapshot(), &web);
        assert_eq!(hub.topics(), 1);
        assert_eq!(sub.current.index, catalog.snapshot().service_index("web"));
        register(&mut catalog, "web", "b", 81);
        hub.publish(catalog.snapshot(), catalog.touched());
        let event = sub.changes.try_recv().expect("the change is published");
        assert_eq!(event.index, catalog.snapshot().index);
        assert_eq!(event.state.as_ref().unwrap().instances.len(), 2);

        drop(sub);
        register(&mut catalog, "web", "c", 82);
        hub.publish(catalog.snapshot(), catalog.touched());
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
}
