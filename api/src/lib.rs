//! Wire types of the roster HTTP API (`/v1`), alone in a small crate.
//!
//! The server, the client library and the tools all use these types, so they
//! cannot disagree about JSON; a program that only needs the types (another
//! client, a test, a code generator) depends on serde and nothing else. The
//! client library re-exports them as `roster_client::api`.
//!
//! Every request type ignores unknown fields and defaults missing optional
//! ones, so an older client keeps working against a newer server and vice
//! versa. What the registry keeps on disk and sends between cluster nodes is
//! pinned separately, by golden-file tests in the registry.
#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod batch;
pub use batch::{
    BatchMaintenance, BatchOp, BatchRegister, BatchRequest, BatchResponse, BatchResult,
    InstanceRef, ItemProblem, MAX_BATCH_OPS,
};

/// Health of a check or an instance, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Serving normally.
    Passing,
    /// Serving, but degraded.
    Warning,
    /// Not serving: excluded from default queries.
    Critical,
}

impl Health {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Passing => "passing",
            Health::Warning => "warning",
            Health::Critical => "critical",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Load-balancing weights of an instance, used by weighted balancers and DNS SRV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Weights {
    /// Weight while the instance is passing (1–65535, default 1).
    pub passing: u32,
    /// Weight while the instance is in warning (0–65535, default 1).
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// Body of `PUT /v1/services/{service}/instances/{id}`.
///
/// ```
/// let req: roster_api::RegisterRequest =
///     serde_json::from_str(r#"{"address":"10.0.0.7","port":8080,"ttl":"15s","future_field":1}"#).unwrap();
/// assert_eq!(req.port, 8080);
/// assert_eq!(req.ttl, Some(std::time::Duration::from_secs(15)));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// IP address or hostname. When missing, the registry uses the address the
    /// request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// TCP/UDP port, 1–65535.
    pub port: u16,
    /// Free-form tags (at most 64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// String metadata (at most 64 entries).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_keys::deserialize"
    )]
    pub meta: BTreeMap<String, String>,
    /// Balancing weights.
    #[serde(default)]
    pub weights: Weights,
    /// Lease length: the instance must heartbeat within this time (1s–24h).
    /// Without it the instance never expires and stays until deregistered.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// How long the instance may stay critical before the registry removes it
    /// (default 1m).
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub deregister_critical_after: Option<Duration>,
    /// Health checks the registry runs (`http`, `tcp`, `grpc`) or the instance
    /// updates itself (`ttl`); at most 16. The instance's health is the worst of
    /// them and of its lease.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckDefinition>,
}

