//! The catalog stream (`GET /v1/catalog/watch`) end to end: a real server on
//! port 0 and the real client. A snapshot first, then deltas that hold exactly
//! the change; filters; resuming; a reader lagging past the feed's buffer.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use roster_client::api::{CatalogEvent, Instance, MaintenanceRequest, RegisterRequest};
use roster_client::{
    CatalogEventKind, CatalogFilter, CatalogStream, CatalogWatchEvent, Discovery, InstanceQuery,
    RosterClient,
};
use roster_registry::acl::Tokens;
use roster_registry::config::Config;
use roster_tests::TestRegistry;
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

async fn next(stream: &mut CatalogStream) -> CatalogWatchEvent {
    timeout(GUARD, stream.next())
        .await
        .expect("an event comes")
        .expect("the stream reads")
        .expect("the stream stays open")
}

/// What a reader holds: services by name, instances by id.
type Model = BTreeMap<String, BTreeMap<String, Instance>>;

fn apply(model: &mut Model, ev: &CatalogWatchEvent) {
    if ev.kind == CatalogEventKind::Snapshot {
        model.clear();
    }
    for (name, change) in &ev.event.services {
        let svc = model.entry(name.clone()).or_default();
        for id in &change.remove {
            svc.remove(id);
        }
        for inst in &change.upsert {
            svc.insert(inst.id.clone(), inst.clone());
        }
        if svc.is_empty() {
            model.remove(name);
        }
    }
    for name in &ev.event.gone {
        model.remove(name);
    }
}

/// The registry's state of `services`, read with plain queries.
async fn truth(client: &RosterClient, services: &[&str]) -> Model {
    let all = InstanceQuery {
        all: true,
        ..Default::default()
    };
    let mut model = Model::new();
    for s in services {
        let got = client.instances(s, &all).await.unwrap();
        if !got.instances.is_empty() {
            model.insert(
                s.to_string(),
                got.instances
                    .into_iter()
                    .map(|i| (i.id.clone(), i))
                    .collect(),
            );
        }
    }
    model
}

fn ids(event: &CatalogEvent, service: &str) -> (Vec<String>, Vec<String>) {
    let change = &event.services[service];
    (
        change.upsert.iter().map(|i| i.id.clone()).collect(),
        change.remove.clone(),
    )
}

#[tokio::test]
async fn snapshot_then_deltas_hold_exactly_the_change() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    client.register("web", "b", &req(81)).await.unwrap();
    client.register("db", "c", &req(5432)).await.unwrap();

    let mut stream = client
        .watch_catalog(&CatalogFilter::all(), None)
        .await
        .unwrap();
    let epoch = stream.epoch().expect("epoch header");
    let first = next(&mut stream).await;
    assert_eq!(first.kind, CatalogEventKind::Snapshot);
    let index = client.services().await.unwrap().index;
    assert_eq!(first.event.index, index);
    assert_eq!(first.id.as_deref(), Some(&*format!("{epoch:x}.{index}")));
    let mut model = Model::new();
    apply(&mut model, &first);
    assert_eq!(model, truth(&client, &["web", "db"]).await);

    // A new instance: the delta holds it alone, not web's other instances.
    let d = client.register("web", "d", &req(82)).await.unwrap();
    let ev = next(&mut stream).await;
    assert_eq!(ev.kind, CatalogEventKind::Delta);
    assert_eq!(ev.event.index, d.modify_index);
    assert_eq!(ev.event.services.len(), 1);
    assert_eq!(ids(&ev.event, "web"), (vec!["d".to_owned()], vec![]));
    assert_eq!(ev.event.services["web"].upsert[0], d);
    assert_eq!(ev.event.services["web"].index, d.modify_index);
    assert!(ev.event.gone.is_empty());
    apply(&mut model, &ev);

    // A changed instance comes whole, with its new health.
    let maint = MaintenanceRequest {
        enabled: true,
        reason: Some("deploy".into()),
    };
    client.maintenance("web", "b", &maint).await.unwrap();
    let ev = next(&mut stream).await;
    assert_eq!(ids(&ev.event, "web"), (vec!["b".to_owned()], vec![]));
    assert_eq!(
        ev.event.services["web"].upsert[0].health,
        roster_client::api::Health::Critical
    );
    apply(&mut model, &ev);

    // A removed instance is named in `remove`.
    client.deregister("web", "a").await.unwrap();
    let ev = next(&mut stream).await;
    assert_eq!(ids(&ev.event, "web"), (vec![], vec!["a".to_owned()]));
    apply(&mut model, &ev);

    // A service that loses its last instance is `gone`.
    client.deregister("db", "c").await.unwrap();
    let ev = next(&mut stream).await;
    assert!(ev.event.services.is_empty(), "{:?}", ev.event);
    assert_eq!(ev.event.gone, ["db"]);
    apply(&mut model, &ev);

    assert_eq!(model, truth(&client, &["web", "db"]).await);
    assert_eq!(
        ev.id.as_deref(),
        Some(&*format!("{epoch:x}.{}", ev.event.index))
    );
    reg.stop().await;
}

