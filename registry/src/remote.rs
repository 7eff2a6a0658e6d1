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
use roster_dns::{DnsConfig, DnsHandler, DnsServer, Endpoint, ServiceRecords, ServiceView};
use tokio_util::sync::CancellationToken;

use crate::dns_view::health_weight;

/// How long each blocking query on the registry waits.
const WAIT: Duration = Duration::from_secs(300);
/// Longest pause between attempts while the registry is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The services as last seen on the registry.
#[derive(Debug, Default)]
pub struct RemoteView {
    services: ArcSwap<HashMap<Arc<str>, Arc<ServiceRecords>>>,
    /// The registry's index as of the copy: the zone's SOA serial.
    index: std::sync::atomic::AtomicU64,
}

impl ServiceView for RemoteView {
    fn service(&self, name: &str) -> Option<Arc<ServiceRecords>> {
        self.services.load().get(name).cloned()
    }

    fn index(&self) -> u64 {
        self.index.load(std::sync::atomic::Ordering::Acquire).max(1)
    }
}

impl RemoteView {
    /// Brings the copy up to date with `list`, fetching the services whose index
    /// moved. Returns the list's index.
    async fn sync(
        &self,
        client: &RosterClient,
        list: ServiceList,
    ) -> Result<u64, roster_client::Error> {
        let current = self.services.load_full();
        let mut next = HashMap::with_capacity(list.services.len());
        let all = InstanceQuery {
            all: true,
            ..InstanceQuery::default()
        };
        for summary in &list.services {
            let name: Arc<str> = summary.name.as_str().into();
            match current.get(&name) {
                Some(records) if records.index >= summary.modify_index => {
                    next.insert(name, records.clone());
                }
                _ => {
                    let fetched = client.instances(&summary.name, &all).await?;
                    next.insert(name, Arc::new(records_of(&fetched)));
                }
            }
        }
        self.services.store(Arc::new(next));
        self.index
            .store(list.index, std::sync::atomic::Ordering::Release);
        Ok(list.index)
    }
}

fn records_of(service: &api::ServiceInstances) -> ServiceRecords {
    ServiceRecords {
        index: service.index,
        endpoints: service
            .instances
            .iter()
            .map(|i| {
                let (healthy, weight) = health_weight(i.health, i.weights);
                Endpoint {
                    id: crate::model::dns_instance_label(&i.id).into_owned(),
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
        let answer = tokio::select! {
            () = shutdown.cancelled() => return,
            answer = client.services_blocking(index, WAIT) => answer,
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
        let view = Arc::new(RemoteView::default());
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
