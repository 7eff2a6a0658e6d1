//! Watch change-to-notification latency.
//!
//! Registers 10 instances of service `bench`, opens N watch streams on it, then
//! makes K changes one at a time (maintenance on/off of instance k % 10, ~100 ms
//! apart) and measures, for every watcher and change, the time from just before
//! the change's `PUT` to the moment the watcher read the event carrying the
//! change's index. Runs on a current-thread runtime, so the whole load generator
//! sits on one CPU.
//!
//! ```text
//! watch_latency --url http://127.0.0.1:8500 --watchers 1000 --changes 50
//!     [--interval-ms 100] [--open-concurrency 100] [--server-pid PID] [--detail FILE]
//!     [--per-connection N [--client raw|h2]] [--skip-setup]
//! ```
//!
//! Without `--per-connection` every stream has its own HTTP/1.1 connection
//! (through roster-client); with it, the streams share HTTP/2 connections, N
//! to one. `--client raw` (the default) reads each connection in one task
//! that cuts the HTTP/2 frames itself ([`roster_bench::h2raw`]), so that the
//! load generator's own work per event stays small next to the server's;
//! `--client h2` reads every stream in a task of its own through the `h2`
//! crate (what the figures before the sixteenth session used).
//!
//! Prints `CHANGES` when the streams are open and the changes start, then one
//! `RESULT key=value ...` line. `--server-pid` adds the server's CPU use during
//! the changes (K intervals from the first); `--detail` writes one line per change.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use roster_bench::{CpuMark, event_index, quantile};
use roster_client::api::{MaintenanceRequest, RegisterRequest};
use roster_client::{RosterClient, WatchStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

/// The watched service.
const SERVICE: &str = "bench";
/// Instances registered in it.
const INSTANCES: usize = 10;
/// How long opening all streams may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(300);
/// How long after the final change the watchers are told it was the final one.
const SETTLE: Duration = Duration::from_secs(2);
/// How long watchers may take to see the final change after that.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

const USAGE: &str = "usage: watch_latency --url URL --watchers N --changes K \
    [--interval-ms MS] [--open-concurrency N] [--server-pid PID] [--detail FILE] \
    [--per-connection N [--client raw|h2]] [--skip-setup]";

/// Command-line arguments.
#[derive(Debug)]
struct Args {
    url: String,
    watchers: usize,
    changes: usize,
    interval: Duration,
    open_concurrency: usize,
    server_pid: Option<u32>,
    detail: Option<String>,
    /// Streams per HTTP/2 connection; 0 for HTTP/1.1, one each.
    per_connection: usize,
    /// How HTTP/2 streams are read: by hand, one task per connection (true),
    /// or through the `h2` crate, one task per stream.
    raw: bool,
    /// Registers nothing: the server (`peer_h2_sse`) already serves the
    /// watched service.
    skip_setup: bool,
}

impl Args {
    fn parse() -> Result<Args, String> {
        let mut args = Args {
            url: String::new(),
            watchers: 0,
            changes: 0,
            interval: Duration::from_millis(100),
            open_concurrency: 100,
            server_pid: None,
            detail: None,
            per_connection: 0,
            raw: true,
            skip_setup: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--url" => args.url = value()?,
                "--watchers" => args.watchers = num(&flag, value()?)?,
                "--changes" => args.changes = num(&flag, value()?)?,
                "--interval-ms" => args.interval = Duration::from_millis(num(&flag, value()?)?),
                "--open-concurrency" => args.open_concurrency = num(&flag, value()?)?,
                "--server-pid" => args.server_pid = Some(num(&flag, value()?)?),
                "--detail" => args.detail = Some(value()?),
                "--per-connection" => args.per_connection = num(&flag, value()?)?,
                "--client" => {
                    args.raw = match value()?.as_str() {
                        "raw" => true,
                        "h2" => false,
                        other => return Err(format!("--client: {other:?} is not raw or h2")),
                    }
                }
                "--skip-setup" => args.skip_setup = true,
                "-h" | "--help" => return Err(USAGE.into()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if args.url.is_empty() || args.watchers == 0 || args.changes == 0 {
            return Err(USAGE.into());
        }
        args.open_concurrency = args.open_concurrency.max(1);
        Ok(args)
    }
}

fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
    v.parse()
        .map_err(|_| format!("{flag}: {v:?} is not a number"))
}

/// What the load generator tells the watchers.
#[derive(Clone, Copy, Debug, Default)]
struct Control {
    /// Index of the last change, once it is made (0 before).
    final_index: u64,
    /// Give up waiting and return what you have.
    stop: bool,
}

/// What one watcher saw after its first event.
#[derive(Debug)]
struct Seen {
    /// Index of the first event (the state when the stream opened).
    initial: u64,
    /// Index and arrival instant of every later event.
    events: Vec<(u64, Instant)>,
    /// Why the stream ended early, if it did.
    failure: Option<String>,
    /// The stream, kept open until every watcher is done: closing thousands of
    /// connections while others still read the final change would slow them.
    stream: Option<Stream>,
}

impl Seen {
    fn new() -> Seen {
        Seen {
            initial: 0,
            events: Vec::new(),
            failure: None,
            stream: None,
        }
    }
}

/// Where a watcher opens its stream.
#[derive(Clone)]
enum Via {
    /// roster-client, one HTTP/1.1 connection per stream.
    Http1(RosterClient),
    /// A shared HTTP/2 connection.
    Http2(h2::client::SendRequest<Bytes>),
}

/// One open watch stream.
#[derive(Debug)]
enum Stream {
    Http1(Box<WatchStream>),
    Http2 {
        body: h2::RecvStream,
        buf: Vec<u8>,
    },
    /// A connection read by [`raw::connection`], held by the record of its
    /// first stream.
    Raw {
        _connection: roster_bench::h2raw::Conn,
    },
}

/// A bare HTTP/2 connection to `url` (`http://host:port`), driven by a task
/// of its own.
async fn h2_connection(url: &str) -> Result<h2::client::SendRequest<Bytes>, String> {
    roster_bench::h2_connect(url.trim_start_matches("http://").trim_end_matches('/')).await
}

impl Via {
    async fn open(&self) -> Result<Stream, String> {
        match self {
            Via::Http1(client) => client
                .watch(&[SERVICE], None)
                .await
                .map(|s| Stream::Http1(Box::new(s)))
                .map_err(|e| e.to_string()),
            Via::Http2(send) => {
                let req =
                    http::Request::get(format!("http://localhost/v1/watch?service={SERVICE}"))
                        .body(())
                        .map_err(|e| e.to_string())?;
                let mut send = send.clone().ready().await.map_err(|e| e.to_string())?;
                let (response, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
                let response = response.await.map_err(|e| e.to_string())?;
                if response.status() != 200 {
                    return Err(format!("watch answered {}", response.status()));
                }
                Ok(Stream::Http2 {
                    body: response.into_body(),
                    buf: Vec::new(),
                })
            }
        }
    }
}

impl Stream {
    /// The index of the next event; `None` when the registry closed the
    /// stream.
    async fn next_index(&mut self) -> Result<Option<u64>, String> {
        match self {
            Stream::Http1(stream) => match stream.next_raw().await.map_err(|e| e.to_string())? {
                None => Ok(None),
                Some(raw) => event_index(&raw.data)
                    .map(Some)
                    .ok_or_else(|| format!("event without an index: {}", raw.data)),
            },
            Stream::Raw { .. } => Err("a raw connection is read by its own task".into()),
            Stream::Http2 { body, buf } => loop {
                if let Some(end) = frame_end(buf) {
                    let index = sse_index(&buf[..end])?;
                    buf.drain(..end);
                    match index {
                        Some(index) => return Ok(Some(index)),
                        None => continue,
                    }
                }
                match body.data().await {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(e.to_string()),
                    Some(Ok(chunk)) => {
                        let _ = body.flow_control().release_capacity(chunk.len());
                        buf.extend_from_slice(&chunk);
                    }
                }
            },
        }
    }
}

/// One change made by the load generator.
#[derive(Debug)]
struct Change {
    index: u64,
    start: Instant,
    put: Duration,
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("watch_latency: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> Result<(), String> {
    let client = RosterClient::new(&args.url).map_err(|e| e.to_string())?;
    let to_register = if args.skip_setup { 0 } else { INSTANCES };
    for i in 0..to_register {
        let req = RegisterRequest {
            address: Some(format!("10.0.0.{}", i + 1)),
            port: 8080,
            tags: vec!["bench".into()],
            ..RegisterRequest::default()
        };
        let id = instance_id(i);
        client
            .register(SERVICE, &id, &req)
            .await
            .map_err(|e| format!("register {id}: {e}"))?;
        let off = MaintenanceRequest {
            enabled: false,
            reason: None,
        };
        client
            .maintenance(SERVICE, &id, &off)
            .await
            .map_err(|e| format!("maintenance off {id}: {e}"))?;
    }

    // Open the streams, at most `open_concurrency` at a time so the server's
    // accept backlog (128) does not overflow into 1 s SYN retransmits, and wait
    // for every first event.
    let setup_start = Instant::now();
    let (ctl_tx, ctl_rx) = watch::channel(Control::default());
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let open = Arc::new(Semaphore::new(args.open_concurrency));
    // Over HTTP/2, one client (one connection) per `per_connection` streams.
    let connections: Vec<Via> = if args.per_connection == 0 {
        vec![Via::Http1(client.clone())]
    } else if args.raw {
        Vec::new()
    } else {
        let mut v = Vec::new();
        for _ in 0..args.watchers.div_ceil(args.per_connection) {
            v.push(Via::Http2(h2_connection(&args.url).await?));
        }
        v
    };
    let mut tasks = JoinSet::new();
    if args.per_connection > 0 && args.raw {
        let addr = args.url.trim_start_matches("http://").trim_end_matches('/');
        for c in 0..args.watchers.div_ceil(args.per_connection) {
            let n = args
                .per_connection
                .min(args.watchers - c * args.per_connection);
            let conn = raw::connection(addr.to_owned(), n, ready_tx.clone(), ctl_rx.clone());
            tasks.spawn(conn);
        }
    } else {
        for w in 0..args.watchers {
            let via = &connections[w.checked_div(args.per_connection).unwrap_or(0)];
            tasks.spawn(watcher(
                via.clone(),
                open.clone(),
                ready_tx.clone(),
                ctl_rx.clone(),
            ));
        }
    }
    drop(ready_tx);
    let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
    for opened in 0..args.watchers {
        let msg = tokio::time::timeout_at(deadline, ready_rx.recv()).await;
        let failure = match msg {
            Ok(Some(Ok(()))) => continue,
            Ok(Some(Err(e))) => e,
            Ok(None) => "watchers ended before opening".into(),
            Err(_) => format!("only {opened} streams open after {SETUP_TIMEOUT:?}"),
        };
        let _ = ctl_tx.send(Control {
            final_index: 0,
            stop: true,
        });
        tasks.abort_all();
        return Err(format!("opening stream {}: {failure}", opened + 1));
    }
    let setup = setup_start.elapsed();
    println!(
        "CHANGES watchers={} setup_ms={} per_connection={}",
        args.watchers,
        setup.as_millis(),
        args.per_connection
    );
    let _ = std::io::stdout().flush();

    // The changes, one at a time, over a bare HTTP/2 connection of their
    // own: what a change costs the client library is not the server's.
    let writer = h2_connection(&args.url).await?;
    let cpu = CpuMark::now(args.server_pid);
    let t0 = Instant::now();
    let mut changes: Vec<Change> = Vec::with_capacity(args.changes);
    let mut in_maintenance = [false; INSTANCES];
    for k in 0..args.changes {
        tokio::time::sleep_until((t0 + args.interval * k as u32).into()).await;
        let i = k % INSTANCES;
        in_maintenance[i] = !in_maintenance[i];
        let body = if in_maintenance[i] {
            format!("{{\"enabled\":true,\"reason\":\"bench change {k}\"}}")
        } else {
            "{\"enabled\":false}".to_owned()
        };
        let start = Instant::now();
        let modify_index = put_maintenance(&writer, &instance_id(i), body)
            .await
            .map_err(|e| format!("change {k}: {e}"))?;
        let put = start.elapsed();
        if changes.last().is_some_and(|c| c.index >= modify_index) {
            return Err(format!(
                "change {k}: modify_index {modify_index} did not grow"
            ));
        }
        changes.push(Change {
            index: modify_index,
            start,
            put,
        });
    }
    // CPU use while the changes were being made, one interval per change.
    tokio::time::sleep_until((t0 + args.interval * args.changes as u32).into()).await;
    let (client_cpu, server_cpu) = cpu.percent(t0.elapsed().as_secs_f64());

    // Tell the watchers which change was the last one. Not at once: waking them
    // all would compete with the delivery of that change.
    let last = changes.last().expect("at least one change");
    tokio::time::sleep_until((last.start + SETTLE).into()).await;
    let final_index = last.index;
    ctl_tx.send_replace(Control {
        final_index,
        stop: false,
    });

    // Wait for every watcher to see the final change, or give up.
    let mut seen = Vec::with_capacity(args.watchers);
    let drain_deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
    loop {
        match tokio::time::timeout_at(drain_deadline, tasks.join_next()).await {
            Ok(Some(joined)) => seen.extend(joined.map_err(|e| e.to_string())?),
            Ok(None) => break,
            Err(_) => {
                ctl_tx.send_replace(Control {
                    final_index,
                    stop: true,
                });
                while let Some(joined) = tasks.join_next().await {
                    seen.extend(joined.map_err(|e| e.to_string())?);
                }
                break;
            }
        }
    }

    // Match deliveries with changes.
    let by_index: HashMap<u64, usize> = changes
        .iter()
        .enumerate()
        .map(|(k, c)| (c.index, k))
        .collect();
    let mut per_change: Vec<Vec<u64>> = vec![Vec::with_capacity(seen.len()); changes.len()];
    let (mut dup, mut unexpected, mut reordered, mut final_seen, mut failures) = (0, 0, 0, 0, 0);
    let mut first_failure = None;
    for s in &seen {
        let mut got = vec![false; changes.len()];
        let mut last = s.initial;
        for &(index, at) in &s.events {
            if index <= last {
                reordered += 1;
            }
            last = last.max(index);
            let Some(&k) = by_index.get(&index) else {
                unexpected += 1;
                continue;
            };
            if std::mem::replace(&mut got[k], true) {
                dup += 1;
                continue;
            }
            let latency = at.saturating_duration_since(changes[k].start);
            per_change[k].push(latency.as_micros() as u64);
        }
        if got.last() == Some(&true) {
            final_seen += 1;
        }
        if let Some(f) = &s.failure {
            failures += 1;
            first_failure.get_or_insert_with(|| f.clone());
        }
    }
    let mut all: Vec<u64> = per_change.iter().flatten().copied().collect();
    all.sort_unstable();
    let deliveries = all.len();
    let missing = seen.len() * changes.len() - deliveries;
    let q = |v: &[u64], p: f64| quantile(v, p).map_or("-".into(), |x| x.to_string());
    let mut put: Vec<u64> = changes.iter().map(|c| c.put.as_micros() as u64).collect();
    put.sort_unstable();

    if let Some(path) = &args.detail {
        let mut out = String::new();
        for (k, (c, lat)) in changes.iter().zip(&mut per_change).enumerate() {
            lat.sort_unstable();
            let _ = writeln!(
                out,
                "change={k} index={} put_us={} delivered={} first_us={} p50_us={} p99_us={} last_us={}",
                c.index,
                c.put.as_micros(),
                lat.len(),
                q(lat, 0.0),
                q(lat, 0.5),
                q(lat, 0.99),
                q(lat, 1.0),
            );
        }
        std::fs::write(path, out).map_err(|e| format!("writing {path}: {e}"))?;
    }
    if let Some(f) = first_failure {
        eprintln!("watch_latency: {failures} streams ended early; first: {f}");
    }
    println!(
        "RESULT watchers={} per_connection={} changes={} deliveries={deliveries} p50_us={} p90_us={} p99_us={} \
         max_us={} missing={missing} final_seen={final_seen} put_p50_us={} setup_ms={} \
         client_cpu_pct={client_cpu} server_cpu_pct={server_cpu} dup={dup} unexpected={unexpected} \
         reordered={reordered} failed_streams={failures}",
        args.watchers,
        args.per_connection,
        changes.len(),
        q(&all, 0.5),
        q(&all, 0.9),
        q(&all, 0.99),
        q(&all, 1.0),
        q(&put, 0.5),
        setup.as_millis(),
    );
    Ok(())
}

/// One watcher: opens a stream (holding an `open` permit until its first event),
/// reports on `ready`, then records every event until it has seen the final
/// change or is told to stop.
async fn watcher(
    via: Via,
    open: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    mut ctl: watch::Receiver<Control>,
) -> Vec<Seen> {
    vec![watch_one(via, open, ready, &mut ctl).await]
}

async fn watch_one(
    via: Via,
    open: Arc<Semaphore>,
    ready: mpsc::UnboundedSender<Result<(), String>>,
    ctl: &mut watch::Receiver<Control>,
) -> Seen {
    let mut seen = Seen::new();
    let permit = open.acquire().await.expect("semaphore is never closed");
    let opened = async {
        let mut stream = via.open().await?;
        let index = stream
            .next_index()
            .await?
            .ok_or("stream closed before its first event")?;
        Ok::<_, String>((stream, index))
    }
    .await;
    drop(permit);
    let stream = match opened {
        Ok((stream, index)) => {
            seen.initial = index;
            let _ = ready.send(Ok(()));
            stream
        }
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            seen.failure = Some(e);
            return seen;
        }
    };
    drop(ready);
    let stream = seen.stream.insert(stream);
    let mut latest = seen.initial;
    loop {
        tokio::select! {
            biased;
            changed = ctl.changed() => {
                let c = *ctl.borrow_and_update();
                if changed.is_err() || c.stop || (c.final_index != 0 && latest >= c.final_index) {
                    return seen;
                }
            }
            event = stream.next_index() => {
                let at = Instant::now();
                match event {
                    Ok(Some(index)) => {
                        seen.events.push((index, at));
                        latest = latest.max(index);
                        let c = *ctl.borrow();
                        if c.final_index != 0 && latest >= c.final_index {
                            return seen;
                        }
                    }
                    Ok(None) => {
                        seen.failure = Some("stream closed by the registry".into());
                        seen.stream = None;
                        return seen;
                    }
                    Err(e) => {
                        seen.failure = Some(e);
                        return seen;
                    }
                }
            }
        }
    }
}

/// Sets maintenance of instance `id` with the JSON `body`; the instance's
/// `modify_index` after it.
async fn put_maintenance(
    send: &h2::client::SendRequest<Bytes>,
    id: &str,
    body: String,
) -> Result<u64, String> {
    let req = http::Request::put(format!(
        "http://localhost/v1/services/{SERVICE}/instances/{id}/maintenance"
    ))
    .header("content-type", "application/json")
    .body(())
    .map_err(|e| e.to_string())?;
    let mut send = send.clone().ready().await.map_err(|e| e.to_string())?;
    let (response, mut out) = send.send_request(req, false).map_err(|e| e.to_string())?;
    out.send_data(Bytes::from(body), true)
        .map_err(|e| e.to_string())?;
    let response = response.await.map_err(|e| e.to_string())?;
    let status = response.status();
    let mut body = response.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    if status != 200 {
        return Err(format!(
            "maintenance answered {status}: {}",
            String::from_utf8_lossy(&got)
        ));
    }
    let at =
        memchr::memmem::find(&got, b"\"modify_index\":").ok_or("no modify_index in the answer")?;
    Ok(digits(&got[at + 15..]))
}

/// The length of the first whole SSE frame in `buf` (up to and with the
/// blank line that ends it).
fn frame_end(buf: &[u8]) -> Option<usize> {
    static END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\n\n"));
    END.find(buf).map(|at| at + 2)
}

/// The `"index"` of the event in one whole SSE frame; `None` for a frame
/// without data (a keep-alive comment).
fn sse_index(frame: &[u8]) -> Result<Option<u64>, String> {
    static DATA: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"data:"));
    static INDEX: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"index\":"));
    let data = DATA.find(frame).is_some();
    match INDEX.find(frame) {
        Some(at) if data => Ok(Some(digits(&frame[at + 8..]))),
        None if data => {
            let text = String::from_utf8_lossy(frame);
            Err(format!("event without an index: {text}"))
        }
        _ => Ok(None),
    }
}

