//! The Consul-compatible API over real HTTP: JSON shapes compared with the
//! examples of Consul's API documentation, Consul's conventions (headers,
//! blocking queries, `?dc=`, plain-text errors, keys in any case), and both
//! APIs side by side on one port.

use std::time::Duration;

use reqwest::StatusCode;
use roster_client::RosterClient;
use roster_client::api::Health;
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use serde_json::{Value, json};

struct Consul {
    reg: TestRegistry,
    http: reqwest::Client,
}

impl Consul {
    async fn start() -> Consul {
        let config = Config {
            dns_addr: None,
            node_name: "node-a".into(),
            ..Config::default()
        };
        Consul {
            reg: TestRegistry::start_with(config).await,
            http: reqwest::Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.reg.url())
    }

    async fn get(&self, path: &str) -> (StatusCode, u64, Value) {
        let resp = self.http.get(self.url(path)).send().await.unwrap();
        let status = resp.status();
        let index = resp
            .headers()
            .get("x-consul-index")
            .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
        if status == StatusCode::OK {
            assert_eq!(resp.headers()["x-consul-knownleader"], "true");
            assert_eq!(resp.headers()["x-consul-lastcontact"], "0");
            assert!(index >= 1, "X-Consul-Index is at least 1");
            (status, index, resp.json().await.unwrap())
        } else {
            (status, index, Value::String(resp.text().await.unwrap()))
        }
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, String) {
        let resp = self
            .http
            .put(self.url(path))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    async fn register(&self, body: Value) {
        let (status, text) = self.put("/v1/agent/service/register", body).await;
        assert_eq!(status, StatusCode::OK, "{text}");
    }
}

/// Every key of Consul's documented example is in ours, with a value of the
/// same JSON type (objects compared recursively, arrays by their first item).
fn same_shape(doc: &Value, ours: &Value, path: &str) {
    match (doc, ours) {
        (Value::Object(d), Value::Object(o)) => {
            // User data (metadata maps): only the type is documented.
            let leaf = path.rsplit('.').next().unwrap_or("");
            if ["Meta", "NodeMeta", "ServiceMeta", "Definition", "Tags"].contains(&leaf) {
                return;
            }
            for (k, dv) in d {
                let ov = o
                    .get(k)
                    .unwrap_or_else(|| panic!("{path}.{k} is missing in {ours}"));
                same_shape(dv, ov, &format!("{path}.{k}"));
            }
        }
        (Value::Array(d), Value::Array(o)) => {
            if let (Some(d0), Some(o0)) = (d.first(), o.first()) {
                same_shape(d0, o0, &format!("{path}[0]"));
            }
        }
        (Value::Number(_), Value::Number(_))
        | (Value::String(_), Value::String(_))
        | (Value::Bool(_), Value::Bool(_))
        | (Value::Null, _) => {}
        _ => panic!("{path}: documented as {doc}, served as {ours}"),
    }
}

/// The fields of Consul's documented examples that roster serves (Connect,
/// Proxy and namespace/partition fields, which need Consul features roster does
/// not have, are left out).
fn doc_node() -> Value {
    json!({"ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "foobar",
           "Address": "10.1.10.12", "Datacenter": "dc1",
           "TaggedAddresses": {"lan": "10.1.10.12", "wan": "10.1.10.12"},
           "Meta": {"instance_type": "t2.medium"}, "CreateIndex": 1, "ModifyIndex": 2})
}

fn doc_check() -> Value {
    json!({"Node": "foobar", "CheckID": "service:redis", "Name": "Service 'redis' check",
           "Status": "passing", "Notes": "", "Output": "", "ServiceID": "redis",
           "ServiceName": "redis", "ServiceTags": ["primary"], "Type": "ttl",
           "Interval": "", "Timeout": "", "ExposedPort": 0, "Definition": {},
           "CreateIndex": 10, "ModifyIndex": 10})
}

fn doc_agent_service() -> Value {
    json!({"ID": "redis", "Service": "redis", "Tags": ["primary"], "Address": "10.1.10.12",
           "Meta": {"redis_version": "4.0"}, "Port": 8000,
           "Weights": {"Passing": 10, "Warning": 1}, "EnableTagOverride": false,
           "Datacenter": "dc1"})
}

fn doc_catalog_service() -> Value {
    json!({"ID": "40e4a748-2192-161a-0510-9bf59fe950b5", "Node": "foobar",
           "Address": "192.168.10.10", "Datacenter": "dc1",
           "TaggedAddresses": {"lan": "192.168.10.10", "wan": "10.0.10.10"},
           "NodeMeta": {"somekey": "somevalue"}, "CreateIndex": 51, "ModifyIndex": 51,
           "ServiceAddress": "172.17.0.3", "ServiceEnableTagOverride": false,
           "ServiceID": "32a2a47f7992:nodea:5000", "ServiceName": "foobar",
           "ServiceKind": "", "ServicePort": 5000, "ServiceMeta": {"foobar_meta_value": "baz"},
           "ServiceTags": ["tacos"], "ServiceWeights": {"Passing": 10, "Warning": 1}})
}

async fn seeded() -> Consul {
    let c = Consul::start().await;
    c.register(json!({
        "ID": "redis", "Name": "redis", "Tags": ["primary"], "Address": "10.1.10.12",
        "Port": 8000, "Meta": {"redis_version": "4.0"}, "Weights": {"Passing": 10, "Warning": 1},
        "Check": {"TTL": "30s", "Status": "passing"}
    }))
    .await;
    c
}

#[tokio::test]
async fn json_shapes_match_consuls_documentation() {
    let c = seeded().await;
    let (_, _, health) = c.get("/v1/health/service/redis").await;
    let entry =
        json!({"Node": doc_node(), "Service": doc_agent_service(), "Checks": [doc_check()]});
    same_shape(&json!([entry]), &health, "health/service");
    assert_eq!(health[0]["Service"]["Weights"]["Passing"], 10);
    assert_eq!(health[0]["Node"]["Node"], "node-a");

    let (_, _, catalog) = c.get("/v1/catalog/service/redis").await;
    same_shape(&json!([doc_catalog_service()]), &catalog, "catalog/service");
    assert_eq!(catalog[0]["ServiceAddress"], "10.1.10.12");
    assert_eq!(catalog[0]["ServicePort"], 8000);

    let (_, _, services) = c.get("/v1/catalog/services").await;
    assert_eq!(services, json!({"redis": ["primary"]}));
    let (_, _, nodes) = c.get("/v1/catalog/nodes").await;
    same_shape(&json!([doc_node()]), &nodes, "catalog/nodes");
    let (_, _, dcs) = c.get("/v1/catalog/datacenters").await;
    assert_eq!(dcs, json!(["dc1"]));

    let (_, _, checks) = c.get("/v1/health/checks/redis").await;
    same_shape(&json!([doc_check()]), &checks, "health/checks");
    assert_eq!(checks[0]["CheckID"], "service:redis");
    let (_, _, by_state) = c.get("/v1/health/state/passing").await;
    same_shape(&json!([doc_check()]), &by_state, "health/state");

    let (_, _, agent_services) = c.get("/v1/agent/services").await;
    same_shape(
        &json!({"redis": doc_agent_service()}),
        &agent_services,
        "agent/services",
    );
    let (_, _, agent_checks) = c.get("/v1/agent/checks").await;
    same_shape(
        &json!({"service:redis": doc_check()}),
        &agent_checks,
        "agent/checks",
    );

    let (_, _, me) = c.get("/v1/agent/self").await;
    same_shape(
        &json!({"Config": {"Datacenter": "dc1", "NodeName": "foobar", "NodeID": "x",
                           "Server": true, "Revision": "", "Version": "1.0"},
                "Member": {"Name": "foobar", "Addr": "10.1.10.12", "Port": 8301,
                           "Tags": {}, "Status": 1}}),
        &me,
        "agent/self",
    );
    let (_, _, leader) = c.get("/v1/status/leader").await;
    let addr = c.reg.url().trim_start_matches("http://").to_owned();
    assert_eq!(leader, json!(addr));
    let (_, _, peers) = c.get("/v1/status/peers").await;
    assert_eq!(peers, json!([addr]));
}

#[tokio::test]
async fn both_apis_share_the_catalog_and_the_port() {
    let c = Consul::start().await;
    let native = RosterClient::new(c.reg.url()).unwrap();
    native
        .register(
            "web",
            "web-1",
            &roster_client::api::RegisterRequest {
                address: Some("10.0.0.1".into()),
                port: 80,
                tags: vec!["v1".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    c.register(json!({"Name": "web", "ID": "web-2", "Address": "10.0.0.2", "Port": 80}))
        .await;
    let (_, _, rows) = c.get("/v1/catalog/service/web").await;
    let ids: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ServiceID"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-1", "web-2"]);
    let list = native.instances("web", &Default::default()).await.unwrap();
    assert_eq!(list.instances.len(), 2);
    // Unknown paths under either prefix stay 404s.
    assert_eq!(c.get("/v1/agent/nope").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        c.get("/v1/services/web/nope").await.0,
        StatusCode::NOT_FOUND
    );
    // Deregistering through one API is seen by the other.
    let (status, _) = c
        .put("/v1/agent/service/deregister/web-1", Value::Null)
        .await;
    assert_eq!(status, StatusCode::OK);
    let list = native.instances("web", &Default::default()).await.unwrap();
    assert_eq!(list.instances.len(), 1);
    let (status, text) = c
        .put("/v1/agent/service/deregister/web-1", Value::Null)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(text.starts_with("Unknown service ID"), "{text}");
}

#[tokio::test]
async fn ttl_checks_passing_filter_tags_and_maintenance() {
    let c = Consul::start().await;
    for (id, tags) in [("a", json!(["v1", "eu"])), ("b", json!(["v2", "eu"]))] {
        c.register(json!({
            "name": "api", "id": id, "address": format!("10.0.0.{}", id.len()), "port": 9000,
            "tags": tags,
            "checks": [{"check_id": format!("{id}-ttl"), "ttl": "30s"},
                       {"CheckID": format!("{id}-manual"), "TTL": 30_000_000_000u64, "Status": "passing"}]
        }))
        .await;
    }
    let passing_ids = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["Service"]["ID"].as_str().unwrap().to_owned())
            .collect()
    };
    // New TTL checks start critical.
    let (_, _, all) = c.get("/v1/health/service/api").await;
    assert_eq!(passing_ids(&all), ["a", "b"]);
    let (_, _, passing) = c.get("/v1/health/service/api?passing").await;
    assert!(passing_ids(&passing).is_empty());
    for id in ["a", "b"] {
        let (status, _) = c
            .put(
                &format!("/v1/agent/check/pass/{id}-ttl?note=ready"),
                Value::Null,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (_, _, passing) = c.get("/v1/health/service/api?passing=true").await;
    assert_eq!(passing_ids(&passing), ["a", "b"]);
    let check = passing[0]["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "a-ttl")
        .unwrap()
        .clone();
    assert_eq!(
        (check["Status"].as_str(), check["Output"].as_str()),
        (Some("passing"), Some("ready"))
    );
    // Warning is not passing; update sets status and output.
    let (status, _) = c
        .put(
            "/v1/agent/check/update/b-manual",
            json!({"Status": "warning", "Output": "slow"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, passing) = c.get("/v1/health/service/api?passing").await;
    assert_eq!(passing_ids(&passing), ["a"]);
    // Tags: every ?tag= must match.
    let (_, _, tagged) = c.get("/v1/health/service/api?tag=eu&tag=v2").await;
    assert_eq!(passing_ids(&tagged), ["b"]);
    let (_, _, filtered) = c
        .get("/v1/health/service/api?filter=Service.Tags%20contains%20%22v1%22")
        .await;
    assert_eq!(passing_ids(&filtered), ["a"]);
    let (status, _, text) = c
        .get("/v1/health/service/api?filter=Checks.Status%20is%20empty")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    // Maintenance: a critical `_service_maintenance:ID` check with the reason.
    let (status, _) = c
        .put(
            "/v1/agent/service/maintenance/a?enable=true&reason=patching",
            Value::Null,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, passing) = c.get("/v1/health/service/api?passing").await;
    assert!(passing_ids(&passing).is_empty());
    let (_, _, critical) = c.get("/v1/health/state/critical").await;
    let maint = critical
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["CheckID"] == "_service_maintenance:a")
        .expect("maintenance check");
    assert_eq!(maint["Notes"], "patching");
    let (status, text) = c.put("/v1/agent/service/maintenance/a", Value::Null).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_REQUEST, "Missing value for enable")
    );
    // Wrong check ids and states.
    let (status, _) = c.put("/v1/agent/check/pass/nope", Value::Null).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = c.get("/v1/health/state/sunny").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn blocking_queries_wait_for_a_change_and_indexes_never_go_back() {
    let c = Consul::start().await;
    c.register(json!({"Name": "db", "ID": "db-1", "Address": "10.0.0.9", "Port": 5432}))
        .await;
    let (_, index, _) = c.get("/v1/health/service/db").await;
    // No change: the query returns after its wait with the same index.
    let (_, same, _) = c
        .get(&format!("/v1/health/service/db?index={index}&wait=100ms"))
        .await;
    assert_eq!(same, index);
    // A change to another service does not wake it, a change to db does.
    let waiter = {
        let url = c.url(&format!("/v1/health/service/db?index={index}&wait=30s"));
        tokio::spawn(async move {
            let resp = reqwest::get(url).await.unwrap();
            let idx: u64 = resp.headers()["x-consul-index"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            (idx, resp.json::<Value>().await.unwrap())
        })
    };
    c.register(json!({"Name": "other", "Address": "10.0.0.8", "Port": 1}))
        .await;
    c.register(json!({"Name": "db", "ID": "db-2", "Address": "10.0.0.10", "Port": 5432}))
        .await;
    let (new_index, body) = tokio::time::timeout(Duration::from_secs(30), waiter)
        .await
        .expect("the blocking query returns after the change")
        .unwrap();
    assert!(new_index > index);
    assert_eq!(body.as_array().unwrap().len(), 2);
    let (_, list_index, _) = c.get("/v1/catalog/services").await;
    assert!(list_index >= new_index);
}

#[tokio::test]
async fn consul_conventions_for_bad_input() {
    let c = Consul::start().await;
    let (status, _, text) = c.get("/v1/catalog/services?dc=dc2").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(text, json!("No path to datacenter"));
    assert_eq!(c.get("/v1/catalog/services?dc=dc1").await.0, StatusCode::OK);
    for (body, needle) in [
        (json!({"ID": "x"}), "Name"),
        (json!({"Name": "bad_name", "Port": 1}), "service name"),
        (
            json!({"Name": "ok", "Port": 1, "Check": {"Args": ["/bin/true"], "Interval": "5s"}}),
            "not supported",
        ),
        (
            json!({"Name": "ok", "Port": 1, "Check": {"HTTP": "http://x/", "Interval": "soon"}}),
            "interval",
        ),
        (json!({"Name": "ok", "Port": 0}), "port"),
    ] {
        let resp = c
            .http
            .put(c.url("/v1/agent/service/register"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{body}");
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = resp.text().await.unwrap();
        assert!(text.contains(needle), "{body}: {text}");
    }
    // A body past the 64 KiB limit is a 413, as on the native API.
    let big = json!({"Name": "ok", "Port": 1, "Meta": {"blob": "x".repeat(70_000)}});
    let (status, text) = c.put("/v1/agent/service/register", big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
    let (_, _, services) = c.get("/v1/catalog/services").await;
    assert_eq!(services, json!({}), "nothing was registered");
}

#[tokio::test]
async fn deregister_critical_service_after_removes_the_instance() {
    let c = Consul::start().await;
    c.register(json!({
        "Name": "job", "ID": "job-1", "Address": "10.0.0.3", "Port": 1,
        "Check": {"TTL": "1s", "Status": "passing", "DeregisterCriticalServiceAfter": "1s"}
    }))
    .await;
    let native = RosterClient::new(c.reg.url()).unwrap();
    let inst = native.instance("job", "job-1").await.unwrap();
    assert_eq!(inst.health, Health::Passing);
    for _ in 0..500 {
        let (_, _, services) = c.get("/v1/catalog/services").await;
        if services.get("job").is_none() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("job-1 was not removed after its check stayed critical");
}
