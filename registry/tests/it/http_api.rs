//! Integration tests of the native HTTP API: a real server on a real listener,
//! driven with raw `reqwest` requests so status codes, headers and bodies are
//! checked exactly as a client sees them.

use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode};
use roster_client::api::INDEX_HEADER;
use roster_registry::config::Config;
use roster_registry::server::Server;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PROBLEM_JSON: &str = "application/problem+json";
const INSTANCE: &str = "/v1/services/web/instances/web-1";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// A running registry and an HTTP client pointed at it. Dropping it cancels the
/// server's token, so a failing test still shuts the server down.
struct TestServer {
    base: String,
    http: reqwest::Client,
    token: CancellationToken,
    server: Option<Server>,
}

impl TestServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let token = CancellationToken::new();
        let config = Config {
            dns_addr: Some("127.0.0.1:0".parse().unwrap()),
            grpc_addr: Some("127.0.0.1:0".parse().unwrap()),
            ..Config::default()
        };
        let server = Server::start(&config, listener, token.clone())
            .await
            .expect("server starts");
        let base = format!("http://{}", server.local_addr());
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        TestServer {
            base,
            http,
            token,
            server: Some(server),
        }
    }

    /// A server with `web/web-1` already registered.
    async fn seeded() -> Self {
        let srv = Self::start().await;
        let r = srv
            .put_json(INSTANCE, &json!({"address": "10.0.0.1", "port": 8080}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        srv
    }

    /// Cancels the token and waits for the server to stop cleanly.
    async fn stop(mut self) {
        let server = self.server.take().expect("server still running");
        self.token.cancel();
        // Dropping the client closes its pooled connections.
        drop(self);
        server.wait().await.expect("server stops cleanly");
    }

    async fn send(&self, method: Method, path: &str, body: Option<String>) -> Reply {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.header(CONTENT_TYPE, "application/json").body(body);
        }
        let resp = req.send().await.expect("request is answered");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("response body");
        Reply {
            status,
            headers,
            text,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, None).await
    }

    async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, None).await
    }

    async fn put_raw(&self, path: &str, body: impl Into<String>) -> Reply {
        self.send(Method::PUT, path, Some(body.into())).await
    }

    async fn put_json(&self, path: &str, body: &Value) -> Reply {
        self.put_raw(path, body.to_string()).await
    }

    async fn put_empty(&self, path: &str) -> Reply {
        self.send(Method::PUT, path, None).await
    }

    /// `GET /v1/services`: the whole catalog summary, used to prove that a rejected
    /// request changed nothing.
    async fn catalog(&self) -> (u64, Value) {
        let r = self.get("/v1/services").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        (r.index(), r.json())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// A response, fully read.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {:?}", self.text))
    }

    fn content_type(&self) -> &str {
        self.headers
            .get(CONTENT_TYPE)
            .map(|v| v.to_str().expect("ASCII content type"))
            .unwrap_or("")
    }

    fn index(&self) -> u64 {
        self.headers
            .get(INDEX_HEADER)
            .unwrap_or_else(|| panic!("no {INDEX_HEADER} header: {:?}", self.headers))
            .to_str()
            .expect("ASCII index header")
            .parse()
            .expect("numeric index header")
    }

    /// Asserts an RFC 9457 problem with `status` and type
    /// `urn:roster:problem:{kind}`; returns the document.
    fn problem(&self, status: StatusCode, kind: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(self.content_type(), PROBLEM_JSON, "{}", self.text);
        let body = self.json();
        assert_eq!(body["type"], format!("urn:roster:problem:{kind}"), "{body}");
        assert_eq!(body["status"], status.as_u16(), "{body}");
        body
    }
}

