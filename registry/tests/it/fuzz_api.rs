//! Fuzzing the registration bodies through the real router: deeply nested,
//! huge, mistyped, non-UTF-8, random and mutated JSON sent to the native
//! `PUT /v1/services/web/instances/x` and to Consul's
//! `PUT /v1/agent/service/register`. Every answer is a 400 or a 413 (or a 2xx
//! for a body that happens to be valid), never a 5xx or a panic, and a refused
//! body leaves the catalog exactly as it was. Consul's `?filter=` expressions
//! get the same treatment: any string is a 200 or a plain-text 400.
//!
//! The proptest seed is fixed so CI sends the same bodies every time; set
//! `PROPTEST_RNG_SEED` to explore others.

use std::cell::Cell;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use roster_registry::catalog::CatalogLimits;
use roster_registry::config::Config as RosterConfig;
use roster_registry::http::{AppState, BODY_LIMIT, router};
use roster_registry::metrics::Metrics;
use roster_registry::registry::Registry;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tokio_util::sync::CancellationToken;

const NATIVE: &str = "/v1/services/web/instances/x";
const CONSUL: &str = "/v1/agent/service/register";

/// The router over a fresh in-memory catalog, and the catalog.
struct Api {
    runtime: Runtime,
    router: Router,
    registry: Arc<Registry>,
}

impl Api {
    fn new() -> Api {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = runtime.enter();
        let registry = Arc::new(Registry::new(
            CatalogLimits::default(),
            Arc::new(Metrics::new()),
        ));
        let state = AppState::builder(
            registry.clone(),
            &RosterConfig::default(),
            CancellationToken::new(),
        )
        .build();
        Api {
            router: router(state),
            registry,
            runtime,
        }
    }

    /// Sends `body` with PUT to `path`: the status and the response body.
    fn put(&self, path: &str, body: Vec<u8>) -> (StatusCode, String) {
        let request = Request::builder()
            .method(Method::PUT)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap();
        self.runtime.block_on(async {
            let response = tower::ServiceExt::oneshot(self.router.clone(), request)
                .await
                .unwrap();
            let status = response.status();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        })
    }

    /// Sends a GET to `uri`: the status, the content type and the body.
    fn get(&self, uri: &str) -> (StatusCode, String, String) {
        let request = Request::builder()
            .method(Method::GET)
            .uri(uri)
            .body(Body::empty())
            .unwrap();
        self.runtime.block_on(async {
            let response = tower::ServiceExt::oneshot(self.router.clone(), request)
                .await
                .unwrap();
            let status = response.status();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                content_type,
                String::from_utf8_lossy(&bytes).into_owned(),
            )
        })
    }

    /// Sends a body that must be refused: a 400 or 413, and no change.
    fn refused(&self, path: &str, body: Vec<u8>) -> Result<StatusCode, TestCaseError> {
        let before = self.registry.snapshot();
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let (status, text) = self.put(path, body);
        prop_assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::PAYLOAD_TOO_LARGE,
            "{path} {shown:?}: {status} {text}"
        );
        prop_assert_eq!(&*before, &*self.registry.snapshot(), "{} {:?}", path, shown);
        Ok(status)
    }

    /// Sends any body: a 2xx, 400 or 413 (or 409 when a valid body moves the
    /// id to another service), and no change unless a 2xx.
    fn any(&self, path: &str, body: Vec<u8>) -> Result<StatusCode, TestCaseError> {
        let before = self.registry.snapshot();
        let shown = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
        let (status, text) = self.put(path, body);
        if status.is_success() {
            return Ok(status);
        }
        prop_assert!(
            matches!(
                status,
                StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE | StatusCode::CONFLICT
            ),
            "{path} {shown:?}: {status} {text}"
        );
        prop_assert_eq!(&*before, &*self.registry.snapshot(), "{} {:?}", path, shown);
        Ok(status)
    }
}

fn runner(cases: u32) -> TestRunner {
    let mut config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        config.rng_seed = RngSeed::Fixed(0x5EED_A711);
    }
    TestRunner::new(config)
}

fn native_valid() -> Value {
    json!({"address": "10.0.0.1", "port": 8080, "tags": ["v1"], "meta": {"zone": "a"}})
}

fn consul_valid() -> Value {
    json!({"Name": "web", "ID": "x", "Address": "10.0.0.1", "Port": 8080, "Tags": ["v1"]})
}

