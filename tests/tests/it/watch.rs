//! Watches end to end: blocking queries and event streams against a real server,
//! through the real client.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use roster_client::api::{MaintenanceRequest, RegisterRequest};
use roster_client::{InstanceQuery, RosterClient};
use roster_registry::model::ServiceName;
use roster_tests::TestRegistry;
use tokio::sync::broadcast::error::TryRecvError;
use tokio::time::timeout;

/// Bounds a step that must finish; far longer than it needs, it only turns a hang
/// into a failure.
const GUARD: Duration = Duration::from_secs(60);

fn req(port: u16) -> RegisterRequest {
    RegisterRequest {
        address: Some("10.0.0.1".into()),
        port,
        ttl: Some(Duration::from_secs(600)),
        ..Default::default()
    }
}

/// Waits until `n` blocking queries are parked in the server.
async fn parked(reg: &TestRegistry, n: usize) {
    let line = format!("roster_watchers{{kind=\"blocking\"}} {n}");
    assert!(
        reg.wait_for_metric(&line, GUARD).await,
        "blocking query parked"
    );
}

/// The `index` field at the start of an event's JSON, read without decoding the rest.
fn event_index(data: &str) -> u64 {
    let rest = &data[data.find("\"index\":").expect("index field") + 8..];
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap()]
        .parse()
        .unwrap()
}

#[tokio::test]
async fn blocking_query_waits_out_its_wait_when_nothing_changes() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    let first = client
        .instances("web", &InstanceQuery::default())
        .await
        .unwrap();
    let again = timeout(
        GUARD,
        client.instances_blocking(
            "web",
            &InstanceQuery::default(),
            first.index,
            Duration::from_millis(300),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again, first, "same index, same data after the wait");
    reg.stop().await;
}

#[tokio::test]
async fn blocking_query_returns_on_a_change_of_its_service() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    let first = client
        .instances("web", &InstanceQuery::default())
        .await
        .unwrap();
    let c = client.clone();
    let waiting = tokio::spawn(async move {
        c.instances_blocking(
            "web",
            &InstanceQuery::default(),
            first.index,
            Duration::from_secs(300),
        )
        .await
    });
    parked(&reg, 1).await;
    client.register("web", "b", &req(81)).await.unwrap();
    // Returns long before its 5-minute wait: the change woke it.
    let after = timeout(GUARD, waiting).await.unwrap().unwrap().unwrap();
    assert!(after.index > first.index);
    assert_eq!(after.instances.len(), 2);
    reg.stop().await;
}

#[tokio::test]
async fn other_services_and_noop_heartbeats_do_not_wake_a_watcher() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    client.register("db", "d", &req(5432)).await.unwrap();
    let registry = reg.server().registry().clone();
    let mut sub = registry.subscribe(&ServiceName::parse("web").unwrap());
    let first = client
        .instances("web", &InstanceQuery::default())
        .await
        .unwrap();

    let c = client.clone();
    let waiting = tokio::spawn(async move {
        c.instances_blocking(
            "web",
            &InstanceQuery::default(),
            first.index,
            Duration::from_secs(1),
        )
        .await
    });
    parked(&reg, 1).await;
    client.register("db", "e", &req(5433)).await.unwrap();
    client.heartbeat("web", "a").await.unwrap();
    client.register("web", "a", &req(80)).await.unwrap(); // identical: a heartbeat too
    assert_eq!(
        sub.changes.try_recv().unwrap_err(),
        TryRecvError::Empty,
        "web's topic stayed silent"
    );
    let after = timeout(GUARD, waiting).await.unwrap().unwrap().unwrap();
    assert_eq!(
        after.index, first.index,
        "returned at the end of its wait, unchanged"
    );

    client.register("web", "b", &req(81)).await.unwrap();
    let event = sub
        .changes
        .try_recv()
        .expect("a change to web is published");
    assert!(event.index > first.index);
    reg.stop().await;
}

#[tokio::test]
async fn service_list_blocking_query_wakes_on_any_change() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let first = client.services().await.unwrap();
    assert_eq!(first.index, 1, "an empty catalog is at index 1");
    let c = client.clone();
    let waiting = tokio::spawn(async move {
        c.services_blocking(first.index, Duration::from_secs(300))
            .await
    });
    parked(&reg, 1).await;
    client.register("db", "d", &req(5432)).await.unwrap();
    let after = timeout(GUARD, waiting).await.unwrap().unwrap().unwrap();
    assert!(after.index > first.index);
    assert_eq!(after.services.len(), 1);
    reg.stop().await;
}

