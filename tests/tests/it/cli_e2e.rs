//! The `roster` CLI against a real registry: register, list, heartbeat, and watch
//! an instance expire on the real clock.

use std::time::Duration;

use clap::Parser;
use roster_cli::{Cli, Command, run_client};
use roster_client::api::Health;
use roster_client::{InstanceQuery, RosterClient};
use roster_tests::TestRegistry;

/// Runs `roster --registry URL ARGS...` through the CLI code path, returning stdout.
async fn roster(url: &str, args: &[&str]) -> Result<String, String> {
    let head = ["roster", "--registry", url];
    let argv = head.iter().chain(args);
    let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
    let Command::Client(command) = &cli.command else {
        return Err(format!("not a client command: {args:?}"));
    };
    let mut out = Vec::new();
    run_client(&cli.global, command, &mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8(out).expect("utf-8 output"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_list_and_expire_through_the_cli() {
    let reg = TestRegistry::start().await;
    let url = reg.url().to_owned();

    let out = roster(
        &url,
        &[
            "register",
            "web",
            "web-1",
            "--port",
            "8080",
            "--address",
            "10.0.0.7",
            "--tag",
            "v2",
            "--meta",
            "zone=eu-1",
            "--ttl",
            "1s",
            "--deregister-critical-after",
            "1s",
        ],
    )
    .await
    .unwrap();
    assert!(
        out.contains("web-1") && out.contains("10.0.0.7:8080") && out.contains("passing"),
        "{out}"
    );
    roster(
        &url,
        &[
            "register",
            "web",
            "web-2",
            "--port",
            "8081",
            "--address",
            "10.0.0.8",
        ],
    )
    .await
    .unwrap();
    roster(
        &url,
        &[
            "register",
            "db",
            "db-1",
            "--port",
            "5432",
            "--address",
            "10.0.0.9",
        ],
    )
    .await
    .unwrap();

    let services = roster(&url, &["services"]).await.unwrap();
    let lines: Vec<&str> = services.lines().collect();
    assert_eq!(lines.len(), 3, "{services}");
    assert!(lines[0].starts_with("SERVICE"));
    assert!(
        lines[1].starts_with("db ") && lines[2].starts_with("web "),
        "{services}"
    );
    assert!(
        lines[2].contains(" 2 ") && lines[2].ends_with("v2"),
        "{services}"
    );

    let json = roster(&url, &["--json", "instances", "web", "--tag", "v2"])
        .await
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(parsed["instances"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(parsed["instances"][0]["meta"]["zone"], "eu-1");

    roster(&url, &["heartbeat", "web", "web-1"]).await.unwrap();
    let err = roster(&url, &["heartbeat", "web", "nobody"])
        .await
        .unwrap_err();
    assert!(err.contains("not found"), "{err}");
    let err = roster(&url, &["register", "Bad_Name", "x", "--port", "1"])
        .await
        .unwrap_err();
    assert!(err.contains("service"), "{err}");

    // web-1 stops heartbeating: it turns critical after 1 s and is removed 1 s later.
    // Poll the real API; the deadline only bounds a failure, it is not a timing check.
    let client = RosterClient::new(&url).unwrap();
    let all = InstanceQuery {
        all: true,
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let web = client.instances("web", &all).await.unwrap();
        if !web.instances.iter().any(|i| i.id == "web-1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "web-1 never expired: {web:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let web = client.instances("web", &all).await.unwrap();
    assert_eq!(web.instances.len(), 1);
    assert_eq!(web.instances[0].id, "web-2");
    assert_eq!(
        web.instances[0].health,
        Health::Passing,
        "web-2 has no TTL and never expires"
    );

    // The instance went through critical before removal: both counters moved.
    let metrics = reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("roster_lease_expirations_total 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("roster_instances_reaped_total 1\n"),
        "{metrics}"
    );

    let out = roster(&url, &["deregister", "web", "web-2"]).await.unwrap();
    assert!(out.contains("deregistered web/web-2"), "{out}");
    // Deregistering again is not an error for the CLI: the instance is gone either way.
    roster(&url, &["deregister", "web", "web-2"]).await.unwrap();
    let services = roster(&url, &["--json", "services"]).await.unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&services).unwrap();
    let names: Vec<&str> = parsed["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db"]);
    reg.stop().await;
}

#[tokio::test]
async fn cli_reports_an_unreachable_registry() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = roster(&format!("http://127.0.0.1:{port}"), &["services"])
        .await
        .unwrap_err();
    assert!(err.contains("unavailable"), "{err}");
}

#[tokio::test]
async fn register_with_checks_through_the_cli() {
    let reg = TestRegistry::start().await;
    let url = reg.url().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap().to_string();
    roster(
        &url,
        &[
            "register",
            "db",
            "db-1",
            "--port",
            "5432",
            "--address",
            "127.0.0.1",
            "--tcp-check",
            &target,
            "--http-check",
            "http://127.0.0.1:1/health",
            "--check-interval",
            "100ms",
        ],
    )
    .await
    .unwrap();
    let client = RosterClient::new(&url).unwrap();
    let inst = client.instance("db", "db-1").await.unwrap();
    let checks: Vec<(&str, Option<Duration>)> = inst
        .checks
        .iter()
        .map(|c| (c.id.as_str(), c.interval))
        .collect();
    let interval = Some(Duration::from_millis(100));
    assert_eq!(checks, [("http", interval), ("tcp", interval)]);
    // The TCP check passes once it has run; the HTTP one (nothing listens on
    // port 1) stays critical, and so does the instance.
    for _ in 0..500 {
        let inst = client.instance("db", "db-1").await.unwrap();
        if inst.checks[1].status == Health::Passing {
            assert_eq!(inst.checks[0].status, Health::Critical);
            assert_eq!(inst.health, Health::Critical);
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the tcp check never passed");
}

#[tokio::test]
async fn the_cli_sends_its_token() {
    let tokens = roster_registry::acl::Tokens::parse(
        r#"
        [[tokens]]
        name = "ops"
        secret = "cli-test-secret-0123456789"
        policies = ["admin"]
        "#,
    )
    .unwrap();
    let reg = TestRegistry::start_with(roster_registry::config::Config {
        acl: Some(tokens),
        dns_addr: None,
        ..Default::default()
    })
    .await;
    let url = reg.url().to_owned();
    let args = [
        "register",
        "web",
        "web-1",
        "--port",
        "80",
        "--address",
        "10.0.0.1",
    ];
    let err = roster(&url, &args).await.unwrap_err();
    assert!(err.contains("401"), "{err}");
    let with_token: Vec<&str> = ["--token", "cli-test-secret-0123456789"]
        .into_iter()
        .chain(args)
        .collect();
    let out = roster(&url, &with_token).await.unwrap();
    assert!(out.contains("web-1"), "{out}");
}
