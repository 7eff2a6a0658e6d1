//! Load generator for the etcd peer, over etcd's own gRPC API (etcd-client), the
//! path its clients use in production (not the JSON gateway). The same scenarios
//! as roster's, mapped onto etcd's primitives:
//!
//! - registration: `LeaseGrant` (TTL 600 s) then `Put /services/{svc}/{id}` with
//!   the lease and the instance's JSON as the value (two round trips, as a real
//!   instance does when it registers);
//! - heartbeat: `LeaseKeepAlive` of a random one of the preloaded leases, one
//!   bidirectional stream per worker carrying many leases (as clientv3 does);
//! - list: `Range` over the prefix `/services/{svc}/`;
//! - watch: N watchers of the prefix `/services/bench/` (one connection each, like
//!   roster's N SSE streams); K puts 100 ms apart; latency from just before the put
//!   to the watcher reading the event with the put's revision.
//!
//! Closed loop: `--concurrency` workers over `--connections` HTTP/2 connections,
//! each sending its next request when the last one is answered; `--warmup`
//! seconds not counted, then `--duration` seconds measured. Prints the same
//! `RESULT` line as `bench/report.lua` (wrk). Runs on one thread (pin it with
//! taskset).
//!
//! ```text
//! etcd_load preload   --endpoint 127.0.0.1:2379 --count N [--first I] [--services S | --service NAME] [--leases FILE]
//! etcd_load register  --endpoint E [--concurrency 64] [--connections 8] [--warmup 1] [--duration 10]
//! etcd_load heartbeat --endpoint E --leases FILE [...]
//! etcd_load list      --endpoint E --service NAME --expect N [...]
//! etcd_load watch     --endpoint E --watchers N [--changes 50] [--interval-ms 100] [--server-pid PID]
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions, PutOptions, WatchOptions};
use roster_bench::{CpuMark, cpu_seconds, instance_address, quantile, result_line};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

const USAGE: &str = "usage: etcd_load preload|register|heartbeat|list|watch --endpoint HOST:PORT \
    [--count N] [--first I] [--services S] [--service NAME] [--leases FILE] [--expect N] \
    [--concurrency C] [--connections K] [--warmup SECS] [--duration SECS] \
    [--watchers N] [--changes K] [--interval-ms MS] [--prefix P] [--server-pid PID]";
