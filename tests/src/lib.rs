//! Shared harness for roster's end-to-end tests: real servers started in-process
//! on port 0, real clients.
#![warn(missing_docs)]

pub mod dns;
pub mod process;

use std::net::SocketAddr;

use roster_registry::config::Config;
use roster_registry::server::Server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A registry server running in this process. Dropping it shuts the server down.
#[derive(Debug)]
pub struct TestRegistry {
    server: Option<Server>,
    shutdown: CancellationToken,
    url: String,
}

impl TestRegistry {
    /// Starts a registry with the default configuration on 127.0.0.1:0.
    pub async fn start() -> Self {
        Self::start_with(Config::default()).await
    }

    /// Starts a registry with `config`. Its addresses are ignored: the HTTP API
    /// and DNS (unless `config.dns_addr` is `None`) listen on 127.0.0.1, port 0.
    pub async fn start_with(config: Config) -> Self {
        Self::start_at(SocketAddr::from(([127, 0, 0, 1], 0)), config).await
    }

    /// Starts a registry with `config` whose HTTP API listens on `addr`: a fixed
    /// address lets a test restart "the same" registry. DNS, when on, gets port 0.
    pub async fn start_at(addr: SocketAddr, config: Config) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind a loopback port");
        Self::start_on(listener, config).await
    }

    /// Starts a registry with `config` on an already-bound `listener` (a test
    /// that must know every node's address before any starts binds them first).
    pub async fn start_on(listener: TcpListener, mut config: Config) -> Self {
        if config.dns_addr.is_some() {
            config.dns_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        if config.grpc_addr.is_some() {
            config.grpc_addr = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        }
        let shutdown = CancellationToken::new();
        let server = Server::start(&config, listener, shutdown.clone())
            .await
            .expect("server starts");
        let peer_tls = config
            .cluster
            .as_ref()
            .is_some_and(|c| c.peer_tls.is_some());
        let scheme = if config.serve.tls.is_some() || peer_tls {
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}", server.local_addr());
        TestRegistry {
            server: Some(server),
            shutdown,
            url,
        }
    }

    /// Base URL of the HTTP API.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The registry's `/metrics` page, as text.
    pub async fn metrics_text(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one series of `/metrics`, named exactly as the page
    /// writes it (labels included: `name{label="value"}`); `None` when the
    /// page has no such series.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines().find_map(|l| {
            let value = l.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// Waits until `/metrics` has the sample `line` (name, labels and value,
    /// as Prometheus' text format writes them), checking every 10 ms; `false`
    /// when `within` runs out first.
    pub async fn wait_for_metric(&self, line: &str, within: std::time::Duration) -> bool {
        let want = format!("{line}\n");
        tokio::time::timeout(within, async {
            loop {
                if self.metrics_text().await.contains(&want) {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Address of the gRPC (xDS) server.
    ///
    /// # Panics
    ///
    /// When the registry was started with gRPC off.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.server()
            .grpc_addr()
            .expect("the registry was started with gRPC off")
    }

    /// Address of the DNS server (UDP and TCP).
    ///
    /// # Panics
    ///
    /// When the registry was started with DNS off.
    pub fn dns_addr(&self) -> SocketAddr {
        self.server()
            .dns_addr()
            .expect("the test registry was started with DNS off")
    }

    /// The server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("running")
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.wait().await.expect("server stops cleanly");
        }
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