fn nested(depth: usize, open: &str, close: &str, inner: &str) -> String {
    let mut out = String::with_capacity(depth * (open.len() + close.len()) + inner.len());
    for _ in 0..depth {
        out.push_str(open);
    }
    out.push_str(inner);
    for _ in 0..depth {
        out.push_str(close);
    }
    out
}

/// The names an endpoint gives the registration's fields.
struct Fields {
    address: &'static str,
    port: &'static str,
    tags: &'static str,
    meta: &'static str,
    checks: &'static str,
    weights: &'static str,
    /// A field holding a duration.
    ttl: &'static str,
}

const NATIVE_FIELDS: Fields = Fields {
    address: "address",
    port: "port",
    tags: "tags",
    meta: "meta",
    checks: "checks",
    weights: "weights",
    ttl: "ttl",
};

const CONSUL_FIELDS: Fields = Fields {
    address: "Address",
    port: "Port",
    tags: "Tags",
    meta: "Meta",
    checks: "Checks",
    weights: "Weights",
    ttl: "Check",
};

/// Hand-picked hostile bodies: `valid` with one field replaced.
fn hostile_bodies(valid: &Value, f: &Fields) -> Vec<Vec<u8>> {
    let with = |field: &str, value: &str| {
        let mut rest = valid.clone();
        rest.as_object_mut().unwrap().remove(field);
        let rest = rest.to_string();
        // Written by hand: the value need not be JSON, or may be too deep for serde_json.
        format!("{{\"{field}\":{value},{}", &rest[1..]).into_bytes()
    };
    let ttl = |value: &str| {
        if f.ttl == "Check" {
            with(f.ttl, &format!("{{\"TTL\": {value}}}"))
        } else {
            with(f.ttl, value)
        }
    };
    let deep_array = nested(10_000, "[", "]", "");
    let deep_object = nested(10_000, "{\"a\":", "}", "1");
    let deep_mixed = nested(5_000, "[{\"a\":", "}]", "null");
    let huge = "x".repeat(BODY_LIMIT - 1_000);
    let mut bodies = vec![
        deep_array.clone().into_bytes(),
        deep_object.clone().into_bytes(),
        deep_mixed.clone().into_bytes(),
        with(f.meta, &deep_object),
        with(f.tags, &deep_array),
        with(f.checks, &deep_mixed),
        with(
            f.weights,
            &format!("{{\"passing\": {deep_array}, \"Passing\": 1}}"),
        ),
        with(f.address, &deep_array),
        ttl(&deep_array),
        // Strings just under and well over the body limit.
        with(f.address, &format!("\"{huge}\"")),
        with(f.meta, &format!("{{\"k\":\"{huge}\"}}")),
        with(f.tags, &format!("[\"{huge}\"]")),
        with(f.address, &format!("\"{}\"", "y".repeat(BODY_LIMIT * 4))),
        vec![b' '; BODY_LIMIT + 1],
        // Wrong types and numbers out of range.
        with(f.port, "\"80\""),
        with(f.port, "-1"),
        with(f.port, "65536"),
        with(f.port, "80.5"),
        with(f.port, "1e400"),
        with(f.port, "18446744073709551616"),
        with(f.port, "-9223372036854775809"),
        with(f.port, "[80]"),
        with(f.address, "42"),
        with(f.address, "{}"),
        with(f.address, "\"not an address!\""),
        with(f.tags, "\"v1\""),
        with(f.tags, "[1, 2]"),
        with(f.tags, "{\"a\": 1}"),
        with(f.meta, "{\"a\": 1}"),
        with(f.meta, "[\"a\"]"),
        with(f.meta, "{\"a\": [\"b\"]}"),
        ttl("\"forever\""),
        ttl("\"-1s\""),
        ttl("-5"),
        ttl("[]"),
        with(f.checks, "\"x\""),
        with(f.checks, "[7]"),
        // Not UTF-8, bad escapes, lone surrogates, NUL.
        with(f.address, "\"\u{0}\""),
        with(f.address, "\"\\ud800\""),
        with(f.address, "\"\\uZZZZ\""),
        with(f.address, "\"\\x41\""),
        // Not JSON objects at all.
        b"[\"10.0.0.1\", 80]".to_vec(),
        b"\"10.0.0.1\"".to_vec(),
        b"80".to_vec(),
        b"null".to_vec(),
        b"{".to_vec(),
        b"{}}".to_vec(),
        b"{\"a\":1}{\"a\":1}".to_vec(),
        b"\xef\xbb\xbf{}".to_vec(),
    ];
    if f.address == "address" {
        // The native API types every field; Consul's ignores weights it cannot read.
        bodies.push(with(f.weights, "{\"passing\": -1}"));
        bodies.push(with(f.weights, "{\"passing\": 1e99}"));
        bodies.push(with(f.weights, "\"heavy\""));
    }
    let mut invalid_utf8 = with(f.address, "\"__\"");
    let at = invalid_utf8.windows(2).position(|w| w == b"__").unwrap();
    invalid_utf8[at..at + 2].copy_from_slice(&[0xff, 0xfe]);
    bodies.push(invalid_utf8);
    let mut overlong = with(f.meta, "{\"__\": \"v\"}");
    let at = overlong.windows(2).position(|w| w == b"__").unwrap();
    overlong[at..at + 2].copy_from_slice(&[0xc0, 0xaf]);
    bodies.push(overlong);
    bodies
}

