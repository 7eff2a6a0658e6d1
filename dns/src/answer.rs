//! From request bytes to answer bytes: the whole query path without sockets,
//! and the same path under hickory's own `Server` (its `RequestHandler`).

use std::net::SocketAddr;

use hickory_proto::op::{
    Header, HeaderCounts, Message, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_proto::rr::{LowerName, Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::runtime::Time;
use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use tracing::debug;

use crate::handler::Plain;
use crate::rrl::Verdict;
use crate::{DnsHandler, Transport};

/// Size of the header.
const HEADER: usize = 12;
/// Smallest question: the root name, type and class.
const MIN_QUESTION: u64 = 5;
/// Smallest record: the root name, type, class, TTL and an empty RDATA.
const MIN_RECORD: u64 = 11;

impl DnsHandler {
    /// Answers one DNS message received from `src`: the bytes to send back, or
    /// `None` when nothing is sent (shorter than a header, a response rather
    /// than a query, source port 0, or dropped by rate limiting).
    ///
    /// This is what [`DnsServer`](crate::DnsServer) does with every message it
    /// reads; it needs no runtime, so fuzzers and tests can call it directly.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # struct Empty;
    /// # impl roster_dns::ServiceView for Empty {
    /// #     fn service(&self, _: &str) -> Option<Arc<roster_dns::ServiceRecords>> { None }
    /// # }
    /// use roster_dns::{DnsConfig, DnsHandler, Transport};
    ///
    /// let handler = DnsHandler::new(Arc::new(Empty), DnsConfig::default()).unwrap();
    /// let header_only = [0x12, 0x34, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0];
    /// let src = "192.0.2.1:5353".parse().unwrap();
    /// let answer = handler.answer_bytes(&header_only, src, Transport::Udp).unwrap();
    /// assert_eq!(answer[3] & 0x0f, 1, "FORMERR: no question");
    /// ```
    pub fn answer_bytes(
        &self,
        request: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        self.answer_bytes_with(request, src, transport, true)
    }

    /// [`DnsHandler::answer_bytes`], with or without reading plain queries
    /// without hickory's parser.
    pub(crate) fn answer_bytes_with(
        &self,
        request: &[u8],
        src: SocketAddr,
        transport: Transport,
        plain: bool,
    ) -> Option<Vec<u8>> {
        let header = Header::read(&mut BinDecoder::new(request)).ok()?;
        if header.metadata.message_type == MessageType::Response || src.port() == 0 {
            return None;
        }
        if !self.config().allows(src.ip()) {
            // RFC 1035's answer for policy; the bare header is smaller than the
            // query, so it amplifies nothing.
            return Some(bare(&header, ResponseCode::Refused, false));
        }
        let udp = transport == Transport::Udp;
        let slip = match self.limit(src, udp) {
            Verdict::Drop => return None,
            Verdict::Slip => true,
            Verdict::Answer => false,
        };
        if plain
            && !slip
            && let Some(answer) = self.answer_plain(request, &header, udp)
        {
            return Some(answer);
        }
        let protocol = if udp { Protocol::Udp } else { Protocol::Tcp };
        // hickory reserves room for every announced question before reading
        // one: a 12-byte message announcing 65535 would cost megabytes.
        let parsed = if counts_fit(&header.counts, request.len()) {
            Request::from_bytes(request.to_vec(), src, protocol)
                .inspect_err(
                    |error| debug!(id = header.metadata.id, %error, "malformed dns message"),
                )
                .ok()
        } else {
            None
        };
        let Some(parsed) = parsed else {
            return Some(bare(&header, ResponseCode::FormErr, slip));
        };
        if !slip && let Some(answer) = self.answer_cached(&parsed, udp) {
            return Some(answer);
        }
        Some(self.answer_uncached(&parsed, &header, udp, slip))
    }

    /// The answer to `parsed` built record by record and encoded by hickory:
    /// every answer the cache does not hold.
    pub(crate) fn answer_uncached(
        &self,
        parsed: &Request,
        header: &Header,
        udp: bool,
        slip: bool,
    ) -> Vec<u8> {
        let prepared = self.prepare(parsed, udp, slip);
        let mut buf = Vec::with_capacity(prepared.limit.min(512));
        let mut encoder = BinEncoder::new(&mut buf);
        encoder.set_max_size(u16::try_from(prepared.limit).unwrap_or(u16::MAX));
        match self
            .response(parsed, &prepared)
            .destructive_emit(&mut encoder)
        {
            Ok(_) => buf,
            Err(error) => {
                debug!(id = header.metadata.id, %error, "dns response not encoded");
                bare(header, ResponseCode::ServFail, false)
            }
        }
    }
}

impl DnsHandler {
    /// The answer from the cache to a plain query read straight from the
    /// wire, without hickory's parser: one question without compression,
    /// class IN, and nothing else but an OPT record of version 0 without
    /// options ending the message. Anything else is `None`, for the full path.
    pub(crate) fn answer_plain(
        &self,
        message: &[u8],
        header: &Header,
        udp: bool,
    ) -> Option<Vec<u8>> {
        let counts = &header.counts;
        if header.metadata.op_code != OpCode::Query
            || counts.queries != 1
            || counts.answers != 0
            || counts.authorities != 0
            || counts.additionals > 1
        {
            return None;
        }
        let mut labels = Vec::with_capacity(8);
        let mut pos = HEADER;
        loop {
            let len = usize::from(*message.get(pos)?);
            if len == 0 {
                pos += 1;
                break;
            }
            if len > 63 {
                return None;
            }
            labels.push(message.get(pos + 1..pos + 1 + len)?);
            pos += 1 + len;
        }
        if pos - HEADER > 255 {
            return None;
        }
        let fixed = message.get(pos..pos + 4)?;
        let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        if u16::from_be_bytes([fixed[2], fixed[3]]) != 1 {
            return None;
        }
        let question = &message[HEADER..pos + 4];
        let rest = &message[pos + 4..];
        let payload = match (counts.additionals, rest) {
            (0, []) => None,
            // Root name, OPT, payload, extended RCODE, version 0, flags, no options.
            (1, &[0, 0, 41, high, low, _, 0, _, _, 0, 0]) => Some(u16::from_be_bytes([high, low])),
            _ => return None,
        };
        let mut name = Name::from_labels(labels).ok()?;
        name.set_fqdn(true);
        let name = LowerName::new(&name);
        self.answer_from_cache(
            &Plain {
                id: header.metadata.id,
                recursion_desired: header.metadata.recursion_desired,
                checking_disabled: header.metadata.checking_disabled,
                question,
                name: &name,
                qtype: RecordType::from(qtype),
                payload,
            },
            udp,
        )
    }
}

/// Whether the message is long enough for the records its header announces.
fn counts_fit(counts: &HeaderCounts, len: usize) -> bool {
    let needed = u64::from(counts.queries) * MIN_QUESTION
        + (u64::from(counts.answers)
            + u64::from(counts.authorities)
            + u64::from(counts.additionals))
            * MIN_RECORD;
    needed <= len.saturating_sub(HEADER) as u64
}

/// A header-only answer to `header`.
fn bare(header: &Header, rcode: ResponseCode, truncated: bool) -> Vec<u8> {
    let mut reply = Message::new(
        header.metadata.id,
        MessageType::Response,
        header.metadata.op_code,
    );
    reply.metadata.response_code = rcode;
    reply.metadata.recursion_desired = header.metadata.recursion_desired;
    reply.metadata.truncation = truncated;
    reply
        .to_vec()
        .expect("a header-only message always encodes")
}

#[async_trait::async_trait]
impl RequestHandler for DnsHandler {
    /// Answers under hickory's own `Server`; [`DnsServer`](crate::DnsServer)
    /// uses [`DnsHandler::answer_bytes`] instead. An answer dropped by rate
    /// limiting is not sent, and the returned info says REFUSED.
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let udp = request.protocol().is_datagram();
        let info = |rcode| {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = rcode;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        let slip = match self.limit(request.src(), udp) {
            Verdict::Drop => return info(ResponseCode::Refused),
            Verdict::Slip => true,
            Verdict::Answer => false,
        };
        let prepared = self.prepare(request, udp, slip);
        match response_handle
            .send_response(self.response(request, &prepared))
            .await
        {
            Ok(info) => info,
            Err(error) => {
                debug!(id = request.metadata.id, %error, "dns response not sent");
                info(ResponseCode::ServFail)
            }
        }
    }
}
