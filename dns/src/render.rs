//! Records rendered once per (service, index) and shared by every query.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV, TXT};
use hickory_proto::rr::{Name, RData};

use crate::ServiceRecords;

/// Longest `<character-string>` in a TXT record.
const MAX_STRING: usize = 255;

/// The address of an endpoint, ready for the wire.
#[derive(Clone, Debug)]
pub(crate) enum Addr {
    /// An IPv4 or IPv6 endpoint: its A or AAAA record data.
    Ip(RData),
    /// A hostname endpoint: its CNAME record data.
    Host(RData),
    /// Neither an IP address nor a valid hostname: never answered.
    Invalid,
}

/// One endpoint, rendered.
#[derive(Debug)]
pub(crate) struct Ep {
    /// Address record data.
    pub addr: Addr,
    /// `ID.SERVICE.instance.DOMAIN` when it is a valid name.
    pub instance_name: Option<Name>,
    /// SRV record data, when the endpoint has a usable target.
    pub srv: Option<RData>,
    /// TXT record data, when the endpoint has metadata.
    pub txt: Option<RData>,
}

/// A set of endpoints selected by a name (all healthy ones, or healthy ones with a tag).
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// Indexes into [`Rendered::eps`], in id order.
    pub members: Vec<u32>,
    /// The members whose TXT data is not a duplicate of an earlier member's.
    pub txt: Vec<u32>,
    /// Whether some member has an IP address (then A/AAAA never use CNAME).
    pub has_ip: bool,
}

/// Everything a query on one service needs.
#[derive(Debug)]
pub(crate) struct Rendered {
    /// The [`ServiceRecords::index`] rendered.
    pub index: u64,
    /// Every endpoint, healthy or not.
    pub eps: Vec<Ep>,
    /// Healthy endpoints.
    pub healthy: Selection,
    /// Healthy endpoints by lowercase tag; a tag carried only by unhealthy
    /// endpoints has an empty selection (the name exists, NODATA).
    pub tags: HashMap<Box<str>, Selection>,
    /// InstanceRecord by lowercase id.
    pub ids: HashMap<Box<str>, u32>,
}

impl Rendered {
    /// Renders `records` of `service` under `domain`.
    pub(crate) fn new(service: &str, records: &ServiceRecords, domain: &Name) -> Rendered {
        let mut eps = Vec::with_capacity(records.endpoints.len());
        let mut ids = HashMap::with_capacity(records.endpoints.len());
        let mut healthy = Vec::new();
        let mut tagged: HashMap<Box<str>, Vec<u32>> = HashMap::new();
        for (i, endpoint) in records.endpoints.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            let addr = address(&endpoint.address);
            let instance_name = instance_name(&endpoint.id, service, domain);
            let target = match &addr {
                Addr::Ip(_) => instance_name.clone(),
                Addr::Host(RData::CNAME(host)) => Some(host.0.clone()),
                _ => None,
            };
            let srv = target.map(|t| RData::SRV(SRV::new(1, endpoint.weight, endpoint.port, t)));
            let txt = (!endpoint.meta.is_empty()).then(|| {
                let entries: Vec<String> = endpoint
                    .meta
                    .iter()
                    .map(|(key, value)| format!("{key}={value}"))
                    .collect();
                let strings = entries
                    .iter()
                    .flat_map(|entry| entry.as_bytes().chunks(MAX_STRING))
                    .collect();
                RData::TXT(TXT::from_bytes(strings))
            });
            ids.entry(endpoint.id.to_ascii_lowercase().into_boxed_str())
                .or_insert(i);
            for tag in &endpoint.tags {
                let list = tagged
                    .entry(tag.to_ascii_lowercase().into_boxed_str())
                    .or_default();
                if endpoint.healthy && list.last() != Some(&i) {
                    list.push(i);
                }
            }
            if endpoint.healthy {
                healthy.push(i);
            }
            eps.push(Ep {
                addr,
                instance_name,
                srv,
                txt,
            });
        }
        let healthy = Selection::new(healthy, &eps);
        let tags = tagged
            .into_iter()
            .map(|(tag, members)| (tag, Selection::new(members, &eps)))
            .collect();
        Rendered {
            index: records.index,
            eps,
            healthy,
            tags,
            ids,
        }
    }

    /// Whether some instance id (lowercase) ends with `.suffix`, which makes
    /// `suffix.SERVICE.instance.DOMAIN` an empty non-terminal.
    pub(crate) fn has_id_suffix(&self, suffix: &str) -> bool {
        self.ids.keys().any(|id| {
            id.len() > suffix.len()
                && id.ends_with(suffix)
                && id.as_bytes()[id.len() - suffix.len() - 1] == b'.'
        })
    }
}

