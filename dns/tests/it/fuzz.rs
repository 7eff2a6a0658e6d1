//! Fuzzing in `cargo test`: random and mutated DNS messages through
//! [`DnsHandler::answer_bytes`], the path the server runs on every datagram,
//! in-process and without sockets. Every answer must decode, answer the same
//! id, stay within the transport's size (no amplification over UDP), and be
//! FORMERR when the request does not decode.
//!
//! The seed is fixed so CI runs the same packets every time; set
//! `PROPTEST_RNG_SEED` to explore others. The cargo-fuzz targets in `fuzz/`
//! run the same path without a bound.

use crate::common;

use std::cell::Cell;
use std::net::SocketAddr;

use common::*;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_server::net::xfer::Protocol;
use hickory_server::server::Request;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use roster_dns::{DnsConfig, DnsHandler, RrlConfig, Transport};

const SRC: &str = "192.0.2.1:5353";

fn runner(cases: u32) -> TestRunner {
    let mut config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5EED_0D25);
    }
    TestRunner::new(config)
}

fn handler(config: DnsConfig) -> DnsHandler {
    DnsHandler::new(sample_view(), config).unwrap()
}

/// What a request decodes to, the way the server decodes it.
struct Decoded {
    advertised: Option<u16>,
    op_code: OpCode,
    questions: usize,
    edns_version: u8,
}

fn decode(bytes: &[u8]) -> Option<Decoded> {
    let src: SocketAddr = SRC.parse().unwrap();
    let request = Request::from_bytes(bytes.to_vec(), src, Protocol::Udp).ok()?;
    Some(Decoded {
        advertised: request.edns.as_ref().map(|e| e.max_payload()),
        op_code: request.metadata.op_code,
        questions: request.queries.queries().len(),
        edns_version: request.edns.as_ref().map_or(0, |e| e.version()),
    })
}

/// Sends `bytes` through `handler`: the decoded answer and its size. Whatever
/// the request, an answer decodes, carries the request's id and is a response.
fn send(
    handler: &DnsHandler,
    bytes: &[u8],
    transport: Transport,
) -> Result<Option<(Message, usize)>, TestCaseError> {
    let src: SocketAddr = SRC.parse().unwrap();
    let Some(answer) = handler.answer_bytes(bytes, src, transport) else {
        return Ok(None);
    };
    prop_assert!(bytes.len() >= 12, "an answer to {} bytes", bytes.len());
    prop_assert!(bytes[2] & 0x80 == 0, "a response was answered");
    let reply = match Message::from_vec(&answer) {
        Ok(reply) => reply,
        Err(error) => {
            return Err(TestCaseError::fail(format!(
                "undecodable answer ({error}) to {bytes:02x?}: {answer:02x?}"
            )));
        }
    };
    prop_assert_eq!(reply.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
    prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
    prop_assert!(!reply.metadata.recursion_available);
    Ok(Some((reply, answer.len())))
}

/// [`send`], then the rules for answers without rate limiting: FORMERR for
/// what does not decode, never SERVFAIL, sized for the transport.
fn check(
    handler: &DnsHandler,
    bytes: &[u8],
    transport: Transport,
) -> Result<Option<Message>, TestCaseError> {
    let Some((reply, answer_len)) = send(handler, bytes, transport)? else {
        return Ok(None);
    };
    let rcode = reply.metadata.response_code;
    prop_assert!(rcode != ResponseCode::ServFail, "SERVFAIL for {bytes:02x?}");
    match decode(bytes) {
        None => {
            prop_assert_eq!(rcode, ResponseCode::FormErr, "{:02x?}", bytes);
            prop_assert_eq!(answer_len, 12);
        }
        Some(request) => {
            let limit = match (transport, request.advertised) {
                (Transport::Tcp, _) => 65_535,
                (Transport::Udp, None) => 512,
                (Transport::Udp, Some(size)) => {
                    usize::from(size.clamp(512, handler.config().max_udp_payload))
                }
            };
            prop_assert!(
                answer_len <= limit,
                "{answer_len} bytes over {transport:?} for a limit of {limit}: {bytes:02x?}"
            );
            if request.op_code == OpCode::Query
                && request.edns_version == 0
                && request.questions != 1
            {
                prop_assert_eq!(rcode, ResponseCode::FormErr);
            }
            if request.op_code != OpCode::Query {
                prop_assert!(matches!(
                    rcode,
                    ResponseCode::NotImp | ResponseCode::FormErr
                ));
            }
        }
    }
    Ok(Some(reply))
}

// ---------------------------------------------------------------------------
// Valid queries and their mutations
// ---------------------------------------------------------------------------

/// Names that exist, names that do not, and raw labels of any length.
fn name() -> impl Strategy<Value = Vec<Vec<u8>>> {
    let known = prop::sample::select(vec![
        "web.service.roster",
        "v2.web.service.roster",
        "_web._tcp.service.roster",
        "_big._tcp.service.roster",
        "big.service.roster",
        "db.service.roster",
        "mixed.service.roster",
        "web-1.web.instance.roster",
        "nope.service.roster",
        "service.roster",
        "roster",
        "example.com",
        "",
    ])
    .prop_map(|name| {
        name.split('.')
            .filter(|l| !l.is_empty())
            .map(|l| l.as_bytes().to_vec())
            .collect()
    });
    let raw = prop::collection::vec(prop::collection::vec(any::<u8>(), 0..70), 0..6);
    prop_oneof![3 => known, 1 => raw]
}

fn record_type() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(vec![1u16, 28, 33, 16, 5, 2, 6, 255, 252, 251, 41, 15]),
        1 => any::<u16>(),
    ]
}

