//! Fills a registry with instances before a measurement, over HTTP, 32 requests
//! in flight: roster's native API or r-nacos's Nacos v1 naming API.
//!
//! Instance `i` (from `--first`, `--count` of them) is `{prefix}{i}` with address
//! `10.a.b.c` (see `instance_address`), port 8080, in service `--service NAME`, or
//! in `svc{i % services}` when no name is given: the names that `bench/heartbeat.lua`
//! and `bench/rnacos_beat.lua` use.
//!
//! ```text
//! preload --kind roster|rnacos --url http://127.0.0.1:18700 --count 100000
//!     [--first 0] [--services 100] [--service NAME] [--prefix i] [--ttl-secs 600]
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use roster_bench::instance_address;
use tokio::task::JoinSet;

const USAGE: &str = "usage: preload --kind roster|rnacos --url URL --count N [--first I] \
    [--services S] [--service NAME] [--prefix P] [--ttl-secs T]";
/// Requests in flight.
const CONCURRENCY: usize = 32;

#[derive(Debug, Clone)]
struct Args {
    kind: String,
    url: String,
    count: usize,
    first: usize,
    services: usize,
    service: Option<String>,
    prefix: String,
    ttl_secs: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        kind: String::new(),
        url: String::new(),
        count: 0,
        first: 0,
        services: 100,
        service: None,
        prefix: "i".into(),
        ttl_secs: 600,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--kind" => a.kind = v,
            "--url" => a.url = v.trim_end_matches('/').to_owned(),
            "--count" => a.count = num(&v)?,
            "--first" => a.first = num(&v)?,
            "--services" => a.services = num(&v)?.max(1),
            "--service" => a.service = Some(v),
            "--prefix" => a.prefix = v,
            "--ttl-secs" => a.ttl_secs = num(&v)? as u64,
            _ => return Err(USAGE.into()),
        }
    }
    if a.url.is_empty() || !matches!(a.kind.as_str(), "roster" | "rnacos") {
        return Err(USAGE.into());
    }
    Ok(a)
}

/// Registers instance `i`; `Err` names the failure.
async fn register(http: &reqwest::Client, a: &Args, i: usize) -> Result<(), String> {
    let service = a
        .service
        .clone()
        .unwrap_or_else(|| format!("svc{}", i % a.services));
    let address = instance_address(i);
    let request = if a.kind == "roster" {
        let body = format!(
            r#"{{"address":"{address}","port":8080,"ttl":"{}s","tags":["v1"]}}"#,
            a.ttl_secs
        );
        http.put(format!(
            "{}/v1/services/{service}/instances/{}{i}",
            a.url, a.prefix
        ))
        .header("content-type", "application/json")
        .body(body)
    } else {
        http.post(format!(
            "{}/nacos/v1/ns/instance?serviceName={service}&ip={address}&port=8080&ephemeral=true",
            a.url
        ))
    };
    let response = request.send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("instance {i}: {status} {text}"))
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let http = reqwest::Client::new();
    let next = Arc::new(AtomicUsize::new(args.first));
    let end = args.first + args.count;
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (http, args, next) = (http.clone(), args.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok(());
                }
                register(&http, &args, i).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined.unwrap_or_else(|e| Err(e.to_string())) {
            eprintln!("preload: {e}");
            return ExitCode::FAILURE;
        }
    }
    println!(
        "preloaded {} {} instances in {:.1} s",
        args.count,
        args.kind,
        start.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