/// The number `bytes` starts with.
fn digits(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0, |n, b| n * 10 + u64::from(b - b'0'))
}

fn instance_id(i: usize) -> String {
    format!("bench-{i}")
}

/// Watch streams read by hand, a connection's streams in one task.
mod raw {
    use std::time::Instant;

    use bytes::BufMut as _;
    use roster_bench::h2raw::{
        self, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, STATUS_200, frame_header,
        hpack_string,
    };
    use tokio::sync::{mpsc, watch};

    use super::{Control, SERVICE, Seen, Stream, frame_end, sse_index};

    /// One stream's receive side.
    struct Watch {
        /// SSE text not yet cut into whole frames.
        partial: Vec<u8>,
        /// Whether the stream's response headers said 200.
        answered: bool,
        /// Whether the first event (the state when it opened) came.
        opened: bool,
        /// The highest index seen.
        latest: u64,
        seen: Seen,
    }

    /// `GET /v1/watch?service=bench`: static-table entries and literals that
    /// are never indexed, so no HPACK state is kept.
    fn request_headers(authority: &str) -> Vec<u8> {
        let mut b = vec![0x82, 0x86]; // :method GET, :scheme http
        b.push(0x04); // :path, name from the static table
        hpack_string(&mut b, format!("/v1/watch?service={SERVICE}").as_bytes());
        b.push(0x01); // :authority
        hpack_string(&mut b, authority.as_bytes());
        b
    }

