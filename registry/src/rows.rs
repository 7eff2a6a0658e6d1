//! The row types: what the registry writes to disk and sends to the other
//! nodes of its cluster, version [`FORMAT_VERSION`].
//!
//! These are the store's rows (`catalog.redb`), the instances of snapshot
//! files and Raft snapshots, and the registrations of Raft log entries. They
//! are plain structs owned by the registry, not the HTTP API's wire types:
//! a change to a client-facing type in `roster-api` must not change these
//! bytes, or a node would misread yesterday's data directory, or another
//! version's messages. Every conversion to and from the API and domain types
//! is spelled out field by field (a field added on the API side fails to
//! compile here until someone decides what the row does with it), and the
//! golden files in `registry/tests/golden/` pin the bytes (`golden.rs`).
//!
//! Changing a row on purpose: old rows must still load (new fields optional
//! with a default), or [`FORMAT_VERSION`] goes up with a way to read the old
//! version; then the golden files are blessed again.

use std::collections::BTreeMap;
use std::time::Duration;

use roster_api::{CheckDefinition, Health, RegisterRequest, Weights};
use serde::{Deserialize, Serialize};

use crate::catalog::{Instance, Snapshot};
use crate::checks::{CheckSpec, CheckState};
use crate::model::{FieldError, InstanceSpec, Limits};

pub(crate) mod binary;
pub use binary::{BINARY_ROW_VERSION, RowError, decode_row, encode_row, row_bytes};

/// Version of the row format of snapshot files (their `version`), and the
/// store format whose rows are all JSON.
pub const FORMAT_VERSION: u64 = 1;

/// The store's `meta.format` since rows may be binary ([`encode_row`]): a
/// store of this format holds binary rows, JSON rows (written by format 1),
/// or both. Format 1 stores are read as they are and become format 2 with
/// their next write; a roster that reads only format 1 refuses such a store
/// by its version instead of misreading a row.
pub const STORE_FORMAT: u64 = 2;

// The types below name the types they replaced in their decoding errors
// (`#[serde(expecting)]`), so what a restore's 400 says about a bad snapshot
// file reads as it did.

/// Health of a check, as a row holds it: `"passing"`, `"warning"`, `"critical"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(expecting = "enum Health", rename_all = "lowercase")]
pub enum HealthRow {
    /// Passing.
    Passing,
    /// Warning.
    Warning,
    /// Critical.
    Critical,
}

impl From<Health> for HealthRow {
    fn from(h: Health) -> Self {
        match h {
            Health::Passing => HealthRow::Passing,
            Health::Warning => HealthRow::Warning,
            Health::Critical => HealthRow::Critical,
        }
    }
}

impl From<HealthRow> for Health {
    fn from(h: HealthRow) -> Self {
        match h {
            HealthRow::Passing => Health::Passing,
            HealthRow::Warning => Health::Warning,
            HealthRow::Critical => Health::Critical,
        }
    }
}

/// Balancing weights of an instance; a missing field is 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(expecting = "struct Weights", default)]
pub struct WeightsRow {
    /// Weight while passing.
    pub passing: u32,
    /// Weight while in warning.
    pub warning: u32,
}

impl Default for WeightsRow {
    fn default() -> Self {
        WeightsRow {
            passing: 1,
            warning: 1,
        }
    }
}

impl From<Weights> for WeightsRow {
    fn from(w: Weights) -> Self {
        let Weights { passing, warning } = w;
        WeightsRow { passing, warning }
    }
}

impl From<WeightsRow> for Weights {
    fn from(w: WeightsRow) -> Self {
        let WeightsRow { passing, warning } = w;
        Weights { passing, warning }
    }
}

