//! xDS push latency: the time from just before a catalog change's `PUT` to the
//! moment each subscribed xDS stream reads the endpoints response carrying it.
//!
//! Registers 10 instances of service `bench`, opens N state-of-the-world ADS
//! streams (at most `--per-connection` on one HTTP/2 connection, as gRPC
//! clients of one process share theirs) each subscribed to the endpoints of
//! `bench`, then makes K changes (maintenance on/off, `--interval-ms` apart).
//! One current-thread runtime: the whole load generator sits on one CPU.
//!
//! ```text
//! xds_latency --url http://127.0.0.1:8500 --grpc 127.0.0.1:8502 --streams 1000 --changes 50
//!     [--interval-ms 100] [--per-connection 100] [--server-pid PID]
//! ```
//!
//! Prints `CHANGES` when every stream has its first response, then one
//! `RESULT key=value ...` line. With `XDS_PER_CHANGE` set in the environment
//! it first prints one `CHANGE` line per change: how long its `PUT` took to be
//! answered and the first, median and last delivery, which tells a slow
//! write apart from a slow push.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use roster_bench::{cpu_seconds, quantile};
use roster_client::RosterClient;
use roster_client::api::{MaintenanceRequest, RegisterRequest};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const SERVICE: &str = "bench";
const INSTANCES: usize = 10;
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
const SETTLE: Duration = Duration::from_secs(2);
const USAGE: &str = "usage: xds_latency --url URL --grpc HOST:PORT --streams N --changes K \
    [--interval-ms MS] [--per-connection N] [--server-pid PID]";

#[derive(Debug)]
struct Args {
    url: String,
    grpc: String,
    streams: usize,
    changes: usize,
    interval: Duration,
    per_connection: usize,
    server_pid: Option<u32>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        grpc: String::new(),
        streams: 0,
        changes: 0,
        interval: Duration::from_millis(100),
        per_connection: 100,
        server_pid: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => a.url = v,
            "--grpc" => a.grpc = v,
            "--streams" => a.streams = num(&v)? as usize,
            "--changes" => a.changes = num(&v)? as usize,
            "--interval-ms" => a.interval = Duration::from_millis(num(&v)?),
            "--per-connection" => a.per_connection = (num(&v)? as usize).max(1),
            "--server-pid" => a.server_pid = Some(num(&v)? as u32),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    if a.url.is_empty() || a.grpc.is_empty() || a.streams == 0 || a.changes == 0 {
        return Err(USAGE.into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(m) => {
            eprintln!("{m}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(m) => {
            eprintln!("xds_latency: {m}");
            ExitCode::FAILURE
        }
    }
}

/// What a stream saw: the version (catalog index) of each response and when.
type Seen = Vec<(u64, Instant)>;

async fn run(args: &Args) -> Result<(), String> {
    let client = RosterClient::new(&args.url).map_err(|e| e.to_string())?;
    for i in 0..INSTANCES {
        let req = RegisterRequest {
            address: Some(format!("10.0.0.{}", i + 1)),
            port: 8080,
            ..RegisterRequest::default()
        };
        client
            .register(SERVICE, &format!("bench-{i}"), &req)
            .await
            .map_err(|e| format!("register: {e}"))?;
    }
    let setup_start = Instant::now();
    let connections = args.streams.div_ceil(args.per_connection);
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        let ch = Channel::from_shared(format!("http://{}", args.grpc))
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        channels.push(ch);
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut tasks = JoinSet::new();
    for s in 0..args.streams {
        let ch = channels[s / args.per_connection].clone();
        let ready = ready_tx.clone();
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let mut client = AggregatedDiscoveryServiceClient::new(ch);
            let (tx, rx) = mpsc::channel(4);
            let _ = tx
                .send(DiscoveryRequest {
                    type_url: EDS.into(),
                    resource_names: vec![SERVICE.into()],
                    ..DiscoveryRequest::default()
                })
                .await;
            let mut seen: Seen = Vec::new();
            let mut stream = match client
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await
            {
                Ok(r) => r.into_inner(),
                Err(e) => return Err(e.to_string()),
            };
            let mut first = true;
            loop {
                tokio::select! {
                    _ = stop.changed() => return Ok(seen),
                    msg = stream.message() => match msg {
                        Ok(Some(r)) => {
                            let at = Instant::now();
                            // ACK, as gRPC clients do.
                            let _ = tx.try_send(DiscoveryRequest {
                                type_url: EDS.into(),
                                resource_names: vec![SERVICE.into()],
                                version_info: r.version_info.clone(),
                                response_nonce: r.nonce.clone(),
                                ..DiscoveryRequest::default()
                            });
                            if first {
                                first = false;
                                let _ = ready.send(());
                            } else if let Ok(v) = r.version_info.parse() {
                                seen.push((v, at));
                            }
                        }
                        Ok(None) => return Err("stream ended".into()),
                        Err(e) => return Err(e.to_string()),
                    },
                }
            }
        });
    }
    drop(ready_tx);
    for n in 0..args.streams {
        match tokio::time::timeout(SETUP_TIMEOUT, ready_rx.recv()).await {
            Ok(Some(())) => {}
            _ => return Err(format!("only {n} streams got their first response")),
        }
    }
    let setup = setup_start.elapsed();
    println!(
        "CHANGES streams={} connections={connections} setup_ms={}",
        args.streams,
        setup.as_millis()
    );
    let _ = std::io::stdout().flush();

