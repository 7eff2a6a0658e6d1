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
//!     [--interval-ms 100] [--per-connection 100] [--server-pid PID] [--client raw|h2|tonic]
//! ```
//!
//! `--client raw` (the default) speaks HTTP/2 itself, one task per
//! connection, and looks only at each response's version and nonce: about
//! 1.25 ms of the generator's CPU per change at 1,000 streams. `--client h2`
//! is one task per stream on the h2 crate (3.5 ms per change, more than the
//! server spends, so at 1,000 streams it measured itself); `--client tonic`
//! uses tonic's generated client, which decodes each response whole.
//!
//! Prints `CHANGES` when every stream has its first response, then one
//! `RESULT key=value ...` line. A change counts as reached by a stream when
//! the stream reads the first response whose version is at or above the
//! change's index; `reached` counts such (change, stream) pairs, `missing`
//! the pairs never reached, and `exact` the responses whose version is a
//! change's own (the rest carried two or more changes at once, because the
//! stream was still busy when the next one came). With `XDS_PER_CHANGE` set in the environment
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
    [--interval-ms MS] [--per-connection N] [--server-pid PID] [--client raw|h2|tonic]";

#[derive(Debug)]
struct Args {
    url: String,
    grpc: String,
    streams: usize,
    changes: usize,
    interval: Duration,
    per_connection: usize,
    server_pid: Option<u32>,
    client: Client,
}

/// Which client the streams use.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// [`raw`]: HTTP/2 spoken by one task per connection.
    Raw,
    /// [`lean`]: raw HTTP/2, only the version and nonce read.
    H2,
    /// tonic's generated client, every response decoded whole.
    Tonic,
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
        client: Client::Raw,
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
            "--client" => {
                a.client = match v.as_str() {
                    "raw" => Client::Raw,
                    "h2" => Client::H2,
                    "tonic" => Client::Tonic,
                    _ => return Err(format!("--client: raw, h2 or tonic, not {v}")),
                }
            }
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