#[tokio::test]
async fn prefix_and_set_filters_send_only_their_services() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web-a", "wa-1", &req(80)).await.unwrap();
    client.register("api", "api-1", &req(81)).await.unwrap();
    client.register("other", "o-1", &req(82)).await.unwrap();

    let mut by_prefix = client
        .watch_catalog(&CatalogFilter::prefix("web-"), None)
        .await
        .unwrap();
    let mut by_set = client
        .watch_catalog(&CatalogFilter::services(["api", "db"]), None)
        .await
        .unwrap();
    let snap = next(&mut by_prefix).await;
    assert_eq!(snap.event.services.keys().collect::<Vec<_>>(), ["web-a"]);
    let snap = next(&mut by_set).await;
    assert_eq!(
        snap.event.services.keys().collect::<Vec<_>>(),
        ["api"],
        "db does not exist yet"
    );

    // Changes outside both filters are not sent to either: the next event
    // each stream gets is its own service's change.
    client.register("other", "o-2", &req(83)).await.unwrap();
    client.register("web", "w-1", &req(84)).await.unwrap();
    client.register("web-b", "wb-1", &req(85)).await.unwrap();
    client.register("db", "db-1", &req(86)).await.unwrap();
    let ev = next(&mut by_prefix).await;
    assert_eq!(ev.event.services.keys().collect::<Vec<_>>(), ["web-b"]);
    assert_eq!(ids(&ev.event, "web-b"), (vec!["wb-1".to_owned()], vec![]));
    let ev = next(&mut by_set).await;
    assert_eq!(ev.event.services.keys().collect::<Vec<_>>(), ["db"]);

    // A filter is checked: a bad name or prefix is a 400 naming the field.
    let resp = reqwest::get(format!("{}/v1/catalog/watch?prefix=Web_", reg.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.text().await.unwrap().contains("prefix"));
    reg.stop().await;
}

