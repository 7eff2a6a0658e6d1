//! Health check definitions: validation of what a registration asks for, and the
//! anti-flap counters that turn raw probe results into reported statuses.
//!
//! Both are pure. The scheduler that runs the probes lives in [`checker`],
//! the probes themselves in [`probe`].

pub mod checker;
pub mod probe;

pub use checker::Checker;
pub use probe::{NetProber, ProbePolicy};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use roster_api::{CheckDefinition, CheckKind, Health};

use crate::model::{FieldError, Limits, check_range};

/// Id of the check that stands for an instance's lease.
pub const LEASE_CHECK: &str = "ttl";

/// Longest output kept for a check, in bytes.
pub const MAX_OUTPUT: usize = 4096;

/// What a check probes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Reported by the instance within `ttl`.
    Ttl {
        /// Longest time between two reports.
        ttl: Duration,
    },
    /// An HTTP request.
    Http {
        /// `http://` or `https://` URL.
        url: String,
        /// Upper-case method.
        method: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
        /// Accept any server certificate.
        tls_skip_verify: bool,
    },
    /// A TCP connection to `host:port`.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// A `grpc.health.v1.Health/Check` call.
    Grpc {
        /// `host:port`.
        addr: String,
        /// Service name sent in the request (empty: the whole server).
        service: String,
    },
}

/// A validated check definition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CheckSpec {
    /// Id, unique within the instance.
    pub id: Arc<str>,
    /// Name for humans.
    pub name: Option<String>,
    /// Notes for humans.
    pub notes: Option<String>,
    /// What to probe.
    pub target: Target,
    /// Time between runs (unused for TTL checks).
    pub interval: Duration,
    /// Time a run may take.
    pub timeout: Duration,
    /// Consecutive successes before passing.
    pub success_before_passing: u32,
    /// Consecutive failures before warning.
    pub failures_before_warning: u32,
    /// Consecutive failures before critical.
    pub failures_before_critical: u32,
    /// Status until the first result.
    pub initial_status: Health,
    /// Remove the instance after this long in critical.
    pub deregister_critical_after: Option<Duration>,
}

impl CheckSpec {
    /// The kind of check.
    pub fn kind(&self) -> CheckKind {
        match self.target {
            Target::Ttl { .. } => CheckKind::Ttl,
            Target::Http { .. } => CheckKind::Http,
            Target::Tcp { .. } => CheckKind::Tcp,
            Target::Grpc { .. } => CheckKind::Grpc,
        }
    }

    /// Whether the registry runs this check itself.
    pub fn is_active(&self) -> bool {
        !matches!(self.target, Target::Ttl { .. })
    }

    /// The URL or address probed, for display.
    pub fn target_text(&self) -> Option<String> {
        match &self.target {
            Target::Ttl { .. } => None,
            Target::Http { url, .. } => Some(url.clone()),
            Target::Tcp { addr } => Some(addr.clone()),
            Target::Grpc { addr, service } if service.is_empty() => Some(addr.clone()),
            Target::Grpc { addr, service } => Some(format!("{addr}/{service}")),
        }
    }

    /// Back to the wire form (what the store keeps).
    pub fn to_definition(&self) -> CheckDefinition {
        let mut def = CheckDefinition {
            id: Some(self.id.to_string()),
            name: self.name.clone(),
            notes: self.notes.clone(),
            success_before_passing: self.success_before_passing,
            failures_before_warning: Some(self.failures_before_warning),
            failures_before_critical: self.failures_before_critical,
            initial_status: Some(self.initial_status),
            deregister_critical_after: self.deregister_critical_after,
            ..CheckDefinition::default()
        };
        match &self.target {
            Target::Ttl { ttl } => def.ttl = Some(*ttl),
            Target::Http {
                url,
                method,
                headers,
                tls_skip_verify,
            } => {
                def.http = Some(url.clone());
                def.method = Some(method.clone());
                def.headers = headers.iter().cloned().collect();
                def.tls_skip_verify = *tls_skip_verify;
            }
            Target::Tcp { addr } => def.tcp = Some(addr.clone()),
            Target::Grpc { .. } => def.grpc = self.target_text(),
        }
        if self.is_active() {
            def.interval = Some(self.interval);
            def.timeout = Some(self.timeout);
        }
        def
    }

