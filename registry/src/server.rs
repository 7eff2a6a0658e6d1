//! Starting and stopping a registry server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use roster_dns::{DnsHandler, DnsServer};

use crate::checks::checker::Checker;
use crate::checks::probe::NetProber;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::dns_view::RegistryView;
use crate::federation::Federation;
use crate::http::AppState;
use crate::http::serve::{TlsState, serve};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::store::{Store, StoreError};
use crate::xds::Xds;

/// A running server: its address, its registry, and its tasks.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    dns_addr: Option<SocketAddr>,
    grpc_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    cluster: Option<Arc<Cluster>>,
    tasks: JoinSet<std::io::Result<()>>,
}

impl Server {
    /// Starts the HTTP API on an already-bound `listener`, the reaper and, unless
    /// `config.dns_addr` is `None`, the DNS server (bound here, so a port in use
    /// fails the start). Everything stops when `shutdown` is cancelled; in-flight
    /// requests finish first.
    pub async fn start(
        config: &Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new(config.catalog, Arc::new(Metrics::new())));
        registry.set_self_preservation(config.self_preservation);
        let peer_tls = config.cluster.as_ref().and_then(|c| c.peer_tls.clone());
        let tls = if config.serve.tls.is_some() || peer_tls.is_some() {
            Some(TlsState::with_peers(config.serve.tls.clone(), peer_tls).map_err(invalid_input)?)
        } else {
            None
        };
        if let Some(tokens) = &config.acl {
            tracing::info!(
                tokens = tokens.len(),
                "ACLs on: every API call needs a token"
            );
        }
        let federation = match &config.federation {
            Some(f) => Some(
                Federation::new(f, &config.datacenter, shutdown.clone()).map_err(invalid_input)?,
            ),
            None => None,
        };
        let dns = start_dns(config, &registry, federation.clone()).await?;
        let dns_addr = dns.as_ref().map(DnsServer::local_addr);
        let grpc = match config.grpc_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot serve gRPC (xDS) on {addr}: {e}"))
            })?),
            None => None,
        };
        let grpc_addr = grpc.as_ref().map(TcpListener::local_addr).transpose()?;
        let mut tasks = JoinSet::new();
        // Ready at once in memory; a store or a cluster sets it once loaded.
        let ready = Arc::new(AtomicBool::new(config.data_dir.is_none()));
        let cluster =
            start_storage(config, &registry, local_addr, &ready, &mut tasks, &shutdown).await?;
        if let (Some(tls), Some(cluster)) = (&tls, &cluster) {
            // A reloaded peer certificate is used for new outgoing connections too.
            let peers = cluster.peers().clone();
            tls.on_reload(move || peers.reload_tls());
        }
        spawn_background(config, &registry, dns, tls.clone(), &mut tasks, &shutdown);
        if let Some(federation) = &federation {
            federation.start(&mut tasks, &shutdown);
        }
        let state = AppState::builder(registry.clone(), config, shutdown.clone())
            .address(local_addr)
            .ready(ready)
            .cluster(cluster.clone())
            .federation(federation.clone())
            .build();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tasks.spawn(serve(
            listener,
            crate::http::Api::new(state),
            config.serve.clone(),
            tls.clone(),
            shutdown.clone(),
        ));
        tracing::info!(%local_addr, scheme, "roster HTTP API listening");
        if let Some(listener) = grpc {
            let xds = Xds::new(
                registry.clone(),
                config.acl.clone(),
                config.max_xds_streams,
                federation.as_deref(),
                shutdown.clone(),
            );
            tracing::info!(addr = ?grpc_addr, tls = tls.is_some(), "roster gRPC (xDS) listening");
            tasks.spawn(crate::xds::serve(
                listener,
                xds,
                tls,
                config.serve.max_connections,
                shutdown.clone(),
            ));
        }
        Ok(Server {
            local_addr,
            dns_addr,
            grpc_addr,
            registry,
            cluster,
            tasks,
        })
    }

    /// The HTTP API's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The DNS server's address (UDP and TCP), or `None` when DNS is off.
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns_addr
    }

    /// The gRPC (xDS) server's address, or `None` when it is off.
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_addr
    }

    /// The registry behind the API.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// This node's cluster handle, when replicated.
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Cluster>> {
        self.cluster.as_ref()
    }

    /// Waits until every task has stopped; returns the first error.
    pub async fn wait(mut self) -> std::io::Result<()> {
        let mut result = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            let outcome = done.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if result.is_ok() {
                result = outcome;
            }
        }
        result
    }
}