#[derive(Clone, Debug)]
struct Edns {
    payload: u16,
    rcode_high: u8,
    version: u8,
    flags: u16,
    options: Vec<(u16, Vec<u8>)>,
}

fn edns() -> impl Strategy<Value = Option<Edns>> {
    let edns = (
        prop_oneof![
            Just(512u16),
            Just(1232),
            Just(4096),
            Just(65_535),
            any::<u16>()
        ],
        prop_oneof![9 => Just(0u8), 1 => any::<u8>()],
        prop_oneof![9 => Just(0u8), 1 => any::<u8>()],
        any::<u16>(),
        prop::collection::vec(
            (
                prop_oneof![Just(8u16), Just(10), Just(12), any::<u16>()],
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            0..3,
        ),
    )
        .prop_map(|(payload, rcode_high, version, flags, options)| Edns {
            payload,
            rcode_high,
            version,
            flags,
            options,
        });
    prop::option::weighted(0.6, edns)
}

#[derive(Clone, Debug)]
struct Query {
    id: u16,
    flags: [u8; 2],
    name: Vec<Vec<u8>>,
    qtype: u16,
    qclass: u16,
    edns: Option<Edns>,
}

fn query_strategy() -> impl Strategy<Value = Query> {
    (
        any::<u16>(),
        prop_oneof![3 => Just([0x01u8, 0x00]), 1 => any::<[u8; 2]>()],
        name(),
        record_type(),
        prop_oneof![5 => Just(1u16), 1 => any::<u16>()],
        edns(),
    )
        .prop_map(|(id, flags, name, qtype, qclass, edns)| Query {
            id,
            // A query: QR clear, or nothing is answered at all.
            flags: [flags[0] & 0x7f, flags[1]],
            name,
            qtype,
            qclass,
            edns,
        })
}

impl Query {
    fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend(self.id.to_be_bytes());
        out.extend(self.flags);
        let additionals = u16::from(self.edns.is_some());
        for count in [1u16, 0, 0, additionals] {
            out.extend(count.to_be_bytes());
        }
        for label in &self.name {
            // Lengths over 63 turn into the reserved and pointer label types.
            out.push(label.len() as u8);
            out.extend(label);
        }
        out.push(0);
        out.extend(self.qtype.to_be_bytes());
        out.extend(self.qclass.to_be_bytes());
        if let Some(edns) = &self.edns {
            out.extend([0, 0, 41]);
            out.extend(edns.payload.to_be_bytes());
            out.extend([edns.rcode_high, edns.version]);
            out.extend(edns.flags.to_be_bytes());
            let rdata: Vec<u8> = edns
                .options
                .iter()
                .flat_map(|(code, data)| {
                    let mut option = code.to_be_bytes().to_vec();
                    option.extend((data.len() as u16).to_be_bytes());
                    option.extend(data);
                    option
                })
                .collect();
            out.extend((rdata.len() as u16).to_be_bytes());
            out.extend(rdata);
        }
        out
    }
}