    let cpu0 = args.server_pid.and_then(|p| cpu_seconds(&p.to_string()));
    let t0 = Instant::now();
    let mut changes: Vec<(u64, Instant)> = Vec::new();
    let mut put_us: Vec<u64> = Vec::new();
    let mut on = [false; INSTANCES];
    for k in 0..args.changes {
        tokio::time::sleep_until((t0 + args.interval * k as u32).into()).await;
        let i = k % INSTANCES;
        on[i] = !on[i];
        let start = Instant::now();
        let inst = client
            .maintenance(
                SERVICE,
                &format!("bench-{i}"),
                &MaintenanceRequest {
                    enabled: on[i],
                    reason: on[i].then(|| "bench".to_owned()),
                },
            )
            .await
            .map_err(|e| format!("change {k}: {e}"))?;
        put_us.push(start.elapsed().as_micros() as u64);
        changes.push((inst.modify_index, start));
    }
    tokio::time::sleep(SETTLE).await;
    let wall = t0.elapsed().as_secs_f64();
    let server_cpu = match (
        cpu0,
        args.server_pid.and_then(|p| cpu_seconds(&p.to_string())),
    ) {
        (Some(a), Some(b)) => format!("{:.0}", 100.0 * (b - a) / wall),
        _ => "-".into(),
    };
    let _ = stop_tx.send(true);
    let by_index: HashMap<u64, Instant> = changes.iter().copied().collect();
    let mut all = Vec::new();
    let mut per_change: HashMap<u64, Vec<u64>> = HashMap::new();
    let (mut failed, mut coalesced) = (0usize, 0usize);
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(|e| e.to_string())? {
            Ok(seen) => {
                for (v, at) in seen {
                    match by_index.get(&v) {
                        Some(start) => {
                            let us = at.saturating_duration_since(*start).as_micros() as u64;
                            all.push(us);
                            per_change.entry(v).or_default().push(us);
                        }
                        None => coalesced += 1,
                    }
                }
            }
            Err(_) => failed += 1,
        }
    }
    all.sort_unstable();
    if std::env::var_os("XDS_PER_CHANGE").is_some() {
        for ((v, _), put) in changes.iter().zip(&put_us) {
            let mut l = per_change.remove(v).unwrap_or_default();
            l.sort_unstable();
            let q = |p: f64| quantile(&l, p).unwrap_or(0);
            println!(
                "CHANGE index={v} put_us={put} n={} min_us={} p50_us={} max_us={}",
                l.len(),
                q(0.0),
                q(0.5),
                q(1.0)
            );
        }
    }
    let expected = args.streams * changes.len();
    let q = |p: f64| quantile(&all, p).map_or("-".into(), |x| x.to_string());
    println!(
        "RESULT streams={} changes={} deliveries={} missing={} p50_us={} p90_us={} p99_us={} max_us={} \
         setup_ms={} server_cpu_pct={server_cpu} failed_streams={failed} other_versions={coalesced}",
        args.streams,
        changes.len(),
        all.len(),
        expected.saturating_sub(all.len()),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0),
        setup.as_millis(),
    );
    Ok(())
}
