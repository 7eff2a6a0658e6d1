//! The answer cache against the uncached path (hickory's encoder), on the
//! same queries with the same rotation.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use hickory_proto::op::{Header, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use hickory_server::net::xfer::Protocol;
use proptest::prelude::*;

use super::*;
use crate::{InstanceRecord, ServiceRecords, Transport};

#[derive(Default)]
struct View(RwLock<HashMap<String, Arc<ServiceRecords>>>);

impl View {
    fn set(&self, name: &str, index: u64, endpoints: Vec<InstanceRecord>) {
        self.0
            .write()
            .unwrap()
            .insert(name.into(), Arc::new(ServiceRecords { index, endpoints }));
    }
}

impl ServiceView for View {
    fn service(&self, name: &str) -> Option<Arc<ServiceRecords>> {
        self.0.read().unwrap().get(name).cloned()
    }
}

fn handler(view: &Arc<View>) -> DnsHandler {
    let view: Arc<dyn ServiceView> = view.clone();
    DnsHandler::new(view, DnsConfig::default()).unwrap()
}

/// A query as sent: `name` in the case given, optional EDNS payload size.
fn query_bytes(id: u16, name: &str, qtype: RecordType, edns: Option<u16>, flags: u8) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = flags & 1 != 0;
    message.metadata.checking_disabled = flags & 2 != 0;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(size);
        message.set_edns(opt);
    }
    message.to_vec().unwrap()
}

/// The cached answer (if the cache answers) and the uncached one, both for
/// rotation `turn`.
fn both(handler: &DnsHandler, bytes: &[u8], udp: bool, turn: usize) -> (Option<Vec<u8>>, Vec<u8>) {
    let src = "192.0.2.1:5353".parse().unwrap();
    let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
    let request = Request::from_bytes(bytes.to_vec(), src, protocol).unwrap();
    let header = Header::read(&mut BinDecoder::new(bytes)).unwrap();
    handler.inner.turn.store(turn, Ordering::Relaxed);
    let cached = handler.answer_cached(&request, udp);
    handler.inner.turn.store(turn, Ordering::Relaxed);
    let uncached = handler.answer_uncached(&request, &header, udp, false);
    (cached, uncached)
}

fn endpoint(
    id: String,
    address: String,
    tags: Vec<&str>,
    meta: usize,
    healthy: bool,
) -> InstanceRecord {
    InstanceRecord {
        port: 8000 + id.len() as u16,
        meta: (0..meta)
            .map(|m| (format!("k{m}"), format!("v{m}-{id}")))
            .collect::<BTreeMap<_, _>>(),
        tags: tags.into_iter().map(str::to_owned).collect(),
        weight: id.len() as u16,
        id,
        address,
        healthy,
    }
}

fn address(kind: u8, i: usize) -> String {
    match kind % 5 {
        0 | 1 => format!("10.0.{}.{}", i / 200, i % 200 + 1),
        2 => format!("2001:db8::{:x}", i + 1),
        3 => format!("h{i}.example.com"),
        _ => "not an address".into(),
    }
}