/// One change to a packet; positions are taken modulo its length.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    /// A label length byte anywhere.
    LabelLength(usize, u8),
    /// A compression pointer (0xC0 | offset) written at a position.
    Pointer(usize, u16),
    /// One of the four section counts, often huge.
    Count(usize, u16),
    /// A second OPT record, or any record, appended.
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let pos = any::<usize>();
    prop_oneof![
        (pos, 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        (pos, any::<u8>()).prop_map(|(p, b)| Mutation::SetByte(p, b)),
        pos.prop_map(Mutation::Truncate),
        (pos, prop::collection::vec(any::<u8>(), 1..20)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        (pos, 1usize..10).prop_map(|(p, n)| Mutation::Remove(p, n)),
        (pos, prop_oneof![0u8..=64, any::<u8>()]).prop_map(|(p, l)| Mutation::LabelLength(p, l)),
        (
            prop_oneof![Just(0usize), Just(4), pos],
            prop_oneof![0u16..12, 12u16..40, any::<u16>()]
        )
            .prop_map(|(p, o)| Mutation::Pointer(p, o)),
        (
            0usize..4,
            prop_oneof![Just(0u16), Just(2), Just(u16::MAX), any::<u16>()]
        )
            .prop_map(|(c, v)| Mutation::Count(c, v)),
        prop::collection::vec(any::<u8>(), 0..30).prop_map(Mutation::Append),
    ]
}

impl Mutation {
    fn apply(&self, packet: &mut Vec<u8>) {
        let at = |p: usize, len: usize| if len == 0 { 0 } else { p % len };
        let len = packet.len();
        match self {
            Mutation::FlipBit(p, bit) if len > 0 => packet[at(*p, len)] ^= 1 << bit,
            Mutation::SetByte(p, b) if len > 0 => packet[at(*p, len)] = *b,
            Mutation::Truncate(p) => packet.truncate(at(*p, len + 1)),
            Mutation::Insert(p, bytes) => {
                let p = at(*p, len + 1);
                packet.splice(p..p, bytes.iter().copied());
            }
            Mutation::Remove(p, n) if len > 0 => {
                let p = at(*p, len);
                packet.drain(p..(p + n).min(len));
            }
            Mutation::LabelLength(p, l) if len > 12 => packet[12 + at(*p, len - 12)] = *l,
            Mutation::Pointer(p, offset) if len > 13 => {
                let p = 12 + at(*p, len - 13);
                let pointer = 0xC000 | (offset & 0x3FFF);
                packet[p..p + 2].copy_from_slice(&pointer.to_be_bytes());
            }
            Mutation::Count(c, v) if len >= 12 => {
                packet[4 + 2 * c..6 + 2 * c].copy_from_slice(&v.to_be_bytes());
            }
            Mutation::Append(bytes) => {
                if starts_with_opt(bytes) {
                    packet.extend([0, 0, 41, 0x10, 0, 0, 0, 0, 0, 0, 0]);
                }
                packet.extend(bytes);
            }
            _ => {}
        }
    }
}

/// Half the appends start with an OPT record (a second one, or a first one
/// the header does not count).
fn starts_with_opt(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 1 == 0)
}