#[test]
fn hostile_native_bodies_are_refused_without_touching_the_catalog() {
    let api = Api::new();
    let bodies = hostile_bodies(&native_valid(), &NATIVE_FIELDS);
    let mut too_large = 0;
    for body in bodies {
        if api.refused(NATIVE, body).unwrap() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large += 1;
        }
    }
    assert_eq!(too_large, 2, "the two bodies over the limit");
    // The same endpoint still takes a valid body afterwards.
    let (status, text) = api.put(NATIVE, native_valid().to_string().into_bytes());
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(api.registry.snapshot().instance_count(), 1);
}

#[test]
fn hostile_consul_bodies_are_refused_without_touching_the_catalog() {
    let api = Api::new();
    // Consul's handler answers 400 ("Request decode failed") to a body over
    // the limit as well, so only "400 or 413" is asserted here.
    for body in hostile_bodies(&consul_valid(), &CONSUL_FIELDS) {
        api.refused(CONSUL, body).unwrap();
    }
    let (status, text) = api.put(CONSUL, consul_valid().to_string().into_bytes());
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(api.registry.snapshot().instance_count(), 1);
}

/// A JSON value of any shape, with the registration's field names as keys so
/// that the typed fields get values of every type.
fn json_value() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "address",
        "port",
        "tags",
        "meta",
        "weights",
        "passing",
        "warning",
        "ttl",
        "deregister_critical_after",
        "checks",
        "kind",
        "interval",
        "Name",
        "ID",
        "Address",
        "Port",
        "Tags",
        "Meta",
        "Weights",
        "Passing",
        "Check",
        "Checks",
        "TTL",
        "HTTP",
        "zone",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop_oneof![Just(0i64), Just(80), Just(65_535), Just(65_536), Just(-1)]
            .prop_map(Value::from),
        prop_oneof![
            Just("10.0.0.1".to_owned()),
            Just("web".to_owned()),
            Just("30s".to_owned()),
            Just(String::new()),
            ".{0,40}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..6).prop_map(|m| Value::Object(
                m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
            )),
        ]
    })
}

/// Byte-level damage to a JSON text.
#[derive(Clone, Debug)]
enum Mutation {
    FlipBit(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens = prop_oneof![
        Just(b"[".to_vec()),
        Just(b"{".to_vec()),
        Just(b"\"".to_vec()),
        Just(b"\\".to_vec()),
        Just(b",".to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"\\u0000".to_vec()),
        Just(b"1e999".to_vec()),
        prop::collection::vec(any::<u8>(), 1..8),
    ];
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::FlipBit(p, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), tokens).prop_map(|(p, t)| Mutation::Insert(p, t)),
        (any::<usize>(), 1usize..8).prop_map(|(p, n)| Mutation::Remove(p, n)),
        (any::<usize>(), 1usize..16).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
    ]
}

impl Mutation {
    fn apply(&self, body: &mut Vec<u8>) {
        let len = body.len();
        let at = |p: usize, n: usize| if n == 0 { 0 } else { p % n };
        match self {
            Mutation::FlipBit(p, bit) if len > 0 => body[at(*p, len)] ^= 1 << bit,
            Mutation::Truncate(p) => body.truncate(at(*p, len + 1)),
            Mutation::Insert(p, bytes) => {
                let p = at(*p, len + 1);
                body.splice(p..p, bytes.iter().copied());
            }
            Mutation::Remove(p, n) if len > 0 => {
                let p = at(*p, len);
                body.drain(p..(p + n).min(len));
            }
            Mutation::Duplicate(p, n) if len > 0 => {
                let p = at(*p, len);
                let copy = body[p..(p + n).min(len)].to_vec();
                body.splice(p..p, copy);
            }
            _ => {}
        }
    }
}