/// One health check in a registration. Set exactly one of `http`, `tcp`, `grpc`
/// or `ttl`; the rest have defaults.
///
/// ```
/// let check: roster_api::CheckDefinition = serde_json::from_str(
///     r#"{"http":"http://10.0.0.7:8080/health","interval":"5s","failures_before_critical":3}"#,
/// ).unwrap();
/// assert_eq!(check.failures_before_critical, 3);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckDefinition {
    /// Id, unique within the instance (default: the kind, e.g. `http`, then
    /// `http-2` for a second one). `ttl` is taken by the instance's lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A name for humans.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free-form notes for humans (Consul's `Notes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// URL to request: 2xx is passing, 429 warning, anything else critical.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// HTTP method (default `GET`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Extra HTTP request headers.
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_keys::deserialize"
    )]
    pub headers: BTreeMap<String, String>,
    /// Accept any certificate from an `https` target.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
    /// `host:port` to connect to: passing when the connection opens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    /// `host:port` or `host:port/service` of a gRPC server implementing
    /// `grpc.health.v1.Health`: passing when it answers `SERVING` (plaintext HTTP/2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    /// A check the instance reports itself with
    /// `PUT …/checks/{check_id}/{pass|warn|fail}`; critical when no report came
    /// within this time.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    /// Time between runs of an active check (default 10s, at least 100ms).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Time a run may take before it counts as a failure (default 10s or the
    /// interval if shorter; at most 5m). A run longer than the interval delays
    /// the next one: a check never runs twice at once.
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Consecutive successes needed before the check turns passing (default 0:
    /// the first one).
    #[serde(skip_serializing_if = "is_zero")]
    pub success_before_passing: u32,
    /// Consecutive failures needed before it turns warning (default: the same as
    /// `failures_before_critical`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_before_warning: Option<u32>,
    /// Consecutive failures needed before it turns critical (default 0: the
    /// first one).
    #[serde(skip_serializing_if = "is_zero")]
    pub failures_before_critical: u32,
    /// Status before the first result (default critical, as in Consul).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_status: Option<Health>,
    /// Remove the instance once this check has been critical this long
    /// (default: never, whatever the check says).
    #[serde(with = "duration::option", skip_serializing_if = "Option::is_none")]
    pub deregister_critical_after: Option<Duration>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Optional body of `PUT /v1/services/{service}/instances/{id}/checks/{check_id}/{pass|warn|fail}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CheckUpdate {
    /// Output to show with the new status (at most 4 KiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

/// Body of `PUT /v1/services/{service}/instances/{id}/maintenance`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceRequest {
    /// `true` puts the instance in maintenance (reported critical), `false` ends it.
    pub enabled: bool,
    /// Why, shown to operators (at most 256 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Kind of a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// Reported by the instance: the lease renewed by heartbeats, or a check set
    /// with `pass`/`warn`/`fail`.
    Ttl,
    /// An HTTP request made by the registry.
    Http,
    /// A TCP connection opened by the registry.
    Tcp,
    /// A `grpc.health.v1.Health/Check` call made by the registry.
    Grpc,
}

impl CheckKind {
    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Ttl => "ttl",
            CheckKind::Http => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Grpc => "grpc",
        }
    }
}

/// State of one check of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// Check id, unique within the instance (the lease is `ttl`).
    pub id: String,
    /// What kind of check this is.
    pub kind: CheckKind,
    /// Its current result.
    pub status: Health,
    /// Last output, for humans (truncated).
    #[serde(default)]
    pub output: String,
    /// Name for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Notes for humans, from the definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// What an active check probes: its URL or `host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Time between runs of an active check.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub interval: Option<Duration>,
    /// Time a run may take.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Time within which a TTL check must be reported.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
}

/// Maintenance state of an instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Maintenance {
    /// The operator's reason.
    #[serde(default)]
    pub reason: String,
}

/// Longest instance id, in bytes.
pub const MAX_INSTANCE_ID_LEN: usize = 128;

/// Checks an instance id against the rules the registry applies, so a client
/// can refuse one before sending it: 1–128 characters of `A-Z a-z 0-9 . _ : -`,
/// and not made of dots alone (`.` and `..` are path segments a URL resolves
/// away, so no HTTP client could address such an instance). Case is kept.
/// The error says what is wrong.
///
/// ```
/// use roster_api::check_instance_id;
/// assert!(check_instance_id("web-1:8080").is_ok());
/// assert!(check_instance_id("Web.EU.1").is_ok());
/// assert!(check_instance_id("..").is_err());
/// assert!(check_instance_id("a/b").is_err());
/// ```
pub fn check_instance_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_INSTANCE_ID_LEN {
        return Err(format!(
            "instance ids are 1 to {MAX_INSTANCE_ID_LEN} characters: {id:?}"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(format!(
            "instance ids may hold only letters, digits, '.', '_', ':' and '-': {id:?}"
        ));
    }
    if id.bytes().all(|b| b == b'.') {
        return Err(format!(
            "an instance id may not be made of dots alone (URLs resolve \".\" and \"..\" away): {id:?}"
        ));
    }
    Ok(())
}

/// One registered instance as the registry reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Instance id, unique in the registry.
    pub id: String,
    /// Service name (lowercase DNS label).
    pub service: String,
    /// IP address or hostname.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Balancing weights.
    #[serde(default)]
    pub weights: Weights,
    /// Aggregate health: the worst of the checks, critical in maintenance.
    pub health: Health,
    /// The checks behind `health`.
    #[serde(default)]
    pub checks: Vec<Check>,
    /// Present while the instance is in maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
    /// Lease length, if the instance heartbeats.
    #[serde(
        default,
        with = "duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub ttl: Option<Duration>,
    /// Time in critical before the registry removes the instance.
    #[serde(with = "duration")]
    pub deregister_critical_after: Duration,
    /// Index at which the instance was first registered.
    pub create_index: u64,
    /// Index of the last change to this instance.
    pub modify_index: u64,
}