#[tokio::test]
async fn resuming_sends_only_the_missed_deltas() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    let filter = CatalogFilter::services(["web", "db"]);
    let mut stream = client.watch_catalog(&filter, None).await.unwrap();
    let mut model = Model::new();
    apply(&mut model, &next(&mut stream).await);
    client.register("web", "b", &req(81)).await.unwrap();
    apply(&mut model, &next(&mut stream).await);
    let token = stream.last_event_id().unwrap().to_owned();
    drop(stream);

    // Missed while away: one instance added, one removed, a change elsewhere.
    client.register("db", "c", &req(5432)).await.unwrap();
    client.register("api", "x", &req(90)).await.unwrap();
    client.deregister("web", "a").await.unwrap();
    let mut resumed = client.watch_catalog(&filter, Some(&token)).await.unwrap();
    let ev = next(&mut resumed).await;
    assert_eq!(ev.kind, CatalogEventKind::Delta, "no snapshot: {ev:?}");
    assert_eq!(ids(&ev.event, "db"), (vec!["c".to_owned()], vec![]));
    apply(&mut model, &ev);
    let ev = next(&mut resumed).await;
    assert_eq!(ev.kind, CatalogEventKind::Delta);
    assert_eq!(ids(&ev.event, "web"), (vec![], vec!["a".to_owned()]));
    apply(&mut model, &ev);
    assert_eq!(model, truth(&client, &["web", "db"]).await);

    // Resuming at the current index sends nothing until the next change.
    let token = resumed.last_event_id().unwrap().to_owned();
    let mut current = client.watch_catalog(&filter, Some(&token)).await.unwrap();
    client.register("web", "z", &req(99)).await.unwrap();
    let ev = next(&mut current).await;
    assert_eq!(ev.kind, CatalogEventKind::Delta);
    assert_eq!(ids(&ev.event, "web"), (vec!["z".to_owned()], vec![]));

    // A token of another registry run gets a snapshot.
    let (_, index) = token.split_once('.').unwrap();
    let foreign = format!("{:x}.{index}", 0xdead_beef_u64);
    let mut other = client.watch_catalog(&filter, Some(&foreign)).await.unwrap();
    let ev = next(&mut other).await;
    assert_eq!(ev.kind, CatalogEventKind::Snapshot);
    let mut fresh = Model::new();
    apply(&mut fresh, &ev);
    assert_eq!(fresh, truth(&client, &["web", "db"]).await);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_lagging_past_the_buffer_gets_a_snapshot() {
    // The reader stops for as long as the writes take; on a loaded machine
    // that can pass the 15 s write timeout, which would cut the stream (a
    // different defence, tested in hostile.rs) instead of making it lag.
    let mut config = Config::default();
    config.serve.write_timeout = Duration::from_secs(600);
    let reg = TestRegistry::start_with(config).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    let mut stalled = client
        .watch_catalog(&CatalogFilter::all(), None)
        .await
        .unwrap();
    let first = next(&mut stalled).await;
    let old_token = first.id.clone().unwrap();
    let mut model = Model::new();
    apply(&mut model, &first);

    // Three times as many changes as the feed keeps (1024), each about 30 kB:
    // 90 MB, more than the feed's buffer plus the socket buffers (on Linux
    // loopback up to 32 MB to read and 4 MB to write) hold for the reader that
    // stopped.
    let history = roster_registry::watch::CATALOG_HISTORY;
    let writes = async {
        for i in 0..3 * history {
            let meta: BTreeMap<String, String> = (0..60)
                .map(|k| (format!("k{k}"), format!("{i}-{}", "x".repeat(490))))
                .collect();
            let bulky = RegisterRequest { meta, ..req(81) };
            client.register("web", "big", &bulky).await.unwrap();
        }
    };
    timeout(GUARD * 4, writes)
        .await
        .expect("writers are never held up by a stalled watcher");
    client.register("db", "last", &req(5432)).await.unwrap();
    let final_index = client.services().await.unwrap().index;

    // The stalled reader catches up through a snapshot, and what it then
    // holds is the registry's state.
    let mut snapshots = 0;
    timeout(GUARD, async {
        loop {
            let ev = next(&mut stalled).await;
            if ev.kind == CatalogEventKind::Snapshot {
                snapshots += 1;
            }
            apply(&mut model, &ev);
            if ev.event.index == final_index {
                return;
            }
        }
    })
    .await
    .expect("stalled reader catches up");
    assert!(snapshots >= 1, "the lagging reader was sent a snapshot");
    assert_eq!(model, truth(&client, &["web", "db"]).await);

    // A token older than the kept deltas also gets a snapshot.
    let mut old = client
        .watch_catalog(&CatalogFilter::all(), Some(&old_token))
        .await
        .unwrap();
    let ev = next(&mut old).await;
    assert_eq!(ev.kind, CatalogEventKind::Snapshot);
    assert_eq!(ev.event.index, final_index);

    let coalesced = reg
        .metric("roster_watch_coalesced_total")
        .await
        .expect("coalesced counter") as u64;
    assert!(coalesced >= 1, "counted as coalesced: {coalesced}");
    reg.stop().await;
}

