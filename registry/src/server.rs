//! Starting and stopping a registry server.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{AppState, router};
use crate::metrics::Metrics;
use crate::registry::Registry;

/// A running server: its address, its registry, and its tasks.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    registry: Arc<Registry>,
    tasks: JoinSet<std::io::Result<()>>,
}

impl Server {
    /// Starts the HTTP API on an already-bound `listener` and the reaper. Everything
    /// stops when `shutdown` is cancelled; in-flight requests finish first.
    pub fn start(
        config: &Config,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<Server> {
        let local_addr = listener.local_addr()?;
        let registry = Arc::new(Registry::new(config.catalog, Arc::new(Metrics::new())));
        let state = AppState::new(registry.clone(), config.limits.clone(), shutdown.clone());
        let mut tasks = JoinSet::new();
        let reaper = registry.clone().run_reaper(shutdown.clone());
        tasks.spawn(async move {
            reaper.await;
            Ok(())
        });
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
        });
        tracing::info!(%local_addr, "roster HTTP API listening");
        Ok(Server {
            local_addr,
            registry,
            tasks,
        })
    }

    /// The HTTP API's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The registry behind the API.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
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
