//! Limits that protect the server and third parties: the UDP answer cap
//! (amplification), TCP connection cap, idle and write timeouts, no TC over
//! TCP, and FORMERR for malformed EDNS options. Real server on port 0, real
//! packets.

use crate::common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use roster_dns::{DnsConfig, DnsHandler, DnsServer, TcpStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// A server with `config` whose handler the test keeps, for its TCP stats.
async fn start_kept(
    view: Arc<FakeView>,
    config: DnsConfig,
) -> (SocketAddr, DnsHandler, oneshot::Sender<()>) {
    let handler = DnsHandler::new(view, config).unwrap();
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), handler.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(stopped));
    (addr, handler, stop)
}

/// Waits (up to 10 s) until `check` holds for the TCP stats.
async fn wait_for(handler: &DnsHandler, check: impl Fn(&TcpStats) -> bool) -> TcpStats {
    for _ in 0..1000 {
        let stats = handler.tcp_stats();
        if check(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never reached: {:?}", handler.tcp_stats());
}

/// `bytes`, framed for TCP.
fn framed(bytes: &[u8]) -> Vec<u8> {
    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(bytes);
    framed
}

/// Whether the server closed `stream` instead of answering a query on it.
async fn closed_without_answer(stream: &mut TcpStream) -> bool {
    let query = query("web.service.roster.", RecordType::A)
        .to_vec()
        .unwrap();
    // The write may already fail on a reset connection.
    if stream.write_all(&framed(&query)).await.is_err() {
        return true;
    }
    match tokio::time::timeout(Duration::from_secs(5), stream.read_u16()).await {
        Ok(Ok(_)) => false,
        Ok(Err(_)) => true,
        Err(_) => panic!("neither answered nor closed"),
    }
}

/// A service of `n` IPv4 endpoints with long ids, so SRV answers are large.
fn huge_view(n: usize) -> Arc<FakeView> {
    let view = sample_view();
    let endpoints = (0..n)
        .map(|i| {
            ep(
                &format!("an-instance-with-a-rather-long-id-{i:05}"),
                &format!("10.{}.{}.{}", i / 65_536, i / 256 % 256, i % 256),
                9000,
                &[],
                true,
            )
        })
        .collect();
    view.set("huge", 2, endpoints);
    view
}

/// Item 6: past `max_tcp_connections` open connections, new ones are closed
/// at once; a slot freed is taken again.
#[tokio::test]
async fn tcp_connections_past_the_cap_are_closed() {
    let config = DnsConfig {
        max_tcp_connections: 4,
        ..DnsConfig::default()
    };
    let (addr, handler, _stop) = start_kept(sample_view(), config).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        assert!(!closed_without_answer(&mut stream).await);
        held.push(stream);
    }
    assert_eq!(handler.tcp_stats().open, 4);
    let mut extra = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_without_answer(&mut extra).await,
        "a fifth connection"
    );
    assert_eq!(handler.tcp_stats().refused, 1);
    for stream in &mut held {
        assert!(
            !closed_without_answer(stream).await,
            "the first four still work"
        );
    }
    drop(held.pop());
    wait_for(&handler, |s| s.open == 3).await;
    let mut next = TcpStream::connect(addr).await.unwrap();
    assert!(
        !closed_without_answer(&mut next).await,
        "a freed slot is used"
    );
}

/// Item 6, measured: with the default settings, of 300 connections that
/// stay open, 256 are served and the others closed.
#[tokio::test]
async fn the_default_cap_serves_256_connections() {
    let (addr, handler, _stop) = start_kept(sample_view(), DnsConfig::default()).await;
    let mut served = Vec::new();
    let mut closed = 0;
    for _ in 0..300 {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        if closed_without_answer(&mut stream).await {
            closed += 1;
        } else {
            served.push(stream);
        }
    }
    println!("300 connections: {} served, {closed} closed", served.len());
    assert_eq!((served.len(), closed), (256, 44));
    assert_eq!(handler.tcp_stats().open, 256);
}

/// Item 6: a client that pipelines queries for big answers and never reads
/// is cut off after the write timeout (before, it pinned the connection and
/// every unsent answer for as long as it liked).
#[tokio::test]
async fn a_client_that_does_not_read_is_cut_off() {
    let config = DnsConfig {
        tcp_write_timeout: Duration::from_millis(300),
        tcp_idle_timeout: Duration::from_secs(60),
        ..DnsConfig::default()
    };
    let (addr, handler, _stop) = start_kept(huge_view(3000), config).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let query = framed(
        &query("_huge._tcp.service.roster.", RecordType::SRV)
            .to_vec()
            .unwrap(),
    );
    // Each answer is about 64 KB: far more than the socket buffers hold.
    for _ in 0..40 {
        stream.write_all(&query).await.unwrap();
    }
    let stats = wait_for(&handler, |s| s.write_timeouts == 1).await;
    assert_eq!(stats.open, 0, "{stats:?}");
    // The client sees the connection reset.
    let mut failed = false;
    for _ in 0..100 {
        if stream.write_all(&query).await.is_err() {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(failed, "the connection is still open");
}

/// Item 6: a connection that sends nothing is closed after the idle timeout.
#[tokio::test]
async fn idle_connections_are_closed() {
    let config = DnsConfig {
        tcp_idle_timeout: Duration::from_millis(200),
        ..DnsConfig::default()
    };
    let (addr, handler, _stop) = start_kept(sample_view(), config).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut byte = [0];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
        .await
        .expect("still open after 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let stats = wait_for(&handler, |s| s.open == 0).await;
    assert_eq!(stats.idle_closed, 1);
}

/// Item 6, the default timeouts on tokio's paused clock (real sockets; the
/// clock jumps when every task waits): an idle connection is closed after
/// 10 s, a client that stops reading is cut off 5 s into a blocked write.
#[tokio::test(start_paused = true)]
async fn default_timeouts_on_a_paused_clock() {
    let (addr, handler, _stop) = start_kept(huge_view(3000), DnsConfig::default()).await;
    let start = tokio::time::Instant::now();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let read = idle.read(&mut [0]).await;
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "closed after {waited:?}"
    );
    assert_eq!(handler.tcp_stats().idle_closed, 1);

    let mut stalled = TcpStream::connect(addr).await.unwrap();
    let query = framed(
        &query("_huge._tcp.service.roster.", RecordType::SRV)
            .to_vec()
            .unwrap(),
    );
    let start = tokio::time::Instant::now();
    for _ in 0..40 {
        stalled.write_all(&query).await.unwrap();
    }
    wait_for(&handler, |s| s.write_timeouts == 1).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5500),
        "cut off after {waited:?}"
    );
    assert_eq!(handler.tcp_stats().open, 0);
}