/// A check's definition as stored: complete when the registry wrote it (every
/// default filled in), so a later change of a default does not change a
/// stored check. Durations are text (`"5s"`, `"1m30s"`, `"250ms"`); a number
/// is read as seconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(expecting = "struct CheckDefinition", default)]
// The fields are those of the registration's check; see
// `roster_api::CheckDefinition` for what each means.
#[allow(missing_docs)]
pub struct CheckDefinitionRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "unique_keys"
    )]
    pub headers: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls_skip_verify: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc: Option<String>,
    #[serde(with = "duration_text", skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Duration>,
    #[serde(with = "duration_text", skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    #[serde(with = "duration_text", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "is_zero")]
    pub success_before_passing: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failures_before_warning: Option<u32>,
    #[serde(skip_serializing_if = "is_zero")]
    pub failures_before_critical: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initial_status: Option<HealthRow>,
    #[serde(with = "duration_text", skip_serializing_if = "Option::is_none")]
    pub deregister_critical_after: Option<Duration>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl From<CheckDefinition> for CheckDefinitionRow {
    fn from(d: CheckDefinition) -> Self {
        let CheckDefinition {
            id,
            name,
            notes,
            http,
            method,
            headers,
            tls_skip_verify,
            tcp,
            grpc,
            ttl,
            interval,
            timeout,
            success_before_passing,
            failures_before_warning,
            failures_before_critical,
            initial_status,
            deregister_critical_after,
        } = d;
        CheckDefinitionRow {
            id,
            name,
            notes,
            http,
            method,
            headers,
            tls_skip_verify,
            tcp,
            grpc,
            ttl,
            interval,
            timeout,
            success_before_passing,
            failures_before_warning,
            failures_before_critical,
            initial_status: initial_status.map(HealthRow::from),
            deregister_critical_after,
        }
    }
}

impl From<CheckDefinitionRow> for CheckDefinition {
    fn from(d: CheckDefinitionRow) -> Self {
        let CheckDefinitionRow {
            id,
            name,
            notes,
            http,
            method,
            headers,
            tls_skip_verify,
            tcp,
            grpc,
            ttl,
            interval,
            timeout,
            success_before_passing,
            failures_before_warning,
            failures_before_critical,
            initial_status,
            deregister_critical_after,
        } = d;
        CheckDefinition {
            id,
            name,
            notes,
            http,
            method,
            headers,
            tls_skip_verify,
            tcp,
            grpc,
            ttl,
            interval,
            timeout,
            success_before_passing,
            failures_before_warning,
            failures_before_critical,
            initial_status: initial_status.map(Health::from),
            deregister_critical_after,
        }
    }
}

/// One health check as stored: its definition and last reported result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(expecting = "struct StoredCheck")]
pub struct CheckRow {
    /// The definition, complete (every default filled in).
    pub definition: CheckDefinitionRow,
    /// Reported status.
    pub status: HealthRow,
    /// Output of that result.
    #[serde(default)]
    pub output: String,
}

/// One instance: a row of the store, an instance of a snapshot, the
/// registration of a replicated `register` (where only the registration's
/// fields count).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(expecting = "struct StoredInstance")]
pub struct InstanceRow {
    /// Service name.
    pub service: String,
    /// Instance id.
    pub id: String,
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Weights.
    #[serde(default)]
    pub weights: WeightsRow,
    /// Lease length in milliseconds.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// Time in critical before removal, in milliseconds.
    pub deregister_critical_after_ms: u64,
    /// Status of the lease check.
    #[serde(default)]
    pub lease: Option<HealthRow>,
    /// Maintenance reason.
    #[serde(default)]
    pub maintenance: Option<String>,
    /// Health checks besides the lease, with their last results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRow>,
    /// Index of the first registration.
    pub create_index: u64,
    /// Index of the last change.
    pub modify_index: u64,
}

impl InstanceRow {
    /// Every instance of a catalog snapshot as a row.
    pub fn all_of(snap: &Snapshot) -> Vec<InstanceRow> {
        snap.services
            .values()
            .flat_map(|s| s.instances.values())
            .map(|i| InstanceRow::from_instance(i))
            .collect()
    }

    /// The row of a catalog instance.
    pub fn from_instance(i: &Instance) -> Self {
        InstanceRow {
            service: i.service.to_string(),
            id: i.id.to_string(),
            address: i.spec.address.clone(),
            port: i.spec.port,
            tags: i.spec.tags.clone(),
            meta: i.spec.meta.to_map(),
            weights: i.spec.weights.into(),
            ttl_ms: i.spec.ttl.map(|d| d.as_millis() as u64),
            deregister_critical_after_ms: i.spec.deregister_critical_after.as_millis() as u64,
            lease: i.lease.map(HealthRow::from),
            maintenance: i.maintenance.clone(),
            checks: i
                .spec
                .checks
                .iter()
                .zip(&i.checks)
                .map(|(def, state)| CheckRow {
                    definition: def.to_definition().into(),
                    status: state.status.into(),
                    output: state.output.clone(),
                })
                .collect(),
            create_index: i.create_index,
            modify_index: i.modify_index,
        }
    }

