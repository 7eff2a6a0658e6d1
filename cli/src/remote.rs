//! `roster dns`: a DNS front end that runs apart from the registry, so DNS can be
//! scaled out separately. It follows a registry over HTTP and answers from its
//! own copy, which stays available (stale) while the registry is unreachable.
//!
//! Changes arrive by a blocking query on the service list: one long-lived request
//! whatever the number of services, answered on every change; only the services
//! whose index moved are fetched again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use roster_api::{self as api, ServiceList};
use roster_client::{InstanceQuery, RosterClient};
use roster_dns::{DnsConfig, DnsHandler, DnsServer, InstanceRecord, ServiceRecords, ServiceView};
use roster_registry::dns_view::health_weight;
use roster_registry::model::dns_instance_label;
use tokio_util::sync::CancellationToken;

/// How long each blocking query on the registry waits.
const WAIT: Duration = Duration::from_secs(300);
/// Longest pause between attempts while the registry is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// How long after the registry restarts (its index went backwards) the
/// instances of the last copy it no longer lists are still served: long
/// enough for instances to register again, as roster-client's `Discovery`
/// settles a new run.
pub const SETTLE: Duration = Duration::from_secs(30);

/// The services as last seen on the registry.
#[derive(Debug)]
pub struct RemoteView {
    /// What DNS answers from.
    served: ArcSwap<HashMap<Arc<str>, Arc<ServiceRecords>>>,
    /// The registry's own state as last fetched: each service with the
    /// registry's index of it (to fetch only what moved).
    fresh: std::sync::Mutex<Fresh>,
    /// After a restart of the registry: until when the last copy of the old
    /// run is merged in, and that copy.
    settling: std::sync::Mutex<Option<(tokio::time::Instant, Served)>>,
    /// How long a restart is settled.
    settle: Duration,
    /// Version of the records this view builds: the DNS handler caches what
    /// it rendered by `ServiceRecords::index`, which must change with the
    /// endpoints, and the registry's own indexes start again after a restart.
    version: std::sync::atomic::AtomicU64,
    /// The registry's index as of the copy: the zone's SOA serial.
    index: std::sync::atomic::AtomicU64,
}

type Served = HashMap<Arc<str>, Arc<ServiceRecords>>;
/// Each service with the registry's index of it.
type Fresh = HashMap<Arc<str>, (u64, Arc<ServiceRecords>)>;

impl Default for RemoteView {
    fn default() -> Self {
        Self::with_settle(SETTLE)
    }
}

impl ServiceView for RemoteView {
    fn service(&self, name: &str) -> Option<Arc<ServiceRecords>> {
        self.served.load().get(name).cloned()
    }

    fn index(&self) -> u64 {
        self.index.load(std::sync::atomic::Ordering::Acquire).max(1)
    }
}