#[tokio::test]
async fn catalog_stream_needs_read_permission_and_a_watcher_slot() {
    const READER: &str = "reader-secret-0123456789";
    let tokens = Tokens::parse(&format!(
        "[[tokens]]\nname = \"reader\"\nsecret = \"{READER}\"\npolicies = [\"read\"]\n"
    ))
    .unwrap();
    let mut config = Config {
        dns_addr: None,
        acl: Some(tokens),
        ..Config::default()
    };
    config.limits_http.max_watchers = 1;
    let reg = TestRegistry::start_with(config).await;
    let url = format!("{}/v1/catalog/watch", reg.url());

    let anonymous = reqwest::get(&url).await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

    let reader = RosterClient::new(reg.url()).unwrap().with_token(READER);
    let mut stream = reader
        .watch_catalog(&CatalogFilter::all(), None)
        .await
        .unwrap();
    let ev = next(&mut stream).await;
    assert_eq!(ev.kind, CatalogEventKind::Snapshot);

    // The stream holds the only watcher slot: another is refused, with Retry-After.
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "1");
    drop(stream);
    reg.stop().await;
}

/// Waits until the registry counts `n` open streams.
async fn streams(reg: &TestRegistry, n: usize) {
    let line = format!("roster_watchers{{kind=\"stream\"}} {n}");
    assert!(reg.wait_for_metric(&line, GUARD).await, "{n} streams open");
}

#[tokio::test]
async fn discovery_follows_many_services_on_one_stream() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "w-1", &req(80)).await.unwrap();
    client.register("db", "d-1", &req(5432)).await.unwrap();
    let discovery = Discovery::new(client.clone());
    let web = discovery.service("web");
    let db = discovery.service("db");
    let api = discovery.service("api");
    for h in [&web, &db] {
        timeout(GUARD, h.ready()).await.unwrap().unwrap();
    }
    assert_eq!(web.instances().unwrap()[0].id, "w-1");
    assert_eq!(db.instances().unwrap()[0].id, "d-1");
    streams(&reg, 1).await;

    // A change reaches its service's copy alone, through the one stream.
    let mut db_changes = db.changes();
    db_changes.borrow_and_update();
    client.register("web", "w-2", &req(81)).await.unwrap();
    client.deregister("web", "w-1").await.unwrap();
    client.register("api", "a-1", &req(90)).await.unwrap();
    let mut api_changes = api.changes();
    timeout(
        GUARD,
        api_changes.wait_for(|s| s.healthy.iter().any(|i| i.id == "a-1")),
    )
    .await
    .unwrap()
    .unwrap();
    let ids: Vec<String> = web
        .instances()
        .unwrap()
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(ids, ["w-2"], "the api change came after web's");
    assert!(!db_changes.has_changed().unwrap(), "db did not change");

    // One more service: the stream is reopened on the new set, still one.
    let cache = discovery.service("cache");
    client.register("cache", "c-1", &req(6379)).await.unwrap();
    let mut cache_changes = cache.changes();
    timeout(
        GUARD,
        cache_changes.wait_for(|s| s.healthy.iter().any(|i| i.id == "c-1")),
    )
    .await
    .unwrap()
    .unwrap();
    streams(&reg, 1).await;

    // A service that loses its last instance empties its copy.
    client.deregister("db", "d-1").await.unwrap();
    timeout(GUARD, db_changes.wait_for(|s| s.all.is_empty()))
        .await
        .unwrap()
        .unwrap();

    // Dropping a service keeps the stream; the others still follow it.
    drop(api);
    client.register("web", "w-3", &req(82)).await.unwrap();
    let mut web_changes = web.changes();
    timeout(
        GUARD,
        web_changes.wait_for(|s| s.healthy.iter().any(|i| i.id == "w-3")),
    )
    .await
    .unwrap()
    .unwrap();
    streams(&reg, 1).await;

    drop((web, db, cache));
    streams(&reg, 0).await;
    reg.stop().await;
}

