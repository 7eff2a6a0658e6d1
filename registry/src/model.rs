//! Validated domain types: what the catalog stores once a request passed validation.
//!
//! Validation lives here, next to the types, so the HTTP API, the CLI and (later)
//! the Consul layer all apply the same rules. Every error names the field it is
//! about, in the spelling of the request body.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use roster_api::{RegisterRequest, Weights};

use crate::checks::CheckSpec;

mod meta;
pub use meta::Meta;

/// Limits on what a client controls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most tags per instance.
    pub max_tags: usize,
    /// Most metadata entries per instance.
    pub max_meta: usize,
    /// Longest tag, metadata key or id, in bytes.
    pub max_label_len: usize,
    /// Longest metadata value, in bytes.
    pub max_meta_value_len: usize,
    /// Shortest and longest lease.
    pub ttl_range: (Duration, Duration),
    /// Shortest and longest `deregister_critical_after`.
    pub dereg_range: (Duration, Duration),
    /// Default `deregister_critical_after`.
    pub default_deregister_critical_after: Duration,
    /// Most health checks per instance.
    pub max_checks: usize,
    /// Shortest and longest check interval.
    pub check_interval_range: (Duration, Duration),
    /// Refuse HTTP checks with a method or header the prober will not send
    /// ([`crate::checks::check_http_method`], [`crate::checks::check_http_header`]).
    /// Off only to read back definitions stored by an older version; the
    /// prober refuses to send those anyway.
    pub http_check_rules: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_tags: 64,
            max_meta: 64,
            max_label_len: 128,
            max_meta_value_len: 512,
            ttl_range: (Duration::from_secs(1), Duration::from_secs(24 * 3600)),
            dereg_range: (Duration::from_secs(1), Duration::from_secs(7 * 24 * 3600)),
            default_deregister_critical_after: Duration::from_secs(60),
            max_checks: 16,
            check_interval_range: (Duration::from_millis(100), Duration::from_secs(24 * 3600)),
            http_check_rules: true,
        }
    }
}

/// Panic thresholds (Envoy's idea): when fewer than this share of a service's
/// instances are healthy, a healthy-only query returns every instance, each
/// with its health, and says so, so the caller can spread load over all of them
/// rather than crush the few survivors. 0 (the default) turns it off.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PanicPolicy {
    /// Threshold of services without their own.
    pub default: f64,
    /// Per-service thresholds.
    pub services: BTreeMap<String, f64>,
}

impl PanicPolicy {
    /// The threshold of `service`.
    pub(crate) fn threshold(&self, service: &str) -> f64 {
        self.services.get(service).copied().unwrap_or(self.default)
    }

    /// Whether `service` is in panic with `healthy` of `total` instances healthy.
    ///
    /// ```
    /// use roster_registry::model::PanicPolicy;
    /// let p = PanicPolicy { default: 0.5, ..Default::default() };
    /// assert!(p.in_panic("web", 1, 3));
    /// assert!(!p.in_panic("web", 2, 3));
    /// assert!(!p.in_panic("web", 0, 0), "an empty service is not in panic");
    /// ```
    pub fn in_panic(&self, service: &str, healthy: usize, total: usize) -> bool {
        let t = self.threshold(service);
        t > 0.0 && total > 0 && (healthy as f64) < t * total as f64
    }
}

/// A rejected input, naming the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {detail}")]
pub struct FieldError {
    /// The field, e.g. `port`, `tags[2]`, `meta.owner`.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

impl FieldError {
    /// A new error for `field`.
    pub(crate) fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            detail: detail.into(),
        }
    }
}

/// A service name: a DNS label (`[a-z0-9-]`, 1–63 characters, no leading or trailing
/// hyphen), stored in lowercase because lookups are case-insensitive.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName(Arc<str>);

