//! Protocol rules: response codes for bad requests, EDNS, sizes, truncation,
//! TCP framing and shutdown, with hickory messages and raw wire bytes.

use crate::common;

use std::time::Duration;

use common::*;
use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use roster_dns::{DnsConfig, DnsHandler, DnsServer};
use tokio::net::TcpStream;

/// A header: id 0x1234, RD, the given opcode and counts.
fn header(opcode: u8, qd: u16, ar: u16) -> Vec<u8> {
    let mut bytes = vec![0x12, 0x34, 0x01 | (opcode << 3), 0x00];
    for count in [qd, 0, 0, ar] {
        bytes.extend_from_slice(&count.to_be_bytes());
    }
    bytes
}

/// `web.service.roster. IN A` in wire form.
fn question() -> Vec<u8> {
    let mut bytes = Vec::new();
    for label in ["web", "service", "roster"] {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.extend_from_slice(&[0, 0, 1, 0, 1]);
    bytes
}

/// An empty OPT record advertising 4096 bytes.
const OPT: [u8; 11] = [0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0];

async fn rcode_of(addr: std::net::SocketAddr, bytes: &[u8]) -> Message {
    let raw = udp_raw(addr, bytes, Duration::from_secs(5))
        .await
        .expect("no reply");
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.metadata.id, 0x1234);
    assert!(!reply.metadata.recursion_available);
    reply
}

#[tokio::test]
async fn formerr_for_malformed_messages() {
    let server = start(sample_view()).await;
    // No question.
    let reply = rcode_of(server.addr, &header(0, 0, 0)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Two questions.
    let mut two = header(0, 2, 0);
    two.extend(question());
    two.extend(question());
    let reply = rcode_of(server.addr, &two).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // A question announced but missing: does not decode.
    let reply = rcode_of(server.addr, &header(0, 1, 0)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // A question cut in the middle.
    let mut cut = header(0, 1, 0);
    cut.extend(&question()[..7]);
    let reply = rcode_of(server.addr, &cut).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Two OPT records.
    let mut opts = header(0, 1, 2);
    opts.extend(question());
    opts.extend(OPT);
    opts.extend(OPT);
    let reply = rcode_of(server.addr, &opts).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Over TCP too.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let raw = tcp_raw(&mut stream, &header(0, 0, 0)).await;
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    // Shorter than a header: not DNS, no answer; the server is still up.
    assert!(
        udp_raw(server.addr, &[1, 2, 3], Duration::from_millis(300))
            .await
            .is_none()
    );
    let mut ok = header(0, 1, 0);
    ok.extend(question());
    let reply = rcode_of(server.addr, &ok).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(reply.answers.len(), 2);
}

#[tokio::test]
async fn notimp_for_other_opcodes() {
    let server = start(sample_view()).await;
    for opcode in [OpCode::Status, OpCode::Notify, OpCode::Update] {
        let mut message = query("web.service.roster.", RecordType::A);
        message.metadata.op_code = opcode;
        let (reply, _) = udp(server.addr, &message).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NotImp,
            "{opcode:?}"
        );
        assert_eq!(reply.metadata.op_code, opcode);
    }
    // IQUERY (1), in raw bytes.
    let mut raw = header(1, 1, 0);
    raw.extend(question());
    let reply = rcode_of(server.addr, &raw).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NotImp);
}

#[tokio::test]
async fn refused_outside_the_domain_other_classes_and_transfers() {
    let server = start(sample_view()).await;
    for message in [
        query("example.com.", RecordType::A),
        query("web.service.roster.example.", RecordType::A),
        query(".", RecordType::NS),
        query_class("web.service.roster.", RecordType::A, DNSClass::CH),
        query("roster.", RecordType::AXFR),
    ] {
        let (reply, _) = tcp(server.addr, &message).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::Refused,
            "{:?}",
            message.queries
        );
        assert!(reply.answers.is_empty() && reply.authorities.is_empty());
    }
}

