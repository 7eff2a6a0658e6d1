//! Client-side discovery: a cached, watched copy of a service's instances.
//!
//! [`Discovery::service`] returns a [`ServiceHandle`] whose instance set is kept
//! fresh by the registry's watch stream (resumed with `Last-Event-ID` after a
//! broken connection, on the client's next registry address when it has
//! several). Every handle for the same service shares one stream and
//! one copy; the stream stops when the last handle is dropped. While the registry
//! is unreachable the last known set keeps being served, up to a configurable
//! staleness, after which [`ServiceHandle::instances`] reports the error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::{Health, Instance};
use crate::{Error, RosterClient};

/// Longest pause between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// One state of a watched service.
#[derive(Clone, Debug)]
pub struct ServiceState {
    /// Index of this state; 0 before the first answer.
    pub index: u64,
    /// Instances that can take traffic (passing or warning), ordered by id.
    pub healthy: Arc<[Instance]>,
    /// Every instance, critical ones too.
    pub all: Arc<[Instance]>,
    /// Whether the watch stream is connected.
    pub connected: bool,
    /// When the stream last broke, while it is down.
    pub disconnected_since: Option<Instant>,
}

impl ServiceState {
    fn empty() -> Self {
        ServiceState {
            index: 0,
            healthy: Arc::from(Vec::new()),
            all: Arc::from(Vec::new()),
            connected: false,
            disconnected_since: None,
        }
    }
}

/// Entry point of client-side discovery.
#[derive(Debug)]
pub struct Discovery {
    client: RosterClient,
    max_staleness: Duration,
    services: Mutex<HashMap<String, Weak<Shared>>>,
}

impl Discovery {
    /// Discovery through `client`, serving a disconnected copy for at most 5 minutes.
    pub fn new(client: RosterClient) -> Self {
        Discovery {
            client,
            max_staleness: Duration::from_secs(300),
            services: Mutex::new(HashMap::new()),
        }
    }

    /// Sets how long a copy may be served while the registry is unreachable.
    pub fn with_max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = max;
        self
    }

    /// The handle for `service`, shared with every other caller asking for it.
    /// Needs a Tokio runtime (the first call starts the watch task).
    pub fn service(&self, service: &str) -> ServiceHandle {
        let mut services = self.services.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = services.get(service).and_then(Weak::upgrade) {
            return ServiceHandle(shared);
        }
        services.retain(|_, weak| weak.strong_count() > 0);
        let (tx, rx) = watch::channel(ServiceState::empty());
        let task = tokio::spawn(follow(self.client.clone(), service.to_owned(), tx));
        let shared = Arc::new(Shared {
            service: service.to_owned(),
            max_staleness: self.max_staleness,
            state: rx,
            task,
        });
        services.insert(service.to_owned(), Arc::downgrade(&shared));
        ServiceHandle(shared)
    }
}

#[derive(Debug)]
struct Shared {
    service: String,
    max_staleness: Duration,
    state: watch::Receiver<ServiceState>,
    task: JoinHandle<()>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
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
            return Err(Error::Unavailable(format!(
                "no answer from the registry yet for {}",
                self.0.service
            )));
        }
        if let Some(since) = state.disconnected_since {
            let age = since.elapsed();
            if age > self.0.max_staleness {
                return Err(Error::Unavailable(format!(
                    "the registry has been unreachable for {age:?}; the copy of {} is too old",
                    self.0.service
                )));
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
            .map_err(|_| Error::Unavailable("discovery stopped".into()))
    }

    /// Every change of the copy, including connection changes.
    pub fn changes(&self) -> watch::Receiver<ServiceState> {
        self.0.state.clone()
    }
}

/// Follows one service's watch stream forever, reconnecting with backoff. A
/// stream that breaks has moved `client` off its address, so the reconnect goes
/// to the next one; the copy keeps its last set meanwhile.
async fn follow(client: RosterClient, service: String, tx: watch::Sender<ServiceState>) {
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.watch(&[service.as_str()], last_id.as_deref()).await {
            Ok(mut stream) => {
                tx.send_modify(|s| {
                    s.connected = true;
                    s.disconnected_since = None;
                });
                loop {
                    match stream.next().await {
                        Ok(Some(event)) => {
                            backoff = Duration::from_millis(100);
                            let all: Arc<[Instance]> = event.event.instances.into();
                            let healthy: Arc<[Instance]> = all
                                .iter()
                                .filter(|i| i.health != Health::Critical)
                                .cloned()
                                .collect();
                            tx.send_replace(ServiceState {
                                index: event.event.index,
                                healthy,
                                all,
                                connected: true,
                                disconnected_since: None,
                            });
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::debug!(%service, error = %e, "watch stream broke");
                            break;
                        }
                    }
                }
                last_id = stream.last_event_id().map(str::to_owned);
            }
            Err(e) => tracing::debug!(%service, error = %e, "cannot open the watch stream"),
        }
        tx.send_modify(|s| {
            s.connected = false;
            s.disconnected_since.get_or_insert_with(Instant::now);
        });
        let pause = backoff.mul_f64(0.5 + fastrand::f64());
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