impl ServiceName {
    /// Validates and lowercases `raw`.
    ///
    /// ```
    /// use roster_registry::model::ServiceName;
    /// assert_eq!(ServiceName::parse("Web-API").unwrap().as_str(), "web-api");
    /// assert!(ServiceName::parse("-web").is_err());
    /// assert!(ServiceName::parse("web_api").is_err());
    /// ```
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        let fail = |d: &str| Err(FieldError::new("service", format!("{d}: {raw:?}")));
        if raw.is_empty() || raw.len() > 63 {
            return fail("service names are 1 to 63 characters");
        }
        if !raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return fail("service names may hold only letters, digits and '-'");
        }
        if raw.starts_with('-') || raw.ends_with('-') {
            return fail("service names may not start or end with '-'");
        }
        // One allocation for a name already in lowercase (nearly every
        // name a read path carries).
        if raw.bytes().any(|b| b.is_ascii_uppercase()) {
            Ok(ServiceName(raw.to_ascii_lowercase().into()))
        } else {
            Ok(ServiceName(raw.into()))
        }
    }

    /// A name that was validated before (it comes from the catalog itself).
    pub(crate) fn trusted(name: Arc<str>) -> Self {
        ServiceName(name)
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string.
    pub(crate) fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An instance id: 1–128 characters of `[A-Za-z0-9._:-]`, not dots alone,
/// unique in the registry and case-sensitive. The rules are the client's
/// ([`roster_api::check_instance_id`]), so both agree. DNS carries
/// every such id: one that is not a valid run of labels gets a stable alias
/// there ([`dns_instance_label`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    /// Validates `raw`.
    ///
    /// ```
    /// use roster_registry::model::InstanceId;
    /// assert!(InstanceId::parse("Web-1:8080").is_ok());
    /// assert!(InstanceId::parse(".").is_err());
    /// assert!(InstanceId::parse("..").is_err());
    /// ```
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        roster_api::check_instance_id(raw).map_err(|detail| FieldError::new("id", detail))?;
        Ok(InstanceId(raw.into()))
    }

    /// An id that was validated before (it comes from the catalog itself).
    pub(crate) fn trusted(id: Arc<str>) -> Self {
        InstanceId(id)
    }

    /// The id.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// The shared string.
    pub(crate) fn as_arc(&self) -> &Arc<str> {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The name instance `id` has in DNS (`ID.SERVICE.instance.DOMAIN`, the
/// target of its SRV records). An id that is a run of valid labels (split on
/// dots, each 1–63 characters) is used as it is. Any other (a dotless run
/// longer than 63 characters, or an empty label as in `a..b`) would make no
/// valid name, and its SRV record would silently go missing; it gets a stable
/// one-label alias instead: its first 46 characters with dots made `-`, a
/// `-`, and 16 hex digits of a hash of the whole id (63 characters). The
/// alias only names the instance in DNS; the API keeps the id.
///
/// ```
/// use roster_registry::model::dns_instance_label;
/// assert_eq!(dns_instance_label("web-1.eu"), "web-1.eu");
/// let long = "x".repeat(100);
/// let alias = dns_instance_label(&long);
/// assert_eq!(alias.len(), 63);
/// assert!(alias.starts_with(&"x".repeat(46)));
/// ```
pub fn dns_instance_label(id: &str) -> std::borrow::Cow<'_, str> {
    if id.split('.').all(|l| !l.is_empty() && l.len() <= 63) {
        return id.into();
    }
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let prefix: String = id
        .chars()
        .take(46)
        .map(|c| if c == '.' { '-' } else { c })
        .collect();
    format!("{prefix}-{hash:016x}").into()
}

/// A validated registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceSpec {
    /// IP address (canonical form) or lowercase hostname.
    pub address: String,
    /// Port, 1–65535.
    pub port: u16,
    /// Tags, duplicates removed, order kept.
    pub tags: Vec<String>,
    /// Metadata.
    pub meta: Meta,
    /// Weights.
    pub weights: Weights,
    /// Lease length; `None` means the instance never expires.
    pub ttl: Option<Duration>,
    /// Time in critical before removal.
    pub deregister_critical_after: Duration,
    /// Health checks besides the lease. Shared, so that the health checker can
    /// tell cheaply whether an instance's checks changed.
    pub checks: Arc<[CheckSpec]>,
}

