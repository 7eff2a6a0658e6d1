//! Reading Consul request bodies the way Consul does: keys in any case, with or
//! without underscores (`DeregisterCriticalServiceAfter`,
//! `deregister_critical_service_after`), durations as `"10s"` or integer
//! nanoseconds. Keys inside user maps (`Meta`, `Header`) are left alone.

use std::collections::BTreeMap;
use std::time::Duration;

use roster_api::{CheckDefinition, Health, RegisterRequest, Weights};
use serde_json::{Map, Value};

/// Keys whose values are user data: their own keys are not normalized.
const USER_MAPS: [&str; 4] = ["meta", "header", "nodemeta", "taggedaddresses"];

/// Lower-cases keys and drops underscores and dashes, recursively.
pub fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = canonical(&k);
                    let v = if USER_MAPS.contains(&key.as_str()) {
                        v
                    } else {
                        normalize(v)
                    };
                    (key, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

fn canonical(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A field path and what is wrong with it.
pub type DecodeError = String;

fn string(map: &Map<String, Value>, key: &str) -> Result<Option<String>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!("{key}: expected a string, got {other}")),
    }
}

fn number(map: &Map<String, Value>, key: &str) -> Result<Option<u64>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| format!("{key}: expected a non-negative integer, got {v}")),
    }
}

fn boolean(map: &Map<String, Value>, key: &str) -> Result<bool, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("{key}: expected true or false, got {other}")),
    }
}

/// A Consul duration: `"10s"`, `"1m30s"`, `"250ms"`, or integer nanoseconds.
/// Empty strings and zero mean "not set".
pub fn duration(map: &Map<String, Value>, key: &str) -> Result<Option<Duration>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => roster_api::duration::parse(s)
            .map(|d| (!d.is_zero()).then_some(d))
            .map_err(|e| format!("{key}: {e}")),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0) => Ok(None),
            Some(ns) => Ok(Some(Duration::from_nanos(ns))),
            None => Err(format!("{key}: invalid duration {n}")),
        },
        Some(other) => Err(format!("{key}: invalid duration {other}")),
    }
}

fn string_map(
    map: &Map<String, Value>,
    key: &str,
) -> Result<BTreeMap<String, String>, DecodeError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                other => Err(format!("{key}.{k}: expected a string, got {other}")),
            })
            .collect(),
        Some(other) => Err(format!("{key}: expected an object, got {other}")),
    }
}

/// The body of `PUT /v1/agent/service/register`, as a native registration.
#[derive(Debug)]
pub struct ConsulRegistration {
    /// Service name.
    pub name: String,
    /// Instance id (defaults to the name, as in Consul).
    pub id: String,
    /// The registration.
    pub request: RegisterRequest,
}