/// Sends a request that must be rejected with 400 naming `field`, and checks
/// that the catalog did not change.
async fn assert_rejected(
    srv: &TestServer,
    method: Method,
    path: &str,
    body: Option<String>,
    field: &str,
) {
    let before = srv.catalog().await;
    let r = srv.send(method.clone(), path, body).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "{method} {path}: {}",
        r.text
    );
    assert_eq!(r.content_type(), PROBLEM_JSON, "{}", r.text);
    let problem = r.json();
    let kind = problem["type"].as_str().expect("type is a string");
    assert!(kind.starts_with("urn:roster:problem:"), "{problem}");
    assert_eq!(problem["status"], 400, "{problem}");
    assert_eq!(problem["field"], field, "{method} {path}: {problem}");
    let after = srv.catalog().await;
    assert_eq!(before, after, "a rejected request changed the catalog");
}

/// A registration that must be rejected with 400 naming `field`.
async fn assert_register_rejected(body: Value, field: &str) {
    let srv = TestServer::seeded().await;
    assert_rejected(
        &srv,
        Method::PUT,
        "/v1/services/web/instances/web-2",
        Some(body.to_string()),
        field,
    )
    .await;
    srv.stop().await;
}

fn ids(instances: &Value) -> Vec<&str> {
    instances
        .as_array()
        .expect("instances is an array")
        .iter()
        .map(|i| i["id"].as_str().expect("id is a string"))
        .collect()
}

// ---------------------------------------------------------------------------
// Registration
// ---------------------------------------------------------------------------

#[tokio::test]
async fn register_creates_then_updates_and_identical_is_a_no_op() {
    let srv = TestServer::start().await;
    let body = json!({
        "address": "10.0.0.1",
        "port": 8080,
        "tags": ["v2"],
        "meta": {"zone": "a"},
        "ttl": "15s"
    });

    let first = srv.put_json(INSTANCE, &body).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let inst = first.json();
    assert_eq!(inst["id"], "web-1");
    assert_eq!(inst["service"], "web");
    assert_eq!(inst["address"], "10.0.0.1");
    assert_eq!(inst["port"], 8080);
    assert_eq!(inst["tags"], json!(["v2"]));
    assert_eq!(inst["meta"], json!({"zone": "a"}));
    assert_eq!(inst["health"], "passing");
    assert_eq!(inst["checks"][0]["id"], "ttl");
    assert_eq!(inst["checks"][0]["status"], "passing");
    assert_eq!(inst["ttl"], "15s");
    assert_eq!(inst["deregister_critical_after"], "1m");
    let created = inst["create_index"].as_u64().expect("create_index");
    assert_eq!(inst["modify_index"].as_u64(), Some(created));
    assert_eq!(first.index(), created);

    let mut changed_body = body.clone();
    changed_body["port"] = json!(9090);
    let changed = srv.put_json(INSTANCE, &changed_body).await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text);
    let inst = changed.json();
    assert_eq!(inst["port"], 9090);
    assert_eq!(inst["create_index"].as_u64(), Some(created));
    let modified = inst["modify_index"].as_u64().expect("modify_index");
    assert!(modified > created, "{inst}");
    assert_eq!(changed.index(), modified);

    let same = srv.put_json(INSTANCE, &changed_body).await;
    assert_eq!(same.status, StatusCode::OK, "{}", same.text);
    assert_eq!(
        same.index(),
        changed.index(),
        "identical re-register moved the index"
    );
    let inst = same.json();
    assert_eq!(inst["create_index"].as_u64(), Some(created));
    assert_eq!(inst["modify_index"].as_u64(), Some(modified));
    assert_eq!(srv.catalog().await.0, modified);

    srv.stop().await;
}

#[tokio::test]
async fn register_without_address_uses_the_peer_address() {
    let srv = TestServer::start().await;
    let r = srv.put_json(INSTANCE, &json!({"port": 80})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["address"], "127.0.0.1");
    let got = srv.get(INSTANCE).await;
    assert_eq!(got.json()["address"], "127.0.0.1");
    srv.stop().await;
}

