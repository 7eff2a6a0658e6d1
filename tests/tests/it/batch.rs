//! Batch writes (`POST /v1/batch`) as a user sees them: a real server on
//! port 0, real HTTP, the real client.

use std::time::Duration;

use roster_client::api::{BatchOp, BatchResult, RegisterRequest};
use roster_client::{Error, InstanceQuery, RosterClient};
use roster_registry::acl::Tokens;
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use serde_json::{Value, json};

fn config() -> Config {
    Config {
        dns_addr: None,
        grpc_addr: None,
        ..Config::default()
    }
}

fn instance(port: u16) -> RegisterRequest {
    RegisterRequest {
        address: Some("10.2.0.1".into()),
        port,
        ttl: Some(Duration::from_secs(30)),
        ..RegisterRequest::default()
    }
}

fn registrations(service: &str, n: usize) -> Vec<BatchOp> {
    (0..n)
        .map(|i| {
            BatchOp::register(
                service,
                &format!("{service}-{i}"),
                instance(8000 + i as u16),
            )
        })
        .collect()
}

async fn count(client: &RosterClient, service: &str) -> usize {
    let all = InstanceQuery {
        all: true,
        ..InstanceQuery::default()
    };
    match client.instances(service, &all).await {
        Ok(list) => list.instances.len(),
        Err(Error::NotFound(_)) => 0,
        Err(e) => panic!("{e}"),
    }
}

