//! DNS front end for the roster service registry (server-side discovery).
//!
//! [`DnsHandler`] is a hickory-server [`RequestHandler`](hickory_server::server::RequestHandler)
//! that answers from a [`ServiceView`], the registry's read-only view of its
//! services. [`DnsServer`] (or [`serve`]) runs it on one UDP and one TCP socket
//! bound to the same port. The crate knows nothing about the catalog: the
//! registry implements [`ServiceView`] in-process, and a remote implementation
//! fed by a watch stream can run the same handler in a separate process.
//!
//! # Names
//!
//! Every name lives under the configured domain (`DOMAIN`, default `roster.`,
//! see [`DnsConfig`]). Names are case-insensitive; answers echo the query's case.
//!
//! | name | types | answer |
//! |---|---|---|
//! | `DOMAIN` | SOA, NS | the zone apex: `SOA ns.DOMAIN. hostmaster.DOMAIN. …`, `NS ns.DOMAIN.` (with its address as glue) |
//! | `ns.DOMAIN` | A, AAAA | the server's address ([`DnsConfig::advertise_addr`]) |
//! | `SERVICE.service.DOMAIN` | A, AAAA, TXT | healthy endpoints of the service |
//! | `TAG.SERVICE.service.DOMAIN` | A, AAAA, TXT | healthy endpoints carrying `TAG` |
//! | `_SERVICE._tcp.service.DOMAIN` | SRV | every healthy endpoint |
//! | `_SERVICE._TAG.service.DOMAIN` | SRV | healthy endpoints carrying `TAG` |
//! | `ID.SERVICE.instance.DOMAIN` | A, AAAA, TXT | one instance, whatever its health |
//! | any of the above with `.DC` after `service`/`instance` | as above | the same, from datacenter `DC` ([`ServiceView::remote_service`]); SERVFAIL while it is unreachable |
//!
//! `ANY` returns every record of the name. Other existing names
//! (`service.DOMAIN`, `instance.DOMAIN`, `SERVICE.instance.DOMAIN`,
//! `_X.service.DOMAIN`) are empty non-terminals: they answer NODATA, never
//! NXDOMAIN, so resolvers doing QNAME minimisation (RFC 9156) do not cut the
//! tree off above real names.
//!
//! # Records
//!
//! * **A/AAAA**: one record per endpoint whose address is an IP of that family.
//! * **Hostname endpoints** (an address that is not an IP) are answered with a
//!   CNAME to the hostname for A and AAAA queries. A name holding a CNAME may
//!   hold no other data (RFC 1034 §3.6.2), so on `SERVICE.service.DOMAIN` (and
//!   the tag names) the CNAME is only used when none of the matching endpoints
//!   has an IP address; then one hostname endpoint is picked per query, in
//!   rotation. When IP and hostname endpoints are mixed, A/AAAA queries get the
//!   IP endpoints only and the hostname endpoints are reachable through SRV.
//!   The CNAME target is outside the zone and is not chased. TXT queries on an
//!   instance with a hostname address still get its TXT record (a deliberate
//!   exception to the CNAME rule: the metadata would otherwise be unreachable).
//! * **SRV** (RFC 2782): priority 1, weight [`InstanceRecord::weight`], the endpoint's
//!   port. The target is `ID.SERVICE.instance.DOMAIN` for IP endpoints, and its
//!   A/AAAA record goes in the additional section (for every target, as long as
//!   it fits); for hostname endpoints the target is the hostname itself, with no
//!   additional record. `_tcp` means "no tag filter", so a tag literally named
//!   `tcp` is not selectable through SRV. Tags and ids that are not valid DNS
//!   labels (longer than 63 bytes, say) cannot be queried, and an IP endpoint
//!   whose instance name would be invalid is left out of SRV answers.
//! * **TXT**: one record per endpoint with metadata, one `key=value` string per
//!   entry, in key order (an entry longer than 255 bytes continues in the next
//!   string of the same record). Identical records are sent once.
//! * Positive answers carry [`DnsConfig::ttl`]; negative answers (NXDOMAIN and
//!   NODATA) carry the zone's SOA in the authority section with TTL and minimum
//!   [`DnsConfig::negative_ttl`] (RFC 2308). The SOA serial is the low 32 bits
//!   of [`ServiceView::index`], so it moves with the catalog.
//!
//! An instance id matches case-insensitively; a tag too. A service "exists" when
//! the view knows it (even with no healthy endpoint: NODATA); a tag name exists
//! when some endpoint of the service, of any health, carries the tag.
//!
//! # Protocol
//!
//! * AA is set and RA is clear on every answer; RD and CD are copied.
//! * NXDOMAIN for unknown services, instances, tags and name shapes inside the
//!   domain; REFUSED for names outside it, for classes other than IN and for
//!   zone transfers; NOTIMP for opcodes other than QUERY; FORMERR for messages
//!   without exactly one question (and, in [`DnsServer`], for messages that do
//!   not parse); BADVERS for EDNS versions above 0; FORMERR for malformed
//!   EDNS options (a COOKIE of the wrong length, RFC 7873 §5.2.2; an option
//!   running past its record; a bad CLIENT-SUBNET, RFC 7871 §6), which
//!   hickory would otherwise ignore.
//! * EDNS0 (RFC 6891): when the query has an OPT record the answer has one too,
//!   and a UDP answer is sized to the requester's payload size (at least 512,
//!   at most [`DnsConfig::max_udp_payload`]); without EDNS a UDP answer never
//!   exceeds 512 bytes.
//! * Truncation is done here, not by hickory: when the answer does not fit, as
//!   many whole answer records as fit are sent with TC=1 and the OPT record is
//!   kept (hickory's own truncation would drop the OPT record, since it is
//!   written last). Additional records that do not fit are dropped without TC.
//!   Over TCP the limit is 65535 bytes and TC is never set: an answer larger
//!   than that (an SRV name of over a thousand instances) is cut to the
//!   records that fit.
//! * Answers (A, AAAA, SRV, TXT, and the CNAME pick) are rotated by one position
//!   per query, so naive clients that take the first record spread their load.
//! * Rendered records are cached per service and [`ServiceRecords::index`],
//!   and positive answers of service, tag, SRV and instance names are
//!   encoded once per (lowercase name, type) and index: such a query copies
//!   the requester's id and question (its exact case, DNS 0x20) and the
//!   encoded records in its rotation, so its cost grows with the bytes sent,
//!   not with the instances behind the name; a plain query (one question
//!   without compression, class IN, at most an OPT record of version 0
//!   without options) is read without hickory's parser. The sizes, compression and
//!   truncation are those of hickory's encoder, which still encodes negative
//!   answers, the apex, `ns.DOMAIN` and errors. The cache is bounded (8192
//!   entries, about 64 MiB) and sharded, with no lock common to all queries.
//! * Over UDP, an answer is never larger than the requester's EDNS payload
//!   size (values below 512 count as 512) nor [`DnsConfig::max_udp_payload`],
//!   and never larger than 512 bytes without EDNS. With the default 1232, a
//!   forged 53-byte query is amplified at most 23 times (76 times at 4096).
//! * [`DnsServer`] bounds TCP: [`DnsConfig::max_tcp_connections`], an idle
//!   and a write timeout, small socket buffers; see [`DnsHandler::tcp_stats`].
//! * A question section using name compression is refused with FORMERR and
//!   not echoed: in a single question a pointer can only aim at the header,
//!   whose bytes differ in the answer, so the echo would not decode.
//! * Optional response rate limiting of UDP answers per source prefix
//!   ([`DnsConfig::rrl`], off by default; see [`rrl`]), with counters in
//!   [`DnsHandler::rrl_stats`].
//! * [`DnsHandler::answer_bytes`] is the whole path from request bytes to
//!   answer bytes, used by [`DnsServer`] and by fuzzers.
//! * The query path logs at `debug` level only. [`DnsServer`] uses its own
//!   socket loops rather than `hickory_server::Server`, whose per-request
//!   logging is at `info` level.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;

