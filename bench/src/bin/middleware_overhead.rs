//! What the roster middleware costs per request: the same GET to the same local
//! axum backend, once with plain reqwest to `http://127.0.0.1:PORT/` and once
//! through `RosterMiddleware` to `http://web/` (discovery lookup, balancing,
//! bulkhead, outlier bookkeeping, URL rewrite, timeout, tracing spans).
//!
//! ```text
//! cargo run --release -p roster-bench --bin middleware_overhead -- [--requests N] [--rounds R] [--concurrency C]
//! ```
//!
//! A registry and the backend run in this process. Each round runs both
//! clients one after the other, sequentially (latency per request) and with C
//! requests in flight (throughput); the table shows the median over rounds.
//! Writes the table and every round to `bench/out/middleware-overhead.txt`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Instant;

use roster_bench::quantile;
use roster_client::api::RegisterRequest;
use roster_client::reqwest_middleware::ClientWithMiddleware;
use roster_client::{Discovery, RosterClient, RosterMiddleware, Router};
use roster_registry::config::Config;
use roster_registry::server::Server;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/out/middleware-overhead.txt");
const USAGE: &str = "usage: middleware_overhead [--requests N] [--rounds R] [--concurrency C]";

#[derive(Clone)]
enum Client {
    Plain(reqwest::Client, String),
    Roster(ClientWithMiddleware),
}

impl Client {
    async fn get(&self) {
        let resp = match self {
            Client::Plain(http, url) => http.get(url).send().await.expect("plain GET"),
            Client::Roster(http) => http.get("http://web/").send().await.expect("roster GET"),
        };
        assert!(resp.status().is_success());
        resp.bytes().await.expect("body");
    }
}

/// One round of one client.
struct Round {
    p50_us: u64,
    p99_us: u64,
    per_sec: f64,
}

async fn round(client: &Client, requests: usize, concurrency: usize) -> Round {
    let mut latencies = Vec::with_capacity(requests);
    for _ in 0..requests {
        let start = Instant::now();
        client.get().await;
        latencies.push(start.elapsed().as_micros() as u64);
    }
    latencies.sort_unstable();
    let per_task = requests / concurrency;
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    client.get().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("load task");
    }
    Round {
        p50_us: quantile(&latencies, 0.5).unwrap_or(0),
        p99_us: quantile(&latencies, 0.99).unwrap_or(0),
        per_sec: (per_task * concurrency) as f64 / start.elapsed().as_secs_f64(),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn parse() -> Result<(usize, usize, usize), String> {
    let (mut requests, mut rounds, mut concurrency) = (10_000, 5, 32);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value: usize = args
            .next()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{flag} needs a number\n{USAGE}"))?;
        match flag.as_str() {
            "--requests" => requests = value,
            "--rounds" => rounds = value,
            "--concurrency" => concurrency = value,
            _ => return Err(USAGE.to_owned()),
        }
    }
    if requests == 0 || rounds == 0 || concurrency == 0 || concurrency > requests {
        return Err(format!(
            "need 0 < concurrency <= requests, rounds > 0\n{USAGE}"
        ));
    }
    Ok((requests, rounds, concurrency))
}

async fn backend() -> SocketAddr {
    let app = axum::Router::new().fallback(|| async { "ok" });
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let addr = listener.local_addr().expect("backend address");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("backend") });
    addr
}

async fn run(requests: usize, rounds: usize, concurrency: usize) -> String {
    let config = Config {
        dns_addr: None,
        ..Config::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind registry");
    let shutdown = CancellationToken::new();
    let server = Server::start(&config, listener, shutdown.clone())
        .await
        .expect("registry starts");
    let registry = RosterClient::new(&format!("http://{}", server.local_addr())).expect("url");
    let addr = backend().await;
    let instance = RegisterRequest {
        address: Some("127.0.0.1".into()),
        port: addr.port(),
        ..Default::default()
    };
    registry
        .register("web", "web-1", &instance)
        .await
        .expect("register");

    let plain = Client::Plain(reqwest::Client::new(), format!("http://{addr}/"));
    let router = Router::new(Discovery::new(registry));
    let roster = Client::Roster(RosterMiddleware::new(router).client(reqwest::Client::new()));
    for client in [&plain, &roster] {
        for _ in 0..1_000 {
            client.get().await; // warm-up: connections, discovery
        }
    }

    let mut log = String::new();
    let mut results: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for r in 0..rounds {
        for (i, client) in [&plain, &roster].into_iter().enumerate() {
            let result = round(client, requests, concurrency).await;
            let name = ["plain", "roster"][i];
            let _ = writeln!(
                log,
                "round {r} {name}: p50 {} us, p99 {} us, {:.0} req/s at {concurrency} in flight",
                result.p50_us, result.p99_us, result.per_sec
            );
            results[i].push(result);
        }
    }
    shutdown.cancel();
    let _ = server.wait().await;

    let stat = |i: usize, f: fn(&Round) -> f64| median(results[i].iter().map(f).collect());
    let mut table = format!(
        "{requests} sequential GETs then {requests} with {concurrency} in flight, per client \
         and round; medians of {rounds} rounds\n\n\
         | client | p50 | p99 | req/s ({concurrency} in flight) |\n|---|---|---|---|\n"
    );
    for (i, name) in ["plain reqwest", "RosterMiddleware"].iter().enumerate() {
        let _ = writeln!(
            table,
            "| {name} | {:.0} µs | {:.0} µs | {:.0} |",
            stat(i, |r| r.p50_us as f64),
            stat(i, |r| r.p99_us as f64),
            stat(i, |r| r.per_sec),
        );
    }
    let _ = writeln!(
        table,
        "\noverhead: p50 {:+.0} µs, throughput {:+.1} %",
        stat(1, |r| r.p50_us as f64) - stat(0, |r| r.p50_us as f64),
        100.0 * (stat(1, |r| r.per_sec) / stat(0, |r| r.per_sec) - 1.0),
    );
    format!("{table}\n{log}")
}

fn main() -> ExitCode {
    let (requests, rounds, concurrency) = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(run(requests, rounds, concurrency));
    print!("{report}");
    if let Err(e) = std::fs::write(OUT, &report) {
        eprintln!("cannot write {OUT}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
