//! Parsing query names into the shapes the handler answers.

use hickory_proto::rr::{LowerName, Name};

/// What a query name designates. Borrowed labels are lowercase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Shape<'a> {
    /// Not inside the domain: REFUSED.
    Outside,
    /// The domain itself.
    Apex,
    /// A name that exists but holds no records (`service.D`, `instance.D`,
    /// `_X.service.D`).
    Empty,
    /// `ns.D`, the target of the apex NS record: A/AAAA of the server.
    Nameserver,
    /// `SERVICE.instance.D`: exists when the service does.
    ServiceParent {
        /// Service name.
        service: &'a str,
    },
    /// `SERVICE.service.D` or `TAG.SERVICE.service.D`.
    Service {
        /// Service name.
        service: &'a str,
        /// Tag filter.
        tag: Option<&'a str>,
    },
    /// `_SERVICE._tcp.service.D` or `_SERVICE._TAG.service.D`.
    Srv {
        /// Service name.
        service: &'a str,
        /// Tag filter (`None` for `_tcp`).
        tag: Option<&'a str>,
    },
    /// `ID.SERVICE.instance.D`; the id may span several labels.
    Instance {
        /// Service name.
        service: &'a str,
        /// Id labels, left to right.
        id: Vec<&'a str>,
    },
    /// Inside the domain, but no name of ours: NXDOMAIN.
    Unknown,
}

/// Parses `qname` (lowercase) relative to `domain` (lowercase, fully
/// qualified), with the datacenter label of the name when it has one
/// (`web.service.dc2.DOMAIN`, `_web._tcp.service.dc2.DOMAIN`,
/// `ID.web.instance.dc2.DOMAIN`: the label right after the kind).
pub(crate) fn parse<'a>(qname: &'a LowerName, domain: &LowerName) -> (Shape<'a>, Option<&'a str>) {
    if !domain.zone_of(qname) {
        return (Shape::Outside, None);
    }
    let relative = usize::from(qname.num_labels() - domain.num_labels());
    if relative == 0 {
        return (Shape::Apex, None);
    }
    let mut labels = Vec::with_capacity(relative);
    for label in qname.iter().take(relative) {
        match std::str::from_utf8(label) {
            Ok(label) => labels.push(label),
            Err(_) => return (Shape::Unknown, None),
        }
    }
    let (kind, rest) = labels.split_last().expect("relative > 0");
    if !matches!(*kind, "service" | "instance" | "ns")
        && matches!(rest.last(), Some(&("service" | "instance")))
    {
        return (shape(rest), Some(kind));
    }
    (shape(&labels), None)
}

/// The shape of the labels below the domain (and datacenter), left to right.
fn shape<'a>(labels: &[&'a str]) -> Shape<'a> {
    let (kind, rest) = labels.split_last().expect("at least one label");
    match (*kind, rest) {
        ("service" | "instance", []) => Shape::Empty,
        ("ns", []) => Shape::Nameserver,
        ("service", [service]) if service.starts_with('_') => Shape::Empty,
        ("service", [service]) => Shape::Service { service, tag: None },
        ("service", [a, b]) => match (a.strip_prefix('_'), b.strip_prefix('_')) {
            (Some(service), Some("tcp")) => Shape::Srv { service, tag: None },
            (Some(service), Some(tag)) => Shape::Srv {
                service,
                tag: Some(tag),
            },
            (None, None) => Shape::Service {
                service: b,
                tag: Some(a),
            },
            _ => Shape::Unknown,
        },
        ("instance", [service]) => Shape::ServiceParent { service },
        ("instance", [id @ .., service]) => Shape::Instance {
            service,
            id: id.to_vec(),
        },
        _ => Shape::Unknown,
    }
}

/// What is wrong with a configured domain.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    /// Not a DNS name (or a name under it would not be one: too long).
    #[error(transparent)]
    NotAName(#[from] hickory_proto::ProtoError),
    /// The root, or empty.
    #[error("the domain must have at least one label")]
    NoLabel,
}

/// Builds the fully qualified, lowercase domain name from the configuration.
pub(crate) fn domain_name(domain: &str) -> Result<Name, DomainError> {
    let trimmed = domain.trim();
    let mut name = Name::from_utf8(trimmed)?;
    if name.is_root() || name.num_labels() == 0 {
        return Err(DomainError::NoLabel);
    }
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(q: &str) -> String {
        let domain = LowerName::from(domain_name("Roster").unwrap());
        let q = LowerName::from(Name::from_utf8(q).unwrap());
        match parse(&q, &domain) {
            (shape, None) => format!("{shape:?}"),
            (shape, Some(dc)) => format!("{shape:?} in {dc}"),
        }
    }

    #[test]
    fn datacenter_labels() {
        assert_eq!(
            shape("web.service.dc2.roster."),
            r#"Service { service: "web", tag: None } in dc2"#
        );
        assert_eq!(
            shape("_web._tcp.service.DC2.roster."),
            r#"Srv { service: "web", tag: None } in dc2"#
        );
        assert_eq!(
            shape("a.web.instance.dc2.roster."),
            r#"Instance { service: "web", id: ["a"] } in dc2"#
        );
        assert_eq!(shape("service.dc2.roster."), "Empty in dc2");
        assert_eq!(shape("ns.dc2.roster."), "Unknown");
        assert_eq!(shape("web.dc2.roster."), "Unknown");
    }

    #[test]
    fn shapes() {
        assert_eq!(shape("roster."), "Apex");
        assert_eq!(shape("example.com."), "Outside");
        assert_eq!(shape("roster.example."), "Outside");
        assert_eq!(shape("service.roster."), "Empty");
        assert_eq!(shape("NS.roster."), "Nameserver");
        assert_eq!(shape("_web.service.roster."), "Empty");
        assert_eq!(
            shape("Web.Service.Roster."),
            r#"Service { service: "web", tag: None }"#
        );
        assert_eq!(
            shape("v2.web.service.roster."),
            r#"Service { service: "web", tag: Some("v2") }"#
        );
        assert_eq!(
            shape("_web._TCP.service.roster."),
            r#"Srv { service: "web", tag: None }"#
        );
        assert_eq!(
            shape("_web._v2.service.roster."),
            r#"Srv { service: "web", tag: Some("v2") }"#
        );
        assert_eq!(shape("_web.v2.service.roster."), "Unknown");
        assert_eq!(shape("a.b.c.service.roster."), "Unknown");
        assert_eq!(
            shape("web.instance.roster."),
            r#"ServiceParent { service: "web" }"#
        );
        assert_eq!(
            shape("a.b.web.instance.roster."),
            r#"Instance { service: "web", id: ["a", "b"] }"#
        );
        assert_eq!(shape("x.roster."), "Unknown");
    }

    #[test]
    fn domain_must_be_a_name() {
        assert_eq!(domain_name("roster.").unwrap().to_string(), "roster.");
        assert_eq!(
            domain_name("Dc1.Roster").unwrap().to_string(),
            "dc1.roster."
        );
        assert!(domain_name(".").is_err());
        assert!(domain_name("").is_err());
    }
}