mod answer;
#[cfg(target_os = "linux")]
mod batch;
mod cache;
mod edns;
mod handler;
mod names;
mod render;
pub mod rrl;
mod server;
mod wire;
mod zone;

pub use handler::DnsHandler;
pub use names::DomainError;
pub use rrl::{RateLimiter, RrlConfig, RrlStats, Verdict};
pub use server::{DnsServer, TcpStats, serve};

/// The transport a request came over, for [`DnsHandler::answer_bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: answers are sized to the requester's buffer and may be rate limited.
    Udp,
    /// TCP (or any stream): answers up to 65535 bytes, never rate limited.
    Tcp,
}

/// Everything the DNS front end needs to know about one service, as the
/// registry renders it once per change of the service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRecords {
    /// Index of the last change to the service. It must change whenever
    /// `endpoints` does: the handler caches its rendered records by it.
    pub index: u64,
    /// Every endpoint of the service, healthy or not.
    pub endpoints: Vec<InstanceRecord>,
}

/// One instance of a service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceRecord {
    /// Instance id (unique in the registry).
    pub id: String,
    /// IP address or hostname.
    pub address: String,
    /// Port, used in SRV records.
    pub port: u16,
    /// Tags, selectable with `TAG.SERVICE.service.DOMAIN` and `_SERVICE._TAG.service.DOMAIN`.
    pub tags: Vec<String>,
    /// Metadata, published as `key=value` TXT strings.
    pub meta: BTreeMap<String, String>,
    /// SRV weight for the instance's current health.
    pub weight: u16,
    /// Whether the instance is healthy (passing or warning): only healthy
    /// instances appear in service answers; instance names answer regardless.
    pub healthy: bool,
}