/// Mutated queries and every truncation of each: at least 100,000 packets.
#[test]
fn mutated_queries_get_sound_answers_or_none() {
    let handler = handler(DnsConfig::default());
    let packets = Cell::new(0usize);
    let formerr = Cell::new(0usize);
    let answered = Cell::new(0usize);
    let strategy = (query_strategy(), prop::collection::vec(mutation(), 0..4));
    runner(2_000)
        .run(&strategy, |(query, mutations)| {
            let mut packet = query.to_wire();
            for mutation in &mutations {
                mutation.apply(&mut packet);
            }
            for transport in [Transport::Udp, Transport::Tcp] {
                packets.set(packets.get() + 1);
                check(&handler, &packet, transport)?;
            }
            // Every prefix: the cut can fall inside any field.
            for end in 0..packet.len() {
                packets.set(packets.get() + 1);
                match check(&handler, &packet[..end], Transport::Udp)? {
                    Some(reply) if reply.metadata.response_code == ResponseCode::FormErr => {
                        formerr.set(formerr.get() + 1);
                    }
                    Some(_) => answered.set(answered.get() + 1),
                    None => {}
                }
            }
            Ok(())
        })
        .unwrap();
    let (packets, formerr, answered) = (packets.get(), formerr.get(), answered.get());
    eprintln!("{packets} packets: {formerr} FORMERR, {answered} other answers");
    assert!(packets >= 100_000, "only {packets} packets");
    // Both outcomes were exercised, not just one of them.
    assert!(
        formerr > packets / 10 && answered > 1_000,
        "{formerr} / {answered}"
    );
}

/// Any bytes at all, after a header that is a query.
#[test]
fn random_bytes_get_sound_answers_or_none() {
    let handler = handler(DnsConfig::default());
    let packets = Cell::new(0usize);
    let strategy = (
        any::<[u8; 12]>(),
        prop::collection::vec(any::<u8>(), 0..300),
    );
    runner(3_000)
        .run(&strategy, |(mut header, body)| {
            // Keep a few responses in the mix: they must get no answer.
            if header[3] % 16 != 0 {
                header[2] &= 0x7f;
            }
            let mut packet = header.to_vec();
            packet.extend(body);
            packets.set(packets.get() + 2);
            check(&handler, &packet, Transport::Udp)?;
            check(&handler, &packet, Transport::Tcp)?;
            Ok(())
        })
        .unwrap();
    assert!(packets.get() >= 6_000);
}

/// Well-formed queries with any EDNS size, against two server limits: a UDP
/// answer never exceeds what the requester advertised (512 at least) nor the
/// server's limit, and is truncated rather than cut.
#[test]
fn udp_answers_never_exceed_the_requesters_buffer() {
    let handlers = [
        (handler(DnsConfig::default()), 1232usize),
        (
            handler(DnsConfig {
                max_udp_payload: 4096,
                ..DnsConfig::default()
            }),
            4096,
        ),
    ];
    let names = prop::sample::select(vec![
        "big.service.roster.",
        "_big._tcp.service.roster.",
        "web.service.roster.",
        "_web._tcp.service.roster.",
        "db.service.roster.",
        "nope.service.roster.",
        "roster.",
    ]);
    let types = prop::sample::select(vec![
        hickory_proto::rr::RecordType::A,
        hickory_proto::rr::RecordType::AAAA,
        hickory_proto::rr::RecordType::SRV,
        hickory_proto::rr::RecordType::TXT,
        hickory_proto::rr::RecordType::ANY,
        hickory_proto::rr::RecordType::SOA,
    ]);
    let truncated = Cell::new(0usize);
    runner(3_000)
        .run(
            &(names, types, prop::option::of(any::<u16>()), 0usize..2),
            |(name, ty, size, which)| {
                let (handler, server_limit) = &handlers[which];
                let message = match size {
                    Some(size) => query_edns(name, ty, size),
                    None => query(name, ty),
                };
                let bytes = message.to_vec().unwrap();
                let src: SocketAddr = SRC.parse().unwrap();
                let answer = handler
                    .answer_bytes(&bytes, src, Transport::Udp)
                    .expect("a query is answered");
                let limit = size
                    .map_or(512, |s| usize::from(s).max(512))
                    .min(*server_limit);
                prop_assert!(answer.len() <= limit, "{} > {limit}", answer.len());
                let reply = Message::from_vec(&answer).unwrap();
                prop_assert_eq!(reply.edns.is_some(), size.is_some());
                if reply.metadata.truncation {
                    truncated.set(truncated.get() + 1);
                    // Over TCP the same query gets everything.
                    let full = handler.answer_bytes(&bytes, src, Transport::Tcp).unwrap();
                    let full = Message::from_vec(&full).unwrap();
                    prop_assert!(!full.metadata.truncation);
                    prop_assert!(full.answers.len() > reply.answers.len());
                }
                Ok(())
            },
        )
        .unwrap();
    assert!(truncated.get() > 100, "{} truncated", truncated.get());
}

