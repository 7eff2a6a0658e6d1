//! A registry restart costs callers nothing: discovery keeps its last good set
//! and merges the restarted registry's state into it, and registrations come
//! back within about a second. (Calls through the middleware across a
//! restart, with the registry and the backends as real processes, are in
//! callers.rs.)

use std::net::SocketAddr;
use std::time::Duration;

use roster_client::api::{Health, MaintenanceRequest, RegisterRequest};
use roster_client::{
    Discovery, Freshness, Registration, RegistrationStatus, RosterClient, ServiceState,
};
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

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

/// Whether the registry has `id` of `web` now.
async fn registered(client: &RosterClient, id: &str) -> bool {
    client.instance("web", id).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_back_within_a_second_of_a_restart_whatever_its_ttl() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let request = RegisterRequest {
        ttl: Some(Duration::from_secs(60)),
        ..instance(8080)
    };
    let registration = Registration::start(client.clone(), "web", "web-1", request)
        .await
        .unwrap();
    let addr = reg.server().local_addr();
    reg.stop().await;
    // Shorter than the heartbeat interval (20 s): no heartbeat fails during
    // the outage, so only noticing the registry go away brings it back soon.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reg = TestRegistry::start_at(addr, Config::default()).await;
    let restarted = Instant::now();
    // The old client came back only with its next heartbeat, 20 s later; the
    // bound is far from both that and the ~1 s expected, so a slow machine
    // does not fail it while the old behaviour still would.
    timeout(Duration::from_secs(10), async {
        while !registered(&client, "web-1").await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the registration is back well before its next heartbeat");
    println!(
        "registration back {:?} after the restart",
        restarted.elapsed()
    );
    // The registry has the instance before the registration has read the
    // answer to its PUT: its status follows a moment later.
    timeout(Duration::from_secs(10), async {
        while registration.status() != RegistrationStatus::Registered {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the registration reports itself registered");
    registration.shutdown().await.unwrap();
    assert!(!registered(&client, "web-1").await);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_registration_at_the_end_of_main_deregisters() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let url = reg.url().to_owned();
    // What `#[tokio::main]` does: a runtime runs main's future, main returns
    // (dropping the handle), then the runtime is dropped.
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let client = RosterClient::new(&url).unwrap();
            let request = RegisterRequest {
                ttl: Some(Duration::from_secs(60)),
                ..instance(8080)
            };
            let _registration = Registration::start(client, "web", "web-1", request)
                .await
                .unwrap();
        });
        drop(runtime);
    })
    .await
    .unwrap();
    // The lease has 60 s left: gone now means deregistered, not expired.
    assert!(
        !registered(&client, "web-1").await,
        "the instance outlived its process"
    );
    reg.stop().await;
}