/// Item 13: by default a UDP answer is at most 1232 bytes whatever the EDNS
/// buffer the (possibly forged) requester advertises, so a 53-byte query
/// yields at most about 23 times its size; the full answer is over TCP.
#[tokio::test]
async fn udp_answers_are_capped_at_1232_bytes_by_default() {
    let server = start(sample_view()).await;
    let name = "_big._tcp.service.roster.";
    let request = query_edns(name, RecordType::SRV, 4096);
    let request_len = request.to_vec().unwrap().len();
    assert_eq!(request_len, 53);
    let (reply, len) = udp(server.addr, &request).await;
    assert!(reply.metadata.truncation, "TC=1: retry over TCP");
    assert!(len <= 1232 && len > 1232 - 64, "{len} bytes");
    assert_eq!(reply.edns.as_ref().unwrap().max_payload(), 1232);
    let ratio = len as f64 / request_len as f64;
    println!("amplification: {request_len}-byte query, {len}-byte answer, {ratio:.1}x");
    assert!(ratio < 23.3, "{ratio}");
    let (full, full_len) = tcp(server.addr, &request).await;
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 200);
    println!("the same over TCP: {full_len} bytes");

    // The cap is a setting: a server configured for 4096 amplifies 76 times.
    let config = DnsConfig {
        max_udp_payload: 4096,
        ..DnsConfig::default()
    };
    let wide = start_with(sample_view(), config).await;
    let (_, wide_len) = udp(wide.addr, &request).await;
    println!(
        "with max_udp_payload 4096: {wide_len} bytes, {:.1}x",
        wide_len as f64 / request_len as f64
    );
    assert!(wide_len > 4000, "{wide_len}");
}

/// Item 14: over TCP an answer larger than a message is cut without TC (TC
/// would send the client to TCP, where it already is).
#[tokio::test]
async fn tcp_answers_never_set_tc() {
    let server = start(huge_view(3000)).await;
    for (name, ty) in [
        ("_huge._tcp.service.roster.", RecordType::SRV),
        ("huge.service.roster.", RecordType::A),
    ] {
        let (reply, len) = tcp(server.addr, &query_edns(name, ty, 1232)).await;
        assert!(!reply.metadata.truncation, "{name}: TC over TCP");
        assert!(len <= 65_535 && len > 60_000, "{name}: {len} bytes");
        assert!(!reply.answers.is_empty() && reply.answers.len() < 3000);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        // UDP still truncates with TC.
        let (reply, _) = udp(server.addr, &query_edns(name, ty, 1232)).await;
        assert!(reply.metadata.truncation);
    }
}

/// A query for `web.service.roster A` whose OPT record holds `options`.
fn with_options(options: &[u8]) -> Vec<u8> {
    let mut m = vec![0x12, 0x34, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in ["web", "service", "roster"] {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.extend([0, 0, 1, 0, 1]);
    m.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0]);
    m.extend((options.len() as u16).to_be_bytes());
    m.extend(options);
    m
}

fn cookie(len: usize) -> Vec<u8> {
    let mut o = vec![0, 10];
    o.extend((len as u16).to_be_bytes());
    o.extend(vec![0xab; len]);
    o
}

/// Item 14: a COOKIE option of a length RFC 7873 does not allow (client
/// cookie 8 bytes, server cookie 8 to 32), or an option running past its
/// record, gets FORMERR (with an OPT record), over UDP and TCP.
#[tokio::test]
async fn malformed_edns_options_get_formerr() {
    let server = start(sample_view()).await;
    let mut cut = cookie(8);
    cut.truncate(10);
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for (options, expected) in [
        (cookie(8), ResponseCode::NoError),
        (cookie(24), ResponseCode::NoError),
        (Vec::new(), ResponseCode::NoError),
        (cookie(5), ResponseCode::FormErr),
        (cookie(12), ResponseCode::FormErr),
        (cookie(41), ResponseCode::FormErr),
        (cut, ResponseCode::FormErr),
    ] {
        let bytes = with_options(&options);
        let over_udp = udp_raw(server.addr, &bytes, Duration::from_secs(5))
            .await
            .expect("no reply");
        let over_tcp = tcp_raw(&mut stream, &bytes).await;
        for raw in [over_udp, over_tcp] {
            let reply = Message::from_vec(&raw).unwrap();
            assert_eq!(reply.metadata.response_code, expected, "{options:02x?}");
            assert!(reply.edns.is_some(), "OPT kept: {options:02x?}");
            let answers = if expected == ResponseCode::NoError {
                2
            } else {
                0
            };
            assert_eq!(reply.answers.len(), answers);
        }
    }
}