impl InstanceSpec {
    /// Validates a registration body. `peer` is the address the request came from,
    /// used when the body has no address.
    pub fn from_request(
        req: RegisterRequest,
        peer: Option<IpAddr>,
        limits: &Limits,
    ) -> Result<Self, FieldError> {
        let address = match req.address.as_deref().map(str::trim) {
            Some("") | None => match peer {
                Some(ip) => ip.to_string(),
                None => {
                    return Err(FieldError::new(
                        "address",
                        "address is required (the request's source address is unknown)",
                    ));
                }
            },
            Some(a) => validate_address(a)?,
        };
        if req.port == 0 {
            return Err(FieldError::new("port", "port must be between 1 and 65535"));
        }
        if req.tags.len() > limits.max_tags {
            return Err(FieldError::new(
                "tags",
                format!(
                    "at most {} tags are allowed, got {}",
                    limits.max_tags,
                    req.tags.len()
                ),
            ));
        }
        let mut tags: Vec<String> = Vec::with_capacity(req.tags.len());
        for (i, tag) in req.tags.into_iter().enumerate() {
            check_text(|| format!("tags[{i}]"), &tag, 1, limits.max_label_len)?;
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        if req.meta.len() > limits.max_meta {
            return Err(FieldError::new(
                "meta",
                format!(
                    "at most {} metadata entries are allowed, got {}",
                    limits.max_meta,
                    req.meta.len()
                ),
            ));
        }
        for (k, v) in &req.meta {
            let field = || format!("meta.{k}");
            check_text(field, k, 1, limits.max_label_len)?;
            if !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                return Err(FieldError::new(
                    field(),
                    "metadata keys may hold only letters, digits, '_', '-' and '.'",
                ));
            }
            check_text(field, v, 0, limits.max_meta_value_len)?;
        }
        if req.weights.passing == 0 || req.weights.passing > 65535 {
            return Err(FieldError::new(
                "weights.passing",
                "weights.passing must be between 1 and 65535",
            ));
        }
        if req.weights.warning > 65535 {
            return Err(FieldError::new(
                "weights.warning",
                "weights.warning must be between 0 and 65535",
            ));
        }
        if let Some(ttl) = req.ttl {
            check_range("ttl", ttl, limits.ttl_range)?;
        }
        let deregister_critical_after = req
            .deregister_critical_after
            .unwrap_or(limits.default_deregister_critical_after);
        check_range(
            "deregister_critical_after",
            deregister_critical_after,
            limits.dereg_range,
        )?;
        let checks = shared_checks(CheckSpec::parse_all(req.checks, limits)?);
        Ok(InstanceSpec {
            address,
            port: req.port,
            tags,
            meta: req.meta.into(),
            weights: req.weights,
            ttl: req.ttl,
            deregister_critical_after,
            checks,
        })
    }
}

/// `checks` as an instance holds them; all instances without checks share
/// one empty list instead of an allocation each.
pub(crate) fn shared_checks(checks: Vec<CheckSpec>) -> Arc<[CheckSpec]> {
    static NONE: std::sync::LazyLock<Arc<[CheckSpec]>> =
        std::sync::LazyLock::new(|| Arc::from(Vec::new()));
    if checks.is_empty() {
        NONE.clone()
    } else {
        checks.into()
    }
}

/// Validates a maintenance reason.
pub(crate) fn validate_reason(reason: Option<String>) -> Result<String, FieldError> {
    let reason = reason.unwrap_or_default();
    check_text(|| "reason", &reason, 0, 256)?;
    Ok(reason)
}

/// Checks that a duration lies in `lo..=hi`, naming the field when it does not.
pub(crate) fn check_range(
    field: &str,
    d: Duration,
    (lo, hi): (Duration, Duration),
) -> Result<(), FieldError> {
    use roster_api::duration::format;
    if d < lo || d > hi {
        return Err(FieldError::new(
            field,
            format!(
                "{field} must be between {} and {}, got {}",
                format(lo),
                format(hi),
                format(d)
            ),
        ));
    }
    Ok(())
}

