//! An instance's JSON written straight from the catalog's own form.
//!
//! The answer to a registration (and to a read of one instance, and to a
//! check's report) is the instance as JSON. Going through the wire type
//! ([`Instance::to_api`]) copies every string and builds a map and a
//! vector only to drop them again, and serde_json scans every key and value
//! byte by byte for characters to escape: an eighth of a registration's
//! instructions. [`Instance::write_json`] writes the same bytes from
//! borrowed fields, with the field names as literals, and leaves to
//! serde_json only the strings that need escaping. Tests compare its output
//! with serde's for instances of every shape.

use std::time::Duration;

use roster_api::{self as api, Health};

use super::Instance;
use crate::checks::LEASE_CHECK;

impl Instance {
    /// Appends this instance's JSON to `out`: the same bytes as
    /// `serde_json::to_vec(&self.to_api())`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let spec = &self.spec;
        out.extend_from_slice(b"{\"id\":");
        string(out, &self.id);
        out.extend_from_slice(b",\"service\":");
        string(out, &self.service);
        out.extend_from_slice(b",\"address\":");
        string(out, &spec.address);
        out.extend_from_slice(b",\"port\":");
        number(out, u64::from(spec.port));
        out.extend_from_slice(b",\"tags\":[");
        for (i, tag) in spec.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, tag);
        }
        out.extend_from_slice(b"],\"meta\":{");
        for (i, (key, value)) in spec.meta.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, key);
            out.push(b':');
            string(out, value);
        }
        out.extend_from_slice(b"},\"weights\":{\"passing\":");
        number(out, u64::from(spec.weights.passing));
        out.extend_from_slice(b",\"warning\":");
        number(out, u64::from(spec.weights.warning));
        out.extend_from_slice(b"},\"health\":");
        health(out, self.health());
        out.extend_from_slice(b",\"checks\":[");
        let lease = match (self.lease, spec.ttl) {
            (Some(status), Some(ttl)) => {
                lease_check(out, status, ttl);
                true
            }
            _ => false,
        };
        if !spec.checks.is_empty() {
            // Checks defined with the registration are rarer and richer:
            // serde writes them, from their wire form (which begins with
            // the lease when there is one, written above).
            for (i, check) in self
                .checks_api()
                .iter()
                .enumerate()
                .skip(usize::from(lease))
            {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, check).expect("a check serializes");
            }
        }
        out.push(b']');
        if let Some(reason) = &self.maintenance {
            out.extend_from_slice(b",\"maintenance\":{\"reason\":");
            string(out, reason);
            out.push(b'}');
        }
        if let Some(ttl) = spec.ttl {
            out.extend_from_slice(b",\"ttl\":");
            duration(out, ttl);
        }
        out.extend_from_slice(b",\"deregister_critical_after\":");
        duration(out, spec.deregister_critical_after);
        out.extend_from_slice(b",\"create_index\":");
        number(out, self.create_index);
        out.extend_from_slice(b",\"modify_index\":");
        number(out, self.modify_index);
        out.push(b'}');
    }
}

/// The lease as `checks_api` describes it, first among the checks.
fn lease_check(out: &mut Vec<u8>, status: Health, ttl: Duration) {
    out.extend_from_slice(b"{\"id\":");
    string(out, LEASE_CHECK);
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(api::CheckKind::Ttl.as_str().as_bytes());
    out.extend_from_slice(b"\",\"status\":");
    health(out, status);
    out.extend_from_slice(b",\"output\":");
    if status == Health::Critical {
        let text = format!(
            "TTL expired: no heartbeat within {}",
            api::duration::format(ttl)
        );
        string(out, &text);
    } else {
        string(out, "lease renewed");
    }
    out.extend_from_slice(b",\"name\":\"lease\",\"ttl\":");
    duration(out, ttl);
    out.push(b'}');
}

/// A JSON string: as it is when nothing in it needs escaping (most names,
/// addresses and tags), else as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("a string serializes");
    }
}