impl RemoteView {
    /// An empty view that settles a registry restart for `settle`.
    pub fn with_settle(settle: Duration) -> Self {
        RemoteView {
            served: ArcSwap::default(),
            fresh: std::sync::Mutex::default(),
            settling: std::sync::Mutex::default(),
            settle,
            version: std::sync::atomic::AtomicU64::new(0),
            index: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn next_version(&self) -> u64 {
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1
    }

    /// Until when a restart is being settled, if one is.
    fn settling_until(&self) -> Option<tokio::time::Instant> {
        lock(&self.settling).as_ref().map(|(until, _)| *until)
    }

    /// Brings the copy up to date with `list`, fetching the services whose index
    /// moved. Returns the list's index.
    ///
    /// A list whose index is below the copy's comes from a new run of the
    /// registry (a restart of one in memory) that may not have heard from
    /// every instance yet: for [`SETTLE`] the last copy's instances that it
    /// does not list are still served beside its own (those it lists, healthy
    /// or not, win), then its state alone.
    async fn sync(
        &self,
        client: &RosterClient,
        list: ServiceList,
    ) -> Result<u64, roster_client::Error> {
        let before = self.index.load(std::sync::atomic::Ordering::Acquire);
        let restarted = before > 0 && list.index < before;
        let known = if restarted {
            tracing::warn!(
                was = before,
                now = list.index,
                settle = ?self.settle,
                "the registry's index went back (a restart): serving the last copy's instances beside its own while they register again"
            );
            *lock(&self.settling) = Some((
                tokio::time::Instant::now() + self.settle,
                (**self.served.load()).clone(),
            ));
            HashMap::new()
        } else {
            lock(&self.fresh).clone()
        };
        let mut fresh = HashMap::with_capacity(list.services.len());
        let all = InstanceQuery {
            all: true,
            ..InstanceQuery::default()
        };
        for summary in &list.services {
            let name: Arc<str> = summary.name.as_str().into();
            match known.get(&name) {
                Some((at, records)) if *at >= summary.modify_index => {
                    fresh.insert(name, (*at, records.clone()));
                }
                _ => {
                    let fetched = client.instances(&summary.name, &all).await?;
                    let records = records_of(&fetched, self.next_version());
                    fresh.insert(name, (summary.modify_index, Arc::new(records)));
                }
            }
        }
        self.publish(&fresh);
        *lock(&self.fresh) = fresh;
        self.index
            .store(list.index, std::sync::atomic::Ordering::Release);
        Ok(list.index)
    }

    /// Serves `fresh`, with the held copy merged in while a restart settles.
    fn publish(&self, fresh: &Fresh) {
        let mut settling = lock(&self.settling);
        if settling
            .as_ref()
            .is_some_and(|(until, _)| tokio::time::Instant::now() >= *until)
        {
            *settling = None;
            tracing::info!("registry restart settled: serving its state alone");
        }
        let previous = self.served.load_full();
        let mut served: Served = fresh
            .iter()
            .map(|(name, (_, records))| (name.clone(), records.clone()))
            .collect();
        if let Some((_, held)) = settling.as_ref() {
            for (name, old) in held {
                let merged = match served.get(name) {
                    None => old.clone(),
                    Some(new) => {
                        let mut endpoints = new.endpoints.clone();
                        endpoints.extend(
                            old.endpoints
                                .iter()
                                .filter(|o| !new.endpoints.iter().any(|n| n.id == o.id))
                                .cloned(),
                        );
                        if endpoints.len() == new.endpoints.len() {
                            continue;
                        }
                        // Unchanged since the last publish: keep its version.
                        match previous.get(name) {
                            Some(p) if p.endpoints == endpoints => p.clone(),
                            _ => Arc::new(ServiceRecords {
                                index: self.next_version(),
                                endpoints,
                            }),
                        }
                    }
                };
                served.insert(name.clone(), merged);
            }
        }
        self.served.store(Arc::new(served));
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn records_of(service: &api::ServiceInstances, version: u64) -> ServiceRecords {
    ServiceRecords {
        index: version,
        endpoints: service
            .instances
            .iter()
            .map(|i| {
                let (healthy, weight) = health_weight(i.health, i.weights);
                InstanceRecord {
                    id: dns_instance_label(&i.id).into_owned(),
                    address: i.address.clone(),
                    port: i.port,
                    tags: i.tags.clone(),
                    meta: i.meta.clone(),
                    weight,
                    healthy,
                }
            })
            .collect(),
    }
}

/// Keeps `view` in step with the registry until `shutdown`.
async fn follow(
    view: Arc<RemoteView>,
    client: RosterClient,
    mut index: u64,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // While a restart settles, ask again by its end even if nothing
        // changes, so the held copy is dropped on time.
        let wait = view.settling_until().map_or(WAIT, |until| {
            until
                .saturating_duration_since(tokio::time::Instant::now())
                .clamp(Duration::from_millis(10), WAIT)
        });
        let answer = tokio::select! {
            () = shutdown.cancelled() => return,
            answer = client.services_blocking(index, wait) => answer,
        };
        let result = match answer {
            Ok(list) => view.sync(&client, list).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(new_index) => {
                index = new_index;
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "registry unreachable; answering from the last copy");
                let pause = backoff.mul_f64(0.5 + fastrand::f64());
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A running remote DNS front end.
#[derive(Debug)]
pub struct RemoteDns {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl RemoteDns {
    /// Copies the registry at `client` (waiting until it answers, or until
    /// `shutdown`), then binds DNS on `addr` and serves until `shutdown`.
    pub async fn start(
        client: RosterClient,
        addr: SocketAddr,
        config: DnsConfig,
        shutdown: CancellationToken,
    ) -> std::io::Result<RemoteDns> {
        Self::start_with_settle(client, addr, config, SETTLE, shutdown).await
    }

    /// [`RemoteDns::start`], settling a restart of the registry for `settle`
    /// instead of [`SETTLE`].
    pub async fn start_with_settle(
        client: RosterClient,
        addr: SocketAddr,
        config: DnsConfig,
        settle: Duration,
        shutdown: CancellationToken,
    ) -> std::io::Result<RemoteDns> {
        let view = Arc::new(RemoteView::with_settle(settle));
        let handler = DnsHandler::new(view.clone(), config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        // Serve nothing before the first copy: an early NXDOMAIN would be cached.
        let mut backoff = Duration::from_millis(100);
        let index = loop {
            let first = match client.services().await {
                Ok(list) => view.sync(&client, list).await,
                Err(e) => Err(e),
            };
            match first {
                Ok(index) => break index,
                Err(e) => {
                    tracing::warn!(error = %e, registry = %client.addresses().join(","), "waiting for the registry");
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            return Err(std::io::Error::other("stopped before the registry answered"));
                        }
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        };
        let server = DnsServer::bind(addr, handler).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot serve DNS on {addr}: {e}"))
        })?;
        let addr = server.local_addr();
        tracing::info!(%addr, registry = %client.addresses().join(","), "roster DNS front end listening");
        tokio::spawn(follow(view, client, index, shutdown.clone()));
        let task = tokio::spawn(server.run(shutdown.cancelled_owned()));
        Ok(RemoteDns { addr, task })
    }

    /// The DNS address (UDP and TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits until the server has stopped.
    pub async fn wait(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}
