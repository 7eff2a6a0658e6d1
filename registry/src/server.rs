//! Starting and stopping a registry server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use roster_dns::{DnsHandler, DnsServer};

use crate::config::Config;
use crate::dns_view::RegistryView;
use crate::health::Checker;
use crate::http::consul::ConsulNode;
use crate::http::limits::Limiter;
use crate::http::serve::{TlsState, serve};
use crate::http::{AppState, router};
use crate::metrics::Metrics;
use crate::probe::NetProber;
use crate::registry::Registry;
use crate::store::{Store, StoreError};

/// A running server: its address, its registry, and its tasks.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    dns_addr: Option<SocketAddr>,
    registry: Arc<Registry>,
    cluster: Option<Arc<crate::cluster::Cluster>>,
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
        let shutdown_for_checker = shutdown.clone();
        let registry = Arc::new(Registry::new(config.catalog, Arc::new(Metrics::new())));
        registry.set_self_preservation(config.self_preservation);
        let mut state = AppState::new(registry.clone(), config.limits.clone(), shutdown.clone());
        state.lease_grace = config.lease_grace;
        state.panic = Arc::new(config.panic.clone());
        state.acl = config.acl.clone().map(Arc::new);
        state.limiter = Arc::new(Limiter::new(config.limits_http.clone()));
        let tls = match &config.serve.tls {
            Some(files) => Some(
                TlsState::new(files.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        if let Some(tokens) = &state.acl {
            tracing::info!(
                tokens = tokens.len(),
                "ACLs on: every API call needs a token"
            );
        }
        state.consul = Arc::new(ConsulNode::new(
            &config.datacenter,
            &config.node_name,
            local_addr.ip(),
            local_addr.port(),
        ));
        let dns = match config.dns_addr {
            Some(addr) => {
                let view = Arc::new(RegistryView::new(registry.clone()));
                let handler = DnsHandler::new(view, config.dns.clone()).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
                registry.metrics().follow_dns(handler.clone());
                let server = DnsServer::bind(addr, handler).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot serve DNS on {addr}: {e}"))
                })?;
                Some(server)
            }
            None => None,
        };
        let dns_addr = dns.as_ref().map(DnsServer::local_addr);
        let mut tasks = JoinSet::new();
        if let (Some(cluster), Some(dir)) = (&config.cluster, &config.data_dir) {
            // Replicated: the Raft log in the data directory is the durable
            // copy; the node is ready once it knows a leader.
            state.ready.store(false, Ordering::Release);
            let mut cluster = cluster.clone();
            if cluster.advertise.is_empty() {
                cluster.advertise = local_addr.to_string();
            }
            let node = crate::cluster::Cluster::start(
                registry.clone(),
                dir,
                cluster,
                config.lease_grace,
                state.ready.clone(),
                &mut tasks,
                shutdown.clone(),
            )
            .await
            .map_err(|e| std::io::Error::other(format!("cannot start the cluster node: {e}")))?;
            state.cluster = Some(node);
        } else if let Some(dir) = config.data_dir.clone() {
            // Serve /health at once, but refuse writes and report not ready until
            // the catalog is loaded. A store that cannot be loaded stops the server.
            state.ready.store(false, Ordering::Release);
            let (registry, ready, grace, shutdown) = (
                registry.clone(),
                state.ready.clone(),
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
        }
        let reaper = registry.clone().run_reaper(shutdown.clone());
        tasks.spawn(async move {
            reaper.await;
            Ok(())
        });
        if let Some(changes) = registry.feed_changes() {
            let checker =
                Checker::new(registry.clone(), Arc::new(NetProber::new()), config.checker);
            tasks.spawn(async move {
                checker.run(changes, shutdown_for_checker).await;
                Ok(())
            });
        }
        if let Some(dns) = dns {
            let domain = &config.dns.domain;
            tracing::info!(addr = %dns.local_addr(), %domain, "roster DNS listening (UDP and TCP)");
            tasks.spawn(dns.run(shutdown.clone().cancelled_owned()));
        }
        if let Some(tls) = tls.clone() {
            let cancel = shutdown.clone();
            let poll = config.serve.tls_poll;
            tasks.spawn(async move {
                tls.watch(poll, cancel).await;
                Ok(())
            });
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let cluster = state.cluster.clone();
        let app = router(state);
        tasks.spawn(serve(
            listener,
            app,
            config.serve.clone(),
            tls,
            shutdown.clone(),
        ));
        tracing::info!(%local_addr, scheme, "roster HTTP API listening");
        Ok(Server {
            local_addr,
            dns_addr,
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