fn number(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

fn health(out: &mut Vec<u8>, health: Health) {
    out.push(b'"');
    out.extend_from_slice(health.as_str().as_bytes());
    out.push(b'"');
}

/// A duration as `roster_api::duration::format` writes it (`1h30m`,
/// `15s`, `250ms`, `0s`), without its formatter and string.
fn duration(out: &mut Vec<u8>, d: Duration) {
    let mut secs = d.as_secs();
    let millis = d.subsec_millis();
    out.push(b'"');
    if secs == 0 && millis == 0 {
        out.extend_from_slice(b"0s");
    }
    for (unit, size) in [(b'h', 3600), (b'm', 60)] {
        if secs >= size {
            number(out, secs / size);
            out.push(unit);
            secs %= size;
        }
    }
    if secs > 0 {
        number(out, secs);
        out.push(b's');
    }
    if millis > 0 {
        number(out, u64::from(millis));
        out.extend_from_slice(b"ms");
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::CheckState;
    use crate::model::{InstanceSpec, Limits};

    fn spec(json: serde_json::Value) -> InstanceSpec {
        let req = serde_json::from_value(json).unwrap();
        InstanceSpec::from_request(req, None, &Limits::default()).unwrap()
    }

    /// Instances of every shape the catalog holds, written both ways.
    #[test]
    fn an_instance_is_written_as_serde_writes_its_wire_form() {
        let specs = [
            spec(serde_json::json!({"address": "10.0.0.1", "port": 80})),
            spec(serde_json::json!({
                "address": "2001:db8::1", "port": 65535, "ttl": "90s",
                "tags": ["v1", "quo\"te", "back\\slash", "héllo ☃"],
                "meta": {"zone": "a", "k.e": "sp ace \"q\" ☃"},
                "weights": {"passing": 10, "warning": 0},
                "deregister_critical_after": "1h30m",
            })),
            spec(serde_json::json!({
                "address": "web-1.example", "port": 8080, "ttl": "45s",
                "checks": [
                    {"http": "http://10.0.0.1/health?x=y", "interval": "10s", "timeout": "1s",
                     "name": "http \"probe\"", "notes": "línea\t1"},
                    {"tcp": "10.0.0.1:80", "interval": "5s"},
                    {"id": "own", "ttl": "30s"},
                    {"grpc": "10.0.0.1:9000", "interval": "15s"},
                ],
            })),
            spec(serde_json::json!({
                "address": "10.0.0.2", "port": 1,
                "checks": [{"tcp": "10.0.0.2:1", "interval": "1m"}],
            })),
        ];
        let mut cases = 0;
        for mut spec in specs {
            // What validation refuses today, in case a later version allows it.
            spec.tags.push("new\nline\u{1}".into());
            spec.meta.insert("ctl\u{1f}".into(), "tab\there".into());
            for lease in [None, Some(Health::Passing), Some(Health::Critical)] {
                for maintenance in [None, Some(String::new()), Some("moving \"racks\"\n".into())] {
                    for output in ["", "HTTP 200 OK", "timed out \u{1} \"x\" ☃"] {
                        let checks = spec
                            .checks
                            .iter()
                            .enumerate()
                            .map(|(i, def)| {
                                let mut state = CheckState::initial(def);
                                state.output = output.to_owned();
                                if i % 2 == 1 {
                                    state.status = Health::Warning;
                                }
                                state
                            })
                            .collect();
                        let inst = Instance {
                            id: "i\"d-1".into(),
                            service: "web".into(),
                            spec: spec.clone(),
                            lease,
                            maintenance: maintenance.clone(),
                            checks,
                            create_index: 7,
                            modify_index: u64::MAX,
                        };
                        let mut out = Vec::new();
                        inst.write_json(&mut out);
                        let serde = serde_json::to_vec(&inst.to_api()).unwrap();
                        assert_eq!(
                            String::from_utf8(out).unwrap(),
                            String::from_utf8(serde).unwrap()
                        );
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 3 * 3 * 3);
    }

    #[test]
    fn numbers_are_written_as_serde_writes_them() {
        for n in [0, 1, 9, 10, 99, 100, 65_535, 1 << 32, u64::MAX] {
            let mut out = Vec::new();
            number(&mut out, n);
            assert_eq!(out, serde_json::to_vec(&n).unwrap(), "{n}");
        }
    }

    #[test]
    fn durations_are_written_as_the_api_formats_them() {
        for ms in [
            0, 1, 999, 1_000, 1_001, 59_000, 60_000, 90_250, 3_600_000, 3_661_001, 86_400_000,
        ] {
            let d = Duration::from_millis(ms);
            let mut out = Vec::new();
            duration(&mut out, d);
            let expected = serde_json::to_vec(&api::duration::format(d)).unwrap();
            assert_eq!(out, expected, "{ms} ms");
        }
        // Below a millisecond: what the API's format shows (nothing of it).
        let mut out = Vec::new();
        duration(&mut out, Duration::from_micros(1_500));
        assert_eq!(
            out,
            serde_json::to_vec(&api::duration::format(Duration::from_micros(1_500))).unwrap()
        );
    }

    #[test]
    fn strings_are_escaped_as_serde_escapes_them() {
        for s in [
            "",
            "plain",
            "quote\"d",
            "back\\slash",
            "new\nline",
            "tab\t",
            "\u{1}\u{1f}",
            "del\u{7f}",
            "héllo ☃ 😀",
            "</script>",
        ] {
            let mut out = Vec::new();
            string(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
        }
    }
}
