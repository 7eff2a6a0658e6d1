//! `GET /v1/prometheus/targets`, Prometheus' HTTP service discovery format,
//! against a real server on port 0: the exact shape of the answer (one group
//! per instance, labels, tags, sanitized metadata keys, IPv6 in brackets), the
//! filters, the 400s that name the field, and ACLs. tests/prometheus/run.sh
//! points a real Prometheus at it.

use reqwest::StatusCode;
use roster_client::api::INDEX_HEADER;
use roster_registry::acl::Tokens;
use roster_registry::config::Config;
use roster_registry::server::Server;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TARGETS: &str = "/v1/prometheus/targets";
const READER: &str = "prom-reader-secret-0123456789";
const WRITER: &str = "prom-writer-secret-0123456789";

struct Api {
    base: String,
    http: reqwest::Client,
    token: CancellationToken,
    server: Option<Server>,
}

struct Reply {
    status: StatusCode,
    content_type: String,
    index: Option<u64>,
    body: Value,
}

impl Api {
    /// A server with `config`'s settings, without DNS and gRPC (tests run in
    /// parallel: their default ports would be taken by the first).
    async fn start(config: Config) -> Api {
        let config = Config {
            dns_addr: None,
            grpc_addr: None,
            ..config
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let token = CancellationToken::new();
        let server = Server::start(&config, listener, token.clone())
            .await
            .expect("server starts");
        Api {
            base: format!("http://{}", server.local_addr()),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            token,
            server: Some(server),
        }
    }

    async fn plain() -> Api {
        Api::start(Config::default()).await
    }

    async fn get_as(&self, path: &str, secret: Option<&str>) -> Reply {
        let mut req = self.http.get(format!("{}{path}", self.base));
        if let Some(s) = secret {
            req = req.bearer_auth(s);
        }
        let resp = req.send().await.expect("answered");
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let index = header(INDEX_HEADER).map(|v| v.parse().expect("numeric index"));
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {text:?} ({status})"));
        Reply {
            status,
            content_type,
            index,
            body,
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.get_as(path, None).await
    }

    /// Registers an instance; returns the catalog index of the write.
    async fn register(&self, service: &str, id: &str, body: Value, secret: Option<&str>) -> u64 {
        let mut req = self
            .http
            .put(format!(
                "{}/v1/services/{service}/instances/{id}",
                self.base
            ))
            .body(body.to_string());
        if let Some(s) = secret {
            req = req.bearer_auth(s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let index = resp.headers()[INDEX_HEADER]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            status.is_success(),
            "{status}: {}",
            resp.text().await.unwrap()
        );
        index
    }

    async fn put(&self, path: &str, body: Value) {
        let resp = self
            .http
            .put(format!("{}{path}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.text().await.unwrap());
    }

    async fn delete(&self, path: &str) {
        let resp = self
            .http
            .delete(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "{}", resp.status());
    }

    async fn stop(mut self) {
        let server = self.server.take().unwrap();
        self.token.cancel();
        drop(self);
        server.wait().await.expect("server stops cleanly");
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

/// `service/id` of each group, in order.
fn ids(body: &Value) -> Vec<String> {
    body.as_array()
        .expect("an array of target groups")
        .iter()
        .map(|g| {
            let l = &g["labels"];
            format!(
                "{}/{}",
                l["__meta_roster_service"].as_str().unwrap(),
                l["__meta_roster_instance_id"].as_str().unwrap()
            )
        })
        .collect()
}

/// web-1 (IPv4, tags, metadata), web-2 (IPv6, no tags), db-1 (a ttl check
/// never reported: critical), cache-1 (warning).
async fn seeded() -> (Api, u64) {
    let api = Api::plain().await;
    api.register(
        "web",
        "web-1",
        json!({"address": "10.0.0.1", "port": 8080, "tags": ["v2", "eu"],
               "meta": {"zone": "eu-1", "app.kubernetes.io-name": "shop", "9lives": "cat"}}),
        None,
    )
    .await;
    api.register(
        "web",
        "web-2",
        json!({"address": "2001:DB8::7", "port": 9100}),
        None,
    )
    .await;
    api.register(
        "db",
        "db-1",
        json!({"address": "db-1.example.com", "port": 5432, "tags": ["v2"],
               "checks": [{"type": "ttl", "ttl": "1h"}]}),
        None,
    )
    .await;
    api.register(
        "cache",
        "cache-1",
        json!({"address": "10.0.0.9", "port": 6379,
               "checks": [{"id": "mem", "type": "ttl", "ttl": "1h"}]}),
        None,
    )
    .await;
    api.put(
        "/v1/services/cache/instances/cache-1/checks/mem/warn",
        json!({}),
    )
    .await;
    let index = api.get("/v1/services").await.index.unwrap();
    (api, index)
}

#[tokio::test]
async fn every_instance_is_a_group_with_its_labels() {
    let (api, index) = seeded().await;
    let r = api.get(TARGETS).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.content_type, "application/json");
    assert_eq!(
        r.index,
        Some(index),
        "X-Roster-Index is the catalog's index"
    );
    let expected = json!([
        {"targets": ["10.0.0.9:6379"], "labels": {
            "__meta_roster_service": "cache",
            "__meta_roster_instance_id": "cache-1",
            "__meta_roster_address": "10.0.0.9",
            "__meta_roster_port": "6379",
            "__meta_roster_tags": ",,",
            "__meta_roster_health": "warning",
            "__meta_roster_datacenter": "dc1"}},
        {"targets": ["db-1.example.com:5432"], "labels": {
            "__meta_roster_service": "db",
            "__meta_roster_instance_id": "db-1",
            "__meta_roster_address": "db-1.example.com",
            "__meta_roster_port": "5432",
            "__meta_roster_tags": ",v2,",
            "__meta_roster_health": "critical",
            "__meta_roster_datacenter": "dc1"}},
        {"targets": ["10.0.0.1:8080"], "labels": {
            "__meta_roster_service": "web",
            "__meta_roster_instance_id": "web-1",
            "__meta_roster_address": "10.0.0.1",
            "__meta_roster_port": "8080",
            "__meta_roster_tags": ",v2,eu,",
            "__meta_roster_health": "passing",
            "__meta_roster_datacenter": "dc1",
            "__meta_roster_metadata_zone": "eu-1",
            "__meta_roster_metadata_app_kubernetes_io_name": "shop",
            "__meta_roster_metadata_9lives": "cat"}},
        {"targets": ["[2001:db8::7]:9100"], "labels": {
            "__meta_roster_service": "web",
            "__meta_roster_instance_id": "web-2",
            "__meta_roster_address": "2001:db8::7",
            "__meta_roster_port": "9100",
            "__meta_roster_tags": ",,",
            "__meta_roster_health": "passing",
            "__meta_roster_datacenter": "dc1"}},
    ]);
    assert_eq!(r.body, expected);
    api.stop().await;
}

#[tokio::test]
async fn filters_by_service_tag_and_health() {
    let (api, _) = seeded().await;
    let cases: &[(&str, &[&str])] = &[
        ("?service=web", &["web/web-1", "web/web-2"]),
        // Comma-separated and repeated are the same; names are case-insensitive.
        ("?service=web,DB", &["db/db-1", "web/web-1", "web/web-2"]),
        (
            "?service=web&service=db",
            &["db/db-1", "web/web-1", "web/web-2"],
        ),
        ("?service=nothing-here", &[]),
        ("?tag=v2", &["db/db-1", "web/web-1"]),
        ("?tag=v2&tag=eu", &["web/web-1"]),
        ("?tag=eu&service=db", &[]),
        // Passing means served: warning stays, critical goes.
        (
            "?passing=true",
            &["cache/cache-1", "web/web-1", "web/web-2"],
        ),
        (
            "?passing=false",
            &["cache/cache-1", "db/db-1", "web/web-1", "web/web-2"],
        ),
        ("?passing&tag=v2", &["web/web-1"]),
    ];
    for (query, want) in cases {
        let r = api.get(&format!("{TARGETS}{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.body);
        assert_eq!(ids(&r.body), *want, "{query}");
    }
    // An instance in maintenance is critical.
    api.put(
        "/v1/services/web/instances/web-2/maintenance",
        json!({"enabled": true}),
    )
    .await;
    let r = api.get(&format!("{TARGETS}?service=web")).await;
    assert_eq!(r.body[1]["labels"]["__meta_roster_health"], "critical");
    let r = api.get(&format!("{TARGETS}?service=web&passing=1")).await;
    assert_eq!(ids(&r.body), ["web/web-1"]);
    api.stop().await;
}

#[tokio::test]
async fn a_deregistered_instance_leaves_and_the_index_moves() {
    let (api, index) = seeded().await;
    api.delete("/v1/services/web/instances/web-1").await;
    let r = api.get(&format!("{TARGETS}?service=web")).await;
    assert_eq!(ids(&r.body), ["web/web-2"]);
    assert!(r.index.unwrap() > index, "{:?} after {index}", r.index);
    api.stop().await;
}

#[tokio::test]
async fn bad_parameters_are_a_400_naming_the_field() {
    let (api, _) = seeded().await;
    let long_tag = "t".repeat(129);
    let cases = [
        ("?service=web_api", "service"),
        ("?service=", "service"),
        ("?service=web,", "service"),
        ("?service=-web", "service"),
        ("?tag=", "tag"),
        (&format!("?tag={long_tag}")[..], "tag"),
        ("?tag=a%0Ab", "tag"),
        ("?passing=maybe", "passing"),
        ("?index=soon", "index"),
        ("?index=1&wait=forever", "wait"),
    ];
    for (query, field) in cases {
        let r = api.get(&format!("{TARGETS}{query}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.body);
        assert_eq!(r.content_type, "application/problem+json", "{query}");
        assert_eq!(r.body["field"], field, "{query}: {}", r.body);
        assert_eq!(r.body["status"], 400, "{query}");
    }
    api.stop().await;
}

#[tokio::test]
async fn the_datacenter_label_is_the_configured_one() {
    let api = Api::start(Config {
        datacenter: "eu-west-2".into(),
        ..Config::default()
    })
    .await;
    api.register(
        "web",
        "web-1",
        json!({"address": "10.0.0.1", "port": 80}),
        None,
    )
    .await;
    let r = api.get(TARGETS).await;
    assert_eq!(
        r.body[0]["labels"]["__meta_roster_datacenter"], "eu-west-2",
        "{}",
        r.body
    );
    api.stop().await;
}

#[tokio::test]
async fn with_acls_on_reading_targets_needs_a_token_that_may_read() {
    let tokens = Tokens::parse(&format!(
        "[[tokens]]\nname = \"prometheus\"\nsecret = \"{READER}\"\npolicies = [\"read\"]\n\
         [[tokens]]\nname = \"deployer\"\nsecret = \"{WRITER}\"\npolicies = [\"write:web\"]\n"
    ))
    .unwrap();
    let api = Api::start(Config {
        acl: Some(tokens),
        ..Config::default()
    })
    .await;
    api.register(
        "web",
        "web-1",
        json!({"address": "10.0.0.1", "port": 80}),
        Some(WRITER),
    )
    .await;
    let none = api.get(TARGETS).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED, "{}", none.body);
    assert_eq!(none.content_type, "application/problem+json");
    let unknown = api.get_as(TARGETS, Some("no-such-secret-0123456789")).await;
    assert_eq!(unknown.status, StatusCode::FORBIDDEN, "{}", unknown.body);
    for secret in [READER, WRITER] {
        let r = api.get_as(TARGETS, Some(secret)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(ids(&r.body), ["web/web-1"]);
    }
    api.stop().await;
}

#[tokio::test]
async fn a_blocking_query_answers_with_the_change() {
    let (api, index) = seeded().await;
    // Unchanged: the hold runs out and the answer is the same set.
    let same = api
        .get(&format!("{TARGETS}?service=web&index={index}&wait=50ms"))
        .await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.index, Some(index));
    assert_eq!(ids(&same.body), ["web/web-1", "web/web-2"]);
    // A registration while the query waits (or before it arrived: then it
    // answers at once) is in the answer.
    let api = std::sync::Arc::new(api);
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            api.get(&format!("{TARGETS}?service=web&index={index}&wait=1m"))
                .await
        })
    };
    let written = api
        .register(
            "web",
            "web-3",
            json!({"address": "10.0.0.3", "port": 80}),
            None,
        )
        .await;
    let r = waiter.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.index, Some(written));
    assert_eq!(ids(&r.body), ["web/web-1", "web/web-2", "web/web-3"]);
    std::sync::Arc::into_inner(api)
        .expect("the waiter is done")
        .stop()
        .await;
}