/// Response of `GET /v1/services/{service}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInstances {
    /// Service name.
    pub service: String,
    /// Index of the last change to this service (also in `X-Roster-Index`).
    pub index: u64,
    /// Matching instances, ordered by id.
    pub instances: Vec<Instance>,
    /// Set when the service is in panic mode: fewer than its panic threshold of
    /// instances are healthy, so `instances` holds all of them, critical ones
    /// included, and the caller chooses (also in `X-Roster-Panic: true`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub panic: bool,
    /// The datacenter that answered, when it is not the one asked: set on a
    /// failover answer (the local datacenter had no healthy instance) and on
    /// answers of another datacenter read with `?dc=` (also in
    /// `X-Roster-Datacenter`). Absent on local answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
}

/// One datacenter of `GET /v1/datacenters`: the local one first, then the
/// federated ones by round-trip time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Datacenter {
    /// Its name.
    pub name: String,
    /// True for the datacenter of the node that answered.
    #[serde(default)]
    pub local: bool,
    /// `up` (some server answers probes), `down` (none does) or `unknown`
    /// (not probed yet); always `up` for the local one.
    pub state: String,
    /// `closed` (calls go through) or `open` (calls fail at once until a
    /// probe succeeds); absent for the local one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
    /// Smoothed probe round-trip time in milliseconds of the best server;
    /// absent for the local one and before any probe answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// The configured servers and what the last probe of each said.
    #[serde(default)]
    pub servers: Vec<DatacenterServer>,
}

/// One configured server of a federated datacenter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatacenterServer {
    /// `host:port` as configured.
    pub address: String,
    /// Whether the last probe succeeded.
    pub healthy: bool,
    /// Smoothed probe round-trip time in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    /// Why the last probe failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Header naming the datacenter an answer came from, when it is not the local
/// one (a failover answer, or a read of another datacenter with `?dc=`).
pub const DATACENTER_HEADER: &str = "x-roster-datacenter";

/// One event of a watch stream (`GET /v1/watch`, `GET /v1/services/{service}/watch`):
/// the complete current set of a service's instances, whatever their health.
/// Apply it by replacing what you hold for `service`; an empty list means the
/// service has no instances.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEvent {
    /// Service name.
    pub service: String,
    /// Index of this state of the service.
    pub index: u64,
    /// Every instance, critical ones included, ordered by id.
    pub instances: Vec<Instance>,
}

/// One event of a catalog stream (`GET /v1/catalog/watch`), of either kind:
///
/// - `snapshot`: every matching service with all its instances (each in
///   `upsert`, `remove` empty); replace everything you hold with it. Sent
///   first, and again whenever the stream cannot continue with deltas (a
///   resume token too old, a reader that fell behind).
/// - `delta`: only what changed since the previous event: per changed
///   service, the instances added or changed (`upsert`, complete) and the ids
///   removed (`remove`); services that lost their last instance in `gone`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEvent {
    /// Global index of the catalog this event brings the reader to.
    pub index: u64,
    /// Changed (or, in a snapshot, every) matching services, by name.
    #[serde(default)]
    pub services: BTreeMap<String, ServiceChange>,
    /// Services that no longer have instances (deltas only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
}

