//! The hickory `RequestHandler`: from a request to a sized response.

use std::collections::HashMap;
use std::fmt;
use std::iter;
use std::net::SocketAddr;
use std::slice;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use hickory_proto::op::{Edns, LowerQuery, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, Name, RData, Record, RecordType};
use hickory_proto::serialize::binary::BinDecoder;
use hickory_server::server::Request;
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use tokio::time::Instant;
use tracing::debug;

use crate::cache::{self, Answer, AnswerCache, Encoded, Entry};
use crate::edns;
use crate::names::{self, Shape};
use crate::render::{Addr, Rendered, Selection};
use crate::rrl::{RateLimiter, RrlStats, Verdict};
use crate::server::{TcpCounters, TcpStats};
use crate::wire::{self, OPT_LEN};
use crate::zone::Zone;
use crate::{ConfigError, DnsConfig, ServiceView};

/// Rendered services kept at most; past it the cache starts over (services
/// that disappeared are otherwise only dropped when queried).
const CACHE_CAP: usize = 16_384;
/// Largest TCP message.
const TCP_LIMIT: usize = u16::MAX as usize;

/// Answers DNS queries from a [`ServiceView`]; see the [crate docs](crate) for
/// the names and records. Cheap to clone: clones share the view and the cache.
#[derive(Clone)]
pub struct DnsHandler {
    inner: Arc<Inner>,
}

struct Inner {
    view: Arc<dyn ServiceView>,
    config: DnsConfig,
    /// Lowercase, fully qualified.
    domain: Name,
    domain_lower: LowerName,
    /// SOA, NS and the name server's address.
    zone: Zone,
    cache: RwLock<HashMap<Box<str>, Arc<Rendered>>>,
    /// Encoded positive answers by question name and type.
    answers: AnswerCache,
    /// Rotation counter: one step per query.
    turn: AtomicUsize,
    /// An empty question section, sent instead of a question that must not be echoed.
    no_question: Queries,
    rrl: Option<RateLimiter>,
    tcp: TcpCounters,
}

impl fmt::Debug for DnsHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsHandler")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// A query in its plainest form, all an answer from the cache needs.
pub(crate) struct Plain<'a> {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question section as received: one question, no compression.
    pub question: &'a [u8],
    /// The question's name, lowercase.
    pub name: &'a LowerName,
    pub qtype: RecordType,
    /// The requester's OPT payload size, when it sent an OPT record.
    pub payload: Option<u16>,
}

/// A negative answer of a name backed by a service.
enum Negative {
    NxDomain,
    NoData,
}

/// What a query resolved to, before sizing.
struct Reply {
    rcode: ResponseCode,
    authoritative: bool,
    answers: Vec<Record>,
    additionals: Vec<Record>,
    /// NXDOMAIN or NODATA: the SOA goes in the authority section.
    negative: bool,
    /// The SOA of a negative answer, set by [`DnsHandler::reply`].
    soa: Option<Record>,
}

impl Reply {
    fn error(rcode: ResponseCode) -> Reply {
        Reply {
            rcode,
            authoritative: false,
            answers: Vec::new(),
            additionals: Vec::new(),
            negative: false,
            soa: None,
        }
    }

    fn nxdomain() -> Reply {
        Reply {
            rcode: ResponseCode::NXDomain,
            authoritative: true,
            negative: true,
            ..Reply::error(ResponseCode::NXDomain)
        }
    }

    /// NOERROR: NODATA when both sections are empty.
    fn answer(answers: Vec<Record>, additionals: Vec<Record>) -> Reply {
        Reply {
            rcode: ResponseCode::NoError,
            authoritative: true,
            negative: answers.is_empty(),
            answers,
            additionals,
            soa: None,
        }
    }

    fn nodata() -> Reply {
        Reply::answer(Vec::new(), Vec::new())
    }
}

/// Why a name backed by a service has no records.
#[derive(Clone, Copy, Debug)]
enum Missing {
    /// No such service (or datacenter): NXDOMAIN.
    Unknown,
    /// Its datacenter cannot be asked now: SERVFAIL, so resolvers retry.
    Unavailable,
}

impl Missing {
    fn reply(self) -> Reply {
        match self {
            Missing::Unknown => Reply::nxdomain(),
            Missing::Unavailable => Reply::error(ResponseCode::ServFail),
        }
    }
}

