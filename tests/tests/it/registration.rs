//! The client's `Registration` handle against a real registry: heartbeats keep
//! the instance alive, it comes back after the registry forgets it, and it goes
//! away on shutdown and on drop.

use std::time::Duration;

use roster_client::api::{Health, RegisterRequest};
use roster_client::{InstanceQuery, Registration, RegistrationStatus, RosterClient};
use roster_registry::config::Config;
use roster_tests::TestRegistry;

/// Polls until `check` holds; the deadline only turns a hang into a failure.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn request() -> RegisterRequest {
    RegisterRequest {
        address: Some("10.0.0.9".into()),
        port: 8080,
        ttl: Some(Duration::from_secs(1)),
        deregister_critical_after: Some(Duration::from_secs(1)),
        ..Default::default()
    }
}

async fn health(client: &RosterClient, id: &str) -> Option<Health> {
    let all = InstanceQuery {
        all: true,
        ..Default::default()
    };
    let list = client.instances("web", &all).await.ok()?;
    list.instances
        .into_iter()
        .find(|i| i.id == id)
        .map(|i| i.health)
}

async fn heartbeats(url: &str) -> u64 {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("roster_heartbeats_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_the_instance_passing_and_shutdown_deregisters() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let handle = Registration::start(client.clone(), "web", "web-1", request())
        .await
        .unwrap();
    assert_eq!(health(&client, "web-1").await, Some(Health::Passing));
    // Three TTLs later it is still passing, because heartbeats went through.
    let url = reg.url().to_owned();
    eventually("several heartbeats", || async {
        heartbeats(&url).await >= 6
    })
    .await;
    assert_eq!(health(&client, "web-1").await, Some(Health::Passing));
    assert_eq!(handle.status(), RegistrationStatus::Registered);
    handle.shutdown().await.unwrap();
    assert_eq!(
        health(&client, "web-1").await,
        None,
        "deregistered on shutdown"
    );
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_instance_registers_again() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let handle = Registration::start(client.clone(), "web", "web-1", request())
        .await
        .unwrap();
    // An operator (or an expiry) removes it: the next heartbeat gets 404 and
    // registers again.
    client.deregister("web", "web-1").await.unwrap();
    eventually("re-registered", || async {
        health(&client, "web-1").await == Some(Health::Passing)
    })
    .await;
    drop(handle);
    // Dropping the handle deregisters in the background.
    eventually("deregistered on drop", || async {
        health(&client, "web-1").await.is_none()
    })
    .await;
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_comes_back_empty_gets_the_instance_again() {
    let first = TestRegistry::start().await;
    let addr = first.server().local_addr();
    let client = RosterClient::new(first.url()).unwrap();
    let handle = Registration::start(client.clone(), "web", "web-1", request())
        .await
        .unwrap();
    first.stop().await;

    // While the registry is down the handle keeps trying.
    let mut status = handle.watch_status();
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| matches!(s, RegistrationStatus::Retrying { .. })),
    )
    .await
    .expect("the handle notices the registry is gone")
    .unwrap();

    // An in-memory registry comes back on the same address, empty.
    let second = TestRegistry::start_at(addr, Config::default()).await;
    eventually("registered with the new registry", || async {
        health(&client, "web-1").await == Some(Health::Passing)
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| *s == RegistrationStatus::Registered),
    )
    .await
    .expect("status back to registered")
    .unwrap();
    handle.shutdown().await.unwrap();
    assert_eq!(health(&client, "web-1").await, None);
    second.stop().await;
}

#[tokio::test]
async fn the_first_registration_must_succeed() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let bad = RegisterRequest {
        port: 0,
        ..request()
    };
    let err = Registration::start(client, "web", "web-1", bad)
        .await
        .unwrap_err();
    assert_eq!(err.problem().and_then(|p| p.field.as_deref()), Some("port"));
    reg.stop().await;
}

/// The answer to a registration is the instance as JSON, the same bytes a
/// read of it gives, with its type and index: 201 when new, 200 after.
#[tokio::test]
async fn a_registration_answers_with_the_instance_as_json() {
    let reg = TestRegistry::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/services/web/instances/web-1", reg.url());
    let body =
        r#"{"address":"10.0.0.9","port":8080,"ttl":"60s","tags":["v1"],"meta":{"zone":"a\"b"}}"#;
    let put = || {
        http.put(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let first = put().await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(first.headers()["content-type"], "application/json");
    let index = first.headers()[roster_client::api::INDEX_HEADER].clone();
    let written = first.bytes().await.unwrap();
    let inst: roster_client::api::Instance = serde_json::from_slice(&written).unwrap();
    assert_eq!((inst.port, inst.meta["zone"].as_str()), (8080, "a\"b"));
    assert_eq!(inst.create_index.to_string(), index.to_str().unwrap());

    let again = put().await.unwrap();
    assert_eq!(again.status(), 200);
    let read = http.get(&url).send().await.unwrap();
    assert_eq!(read.headers()["content-type"], "application/json");
    assert_eq!(read.bytes().await.unwrap(), written);
    reg.stop().await;
}

/// A registration without an address takes the caller's, over a real
/// socket: the server gives writes the connection's address (reads go
/// without it), whether the registration is answered by the direct route
/// or, with an escaped name, by the router.
#[tokio::test]
async fn a_registration_without_an_address_takes_the_callers() {
    let reg = TestRegistry::start().await;
    let http = reqwest::Client::new();
    for (path, id) in [
        ("/v1/services/web/instances/web-1", "web-1"),
        ("/v1/services/w%65b/instances/web-2", "web-2"),
    ] {
        let resp = http
            .put(format!("{}{path}", reg.url()))
            .header("content-type", "application/json")
            .body(r#"{"port":8080}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{path}");
        let inst: roster_client::api::Instance = resp.json().await.unwrap();
        assert_eq!((inst.id.as_str(), inst.address.as_str()), (id, "127.0.0.1"));
    }
    reg.stop().await;
}