fn invalid_input(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

/// Binds the DNS server, unless DNS is off; a port in use fails the start.
async fn start_dns(
    config: &Config,
    registry: &Arc<Registry>,
    federation: Option<Arc<Federation>>,
) -> std::io::Result<Option<DnsServer>> {
    let Some(addr) = config.dns_addr else {
        return Ok(None);
    };
    let view = Arc::new(RegistryView::new(registry.clone()).federated(federation));
    let handler = DnsHandler::new(view, config.dns.clone()).map_err(invalid_input)?;
    registry.metrics().follow_dns(handler.clone());
    let server = DnsServer::bind(addr, handler)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot serve DNS on {addr}: {e}")))?;
    Ok(Some(server))
}

/// Where the catalog lives: a Raft cluster (the log in the data directory is
/// the durable copy; ready once a leader is known), a store loaded in the
/// background (the server answers `/health` meanwhile, refuses writes and
/// reports not ready; a store that cannot be loaded stops the server), or
/// memory alone. Returns the cluster node when there is one.
async fn start_storage(
    config: &Config,
    registry: &Arc<Registry>,
    local_addr: SocketAddr,
    ready: &Arc<AtomicBool>,
    tasks: &mut JoinSet<std::io::Result<()>>,
    shutdown: &CancellationToken,
) -> std::io::Result<Option<Arc<Cluster>>> {
    if let (Some(cluster), Some(dir)) = (&config.cluster, &config.data_dir) {
        let mut cluster = cluster.clone();
        if cluster.advertise.is_empty() {
            cluster.advertise = local_addr.to_string();
        }
        let node = Cluster::start(
            registry.clone(),
            dir,
            cluster,
            config.lease_grace,
            ready.clone(),
            tasks,
            shutdown.clone(),
        )
        .await
        .map_err(|e| std::io::Error::other(format!("cannot start the cluster node: {e}")))?;
        return Ok(Some(node));
    }
    let Some(dir) = config.data_dir.clone() else {
        return Ok(None);
    };
    let (registry, ready, grace, shutdown) = (
        registry.clone(),
        ready.clone(),
        config.lease_grace,
        shutdown.clone(),
    );
    tasks.spawn(async move {
        let opened = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .unwrap_or_else(|e| Err(StoreError::Load(e)));
        match opened {
            Ok((store, loaded)) => {
                let count = loaded.instances.len();
                let file = store.file().display().to_string();
                registry.attach_store(store, loaded, grace);
                ready.store(true, Ordering::Release);
                tracing::info!(instances = count, %file, "catalog loaded");
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot load the catalog");
                shutdown.cancel();
                Err(std::io::Error::other(e))
            }
        }
    });
    Ok(None)
}

/// The tasks beside the API: the reaper, the health checker, DNS and the TLS
/// reloader.
fn spawn_background(
    config: &Config,
    registry: &Arc<Registry>,
    dns: Option<DnsServer>,
    tls: Option<Arc<TlsState>>,
    tasks: &mut JoinSet<std::io::Result<()>>,
    shutdown: &CancellationToken,
) {
    let reaper = registry.clone().run_reaper(shutdown.clone());
    tasks.spawn(async move {
        reaper.await;
        Ok(())
    });
    // Event streams end when their topics close, so that the graceful
    // shutdown does not wait for them.
    let (watches, cancel) = (registry.clone(), shutdown.clone());
    tasks.spawn(async move {
        cancel.cancelled().await;
        watches.close_watches();
        Ok(())
    });
    if let Some(changes) = registry.feed_changes() {
        let checker = Checker::new(
            registry.clone(),
            Arc::new(NetProber::with_policy(config.probe.clone())),
            config.checker,
        );
        let cancel = shutdown.clone();
        tasks.spawn(async move {
            checker.run(changes, cancel).await;
            Ok(())
        });
    }
    if let Some(dns) = dns {
        let domain = &config.dns.domain;
        tracing::info!(addr = %dns.local_addr(), %domain, "roster DNS listening (UDP and TCP)");
        tasks.spawn(dns.run(shutdown.clone().cancelled_owned()));
    }
    if let Some(tls) = tls {
        let cancel = shutdown.clone();
        let poll = config.serve.tls_poll;
        tasks.spawn(async move {
            tls.watch(poll, cancel).await;
            Ok(())
        });
    }
}