/// Lease TTL of every registered instance: longer than any run.
const TTL_SECS: i64 = 600;
/// One request that takes longer than this counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Command-line arguments (one struct for every mode).
#[derive(Debug, Clone)]
struct Args {
    mode: String,
    endpoint: String,
    count: usize,
    first: usize,
    services: usize,
    service: Option<String>,
    leases: Option<String>,
    expect: usize,
    concurrency: usize,
    connections: usize,
    warmup: f64,
    duration: f64,
    watchers: usize,
    changes: usize,
    interval_ms: u64,
    prefix: String,
    /// The server's process, for its CPU use during a watch run's changes.
    server_pid: Option<u32>,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        mode: it.next().ok_or(USAGE)?,
        endpoint: "127.0.0.1:2379".into(),
        count: 0,
        first: 0,
        services: 100,
        service: None,
        leases: None,
        expect: 0,
        concurrency: 64,
        connections: 8,
        warmup: 1.0,
        duration: 10.0,
        watchers: 1000,
        changes: 50,
        interval_ms: 100,
        prefix: "i".into(),
        server_pid: None,
    };
    while let Some(flag) = it.next() {
        let v = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let n = || {
            v.parse::<usize>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        let f = || {
            v.parse::<f64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        match flag.as_str() {
            "--endpoint" => a.endpoint = v.clone(),
            "--count" => a.count = n()?,
            "--first" => a.first = n()?,
            "--services" => a.services = n()?.max(1),
            "--service" => a.service = Some(v.clone()),
            "--leases" => a.leases = Some(v.clone()),
            "--expect" => a.expect = n()?,
            "--concurrency" => a.concurrency = n()?.max(1),
            "--connections" => a.connections = n()?.max(1),
            "--warmup" => a.warmup = f()?,
            "--duration" => a.duration = f()?,
            "--watchers" => a.watchers = n()?.max(1),
            "--changes" => a.changes = n()?.max(1),
            "--interval-ms" => a.interval_ms = n()? as u64,
            "--prefix" => a.prefix = v.clone(),
            "--server-pid" => a.server_pid = Some(n()? as u32),
            _ => return Err(USAGE.into()),
        }
    }
    Ok(a)
}

/// The key and value of instance `i` of `service`.
fn instance(service: &str, prefix: &str, i: usize) -> (String, String) {
    (
        format!("/services/{service}/{prefix}{i}"),
        format!(
            r#"{{"id":"{prefix}{i}","address":"{}","port":8080,"tags":["v1"]}}"#,
            instance_address(i)
        ),
    )
}

/// Registers one instance: a lease, then the key under it. Returns the lease id.
async fn register(
    client: &mut Client,
    service: &str,
    prefix: &str,
    i: usize,
) -> Result<i64, BoxError> {
    let lease = client.lease_grant(TTL_SECS, None).await?.id();
    let (key, value) = instance(service, prefix, i);
    client
        .put(key, value, Some(PutOptions::new().with_lease(lease)))
        .await?;
    Ok(lease)
}

async fn connect(a: &Args) -> Result<Vec<Client>, BoxError> {
    let mut clients = Vec::new();
    for _ in 0..a.connections {
        clients.push(Client::connect([a.endpoint.as_str()], None).await?);
    }
    Ok(clients)
}

/// Runs `op` in a closed loop on `states.len()` workers (each owns one state and
/// gives it back with every answer) and returns the `RESULT` line.
async fn closed_loop<S, F, Fut>(states: Vec<S>, a: &Args, op: F) -> String
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (S, Result<(), BoxError>)> + Send,
{
    let start = Instant::now();
    let cpu0 = cpu_seconds("self").unwrap_or(0.0);
    let measure_from = start + Duration::from_secs_f64(a.warmup);
    let end = measure_from + Duration::from_secs_f64(a.duration);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for mut state in states {
        let (op, errors) = (op.clone(), errors.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    return latencies;
                }
                let result = tokio::time::timeout(OP_TIMEOUT, op(state)).await;
                let Ok((next, result)) = result else {
                    // A worker whose request timed out lost its state: it stops.
                    errors.fetch_add(1, Ordering::Relaxed);
                    return latencies;
                };
                state = next;
                let done = Instant::now();
                if t0 >= measure_from && done <= end {
                    if result.is_ok() {
                        latencies.push((done - t0).as_micros() as u64);
                    } else {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        all.extend(joined.unwrap_or_default());
    }
    let cpu = cpu_seconds("self").unwrap_or(0.0) - cpu0;
    // The generator's own CPU use: near 100 % means the generator, not etcd, is the limit.
    format!(
        "{} gen_cpu_pct={:.0}",
        result_line(&mut all, a.duration, errors.load(Ordering::Relaxed)),
        cpu / start.elapsed().as_secs_f64() * 100.0
    )
}

/// A small xorshift generator: picks leases without a dependency.
fn next_random(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

async fn preload(a: &Args) -> Result<String, BoxError> {
    let clients = connect(a).await?;
    let next = Arc::new(AtomicUsize::new(a.first));
    let end = a.first + a.count;
    let t0 = Instant::now();
    let mut tasks = JoinSet::new();
    for w in 0..32 {
        let (mut client, next, a) = (clients[w % clients.len()].clone(), next.clone(), a.clone());
        tasks.spawn(async move {
            let mut leases = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= end {
                    return Ok::<_, BoxError>(leases);
                }
                let service = a
                    .service
                    .clone()
                    .unwrap_or_else(|| format!("svc{}", i % a.services));
                leases.push(register(&mut client, &service, &a.prefix, i).await?);
            }
        });
    }
    let mut leases = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        leases.extend(joined??);
    }
    if let Some(path) = &a.leases {
        // Appended: a later preload adds to the live set.
        let text: String = leases.iter().map(|l| format!("{l}\n")).collect();
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?
            .write_all(text.as_bytes())?;
    }
    Ok(format!(
        "preloaded {} etcd instances in {:.1} s",
        a.count,
        t0.elapsed().as_secs_f64()
    ))
}

async fn run_register(a: &Args) -> Result<String, BoxError> {
    let clients = connect(a).await?;
    let counter = Arc::new(AtomicUsize::new(a.first));
    let states = (0..a.concurrency)
        .map(|w| clients[w % clients.len()].clone())
        .collect();
    let prefix = Arc::new(a.prefix.clone());
    Ok(closed_loop(states, a, move |mut client: Client| {
        let (counter, prefix) = (counter.clone(), prefix.clone());
        async move {
            let i = counter.fetch_add(1, Ordering::Relaxed);
            let service = format!("svc{}", i % 100);
            let r = register(&mut client, &service, &prefix, i)
                .await
                .map(|_| ());
            (client, r)
        }
    })
    .await)
}

async fn run_heartbeat(a: &Args) -> Result<String, BoxError> {
    let path = a.leases.as_deref().ok_or("heartbeat needs --leases FILE")?;
    let leases: Arc<Vec<i64>> = Arc::new(
        std::fs::read_to_string(path)?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
    );
    if leases.is_empty() {
        return Err("no leases".into());
    }
    let clients = connect(a).await?;
    let mut states = Vec::new();
    for w in 0..a.concurrency {
        let mut client = clients[w % clients.len()].clone();
        let (keeper, stream) = client.lease_keep_alive(leases[0]).await?;
        let seed = 0x9E37_79B9_7F4A_7C15u64 ^ (w as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D);
        states.push((keeper, stream, seed));
    }
    Ok(
        closed_loop(states, a, move |(mut keeper, mut stream, mut seed)| {
            let leases = leases.clone();
            async move {
                // One stream, many leases: the keeper's id is public with etcd-client's
                // `pub-response-field` feature.
                keeper.id = leases[(next_random(&mut seed) % leases.len() as u64) as usize];
                let r: Result<(), BoxError> = async {
                    keeper.keep_alive().await?;
                    match stream.message().await? {
                        Some(resp) if resp.ttl() > 0 => Ok(()),
                        Some(_) => Err("lease not found".into()),
                        None => Err("keep-alive stream closed".into()),
                    }
                }
                .await;
                ((keeper, stream, seed), r)
            }
        })
        .await,
    )
}

async fn run_list(a: &Args) -> Result<String, BoxError> {
    let service = a.service.clone().ok_or("list needs --service NAME")?;
    let clients = connect(a).await?;
    let states = (0..a.concurrency)
        .map(|w| clients[w % clients.len()].clone())
        .collect();
    let (prefix, expect) = (Arc::new(format!("/services/{service}/")), a.expect);
    Ok(closed_loop(states, a, move |mut client: Client| {
        let prefix = prefix.clone();
        async move {
            let r = match client
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await
            {
                Ok(resp) if expect == 0 || resp.kvs().len() == expect => Ok(()),
                Ok(resp) => Err(format!("{} keys, expected {expect}", resp.kvs().len()).into()),
                Err(e) => Err(e.into()),
            };
            (client, r)
        }
    })
    .await)
}

async fn run_watch(a: &Args) -> Result<String, BoxError> {
    const SERVICE: &str = "bench";
    let mut writer = Client::connect([a.endpoint.as_str()], None).await?;
    for i in 0..10 {
        let (key, value) = instance(SERVICE, "w", i);
        writer.put(key, value, None).await?;
    }
    // Each watcher reports (watcher, revision, when it read the event).
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, i64, Instant)>();
    let opening = Arc::new(Semaphore::new(100));
    let connections = a.connections.min(a.watchers).max(1);
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(Client::connect([a.endpoint.as_str()], None).await?);
    }
    let setup_start = Instant::now();
    let mut opened = JoinSet::new();
    for w in 0..a.watchers {
        let (mut client, tx, opening) = (
            clients[w % connections].clone(),
            tx.clone(),
            opening.clone(),
        );
        opened.spawn(async move {
            let permit = opening.acquire_owned().await;
            let mut stream = client
                .watch(
                    format!("/services/{SERVICE}/"),
                    Some(WatchOptions::new().with_prefix()),
                )
                .await?;
            // Open means created: the first answer confirms the watch.
            match stream.message().await? {
                Some(resp) if resp.created() => {}
                _ => return Err::<_, BoxError>("watch not created".into()),
            }
            drop(permit);
            Ok::<_, BoxError>(tokio::spawn(async move {
                while let Ok(Some(resp)) = stream.message().await {
                    let now = Instant::now();
                    for event in resp.events() {
                        if let Some(kv) = event.kv() {
                            let _ = tx.send((w, kv.mod_revision(), now));
                        }
                    }
                }
            }))
        });
    }
    drop(tx);
    let readers = tokio::time::timeout(Duration::from_secs(300), async {
        let mut readers = Vec::new();
        while let Some(joined) = opened.join_next().await {
            readers.push(joined??);
        }
        Ok::<_, BoxError>(readers)
    })
    .await
    .map_err(|_| "opening the watches took over 300 s")??;
    let setup_ms = setup_start.elapsed().as_millis();
    println!("CHANGES");
    let cpu = CpuMark::now(a.server_pid);
    let changes_start = Instant::now();
    // Changes, one every interval; the put's revision identifies its event.
    let mut sent: HashMap<i64, Instant> = HashMap::new();
    let mut seen: HashMap<i64, Vec<u64>> = HashMap::new();
    let collect = |seen: &mut HashMap<i64, Vec<u64>>,
                   (_, rev, at): (usize, i64, Instant),
                   sent: &HashMap<i64, Instant>| {
        if let Some(t0) = sent.get(&rev) {
            seen.entry(rev)
                .or_default()
                .push(at.saturating_duration_since(*t0).as_micros() as u64);
        }
    };
    let mut pending = Vec::new();
    for k in 0..a.changes {
        let (key, _) = instance(SERVICE, "w", k % 10);
        let t0 = Instant::now();
        let resp = writer
            .put(key, format!(r#"{{"change":{k}}}"#), None)
            .await?;
        let rev = resp.header().map(|h| h.revision()).ok_or("no header")?;
        sent.insert(rev, t0);
        for item in pending.drain(..) {
            collect(&mut seen, item, &sent);
        }
        let next = t0 + Duration::from_millis(a.interval_ms);
        while let Ok(Some(item)) = tokio::time::timeout_at(next.into(), rx.recv()).await {
            if sent.contains_key(&item.1) {
                collect(&mut seen, item, &sent);
            } else {
                pending.push(item);
            }
        }
    }
    // CPU use while the changes were being made (as watch_latency reports it).
    let (client_cpu, server_cpu) = cpu.percent(changes_start.elapsed().as_secs_f64());
    // Drain: wait until every watcher saw every change, or 30 s.
    let expected = a.watchers * a.changes;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got: usize = seen.values().map(Vec::len).sum();
    while got < expected {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(item)) => {
                collect(&mut seen, item, &sent);
                got = seen.values().map(Vec::len).sum();
            }
            _ => break,
        }
    }
    for reader in &readers {
        reader.abort();
    }
    let mut all: Vec<u64> = seen.into_values().flatten().collect();
    all.sort_unstable();
    let q = |p| quantile(&all, p).unwrap_or(0);
    Ok(format!(
        "RESULT watchers={} changes={} p50_us={} p90_us={} p99_us={} max_us={} missing={} \
         setup_ms={setup_ms} client_cpu_pct={client_cpu} server_cpu_pct={server_cpu}",
        a.watchers,
        a.changes,
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0),
        expected - all.len()
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result = match a.mode.as_str() {
        "preload" => preload(&a).await,
        "register" => run_register(&a).await,
        "heartbeat" => run_heartbeat(&a).await,
        "list" => run_list(&a).await,
        "watch" => run_watch(&a).await,
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("etcd_load {}: {e}", a.mode);
            ExitCode::FAILURE
        }
    }
}