/// Waits until the registry has loaded its catalog (`/ready`).
async fn wait_ready(url: &str) {
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match reqwest::get(format!("{url}/ready")).await {
                Ok(r) if r.status().is_success() => return,
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
    .expect("the registry gets ready");
}

/// Posts raw JSON to `/v1/batch`; returns the status, content type and body.
async fn post(url: &str, token: Option<&str>, body: &Value) -> (u16, String, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{url}/v1/batch"))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("the registry answers");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    (
        status,
        ct,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test]
async fn a_batch_is_applied_as_one_change_and_says_what_each_operation_did() {
    let reg = TestRegistry::start_with(config()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register("web", "web-0", &instance(8000))
        .await
        .unwrap();
    let before = client.services().await.unwrap().index;

    let mut ops = registrations("web", 100);
    ops.push(BatchOp::heartbeat("web", "web-1"));
    ops.push(BatchOp::deregister("web", "web-99"));
    ops.push(BatchOp::deregister("web", "never-registered"));
    let done = client.batch(&ops).await.expect("the batch is applied");
    assert_eq!(done.index, before + 1, "one index for the whole batch");
    assert_eq!(done.results.len(), 103);
    // web-0 was registered before with the same registration: unchanged.
    assert_eq!(done.results[0], BatchResult::Unchanged);
    assert!(
        done.results[1..99]
            .iter()
            .all(|r| *r == BatchResult::Created)
    );
    assert_eq!(done.results[100], BatchResult::Renewed);
    assert_eq!(
        done.results[101..],
        [BatchResult::Removed, BatchResult::Removed]
    );

    let web = client
        .instances("web", &InstanceQuery::default())
        .await
        .unwrap();
    assert_eq!(web.instances.len(), 99);
    assert_eq!(web.index, done.index);
    let one = client.instance("web", "web-42").await.unwrap();
    assert_eq!(
        (one.create_index, one.modify_index),
        (done.index, done.index)
    );
    reg.stop().await;
}

/// A batch of registrations only is answered from the count of instances
/// it created when every item made a new one; any item that did not (an id
/// twice in the batch) sends every answer back to the state.
#[tokio::test]
async fn registrations_alone_say_created_only_for_what_is_new() {
    let reg = TestRegistry::start_with(config()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    let done = client
        .batch(&registrations("api", 50))
        .await
        .expect("applied");
    assert_eq!(done.results, vec![BatchResult::Created; 50]);
    let one = client.instance("api", "api-7").await.unwrap();
    assert_eq!(one.create_index, done.index);

    // 49 new, and one id twice: created then changed by its second item.
    let mut ops = registrations("db", 49);
    ops.push(BatchOp::register("db", "db-3", instance(9999)));
    let done = client.batch(&ops).await.expect("applied");
    assert_eq!(done.results.len(), 50);
    assert!(
        done.results[..49]
            .iter()
            .all(|r| *r == BatchResult::Created)
    );
    // The second item's change landed in the same index as the creation,
    // and the instance is new: it reads as created too.
    assert_eq!(done.results[49], BatchResult::Created);
    assert_eq!(client.instance("db", "db-3").await.unwrap().port, 9999);

    // The same registrations again: nothing new, nothing changed.
    let done = client
        .batch(&registrations("api", 50))
        .await
        .expect("applied");
    assert_eq!(done.results, vec![BatchResult::Unchanged; 50]);
    // Half new, half known.
    let mut ops = registrations("api", 25);
    ops.extend((50..75).map(|i| BatchOp::register("api", &format!("api-{i}"), instance(7000))));
    let done = client.batch(&ops).await.expect("applied");
    assert_eq!(done.results[..25], vec![BatchResult::Unchanged; 25][..]);
    assert_eq!(done.results[25..], vec![BatchResult::Created; 25][..]);
}

#[tokio::test]
async fn one_bad_operation_in_a_hundred_applies_nothing_and_is_named() {
    let reg = TestRegistry::start_with(config()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register("db", "taken", &instance(5432))
        .await
        .unwrap();
    let before = client.services().await.unwrap().index;

    // A field the registration endpoint refuses.
    let mut ops = serde_json::to_value(json!({"ops": registrations("web", 100)})).unwrap();
    ops["ops"][42]["instance"]["port"] = json!(0);
    let (status, ct, body) = post(reg.url(), None, &ops).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(ct, "application/problem+json");
    assert_eq!(body["errors"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["errors"][0]["index"], 42);
    assert_eq!(body["errors"][0]["field"], "ops[42].instance.port");

    // A type the wire refuses, and an unknown op, both named.
    let mut ops = serde_json::to_value(json!({"ops": registrations("web", 100)})).unwrap();
    ops["ops"][7]["instance"]["port"] = json!("eighty");
    ops["ops"][63]["op"] = json!("upsert");
    let (status, _, body) = post(reg.url(), None, &ops).await;
    assert_eq!(status, 400, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["ops[7].instance.port", "ops[63].op"]);

    // Valid alone, but it would fail in the catalog: the id is another
    // service's, and a heartbeat names an unknown instance.
    let mut ops = registrations("web", 100);
    ops[10] = BatchOp::register("web", "taken", instance(80));
    ops.push(BatchOp::heartbeat("web", "ghost"));
    let err = client.batch(&ops).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let items = err.batch_errors();
    assert_eq!(items.len(), 2, "{err}");
    assert_eq!((items[0].index, items[0].status), (10, 409));
    assert_eq!(items[0].field.as_deref(), Some("ops[10].id"));
    assert_eq!((items[1].index, items[1].status), (100, 404));

    // Nothing of any of them was applied.
    assert_eq!(count(&client, "web").await, 0);
    assert_eq!(client.services().await.unwrap().index, before);
    reg.stop().await;
}

#[tokio::test]
async fn more_than_a_thousand_operations_are_refused() {
    let reg = TestRegistry::start_with(config()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    let err = client.batch(&registrations("web", 1001)).await.unwrap_err();
    let problem = err.problem().expect("a problem document");
    assert_eq!(problem.status, 400, "{err}");
    assert_eq!(problem.field.as_deref(), Some("ops"));
    assert!(
        problem.detail.contains("at most 1000"),
        "{}",
        problem.detail
    );
    // An empty batch is no batch either.
    let err = client.batch(&[]).await.unwrap_err();
    assert_eq!(err.problem().map(|p| p.status), Some(400));
    assert_eq!(count(&client, "web").await, 0);
    // A thousand is fine.
    let done = client.batch(&registrations("web", 1000)).await.unwrap();
    assert_eq!(done.results.len(), 1000);
    assert_eq!(count(&client, "web").await, 1000);
    reg.stop().await;
}

#[tokio::test]
async fn a_token_must_allow_every_service_of_the_batch() {
    let tokens = Tokens::parse(
        r#"
        [[tokens]]
        name = "web-writer"
        secret = "web-writer-secret-0123456789"
        policies = ["write:web"]
        [[tokens]]
        name = "ops"
        secret = "admin-secret-0123456789"
        policies = ["admin"]
        "#,
    )
    .unwrap();
    let reg = TestRegistry::start_with(Config {
        acl: Some(tokens),
        ..config()
    })
    .await;
    let writer = RosterClient::new(reg.url())
        .unwrap()
        .with_token("web-writer-secret-0123456789");
    let admin = RosterClient::new(reg.url())
        .unwrap()
        .with_token("admin-secret-0123456789");

    // web is allowed, db is not: 403 naming the db operation, nothing applied.
    let mut ops = registrations("web", 5);
    ops.push(BatchOp::register("db", "db-1", instance(5432)));
    let err = writer.batch(&ops).await.unwrap_err();
    assert!(matches!(err, Error::Denied(_)), "{err}");
    let items = err.batch_errors();
    assert_eq!(items.len(), 1, "{err}");
    assert_eq!((items[0].index, items[0].status), (5, 403));
    assert_eq!(items[0].field.as_deref(), Some("ops[5].service"));
    assert_eq!(
        items[0].detail,
        r#"token "web-writer" may not write service "db""#
    );
    // The name is authorized after validation: `WEB` is web.
    assert_eq!(count(&admin, "web").await, 0);
    assert_eq!(count(&admin, "db").await, 0);
    let done = writer
        .batch(&[BatchOp::register("WEB", "web-9", instance(80))])
        .await
        .expect("WEB is web");
    assert_eq!(done.results, [BatchResult::Created]);
    // Maintenance needs the admin permission, as its own endpoint does.
    let err = writer
        .batch(&[BatchOp::maintenance("web", "web-9", Some("upgrade".into()))])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Denied(_)), "{err}");
    admin
        .batch(&[BatchOp::maintenance("web", "web-9", Some("upgrade".into()))])
        .await
        .expect("the admin may");
    // Without a token: 401 before the body is looked at.
    let (status, _, _) = post(reg.url(), None, &json!({"ops": []})).await;
    assert_eq!(status, 401);
    reg.stop().await;
}

#[tokio::test]
async fn a_batch_survives_a_restart_with_a_data_dir() {
    let dir = roster_tests::process::temp_dir("batch-durable");
    let durable = || Config {
        data_dir: Some(dir.clone()),
        ..config()
    };
    let reg = TestRegistry::start_with(durable()).await;
    wait_ready(reg.url()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    let done = client.batch(&registrations("web", 200)).await.unwrap();
    let mut ops: Vec<BatchOp> = (0..50)
        .map(|i| BatchOp::deregister("web", &format!("web-{i}")))
        .collect();
    ops.push(BatchOp::maintenance("web", "web-60", Some("disk".into())));
    let second = client.batch(&ops).await.unwrap();
    assert_eq!(second.index, done.index + 1);
    // The answer came after the store had it: a stop now loses nothing.
    reg.stop().await;

    let reg = TestRegistry::start_with(durable()).await;
    wait_ready(reg.url()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    assert_eq!(count(&client, "web").await, 150);
    let inst = client.instance("web", "web-60").await.unwrap();
    assert_eq!(inst.modify_index, second.index);
    assert!(inst.maintenance.is_some(), "{inst:?}");
    assert!(client.instance("web", "web-3").await.is_err());
    reg.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn watchers_see_a_batch_as_one_change() {
    let reg = TestRegistry::start_with(config()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register("web", "seed", &instance(7999))
        .await
        .unwrap();
    let seen = client
        .instances("web", &InstanceQuery::default())
        .await
        .unwrap()
        .index;
    let watcher = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .instances_blocking(
                    "web",
                    &InstanceQuery::default(),
                    seen,
                    Duration::from_secs(60),
                )
                .await
        })
    };
    // The watcher is parked on the old index before the batch goes in.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let done = client.batch(&registrations("web", 100)).await.unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(30), watcher)
        .await
        .expect("the watcher wakes")
        .unwrap()
        .unwrap();
    // The first answer it gets already holds the whole batch.
    assert_eq!(woke.index, done.index);
    assert_eq!(woke.instances.len(), 101);
    reg.stop().await;
}

/// What registrars use: each operation succeeds or fails on its own, in as
/// few requests as the registry allows.
#[tokio::test]
async fn batch_each_fails_only_the_refused_operations() {
    let reg = TestRegistry::start_with(config()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register("db", "taken", &instance(5432))
        .await
        .unwrap();
    let mut ops = registrations("web", 20);
    ops[4] = BatchOp::register("web", "taken", instance(80));
    ops[9] = BatchOp::heartbeat("web", "ghost");
    // Deregistering what is not there succeeds, as `deregister` alone does.
    ops.push(BatchOp::deregister("web", "never-registered"));
    let results = client.batch_each(&ops).await;
    assert_eq!(results.len(), 21);
    let failed: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_err())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(failed, [4, 9]);
    assert!(
        matches!(results[9], Err(Error::NotFound(_))),
        "{:?}",
        results[9]
    );
    assert_eq!(count(&client, "web").await, 18);
    // Two requests: the refused batch, then the rest.
    let batches = reg
        .metric(r#"roster_http_requests_total{method="POST",route="/v1/batch",status="200"}"#)
        .await;
    assert_eq!(batches, Some(1.0));
    reg.stop().await;
}