/// One stream through tonic's generated client (prost decodes every
/// response whole), until `stop`.
async fn tonic_stream(
    ch: Channel,
    ready: mpsc::UnboundedSender<()>,
    mut stop: watch::Receiver<bool>,
) -> Result<Seen, String> {
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
    let mut stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let mut first = true;
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(seen),
            msg = stream.message() => match msg {
                Ok(Some(r)) => {
                    let at = Instant::now();
                    // ACK, as gRPC clients do.
                    let _ = tx.try_send(ack(&r.version_info, &r.nonce));
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
}

/// The ACK of a response with `version` and `nonce`.
fn ack(version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![SERVICE.into()],
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..DiscoveryRequest::default()
    }
}

/// The lean client: raw HTTP/2 streams that read only a response's version
/// and nonce and send ACKs encoded straight into the stream. It costs the
/// generator a fraction of the tonic client's CPU per response, so that more
/// of what is measured is the server (real gRPC clients are not 10,000
/// streams on one core).
mod lean {
    use std::time::Instant;

    use bytes::{BufMut as _, Bytes, BytesMut};
    use prost::Message as _;
    use tokio::sync::{mpsc, watch};

    use super::{DiscoveryRequest, EDS, SERVICE, Seen};

    pub const PATH: &str =
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

    /// `msg` as one gRPC message: no compression, its length, its bytes.
    fn frame(msg: &DiscoveryRequest) -> Bytes {
        let len = msg.encoded_len();
        let mut b = BytesMut::with_capacity(5 + len);
        b.put_u8(0);
        b.put_u32(u32::try_from(len).expect("small message"));
        msg.encode(&mut b).expect("capacity reserved");
        b.freeze()
    }

    /// The request that subscribes a stream to the bench service's
    /// endpoints, framed.
    pub fn subscribe_frame() -> Bytes {
        frame(&DiscoveryRequest {
            type_url: EDS.into(),
            resource_names: vec![SERVICE.into()],
            ..DiscoveryRequest::default()
        })
    }

    /// Takes the varint at the front of `b`.
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }

    /// `version_info` (field 1) and `nonce` (field 5) of an encoded
    /// DiscoveryResponse; every other field is skipped unread.
    pub fn version_and_nonce(mut b: &[u8]) -> Option<(&[u8], &[u8])> {
        let (mut version, mut nonce): (&[u8], &[u8]) = (&[], &[]);
        while !b.is_empty() {
            let key = varint(&mut b)?;
            match key & 7 {
                0 => {
                    varint(&mut b)?;
                }
                1 => b = b.get(8..)?,
                5 => b = b.get(4..)?,
                2 => {
                    let len = usize::try_from(varint(&mut b)?).ok()?;
                    let field = b.get(..len)?;
                    b = &b[len..];
                    match key >> 3 {
                        1 => version = field,
                        5 => nonce = field,
                        _ => {}
                    }
                }
                _ => return None,
            }
        }
        Some((version, nonce))
    }

    /// One stream on `conn`, until `stop`.
    pub async fn stream(
        conn: h2::client::SendRequest<Bytes>,
        authority: String,
        ready: mpsc::UnboundedSender<()>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Seen, String> {
        let mut conn = conn.ready().await.map_err(|e| e.to_string())?;
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{authority}{PATH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (response, mut send) = conn
            .send_request(request, false)
            .map_err(|e| e.to_string())?;
        send.send_data(subscribe_frame(), false)
            .map_err(|e| e.to_string())?;
        let mut body = response.await.map_err(|e| e.to_string())?.into_body();
        let (mut buf, mut seen, mut first) = (BytesMut::new(), Seen::new(), true);
        let ack_prefix = ack_prefix();
        loop {
            let chunk = tokio::select! {
                _ = stop.changed() => return Ok(seen),
                chunk = body.data() => match chunk {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("stream ended".into()),
                },
            };
            let at = Instant::now();
            let _ = body.flow_control().release_capacity(chunk.len());
            // Whole messages are read from the chunk in place; only a
            // message cut by the chunk's end is copied aside.
            let mut rest: &[u8] = &chunk;
            if !buf.is_empty() {
                buf.extend_from_slice(rest);
                rest = &[];
            }
            loop {
                let from_buf = !buf.is_empty();
                let data: &[u8] = if from_buf { &buf } else { rest };
                if data.len() < 5 {
                    break;
                }
                let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                if data.len() < 5 + len {
                    break;
                }
                let (version, nonce) = version_and_nonce(&data[5..5 + len])
                    .ok_or("a response that does not decode")?;
                // ACK, as gRPC clients do.
                let _ = send.send_data(ack_frame(&ack_prefix, version, nonce), false);
                let version = std::str::from_utf8(version).map_err(|e| e.to_string())?;
                if first {
                    first = false;
                    let _ = ready.send(());
                } else if let Ok(v) = version.parse() {
                    seen.push((v, at));
                }
                if from_buf {
                    let _ = buf.split_to(5 + len);
                } else {
                    rest = &rest[5 + len..];
                }
            }
            if !rest.is_empty() {
                buf.extend_from_slice(rest);
            }
        }
    }

    /// The fields every ACK shares (type URL and resource name), encoded.
    pub fn ack_prefix() -> Vec<u8> {
        let fields = DiscoveryRequest {
            type_url: EDS.into(),
            resource_names: vec![SERVICE.into()],
            ..DiscoveryRequest::default()
        };
        fields.encode_to_vec()
    }

    /// An ACK of `version` and `nonce` as one gRPC message: the shared
    /// fields, then version_info (1) and response_nonce (5); field order
    /// does not matter to a protobuf reader.
    pub fn ack_frame(prefix: &[u8], version: &[u8], nonce: &[u8]) -> Bytes {
        let len = prefix.len() + 2 * 2 + version.len() + nonce.len();
        let mut b = BytesMut::with_capacity(5 + len);
        b.put_u8(0);
        b.put_u32(u32::try_from(len).expect("small message"));
        b.put_slice(prefix);
        for (tag, v) in [(0x0a, version), (0x2a, nonce)] {
            b.put_u8(tag);
            b.put_u8(u8::try_from(v.len()).expect("short field"));
            b.put_slice(v);
        }
        b.freeze()
    }
}

/// The raw client: one task per connection speaks HTTP/2 itself (frames
/// parsed in place, header blocks skipped unread, ACKs written into one
/// buffer and sent with one write per read), so that reading 1,000 responses
/// on the generator's one core costs less than the server spends sending
/// them. With the h2 client each stream was a task woken per response, and
/// the generator, not the server, set the figure at 1,000 streams.
///
/// Flow control: both windows are opened wide at the start and the
/// connection's is topped up as data is read; the server's windows for the
/// ACKs are its own (it gives back what it reads), and a bench run sends far
/// less than them.
mod raw {
    use std::time::Instant;

    use bytes::{BufMut as _, BytesMut};
    use roster_bench::h2raw::{
        self, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, frame_header,
        hpack_string,
    };
    use tokio::sync::{mpsc, watch};

    use super::Seen;
    use super::lean::{PATH, ack_frame, ack_prefix, subscribe_frame, version_and_nonce};

    /// The request headers of every stream: static-table entries and
    /// literals that are never indexed, so no HPACK state is kept.
    fn request_headers(authority: &str) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x04); // :path, name from the static table
        hpack_string(&mut b, PATH.as_bytes());
        b.push(0x01); // :authority
        hpack_string(&mut b, authority.as_bytes());
        b.extend_from_slice(&[0x0f, 0x10]); // content-type (static 31)
        hpack_string(&mut b, b"application/grpc");
        b.push(0x00); // te, a literal name
        hpack_string(&mut b, b"te");
        hpack_string(&mut b, b"trailers");
        b
    }

    /// One stream's receive side.
    #[derive(Default)]
    struct Stream {
        /// A message cut by the end of a DATA frame.
        partial: Vec<u8>,
        seen: Seen,
        first: bool,
    }

    /// One connection with `streams` streams subscribed to the endpoints of
    /// the bench service; what each stream saw, once `stop`.
    pub async fn connection(
        addr: String,
        streams: usize,
        ready: mpsc::UnboundedSender<()>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<Vec<Seen>, String> {
        let mut conn = h2raw::Conn::connect(&addr).await?;
        let headers = request_headers(&addr);
        let subscribe = subscribe_frame();
        for n in 0..streams {
            let id = h2raw::stream_id(n);
            frame_header(&mut conn.out, headers.len(), HEADERS, END_HEADERS, id);
            conn.out.put_slice(&headers);
            frame_header(&mut conn.out, subscribe.len(), DATA, 0, id);
            conn.out.put_slice(&subscribe);
        }
        conn.flush().await?;
        let mut state: Vec<Stream> = (0..streams)
            .map(|_| Stream {
                first: true,
                ..Stream::default()
            })
            .collect();
        let prefix = ack_prefix();
        loop {
            tokio::select! {
                _ = stop.changed() => return Ok(state.into_iter().map(|s| s.seen).collect()),
                read = conn.read() => read?,
            }
            let at = Instant::now();
            while let Some(frame) = conn.next_frame() {
                let id = frame.stream;
                match frame.kind {
                    DATA => {
                        let Some(s) = h2raw::stream_index(id).and_then(|i| state.get_mut(i)) else {
                            continue;
                        };
                        read_messages(s, frame.data()?, id, at, &prefix, &ready, &mut conn.out)?;
                    }
                    HEADERS if frame.flags & END_STREAM != 0 => {
                        return Err(format!("stream {id} ended"));
                    }
                    RST_STREAM => return Err(format!("stream {id} reset")),
                    GOAWAY => return Err("the server sent GOAWAY".into()),
                    _ => frame.answer(&mut conn.out), // also response headers, window updates
                }
            }
            conn.flush().await?;
        }
    }

    /// Takes the whole gRPC messages of one DATA frame on stream `id` (with
    /// what an earlier frame left cut), recording each response's version
    /// and queueing its ACK.
    fn read_messages(
        s: &mut Stream,
        data: &[u8],
        id: u32,
        at: Instant,
        prefix: &[u8],
        ready: &mpsc::UnboundedSender<()>,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        let joined = if s.partial.is_empty() {
            None
        } else {
            s.partial.extend_from_slice(data);
            Some(std::mem::take(&mut s.partial))
        };
        let mut data: &[u8] = joined.as_deref().unwrap_or(data);
        while data.len() >= 5 {
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            if data.len() < 5 + len {
                break;
            }
            let (version, nonce) =
                version_and_nonce(&data[5..5 + len]).ok_or("a response that does not decode")?;
            let ack = ack_frame(prefix, version, nonce);
            frame_header(out, ack.len(), DATA, 0, id);
            out.put_slice(&ack);
            if s.first {
                s.first = false;
                let _ = ready.send(());
            } else if let Some(v) = std::str::from_utf8(version)
                .ok()
                .and_then(|v| v.parse().ok())
            {
                s.seen.push((v, at));
            }
            data = &data[5 + len..];
        }
        s.partial.extend_from_slice(data);
        Ok(())
    }
}

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
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let mut tasks = JoinSet::new();
    match args.client {
        Client::Tonic => {
            let mut channels = Vec::with_capacity(connections);
            for _ in 0..connections {
                let ch = Channel::from_shared(format!("http://{}", args.grpc))
                    .map_err(|e| e.to_string())?
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                channels.push(ch);
            }
            for s in 0..args.streams {
                let ch = channels[s / args.per_connection].clone();
                let stream = tonic_stream(ch, ready_tx.clone(), stop_rx.clone());
                tasks.spawn(async move { (1, stream.await.map(|seen| vec![seen])) });
            }
        }
        Client::H2 => {
            let mut conns = Vec::with_capacity(connections);
            for _ in 0..connections {
                conns.push(roster_bench::h2_connect(&args.grpc).await?);
            }
            for s in 0..args.streams {
                let conn = conns[s / args.per_connection].clone();
                let authority = args.grpc.clone();
                let stream = lean::stream(conn, authority, ready_tx.clone(), stop_rx.clone());
                tasks.spawn(async move { (1, stream.await.map(|seen| vec![seen])) });
            }
        }
        Client::Raw => {
            for c in 0..connections {
                let n = args
                    .per_connection
                    .min(args.streams - c * args.per_connection);
                let conn = raw::connection(args.grpc.clone(), n, ready_tx.clone(), stop_rx.clone());
                tasks.spawn(async move { (n, conn.await) });
            }
        }
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
    // A change has reached a stream once the stream reads a response built
    // from a snapshot that holds it: the first version at or above the
    // change's index. A stream still busy when the next change lands gets
    // both in one response (the server sends only the latest state), so
    // counting only responses that carry a change's own version would drop
    // exactly the slowest streams from the figures.
    let mut all = Vec::new();
    let mut per_change: HashMap<u64, Vec<u64>> = HashMap::new();
    let (mut failed, mut exact) = (0usize, 0usize);
    while let Some(joined) = tasks.join_next().await {
        let (n, result) = joined.map_err(|e| e.to_string())?;
        match result {
            Ok(all_seen) => {
                for seen in all_seen {
                    exact += seen
                        .iter()
                        .filter(|(v, _)| changes.iter().any(|(c, _)| c == v))
                        .count();
                    for &(index, start) in &changes {
                        if let Some(&(_, at)) = seen.iter().find(|(v, _)| *v >= index) {
                            let us = at.saturating_duration_since(start).as_micros() as u64;
                            all.push(us);
                            per_change.entry(index).or_default().push(us);
                        }
                    }
                }
            }
            Err(_) => failed += n,
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
        "RESULT streams={} changes={} reached={} missing={} p50_us={} p90_us={} p99_us={} max_us={} \
         setup_ms={} server_cpu_pct={server_cpu} failed_streams={failed} exact={exact} \
         client={}",
        args.streams,
        changes.len(),
        all.len(),
        expected.saturating_sub(all.len()),
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0),
        setup.as_millis(),
        match args.client {
            Client::H2 => "h2",
            Client::Tonic => "tonic",
            Client::Raw => "raw",
        },
    );
    Ok(())
}