    /// Validates the checks of a registration. Errors name the field as
    /// `checks[i].field`.
    pub fn parse_all(
        defs: Vec<CheckDefinition>,
        limits: &Limits,
    ) -> Result<Vec<CheckSpec>, FieldError> {
        if defs.len() > limits.max_checks {
            return Err(FieldError::new(
                "checks",
                format!(
                    "at most {} checks are allowed, got {}",
                    limits.max_checks,
                    defs.len()
                ),
            ));
        }
        let mut out: Vec<CheckSpec> = Vec::with_capacity(defs.len());
        for (i, def) in defs.into_iter().enumerate() {
            let at = |f: &str| format!("checks[{i}].{f}");
            let spec = CheckSpec::parse(def, limits, &out).map_err(|mut e| {
                e.field = at(&e.field);
                e.detail = format!("checks[{i}]: {}", e.detail);
                e
            })?;
            out.push(spec);
        }
        Ok(out)
    }

    /// Validates one definition; `earlier` are the checks before it (ids must
    /// differ). Field names in errors are relative to the check.
    fn parse(
        def: CheckDefinition,
        limits: &Limits,
        earlier: &[CheckSpec],
    ) -> Result<CheckSpec, FieldError> {
        let targets = [
            def.http.is_some(),
            def.tcp.is_some(),
            def.grpc.is_some(),
            def.ttl.is_some(),
        ];
        let target = match targets.iter().filter(|t| **t).count() {
            0 => {
                return Err(FieldError::new(
                    "http",
                    "a check needs one of http, tcp, grpc or ttl",
                ));
            }
            1 => {
                if let Some(url) = def.http {
                    let method = def.method.unwrap_or_else(|| "GET".into());
                    parse_http(url, method, def.headers, def.tls_skip_verify, limits)?
                } else if let Some(addr) = def.tcp {
                    Target::Tcp {
                        addr: parse_host_port("tcp", &addr)?,
                    }
                } else if let Some(raw) = def.grpc {
                    let (addr, service) = raw.split_once('/').unwrap_or((&raw, ""));
                    if service.len() > 256 || service.chars().any(|c| c.is_control() || c == '/') {
                        return Err(FieldError::new("grpc", "invalid gRPC service name"));
                    }
                    Target::Grpc {
                        addr: parse_host_port("grpc", addr)?,
                        service: service.to_owned(),
                    }
                } else {
                    let ttl = def.ttl.expect("one target is set");
                    check_range("ttl", ttl, limits.ttl_range)?;
                    Target::Ttl { ttl }
                }
            }
            _ => {
                return Err(FieldError::new(
                    "http",
                    "set only one of http, tcp, grpc and ttl in a check",
                ));
            }
        };
        let kind_name = match target {
            Target::Ttl { .. } => "ttl-check",
            Target::Http { .. } => "http",
            Target::Tcp { .. } => "tcp",
            Target::Grpc { .. } => "grpc",
        };
        let id: Arc<str> = match def.id {
            Some(id) => {
                validate_check_id(&id)?;
                id.into()
            }
            None => {
                let taken = |c: &str| earlier.iter().any(|e| &*e.id == c);
                let mut id = kind_name.to_owned();
                let mut n = 2;
                while taken(&id) {
                    id = format!("{kind_name}-{n}");
                    n += 1;
                }
                id.into()
            }
        };
        if &*id == LEASE_CHECK {
            return Err(FieldError::new(
                "id",
                "check id \"ttl\" is reserved for the instance's lease",
            ));
        }
        if earlier.iter().any(|e| e.id == id) {
            return Err(FieldError::new("id", format!("duplicate check id {id:?}")));
        }
        if let Some(name) = &def.name
            && (name.len() > 256 || name.chars().any(char::is_control))
        {
            return Err(FieldError::new(
                "name",
                "names are at most 256 bytes, no control characters",
            ));
        }
        if def.notes.as_ref().is_some_and(|n| n.len() > 1024) {
            return Err(FieldError::new("notes", "notes are at most 1024 bytes"));
        }
        let interval = def.interval.unwrap_or(Duration::from_secs(10));
        check_range("interval", interval, limits.check_interval_range)?;
        let timeout = def
            .timeout
            .unwrap_or_else(|| Duration::from_secs(10).min(interval));
        // A timeout above the interval is allowed (Consul allows it): the run
        // delays the next one, since a check never runs twice at once.
        check_range(
            "timeout",
            timeout,
            (Duration::from_millis(10), Duration::from_secs(300)),
        )?;
        if let Some(d) = def.deregister_critical_after {
            check_range("deregister_critical_after", d, limits.dereg_range)?;
        }
        for (field, n) in [
            ("success_before_passing", def.success_before_passing),
            ("failures_before_critical", def.failures_before_critical),
            (
                "failures_before_warning",
                def.failures_before_warning.unwrap_or(0),
            ),
        ] {
            if n > 100 {
                return Err(FieldError::new(field, format!("{field} is at most 100")));
            }
        }
        Ok(CheckSpec {
            id,
            name: def.name,
            notes: def.notes,
            target,
            interval,
            timeout,
            success_before_passing: def.success_before_passing,
            failures_before_warning: def
                .failures_before_warning
                .unwrap_or(def.failures_before_critical),
            failures_before_critical: def.failures_before_critical,
            initial_status: def.initial_status.unwrap_or(Health::Critical),
            deregister_critical_after: def.deregister_critical_after,
        })
    }
}