#[tokio::test]
async fn register_accepts_unknown_fields() {
    let srv = TestServer::start().await;
    let r = srv
        .put_raw(INSTANCE, r#"{"port":80,"future":{"x":[1,2]},"Port2":3}"#)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["port"], 80);
    srv.stop().await;
}

#[tokio::test]
async fn service_names_are_case_insensitive() {
    let srv = TestServer::start().await;
    let r = srv
        .put_json("/v1/services/Web/instances/web-1", &json!({"port": 80}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["service"], "web");

    let list = srv.get("/v1/services/web").await;
    assert_eq!(list.status, StatusCode::OK);
    let list = list.json();
    assert_eq!(list["service"], "web");
    assert_eq!(ids(&list["instances"]), ["web-1"]);
    assert_eq!(list["instances"][0]["service"], "web");

    let upper = srv.get("/v1/services/WEB").await.json();
    assert_eq!(upper["service"], "web");
    assert_eq!(ids(&upper["instances"]), ["web-1"]);

    let (_, catalog) = srv.catalog().await;
    assert_eq!(catalog["services"][0]["name"], "web");
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// Rejected input: one test per field
// ---------------------------------------------------------------------------

#[tokio::test]
async fn reject_service_with_underscore() {
    let srv = TestServer::seeded().await;
    let body = Some(json!({"port": 80}).to_string());
    assert_rejected(
        &srv,
        Method::PUT,
        "/v1/services/Web_x/instances/x-1",
        body,
        "service",
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_service_with_leading_hyphen() {
    let srv = TestServer::seeded().await;
    let body = Some(json!({"port": 80}).to_string());
    assert_rejected(
        &srv,
        Method::PUT,
        "/v1/services/-web/instances/x-1",
        body,
        "service",
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_service_name_too_long() {
    let srv = TestServer::seeded().await;
    let path = format!("/v1/services/{}/instances/x-1", "s".repeat(64));
    let body = Some(json!({"port": 80}).to_string());
    assert_rejected(&srv, Method::PUT, &path, body, "service").await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_id_with_bad_character() {
    let srv = TestServer::seeded().await;
    let body = Some(json!({"port": 80}).to_string());
    assert_rejected(
        &srv,
        Method::PUT,
        "/v1/services/web/instances/a%20b",
        body,
        "id",
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_id_too_long() {
    let srv = TestServer::seeded().await;
    let path = format!("/v1/services/web/instances/{}", "i".repeat(129));
    let body = Some(json!({"port": 80}).to_string());
    assert_rejected(&srv, Method::PUT, &path, body, "id").await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_bad_address() {
    assert_register_rejected(json!({"address": "not_a_host!", "port": 80}), "address").await;
}

#[tokio::test]
async fn reject_port_zero() {
    assert_register_rejected(json!({"port": 0}), "port").await;
}

#[tokio::test]
async fn reject_port_too_large() {
    assert_register_rejected(json!({"port": 70000}), "port").await;
}

#[tokio::test]
async fn reject_port_as_string() {
    assert_register_rejected(json!({"port": "80"}), "port").await;
}

#[tokio::test]
async fn reject_missing_port() {
    assert_register_rejected(json!({"address": "10.0.0.2"}), "port").await;
}

#[tokio::test]
async fn reject_tags_not_an_array() {
    assert_register_rejected(json!({"port": 80, "tags": "v2"}), "tags").await;
}

#[tokio::test]
async fn reject_empty_tag() {
    assert_register_rejected(json!({"port": 80, "tags": ["ok", ""]}), "tags[1]").await;
}

#[tokio::test]
async fn reject_too_many_tags() {
    let tags: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    assert_register_rejected(json!({"port": 80, "tags": tags}), "tags").await;
}

#[tokio::test]
async fn reject_too_many_meta_entries() {
    let meta: serde_json::Map<String, Value> = (0..65)
        .map(|i| (format!("k{i}"), Value::from("v")))
        .collect();
    assert_register_rejected(json!({"port": 80, "meta": meta}), "meta").await;
}

#[tokio::test]
async fn reject_bad_meta_key() {
    assert_register_rejected(
        json!({"port": 80, "meta": {"bad key": "v"}}),
        "meta.bad key",
    )
    .await;
}

#[tokio::test]
async fn reject_meta_value_too_long() {
    let value = "v".repeat(513);
    assert_register_rejected(json!({"port": 80, "meta": {"k": value}}), "meta.k").await;
}

#[tokio::test]
async fn reject_weights_passing_zero() {
    assert_register_rejected(
        json!({"port": 80, "weights": {"passing": 0}}),
        "weights.passing",
    )
    .await;
}

#[tokio::test]
async fn reject_weights_warning_too_large() {
    assert_register_rejected(
        json!({"port": 80, "weights": {"warning": 70000}}),
        "weights.warning",
    )
    .await;
}

#[tokio::test]
async fn reject_ttl_too_short() {
    assert_register_rejected(json!({"port": 80, "ttl": "500ms"}), "ttl").await;
}

#[tokio::test]
async fn reject_ttl_too_long() {
    assert_register_rejected(json!({"port": 80, "ttl": "25h"}), "ttl").await;
}

#[tokio::test]
async fn reject_ttl_unparseable() {
    assert_register_rejected(json!({"port": 80, "ttl": "often"}), "ttl").await;
}

#[tokio::test]
async fn reject_deregister_critical_after_too_long() {
    assert_register_rejected(
        json!({"port": 80, "deregister_critical_after": "8d"}),
        "deregister_critical_after",
    )
    .await;
}

#[tokio::test]
async fn reject_maintenance_reason_too_long() {
    let srv = TestServer::seeded().await;
    let body = json!({"enabled": true, "reason": "r".repeat(257)}).to_string();
    assert_rejected(
        &srv,
        Method::PUT,
        &format!("{INSTANCE}/maintenance"),
        Some(body),
        "reason",
    )
    .await;
    let inst = srv.get(INSTANCE).await.json();
    assert_eq!(inst["health"], "passing", "{inst}");
    assert!(inst.get("maintenance").is_none(), "{inst}");
    srv.stop().await;
}

#[tokio::test]
async fn reject_bad_all_flag() {
    let srv = TestServer::seeded().await;
    assert_rejected(&srv, Method::GET, "/v1/services/web?all=maybe", None, "all").await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_bad_healthy_flag() {
    let srv = TestServer::seeded().await;
    assert_rejected(
        &srv,
        Method::GET,
        "/v1/services/web?healthy=perhaps",
        None,
        "healthy",
    )
    .await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_invalid_json_syntax() {
    let srv = TestServer::seeded().await;
    let body = Some(r#"{"port": 80,"#.to_owned());
    assert_rejected(&srv, Method::PUT, INSTANCE, body, "body").await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_empty_body() {
    let srv = TestServer::seeded().await;
    assert_rejected(&srv, Method::PUT, INSTANCE, Some(String::new()), "body").await;
    srv.stop().await;
}

#[tokio::test]
async fn reject_json_array_body() {
    let srv = TestServer::seeded().await;
    // An array is not an object, even one whose elements line up with the
    // fields of the registration in declaration order.
    for body in [r#"[{"port": 80}]"#, r#"["10.0.0.2", 80]"#, "[]"] {
        assert_rejected(
            &srv,
            Method::PUT,
            "/v1/services/web/instances/web-2",
            Some(body.to_owned()),
            "body",
        )
        .await;
    }
    srv.stop().await;
}

#[tokio::test]
async fn body_over_64_kib_is_413() {
    let srv = TestServer::seeded().await;
    let before = srv.catalog().await;
    let body = json!({
        "port": 80,
        "tags": ["a", "b", "c"],
        "meta": {"pad": "x".repeat(70_000)}
    });
    let r = srv
        .put_json("/v1/services/web/instances/web-2", &body)
        .await;
    let problem = r.problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    assert_eq!(problem["field"], "body", "{problem}");
    assert_eq!(srv.catalog().await, before);
    srv.stop().await;
}

#[tokio::test]
async fn id_taken_by_another_service_is_409() {
    let srv = TestServer::start().await;
    let r = srv
        .put_json("/v1/services/web/instances/x", &json!({"port": 80}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let before = srv.catalog().await;
    let r = srv
        .put_json("/v1/services/db/instances/x", &json!({"port": 5432}))
        .await;
    let problem = r.problem(StatusCode::CONFLICT, "id-conflict");
    assert_eq!(problem["field"], "id", "{problem}");
    assert_eq!(srv.catalog().await, before);
    let db = srv.get("/v1/services/db/instances/x").await;
    assert_eq!(db.status, StatusCode::NOT_FOUND, "{}", db.text);
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// Heartbeat, deregistration, reads
// ---------------------------------------------------------------------------

#[tokio::test]
async fn heartbeat_known_unknown_and_other_service() {
    let srv = TestServer::start().await;
    let r = srv
        .put_json(INSTANCE, &json!({"port": 80, "ttl": "30s"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let index = r.index();

    let hb = srv.put_empty(&format!("{INSTANCE}/heartbeat")).await;
    assert_eq!(hb.status, StatusCode::NO_CONTENT, "{}", hb.text);
    assert_eq!(hb.index(), index);
    assert!(hb.text.is_empty(), "{:?}", hb.text);

    let unknown = srv
        .put_empty("/v1/services/web/instances/web-9/heartbeat")
        .await;
    unknown.problem(StatusCode::NOT_FOUND, "not-found");

    // Registered, but under `web`: not an instance of `db`.
    let other = srv
        .put_empty("/v1/services/db/instances/web-1/heartbeat")
        .await;
    other.problem(StatusCode::NOT_FOUND, "not-found");

    // The same for an instance without a lease (the slow path).
    let r = srv
        .put_json("/v1/services/web/instances/web-2", &json!({"port": 81}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let hb = srv
        .put_empty("/v1/services/web/instances/web-2/heartbeat")
        .await;
    assert_eq!(hb.status, StatusCode::NO_CONTENT, "{}", hb.text);
    hb.index();
    let other = srv
        .put_empty("/v1/services/db/instances/web-2/heartbeat")
        .await;
    other.problem(StatusCode::NOT_FOUND, "not-found");

    srv.stop().await;
}

#[tokio::test]
async fn deregister_removes_the_instance_and_then_the_service() {
    let srv = TestServer::start().await;
    for id in ["web-1", "web-2"] {
        let r = srv
            .put_json(
                &format!("/v1/services/web/instances/{id}"),
                &json!({"port": 80}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let (before, _) = srv.catalog().await;

    let del = srv.delete(INSTANCE).await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    assert!(del.index() > before);
    srv.get(INSTANCE)
        .await
        .problem(StatusCode::NOT_FOUND, "not-found");
    srv.delete(INSTANCE)
        .await
        .problem(StatusCode::NOT_FOUND, "not-found");

    let (_, catalog) = srv.catalog().await;
    assert_eq!(catalog["services"][0]["name"], "web");
    assert_eq!(catalog["services"][0]["instances"], 1);

    let del = srv.delete("/v1/services/web/instances/web-2").await;
    assert_eq!(del.status, StatusCode::NO_CONTENT, "{}", del.text);
    let (_, catalog) = srv.catalog().await;
    assert_eq!(catalog["services"], json!([]), "{catalog}");
    srv.stop().await;
}

#[tokio::test]
async fn list_services_summarises_each_service() {
    let srv = TestServer::start().await;
    let regs = [
        ("web", "web-1", json!({"port": 80, "tags": ["v2", "blue"]})),
        ("web", "web-2", json!({"port": 80, "tags": ["a", "v2"]})),
        ("web", "web-3", json!({"port": 80})),
        ("db", "db-1", json!({"port": 5432, "tags": ["primary"]})),
    ];
    for (service, id, body) in &regs {
        let r = srv
            .put_json(&format!("/v1/services/{service}/instances/{id}"), body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let m = srv
        .put_json(
            "/v1/services/web/instances/web-3/maintenance",
            &json!({"enabled": true, "reason": "deploy"}),
        )
        .await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);

    let r = srv.get("/v1/services").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.content_type().starts_with("application/json"));
    let list = r.json();
    assert_eq!(list["index"].as_u64(), Some(r.index()));
    assert_eq!(
        r.index(),
        6,
        "the empty catalog is at 1; four registrations and a maintenance change follow"
    );
    let services = list["services"].as_array().expect("services array");
    assert_eq!(services.len(), 2);

    let db = &services[0];
    assert_eq!(db["name"], "db");
    assert_eq!(db["instances"], 1);
    assert_eq!(db["passing"], 1);
    assert_eq!(db["warning"], 0);
    assert_eq!(db["critical"], 0);
    assert_eq!(db["tags"], json!(["primary"]));
    assert_eq!(db["modify_index"], 5);

    let web = &services[1];
    assert_eq!(web["name"], "web");
    assert_eq!(web["instances"], 3);
    assert_eq!(web["passing"], 2);
    assert_eq!(web["warning"], 0);
    assert_eq!(web["critical"], 1);
    assert_eq!(web["tags"], json!(["a", "blue", "v2"]));
    assert_eq!(web["modify_index"], 6);

    srv.stop().await;
}

#[tokio::test]
async fn list_instances_filters_by_health_and_tags() {
    let srv = TestServer::start().await;
    let regs = [
        ("web-1", json!({"port": 80, "tags": ["a", "b"]})),
        ("web-2", json!({"port": 80, "tags": ["a"]})),
        ("web-3", json!({"port": 80, "tags": ["b", "a", "c"]})),
    ];
    for (id, body) in &regs {
        let r = srv
            .put_json(&format!("/v1/services/web/instances/{id}"), body)
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let m = srv
        .put_json(
            "/v1/services/web/instances/web-3/maintenance",
            &json!({"enabled": true, "reason": "deploy"}),
        )
        .await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);

    let r = srv.get("/v1/services/web").await;
    assert_eq!(r.status, StatusCode::OK);
    let body = r.json();
    assert_eq!(body["service"], "web");
    assert_eq!(body["index"].as_u64(), Some(r.index()));
    assert_eq!(ids(&body["instances"]), ["web-1", "web-2"]);

    for query in ["?all=true", "?all", "?healthy=false", "?healthy=0"] {
        let body = srv.get(&format!("/v1/services/web{query}")).await.json();
        assert_eq!(
            ids(&body["instances"]),
            ["web-1", "web-2", "web-3"],
            "{query}"
        );
    }
    let body = srv.get("/v1/services/web?healthy=true").await.json();
    assert_eq!(ids(&body["instances"]), ["web-1", "web-2"]);

    let body = srv.get("/v1/services/web?tag=a&tag=b").await.json();
    assert_eq!(ids(&body["instances"]), ["web-1"]);
    let body = srv
        .get("/v1/services/web?tag=a&tag=b&all=true")
        .await
        .json();
    assert_eq!(ids(&body["instances"]), ["web-1", "web-3"]);
    let body = srv.get("/v1/services/web?tag=a").await.json();
    assert_eq!(ids(&body["instances"]), ["web-1", "web-2"]);
    let body = srv.get("/v1/services/web?tag=zzz").await.json();
    assert_eq!(ids(&body["instances"]), Vec::<&str>::new());

    let r = srv.get("/v1/services/nothing-here").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let body = r.json();
    assert_eq!(body["service"], "nothing-here");
    assert_eq!(body["instances"], json!([]));
    assert_eq!(body["index"].as_u64(), Some(r.index()));

    srv.stop().await;
}

#[tokio::test]
async fn get_instance_returns_it_or_404() {
    let srv = TestServer::start().await;
    let put = srv
        .put_json(
            INSTANCE,
            &json!({"address": "Web-1.Example.com.", "port": 8080, "tags": ["v2"]}),
        )
        .await;
    assert_eq!(put.status, StatusCode::CREATED, "{}", put.text);

    let r = srv.get(INSTANCE).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let inst = r.json();
    assert_eq!(inst, put.json());
    assert_eq!(inst["address"], "web-1.example.com");
    assert_eq!(inst["weights"], json!({"passing": 1, "warning": 1}));
    assert_eq!(inst["checks"], json!([]));
    assert!(inst.get("ttl").is_none(), "{inst}");
    assert_eq!(inst["modify_index"].as_u64(), Some(r.index()));

    srv.get("/v1/services/web/instances/web-9")
        .await
        .problem(StatusCode::NOT_FOUND, "not-found");
    srv.get("/v1/services/db/instances/web-1")
        .await
        .problem(StatusCode::NOT_FOUND, "not-found");
    srv.stop().await;
}

#[tokio::test]
async fn maintenance_on_and_off() {
    let srv = TestServer::seeded().await;
    let path = format!("{INSTANCE}/maintenance");

    let on = srv
        .put_json(&path, &json!({"enabled": true, "reason": "deploy"}))
        .await;
    assert_eq!(on.status, StatusCode::OK, "{}", on.text);
    let inst = on.json();
    assert_eq!(inst["health"], "critical", "{inst}");
    assert_eq!(inst["maintenance"]["reason"], "deploy", "{inst}");
    assert_eq!(inst["modify_index"].as_u64(), Some(on.index()));
    assert_eq!(srv.get(INSTANCE).await.json()["health"], "critical");

    let off = srv.put_json(&path, &json!({"enabled": false})).await;
    assert_eq!(off.status, StatusCode::OK, "{}", off.text);
    let inst = off.json();
    assert_eq!(inst["health"], "passing", "{inst}");
    assert!(inst.get("maintenance").is_none(), "{inst}");
    assert!(off.index() > on.index());

    srv.put_json(
        "/v1/services/web/instances/web-9/maintenance",
        &json!({"enabled": true, "reason": "deploy"}),
    )
    .await
    .problem(StatusCode::NOT_FOUND, "not-found");
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// Operational endpoints and routing
// ---------------------------------------------------------------------------

#[tokio::test]
async fn health_ready_and_metrics() {
    let srv = TestServer::seeded().await;

    let health = srv.get("/health").await;
    assert_eq!(health.status, StatusCode::OK, "{}", health.text);
    assert!(health.content_type().starts_with("application/json"));
    assert_eq!(health.json()["status"], "ok");

    let ready = srv.get("/ready").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text);

    assert_eq!(srv.get(INSTANCE).await.status, StatusCode::OK);
    assert_eq!(srv.get("/v1/services").await.status, StatusCode::OK);

    let metrics = srv.get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text);
    assert!(
        metrics.content_type().starts_with("text/plain"),
        "{}",
        metrics.content_type()
    );
    let text = &metrics.text;
    assert!(
        text.lines()
            .any(|l| l.starts_with("roster_http_requests_total{")
                && l.contains(r#"route="/v1/services/{service}/instances/{id}""#)),
        "{text}"
    );
    assert!(
        text.contains(r#"roster_instances{health="passing"}"#),
        "{text}"
    );
    assert!(text.contains("roster_catalog_index"), "{text}");
    srv.stop().await;
}

#[tokio::test]
async fn unknown_path_is_404_and_wrong_method_is_405() {
    let srv = TestServer::start().await;
    srv.get("/v2/nothing")
        .await
        .problem(StatusCode::NOT_FOUND, "no-route");
    srv.send(Method::POST, "/v1/services", Some("{}".into()))
        .await
        .problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// The OpenAPI document matches the router
// ---------------------------------------------------------------------------

const HTTP_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

/// Whether the response is a route miss: the no-route 404 or a 405.
fn is_route_miss(r: &Reply) -> bool {
    if r.status == StatusCode::METHOD_NOT_ALLOWED {
        return true;
    }
    r.status == StatusCode::NOT_FOUND
        && serde_json::from_str::<Value>(&r.text)
            .is_ok_and(|v| v["type"] == "urn:roster:problem:no-route")
}

#[tokio::test]
async fn openapi_document_matches_the_router() {
    let srv = TestServer::seeded().await;
    let r = srv.get("/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let doc = r.json();
    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1"), "openapi version {version:?}");
    let paths = doc["paths"].as_object().expect("paths is an object");
    assert!(!paths.is_empty(), "the document describes no paths");

    for (template, item) in paths {
        let mut path = template
            .replace("{service}", "web")
            .replace("{id}", "web-1");
        if template == "/v1/watch" {
            path.push_str("?service=web");
        }
        let item = item.as_object().expect("path item is an object");
        let documented: Vec<&str> = HTTP_METHODS
            .into_iter()
            .filter(|m| item.contains_key(*m))
            .collect();
        assert!(!documented.is_empty(), "{template} documents no method");

        for method in &documented {
            let m =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("valid method");
            let body = if m == Method::PUT && template.ends_with("/maintenance") {
                Some(json!({"enabled": false}).to_string())
            } else if m == Method::PUT && template == "/v1/services/{service}/instances/{id}" {
                Some(json!({"port": 80}).to_string())
            } else {
                None
            };
            if template.ends_with("/watch") {
                // An event stream never ends: look at the head only.
                let resp = srv
                    .http
                    .request(m.clone(), format!("{}{path}", srv.base))
                    .send()
                    .await
                    .expect("stream answered");
                assert_eq!(resp.status(), StatusCode::OK, "documented {m} {template}");
                let ct = resp.headers()[CONTENT_TYPE].to_str().unwrap().to_owned();
                assert!(ct.starts_with("text/event-stream"), "{template}: {ct}");
                continue;
            }
            let r = srv.send(m.clone(), &path, body).await;
            assert!(
                !is_route_miss(&r),
                "documented {m} {template} is not routed: {} {}",
                r.status,
                r.text
            );
        }

        for method in ["get", "put", "delete", "post", "patch"] {
            if documented.contains(&method) {
                continue;
            }
            let m =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("valid method");
            let r = srv.send(m.clone(), &path, None).await;
            assert_eq!(
                r.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "undocumented {m} {template}: {}",
                r.text
            );
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn cached_instance_lists_follow_every_change() {
    let srv = TestServer::seeded().await;
    let r = srv
        .put_json("/v1/services/web/instances/web-2", &json!({"port": 81}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let ids = |r: &Reply| -> Vec<String> {
        r.json()["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Read twice: the second answer comes from the cache and must be identical.
    let first = srv.get("/v1/services/web").await;
    let again = srv.get("/v1/services/web").await;
    assert_eq!(first.text, again.text);
    assert_eq!(ids(&first), ["web-1", "web-2"]);

    let m = srv
        .put_json(
            "/v1/services/web/instances/web-2/maintenance",
            &json!({"enabled": true}),
        )
        .await;
    assert_eq!(m.status, StatusCode::OK, "{}", m.text);
    let healthy = srv.get("/v1/services/web").await;
    assert_eq!(
        ids(&healthy),
        ["web-1"],
        "the cached healthy list was replaced"
    );
    assert!(healthy.index() > first.index());
    let all = srv.get("/v1/services/web?all=true").await;
    assert_eq!(
        ids(&all),
        ["web-1", "web-2"],
        "all and healthy are cached apart"
    );
    assert_eq!(all.json()["instances"][1]["health"], "critical");
    let tagged = srv.get("/v1/services/web?tag=none").await;
    assert_eq!(ids(&tagged), Vec::<String>::new());

    let d = srv.delete("/v1/services/web/instances/web-1").await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    assert_eq!(
        ids(&srv.get("/v1/services/web").await),
        Vec::<String>::new()
    );
    srv.stop().await;
}