/// Answer of the blocking form of the catalog watch (`GET /v1/catalog/changes`):
/// a snapshot, or every change since the client's index merged into one delta.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogChanges {
    /// Whether this is a snapshot (replace everything held) rather than a delta.
    pub snapshot: bool,
    /// The registry run the answer comes from (hex, as in `X-Roster-Epoch`):
    /// sent back as `epoch` with the index, so changes are asked for only
    /// from the run that counted them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub epoch: String,
    /// The changes, or the snapshot.
    #[serde(flatten)]
    pub event: CatalogEvent,
}

/// The change of one service in a [`CatalogEvent`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceChange {
    /// Index of the service's new state (its `modify_index`).
    pub index: u64,
    /// Instances added or changed, complete, ordered by id.
    #[serde(default)]
    pub upsert: Vec<Instance>,
    /// Ids of removed instances, ordered.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// One row of `GET /v1/services`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    /// Service name.
    pub name: String,
    /// Number of instances, whatever their health.
    pub instances: usize,
    /// Instances passing.
    pub passing: usize,
    /// Instances in warning.
    pub warning: usize,
    /// Instances critical (including maintenance).
    pub critical: usize,
    /// Union of the instances' tags, sorted.
    pub tags: Vec<String>,
    /// Index of the last change to this service.
    pub modify_index: u64,
}

/// Response of `GET /v1/services`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceList {
    /// Global catalog index (also in `X-Roster-Index`).
    pub index: u64,
    /// Services ordered by name.
    pub services: Vec<ServiceSummary>,
}

/// An RFC 9457 problem document, the body of every error response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `urn:roster:problem:invalid-field`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Short summary of the kind of problem.
    #[serde(default)]
    pub title: String,
    /// HTTP status code.
    #[serde(default)]
    pub status: u16,
    /// What went wrong this time.
    #[serde(default)]
    pub detail: String,
    /// The offending request field, when one is to blame (`port`, `tags[3]`, `meta.owner`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Each refused operation of a batch (`POST /v1/batch`); empty otherwise.
    /// Behind one pointer: a problem travels in the error of every `Result`
    /// of the client, which must stay small (`clippy::result_large_err`).
    #[serde(default, skip_serializing_if = "<[ItemProblem]>::is_empty")]
    pub errors: Box<Vec<ItemProblem>>,
}

/// Header carrying the catalog index on every API response.
pub const INDEX_HEADER: &str = "x-roster-index";

/// A string map whose JSON object must not name a key twice: serde keeps the
/// last value of a repeated key, which would let a body say two things at
/// once (structs already refuse a repeated field).
mod unique_keys {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::Deserializer;
    use serde::de::{MapAccess, Visitor};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<String, String>, D::Error> {
        struct Unique;
        impl<'de> Visitor<'de> for Unique {
            type Value = BTreeMap<String, String>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!("duplicate key `{k}`")));
                    }
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(Unique)
    }
}

/// Serde helpers for durations written as Go-style strings (`"15s"`, `"1m30s"`,
/// `"250ms"`). Plain numbers are read as whole seconds.
pub mod duration {
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    /// Formats a duration as compactly as possible: `1h30m`, `15s`, `250ms`.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(roster_api::duration::format(Duration::from_secs(90)), "1m30s");
    /// assert_eq!(roster_api::duration::format(Duration::from_millis(250)), "250ms");
    /// ```
    pub fn format(d: Duration) -> String {
        let mut out = String::new();
        let mut secs = d.as_secs();
        let millis = d.subsec_millis();
        if secs == 0 && millis == 0 {
            return "0s".to_owned();
        }
        // Written into one string (a `format!` per unit allocated each).
        use std::fmt::Write as _;
        for (unit, size) in [("h", 3600), ("m", 60)] {
            if secs >= size {
                let _ = write!(out, "{}{unit}", secs / size);
                secs %= size;
            }
        }
        if secs > 0 {
            let _ = write!(out, "{secs}s");
        }
        if millis > 0 {
            let _ = write!(out, "{millis}ms");
        }
        out
    }