/// Decodes a registration body (already normalized).
pub fn registration(body: Value) -> Result<ConsulRegistration, DecodeError> {
    let Value::Object(map) = body else {
        return Err("the body must be a JSON object".into());
    };
    let name = string(&map, "name")?.ok_or("Name: missing service name")?;
    let id = string(&map, "id")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.clone());
    let tags = match map.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("Tags: expected strings, got {t}"))
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(format!("Tags: expected an array, got {other}")),
    };
    let port = number(&map, "port")?.unwrap_or(0);
    let port = u16::try_from(port).map_err(|_| format!("Port: {port} is out of range"))?;
    let weights = match map.get("weights") {
        Some(Value::Object(w)) => Weights {
            passing: number(w, "passing")?.unwrap_or(1).try_into().unwrap_or(0),
            warning: number(w, "warning")?
                .unwrap_or(1)
                .try_into()
                .unwrap_or(u32::MAX),
        },
        _ => Weights::default(),
    };
    let mut defs: Vec<Value> = Vec::new();
    match map.get("check") {
        None | Some(Value::Null) => {}
        Some(c @ Value::Object(_)) => defs.push(c.clone()),
        Some(other) => return Err(format!("Check: expected an object, got {other}")),
    }
    match map.get("checks") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => defs.extend(items.iter().cloned()),
        Some(other) => return Err(format!("Checks: expected an array, got {other}")),
    }
    let count = defs.len();
    let checks = defs
        .into_iter()
        .enumerate()
        .map(|(i, def)| {
            // Consul's default ids: `service:ID` for one check, numbered from 1
            // for several.
            let default_id = if count == 1 {
                format!("service:{id}")
            } else {
                format!("service:{id}:{}", i + 1)
            };
            check(def, default_id).map_err(|e| format!("Checks[{i}].{e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ConsulRegistration {
        name,
        id,
        request: RegisterRequest {
            // An empty address means "the agent's": the request's source, here.
            address: string(&map, "address")?.filter(|a| !a.is_empty()),
            port,
            tags,
            meta: string_map(&map, "meta")?,
            weights,
            ttl: None,
            deregister_critical_after: None,
            checks,
        },
    })
}

/// Decodes one check definition (normalized keys).
fn check(def: Value, default_id: String) -> Result<CheckDefinition, DecodeError> {
    let Value::Object(map) = def else {
        return Err("expected an object".into());
    };
    for unsupported in [
        "args",
        "scriptargs",
        "dockercontainerid",
        "aliasservice",
        "aliasnode",
        "h2ping",
        "udp",
        "osservice",
    ] {
        if map.get(unsupported).is_some_and(|v| !v.is_null()) {
            return Err(format!(
                "{unsupported}: this kind of check is not supported by roster (use HTTP, TCP, GRPC or TTL)"
            ));
        }
    }
    if boolean(&map, "grpcusetls")? {
        return Err("GRPCUseTLS: gRPC checks over TLS are not supported".into());
    }
    let headers = match map.get("header") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| {
                let values: Vec<&str> = match v {
                    Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
                    Value::String(s) => vec![s.as_str()],
                    _ => Vec::new(),
                };
                (k.clone(), values.join(", "))
            })
            .collect(),
        Some(other) => return Err(format!("Header: expected an object, got {other}")),
    };
    let status = match string(&map, "status")?.as_deref() {
        None | Some("") => None,
        Some("passing") => Some(Health::Passing),
        Some("warning") => Some(Health::Warning),
        Some("critical") => Some(Health::Critical),
        Some(other) => return Err(format!("Status: invalid status {other:?}")),
    };
    let threshold = |key: &str| -> Result<u32, DecodeError> {
        Ok(number(&map, key)?.unwrap_or(0).min(u64::from(u32::MAX)) as u32)
    };
    Ok(CheckDefinition {
        id: Some(
            string(&map, "checkid")?
                .or(string(&map, "id")?)
                .filter(|s| !s.is_empty())
                .unwrap_or(default_id),
        ),
        name: string(&map, "name")?.filter(|s| !s.is_empty()),
        notes: string(&map, "notes")?.filter(|s| !s.is_empty()),
        http: string(&map, "http")?.filter(|s| !s.is_empty()),
        method: string(&map, "method")?.filter(|s| !s.is_empty()),
        headers,
        tls_skip_verify: boolean(&map, "tlsskipverify")?,
        tcp: string(&map, "tcp")?.filter(|s| !s.is_empty()),
        grpc: string(&map, "grpc")?.filter(|s| !s.is_empty()),
        ttl: duration(&map, "ttl")?,
        interval: duration(&map, "interval")?,
        timeout: duration(&map, "timeout")?,
        success_before_passing: threshold("successbeforepassing")?,
        failures_before_warning: number(&map, "failuresbeforewarning")?
            .filter(|n| *n > 0)
            .map(|n| n.min(u64::from(u32::MAX)) as u32),
        failures_before_critical: threshold("failuresbeforecritical")?,
        initial_status: status,
        deregister_critical_after: duration(&map, "deregistercriticalserviceafter")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_in_any_case_and_durations_in_both_forms() {
        let body = normalize(json!({
            "name": "web", "ID": "web-1", "Tags": ["v2"], "port": 8080,
            "Meta": {"Owner_Team": "x"},
            "Check": {"TTL": "10s", "deregister_critical_service_after": 60_000_000_000u64}
        }));
        let reg = registration(body).unwrap();
        assert_eq!((reg.name.as_str(), reg.id.as_str()), ("web", "web-1"));
        assert_eq!(reg.request.meta["Owner_Team"], "x", "user keys are kept");
        let check = &reg.request.checks[0];
        assert_eq!(check.id.as_deref(), Some("service:web-1"));
        assert_eq!(check.ttl, Some(Duration::from_secs(10)));
        assert_eq!(
            check.deregister_critical_after,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn several_checks_are_numbered_and_headers_joined() {
        let body = normalize(json!({
            "Name": "api",
            "Checks": [
                {"HTTP": "http://a/h", "Interval": "5s", "Header": {"X-A": ["1", "2"]}},
                {"TCP": "a:1", "Interval": "5s", "CheckID": "tcp-a"}
            ]
        }));
        let reg = registration(body).unwrap();
        assert_eq!(reg.id, "api", "the id defaults to the name");
        let ids: Vec<_> = reg
            .request
            .checks
            .iter()
            .map(|c| c.id.clone().unwrap())
            .collect();
        assert_eq!(ids, ["service:api:1", "tcp-a"]);
        assert_eq!(reg.request.checks[0].headers["X-A"], "1, 2");
    }

    #[test]
    fn unsupported_and_malformed_checks_are_named() {
        let err = registration(normalize(
            json!({"Name": "x", "Check": {"Args": ["/bin/true"]}}),
        ))
        .unwrap_err();
        assert!(err.starts_with("Checks[0].args"), "{err}");
        let err =
            registration(normalize(json!({"Name": "x", "Check": {"TTL": "soon"}}))).unwrap_err();
        assert!(err.contains("ttl"), "{err}");
        let err = registration(normalize(json!({"ID": "x"}))).unwrap_err();
        assert!(err.contains("Name"), "{err}");
    }
}
