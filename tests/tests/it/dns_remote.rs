//! `roster dns`: a DNS front end in its own process space, following a registry
//! over HTTP, and answering from its copy while the registry is away.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use roster_cli::remote::RemoteDns;
use roster_client::RosterClient;
use roster_client::api::{MaintenanceRequest, RegisterRequest};
use roster_tests::TestRegistry;
use roster_tests::dns::{answer_data, ask, query, udp};
use tokio_util::sync::CancellationToken;

fn reg(address: &str, port: u16) -> RegisterRequest {
    RegisterRequest {
        address: Some(address.into()),
        port,
        ..Default::default()
    }
}

/// Asks over UDP until `want` comes back (changes travel registry -> HTTP ->
/// copy, so a query may land before the copy is updated), then checks that UDP and
/// TCP agree. The deadline only turns a hang into a failure.
async fn eventually(addr: std::net::SocketAddr, name: &str, ty: RecordType, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = answer_data(&udp(addr, &query(name, ty)).await);
        if got == want {
            assert_eq!(
                ask(addr, name, ty).await,
                want,
                "{name}: UDP and TCP agree once settled"
            );
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name}: still {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_front_end_follows_the_registry_and_survives_its_absence() {
    let registry = TestRegistry::start().await;
    let client = RosterClient::new(registry.url()).unwrap();
    client
        .register("web", "web-1", &reg("10.0.0.1", 8080))
        .await
        .unwrap();

    let shutdown = CancellationToken::new();
    let front = RemoteDns::start(
        client.clone(),
        "127.0.0.1:0".parse().unwrap(),
        roster_dns::DnsConfig::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let dns = front.local_addr();
    // The first copy is taken before the port opens: the very first answer is right.
    assert_eq!(
        ask(dns, "web.service.roster.", RecordType::A).await,
        ["10.0.0.1"]
    );

    // Registrations, maintenance and new services reach the copy.
    client
        .register("web", "web-2", &reg("10.0.0.2", 8080))
        .await
        .unwrap();
    eventually(
        dns,
        "web.service.roster.",
        RecordType::A,
        &["10.0.0.1", "10.0.0.2"],
    )
    .await;
    let off = MaintenanceRequest {
        enabled: true,
        reason: None,
    };
    client.maintenance("web", "web-1", &off).await.unwrap();
    eventually(dns, "web.service.roster.", RecordType::A, &["10.0.0.2"]).await;
    client
        .register("db", "db-1", &reg("10.0.1.1", 5432))
        .await
        .unwrap();
    eventually(dns, "db.service.roster.", RecordType::A, &["10.0.1.1"]).await;
    client.deregister("db", "db-1").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let reply = udp(dns, &query("db.service.roster.", RecordType::A)).await;
        if reply.metadata.response_code == ResponseCode::NXDomain {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "db never went away: {reply:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The registry goes away: DNS keeps answering from the last copy.
    registry.stop().await;
    for _ in 0..3 {
        assert_eq!(
            ask(dns, "web.service.roster.", RecordType::A).await,
            ["10.0.0.2"]
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    front.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_restart_is_settled_not_adopted_empty() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let registry = TestRegistry::start_at(addr, roster_registry::config::Config::default()).await;
    let client = RosterClient::new(registry.url()).unwrap();
    client
        .register("web", "web-1", &reg("10.0.0.1", 8080))
        .await
        .unwrap();
    client
        .register("web", "web-2", &reg("10.0.0.2", 8080))
        .await
        .unwrap();
    client
        .register("db", "db-1", &reg("10.0.1.1", 5432))
        .await
        .unwrap();
    // More history than the new run will have when the front end sees it.
    for k in 0..10 {
        let m = MaintenanceRequest {
            enabled: k % 2 == 0,
            reason: None,
        };
        client.maintenance("db", "db-1", &m).await.unwrap();
    }
    let settle = Duration::from_secs(6);
    let shutdown = CancellationToken::new();
    let front = RemoteDns::start_with_settle(
        client.clone(),
        "127.0.0.1:0".parse().unwrap(),
        roster_dns::DnsConfig::default(),
        settle,
        shutdown.clone(),
    )
    .await
    .unwrap();
    let dns = front.local_addr();
    eventually(
        dns,
        "web.service.roster.",
        RecordType::A,
        &["10.0.0.1", "10.0.0.2"],
    )
    .await;

    // The registry restarts empty (in memory) on the same address; web-1
    // comes back in maintenance, a new web-3 registers, web-2 and db not yet.
    registry.stop().await;
    let registry = TestRegistry::start_at(addr, roster_registry::config::Config::default()).await;
    client
        .register("web", "web-3", &reg("10.0.0.3", 8080))
        .await
        .unwrap();
    client
        .register("web", "web-1", &reg("10.0.0.1", 8080))
        .await
        .unwrap();
    let off = MaintenanceRequest {
        enabled: true,
        reason: None,
    };
    client.maintenance("web", "web-1", &off).await.unwrap();
    // Settling: the new run's own instances (web-1 critical leaves, web-3
    // joins) beside the held ones (web-2, db). (Seen after the settle period
    // this would read 10.0.0.3 alone and fail.)
    eventually(
        dns,
        "web.service.roster.",
        RecordType::A,
        &["10.0.0.2", "10.0.0.3"],
    )
    .await;
    assert_eq!(
        ask(dns, "db.service.roster.", RecordType::A).await,
        ["10.0.1.1"]
    );
    // Settled: the registry's state alone.
    eventually(dns, "web.service.roster.", RecordType::A, &["10.0.0.3"]).await;
    let reply = udp(dns, &query("db.service.roster.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    drop(registry);
    shutdown.cancel();
    front.wait().await.unwrap();
}