    /// Parses `"15s"`, `"1m30s"`, `"1h 5m"`, `"250ms"`; a bare number means seconds.
    ///
    /// ```
    /// use std::time::Duration;
    /// use roster_api::duration::parse;
    /// assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
    /// assert_eq!(parse("20"), Ok(Duration::from_secs(20)));
    /// assert!(parse("soon").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Duration::from_secs(secs));
        }
        humantime::parse_duration(s).map_err(|e| {
            format!("invalid duration {s:?} ({e}); use forms like \"15s\", \"1m30s\", \"500ms\"")
        })
    }

    /// Reads a number of seconds or a duration's text straight from the
    /// input. (An untagged enum of the two buffered the value and built an
    /// error for the variant that did not match, a string's allocation on
    /// every registration with a `"60s"` TTL.)
    struct Visitor;

    impl de::Visitor<'_> for Visitor {
        type Value = Duration;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a duration such as \"15s\" or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }

        /// Formats whose integers are signed (TOML) come here.
        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::invalid_value(de::Unexpected::Signed(secs), &self))
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse(text).map_err(E::custom)
        }
    }

    /// Serializes a [`Duration`] as a string.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*d))
    }

    /// Deserializes a [`Duration`] from a string or a number of seconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(Visitor)
    }

    /// The same for `Option<Duration>`; `null` and a missing field are `None`.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserializer, Serializer, de};

        /// Serializes `Some(d)` as a string and `None` as null.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Deserializes an optional duration.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            d.deserialize_option(Optional)
        }

        /// `null` or what [`super::Visitor`] reads.
        struct Optional;

        impl<'de> de::Visitor<'de> for Optional {
            type Value = Option<Duration>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration such as \"15s\", a number of seconds, or null")
            }

            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }

            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(super::Visitor).map(Some)
            }
        }
    }
}

/// One member of a replicated registry, as operators see it
/// (`GET /v1/operator/raft`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMember {
    /// Node id.
    pub id: u64,
    /// Advertised address.
    pub addr: String,
    /// Votes (a learner does not).
    pub voter: bool,
    /// Is the leader.
    pub leader: bool,
    /// Last log index known to be on it (leader's view), if known.
    pub matched: Option<u64>,
    /// Whether the leader reaches it: a successful append within a few
    /// heartbeats. `None` when the answering node does not know (no leader,
    /// or the leader's view could not be fetched).
    #[serde(default)]
    pub reachable: Option<bool>,
    /// Milliseconds since the leader last had a successful append answered by
    /// it (0 for the leader itself); `None` when unknown or never.
    #[serde(default)]
    pub last_contact_ms: Option<u64>,
    /// Entries its log is behind the leader's; `None` when unknown.
    #[serde(default)]
    pub lag: Option<u64>,
}

