//! Sends requests through [`RosterMiddleware`] to many distinct hosts that are
//! not services, and reports what the client kept: for the end-to-end test
//! that such hosts leave the client's memory flat. A process of its own, so
//! its resident memory is its own.
//!
//! `roster-many-hosts REGISTRY WARMUP HOSTS`: serves HTTP on 127.0.0.1 for any
//! host name (every name resolves to it), registers that server as service
//! `web` and calls `http://web/` once (so the middleware is seen routing),
//! then calls `http://host-N/` for WARMUP hosts, notes its resident memory,
//! calls HOSTS more distinct hosts and prints one line:
//! `answered A pools P watched W rss_kb BEFORE AFTER`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use roster_client::api::RegisterRequest;
use roster_client::reqwest_middleware::ClientWithMiddleware;
use roster_client::{Discovery, RosterClient, RosterMiddleware, Router};

/// Every name resolves to the local server.
#[derive(Debug)]
struct Loopback(SocketAddr);

impl Resolve for Loopback {
    fn resolve(&self, _: Name) -> Resolving {
        let addr = self.0;
        Box::pin(async move { Ok(Box::new(std::iter::once(addr)) as Addrs) })
    }
}

/// Resident memory of this process in KiB.
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Calls `http://host-N/` for N in `from..to`, 32 at a time; how many
/// answered 200.
async fn call_hosts(http: &ClientWithMiddleware, from: usize, to: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(from));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..32 {
        let (http, next, answered) = (http.clone(), next.clone(), answered.clone());
        workers.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= to {
                    return;
                }
                match http.get(format!("http://host-{n}/")).send().await {
                    Ok(r) if r.status() == 200 => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => eprintln!("host-{n}: HTTP {}", r.status()),
                    Err(e) => eprintln!("host-{n}: {e}"),
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    answered.load(Ordering::Relaxed)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match &args[..] {
        [registry, warmup, hosts] => warmup
            .parse::<usize>()
            .ok()
            .zip(hosts.parse::<usize>().ok())
            .map(|(w, h)| (registry.clone(), w, h)),
        _ => None,
    };
    let Some((registry, warmup, hosts)) = parsed else {
        eprintln!("usage: roster-many-hosts REGISTRY WARMUP HOSTS");
        return ExitCode::FAILURE;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen on loopback");
    let addr = listener.local_addr().expect("bound");
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = RosterClient::new(&registry).expect("registry address");
    let request = RegisterRequest {
        address: Some(addr.ip().to_string()),
        port: addr.port(),
        ..Default::default()
    };
    client
        .register("web", "web-1", &request)
        .await
        .expect("register web");
    let http = reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(Loopback(addr)))
        // No idle connection kept per host: what is measured is the
        // middleware, not reqwest's pool of 10,000 idle connections.
        .pool_max_idle_per_host(0)
        .build()
        .expect("HTTP client");
    let discovery = Discovery::new(client);
    let router = Router::new(discovery.clone());
    let http = RosterMiddleware::new(router.clone()).client(http);
    let routed = http.get("http://web/").send().await;
    if !routed.is_ok_and(|r| r.status() == 200) {
        eprintln!("roster-many-hosts: http://web/ was not routed to the local server");
        return ExitCode::FAILURE;
    }
    let mut answered = call_hosts(&http, 0, warmup).await;
    let before = rss_kb();
    answered += call_hosts(&http, warmup, warmup + hosts).await;
    let after = rss_kb();
    println!(
        "answered {answered} pools {} watched {} rss_kb {before} {after}",
        router.pools(),
        discovery.watched()
    );
    ExitCode::SUCCESS
}