#[tokio::test]
async fn edns_is_echoed_and_badvers_for_unknown_versions() {
    let server = start(sample_view()).await;
    let (reply, _) = udp(
        server.addr,
        &query_edns("web.service.roster.", RecordType::A, 1232),
    )
    .await;
    let edns = reply.edns.as_ref().expect("OPT echoed");
    assert_eq!(edns.version(), 0);
    assert_eq!(edns.max_payload(), 1232);
    assert_eq!(reply.answers.len(), 2);
    let (reply, _) = udp(server.addr, &query("web.service.roster.", RecordType::A)).await;
    assert!(reply.edns.is_none(), "no OPT without EDNS in the query");
    // Negative answers keep it too.
    let (reply, _) = udp(
        server.addr,
        &query_edns("nope.service.roster.", RecordType::A, 1232),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.edns.is_some());

    let mut message = query("web.service.roster.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_max_payload(1232).set_version(1);
    message.set_edns(edns);
    let (reply, _) = udp(server.addr, &message).await;
    // 16 is BADVERS in an OPT context; hickory decodes 16 as BADSIG.
    assert_eq!(u16::from(reply.metadata.response_code), 16);
    assert!(reply.answers.is_empty());
    assert_eq!(reply.edns.as_ref().unwrap().version(), 0);
}

#[tokio::test]
async fn big_answers_are_truncated_over_udp_to_the_requesters_size() {
    // A server that accepts EDNS buffers up to 4096 (the default is 1232).
    let config = DnsConfig {
        max_udp_payload: 4096,
        ..DnsConfig::default()
    };
    let server = start_with(sample_view(), config).await;
    let name = "big.service.roster.";

    let (plain, plain_len) = udp(server.addr, &query(name, RecordType::A)).await;
    assert!(plain.metadata.truncation, "TC=1");
    assert!(plain_len <= 512, "{plain_len} bytes without EDNS");
    assert!(plain.edns.is_none());
    assert!(!plain.answers.is_empty() && plain.answers.len() < 200);

    let (small, small_len) = udp(server.addr, &query_edns(name, RecordType::A, 1232)).await;
    assert!(small.metadata.truncation);
    assert!(small_len <= 1232, "{small_len}");
    assert!(small_len > 1232 - 16, "{small_len}: as many records as fit");
    assert!(small.edns.is_some(), "OPT kept when truncated");
    assert_eq!(small.metadata.response_code, ResponseCode::NoError);

    let (large, large_len) = udp(server.addr, &query_edns(name, RecordType::A, 4096)).await;
    assert!(large.metadata.truncation);
    assert!(large_len <= 4096 && large_len > 4096 - 16, "{large_len}");
    assert!(large.edns.is_some());
    assert!(plain.answers.len() < small.answers.len());
    assert!(small.answers.len() < large.answers.len());

    // A requester asking for more than the server's limit gets the limit.
    let (huge, huge_len) = udp(server.addr, &query_edns(name, RecordType::A, 65_000)).await;
    assert!(huge.metadata.truncation && huge_len <= 4096);
    // A requester advertising less than 512 still gets 512.
    let (tiny, tiny_len) = udp(server.addr, &query_edns(name, RecordType::A, 100)).await;
    assert!(
        tiny.metadata.truncation && tiny_len <= 512 && tiny_len > 400,
        "{tiny_len}"
    );

    let (full, _) = tcp(server.addr, &query_edns(name, RecordType::A, 1232)).await;
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 200);
    assert!(full.edns.is_some());
}

#[tokio::test]
async fn big_srv_answers_are_complete_over_tcp_only() {
    let server = start(sample_view()).await;
    let name = "_big._tcp.service.roster.";
    let (udp_reply, len) = udp(server.addr, &query_edns(name, RecordType::SRV, 1232)).await;
    assert!(udp_reply.metadata.truncation);
    assert!(len <= 1232);
    assert!(
        udp_reply.additionals.is_empty(),
        "no partial additional section"
    );
    assert!(udp_reply.edns.is_some());

    let (reply, _) = tcp(server.addr, &query(name, RecordType::SRV)).await;
    assert!(!reply.metadata.truncation);
    assert_eq!(reply.answers.len(), 200);
    assert_eq!(reply.additionals.len(), 200);
}