/// A replicated registry as one node sees it (`GET /v1/operator/raft`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    /// This node.
    pub node: u64,
    /// Its state: Leader, Follower, Candidate, Learner.
    pub state: String,
    /// Current term.
    pub term: u64,
    /// Leader, if known.
    pub leader: Option<u64>,
    /// Last log index.
    pub last_log_index: Option<u64>,
    /// Last applied index.
    pub applied: Option<u64>,
    /// Members.
    pub members: Vec<RaftMember>,
    /// The node whose view the members' `reachable`, `last_contact_ms` and
    /// `lag` are (the leader: only it replicates to the others); `None` when
    /// no leader's view was available.
    #[serde(default)]
    pub replication_view: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_named_twice_in_meta_is_refused() {
        let err = serde_json::from_str::<RegisterRequest>(
            r#"{"port":80,"meta":{"owner":"a","owner":"b"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate key `owner`"), "{err}");
        let ok: RegisterRequest =
            serde_json::from_str(r#"{"port":80,"meta":{"owner":"a","team":"b"}}"#).unwrap();
        assert_eq!(ok.meta.len(), 2);
    }

    #[test]
    fn raft_status_of_an_older_node_still_reads() {
        // A node from before reachability answers without the new fields.
        let old = r#"{"node":1,"state":"Follower","term":3,"leader":2,"last_log_index":9,
            "applied":9,"members":[{"id":2,"addr":"a:8500","voter":true,"leader":true,"matched":9}]}"#;
        let s: RaftStatus = serde_json::from_str(old).unwrap();
        assert_eq!(s.replication_view, None);
        let m = &s.members[0];
        assert_eq!((m.reachable, m.last_contact_ms, m.lag), (None, None, None));
    }

    #[test]
    fn durations_round_trip() {
        for secs in [1u64, 15, 59, 60, 61, 90, 3600, 3661, 86_400] {
            let d = Duration::from_secs(secs);
            assert_eq!(duration::parse(&duration::format(d)), Ok(d), "{secs}s");
        }
        assert_eq!(duration::parse("1h 5m"), Ok(Duration::from_secs(3900)));
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn register_request_defaults_and_ignores_unknown_fields() {
        let req: RegisterRequest = serde_json::from_str(r#"{"port":80,"extra":{"x":1}}"#).unwrap();
        assert_eq!(req.port, 80);
        assert_eq!(req.weights, Weights::default());
        assert!(req.ttl.is_none() && req.tags.is_empty() && req.address.is_none());
        let req: RegisterRequest =
            serde_json::from_str(r#"{"port":80,"ttl":30,"weights":{"passing":5}}"#).unwrap();
        assert_eq!(req.ttl, Some(Duration::from_secs(30)));
        assert_eq!(
            req.weights,
            Weights {
                passing: 5,
                warning: 1
            }
        );
    }

    #[test]
    fn bad_duration_is_an_error() {
        let err =
            serde_json::from_str::<RegisterRequest>(r#"{"port":80,"ttl":"often"}"#).unwrap_err();
        assert!(err.to_string().contains("duration"), "{err}");
        for bad in ["-5", "1.5", "true", "[30]", r#"{"s":30}"#] {
            let body = format!(r#"{{"port":80,"ttl":{bad}}}"#);
            let err = serde_json::from_str::<RegisterRequest>(&body).unwrap_err();
            assert!(
                err.to_string()
                    .contains("a duration such as \"15s\" or a number of seconds"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn durations_read_from_text_numbers_and_null() {
        let ttl = |json: &str| {
            serde_json::from_str::<RegisterRequest>(&format!(r#"{{"port":80{json}}}"#))
                .unwrap()
                .ttl
        };
        assert_eq!(ttl(r#","ttl":"60s""#), Some(Duration::from_secs(60)));
        assert_eq!(ttl(r#","ttl":" 1m30s ""#), Some(Duration::from_secs(90)));
        assert_eq!(ttl(r#","ttl":"20""#), Some(Duration::from_secs(20)));
        assert_eq!(ttl(r#","ttl":20"#), Some(Duration::from_secs(20)));
        assert_eq!(ttl(r#","ttl":null"#), None);
        assert_eq!(ttl(""), None);
        // Formats with signed integers (TOML) reach the same durations.
        use serde::de::IntoDeserializer;
        let signed = |n: i64| {
            duration::deserialize(IntoDeserializer::<serde::de::value::Error>::into_deserializer(n))
        };
        assert_eq!(signed(30), Ok(Duration::from_secs(30)));
        assert!(signed(-1).is_err());
    }

    #[test]
    fn instance_ids_that_every_face_can_carry() {
        for ok in [
            "a",
            "web-1",
            "Web-1:8080",
            "a.b.c",
            "_nomad-task-x",
            "...a",
            &"x".repeat(128),
        ] {
            assert!(check_instance_id(ok).is_ok(), "{ok}");
        }
        for bad in [".", "..", "....", "", "a/b", "a b", "%2e", &"x".repeat(129)] {
            assert!(check_instance_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn health_orders_best_to_worst() {
        assert!(Health::Passing < Health::Warning && Health::Warning < Health::Critical);
        assert_eq!(
            serde_json::to_string(&Health::Warning).unwrap(),
            "\"warning\""
        );
    }
}