/// With rate limiting on, over-the-rate answers to any bytes are never larger
/// than the request: a forged source gets no amplification at all.
#[test]
fn slipped_answers_are_never_larger_than_the_request() {
    let handler = handler(DnsConfig {
        rrl: Some(RrlConfig {
            responses_per_second: 1,
            burst: 1,
            slip: 1,
            ..RrlConfig::default()
        }),
        ..DnsConfig::default()
    });
    let slipped = Cell::new(0u64);
    let strategy = (query_strategy(), prop::collection::vec(mutation(), 0..3));
    runner(2_000)
        .run(&strategy, |(query, mutations)| {
            let mut packet = query.to_wire();
            for mutation in &mutations {
                mutation.apply(&mut packet);
            }
            let before = handler.rrl_stats().slipped;
            let answer = send(&handler, &packet, Transport::Udp)?;
            if handler.rrl_stats().slipped > before {
                slipped.set(slipped.get() + 1);
                let (reply, len) = answer.expect("a slip is sent");
                prop_assert!(reply.metadata.truncation);
                prop_assert!(reply.answers.is_empty() && reply.additionals.is_empty());
                prop_assert!(len <= packet.len(), "{len} > {}", packet.len());
            }
            Ok(())
        })
        .unwrap();
    assert!(slipped.get() > 1_500, "{} slipped", slipped.get());
}

/// A question whose name is a compression pointer can only point into the
/// header, whose bytes differ in the answer: echoing it would make the answer
/// undecodable (or name something else), so it is refused and not echoed.
#[test]
fn compressed_questions_are_refused_without_an_echo() {
    let handler = handler(DnsConfig::default());
    let src: SocketAddr = SRC.parse().unwrap();
    // Offset 2 is the flags: 0x01 reads as a one-byte label in the query, but
    // the answer's flags (0x85: QR, AA, RD) read as a reserved label type.
    for offset in [2u8, 4, 5, 6] {
        let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        packet.extend([0xC0, offset, 0, 1, 0, 1]);
        assert!(decode(&packet).is_some(), "hickory decodes offset {offset}");
        let answer = handler
            .answer_bytes(&packet, src, Transport::Udp)
            .expect("answered");
        let reply = Message::from_vec(&answer).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert!(reply.queries.is_empty());
    }
    // A label, then a pointer back into the header.
    let mut packet = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    packet.extend([3, b'w', b'e', b'b', 0xC0, 4, 0, 1, 0, 1]);
    let answer = handler.answer_bytes(&packet, src, Transport::Tcp).unwrap();
    let reply = Message::from_vec(&answer).unwrap();
    assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
}