#[tokio::test]
async fn tcp_connections_carry_several_queries() {
    let server = start(sample_view()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for name in [
        "web.service.roster.",
        "v4only.service.roster.",
        "nope.service.roster.",
    ] {
        let message = query(name, RecordType::A);
        let raw = tcp_raw(&mut stream, &message.to_vec().unwrap()).await;
        let reply = Message::from_vec(&raw).unwrap();
        assert_eq!(reply.metadata.id, message.metadata.id);
        assert_eq!(reply.queries, message.queries);
    }
}

#[tokio::test]
async fn responses_are_not_answered() {
    let server = start(sample_view()).await;
    let mut message = query("web.service.roster.", RecordType::A);
    message.metadata.message_type = hickory_proto::op::MessageType::Response;
    let raw = message.to_vec().unwrap();
    assert!(
        udp_raw(server.addr, &raw, Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn shutdown_stops_both_listeners() {
    let mut server = start(sample_view()).await;
    let (reply, _) = udp(server.addr, &query("web.service.roster.", RecordType::A)).await;
    assert_eq!(reply.answers.len(), 2);
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "TCP still open"
    );
    let mut raw = header(0, 1, 0);
    raw.extend(question());
    assert!(
        udp_raw(server.addr, &raw, Duration::from_millis(300))
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_taken_port_fails_to_bind_and_a_bad_domain_is_refused() {
    let running = start(sample_view()).await;
    let handler = DnsHandler::new(sample_view(), DnsConfig::default()).unwrap();
    assert!(DnsServer::bind(running.addr, handler).await.is_err());
    let bad = DnsHandler::new(
        sample_view(),
        DnsConfig {
            domain: ".".into(),
            ..Default::default()
        },
    );
    assert!(bad.is_err());
}

/// The handler also works under hickory's own `Server`, whose response
/// handle sizes UDP answers by the OPT record the handler returns.
#[tokio::test]
async fn the_handler_also_runs_under_hickorys_server() {
    use hickory_server::Server;
    use tokio::net::{TcpListener, UdpSocket};

    let handler = DnsHandler::new(sample_view(), DnsConfig::default()).unwrap();
    let mut sockets = None;
    for _ in 0..10 {
        let udp_socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = udp_socket.local_addr().unwrap();
        if let Ok(tcp_listener) = TcpListener::bind(addr).await {
            sockets = Some((udp_socket, tcp_listener, addr));
            break;
        }
    }
    let (udp_socket, tcp_listener, addr) = sockets.expect("no port free for UDP and TCP");
    let mut server = Server::new(handler);
    server.register_socket(udp_socket);
    server.register_listener(tcp_listener, Duration::from_secs(5), 65_535);

    let name = "big.service.roster.";
    let (reply, len) = udp(addr, &query_edns(name, RecordType::A, 1232)).await;
    assert!(reply.metadata.truncation && reply.edns.is_some());
    assert!(len <= 1232 && len > 1232 - 16, "{len}");
    let (reply, len) = udp(addr, &query(name, RecordType::A)).await;
    assert!(reply.metadata.truncation && len <= 512);
    let (reply, _) = tcp(addr, &query(name, RecordType::A)).await;
    assert_eq!(reply.answers.len(), 200);
    let raw = udp_raw(addr, &header(0, 0, 0), Duration::from_secs(5))
        .await
        .unwrap();
    let reply = Message::from_vec(&raw).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
    server.shutdown_gracefully().await.unwrap();
}

#[tokio::test]
async fn a_burst_of_queries_from_many_sockets_is_answered_whole() {
    // More queries than one batch (32) waiting at once, from several
    // sockets: every one is answered, to its own socket, with its own id.
    let running = start(sample_view()).await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(running.addr).await.unwrap();
        clients.push(socket);
    }
    let per_client = 50u16;
    for (c, socket) in clients.iter().enumerate() {
        for n in 0..per_client {
            let mut q = query(
                if n % 2 == 0 {
                    "web.service.roster."
                } else {
                    "_web._tcp.service.roster."
                },
                if n % 2 == 0 {
                    RecordType::A
                } else {
                    RecordType::SRV
                },
            );
            q.metadata.id = c as u16 * 1000 + n;
            socket.send(&q.to_vec().unwrap()).await.unwrap();
        }
    }
    for (c, socket) in clients.iter().enumerate() {
        let mut ids = Vec::new();
        let mut buf = vec![0u8; 4096];
        while ids.len() < usize::from(per_client) {
            let len = tokio::time::timeout(Duration::from_secs(10), socket.recv(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("client {c}: {} of {per_client} answers", ids.len()))
                .unwrap();
            let reply = Message::from_vec(&buf[..len]).unwrap();
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert!(!reply.answers.is_empty(), "{reply:?}");
            ids.push(reply.metadata.id);
        }
        ids.sort_unstable();
        let want: Vec<u16> = (0..per_client).map(|n| c as u16 * 1000 + n).collect();
        assert_eq!(ids, want, "client {c}");
    }
}