    /// Back to a catalog instance; fails when a check definition is invalid.
    pub fn into_instance(self) -> Result<Instance, FieldError> {
        let ttl = self.ttl_ms.map(Duration::from_millis);
        // The definitions passed validation when they were registered; read them
        // back without the size limits, which may have changed since.
        let lenient = Limits {
            max_checks: usize::MAX,
            check_interval_range: (Duration::ZERO, Duration::MAX),
            ttl_range: (Duration::ZERO, Duration::MAX),
            http_check_rules: false,
            ..Limits::default()
        };
        let (defs, states): (Vec<CheckDefinition>, Vec<CheckState>) = self
            .checks
            .into_iter()
            .map(|c| {
                (
                    c.definition.into(),
                    CheckState {
                        status: c.status.into(),
                        output: c.output,
                    },
                )
            })
            .unzip();
        let checks = CheckSpec::parse_all(defs, &lenient)?;
        Ok(Instance {
            id: self.id.into(),
            service: self.service.into(),
            spec: InstanceSpec {
                address: self.address,
                port: self.port,
                tags: self.tags,
                meta: self.meta.into(),
                weights: self.weights.into(),
                ttl,
                deregister_critical_after: Duration::from_millis(self.deregister_critical_after_ms),
                checks: crate::model::shared_checks(checks),
            },
            lease: ttl.map(|_| self.lease.map_or(Health::Passing, Health::from)),
            maintenance: self.maintenance,
            checks: states,
            create_index: self.create_index,
            modify_index: self.modify_index,
        })
    }

    /// The registration this row holds, as a client would have sent it: a row
    /// that comes from outside (a snapshot file, a forwarded write) is
    /// validated with the API's own rules and limits.
    pub fn to_request(&self) -> RegisterRequest {
        RegisterRequest {
            address: Some(self.address.clone()),
            port: self.port,
            tags: self.tags.clone(),
            meta: self.meta.clone(),
            weights: self.weights.into(),
            ttl: self.ttl_ms.map(Duration::from_millis),
            deregister_critical_after: Some(Duration::from_millis(
                self.deregister_critical_after_ms,
            )),
            checks: self
                .checks
                .iter()
                .map(|c| c.definition.clone().into())
                .collect(),
        }
    }
}

