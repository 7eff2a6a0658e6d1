//! A small HTTP service that registers itself with roster, heartbeats while it
//! runs, finds its peers through discovery, and deregisters when stopped.
//!
//! ```sh
//! roster serve &                                   # the registry on 127.0.0.1:8500
//! cargo run -p roster-client --example web_service -- 127.0.0.1:3000
//! roster instances web                             # it is there
//! # Ctrl-C: it deregisters before exiting
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use roster_client::api::RegisterRequest;
use roster_client::balance::{Balancer, Endpoint, RoundRobin};
use roster_client::{Discovery, Registration, RosterClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()?;
    let registry =
        std::env::var("ROSTER_REGISTRY").unwrap_or_else(|_| "http://127.0.0.1:8500".into());
    let client = RosterClient::new(&registry)?;
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;

    let request = RegisterRequest {
        address: Some(addr.ip().to_string()),
        port: addr.port(),
        tags: vec!["example".into()],
        ttl: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let id = format!("web-{}", addr.port());
    let registration = Registration::start(client.clone(), "web", &id, request).await?;
    println!("{id} serving on {addr}, registered with {registry}");

    // Discovery of our own service, to show who the peers are.
    let discovery = Discovery::new(client);
    let peers = discovery.service("web");
    peers.ready().await?;
    let balancer = RoundRobin::new();

    let serve = async {
        loop {
            let (mut socket, _) = listener.accept().await?;
            let instances = peers.instances().unwrap_or_default();
            let endpoints: Vec<Endpoint> = instances.iter().map(Endpoint::from_instance).collect();
            let next = balancer
                .pick(&endpoints)
                .map(|i| endpoints[i].id().to_owned());
            let body = format!(
                "hello from {id}; {} peers; next peer by round robin: {next:?}\n",
                endpoints.len()
            );
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        result = serve => result?,
        _ = tokio::signal::ctrl_c() => println!("stopping"),
    }
    registration.shutdown().await?;
    println!("{id} deregistered");
    Ok(())
}