/// Check ids: 1–128 characters, printable, no `/` (they appear in URL paths).
pub fn validate_check_id(id: &str) -> Result<(), FieldError> {
    if id.is_empty() || id.len() > 128 || id.chars().any(|c| c.is_control() || c == '/') {
        return Err(FieldError::new(
            "id",
            format!("check ids are 1 to 128 characters without '/': {id:?}"),
        ));
    }
    Ok(())
}

/// Methods an HTTP check may use: the ones that ask about a resource; no
/// DELETE, PATCH, CONNECT or TRACE sent by the registry on a writer's behalf.
pub const HTTP_CHECK_METHODS: [&str; 5] = ["GET", "HEAD", "POST", "PUT", "OPTIONS"];

/// Headers an HTTP check may not set: `Host` (the URL decides it), the
/// hop-by-hop and framing headers (the prober owns the connection and sends no
/// body), and the headers cloud metadata services require, which no health
/// endpoint needs.
pub const HTTP_CHECK_FORBIDDEN_HEADERS: [&str; 17] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "metadata-flavor",
    "metadata",
    "x-google-metadata-request",
    "x-aws-ec2-metadata-token",
    "x-aws-ec2-metadata-token-ttl-seconds",
];

/// What an HTTP check may not do on a writer's behalf.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForbiddenInCheck {
    /// A method outside [`HTTP_CHECK_METHODS`].
    #[error(
        "method {0:?} is not allowed in a check; use one of {methods}",
        methods = HTTP_CHECK_METHODS.join(", ")
    )]
    Method(String),
    /// A header of [`HTTP_CHECK_FORBIDDEN_HEADERS`].
    #[error("header {0:?} may not be set by a check")]
    Header(String),
}

/// Whether an HTTP check may use `method` (upper-case).
pub fn check_http_method(method: &str) -> Result<(), ForbiddenInCheck> {
    if HTTP_CHECK_METHODS.contains(&method) {
        Ok(())
    } else {
        Err(ForbiddenInCheck::Method(method.to_owned()))
    }
}

/// Whether an HTTP check may set header `name`.
pub fn check_http_header(name: &str) -> Result<(), ForbiddenInCheck> {
    if HTTP_CHECK_FORBIDDEN_HEADERS
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
    {
        Err(ForbiddenInCheck::Header(name.to_owned()))
    } else {
        Ok(())
    }
}

fn parse_http(
    url: String,
    method: String,
    headers: BTreeMap<String, String>,
    tls_skip_verify: bool,
    limits: &Limits,
) -> Result<Target, FieldError> {
    use axum::http::{HeaderName, HeaderValue, Method, Uri};
    let uri: Uri = url
        .parse()
        .map_err(|e| FieldError::new("http", format!("invalid URL {url:?}: {e}")))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(FieldError::new(
            "http",
            format!("the URL must be absolute, http:// or https://: {url:?}"),
        ));
    }
    if url.len() > 2048 {
        return Err(FieldError::new("http", "URLs are at most 2048 bytes"));
    }
    let method = method.to_ascii_uppercase();
    if Method::from_bytes(method.as_bytes()).is_err() || method.len() > 16 {
        return Err(FieldError::new(
            "method",
            format!("invalid HTTP method {method:?}"),
        ));
    }
    if limits.http_check_rules {
        check_http_method(&method).map_err(|e| FieldError::new("method", e.to_string()))?;
    }
    if headers.len() > 32 {
        return Err(FieldError::new("headers", "at most 32 headers are allowed"));
    }
    for (k, v) in &headers {
        if HeaderName::from_bytes(k.as_bytes()).is_err() || HeaderValue::from_str(v).is_err() {
            return Err(FieldError::new(
                format!("headers.{k}"),
                "invalid header name or value",
            ));
        }
        if limits.http_check_rules {
            check_http_header(k)
                .map_err(|e| FieldError::new(format!("headers.{k}"), e.to_string()))?;
        }
    }
    Ok(Target::Http {
        url,
        method,
        headers: headers.into_iter().collect(),
        tls_skip_verify,
    })
}