#[tokio::test]
async fn index_zero_or_from_the_future_answers_at_once() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    let q = InstanceQuery::default();
    let long = Duration::from_secs(300);
    let now = timeout(GUARD, client.instances_blocking("web", &q, 0, long))
        .await
        .unwrap()
        .unwrap();
    // An index above the current one means the catalog went backwards (a restore):
    // the client must get the current state, not wait.
    let back = timeout(
        GUARD,
        client.instances_blocking("web", &q, now.index + 1000, long),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(back.index, now.index);
    // A service with no instances answers with a stable index, so a client that
    // passes it back waits instead of spinning.
    let none = client.instances("nothing", &q).await.unwrap();
    assert!(none.index >= 1);
    let short = Duration::from_millis(200);
    let again = timeout(
        GUARD,
        client.instances_blocking("nothing", &q, none.index, short),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(again.index, none.index);
    reg.stop().await;
}

#[tokio::test]
async fn bad_blocking_parameters_name_the_field() {
    let reg = TestRegistry::start().await;
    for (query, field) in [
        ("index=-1", "index"),
        ("index=x", "index"),
        ("index=1&wait=soon", "wait"),
    ] {
        let resp = reqwest::get(format!("{}/v1/services/web?{query}", reg.url()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let problem: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(problem["field"], field, "{query}");
    }
    let resp = reqwest::get(format!("{}/v1/watch", reg.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let problem: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(problem["field"], "service");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_delivers_every_change_in_index_order() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let mut stream = client.watch(&["web"], None).await.unwrap();
    let first = timeout(GUARD, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        first.event.instances.len(),
        0,
        "the current (empty) set comes first"
    );
    for i in 0..50u16 {
        client
            .register("web", &format!("web-{i}"), &req(8000 + i))
            .await
            .unwrap();
    }
    let mut last = first.event.index;
    for n in 1..=50usize {
        let ev = timeout(GUARD, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(ev.event.index > last, "indexes increase");
        assert_eq!(ev.event.index, last + 1, "no change skipped");
        assert_eq!(ev.event.instances.len(), n);
        last = ev.event.index;
    }
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_resumes_from_last_event_id_without_resending() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    client.register("db", "d", &req(5432)).await.unwrap();
    let mut stream = client.watch(&["web", "db"], None).await.unwrap();
    let mut got = BTreeMap::new();
    for _ in 0..2 {
        let ev = timeout(GUARD, stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.insert(ev.event.service.clone(), ev.event.index);
    }
    assert_eq!(got.len(), 2, "one initial event per service");
    let token = stream.last_event_id().unwrap().to_owned();
    drop(stream);

    // While disconnected only web changes: the resumed stream sends web, not db.
    client.register("web", "b", &req(81)).await.unwrap();
    let mut resumed = client.watch(&["web", "db"], Some(&token)).await.unwrap();
    let ev = timeout(GUARD, resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(ev.event.service, "web");
    assert_eq!(ev.event.instances.len(), 2);
    client.register("db", "e", &req(5433)).await.unwrap();
    let ev = timeout(GUARD, resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        ev.event.service, "db",
        "db's next event is its change, not a resend"
    );
    assert_eq!(ev.event.instances.len(), 2);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_blocks_nobody_and_later_gets_a_consistent_snapshot() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let mut stalled = client.watch(&["web"], None).await.unwrap();
    timeout(GUARD, stalled.next_raw())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let mut live = client.watch(&["web"], None).await.unwrap();
    timeout(GUARD, live.next_raw())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // 300 changes whose events grow to about 1.2 MB: far more than the socket
    // buffers and the topic's 64-event buffer hold for the reader that stopped.
    let meta: BTreeMap<String, String> =
        (0..8).map(|k| (format!("k{k}"), "x".repeat(500))).collect();
    let bulky = RegisterRequest { meta, ..req(80) };
    let writes = async {
        for i in 0..300 {
            client
                .register("web", &format!("web-{i}"), &bulky)
                .await
                .unwrap();
        }
    };
    timeout(GUARD, writes)
        .await
        .expect("writers are never held up by a stalled watcher");
    let final_index = client.services().await.unwrap().index;

    // The live reader reaches the final state (it may skip states if it lags too).
    timeout(GUARD, async {
        while let Some(ev) = live.next_raw().await.unwrap() {
            if event_index(&ev.data) == final_index {
                return;
            }
        }
        panic!("live stream ended");
    })
    .await
    .expect("live reader sees the final change");

    // The stalled reader resumes: after whatever its buffers held, it gets a
    // complete, current snapshot instead of the events it missed.
    let last = timeout(GUARD, async {
        loop {
            let ev = stalled.next_raw().await.unwrap().expect("stream open");
            if event_index(&ev.data) == final_index {
                return ev.decode().unwrap();
            }
        }
    })
    .await
    .expect("stalled reader catches up");
    let all = InstanceQuery {
        all: true,
        ..Default::default()
    };
    assert_eq!(
        last.event.instances,
        client.instances("web", &all).await.unwrap().instances
    );
    let coalesced = reg
        .metric("roster_watch_coalesced_total")
        .await
        .expect("coalesced counter") as u64;
    assert!(
        coalesced >= 1,
        "the stalled reader was sent a snapshot: {coalesced}"
    );
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_watchers_all_see_the_last_change() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    for i in 0..10u16 {
        client
            .register("web", &format!("web-{i}"), &req(8000 + i))
            .await
            .unwrap();
    }
    let mut watchers = Vec::new();
    for _ in 0..1000 {
        let mut s = client.watch(&["web"], None).await.unwrap();
        timeout(GUARD, s.next_raw())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        watchers.push(s);
    }
    // 100 changes: maintenance on and off, the last one leaves web-3 in maintenance.
    for i in 0..100u16 {
        let m = MaintenanceRequest {
            enabled: i % 2 == 1,
            reason: Some(format!("change {i}")),
        };
        client
            .maintenance("web", &format!("web-{}", (i / 2) % 10), &m)
            .await
            .unwrap();
    }
    let all = InstanceQuery {
        all: true,
        ..Default::default()
    };
    let truth = Arc::new(client.instances("web", &all).await.unwrap());
    let tasks: Vec<_> = watchers
        .into_iter()
        .map(|mut s| {
            let truth = truth.clone();
            tokio::spawn(async move {
                loop {
                    let ev = s.next_raw().await.unwrap().expect("stream open");
                    if event_index(&ev.data) == truth.index {
                        let ev = ev.decode().unwrap();
                        assert_eq!(ev.event.instances, truth.instances);
                        return;
                    }
                }
            })
        })
        .collect();
    timeout(GUARD, async {
        for t in tasks {
            t.await.expect("watcher saw the final state");
        }
    })
    .await
    .expect("every watcher finished");
    reg.stop().await;
}
