//! The zone apex: its SOA (serial from the view's index), its NS, and the
//! address of the name server `ns.DOMAIN` the NS record points to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
use std::sync::OnceLock;

use hickory_proto::rr::rdata::{A, AAAA, NS, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::{ConfigError, DnsConfig};

/// The records of the apex, built once.
pub(crate) struct Zone {
    /// `DOMAIN SOA`, serial 1: [`Zone::soa`] sets the serial per answer.
    soa: Record,
    /// `DOMAIN NS ns.DOMAIN`.
    ns: Record,
    /// `ns.DOMAIN`.
    ns_name: Name,
    /// A/AAAA data of `ns.DOMAIN`: the advertised address, or the server's,
    /// set once when it binds. Unset (no address, NODATA) for a handler run
    /// without [`DnsServer`](crate::DnsServer) and without an advertised address.
    ns_addrs: OnceLock<Vec<RData>>,
}

impl Zone {
    pub(crate) fn new(domain: &Name, config: &DnsConfig) -> Result<Zone, ConfigError> {
        let label = |l: &str| {
            Name::from_labels([l.as_bytes()])
                .and_then(|n| n.append_domain(domain))
                .map_err(|e| ConfigError::InvalidDomain {
                    domain: config.domain.clone(),
                    reason: e.into(),
                })
        };
        let ns_name = label("ns")?;
        let soa = Record::from_rdata(
            domain.clone(),
            config.negative_ttl,
            RData::SOA(SOA::new(
                ns_name.clone(),
                label("hostmaster")?,
                1,
                3600,
                600,
                86_400,
                config.negative_ttl,
            )),
        );
        let ns = Record::from_rdata(domain.clone(), config.ttl, RData::NS(NS(ns_name.clone())));
        let ns_addrs = OnceLock::new();
        if let Some(ip) = config.advertise_addr {
            let _ = ns_addrs.set(vec![rdata(ip)]);
        }
        Ok(Zone {
            soa,
            ns,
            ns_name,
            ns_addrs,
        })
    }

    /// The SOA record with `serial`.
    pub(crate) fn soa(&self, serial: u32) -> Record {
        let mut soa = self.soa.clone();
        if let RData::SOA(data) = &mut soa.data {
            data.serial = serial;
        }
        soa
    }

    /// The NS record of the apex.
    pub(crate) fn ns(&self) -> &Record {
        &self.ns
    }

    /// `ns.DOMAIN`.
    pub(crate) fn ns_name(&self) -> &Name {
        &self.ns_name
    }

    /// Records the address the server is bound to, unless an address was
    /// advertised or one is already known.
    pub(crate) fn set_server_ip(&self, bound: IpAddr) {
        let _ = self
            .ns_addrs
            .get_or_init(|| server_ips(bound).into_iter().map(rdata).collect());
    }

    /// A/AAAA data of `ns.DOMAIN` of type `qtype` (both for ANY).
    pub(crate) fn ns_addrs(&self, qtype: RecordType) -> impl Iterator<Item = &RData> {
        self.ns_addrs
            .get()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(move |data| qtype == RecordType::ANY || data.record_type() == qtype)
    }
}

fn rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// The addresses a server bound to `bound` is reached at: `bound` itself, or
/// for a wildcard address the address of the interface holding the default
/// route (both families for `::`, which takes IPv4 too on Linux), else loopback.
pub(crate) fn server_ips(bound: IpAddr) -> Vec<IpAddr> {
    if !bound.is_unspecified() {
        return vec![bound];
    }
    let v4 = route_source(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    if bound.is_ipv4() {
        return vec![v4.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    }
    let v6 = route_source(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)));
    match (v4, v6) {
        (None, None) => vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
        (v4, v6) => v4.into_iter().chain(v6).collect(),
    }
}

/// The source address the kernel picks to reach `destination` (a
/// documentation address, routed by the default route): connecting a UDP
/// socket sends nothing.
fn route_source(destination: IpAddr) -> Option<IpAddr> {
    let any = match destination {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind((any, 0)).ok()?;
    socket.connect((destination, 53)).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_address_is_its_own_answer_and_a_wildcard_finds_one() {
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(server_ips(ip), [ip]);
        let any4 = server_ips(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(any4.len(), 1);
        assert!(any4[0].is_ipv4() && !any4[0].is_unspecified());
        let any6 = server_ips(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert!(!any6.is_empty() && any6.iter().all(|ip| !ip.is_unspecified()));
    }

    #[test]
    fn the_serial_is_set_per_answer() {
        let domain = Name::from_ascii("roster.").unwrap();
        let zone = Zone::new(&domain, &DnsConfig::default()).unwrap();
        let RData::SOA(soa) = zone.soa(42).data else {
            panic!("not SOA")
        };
        assert_eq!(soa.serial, 42);
        assert_eq!(zone.ns_addrs(RecordType::A).count(), 0, "not bound yet");
        zone.set_server_ip("10.1.2.3".parse().unwrap());
        zone.set_server_ip("10.9.9.9".parse().unwrap());
        let a: Vec<_> = zone.ns_addrs(RecordType::A).collect();
        assert_eq!(
            a,
            [&RData::A(A(Ipv4Addr::new(10, 1, 2, 3)))],
            "first bind wins"
        );
        assert_eq!(zone.ns_addrs(RecordType::AAAA).count(), 0);
    }
}