/// Accepts `host:port` and `[v6]:port` with a port 1–65535.
fn parse_host_port(field: &str, raw: &str) -> Result<String, FieldError> {
    let fail = || {
        FieldError::new(
            field,
            format!("expected host:port (IPv6 in brackets): {raw:?}"),
        )
    };
    let (host, port) = raw.rsplit_once(':').ok_or_else(fail)?;
    let port: u16 = port.parse().map_err(|_| fail())?;
    if port == 0 {
        return Err(fail());
    }
    let host_ok = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    };
    if !host_ok {
        return Err(fail());
    }
    Ok(raw.to_owned())
}

/// Current state of one check of an instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckState {
    /// Reported status.
    pub status: Health,
    /// Output of the result that set the status.
    pub output: String,
}

impl CheckState {
    /// The state of a check that has not run yet.
    pub fn initial(spec: &CheckSpec) -> Self {
        CheckState {
            status: spec.initial_status,
            output: String::new(),
        }
    }
}

/// Cuts `s` to at most [`MAX_OUTPUT`] bytes on a character boundary.
pub fn truncate_output(mut s: String) -> String {
    if s.len() > MAX_OUTPUT {
        let mut end = MAX_OUTPUT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Consecutive-result counters of one check (Consul's semantics): a success
/// (passing or warning result) is reported once `success_before_passing`
/// successes came in a row; a failure is reported as critical after
/// `failures_before_critical` failures in a row, and as warning after
/// `failures_before_warning`. Results below the thresholds are not reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flap {
    successes: u32,
    failures: u32,
}

impl Flap {
    /// Counts `result`; returns the status to report, if any.
    ///
    /// ```
    /// use roster_api::Health;
    /// use roster_registry::checks::Flap;
    /// let mut f = Flap::default();
    /// // failures_before_warning 1, failures_before_critical 3
    /// assert_eq!(f.observe(Health::Critical, 0, 1, 3), Some(Health::Warning));
    /// assert_eq!(f.observe(Health::Critical, 0, 1, 3), Some(Health::Warning));
    /// assert_eq!(f.observe(Health::Critical, 0, 1, 3), Some(Health::Critical));
    /// ```
    pub fn observe(
        &mut self,
        result: Health,
        success_before_passing: u32,
        failures_before_warning: u32,
        failures_before_critical: u32,
    ) -> Option<Health> {
        if result == Health::Critical {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.failures >= failures_before_critical {
                Some(Health::Critical)
            } else if self.failures >= failures_before_warning {
                Some(Health::Warning)
            } else {
                None
            }
        } else {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            (self.successes >= success_before_passing).then_some(result)
        }
    }

    /// Counts a result against a spec's thresholds.
    pub fn observe_spec(&mut self, result: Health, spec: &CheckSpec) -> Option<Health> {
        self.observe(
            result,
            spec.success_before_passing,
            spec.failures_before_warning,
            spec.failures_before_critical,
        )
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ttl { ttl } => write!(f, "ttl {}", roster_api::duration::format(*ttl)),
            Target::Http { method, url, .. } => write!(f, "{method} {url}"),
            Target::Tcp { addr } => write!(f, "tcp {addr}"),
            Target::Grpc { addr, service } => write!(f, "grpc {addr}/{service}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Vec<CheckSpec>, FieldError> {
        let defs: Vec<CheckDefinition> = serde_json::from_str(json).unwrap();
        CheckSpec::parse_all(defs, &Limits::default())
    }

    #[test]
    fn defaults_and_generated_ids() {
        let specs = parse(
            r#"[{"http":"http://10.0.0.1:80/health"},{"http":"https://a.example/h","interval":"2s"},
                {"tcp":"[::1]:5432"},{"grpc":"db:50051/db.Health"},{"ttl":"30s","id":"app"}]"#,
        )
        .unwrap();
        let ids: Vec<&str> = specs.iter().map(|s| &*s.id).collect();
        assert_eq!(ids, ["http", "http-2", "tcp", "grpc", "app"]);
        assert_eq!(specs[0].interval, Duration::from_secs(10));
        assert_eq!(
            specs[1].timeout,
            Duration::from_secs(2),
            "timeout <= interval"
        );
        assert_eq!(specs[0].initial_status, Health::Critical);
        assert_eq!(
            specs[3].target,
            Target::Grpc {
                addr: "db:50051".into(),
                service: "db.Health".into()
            }
        );
        for spec in &specs {
            let back = CheckSpec::parse_all(vec![spec.to_definition()], &Limits::default())
                .unwrap()
                .remove(0);
            assert_eq!(&back, spec, "definition round trip");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let field = |json: &str| parse(json).unwrap_err().field;
        assert_eq!(field(r#"[{}]"#), "checks[0].http");
        assert_eq!(
            field(r#"[{"tcp":"a:1"},{"tcp":"a:1","http":"http://a/"}]"#),
            "checks[1].http"
        );
        assert_eq!(field(r#"[{"http":"ftp://a/"}]"#), "checks[0].http");
        assert_eq!(field(r#"[{"tcp":"nohost"}]"#), "checks[0].tcp");
        assert_eq!(field(r#"[{"tcp":"a:0"}]"#), "checks[0].tcp");
        assert_eq!(
            field(r#"[{"grpc":"a:1","interval":"1ms"}]"#),
            "checks[0].interval"
        );
        assert_eq!(
            field(r#"[{"tcp":"a:1","interval":"1s","timeout":"10m"}]"#),
            "checks[0].timeout"
        );
        assert_eq!(field(r#"[{"ttl":"30s","id":"ttl"}]"#), "checks[0].id");
        assert_eq!(
            field(r#"[{"tcp":"a:1","id":"x"},{"tcp":"b:1","id":"x"}]"#),
            "checks[1].id"
        );
        assert_eq!(
            field(r#"[{"http":"http://a/","headers":{"bad header":"v"}}]"#),
            "checks[0].headers.bad header"
        );
        assert_eq!(
            field(r#"[{"tcp":"a:1","failures_before_critical":1000}]"#),
            "checks[0].failures_before_critical"
        );
        for method in ["DELETE", "patch", "TRACE", "CONNECT", "PROPFIND"] {
            assert_eq!(
                field(&format!(r#"[{{"http":"http://a/","method":"{method}"}}]"#)),
                "checks[0].method",
                "{method}"
            );
        }
        for header in ["Host", "connection", "Transfer-Encoding", "Metadata-Flavor"] {
            assert_eq!(
                field(&format!(
                    r#"[{{"http":"http://a/","headers":{{"{header}":"x"}}}}]"#
                )),
                format!("checks[0].headers.{header}")
            );
        }
        for method in ["get", "HEAD", "POST", "PUT", "OPTIONS"] {
            parse(&format!(r#"[{{"http":"http://a/","method":"{method}"}}]"#)).unwrap();
        }
        let many = format!("[{}]", vec![r#"{"tcp":"a:1"}"#; 17].join(","));
        assert_eq!(field(&many), "checks");
    }

    #[test]
    fn flap_follows_consul_semantics() {
        use Health::*;
        // success_before_passing 2, failures_before_critical 3 (warning defaults to 3)
        let mut f = Flap::default();
        let mut seen = Vec::new();
        for r in [
            Passing, Passing, Critical, Critical, Passing, Critical, Critical, Critical,
        ] {
            seen.push(f.observe(r, 2, 3, 3));
        }
        assert_eq!(
            seen,
            [
                None,
                Some(Passing),
                None,
                None,
                None,
                None,
                None,
                Some(Critical)
            ]
        );
        // A warning result counts as a success and is reported as warning.
        let mut f = Flap::default();
        assert_eq!(f.observe(Warning, 0, 0, 0), Some(Warning));
        // Defaults (all 0): every result is reported.
        assert_eq!(f.observe(Critical, 0, 0, 0), Some(Critical));
    }
}
