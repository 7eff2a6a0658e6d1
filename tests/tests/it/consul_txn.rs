//! Consul's `PUT /v1/txn` for service operations, with the JSON a Consul
//! client sends (py-consul's `txn.put`, consul-k8s): all or nothing, `Results`
//! and `Errors` with `OpIndex`, 409 when rolled back.

use reqwest::StatusCode;
use roster_client::{InstanceQuery, RosterClient};
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use serde_json::{Value, json};

async fn start() -> TestRegistry {
    TestRegistry::start_with(Config {
        dns_addr: None,
        grpc_addr: None,
        node_name: "node-a".into(),
        ..Config::default()
    })
    .await
}

/// Sends a transaction; returns the status, `X-Consul-Index` and the body
/// (JSON, or the text of a plain-text error).
async fn txn(reg: &TestRegistry, body: &Value) -> (StatusCode, u64, Value) {
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/txn", reg.url()))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let index = resp
        .headers()
        .get("x-consul-index")
        .map_or(0, |v| v.to_str().unwrap().parse().unwrap());
    let text = resp.text().await.unwrap();
    (
        status,
        index,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn set(id: &str, name: &str, port: u16) -> Value {
    json!({"Service": {"Verb": "set", "Node": "k8s-sync", "Service": {
        "ID": id, "Service": name, "Address": "10.3.0.1", "Port": port,
        "Tags": ["k8s"], "Meta": {"k8s-namespace": "default"}
    }}})
}

async fn ids(reg: &TestRegistry, service: &str) -> Vec<String> {
    let client = RosterClient::new(reg.url()).unwrap();
    let all = InstanceQuery {
        all: true,
        ..InstanceQuery::default()
    };
    match client.instances(service, &all).await {
        Ok(list) => list.instances.into_iter().map(|i| i.id).collect(),
        Err(roster_client::Error::NotFound(_)) => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn service_sets_apply_together_and_answer_with_results() {
    let reg = start().await;
    let (status, index, body) = txn(
        &reg,
        &json!([
            set("web-1", "web", 80),
            set("web-2", "web", 81),
            set("db-1", "db", 5432)
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Errors"], Value::Null);
    let results = body["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["Service"]["ID"], "web-1");
    assert_eq!(results[0]["Service"]["Service"], "web");
    assert_eq!(results[2]["Service"]["Port"], 5432);
    // One change: every result carries the transaction's index.
    for r in results {
        assert_eq!(r["Service"]["ModifyIndex"], index, "{r}");
    }
    assert_eq!(ids(&reg, "web").await, ["web-1", "web-2"]);

    // get reads (a transaction of reads only writes nothing), delete of a
    // service that is not there is no error and has no result.
    let (status, again, body) = txn(
        &reg,
        &json!([
            {"Service": {"Verb": "get", "Node": "k8s-sync", "Service": {"ID": "web-2"}}},
            {"Service": {"Verb": "delete", "Node": "k8s-sync", "Service": {"ID": "gone-long-ago"}}}
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(again, index, "reads leave the index");
    assert_eq!(body["Results"].as_array().unwrap().len(), 1);
    assert_eq!(body["Results"][0]["Service"]["Port"], 81);
    reg.stop().await;
}

#[tokio::test]
async fn a_failed_operation_rolls_back_the_transaction_with_409_and_errors() {
    let reg = start().await;
    let (_, first, _) = txn(&reg, &json!([set("web-1", "web", 80)])).await;

    // cas at a stale index: 409, the op named, and web-9 not registered.
    let mut cas = set("web-1", "web", 8080);
    cas["Service"]["Verb"] = json!("cas");
    cas["Service"]["Service"]["ModifyIndex"] = json!(first + 100);
    let (status, _, body) = txn(&reg, &json!([set("web-9", "web", 90), cas])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["Results"], Value::Null);
    let errors = body["Errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{body}");
    assert_eq!(errors[0]["OpIndex"], 1);
    assert!(
        errors[0]["What"].as_str().unwrap().contains("modify index"),
        "{body}"
    );
    assert_eq!(ids(&reg, "web").await, ["web-1"]);

    // The same cas at the right index applies; delete-cas likewise.
    let mut cas = set("web-1", "web", 8080);
    cas["Service"]["Verb"] = json!("cas");
    cas["Service"]["Service"]["ModifyIndex"] = json!(first);
    let (status, second, body) = txn(&reg, &json!([cas])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["Results"][0]["Service"]["Port"], 8080);
    let stale = json!({"Service": {"Verb": "delete-cas", "Node": "n", "Service": {"ID": "web-1", "ModifyIndex": first}}});
    let (status, _, _) = txn(&reg, &json!([stale])).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let fresh = json!({"Service": {"Verb": "delete-cas", "Node": "n", "Service": {"ID": "web-1", "ModifyIndex": second}}});
    let (status, _, body) = txn(&reg, &json!([fresh])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(ids(&reg, "web").await.is_empty());

    // cas with ModifyIndex 0 only creates.
    let mut create = set("web-5", "web", 85);
    create["Service"]["Verb"] = json!("cas");
    create["Service"]["Service"]["ModifyIndex"] = json!(0);
    let (status, _, body) = txn(&reg, &json!([create.clone()])).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = txn(&reg, &json!([create])).await;
    assert_eq!(status, StatusCode::CONFLICT, "exists now");

    // get of a missing service fails the transaction, writes included.
    let missing = json!({"Service": {"Verb": "get", "Node": "n", "Service": {"ID": "nobody"}}});
    let (status, _, body) = txn(&reg, &json!([set("web-6", "web", 86), missing])).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert_eq!(ids(&reg, "web").await, ["web-5"]);
    reg.stop().await;
}

#[tokio::test]
async fn kv_and_unknown_operations_are_refused_by_name() {
    let reg = start().await;
    let kv = json!({"KV": {"Verb": "set", "Key": "config/x", "Value": "eA=="}});
    let bad_verb = json!({"Service": {"Verb": "upsert", "Node": "n", "Service": {"ID": "a", "Service": "web"}}});
    let bad_port = json!({"Service": {"Verb": "set", "Node": "n", "Service": {"ID": "b", "Service": "web", "Port": 0}}});
    let (status, _, body) = txn(
        &reg,
        &json!([set("web-1", "web", 80), kv, bad_verb, bad_port]),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let errors = body["Errors"].as_array().unwrap();
    let ops: Vec<u64> = errors
        .iter()
        .map(|e| e["OpIndex"].as_u64().unwrap())
        .collect();
    assert_eq!(ops, [1, 2, 3], "{body}");
    assert!(
        errors[0]["What"]
            .as_str()
            .unwrap()
            .contains("KV operations are not supported")
    );
    assert!(
        errors[2]["What"].as_str().unwrap().contains("port"),
        "{body}"
    );
    assert!(ids(&reg, "web").await.is_empty(), "nothing applied");

    // Not an array: 400 in plain text, as Consul answers.
    let (status, _, body) = txn(&reg, &json!({"Service": {}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body.as_str().unwrap().contains("Failed to parse body"),
        "{body}"
    );
    // Over the limit of operations: 413.
    let many: Vec<Value> = (0..1001)
        .map(|i| set(&format!("w{i}"), "web", 80))
        .collect();
    let (status, _, _) = txn(&reg, &Value::Array(many)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    reg.stop().await;
}

#[tokio::test]
async fn every_operation_is_checked_against_the_token() {
    let tokens = roster_registry::acl::Tokens::parse(
        r#"
        [[tokens]]
        name = "web-writer"
        secret = "web-writer-secret-0123456789"
        policies = ["write:web"]
        "#,
    )
    .unwrap();
    let reg = TestRegistry::start_with(Config {
        dns_addr: None,
        grpc_addr: None,
        acl: Some(tokens),
        ..Config::default()
    })
    .await;
    let send = |body: Value| {
        reqwest::Client::new()
            .put(format!("{}/v1/txn", reg.url()))
            .header("x-consul-token", "web-writer-secret-0123456789")
            .body(body.to_string())
            .send()
    };
    let resp = send(json!([set("web-1", "web", 80), set("db-1", "db", 5432)]))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["Errors"][0]["OpIndex"], 1, "{body}");
    assert!(
        body["Errors"][0]["What"]
            .as_str()
            .unwrap()
            .starts_with("Permission denied")
    );
    let resp = send(json!([set("web-1", "web", 80)])).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    reg.stop().await;
}