/// Random JSON values, valid bodies with random fields merged in, and
/// byte-level mutations of valid bodies.
fn body(valid: Value) -> impl Strategy<Value = Vec<u8>> {
    let base = valid.clone();
    let merged = prop::collection::btree_map(
        prop::sample::select(vec![
            "address", "port", "tags", "meta", "weights", "ttl", "checks", "Name", "ID", "Address",
            "Port", "Tags", "Meta", "Check", "Checks",
        ]),
        json_value(),
        0..3,
    )
    .prop_map(move |fields| {
        let mut value = base.clone();
        for (k, v) in fields {
            value[k] = v;
        }
        value.to_string().into_bytes()
    });
    let mutated = prop::collection::vec(mutation(), 1..5).prop_map(move |mutations| {
        let mut bytes = valid.to_string().into_bytes();
        for m in &mutations {
            m.apply(&mut bytes);
        }
        bytes
    });
    prop_oneof![
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        2 => merged,
        2 => mutated,
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

fn fuzz(path: &str, valid: Value, cases: u32) {
    let api = Api::new();
    let accepted = Cell::new(0u32);
    let refused = Cell::new(0u32);
    runner(cases)
        .run(&body(valid), |body| {
            let counter = if api.any(path, body)?.is_success() {
                &accepted
            } else {
                &refused
            };
            counter.set(counter.get() + 1);
            Ok(())
        })
        .unwrap();
    let (accepted, refused) = (accepted.get(), refused.get());
    eprintln!("{path}: {accepted} accepted, {refused} refused");
    // Both sides of the parser were reached, not only its first check.
    assert!(
        accepted > 0 && refused > cases / 4,
        "{accepted} / {refused}"
    );
}

#[test]
fn random_and_mutated_native_bodies_never_fail_the_server() {
    fuzz(NATIVE, native_valid(), 3_000);
}

#[test]
fn random_and_mutated_consul_bodies_never_fail_the_server() {
    fuzz(CONSUL, consul_valid(), 3_000);
}

/// Percent-encodes every byte outside the unreserved set, for a query value.
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Filter expressions: arbitrary strings, and sequences of the grammar's own
/// pieces (selectors, operators, quotes, `and`, multi-byte characters) so the
/// parser gets past its first check.
fn filter_expr() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "ServiceID",
            "Service.Tags",
            "ServiceTags",
            "ServiceMeta.env",
            "Service.Meta.\u{fc}",
            "Node",
            "==",
            "!=",
            "contains",
            "not contains",
            "in",
            "not in",
            "and",
            " and ",
            "\"",
            "\"a\"",
            "\"\u{fc}\"",
            "\u{fc}",
            "\u{1F600}",
            "\u{e9}and",
            "(",
            ")",
            "or",
        ])
        .prop_map(str::to_owned),
        ".{0,6}",
    ];
    prop_oneof![
        2 => prop::collection::vec(piece, 0..10).prop_map(|p| p.join(" ")),
        1 => any::<String>(),
        1 => ".{0,40}",
    ]
}

#[test]
fn random_consul_filters_never_fail_the_server() {
    let api = Api::new();
    let (status, text) = api.put(CONSUL, consul_valid().to_string().into_bytes());
    assert!(status.is_success(), "{status} {text}");
    // The reported panic, on both endpoints that take a filter.
    for path in ["/v1/health/service/web", "/v1/catalog/service/web"] {
        let (status, content_type, text) = api.get(&format!("{path}?filter=%C3%BC"));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {text}");
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        assert!(text.contains("filter"), "{text}");
    }
    let answered = Cell::new([0u32; 2]);
    runner(2_000)
        .run(&filter_expr(), |expr| {
            for path in ["/v1/health/service/web", "/v1/catalog/service/web"] {
                let uri = format!("{path}?filter={}", query_value(&expr));
                let (status, content_type, text) = api.get(&uri);
                let mut counts = answered.get();
                match status {
                    StatusCode::OK => counts[0] += 1,
                    StatusCode::BAD_REQUEST => {
                        prop_assert!(
                            content_type.starts_with("text/plain"),
                            "{:?}: Consul errors are plain text, got {}",
                            expr,
                            content_type
                        );
                        counts[1] += 1;
                    }
                    other => prop_assert!(false, "{} {:?}: {} {}", path, expr, other, text),
                }
                answered.set(counts);
            }
            Ok(())
        })
        .unwrap();
    let [ok, refused] = answered.get();
    eprintln!("filters: {ok} answered, {refused} refused");
    assert!(ok > 0 && refused > 0, "{ok} / {refused}");
}
