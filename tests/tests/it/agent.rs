//! `roster agent` against a real registry: registering a file's services,
//! running their checks locally, applying an edited file, deregistering on exit.

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use roster_cli::agent::{Agent, parse};
use roster_client::RosterClient;
use roster_client::api::Health;
use roster_registry::checks::probe::NetProber;
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use tokio_util::sync::CancellationToken;

async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up waiting for {what}");
}

/// An HTTP target answering the status code held in `status`.
async fn target(status: Arc<AtomicU16>) -> std::net::SocketAddr {
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let status = status.clone();
            async move {
                let code = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                (code, "checked")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn registry() -> (TestRegistry, RosterClient) {
    let reg = TestRegistry::start_with(Config {
        dns_addr: None,
        ..Config::default()
    })
    .await;
    let client = RosterClient::new(reg.url()).unwrap();
    (reg, client)
}

async fn ids(client: &RosterClient, service: &str) -> Vec<(String, u16)> {
    let q = roster_client::InstanceQuery {
        all: true,
        ..Default::default()
    };
    client
        .instances(service, &q)
        .await
        .unwrap()
        .instances
        .into_iter()
        .map(|i| (i.id, i.port))
        .collect()
}

#[tokio::test]
async fn registers_checks_locally_applies_edits_and_deregisters() {
    let (reg, client) = registry().await;
    let status = Arc::new(AtomicU16::new(200));
    let addr = target(status.clone()).await;
    let file = |port: u16, with_db: bool| {
        let mut text = format!(
            r#"
            [[service]]
            name = "billing"
            id = "billing-1"
            address = "127.0.0.1"
            port = {port}
            ttl = "10s"
              [[service.check]]
              http = "http://{addr}/health"
              interval = "100ms"
              timeout = "100ms"
            "#
        );
        if with_db {
            text.push_str("[[service]]\nname = \"db\"\nid = \"db-1\"\nport = 5432\n");
        }
        parse(&text).unwrap()
    };
    let mut agent = Agent::new(client.clone(), Arc::new(NetProber::new()));
    agent.apply(file(8080, true)).await.unwrap();
    assert_eq!(agent.instances(), ["billing-1", "db-1"]);
    // Both services went to the registry in one batch.
    let batches = reg
        .metric(r#"roster_http_requests_total{method="POST",route="/v1/batch",status="200"}"#)
        .await;
    assert_eq!(batches, Some(1.0));

    // The check runs in the agent and reaches the registry as a TTL check.
    let check = until("the check to pass", || async {
        let inst = client.instance("billing", "billing-1").await.ok()?;
        let c = inst.checks.into_iter().find(|c| c.id == "http")?;
        (c.status == Health::Passing).then_some(c)
    })
    .await;
    assert_eq!(
        check.output,
        // The status line only: bodies stay out of check output by default.
        format!("GET http://{addr}/health: 200 OK")
    );
    status.store(503, Ordering::SeqCst);
    let check = until("the check to fail", || async {
        let inst = client.instance("billing", "billing-1").await.ok()?;
        let c = inst.checks.into_iter().find(|c| c.id == "http")?;
        (c.status == Health::Critical).then_some(c)
    })
    .await;
    assert!(check.output.contains("503"), "{}", check.output);
    let inst = client.instance("billing", "billing-1").await.unwrap();
    assert_eq!(
        inst.health,
        Health::Critical,
        "the instance follows its check"
    );

    // An edited file: db is gone, billing moved to another port.
    agent.apply(file(9090, false)).await.unwrap();
    assert_eq!(ids(&client, "db").await, []);
    assert_eq!(
        ids(&client, "billing").await,
        [("billing-1".to_owned(), 9090)]
    );

    agent.shutdown().await;
    assert_eq!(ids(&client, "billing").await, []);
}

#[tokio::test]
async fn run_reloads_on_sighup_and_deregisters_on_exit() {
    let (_reg, client) = registry().await;
    let dir = std::env::temp_dir().join(format!("roster-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("services.toml");
    std::fs::write(&path, "[[service]]\nname = \"a\"\nid = \"a-1\"\nport = 1\n").unwrap();
    let agent = Agent::new(client.clone(), Arc::new(NetProber::new()));
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let path = path.clone();
        let cancel = cancel.clone();
        async move { agent.run(&path, cancel).await }
    });
    until("a-1 registered", || async {
        (!ids(&client, "a").await.is_empty()).then_some(())
    })
    .await;
    // A broken edit is refused and changes nothing; a good one is applied.
    std::fs::write(&path, "[[service]]\nname = \"b\"\nport = \"x\"\n").unwrap();
    hangup();
    std::fs::write(&path, "[[service]]\nname = \"b\"\nid = \"b-1\"\nport = 2\n").unwrap();
    hangup();
    until("b-1 registered and a-1 gone", || async {
        (ids(&client, "a").await.is_empty() && !ids(&client, "b").await.is_empty()).then_some(())
    })
    .await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(ids(&client, "b").await, []);
    std::fs::remove_dir_all(dir).unwrap();
}

fn hangup() {
    let status = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(std::process::id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}