/// A rough measurement, not a test (`--ignored` to run it, in release for
/// meaningful times): one catalog stream over 10,000 services, then 200
/// changes one at a time; prints the snapshot's size and, per change, the
/// bytes of its delta and the time from just before the write to the
/// moment the stream read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; prints numbers, asserts only that deltas stay small"]
async fn measure_one_change_among_ten_thousand_services() {
    const SERVICES: usize = 10_000;
    const CHANGES: usize = 200;
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let client = client.clone();
        tasks.spawn(async move {
            for s in (worker..SERVICES).step_by(16) {
                client
                    .register(&format!("svc-{s}"), &format!("svc-{s}-1"), &req(8000))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    eprintln!("registered {SERVICES} services in {:?}", started.elapsed());

    let mut stream = client
        .watch_catalog(&CatalogFilter::all(), None)
        .await
        .unwrap();
    let (kind, snap) = timeout(GUARD, stream.next_raw())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(kind, CatalogEventKind::Snapshot);
    eprintln!("snapshot: {} bytes", snap.data.len());

    let mut bytes = Vec::with_capacity(CHANGES);
    let mut latency = Vec::with_capacity(CHANGES);
    for i in 0..CHANGES {
        let service = format!("svc-{}", (i * 37) % SERVICES);
        let t0 = std::time::Instant::now();
        let inst = client
            .register(&service, &format!("{service}-2"), &req(9000 + i as u16))
            .await
            .unwrap();
        loop {
            let (_, ev) = timeout(GUARD, stream.next_raw())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if ev
                .data
                .starts_with(&format!("{{\"index\":{},", inst.modify_index))
            {
                latency.push(t0.elapsed());
                bytes.push(ev.data.len());
                break;
            }
        }
    }
    bytes.sort_unstable();
    latency.sort_unstable();
    let q = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    eprintln!(
        "RESULT services={SERVICES} changes={CHANGES} delta_bytes_median={} delta_bytes_max={} \
         latency_p50={:?} latency_p99={:?} latency_max={:?}",
        bytes[bytes.len() / 2],
        bytes[bytes.len() - 1],
        q(&latency, 0.5),
        q(&latency, 0.99),
        latency[latency.len() - 1],
    );
    assert!(
        bytes[bytes.len() - 1] * 100 < snap.data.len(),
        "a delta is a small part of the catalog"
    );
    reg.stop().await;
}

/// `GET /v1/catalog/changes`: one answer per request.
async fn changes(reg: &TestRegistry, query: &str) -> (u64, roster_client::api::CatalogChanges) {
    let resp = reqwest::get(format!("{}/v1/catalog/changes?{query}", reg.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{query}");
    let index = resp.headers()["x-roster-index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    (index, resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocking_form_merges_the_changes_since_an_index() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    client.register("web", "b", &req(81)).await.unwrap();
    let epoch = format!(
        "{:x}",
        client
            .watch_catalog(&CatalogFilter::all(), None)
            .await
            .unwrap()
            .epoch()
            .unwrap()
    );

    // Without an index: a snapshot at once.
    let (index, first) = changes(&reg, "prefix=web").await;
    assert!(first.snapshot);
    assert_eq!(first.event.services["web"].upsert.len(), 2);
    assert_eq!(index, first.event.index);

    // Three changes, one outside the filter, merged into one delta: b's
    // latest state, a removed, c added.
    let maint = MaintenanceRequest {
        enabled: true,
        reason: None,
    };
    client.maintenance("web", "b", &maint).await.unwrap();
    client.deregister("web", "a").await.unwrap();
    client.register("db", "x", &req(5432)).await.unwrap();
    let c = client.register("web", "c", &req(82)).await.unwrap();
    let (index, merged) = changes(&reg, &format!("prefix=web&index={index}&epoch={epoch}")).await;
    assert!(!merged.snapshot);
    assert_eq!(index, c.modify_index);
    assert_eq!(merged.event.services.keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(
        ids(&merged.event, "web"),
        (vec!["b".into(), "c".into()], vec!["a".into()])
    );

    // Up to date: the query waits for a matching change (db's is not one).
    let waiting = tokio::spawn({
        let url = reg.url().to_owned();
        let query = format!("prefix=web&index={index}&epoch={epoch}&wait=60s");
        async move {
            reqwest::get(format!("{url}/v1/catalog/changes?{query}"))
                .await
                .unwrap()
                .json::<roster_client::api::CatalogChanges>()
                .await
                .unwrap()
        }
    });
    client.register("db", "y", &req(5433)).await.unwrap();
    client.deregister("web", "c").await.unwrap();
    let got = timeout(GUARD, waiting).await.unwrap().unwrap();
    assert!(!got.snapshot);
    assert_eq!(ids(&got.event, "web"), (vec![], vec!["c".into()]));

    // Another run's epoch, or an index the registry no longer covers: a snapshot.
    let (_, other) = changes(&reg, &format!("prefix=web&index={index}&epoch=1")).await;
    assert!(other.snapshot);
    assert_eq!(other.event.services["web"].upsert.len(), 1);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_polls_the_blocking_form_from_answer_to_answer() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = || Config {
        dns_addr: None,
        ..Config::default()
    };
    let reg = TestRegistry::start_at(addr, config()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "a", &req(80)).await.unwrap();
    let filter = CatalogFilter::prefix("web");

    let first = client
        .catalog_changes(&filter, None, Duration::ZERO)
        .await
        .unwrap();
    assert!(first.snapshot);
    assert!(!first.epoch.is_empty(), "the answer names its run");
    assert_eq!(ids(&first.event, "web").0, vec!["a".to_owned()]);

    // Nothing new: an empty delta at the same index once the wait runs out.
    let idle = client
        .catalog_changes(&filter, Some(&first), Duration::from_millis(200))
        .await
        .unwrap();
    assert!(!idle.snapshot);
    assert!(idle.event.services.is_empty());
    assert_eq!(idle.event.index, first.event.index);
    assert_eq!(idle.epoch, first.epoch);

    // A change during the wait answers it with only that change.
    let polling = tokio::spawn({
        let client = client.clone();
        let filter = filter.clone();
        let idle = idle.clone();
        async move {
            client
                .catalog_changes(&filter, Some(&idle), Duration::from_secs(60))
                .await
        }
    });
    client.register("db", "x", &req(5432)).await.unwrap();
    let b = client.register("web", "b", &req(81)).await.unwrap();
    let got = timeout(GUARD, polling).await.unwrap().unwrap().unwrap();
    assert!(!got.snapshot);
    assert_eq!(got.event.index, b.modify_index);
    assert_eq!(ids(&got.event, "web"), (vec!["b".to_owned()], vec![]));
    assert!(!got.event.services.contains_key("db"), "outside the filter");

    // A restarted registry is another run: the old answer gets a snapshot,
    // not a delta counted from the other run's index.
    reg.stop().await;
    let reg = TestRegistry::start_at(addr, config()).await;
    client.register("web", "c", &req(82)).await.unwrap();
    let after = client
        .catalog_changes(&filter, Some(&got), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(after.snapshot);
    assert_ne!(after.epoch, got.epoch);
    assert_eq!(ids(&after.event, "web").0, vec!["c".to_owned()]);
    reg.stop().await;
}