impl Selection {
    fn new(members: Vec<u32>, eps: &[Ep]) -> Selection {
        let mut seen = HashSet::new();
        let txt = members
            .iter()
            .copied()
            .filter(|&i| match &eps[i as usize].txt {
                Some(RData::TXT(txt)) => seen.insert(txt.txt_data.clone()),
                _ => false,
            })
            .collect();
        let has_ip = members
            .iter()
            .any(|&i| matches!(eps[i as usize].addr, Addr::Ip(_)));
        Selection {
            members,
            txt,
            has_ip,
        }
    }
}

/// Parses an endpoint address: an IP, else a hostname.
fn address(address: &str) -> Addr {
    let address = address.trim();
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Addr::Ip(match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        });
    }
    let host = address.strip_suffix('.').unwrap_or(address);
    let valid = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return Addr::Invalid;
    }
    let labels = host.split('.').map(str::as_bytes);
    match Name::from_labels(labels) {
        Ok(mut name) => {
            name.set_fqdn(true);
            Addr::Host(RData::CNAME(CNAME(name)))
        }
        Err(_) => Addr::Invalid,
    }
}

/// `ID.SERVICE.instance.DOMAIN`, or `None` when that is not a valid name.
fn instance_name(id: &str, service: &str, domain: &Name) -> Option<Name> {
    let labels = id
        .split('.')
        .chain([service, "instance"])
        .map(str::as_bytes);
    let name = Name::from_labels(labels).ok()?;
    name.append_domain(domain).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::InstanceRecord;

    fn ep(id: &str, address: &str, healthy: bool, tags: &[&str]) -> InstanceRecord {
        InstanceRecord {
            id: id.into(),
            address: address.into(),
            port: 80,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            meta: BTreeMap::from([("zone".into(), "eu".into())]),
            weight: 1,
            healthy,
        }
    }

    #[test]
    fn renders_selections() {
        let domain = Name::from_ascii("roster.").unwrap();
        let records = ServiceRecords {
            index: 7,
            endpoints: vec![
                ep("a", "10.0.0.1", true, &["V2"]),
                ep("b", "db.example.com", true, &[]),
                ep("c", "::1", false, &["old"]),
                ep("d", "not an address", true, &[]),
                ep("e.x", "10.0.0.2", true, &["v2"]),
            ],
        };
        let r = Rendered::new("web", &records, &domain);
        assert_eq!(r.index, 7);
        assert_eq!(r.healthy.members, [0, 1, 3, 4]);
        assert_eq!(r.healthy.txt, [0], "identical TXT records are sent once");
        assert_eq!(r.tags["v2"].members, [0, 4]);
        assert!(r.tags["old"].members.is_empty());
        assert!(matches!(r.eps[1].addr, Addr::Host(_)));
        assert!(matches!(r.eps[3].addr, Addr::Invalid));
        assert!(r.eps[3].srv.is_none());
        assert_eq!(
            r.eps[4].instance_name.as_ref().unwrap().to_string(),
            "e.x.web.instance.roster."
        );
        assert!(r.has_id_suffix("x"));
        assert!(!r.has_id_suffix("e.x"));
        let long = "x".repeat(70);
        assert!(instance_name(&long, "web", &domain).is_none());
    }

    #[test]
    fn long_metadata_is_split_into_strings() {
        let domain = Name::from_ascii("roster.").unwrap();
        let mut e = ep("a", "10.0.0.1", true, &[]);
        e.meta = BTreeMap::from([("k".into(), "v".repeat(300))]);
        let r = Rendered::new(
            "web",
            &ServiceRecords {
                index: 1,
                endpoints: vec![e],
            },
            &domain,
        );
        let Some(RData::TXT(txt)) = &r.eps[0].txt else {
            panic!("no TXT")
        };
        assert_eq!(txt.txt_data.len(), 2);
        assert_eq!(txt.txt_data[0].len(), 255);
        assert_eq!(txt.txt_data[1].len(), 302 - 255);
    }
}
