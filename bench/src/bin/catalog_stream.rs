//! One catalog stream following many services: change-to-delta latency and the
//! bytes each change costs on the stream.
//!
//! Registers N services of one instance each (batches of 1,000), opens one
//! `GET /v1/catalog/watch` stream on the whole catalog with roster-client,
//! reads its snapshot, then makes K changes one at a time (maintenance on/off
//! of the instance of a service picked across the catalog, `--interval-ms`
//! apart). For every change it measures the time from just before the change's
//! `PUT` to the moment the stream's reader has the delta carrying the change's
//! index, and the size of that delta's JSON. Runs on a current-thread runtime,
//! so the whole load generator sits on one CPU.
//!
//! ```text
//! catalog_stream --url http://127.0.0.1:8500 [--services 10000] [--changes 200] [--interval-ms 20]
//! ```
//!
//! Prints one `RESULT key=value ...` line.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use roster_bench::{event_index, instance_address, quantile};
use roster_client::api::{BatchOp, BatchRegister, MaintenanceRequest, RegisterRequest};
use roster_client::{CatalogFilter, CatalogStream, RosterClient};
use tokio::sync::mpsc;

const USAGE: &str =
    "usage: catalog_stream --url URL [--services N] [--changes K] [--interval-ms MS]";
/// How long the stream may take to deliver a change before it counts as missed.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Args {
    url: String,
    services: usize,
    changes: usize,
    interval: Duration,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            url: String::new(),
            services: 10_000,
            changes: 200,
            interval: Duration::from_millis(20),
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(USAGE)?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag}: not a number: {value}"))
            };
            match flag.as_str() {
                "--url" => args.url = value.clone(),
                "--services" => args.services = number()?.max(1) as usize,
                "--changes" => args.changes = number()?.max(1) as usize,
                "--interval-ms" => args.interval = Duration::from_millis(number()?),
                _ => return Err(USAGE.into()),
            }
        }
        if args.url.is_empty() {
            return Err(USAGE.into());
        }
        Ok(args)
    }
}

fn service(i: usize) -> String {
    format!("svc-{i:05}")
}

fn instance(i: usize) -> String {
    format!("i{i:05}")
}

/// What the reader saw: each delta's index, arrival and size.
type Seen = (u64, Instant, usize);

/// Reads deltas until the stream ends or the receiver is gone.
async fn read(mut stream: CatalogStream, tx: mpsc::UnboundedSender<Seen>) -> Result<(), String> {
    while let Some((_, raw)) = stream.next_raw().await.map_err(|e| e.to_string())? {
        let at = Instant::now();
        let index = event_index(&raw.data).ok_or("a delta without an index")?;
        if tx.send((index, at, raw.data.len())).is_err() {
            return Ok(());
        }
    }
    Err("the registry closed the catalog stream".into())
}

async fn run(args: Args) -> Result<String, String> {
    let client = RosterClient::new(&args.url).map_err(|e| e.to_string())?;
    let mut ops = Vec::with_capacity(1000);
    for i in 0..args.services {
        ops.push(BatchOp::Register(BatchRegister {
            service: service(i),
            // Instance ids are unique across the registry.
            id: instance(i),
            instance: RegisterRequest {
                address: Some(instance_address(i)),
                port: 8080,
                tags: vec!["v1".into()],
                ..RegisterRequest::default()
            },
        }));
        if ops.len() == 1000 || i + 1 == args.services {
            client.batch(&ops).await.map_err(|e| e.to_string())?;
            ops.clear();
        }
    }
    let mut stream = client
        .watch_catalog(&CatalogFilter::all(), None)
        .await
        .map_err(|e| e.to_string())?;
    let (_, snapshot) = stream
        .next_raw()
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the stream closed before its snapshot")?;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = tokio::spawn(read(stream, tx));

    let mut in_maintenance = vec![false; args.services];
    let mut latencies = Vec::with_capacity(args.changes);
    let mut bytes = Vec::with_capacity(args.changes);
    let mut missed = 0usize;
    let mut tick = tokio::time::interval(args.interval);
    for k in 0..args.changes {
        tick.tick().await;
        // Spread the changes over the catalog (a stride coprime to any count
        // below it that is not its multiple).
        let s = (k * 7919) % args.services;
        in_maintenance[s] = !in_maintenance[s];
        let req = MaintenanceRequest {
            enabled: in_maintenance[s],
            reason: Some("bench".into()),
        };
        let start = Instant::now();
        let changed = client
            .maintenance(&service(s), &instance(s), &req)
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((index, at, size))) if index >= changed.modify_index => {
                    latencies.push(at.saturating_duration_since(start).as_micros() as u64);
                    bytes.push(size as u64);
                    break;
                }
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(match reader.await {
                        Ok(Err(e)) => e,
                        _ => "the stream's reader ended".into(),
                    });
                }
                Err(_) => {
                    missed += 1;
                    break;
                }
            }
        }
    }
    reader.abort();
    latencies.sort_unstable();
    bytes.sort_unstable();
    let q = |v: &[u64], p: f64| quantile(v, p).unwrap_or(0);
    let mean_bytes = if bytes.is_empty() {
        0
    } else {
        bytes.iter().sum::<u64>() / bytes.len() as u64
    };
    Ok(format!(
        "RESULT services={} changes={} delivered={} missed={} p50_ms={:.2} p90_ms={:.2} \
         p99_ms={:.2} max_ms={:.2} snapshot_bytes={} delta_bytes_mean={} delta_bytes_max={}",
        args.services,
        args.changes,
        latencies.len(),
        missed,
        q(&latencies, 0.50) as f64 / 1000.0,
        q(&latencies, 0.90) as f64 / 1000.0,
        q(&latencies, 0.99) as f64 / 1000.0,
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        snapshot.data.len(),
        mean_bytes,
        bytes.last().copied().unwrap_or(0),
    ))
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match rt.block_on(run(args)) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("catalog_stream: {e}");
            ExitCode::FAILURE
        }
    }
}