/// A string map that refuses a key given twice (a snapshot file is written by
/// hand sometimes; the last of two values must not win silently).
fn unique_keys<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    use serde::de::{MapAccess, Visitor};
    struct Unique;
    impl<'de> Visitor<'de> for Unique {
        type Value = BTreeMap<String, String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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

/// Optional durations as text: written as compactly as possible (`1h30m`,
/// `15s`, `250ms`), read from such text or from a number of seconds; `null`
/// and a missing field are `None`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserializer, Serializer};

    fn format(d: Duration) -> String {
        let mut secs = d.as_secs();
        let millis = d.subsec_millis();
        if secs == 0 && millis == 0 {
            return "0s".to_owned();
        }
        let mut out = String::new();
        for (unit, size) in [("h", 3600), ("m", 60)] {
            if secs >= size {
                out.push_str(&format!("{}{unit}", secs / size));
                secs %= size;
            }
        }
        if secs > 0 {
            out.push_str(&format!("{secs}s"));
        }
        if millis > 0 {
            out.push_str(&format!("{millis}ms"));
        }
        out
    }

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format(*d)),
            None => s.serialize_none(),
        }
    }

    /// Read as the API reads its durations, so that a row and a request
    /// refuse the same text in the same words.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        roster_api::duration::option::deserialize(d)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// The row's durations are written exactly as the API writes its own,
        /// so the rows the API's types used to write read the same.
        #[test]
        fn durations_write_as_the_api_does() {
            for ms in [
                0, 1, 250, 1_000, 15_000, 90_000, 3_600_000, 5_400_250, 86_400_000,
            ] {
                let d = Duration::from_millis(ms);
                assert_eq!(format(d), roster_api::duration::format(d), "{ms} ms");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckState;

    #[test]
    fn instances_with_checks_survive_the_row_format() {
        let req: RegisterRequest = serde_json::from_str(
            r#"{"address":"10.0.0.1","port":80,"ttl":"15s","checks":[
                {"http":"https://10.0.0.1/h","interval":"5s","tls_skip_verify":true,
                 "headers":{"x-probe":"1"},"failures_before_critical":3},
                {"tcp":"10.0.0.1:80"},{"grpc":"10.0.0.1:9000/svc"},{"ttl":"30s","id":"app"}]}"#,
        )
        .unwrap();
        let spec = InstanceSpec::from_request(req, None, &Limits::default()).unwrap();
        let inst = Instance {
            id: "web-1".into(),
            service: "web".into(),
            checks: vec![
                CheckState {
                    status: Health::Warning,
                    output: "GET https://10.0.0.1/h: 429 Too Many Requests".into(),
                },
                CheckState::initial(&spec.checks[1]),
                CheckState::initial(&spec.checks[2]),
                CheckState {
                    status: Health::Passing,
                    output: "fine".into(),
                },
            ],
            spec,
            lease: Some(Health::Passing),
            maintenance: None,
            create_index: 3,
            modify_index: 7,
        };
        let row = serde_json::to_vec(&InstanceRow::from_instance(&inst)).unwrap();
        let back: InstanceRow = serde_json::from_slice(&row).unwrap();
        assert_eq!(back.into_instance().unwrap(), inst);
    }

    #[test]
    fn rows_without_checks_still_load() {
        let row = r#"{"service":"web","id":"a","address":"10.0.0.1","port":80,
            "deregister_critical_after_ms":60000,"create_index":2,"modify_index":2}"#;
        let stored: InstanceRow = serde_json::from_str(row).unwrap();
        let inst = stored.into_instance().unwrap();
        assert!(inst.spec.checks.is_empty() && inst.checks.is_empty());
        assert_eq!(inst.spec.weights, Weights::default());
    }

    /// A check definition goes to the row and back unchanged, every field set.
    #[test]
    fn check_definitions_convert_both_ways() {
        let def = CheckDefinition {
            id: Some("http".into()),
            name: Some("front page".into()),
            notes: Some("owned by web".into()),
            http: Some("https://10.0.0.1/h".into()),
            method: Some("HEAD".into()),
            headers: [("x-probe".to_owned(), "1".to_owned())].into(),
            tls_skip_verify: true,
            tcp: Some("10.0.0.1:80".into()),
            grpc: Some("10.0.0.1:9000/svc".into()),
            ttl: Some(Duration::from_secs(30)),
            interval: Some(Duration::from_millis(1_500)),
            timeout: Some(Duration::from_secs(2)),
            success_before_passing: 2,
            failures_before_warning: Some(1),
            failures_before_critical: 3,
            initial_status: Some(Health::Warning),
            deregister_critical_after: Some(Duration::from_secs(600)),
        };
        let row = CheckDefinitionRow::from(def.clone());
        assert_eq!(CheckDefinition::from(row.clone()), def);
        // And the row's JSON is the API's JSON for the same definition.
        assert_eq!(
            serde_json::to_value(&row).unwrap(),
            serde_json::to_value(&def).unwrap()
        );
    }

    /// Decoding errors of a row read as those of the types rows used to be
    /// made of: a restore's 400 says the same as before.
    #[test]
    fn decoding_errors_keep_their_wording() {
        let cases = [
            r#"{"interval":"soon"}"#,
            r#"{"interval":true}"#,
            r#"{"headers":{"a":"1","a":"2"}}"#,
            r#"{"headers":[1]}"#,
            r#"{"initial_status":"fine"}"#,
            r#"{"failures_before_critical":-1}"#,
            r#"[1]"#,
            "1",
        ];
        for json in cases {
            let row = serde_json::from_str::<CheckDefinitionRow>(json).unwrap_err();
            let api = serde_json::from_str::<CheckDefinition>(json).unwrap_err();
            assert_eq!(row.to_string(), api.to_string(), "{json}");
        }
        let row = serde_json::from_str::<WeightsRow>("1").unwrap_err();
        let api = serde_json::from_str::<Weights>("1").unwrap_err();
        assert_eq!(row.to_string(), api.to_string());
        let row = serde_json::from_str::<HealthRow>("1").unwrap_err();
        let api = serde_json::from_str::<Health>("1").unwrap_err();
        assert_eq!(row.to_string(), api.to_string());
        // The rows' own names, as the row types had them before.
        let err = serde_json::from_str::<InstanceRow>("1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid type: integer `1`, expected struct StoredInstance at line 1 column 1"
        );
        let err = serde_json::from_str::<CheckRow>("1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid type: integer `1`, expected struct StoredCheck at line 1 column 1"
        );
    }
}