/// Random case, as a DNS 0x20 resolver sends.
fn mixed_case(name: &str, bits: u64) -> String {
    name.chars()
        .enumerate()
        .map(|(i, c)| {
            if bits >> (i % 64) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

const NAMES: [&str; 9] = [
    "web.service.roster.",
    "a.web.service.roster.",
    "b.web.service.roster.",
    "_web._tcp.service.roster.",
    "_web._a.service.roster.",
    "i1.web.instance.roster.",
    "i3.web.instance.roster.",
    "nosuch.web.service.roster.",
    "web.instance.roster.",
];
const TYPES: [RecordType; 7] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SRV,
    RecordType::TXT,
    RecordType::ANY,
    RecordType::MX,
    RecordType::CNAME,
];

prop_compose! {
    fn endpoints()(specs in prop::collection::vec(
        (any::<u8>(), 0..4usize, 0..3usize, prop::bool::weighted(0.8)), 0..13)
    ) -> Vec<InstanceRecord> {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (kind, tags, meta, healthy))| {
                let tags = match tags {
                    0 => vec![],
                    1 => vec!["a"],
                    2 => vec!["b", "A"],
                    _ => vec!["tcp"],
                };
                endpoint(format!("i{i}"), address(kind, i), tags, meta, healthy)
            })
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Up to 12 instances hickory compresses every name it can, so the two
    /// encodings are the same bytes.
    #[test]
    fn cached_bytes_equal_the_uncached_encoding(
        endpoints in endpoints(),
        queries in prop::collection::vec(
            (0..NAMES.len(), 0..TYPES.len(), any::<u64>(),
             prop::option::of(0u16..5000), any::<bool>(), 0usize..100, any::<u16>(), 0u8..4),
            1..12),
    ) {
        let view = Arc::new(View::default());
        view.set("web", 3, endpoints);
        let handler = handler(&view);
        for (name, qtype, case, edns, udp, turn, id, flags) in queries {
            let name = mixed_case(NAMES[name], case);
            let bytes = query_bytes(id, &name, TYPES[qtype], edns, flags);
            // Twice: the second answer comes from the entry the first made.
            for _ in 0..2 {
                let (cached, uncached) = both(&handler, &bytes, udp, turn);
                if let Some(cached) = cached {
                    prop_assert_eq!(&cached, &uncached, "{} {:?} edns {:?} udp {}", name, TYPES[qtype], edns, udp);
                }
            }
        }
    }
}

/// A service of `n` IPv4 instances with metadata.
fn big(n: usize) -> Vec<InstanceRecord> {
    (0..n)
        .map(|i| endpoint(format!("i{i}"), address(0, i), vec!["a"], 1, true))
        .collect()
}

#[test]
fn the_cache_answers_positive_service_names_only() {
    let view = Arc::new(View::default());
    view.set("web", 1, big(3));
    let handler = handler(&view);
    let cached = |name: &str, qtype| {
        let bytes = query_bytes(7, name, qtype, None, 1);
        both(&handler, &bytes, true, 0).0.is_some()
    };
    assert!(cached("web.service.roster.", RecordType::A));
    assert!(cached("A.Web.Service.Roster.", RecordType::TXT));
    assert!(cached("_web._tcp.service.roster.", RecordType::SRV));
    assert!(cached("i2.web.instance.roster.", RecordType::ANY));
    assert!(!cached("web.service.roster.", RecordType::AAAA), "NODATA");
    assert!(
        !cached("_web._tcp.service.roster.", RecordType::A),
        "NODATA"
    );
    assert!(!cached("x.web.service.roster.", RecordType::A), "NXDOMAIN");
    assert!(!cached("nosuch.service.roster.", RecordType::A), "NXDOMAIN");
    assert!(!cached("roster.", RecordType::SOA), "apex");
}

/// Past the 64 labels hickory remembers for compression (about 14 SRV
/// targets), the cached encoding still points every additional record at its
/// SRV target: it decodes to the same records and is never larger, so it
/// carries at least as many records.
#[test]
fn large_answers_decode_the_same_and_are_not_larger() {
    let view = Arc::new(View::default());
    view.set("web", 1, big(300));
    let handler = handler(&view);
    for (name, qtype) in [
        ("web.service.roster.", RecordType::A),
        ("WEB.service.roster.", RecordType::ANY),
        ("_web._tcp.service.roster.", RecordType::SRV),
        ("_Web._A.service.roster.", RecordType::SRV),
    ] {
        for (edns, udp) in [(None, true), (Some(1232), true), (Some(4096), false)] {
            for turn in [0, 1, 17, 299, 300, 1234] {
                let bytes = query_bytes(9, name, qtype, edns, 1);
                let (cached, uncached) = both(&handler, &bytes, udp, turn);
                let cached = cached.expect("cached");
                assert!(cached.len() <= uncached.len(), "{name} {edns:?} {udp}");
                if qtype != RecordType::SRV {
                    // Without additional records, hickory's limits are the
                    // cache's: the same bytes.
                    assert_eq!(cached, uncached, "{name} {edns:?} {udp} {turn}");
                }
                let (c, u) = (
                    Message::from_vec(&cached).unwrap(),
                    Message::from_vec(&uncached).unwrap(),
                );
                assert_eq!(c.metadata, u.metadata, "{name} {edns:?} {udp} {turn}");
                assert_eq!(c.queries, u.queries);
                assert!(c.answers.len() >= u.answers.len());
                assert_eq!(c.answers[..u.answers.len()], u.answers[..]);
                assert!(c.additionals.len() >= u.additionals.len());
                assert_eq!(c.additionals[..u.additionals.len()], u.additionals[..]);
                assert_eq!(c.edns, u.edns);
            }
        }
    }
}

#[test]
fn id_and_question_case_are_echoed() {
    let view = Arc::new(View::default());
    view.set("web", 1, big(4));
    let handler = handler(&view);
    let src = "192.0.2.1:5353".parse().unwrap();
    for (id, name) in [(1, "web.service.roster."), (0xBEEF, "wEb.SeRvIcE.rOsTeR.")] {
        let bytes = query_bytes(id, name, RecordType::A, Some(1232), 1);
        let answer = handler.answer_bytes(&bytes, src, Transport::Udp).unwrap();
        assert_eq!(answer[..2], id.to_be_bytes());
        // The question section: the same bytes at the same place.
        let question = &bytes[12..12 + name.len() + 1 + 4];
        assert_eq!(&answer[12..12 + question.len()], question);
        let reply = Message::from_vec(&answer).unwrap();
        assert_eq!(reply.answers.len(), 4);
        assert!(
            reply
                .answers
                .iter()
                .all(|a| a.name.eq_case(reply.queries[0].name()))
        );
    }
    assert_eq!(handler.inner.answers.len(), 1, "one entry for both cases");
}

#[test]
fn a_new_index_invalidates_the_entry() {
    let view = Arc::new(View::default());
    view.set("web", 1, big(2));
    let handler = handler(&view);
    let src = "192.0.2.1:5353".parse().unwrap();
    let bytes = query_bytes(1, "web.service.roster.", RecordType::A, None, 0);
    let answers = |handler: &DnsHandler| {
        let answer = handler.answer_bytes(&bytes, src, Transport::Udp).unwrap();
        let mut data: Vec<String> = Message::from_vec(&answer)
            .unwrap()
            .answers
            .iter()
            .map(|a| a.data.to_string())
            .collect();
        data.sort();
        data
    };
    assert_eq!(answers(&handler), ["10.0.0.1", "10.0.0.2"]);
    let mut three = big(3);
    three[0].address = "10.9.9.9".into();
    view.set("web", 2, three);
    assert_eq!(answers(&handler), ["10.0.0.2", "10.0.0.3", "10.9.9.9"]);
    view.set("web", 3, Vec::new());
    let answer = handler.answer_bytes(&bytes, src, Transport::Udp).unwrap();
    let reply = Message::from_vec(&answer).unwrap();
    assert!(reply.answers.is_empty(), "NODATA once the service is empty");
    assert_eq!(reply.authorities.len(), 1, "with the SOA");
}

#[test]
fn rotation_spreads_the_first_answer() {
    let view = Arc::new(View::default());
    view.set("web", 1, big(10));
    let handler = handler(&view);
    let src = "192.0.2.1:5353".parse().unwrap();
    for (name, qtype) in [
        ("web.service.roster.", RecordType::A),
        ("_web._tcp.service.roster.", RecordType::SRV),
    ] {
        let bytes = query_bytes(1, name, qtype, Some(1232), 0);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..10 {
            let answer = handler.answer_bytes(&bytes, src, Transport::Udp).unwrap();
            let reply = Message::from_vec(&answer).unwrap();
            assert_eq!(reply.answers.len(), 10);
            firsts.insert(reply.answers[0].data.to_string());
            if qtype == RecordType::SRV {
                // Every additional names an SRV target of the answer.
                assert_eq!(reply.additionals.len(), 10);
                for extra in &reply.additionals {
                    assert!(reply.answers.iter().any(|a| match &a.data {
                        RData::SRV(srv) => srv.target == extra.name,
                        _ => false,
                    }));
                }
            }
        }
        assert_eq!(firsts.len(), 10, "{name}: every instance comes first once");
    }
}

#[test]
fn truncation_over_udp_follows_the_payload_size() {
    let view = Arc::new(View::default());
    view.set("web", 1, big(100));
    let handler = handler(&view);
    let src = "192.0.2.1:5353".parse().unwrap();
    for (edns, limit) in [
        (None, 512),
        (Some(0), 512),
        (Some(700), 700),
        (Some(9000), 1232),
    ] {
        for (name, qtype) in [
            ("web.service.roster.", RecordType::A),
            ("_web._tcp.service.roster.", RecordType::SRV),
        ] {
            let bytes = query_bytes(1, name, qtype, edns, 0);
            let answer = handler.answer_bytes(&bytes, src, Transport::Udp).unwrap();
            assert!(answer.len() <= limit, "{name} {edns:?}: {}", answer.len());
            let reply = Message::from_vec(&answer).unwrap();
            assert!(reply.metadata.truncation, "{name} {edns:?}");
            assert!(!reply.answers.is_empty() && reply.answers.len() < 100);
            assert!(reply.additionals.is_empty(), "no additional when cut");
            assert_eq!(
                reply.edns.is_some(),
                edns.is_some(),
                "the OPT record is kept"
            );
            // One more answer record would not have fitted.
            let one = if qtype == RecordType::A {
                16
            } else {
                2 + 10 + 6 + 25
            };
            assert!(answer.len() + one > limit, "{name} {edns:?}: room left");
            let tcp = handler.answer_bytes(&bytes, src, Transport::Tcp).unwrap();
            let reply = Message::from_vec(&tcp).unwrap();
            assert!(!reply.metadata.truncation);
            assert_eq!(reply.answers.len(), 100);
        }
    }
}

#[test]
fn the_cache_is_bounded() {
    let view = Arc::new(View::default());
    let n = cache::MAX_ENTRIES + 500;
    view.set("web", 1, big(n));
    let handler = handler(&view);
    let src = "192.0.2.1:5353".parse().unwrap();
    for i in 0..n {
        let bytes = query_bytes(
            1,
            &format!("i{i}.web.instance.roster."),
            RecordType::A,
            None,
            0,
        );
        let answer = handler.answer_bytes(&bytes, src, Transport::Udp).unwrap();
        assert_eq!(Message::from_vec(&answer).unwrap().answers.len(), 1);
    }
    let len = handler.inner.answers.len();
    assert!(len <= cache::MAX_ENTRIES, "{len} entries");
    assert!(
        len >= cache::MAX_ENTRIES / 2,
        "{len} entries: evicting too much"
    );
}

#[test]
fn nxdomain_names_take_no_entry() {
    let view = Arc::new(View::default());
    view.set("web", 1, big(2));
    let handler = handler(&view);
    let src = "192.0.2.1:5353".parse().unwrap();
    for i in 0..100 {
        for name in [
            format!("x{i}.web.instance.roster."),
            format!("t{i}.web.service.roster."),
            format!("_web._t{i}.service.roster."),
        ] {
            let bytes = query_bytes(1, &name, RecordType::A, None, 0);
            let answer = handler.answer_bytes(&bytes, src, Transport::Udp).unwrap();
            assert_eq!(answer[3] & 0x0F, 3, "{name}: NXDOMAIN");
        }
    }
    assert_eq!(handler.inner.answers.len(), 0);
}

/// A raw query: `name` (its case kept), type, class, an optional OPT record
/// (payload, version, options) and trailing bytes.
fn raw_query(
    id: u16,
    flags: u8,
    name: &str,
    qtype: u16,
    qclass: u16,
    opt: Option<(u16, u8, Vec<u8>)>,
    trailing: &[u8],
) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    // RD and the opcode from `flags`; CD and AD too.
    m.push((flags & 0x01) | ((flags & 0x30) >> 1));
    m.push(flags & 0x30);
    m.extend([0, 1, 0, 0, 0, 0, 0, u8::from(opt.is_some())]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend(qtype.to_be_bytes());
    m.extend(qclass.to_be_bytes());
    if let Some((payload, version, options)) = opt {
        m.extend([0, 0, 41]);
        m.extend(payload.to_be_bytes());
        m.extend([0, version, 0x80, 0]);
        m.extend((options.len() as u16).to_be_bytes());
        m.extend(options);
    }
    m.extend_from_slice(trailing);
    m
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Plain queries read without hickory's parser get the answer the full
    /// path gives, and every other message too.
    #[test]
    fn the_plain_reader_answers_as_the_full_path(
        endpoints in endpoints(),
        queries in prop::collection::vec(
            (0..NAMES.len(), any::<u64>(), any::<u16>(), any::<u8>(), 0usize..100,
             prop::sample::select(vec![1u16, 5, 6, 28, 33, 16, 255, 252, 41, 0, 65535]),
             prop::sample::select(vec![1u16, 1, 1, 3, 255]),
             prop::option::of((0u16..5000, prop::sample::select(vec![0u8, 0, 0, 1]),
                 prop::sample::select(vec![vec![], vec![], vec![0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8], vec![0, 10, 0, 1, 7]]))),
             prop::sample::select(vec![vec![], vec![], vec![], vec![0u8], vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]),
             any::<bool>()),
            1..12),
    ) {
        let view = Arc::new(View::default());
        view.set("web", 3, endpoints);
        let handler = handler(&view);
        let src = "192.0.2.1:5353".parse().unwrap();
        for (name, case, id, flags, turn, qtype, qclass, opt, trailing, udp) in queries {
            let name = mixed_case(NAMES[name], case);
            let bytes = raw_query(id, flags, &name, qtype, qclass, opt.clone(), &trailing);
            let transport = if udp { Transport::Udp } else { Transport::Tcp };
            for _ in 0..2 {
                handler.inner.turn.store(turn, Ordering::Relaxed);
                let plain = handler.answer_bytes_with(&bytes, src, transport, true);
                handler.inner.turn.store(turn, Ordering::Relaxed);
                let full = handler.answer_bytes_with(&bytes, src, transport, false);
                prop_assert_eq!(&plain, &full, "{} {} {} {:?} {:?}", name, qtype, qclass, opt, trailing);
            }
        }
    }
}

#[test]
fn plain_queries_skip_hickorys_parser() {
    let view = Arc::new(View::default());
    view.set("web", 1, big(3));
    let handler = handler(&view);
    let plain = |bytes: &[u8]| {
        let header = Header::read(&mut BinDecoder::new(bytes)).unwrap();
        handler.answer_plain(bytes, &header, true).is_some()
    };
    let a = |opt| raw_query(1, 1, "Web.Service.roster.", 1, 1, opt, &[]);
    assert!(plain(&a(None)));
    assert!(plain(&a(Some((1232, 0, vec![])))));
    assert!(!plain(&a(Some((1232, 1, vec![])))), "BADVERS");
    assert!(
        !plain(&a(Some((
            1232,
            0,
            vec![0, 10, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8]
        )))),
        "options: the full path checks them"
    );
    assert!(
        !plain(&raw_query(1, 1, "web.service.roster.", 1, 3, None, &[])),
        "CH"
    );
    assert!(
        !plain(&raw_query(1, 1, "web.service.roster.", 1, 1, None, &[0])),
        "trailing byte"
    );
    assert!(
        !plain(&raw_query(1, 1, "nosuch.service.roster.", 1, 1, None, &[])),
        "NXDOMAIN"
    );
}