impl DnsHandler {
    /// A handler answering for `config.domain` from `view`.
    pub fn new(view: Arc<dyn ServiceView>, config: DnsConfig) -> Result<DnsHandler, ConfigError> {
        let domain =
            names::domain_name(&config.domain).map_err(|reason| ConfigError::InvalidDomain {
                domain: config.domain.clone(),
                reason,
            })?;
        let zone = Zone::new(&domain, &config)?;
        let rrl = config.rrl.as_ref().map(RateLimiter::new).transpose()?;
        let no_question =
            Queries::read(&mut BinDecoder::new(&[]), 0).expect("an empty question section decodes");
        Ok(DnsHandler {
            inner: Arc::new(Inner {
                view,
                domain_lower: LowerName::from(&domain),
                domain,
                zone,
                cache: RwLock::new(HashMap::new()),
                answers: AnswerCache::default(),
                turn: AtomicUsize::new(0),
                no_question,
                rrl,
                tcp: TcpCounters::default(),
                config,
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DnsConfig {
        &self.inner.config
    }

    /// The domain answered for, lowercase and fully qualified (`roster.`).
    pub fn domain(&self) -> &Name {
        &self.inner.domain
    }

    /// Answers withheld by response rate limiting so far, in every clone of
    /// this handler (all zero when [`DnsConfig::rrl`] is off).
    pub fn rrl_stats(&self) -> RrlStats {
        self.inner
            .rrl
            .as_ref()
            .map_or_else(RrlStats::default, RateLimiter::stats)
    }

    /// What [`DnsServer`](crate::DnsServer)'s TCP side is doing, counted
    /// over every clone of this handler.
    pub fn tcp_stats(&self) -> TcpStats {
        self.inner.tcp.stats()
    }

    pub(crate) fn tcp_counters(&self) -> &TcpCounters {
        &self.inner.tcp
    }

    /// The rendered records of `service` (in datacenter `dc`, when given),
    /// from the cache when its index has not moved; the negative reply
    /// otherwise.
    fn rendered(&self, service: &str, dc: Option<&str>) -> Result<Arc<Rendered>, Missing> {
        let inner = &*self.inner;
        let cache = || inner.cache.read().unwrap_or_else(PoisonError::into_inner);
        let remote_key;
        let (key, records, domain) = match dc {
            None => (service, inner.view.service(service), None),
            Some(dc) => {
                let records = match inner.view.remote_service(dc, service) {
                    crate::Remote::Records(r) => Some(r),
                    crate::Remote::Unavailable => return Err(Missing::Unavailable),
                    crate::Remote::NoService | crate::Remote::UnknownDatacenter => None,
                };
                // Names in answers (SRV targets) carry the datacenter too.
                let domain = Name::from_ascii(dc)
                    .and_then(|d| d.append_domain(&inner.domain))
                    .map_err(|_| Missing::Unknown)?;
                // `@` is in no service or datacenter name: no collision.
                remote_key = format!("{service}@{dc}");
                (remote_key.as_str(), records, Some(domain))
            }
        };
        let Some(records) = records else {
            if cache().contains_key(key) {
                let mut cache = inner.cache.write().unwrap_or_else(PoisonError::into_inner);
                cache.remove(key);
            }
            return Err(Missing::Unknown);
        };
        if let Some(rendered) = cache().get(key)
            && rendered.index == records.index
        {
            return Ok(rendered.clone());
        }
        let domain = domain.as_ref().unwrap_or(&inner.domain);
        let rendered = Arc::new(Rendered::new(service, &records, domain));
        let mut cache = inner.cache.write().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_CAP && !cache.contains_key(key) {
            cache.clear();
        }
        cache.insert(key.into(), rendered.clone());
        Ok(rendered)
    }

    fn record(&self, name: &Name, data: RData) -> Record {
        Record::from_rdata(name.clone(), self.inner.config.ttl, data)
    }

    /// The zone's SOA, its serial the low 32 bits of the view's index.
    fn soa(&self) -> Record {
        // Truncation intended: serials wrap (RFC 1982).
        self.inner.zone.soa(self.inner.view.index() as u32)
    }

    /// Tells the zone the address the server is bound to: `ns.DOMAIN`
    /// resolves to it unless [`DnsConfig::advertise_addr`] says otherwise.
    pub(crate) fn set_server_ip(&self, ip: std::net::IpAddr) {
        self.inner.zone.set_server_ip(ip);
    }

    /// A/AAAA records of `ns.DOMAIN` of type `qtype`, named `name`.
    fn ns_addrs(&self, name: &Name, qtype: RecordType) -> Vec<Record> {
        self.inner
            .zone
            .ns_addrs(qtype)
            .map(|data| self.record(name, data.clone()))
            .collect()
    }

    /// Resolves one question.
    fn resolve(&self, query: &LowerQuery) -> Reply {
        let qtype = query.query_type();
        if query.query_class() != DNSClass::IN
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
        {
            return Reply::error(ResponseCode::Refused);
        }
        let qname = query.original().name();
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        let (shape, dc) = names::parse(query.name(), &self.inner.domain_lower);
        match &shape {
            Shape::Outside => Reply::error(ResponseCode::Refused),
            Shape::Unknown => Reply::nxdomain(),
            Shape::Empty => Reply::nodata(),
            Shape::Apex => {
                let zone = &self.inner.zone;
                let mut answers = Vec::new();
                let mut additionals = Vec::new();
                let any = qtype == RecordType::ANY;
                if any || qtype == RecordType::SOA {
                    answers.push(self.soa());
                }
                if any || qtype == RecordType::NS {
                    answers.push(zone.ns().clone());
                    // Glue: the address of the NS target, in the zone.
                    additionals = self.ns_addrs(zone.ns_name(), RecordType::ANY);
                }
                for record in &mut answers {
                    record.name = qname.clone();
                }
                Reply::answer(answers, additionals)
            }
            Shape::Nameserver => match qtype {
                RecordType::A | RecordType::AAAA | RecordType::ANY => {
                    Reply::answer(self.ns_addrs(qname, qtype), Vec::new())
                }
                _ => Reply::nodata(),
            },
            Shape::ServiceParent { service } => match self.rendered(service, dc) {
                Ok(_) => Reply::nodata(),
                Err(missing) => missing.reply(),
            },
            Shape::Service { service, .. }
            | Shape::Srv { service, .. }
            | Shape::Instance { service, .. } => {
                let rendered = match self.rendered(service, dc) {
                    Ok(r) => r,
                    Err(missing) => return missing.reply(),
                };
                match self.service_answer(&shape, qtype, qname, &rendered) {
                    Ok(answer) => Reply::answer(answer.answers(turn), answer.additionals(turn)),
                    Err(Negative::NxDomain) => Reply::nxdomain(),
                    Err(Negative::NoData) => Reply::nodata(),
                }
            }
        }
    }

    /// The records of a name backed by a service (`Service`, `Srv` and
    /// `Instance` shapes), named `qname`, unrotated; or the negative reply.
    fn service_answer(
        &self,
        shape: &Shape<'_>,
        qtype: RecordType,
        qname: &Name,
        rendered: &Rendered,
    ) -> Result<Answer, Negative> {
        let answer = match shape {
            Shape::Service { tag, .. } => {
                let selection = select(rendered, *tag).ok_or(Negative::NxDomain)?;
                self.service_answers(qname, qtype, rendered, selection)
            }
            Shape::Srv { tag, .. } => {
                let selection = select(rendered, *tag).ok_or(Negative::NxDomain)?;
                if !matches!(qtype, RecordType::SRV | RecordType::ANY) {
                    return Err(Negative::NoData);
                }
                self.srv_answers(qname, rendered, selection)
            }
            Shape::Instance { id, .. } => {
                let id = id.join(".");
                match rendered.ids.get(id.as_str()) {
                    Some(&i) => self.instance_answers(qname, qtype, rendered, i),
                    None if rendered.has_id_suffix(&id) => return Err(Negative::NoData),
                    None => return Err(Negative::NxDomain),
                }
            }
            _ => return Err(Negative::NxDomain),
        };
        if answer.is_empty() {
            return Err(Negative::NoData);
        }
        Ok(answer)
    }

    /// A/AAAA/CNAME/TXT of the healthy endpoints in `selection`.
    fn service_answers(
        &self,
        qname: &Name,
        qtype: RecordType,
        rendered: &Rendered,
        selection: &Selection,
    ) -> Answer {
        let any = qtype == RecordType::ANY;
        let mut answer = Answer::default();
        if any || matches!(qtype, RecordType::A | RecordType::AAAA) {
            let addrs = selection
                .members
                .iter()
                .map(|&i| &rendered.eps[i as usize].addr);
            if selection.has_ip {
                let records = addrs
                    .filter_map(|addr| match addr {
                        Addr::Ip(data) if any || data.record_type() == qtype => {
                            Some(self.record(qname, data.clone()))
                        }
                        _ => None,
                    })
                    .collect();
                answer.push(records, false);
            } else {
                // One hostname per query, in rotation.
                let records = addrs
                    .filter_map(|addr| match addr {
                        Addr::Host(data) => Some(self.record(qname, data.clone())),
                        _ => None,
                    })
                    .collect();
                answer.push(records, true);
            }
        }
        if any || qtype == RecordType::TXT {
            let records = selection
                .txt
                .iter()
                .filter_map(|&i| rendered.eps[i as usize].txt.as_ref())
                .map(|txt| self.record(qname, txt.clone()))
                .collect();
            answer.push(records, false);
        }
        answer
    }

    /// SRV of the endpoints in `selection`, with A/AAAA of every IP target.
    fn srv_answers(&self, qname: &Name, rendered: &Rendered, selection: &Selection) -> Answer {
        let mut answers = Vec::with_capacity(selection.members.len());
        let mut additionals = Vec::with_capacity(selection.members.len());
        for &i in &selection.members {
            let ep = &rendered.eps[i as usize];
            let Some(srv) = &ep.srv else { continue };
            if let (Addr::Ip(data), Some(target)) = (&ep.addr, &ep.instance_name) {
                additionals.push((self.record(target, data.clone()), answers.len()));
            }
            answers.push(self.record(qname, srv.clone()));
        }
        let mut answer = Answer::default();
        answer.push(answers, false);
        answer.additionals = additionals;
        answer
    }

    /// Records of one instance, whatever its health.
    fn instance_answers(
        &self,
        qname: &Name,
        qtype: RecordType,
        rendered: &Rendered,
        i: u32,
    ) -> Answer {
        let ep = &rendered.eps[i as usize];
        let any = qtype == RecordType::ANY;
        let mut answer = Answer::default();
        if any || matches!(qtype, RecordType::A | RecordType::AAAA) {
            match &ep.addr {
                Addr::Ip(data) if any || data.record_type() == qtype => {
                    answer.push(vec![self.record(qname, data.clone())], false);
                }
                Addr::Host(data) => answer.push(vec![self.record(qname, data.clone())], false),
                _ => {}
            }
        }
        if let Some(txt) = &ep.txt
            && (any || qtype == RecordType::TXT)
        {
            answer.push(vec![self.record(qname, txt.clone())], false);
        }
        answer
    }

    /// The answer to `request` from the answer cache (encoded once per
    /// question name, type and service index), or `None` when the uncached
    /// path must answer: anything but a plain query for a name backed by a
    /// service with a positive answer.
    pub(crate) fn answer_cached(&self, request: &Request, udp: bool) -> Option<Vec<u8>> {
        let metadata = &request.metadata;
        if metadata.op_code != OpCode::Query {
            return None;
        }
        let [query] = request.queries.queries() else {
            return None;
        };
        let question = request.queries.as_bytes();
        if query.query_class() != DNSClass::IN || !question_is_plain(question) {
            return None;
        }
        if let Some(edns) = &request.edns
            && (edns.version() > 0 || !edns::options_valid(request.as_slice()))
        {
            return None;
        }
        self.answer_from_cache(
            &Plain {
                id: metadata.id,
                recursion_desired: metadata.recursion_desired,
                checking_disabled: metadata.checking_disabled,
                question,
                name: query.name(),
                qtype: query.query_type(),
                payload: request.edns.as_ref().map(Edns::max_payload),
            },
            udp,
        )
    }

    /// The answer to `query` from the answer cache, or `None` when the
    /// uncached path must answer (a negative answer, a name not backed by a
    /// service, a zone transfer).
    pub(crate) fn answer_from_cache(&self, query: &Plain<'_>, udp: bool) -> Option<Vec<u8>> {
        let question = query.question;
        let qtype = query.qtype;
        if matches!(qtype, RecordType::AXFR | RecordType::IXFR) || question.len() < 5 {
            return None;
        }
        let (shape, dc) = names::parse(query.name, &self.inner.domain_lower);
        let (Shape::Service { service, .. }
        | Shape::Srv { service, .. }
        | Shape::Instance { service, .. }) = shape
        else {
            return None;
        };
        let rendered = self.rendered(service, dc).ok()?;
        // The key: the lowercase name as on the wire, then the type.
        let name = &question[..question.len() - 4];
        let mut key = [0u8; 260];
        let key = &mut key[..name.len() + 2];
        for (k, b) in key.iter_mut().zip(name) {
            *k = b.to_ascii_lowercase();
        }
        key[name.len()..].copy_from_slice(&u16::from(qtype).to_be_bytes());
        let entry = match self.inner.answers.get(key) {
            Some(entry) if entry.index == rendered.index => entry,
            _ => {
                // Owner names are the question's, written per query. NODATA
                // is kept (as no answer) so that it is decided once; NXDOMAIN
                // is not, or random names would fill the cache.
                let encoded = match self.service_answer(&shape, qtype, &Name::root(), &rendered) {
                    Ok(answer) => Encoded::new(&answer),
                    Err(Negative::NoData) => None,
                    Err(Negative::NxDomain) => return None,
                };
                let entry = Arc::new(Entry {
                    index: rendered.index,
                    encoded,
                });
                self.inner.answers.insert(key, entry.clone());
                entry
            }
        };
        let encoded = entry.encoded.as_ref()?;
        let turn = self.inner.turn.fetch_add(1, Ordering::Relaxed);
        let (limit, opt) = self.sizes(query.payload, udp);
        let query = cache::Query {
            id: query.id,
            recursion_desired: query.recursion_desired,
            checking_disabled: query.checking_disabled,
            question,
            turn,
            limit,
            opt,
            udp,
        };
        debug!(id = query.id, query = ?query.question, turn, "dns query (cached)");
        Some(encoded.write(&query))
    }

    /// The largest answer over UDP (`udp`) or TCP to a request with an OPT
    /// record announcing `payload` (or none), and the payload size of the
    /// answer's OPT record.
    fn sizes(&self, payload: Option<u16>, udp: bool) -> (usize, Option<u16>) {
        let max_udp = self.inner.config.max_udp_payload.max(512);
        let limit = match (payload, udp) {
            (_, false) => TCP_LIMIT,
            (None, true) => 512,
            (Some(payload), true) => usize::from(payload.clamp(512, max_udp)),
        };
        let opt = payload.map(|_| {
            if udp {
                u16::try_from(limit).unwrap_or(max_udp)
            } else {
                max_udp
            }
        });
        (limit, opt)
    }

    /// The largest answer to `request` over UDP (`udp`) or TCP, and the OPT
    /// record of the answer (when the request has one).
    fn limits(&self, request: &Request, udp: bool) -> (usize, Option<Edns>) {
        let (limit, opt) = self.sizes(request.edns.as_ref().map(Edns::max_payload), udp);
        let edns = opt.map(|payload| {
            let mut edns = Edns::new();
            edns.set_max_payload(payload);
            edns
        });
        (limit, edns)
    }

    /// Everything but the sizing: header checks, then the question.
    fn reply(&self, request: &Request) -> Reply {
        if request.metadata.op_code != OpCode::Query {
            return Reply::error(ResponseCode::NotImp);
        }
        if request.edns.as_ref().is_some_and(|edns| edns.version() > 0) {
            return Reply::error(ResponseCode::BADVERS);
        }
        if request.edns.is_some() && !edns::options_valid(request.as_slice()) {
            return Reply::error(ResponseCode::FormErr);
        }
        let mut reply = match request.queries.queries() {
            [query] => self.resolve(query),
            _ => Reply::error(ResponseCode::FormErr),
        };
        if reply.negative {
            reply.soa = Some(self.soa());
        }
        reply
    }
}

/// The selection a service name designates: every healthy endpoint, or the
/// healthy endpoints with `tag`; `None` when no endpoint carries the tag.
fn select<'r>(rendered: &'r Rendered, tag: Option<&str>) -> Option<&'r Selection> {
    match tag {
        None => Some(&rendered.healthy),
        Some(tag) => rendered.tags.get(tag),
    }
}

/// A response decided but not yet encoded: hickory's `MessageResponse`
/// borrows its sections from here.
pub(crate) struct Prepared {
    metadata: Metadata,
    edns: Option<Edns>,
    reply: Reply,
    fit: wire::Fit,
    /// Whether the request's question section is sent back.
    echo: bool,
    /// The largest encoding the transport takes.
    pub(crate) limit: usize,
}

/// The response types `DnsHandler::response` builds.
pub(crate) type Response<'q> = MessageResponse<
    'q,
    'q,
    slice::Iter<'q, Record>,
    slice::Iter<'q, Record>,
    iter::Empty<&'q Record>,
    slice::Iter<'q, Record>,
>;

impl DnsHandler {
    /// What response rate limiting says about an answer to `src` over `protocol`.
    pub(crate) fn limit(&self, src: SocketAddr, udp: bool) -> Verdict {
        match &self.inner.rrl {
            Some(limiter) if udp => limiter.check(src.ip(), Instant::now()),
            _ => Verdict::Answer,
        }
    }

    /// Resolves and sizes the answer to `request`; with `slip`, a truncated
    /// empty answer that sends the requester to TCP instead.
    pub(crate) fn prepare(&self, request: &Request, udp: bool, slip: bool) -> Prepared {
        let (limit, edns) = self.limits(request, udp);
        let echo = question_is_plain(request.queries.as_bytes());
        let reply = if !echo {
            Reply::error(ResponseCode::FormErr)
        } else if slip {
            Reply::error(ResponseCode::NoError)
        } else {
            self.reply(request)
        };
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = reply.rcode;
        metadata.authoritative = reply.authoritative;
        let budget = limit - if edns.is_some() { OPT_LEN } else { 0 };
        let fit = wire::fit(
            &metadata,
            if echo {
                &request.queries
            } else {
                &self.inner.no_question
            },
            &reply.answers,
            self.authority(&reply),
            &reply.additionals,
            budget,
        );
        // Over TCP an answer larger than a message is cut without TC: TC
        // sends the client to TCP, where it already is.
        metadata.truncation = (fit.truncated && udp) || slip;
        debug!(
            id = request.metadata.id,
            query = ?request.queries.queries().first().map(|q| q.original()),
            rcode = %reply.rcode,
            answers = fit.answers,
            of = reply.answers.len(),
            truncated = metadata.truncation,
            slip,
            "dns query"
        );
        Prepared {
            metadata,
            edns,
            reply,
            fit,
            echo,
            limit,
        }
    }

    /// The hickory response for `prepared`, ready to encode.
    pub(crate) fn response<'q>(
        &'q self,
        request: &'q Request,
        prepared: &'q Prepared,
    ) -> Response<'q> {
        let queries = if prepared.echo {
            &request.queries
        } else {
            &self.inner.no_question
        };
        let fit = &prepared.fit;
        let authority = if fit.authority {
            self.authority(&prepared.reply)
        } else {
            &[]
        };
        MessageResponseBuilder::new(queries, prepared.edns.as_ref()).build(
            prepared.metadata,
            &prepared.reply.answers[..fit.answers],
            authority,
            iter::empty(),
            &prepared.reply.additionals[..fit.additionals],
        )
    }

    /// The authority section of `reply`: the SOA of negative answers.
    fn authority<'r>(&self, reply: &'r Reply) -> &'r [Record] {
        reply.soa.as_slice()
    }
}

/// Whether a question section (already decoded by hickory) is free of
/// compression pointers and so reads the same when echoed after another header.
fn question_is_plain(mut bytes: &[u8]) -> bool {
    while let Some((&len, rest)) = bytes.split_first() {
        if len & 0xC0 != 0 {
            return false;
        }
        if len == 0 {
            // Root label ends the name; type and class follow.
            bytes = rest.get(4..).unwrap_or_default();
        } else {
            bytes = rest.get(usize::from(len)..).unwrap_or_default();
        }
    }
    true
}

#[cfg(test)]
#[path = "cache_tests.rs"]
mod cache_tests;