/// `field` names the field only for an error: formatting names such as
/// `tags[3]` for every valid tag showed in a registration's profile.
fn check_text<F: Into<String>>(
    field: impl FnOnce() -> F,
    s: &str,
    min: usize,
    max: usize,
) -> Result<(), FieldError> {
    if s.len() < min || s.len() > max {
        return Err(FieldError::new(
            field(),
            format!("must be {min} to {max} bytes long, got {}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field(),
            "control characters are not allowed",
        ));
    }
    Ok(())
}

/// Accepts an IP address or an RFC 1123 hostname; returns its canonical form.
fn validate_address(raw: &str) -> Result<String, FieldError> {
    // std reads IPv4 only in its canonical dotted form (no leading zeros,
    // four parts), so such an address is kept as written; formatting it
    // again was 6 % of a batch registration's time. IPv6 has many spellings
    // of one address: it is written out canonically.
    match raw.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => return Ok(raw.to_owned()),
        Ok(ip) => return Ok(ip.to_string()),
        Err(_) => {}
    }
    let host = raw.strip_suffix('.').unwrap_or(raw);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(label_ok) {
        return Err(FieldError::new(
            "address",
            format!("address must be an IP address or a hostname: {raw:?}"),
        ));
    }
    // A dotted all-numeric name would look like a malformed IPv4 address.
    if host
        .split('.')
        .all(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(FieldError::new(
            "address",
            format!("not a valid IP address: {raw:?}"),
        ));
    }
    Ok(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RegisterRequest {
        RegisterRequest {
            address: Some("10.0.0.1".into()),
            port: 80,
            ..Default::default()
        }
    }

    fn field_of(r: RegisterRequest) -> String {
        InstanceSpec::from_request(r, None, &Limits::default())
            .unwrap_err()
            .field
    }

    #[test]
    fn addresses() {
        assert_eq!(validate_address("::1").unwrap(), "::1");
        assert_eq!(
            validate_address("Db-1.Example.com.").unwrap(),
            "db-1.example.com"
        );
        // IPv4 is kept as written (std reads only its canonical form);
        // IPv6 is written out canonically.
        assert_eq!(validate_address("10.0.0.7").unwrap(), "10.0.0.7");
        assert_eq!(validate_address("2001:DB8:0:0::1").unwrap(), "2001:db8::1");
        assert_eq!(
            validate_address("::FFFF:10.0.0.7").unwrap(),
            "::ffff:10.0.0.7"
        );
        for bad in [
            "010.0.0.7",
            "10.0.0.07",
            "10.0.7",
            "10.0.0.7.8",
            "10.0.0.256",
        ] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
        assert!(validate_address("10.0.0.256").is_err());
        assert!(validate_address("bad_host").is_err());
        assert!(validate_address("-a.com").is_err());
    }

    #[test]
    fn peer_address_fills_a_missing_one() {
        let r = RegisterRequest {
            address: None,
            ..req()
        };
        let spec = InstanceSpec::from_request(
            r.clone(),
            Some("192.0.2.9".parse().unwrap()),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(spec.address, "192.0.2.9");
        assert_eq!(field_of(r), "address");
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(field_of(RegisterRequest { port: 0, ..req() }), "port");
        assert_eq!(
            field_of(RegisterRequest {
                tags: vec!["ok".into(), String::new()],
                ..req()
            }),
            "tags[1]"
        );
        assert_eq!(
            field_of(RegisterRequest {
                tags: vec!["t".into(); 65],
                ..req()
            }),
            "tags"
        );
        let meta = [("bad key".to_string(), "v".to_string())].into();
        assert_eq!(field_of(RegisterRequest { meta, ..req() }), "meta.bad key");
        let meta = (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(field_of(RegisterRequest { meta, ..req() }), "meta");
        assert_eq!(
            field_of(RegisterRequest {
                ttl: Some(Duration::from_millis(10)),
                ..req()
            }),
            "ttl"
        );
        assert_eq!(
            field_of(RegisterRequest {
                deregister_critical_after: Some(Duration::from_secs(30 * 86400)),
                ..req()
            }),
            "deregister_critical_after"
        );
        assert_eq!(
            field_of(RegisterRequest {
                weights: Weights {
                    passing: 0,
                    warning: 1
                },
                ..req()
            }),
            "weights.passing"
        );
    }

    #[test]
    fn duplicate_tags_are_dropped_in_order() {
        let r = RegisterRequest {
            tags: vec!["b".into(), "a".into(), "b".into()],
            ..req()
        };
        let spec = InstanceSpec::from_request(r, None, &Limits::default()).unwrap();
        assert_eq!(spec.tags, ["b", "a"]);
        assert_eq!(spec.deregister_critical_after, Duration::from_secs(60));
    }
}