    /// Opens `streams` watch streams on one connection to `addr`, reports
    /// each one's first event on `ready`, and records every later event until
    /// every stream saw the final change or `ctl` says stop. Each stream's
    /// record; the first holds the connection open.
    pub async fn connection(
        addr: String,
        streams: usize,
        ready: mpsc::UnboundedSender<Result<(), String>>,
        mut ctl: watch::Receiver<Control>,
    ) -> Vec<Seen> {
        let mut state: Vec<Watch> = (0..streams)
            .map(|_| Watch {
                partial: Vec::new(),
                answered: false,
                opened: false,
                latest: 0,
                seen: Seen::new(),
            })
            .collect();
        let outcome = read(&addr, &mut state, &ready, &mut ctl).await;
        let mut seen: Vec<Seen> = state.into_iter().map(|w| w.seen).collect();
        match outcome {
            Ok(conn) => {
                if let Some(first) = seen.first_mut() {
                    first.stream = Some(Stream::Raw { _connection: conn });
                }
            }
            Err(e) => {
                let _ = ready.send(Err(e.clone()));
                for s in &mut seen {
                    s.failure.get_or_insert_with(|| e.clone());
                }
            }
        }
        seen
    }

    async fn read(
        addr: &str,
        state: &mut [Watch],
        ready: &mpsc::UnboundedSender<Result<(), String>>,
        ctl: &mut watch::Receiver<Control>,
    ) -> Result<h2raw::Conn, String> {
        let mut conn = h2raw::Conn::connect(addr).await?;
        let headers = request_headers(addr);
        for n in 0..state.len() {
            let flags = END_HEADERS | END_STREAM;
            frame_header(
                &mut conn.out,
                headers.len(),
                HEADERS,
                flags,
                h2raw::stream_id(n),
            );
            conn.out.put_slice(&headers);
        }
        conn.flush().await?;
        // Streams that have not yet seen the final change (once it is known).
        let mut behind = state.len();
        let mut final_index = 0;
        loop {
            tokio::select! {
                biased;
                changed = ctl.changed() => {
                    let c = *ctl.borrow_and_update();
                    if changed.is_err() || c.stop {
                        return Ok(conn);
                    }
                    final_index = c.final_index;
                    behind = state.iter().filter(|w| w.latest < final_index).count();
                    if behind == 0 {
                        return Ok(conn);
                    }
                    continue;
                }
                read = conn.read() => read?,
            }
            let at = Instant::now();
            while let Some(frame) = conn.next_frame() {
                let id = frame.stream;
                let w = h2raw::stream_index(id).and_then(|i| state.get_mut(i));
                match (frame.kind, w) {
                    (DATA, Some(w)) => {
                        if !w.answered {
                            return Err(format!("stream {id}: data before a 200"));
                        }
                        w.partial.extend_from_slice(frame.data()?);
                        let mut start = 0;
                        while let Some(end) = frame_end(&w.partial[start..]) {
                            let index = sse_index(&w.partial[start..start + end])?;
                            start += end;
                            let Some(index) = index else { continue };
                            if !w.opened {
                                w.opened = true;
                                w.seen.initial = index;
                                let _ = ready.send(Ok(()));
                            } else {
                                w.seen.events.push((index, at));
                            }
                            let was_behind = final_index != 0 && w.latest < final_index;
                            w.latest = w.latest.max(index);
                            if was_behind && w.latest >= final_index {
                                behind -= 1;
                            }
                        }
                        w.partial.drain(..start);
                        if frame.flags & END_STREAM != 0 {
                            return Err(format!("the registry ended stream {id}"));
                        }
                    }
                    (HEADERS, Some(w)) => {
                        if frame.flags & END_STREAM != 0 {
                            return Err(format!("the registry ended stream {id}"));
                        }
                        if frame.payload.first() != Some(&STATUS_200) {
                            return Err(format!("stream {id} was not answered 200"));
                        }
                        w.answered = true;
                    }
                    (RST_STREAM, _) => return Err(format!("stream {id} reset")),
                    (GOAWAY, _) => return Err("the server sent GOAWAY".into()),
                    _ => frame.answer(&mut conn.out), // also window updates
                }
            }
            conn.flush().await?;
            if final_index != 0 && behind == 0 {
                return Ok(conn);
            }
        }
    }
}