/// The registry's read-only view of its services.
///
/// Called on every query, from many threads at once: it must be cheap and must
/// not block (return a published snapshot, never wait for a writer).
pub trait ServiceView: Send + Sync + 'static {
    /// The records of the service `name` (always lowercase), or `None` when the
    /// registry does not know the service.
    fn service(&self, name: &str) -> Option<Arc<ServiceRecords>>;

    /// The registry's global index: it grows with every change of the
    /// catalog. Its low 32 bits are the zone's SOA serial (RFC 1982 serial
    /// arithmetic copes with the wrap), so a secondary or a monitoring probe
    /// sees the zone change. The default, 1, suits a view without an index.
    fn index(&self) -> u64 {
        1
    }

    /// The records of service `name` in another datacenter, for names with
    /// a datacenter label (`web.service.dc2.DOMAIN`). The default knows no
    /// other datacenter. Called on the query path too: it must not block.
    fn remote_service(&self, datacenter: &str, name: &str) -> Remote {
        let _ = (datacenter, name);
        Remote::UnknownDatacenter
    }
}

/// What a [`ServiceView`] knows about a service of another datacenter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Remote {
    /// Its records ([`ServiceRecords::index`] must change when they do).
    Records(Arc<ServiceRecords>),
    /// The datacenter does not have the service: NXDOMAIN.
    NoService,
    /// No such datacenter: NXDOMAIN.
    UnknownDatacenter,
    /// The datacenter is unreachable or not asked yet: SERVFAIL, so
    /// resolvers retry rather than cache a negative answer.
    Unavailable,
}

/// Settings of the DNS front end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsConfig {
    /// The domain answered for (default `roster`); a trailing dot is optional.
    pub domain: String,
    /// TTL of positive answers, in seconds (default 0: clients ask every time).
    pub ttl: u32,
    /// TTL and SOA minimum of negative answers, in seconds (default 5).
    pub negative_ttl: u32,
    /// Largest UDP answer, whatever the requester advertises (default 1232,
    /// the DNS Flag Day 2020 value: it fits every path's MTU without
    /// fragmentation and bounds what a forged query can amplify). Larger
    /// answers are truncated (TC=1) and clients retry over TCP. Values below
    /// 512 are raised to 512.
    pub max_udp_payload: u16,
    /// Most DNS TCP connections open at once (default 256); connections
    /// accepted past it are closed at once, so idle or stalled clients cannot
    /// take every file descriptor of the process.
    pub max_tcp_connections: usize,
    /// A TCP connection that sends no complete query for this long is closed
    /// (default 10 s; RFC 7766 §6.2.3 suggests seconds).
    pub tcp_idle_timeout: std::time::Duration,
    /// A TCP answer the client does not read within this time closes the
    /// connection, dropping what is unsent (default 5 s).
    pub tcp_write_timeout: std::time::Duration,
    /// The address `ns.DOMAIN` (the apex NS target) resolves to. `None` (the
    /// default) uses the address [`DnsServer`] is bound to; when that is
    /// `0.0.0.0` or `::`, the address of the interface holding the default
    /// route (for `::`, of both families), else loopback.
    pub advertise_addr: Option<std::net::IpAddr>,
    /// Response rate limiting of UDP answers per source prefix (default
    /// `None`: off).
    pub rrl: Option<RrlConfig>,
    /// Source networks allowed to ask, as (address, prefix length); others get
    /// REFUSED. Empty (the default) allows everyone.
    pub allow: Vec<(std::net::IpAddr, u8)>,
}

impl DnsConfig {
    /// Whether `ip` may ask: it falls in one of the `allow` networks, or the
    /// list is empty. IPv4 clients seen through an IPv6 socket count as IPv4.
    ///
    /// ```
    /// let cfg = roster_dns::DnsConfig {
    ///     allow: vec![("10.0.0.0".parse().unwrap(), 8)],
    ///     ..Default::default()
    /// };
    /// assert!(cfg.allows("10.1.2.3".parse().unwrap()));
    /// assert!(cfg.allows("::ffff:10.1.2.3".parse().unwrap()));
    /// assert!(!cfg.allows("192.168.0.1".parse().unwrap()));
    /// ```
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        if self.allow.is_empty() {
            return true;
        }
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow.iter().any(|(net, len)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from((*len).min(32)))
                    .unwrap_or(0);
                u32::from(*n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from((*len).min(128)))
                    .unwrap_or(0);
                u128::from(*n) & mask == u128::from(a) & mask
            }
            _ => false,
        })
    }
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            domain: "roster".to_owned(),
            ttl: 0,
            negative_ttl: 5,
            max_udp_payload: 1232,
            max_tcp_connections: 256,
            tcp_idle_timeout: std::time::Duration::from_secs(10),
            tcp_write_timeout: std::time::Duration::from_secs(5),
            advertise_addr: None,
            rrl: None,
            allow: Vec::new(),
        }
    }
}

/// Why a [`DnsConfig`] was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The domain is not a valid DNS name.
    #[error("invalid DNS domain {domain:?}: {reason}")]
    InvalidDomain {
        /// The configured domain.
        domain: String,
        /// What is wrong with it.
        #[source]
        reason: names::DomainError,
    },
    /// The response rate limiting settings cannot work.
    #[error("invalid DNS rate limiting settings: {reason}")]
    InvalidRateLimit {
        /// What is wrong with them.
        reason: String,
    },
}
