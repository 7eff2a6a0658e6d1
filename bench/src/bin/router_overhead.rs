//! What roster's HTTP stack costs per request above a bare axum handler, with
//! no sockets and no HTTP parsing: requests go straight into each `Router`
//! on a one-thread runtime. Roster's side is the API as its server calls it
//! (`roster_registry::http::Api`: the router with every gate, and the instance
//! list's direct route) over an in-memory catalog; the bare side is one axum
//! route answering the same bytes with the same content type.
//!
//! ```text
//! cargo run --release -p roster-bench --bin router_overhead -- [--requests N] [--rounds R]
//! ```
//!
//! Rounds alternate the two sides; the table shows each side's fastest round
//! (the least disturbed one on a shared machine) and every round follows it.
//! Written to `bench/out/router-overhead.txt`. The socket and HTTP/1 work that
//! both sides share is left out on purpose: this isolates the part of a small
//! read that roster's own code decides (`bench/run.sh` measures whole requests).

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Method, Request, StatusCode, header};
use axum::routing::get;
use roster_registry::config::Config;
use roster_registry::http::{Api, AppState};
use roster_registry::metrics::Metrics;
use roster_registry::registry::Registry;
use tokio_util::sync::CancellationToken;

/// `ROUTER_OVERHEAD_SIDE=roster` or `=bare` runs that side's rounds only,
/// for a profiler or an instruction counter (`valgrind --tool=callgrind`,
/// `--tool=dhat`) to see one side alone.
static SIDE: std::sync::OnceLock<String> = std::sync::OnceLock::new();

const OUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/out/router-overhead.txt");
const USAGE: &str = "usage: router_overhead [--requests N] [--rounds R]";

/// One request through `app`; the answer's body is read to its end.
async fn call(app: &Api, method: Method, uri: &str, body: Body) -> (StatusCode, Bytes) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid request");
    let resp = app.call(req).await.expect("infallible");
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .expect("a whole body");
    (status, bytes)
}

/// Nanoseconds per request of `n` sequential GETs of `uri`.
async fn round(app: &Api, uri: &str, n: u32) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        let (status, _) = call(app, Method::GET, uri, Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn parse_args() -> Result<(u32, u32), String> {
    let (mut requests, mut rounds) = (200_000, 5);
    if let Ok(side) = std::env::var("ROUTER_OVERHEAD_SIDE") {
        SIDE.set(side).map_err(|_| "side set twice")?;
    }
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(USAGE)?;
        let n = value
            .parse::<u32>()
            .map_err(|_| format!("{flag}: not a number: {value}"))?;
        match flag.as_str() {
            "--requests" => requests = n.max(1),
            "--rounds" => rounds = n.max(1),
            _ => return Err(USAGE.into()),
        }
    }
    Ok((requests, rounds))
}

fn main() -> ExitCode {
    let (requests, rounds) = match parse_args() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let report = rt.block_on(run(requests, rounds));
    print!("{report}");
    if let Err(e) = std::fs::create_dir_all(concat!(env!("CARGO_MANIFEST_DIR"), "/out"))
        .and_then(|()| std::fs::write(OUT, &report))
    {
        eprintln!("router_overhead: cannot write {OUT}: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

async fn run(requests: u32, rounds: u32) -> String {
    let config = Config::default();
    let registry = Arc::new(Registry::new(config.catalog, Arc::new(Metrics::new())));
    let roster = Api::new(AppState::builder(registry, &config, CancellationToken::new()).build());
    for i in 1..=10 {
        let body = format!(r#"{{"address":"10.0.0.{i}","port":8080,"tags":["v1"]}}"#);
        let uri = format!("/v1/services/l10/instances/i{i}");
        let (status, _) = call(&roster, Method::PUT, &uri, Body::from(body)).await;
        assert!(status.is_success(), "register {uri}: {status}");
    }
    let (_, list) = call(&roster, Method::GET, "/v1/services/l10", Body::empty()).await;
    let bare_body = list.clone();
    let bare = Api::from(Router::new().route(
        "/v1/services/{service}",
        get(move || {
            let body = bare_body.clone();
            async move { ([(header::CONTENT_TYPE, "application/json")], body) }
        }),
    ));
    let uri = "/v1/services/l10";
    // Warm both (caches, the body cache, allocator pools).
    round(&roster, uri, requests / 10).await;
    round(&bare, uri, requests / 10).await;
    let (mut r, mut b) = (Vec::new(), Vec::new());
    let side = SIDE.get().map_or("both", String::as_str);
    for _ in 0..rounds {
        if side != "bare" {
            r.push(round(&roster, uri, requests).await);
        }
        if side != "roster" {
            b.push(round(&bare, uri, requests).await);
        }
    }
    if side != "both" {
        return format!(
            "{side} only: {:?} ns/request\n",
            if side == "bare" { b } else { r }
        );
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let (rb, bb) = (best(&r), best(&b));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "GET {uri} ({} bytes, 10 instances), {requests} requests per round, {rounds} rounds, \
         one-thread runtime, no sockets",
        list.len()
    );
    let _ = writeln!(out, "| side | ns/request (best round) | all rounds |");
    let _ = writeln!(out, "|---|---:|---|");
    for (name, best, all) in [("roster router", rb, &r), ("bare axum route", bb, &b)] {
        let all: Vec<String> = all.iter().map(|v| format!("{v:.0}")).collect();
        let _ = writeln!(out, "| {name} | {best:.0} | {} |", all.join(" / "));
    }
    let _ = writeln!(
        out,
        "roster's stack above the bare route: {:.0} ns per request ({:.2}x)",
        rb - bb,
        rb / bb
    );
    out
}
