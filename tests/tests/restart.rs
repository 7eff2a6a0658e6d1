//! A registry restart costs callers nothing: discovery keeps its last good set
//! and merges the restarted registry's state into it, registrations come
//! back within about a second, and calls through the middleware keep
//! succeeding.

use std::net::SocketAddr;
use std::time::Duration;

use roster_client::api::{Health, MaintenanceRequest, RegisterRequest};
use roster_client::{Discovery, Freshness, RosterClient, ServiceState};
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use tokio::sync::watch;
use tokio::time::timeout;

const GUARD: Duration = Duration::from_secs(30);

fn instance(port: u16) -> RegisterRequest {
    RegisterRequest {
        address: Some("10.0.0.1".into()),
        port,
        ..Default::default()
    }
}

fn ids(state: &ServiceState) -> Vec<&str> {
    state.healthy.iter().map(|i| i.id.as_str()).collect()
}

/// Waits on the change stream until `pred` holds, asserting on every state
/// on the way that the copy never shrinks below `floor` healthy instances.
async fn until(
    rx: &mut watch::Receiver<ServiceState>,
    what: &str,
    floor: usize,
    mut pred: impl FnMut(&ServiceState) -> bool,
) -> ServiceState {
    let mut seen = rx.clone();
    let last = timeout(
        GUARD,
        seen.wait_for(|s| {
            assert!(
                s.healthy.len() >= floor,
                "the copy shrank to {:?} while waiting for {what}",
                ids(s)
            );
            pred(s)
        }),
    )
    .await
    .map(|r| r.map(|s| s.clone()));
    match last {
        Ok(state) => state.unwrap(),
        Err(_) => panic!("never: {what}; last {:?}", *rx.borrow()),
    }
}

async fn restart(reg: TestRegistry) -> TestRegistry {
    let addr: SocketAddr = reg.server().local_addr();
    reg.stop().await;
    TestRegistry::start_at(addr, Config::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_merges_a_restarted_registry_into_its_last_good_set() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    for (id, port) in [("web-1", 1), ("web-2", 2), ("web-3", 3)] {
        client.register("web", id, &instance(port)).await.unwrap();
    }
    let discovery = Discovery::new(client.clone()).with_settle(Duration::from_secs(3));
    let web = discovery.service("web");
    timeout(GUARD, web.ready()).await.unwrap().unwrap();
    let mut changes = web.changes();
    let before = until(&mut changes, "the first set", 0, |s| {
        s.freshness == Freshness::Fresh && ids(s) == ["web-1", "web-2", "web-3"]
    })
    .await;

    // The in-memory registry restarts empty.
    let reg = restart(reg).await;
    let s = until(&mut changes, "the new run noticed", 3, |s| {
        s.connected && s.epoch != before.epoch
    })
    .await;
    assert_eq!(s.freshness, Freshness::Settling, "{s:?}");
    assert_eq!(&s.stale[..], ["web-1", "web-2", "web-3"]);
    assert_eq!(
        web.instances().unwrap().len(),
        3,
        "the last good set serves"
    );

    // One instance comes back, one is new, one comes back critical.
    client.register("web", "web-1", &instance(1)).await.unwrap();
    client.register("web", "web-4", &instance(4)).await.unwrap();
    client.register("web", "web-3", &instance(3)).await.unwrap();
    let maintenance = MaintenanceRequest {
        enabled: true,
        reason: None,
    };
    client
        .maintenance("web", "web-3", &maintenance)
        .await
        .unwrap();
    let s = until(&mut changes, "the merge", 2, |s| {
        ids(s) == ["web-1", "web-2", "web-4"] && s.all.len() == 4
    })
    .await;
    assert_eq!(&s.stale[..], ["web-2"], "only web-2 is held over");
    assert!(
        s.all
            .iter()
            .any(|i| i.id == "web-3" && i.health == Health::Critical),
        "web-3 is critical in the new run: dropped from the healthy set at once"
    );
    assert!(
        s.index < before.index || s.epoch != before.epoch,
        "a lower index comes with another epoch"
    );
    assert!(s.version > before.version);

    // web-2 never comes back: dropped when its settle period is over.
    let s = until(&mut changes, "web-2's settle period ends", 2, |s| {
        ids(s) == ["web-1", "web-4"]
    })
    .await;
    assert_eq!(s.freshness, Freshness::Fresh);
    assert!(s.stale.is_empty());
    reg.stop().await;
}
