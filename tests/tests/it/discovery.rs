//! Client-side discovery against a real registry: the watched copy follows every
//! change, is shared, survives the registry going away for a while, and resumes
//! when it comes back.

use std::time::Duration;

use roster_client::api::{MaintenanceRequest, RegisterRequest};
use roster_client::{Discovery, RosterClient, ServiceState};
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

/// Waits on the change stream (no sleeping and hoping) until `pred` holds.
async fn until(
    rx: &mut watch::Receiver<ServiceState>,
    what: &str,
    pred: impl FnMut(&ServiceState) -> bool,
) {
    timeout(GUARD, rx.wait_for(pred))
        .await
        .unwrap_or_else(|_| panic!("never: {what}"))
        .unwrap();
}

fn ids(state: &ServiceState) -> Vec<&str> {
    state.healthy.iter().map(|i| i.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_follows_registrations_health_and_deregistrations() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register("web", "web-1", &instance(8080))
        .await
        .unwrap();
    let discovery = Discovery::new(client.clone());
    let web = discovery.service("web");
    timeout(GUARD, web.ready()).await.unwrap().unwrap();
    assert_eq!(web.instances().unwrap().len(), 1);
    assert!(
        web.same_as(&discovery.service("web")),
        "one copy per service"
    );

    let mut changes = web.changes();
    client
        .register("web", "web-2", &instance(8081))
        .await
        .unwrap();
    until(&mut changes, "web-2 appears", |s| {
        ids(s) == ["web-1", "web-2"]
    })
    .await;
    let maint = MaintenanceRequest {
        enabled: true,
        reason: None,
    };
    client.maintenance("web", "web-1", &maint).await.unwrap();
    until(&mut changes, "web-1 leaves the healthy set", |s| {
        ids(s) == ["web-2"] && s.all.len() == 2
    })
    .await;
    client.deregister("web", "web-2").await.unwrap();
    until(&mut changes, "web-2 is gone", |s| s.all.len() == 1).await;
    assert!(
        web.instances().unwrap().is_empty(),
        "only web-1, in maintenance, is left"
    );
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_outage_serves_the_last_set_until_it_is_too_old() {
    let first = TestRegistry::start().await;
    let addr = first.server().local_addr();
    let client = RosterClient::new(first.url()).unwrap();
    client
        .register("web", "web-1", &instance(8080))
        .await
        .unwrap();
    let discovery = Discovery::new(client.clone()).with_max_staleness(Duration::from_secs(2));
    let web = discovery.service("web");
    timeout(GUARD, web.ready()).await.unwrap().unwrap();

    let mut changes = web.changes();
    first.stop().await;
    until(&mut changes, "disconnect noticed", |s| !s.connected).await;
    assert_eq!(web.instances().unwrap().len(), 1, "stale but available");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(web.instances().is_err(), "older than the maximum staleness");

    // A registry comes back on the same address (in memory, so with other
    // indexes): the copy reconnects and takes its state, not the old one.
    let second = TestRegistry::start_at(addr, Config::default()).await;
    let client = RosterClient::new(second.url()).unwrap();
    client
        .register("web", "web-9", &instance(9090))
        .await
        .unwrap();
    until(&mut changes, "the new registry's state", |s| {
        s.connected && ids(s) == ["web-9"]
    })
    .await;
    assert_eq!(web.instances().unwrap().len(), 1);
    second.stop().await;
}
