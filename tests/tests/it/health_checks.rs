//! Active and TTL health checks against real local targets: an HTTP server that
//! answers a script of statuses, a TCP listener that closes, a gRPC health
//! server that flips, a TLS server with a self-signed certificate, and a server
//! that never answers. Every transition is observed through the real API or the
//! watch stream; nothing asserts on wall-clock time.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use roster_client::RosterClient;
use roster_client::api::{
    Check, CheckDefinition, Health, MaintenanceRequest, Problem, RegisterRequest,
};
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Polls `f` every 20 ms until it returns `Some`, for at most 30 s (a bound on
/// a broken test, not a timing assertion).
async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..1500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(ms(20)).await;
    }
    panic!("gave up waiting for {what}");
}

async fn check_of(client: &RosterClient, service: &str, id: &str, check: &str) -> Check {
    let inst = client.instance(service, id).await.expect("instance exists");
    inst.checks
        .into_iter()
        .find(|c| c.id == check)
        .unwrap_or_else(|| panic!("no check {check}"))
}

async fn wait_status(
    client: &RosterClient,
    service: &str,
    id: &str,
    check: &str,
    want: Health,
) -> Check {
    until(&format!("{id}/{check} to be {want}"), || async {
        let c = check_of(client, service, id, check).await;
        (c.status == want).then_some(c)
    })
    .await
}

/// The default configuration, with response bodies in check output (off by
/// default): these tests follow the scripted bodies.
fn with_bodies() -> Config {
    let mut config = Config::default();
    config.probe.output_body = true;
    config
}

fn register_body(port: u16, checks: Vec<CheckDefinition>) -> RegisterRequest {
    RegisterRequest {
        address: Some("127.0.0.1".into()),
        port,
        checks,
        ..Default::default()
    }
}

/// What the scripted HTTP target answers next.
#[derive(Clone, Copy, Debug)]
enum Step {
    Status(u16),
    Hang,
}

/// An HTTP server answering a script of statuses, one per request, with the
/// body `step N`; after the script it answers `then` with the body `steady`.
#[derive(Clone)]
struct Scripted {
    script: Arc<Mutex<VecDeque<Step>>>,
    then: Arc<Mutex<Step>>,
    served: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(script: &[Step], then: Step) -> (Scripted, SocketAddr) {
        let target = Scripted {
            script: Arc::new(Mutex::new(script.iter().copied().collect())),
            then: Arc::new(Mutex::new(then)),
            served: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/health", axum::routing::get(Self::answer))
            .with_state(target.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (target, addr)
    }

    async fn answer(State(t): State<Scripted>) -> (StatusCode, String) {
        let n = t.served.fetch_add(1, Ordering::SeqCst) + 1;
        let (step, body) = match t.script.lock().unwrap().pop_front() {
            Some(step) => (step, format!("step {n}")),
            None => (*t.then.lock().unwrap(), "steady".to_owned()),
        };
        match step {
            Step::Status(code) => (StatusCode::from_u16(code).unwrap(), body),
            Step::Hang => std::future::pending().await,
        }
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }
}

/// Anti-flap thresholds with Consul's semantics, seen from a watcher: two
/// successes before passing, three failures before critical, and a blip of
/// two failures never shows. A result equal to the last one writes nothing.
#[tokio::test]
async fn http_check_thresholds_and_transitions() {
    use Step::Status;
    let script = [
        Status(200), // 1: first success, below success_before_passing
        Status(200), // 2: passing
        Status(500), // 3
        Status(500), // 4
        Status(200), // 5: the blip is over, counters reset
        Status(500), // 6
        Status(500), // 7
        Status(500), // 8: third failure in a row: critical
        Status(429), // 9: a warning result counts as a success
        Status(429), // 10: warning
    ];
    let (target, addr) = Scripted::start(&script, Status(200)).await;
    let reg = TestRegistry::start_with(with_bodies()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    let mut watch = client.watch(&["web"], None).await.unwrap();
    let check = CheckDefinition {
        http: Some(format!("http://{addr}/health")),
        interval: Some(ms(100)),
        success_before_passing: 2,
        failures_before_critical: 3,
        ..Default::default()
    };
    client
        .register("web", "web-1", &register_body(addr.port(), vec![check]))
        .await
        .unwrap();
    // Follow the check through every event until it settles on "steady".
    let mut seen: Vec<(Health, String)> = Vec::new();
    while seen.last().is_none_or(|(_, out)| !out.ends_with("steady")) {
        let ev = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .expect("an event within 30 s")
            .unwrap()
            .expect("stream open");
        let Some(inst) = ev.event.instances.first() else {
            continue;
        };
        let c = &inst.checks[0];
        let last_line = c.output.lines().last().unwrap_or("").to_owned();
        if seen.last() != Some(&(c.status, last_line.clone())) {
            seen.push((c.status, last_line));
        }
    }
    let expected = [
        (Health::Critical, ""),
        (Health::Passing, "step 2"),
        (Health::Critical, "step 8"),
        (Health::Warning, "step 10"),
        (Health::Passing, "steady"),
    ];
    let seen_ref: Vec<(Health, &str)> = seen.iter().map(|(h, o)| (*h, o.as_str())).collect();
    assert_eq!(seen_ref, expected);
    let c = check_of(&client, "web", "web-1", "http").await;
    assert!(
        c.output
            .starts_with(&format!("GET http://{addr}/health: 200 OK")),
        "{}",
        c.output
    );
    // Steady results change nothing: the instance's index stays put while the
    // target keeps being probed.
    let index = client.instance("web", "web-1").await.unwrap().modify_index;
    let served = target.served();
    until("three more probes", || async {
        (target.served() >= served + 3).then_some(())
    })
    .await;
    assert_eq!(
        client.instance("web", "web-1").await.unwrap().modify_index,
        index
    );
}

/// A target slower than the timeout is critical, with the timeout in the output.
#[tokio::test]
async fn http_check_timeout_is_critical() {
    let (_target, addr) = Scripted::start(&[Step::Status(200)], Step::Hang).await;
    let reg = TestRegistry::start_with(with_bodies()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    let check = CheckDefinition {
        http: Some(format!("http://{addr}/health")),
        interval: Some(ms(200)),
        timeout: Some(ms(100)),
        ..Default::default()
    };
    client
        .register("web", "slow", &register_body(addr.port(), vec![check]))
        .await
        .unwrap();
    let passing = wait_status(&client, "web", "slow", "http", Health::Passing).await;
    assert!(passing.output.ends_with("step 1"), "{}", passing.output);
    let c = wait_status(&client, "web", "slow", "http", Health::Critical).await;
    assert_eq!(c.output, "timed out after 100ms");
    // Critical instances leave the default (healthy-only) query.
    let healthy = client.instances("web", &Default::default()).await.unwrap();
    assert!(healthy.instances.is_empty());
}

/// TCP: passing while something listens, critical once it closes, passing again
/// when it comes back.
#[tokio::test]
async fn tcp_check_follows_the_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let check = CheckDefinition {
        tcp: Some(addr.to_string()),
        interval: Some(ms(100)),
        ..Default::default()
    };
    client
        .register("db", "db-1", &register_body(addr.port(), vec![check]))
        .await
        .unwrap();
    let c = wait_status(&client, "db", "db-1", "tcp", Health::Passing).await;
    assert_eq!(c.output, format!("TCP connect {addr}: success"));
    drop(listener);
    let c = wait_status(&client, "db", "db-1", "tcp", Health::Critical).await;
    assert!(c.output.contains("refused"), "{}", c.output);
    let _again = TcpListener::bind(addr).await.unwrap();
    wait_status(&client, "db", "db-1", "tcp", Health::Passing).await;
}

/// gRPC: the standard health protocol, flipped by the server between SERVING
/// and NOT_SERVING for one service name.
#[tokio::test]
async fn grpc_check_follows_the_serving_status() {
    use tonic_health::ServingStatus;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("roster.Store", ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let check = CheckDefinition {
        grpc: Some(format!("{addr}/roster.Store")),
        interval: Some(ms(100)),
        ..Default::default()
    };
    client
        .register("store", "s-1", &register_body(addr.port(), vec![check]))
        .await
        .unwrap();
    let c = wait_status(&client, "store", "s-1", "grpc", Health::Passing).await;
    assert_eq!(c.output, format!("gRPC {addr}/roster.Store: SERVING"));
    reporter
        .set_service_status("roster.Store", ServingStatus::NotServing)
        .await;
    let c = wait_status(&client, "store", "s-1", "grpc", Health::Critical).await;
    assert_eq!(c.output, format!("gRPC {addr}/roster.Store: NOT_SERVING"));
    reporter
        .set_service_status("roster.Store", ServingStatus::Serving)
        .await;
    wait_status(&client, "store", "s-1", "grpc", Health::Passing).await;
}

/// HTTPS against a self-signed certificate: refused by default, accepted with
/// `tls_skip_verify`.
#[tokio::test]
async fn https_check_verifies_certificates_unless_told_not_to() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                let _ = tls.read(&mut buf).await;
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    let reg = TestRegistry::start_with(with_bodies()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    let url = format!("https://localhost:{port}/health");
    let strict = CheckDefinition {
        id: Some("strict".into()),
        http: Some(url.clone()),
        interval: Some(ms(100)),
        initial_status: Some(Health::Passing),
        ..Default::default()
    };
    let lax = CheckDefinition {
        id: Some("lax".into()),
        tls_skip_verify: true,
        initial_status: None,
        ..strict.clone()
    };
    client
        .register("secure", "s-1", &register_body(port, vec![strict, lax]))
        .await
        .unwrap();
    let c = wait_status(&client, "secure", "s-1", "strict", Health::Critical).await;
    assert!(c.output.contains("certificate"), "{}", c.output);
    let c = wait_status(&client, "secure", "s-1", "lax", Health::Passing).await;
    assert_eq!(c.output, format!("GET {url}: 200 OK\nok"));
    // The instance is as healthy as its worst check.
    let inst = client.instance("secure", "s-1").await.unwrap();
    assert_eq!(inst.health, Health::Critical);
}

async fn put_check(reg: &TestRegistry, path: &str, body: &str) -> (u16, Option<Problem>) {
    let resp = reqwest::Client::new()
        .put(format!("{}/v1/services/{path}", reg.url()))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let problem = if status >= 400 {
        assert_eq!(
            resp.headers()["content-type"],
            "application/problem+json",
            "errors are problem+json"
        );
        Some(resp.json().await.unwrap())
    } else {
        None
    };
    (status, problem)
}

/// TTL checks: the instance reports pass/warn/fail with an output; silence for
/// longer than the TTL turns the check critical. Wrong uses get clear errors.
#[tokio::test]
async fn ttl_checks_are_reported_by_the_instance() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let body = RegisterRequest {
        ttl: Some(Duration::from_secs(30)),
        ..register_body(
            8080,
            vec![
                CheckDefinition {
                    id: Some("app".into()),
                    ttl: Some(Duration::from_secs(1)),
                    ..Default::default()
                },
                CheckDefinition {
                    tcp: Some("127.0.0.1:9".into()),
                    interval: Some(Duration::from_secs(60)),
                    initial_status: Some(Health::Passing),
                    ..Default::default()
                },
            ],
        )
    };
    client.register("api", "a-1", &body).await.unwrap();
    let checks: Vec<Check> = reqwest::get(format!(
        "{}/v1/services/api/instances/a-1/checks",
        reg.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let ids: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["ttl", "app", "tcp"], "the lease comes first");
    assert_eq!(
        checks[1].status,
        Health::Critical,
        "new checks start critical"
    );
    assert_eq!(checks[1].ttl, Some(Duration::from_secs(1)));
    assert_eq!(checks[2].target.as_deref(), Some("127.0.0.1:9"));

    let base = "api/instances/a-1/checks";
    for (verdict, want) in [
        ("warn", Health::Warning),
        ("fail", Health::Critical),
        ("pass", Health::Passing),
    ] {
        let body = format!(r#"{{"output":"said {verdict}"}}"#);
        let (status, _) = put_check(&reg, &format!("{base}/app/{verdict}"), &body).await;
        assert_eq!(status, 204);
        let c = check_of(&client, "api", "a-1", "app").await;
        assert_eq!(
            (c.status, c.output.as_str()),
            (want, &*format!("said {verdict}"))
        );
    }
    // An empty body is fine; the lease takes "pass" as a heartbeat.
    assert_eq!(
        put_check(&reg, &format!("{base}/app/pass"), "").await.0,
        204
    );
    assert_eq!(
        put_check(&reg, &format!("{base}/ttl/pass"), "").await.0,
        204
    );
    // Wrong uses.
    let (status, p) = put_check(&reg, &format!("{base}/ttl/fail"), "").await;
    assert_eq!(
        (status, p.unwrap().field.as_deref()),
        (400, Some("check_id"))
    );
    let (status, p) = put_check(&reg, &format!("{base}/tcp/pass"), "").await;
    let p = p.unwrap();
    assert_eq!(status, 400);
    assert!(p.detail.contains("run by the registry"), "{}", p.detail);
    let (status, _) = put_check(&reg, &format!("{base}/nope/pass"), "").await;
    assert_eq!(status, 404);
    let (status, p) = put_check(&reg, &format!("{base}/app/maybe"), "").await;
    assert_eq!((status, p.unwrap().field.as_deref()), (400, Some("status")));
    let (status, p) = put_check(&reg, &format!("{base}/app/pass"), r#"{"output":7}"#).await;
    assert_eq!((status, p.unwrap().field.as_deref()), (400, Some("output")));
    // Silence past the TTL.
    let c = wait_status(&client, "api", "a-1", "app", Health::Critical).await;
    assert_eq!(c.output, "TTL expired: no update within 1s");
}

/// Bad check definitions are refused with the field named, and nothing is
/// registered.
#[tokio::test]
async fn bad_check_definitions_name_the_field() {
    let reg = TestRegistry::start().await;
    for (checks, field) in [
        (r#"[{"http":"not a url"}]"#, "checks[0].http"),
        (
            r#"[{"tcp":"a:1"},{"tcp":"b:1","ttl":"5s"}]"#,
            "checks[1].http",
        ),
        (
            r#"[{"grpc":"x:1","interval":"10ms"}]"#,
            "checks[0].interval",
        ),
        (
            r#"[{"tcp":"x:1","success_before_passing":"two"}]"#,
            "checks[0].success_before_passing",
        ),
        (r#"[{"ttl":"5s","id":"ttl"}]"#, "checks[0].id"),
    ] {
        let body = format!(r#"{{"port":80,"address":"10.0.0.1","checks":{checks}}}"#);
        let (status, problem) = put_check(&reg, "web/instances/w-1", &body).await;
        assert_eq!(status, 400, "{checks}");
        assert_eq!(problem.unwrap().field.as_deref(), Some(field), "{checks}");
    }
    let list = RosterClient::new(reg.url())
        .unwrap()
        .services()
        .await
        .unwrap();
    assert!(list.services.is_empty());
}

/// A server that accepts connections and never answers. It counts the
/// connections open at once: before counting a new one it drops those whose
/// client has gone.
struct Tarpit {
    max_open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Tarpit {
    async fn start() -> (Tarpit, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let max_open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (max, acc) = (max_open.clone(), accepted.clone());
        tokio::spawn(async move {
            let mut open: Vec<TcpStream> = Vec::new();
            loop {
                let (conn, _) = listener.accept().await.unwrap();
                open.retain(|c| {
                    let mut b = [0u8; 1024];
                    // Drain the request; Ok(0) is the client's FIN.
                    loop {
                        match c.try_read(&mut b) {
                            Ok(0) => return false,
                            Ok(_) => continue,
                            Err(_) => return true,
                        }
                    }
                });
                open.push(conn);
                acc.fetch_add(1, Ordering::SeqCst);
                max.fetch_max(open.len(), Ordering::SeqCst);
            }
        });
        (Tarpit { max_open, accepted }, addr)
    }
}

/// 2,000 instances whose HTTP checks hang until their timeout: the checker
/// keeps to its concurrency cap, every check still runs and times out, and the
/// API keeps answering while they hang.
#[tokio::test]
async fn two_thousand_hanging_checks_keep_to_the_concurrency_cap() {
    const CAP: usize = 32;
    const N: usize = 2000;
    let (tarpit, addr) = Tarpit::start().await;
    let mut config = Config::default();
    config.checker.concurrency = CAP;
    config.dns_addr = None;
    let reg = TestRegistry::start_with(config).await;
    let client = RosterClient::new(reg.url()).unwrap();
    for i in 0..N {
        let check = CheckDefinition {
            http: Some(format!("http://{addr}/health")),
            interval: Some(Duration::from_secs(1)),
            timeout: Some(ms(200)),
            initial_status: Some(Health::Passing),
            ..Default::default()
        };
        client
            .register("slow", &format!("s-{i}"), &register_body(80, vec![check]))
            .await
            .unwrap();
    }
    // While checks hang, the API answers in full.
    let list = client.instances("slow", &Default::default()).await.unwrap();
    assert!(!list.instances.is_empty());
    let services = client.services().await.unwrap();
    assert_eq!(services.services[0].instances, N);
    // Every check runs and times out.
    until("every instance critical", || async {
        let s = client.services().await.unwrap();
        (s.services[0].critical == N).then_some(())
    })
    .await;
    let inst = client.instance("slow", "s-1234").await.unwrap();
    assert_eq!(inst.checks[0].output, "timed out after 200ms");
    assert!(tarpit.accepted.load(Ordering::SeqCst) >= N);
    let max = tarpit.max_open.load(Ordering::SeqCst);
    // The tarpit may see a closed connection a moment late (it notices the FIN
    // only when it next accepts), hence a little slack above the cap.
    assert!(
        (CAP / 2..=CAP + 4).contains(&max),
        "at most {CAP} checks in flight, saw {max} connections open at once"
    );
    let metrics = reg.metrics_text().await;
    assert!(
        metrics.contains("roster_checks_scheduled 2000"),
        "{metrics}"
    );
}

/// Panic mode: below the threshold of healthy instances, the default query
/// answers with every instance and says so.
#[tokio::test]
async fn panic_threshold_returns_every_instance() {
    let mut config = Config::default();
    config.panic.default = 0.5;
    config.dns_addr = None;
    let reg = TestRegistry::start_with(config).await;
    let client = RosterClient::new(reg.url()).unwrap();
    for i in 0..3 {
        client
            .register("web", &format!("w-{i}"), &register_body(80, vec![]))
            .await
            .unwrap();
    }
    client
        .maintenance(
            "web",
            "w-0",
            &MaintenanceRequest {
                enabled: true,
                reason: None,
            },
        )
        .await
        .unwrap();
    let get = || async {
        let resp = reqwest::get(format!("{}/v1/services/web", reg.url()))
            .await
            .unwrap();
        let panic_header = resp.headers().get("x-roster-panic").is_some();
        let body: roster_client::api::ServiceInstances = resp.json().await.unwrap();
        (panic_header, body)
    };
    // 2 of 3 healthy: normal answer, healthy ones only.
    let (header, body) = get().await;
    assert!(!header && !body.panic);
    assert_eq!(body.instances.len(), 2);
    // 1 of 3 healthy: panic, all three with their health.
    client
        .maintenance(
            "web",
            "w-1",
            &MaintenanceRequest {
                enabled: true,
                reason: None,
            },
        )
        .await
        .unwrap();
    let (header, body) = get().await;
    assert!(header && body.panic);
    assert_eq!(body.instances.len(), 3);
    let critical = body
        .instances
        .iter()
        .filter(|i| i.health == Health::Critical)
        .count();
    assert_eq!(critical, 2);
}

/// Self-preservation seen from outside: when every lease runs out at once,
/// nothing expires, `/health` warns and the metric is set; heartbeats end it.
#[tokio::test]
async fn self_preservation_shows_in_health_and_metrics() {
    let config = Config {
        dns_addr: None,
        ..Config::default()
    };
    let reg = TestRegistry::start_with(config).await;
    let client = RosterClient::new(reg.url()).unwrap();
    let ids: Vec<String> = (0..12).map(|i| format!("w-{i}")).collect();
    for id in &ids {
        let body = RegisterRequest {
            ttl: Some(Duration::from_secs(1)),
            ..register_body(80, vec![])
        };
        client.register("web", id, &body).await.unwrap();
    }
    let health = || async {
        reqwest::get(format!("{}/health", reg.url()))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    };
    let body = until("self-preservation on", || async {
        let h = health().await;
        (h["self_preservation"] == true).then_some(h)
    })
    .await;
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("self-preservation")
    );
    let metrics = reg.metrics_text().await;
    assert!(
        metrics.contains("roster_self_preservation_active 1"),
        "{metrics}"
    );
    // How much it holds, for how long at most, and how fast it drains.
    let status = &body["self_preservation_status"];
    assert_eq!(status["active"], true, "{body}");
    assert_eq!(status["max_hold_seconds"], 120, "{body}");
    assert!(status["held"].as_u64().unwrap() <= 12, "{body}");
    for field in [
        "since",
        "oldest_hold_seconds",
        "drained_within_seconds",
        "drain_per_minute",
    ] {
        assert!(status[field].is_number(), "{field} in {body}");
    }
    assert!(
        metrics.contains("roster_self_preservation_max_hold_seconds 120"),
        "{metrics}"
    );
    let list = client.services().await.unwrap();
    assert_eq!(list.services[0].passing, 12, "nothing expired");
    // Heartbeats come back (and keep coming, as a client's would).
    let body = until("self-preservation off", || async {
        for id in &ids {
            client.heartbeat("web", id).await.unwrap();
        }
        let h = health().await;
        (h["self_preservation"] == false).then_some(h)
    })
    .await;
    assert!(body.get("warnings").is_none());
}

/// A private HTTP server on loopback, as a sidecar's admin port or a local
/// secret would be: `/secret.txt` answers 200 with a secret.
async fn secret_server() -> SocketAddr {
    let app = axum::Router::new().route(
        "/secret.txt",
        axum::routing::get(|| async { "TOP-SECRET-VALUE" }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn http_check(id: &str, url: String) -> CheckDefinition {
    CheckDefinition {
        id: Some(id.into()),
        http: Some(url),
        interval: Some(ms(100)),
        ..Default::default()
    }
}

async fn refused_field(client: &RosterClient, check: CheckDefinition) -> String {
    let err = client
        .register("web", "ssrf", &register_body(80, vec![check]))
        .await
        .expect_err("refused");
    let problem = err.problem().expect("a problem document");
    assert_eq!(problem.status, 400, "{problem:?}");
    problem.field.clone().unwrap_or_default()
}

/// Health checks as SSRF with the response read back: a writer registered an
/// `http` check on a private URL with `Metadata-Flavor: Google`, and every
/// reader got the response in the check output. Now the output holds the
/// status line only, cloud-metadata headers, `Host`, hop-by-hop headers and
/// methods beyond GET/HEAD/POST/PUT/OPTIONS are refused naming the field, and
/// link-local and metadata destinations are refused at connect time.
#[tokio::test]
async fn checks_do_not_read_private_responses_back() {
    let secret = secret_server().await;
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let url = format!("http://{secret}/secret.txt");

    let mut metadata = http_check("meta", url.clone());
    metadata.headers = [("Metadata-Flavor".to_owned(), "Google".to_owned())].into();
    assert_eq!(
        refused_field(&client, metadata).await,
        "checks[0].headers.Metadata-Flavor"
    );
    for header in ["Host", "Connection", "Transfer-Encoding", "Upgrade"] {
        let mut check = http_check("h", url.clone());
        check.headers = [(header.to_owned(), "x".to_owned())].into();
        assert_eq!(
            refused_field(&client, check).await,
            format!("checks[0].headers.{header}")
        );
    }
    for method in ["DELETE", "PATCH", "TRACE", "CONNECT"] {
        let mut check = http_check("m", url.clone());
        check.method = Some(method.into());
        assert_eq!(refused_field(&client, check).await, "checks[0].method");
    }
    // The Consul API applies the same rules (its errors are plain text).
    let consul = reqwest::Client::new()
        .put(format!("{}/v1/agent/service/register", reg.url()))
        .body(format!(
            r#"{{"Name":"web","ID":"c1","Port":80,"Check":{{"HTTP":"{url}","Interval":"1s","Header":{{"Metadata-Flavor":["Google"]}}}}}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(consul.status(), 400);
    let text = consul.text().await.unwrap();
    assert!(text.contains("Metadata-Flavor"), "{text}");
    assert!(
        client
            .instances("web", &Default::default())
            .await
            .unwrap()
            .instances
            .is_empty()
    );

    // Loopback stays allowed (sidecar checks), but only the status line shows.
    let mut plain = http_check("plain", url.clone());
    plain.headers = [("X-Probe".to_owned(), "1".to_owned())].into();
    let link_local = http_check(
        "link-local",
        "http://169.254.169.254/latest/meta-data/".into(),
    );
    let by_name = http_check(
        "by-name",
        "http://metadata.google.internal/computeMetadata/v1/".into(),
    );
    let tcp = CheckDefinition {
        id: Some("tcp-metadata".into()),
        tcp: Some("169.254.169.254:80".into()),
        interval: Some(ms(100)),
        ..Default::default()
    };
    client
        .register(
            "web",
            "ssrf",
            &register_body(80, vec![plain, link_local, by_name, tcp]),
        )
        .await
        .unwrap();
    let c = wait_status(&client, "web", "ssrf", "plain", Health::Passing).await;
    assert_eq!(c.output, format!("GET {url}: 200 OK"));
    for id in ["link-local", "by-name", "tcp-metadata"] {
        let c = until(&format!("{id} to be refused"), || async {
            let c = check_of(&client, "web", "ssrf", id).await;
            (!c.output.is_empty()).then_some(c)
        })
        .await;
        assert_eq!(c.status, Health::Critical, "{id}");
        assert!(c.output.contains("denied"), "{id}: {}", c.output);
    }
    let listed = client.instance("web", "ssrf").await.unwrap();
    for c in &listed.checks {
        assert!(!c.output.contains("TOP-SECRET"), "{}: {}", c.id, c.output);
    }
    reg.stop().await;

    // Loopback denied by configuration: by address and by a name that
    // resolves to it, checked after resolution.
    let mut config = Config::default();
    config.probe.deny_loopback();
    let reg = TestRegistry::start_with(config).await;
    let client = RosterClient::new(reg.url()).unwrap();
    let by_ip = http_check("by-ip", url.clone());
    let resolved = http_check(
        "resolved",
        format!("http://localhost:{}/secret.txt", secret.port()),
    );
    let grpc = CheckDefinition {
        id: Some("grpc".into()),
        grpc: Some(format!("localhost:{}", secret.port())),
        interval: Some(ms(100)),
        ..Default::default()
    };
    client
        .register(
            "web",
            "local",
            &register_body(80, vec![by_ip, resolved, grpc]),
        )
        .await
        .unwrap();
    for id in ["by-ip", "resolved", "grpc"] {
        let c = until(&format!("{id} to be refused"), || async {
            let c = check_of(&client, "web", "local", id).await;
            (!c.output.is_empty()).then_some(c)
        })
        .await;
        assert_eq!(c.status, Health::Critical, "{id}");
        assert!(c.output.contains("denied"), "{id}: {}", c.output);
    }
    let c = check_of(&client, "web", "local", "resolved").await;
    assert!(c.output.contains("resolves to"), "{}", c.output);
    reg.stop().await;

    // The operator's opt-in brings bodies back.
    let reg = TestRegistry::start_with(with_bodies()).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register(
            "web",
            "opt-in",
            &register_body(80, vec![http_check("plain", url.clone())]),
        )
        .await
        .unwrap();
    let c = wait_status(&client, "web", "opt-in", "plain", Health::Passing).await;
    assert_eq!(c.output, format!("GET {url}: 200 OK\nTOP-SECRET-VALUE"));
    reg.stop().await;
}

/// A restore replaces the catalog, and with it the active checks: the
/// restored instance's check runs again, and the check of an instance the
/// restore removed stops (the checker hears of a replaced catalog as one
/// list of the instances with active checks, not one message per instance).
#[tokio::test]
async fn a_restore_moves_the_active_checks_to_the_restored_instances() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let (kept, kept_addr) = Scripted::start(&[], Step::Status(200)).await;
    let (dropped, dropped_addr) = Scripted::start(&[], Step::Status(200)).await;
    let check = |addr: SocketAddr| http_check("http", format!("http://{addr}/health"));

    client
        .register("web", "kept", &register_body(80, vec![check(kept_addr)]))
        .await
        .unwrap();
    wait_status(&client, "web", "kept", "http", Health::Passing).await;
    let saved = client.snapshot_save().await.expect("snapshot");
    client.deregister("web", "kept").await.unwrap();
    client
        .register(
            "web",
            "dropped",
            &register_body(80, vec![check(dropped_addr)]),
        )
        .await
        .unwrap();
    until("the second instance's check to run", || async {
        (dropped.served() >= 2).then_some(())
    })
    .await;

    let before = kept.served();
    client.snapshot_restore(saved).await.expect("restore");
    assert!(client.instance("web", "dropped").await.is_err(), "removed");
    until("the restored instance's check to run again", || async {
        (kept.served() >= before + 2).then_some(())
    })
    .await;
    // A probe started before the restore may still land; none after that.
    let settled = dropped.served();
    let from = kept.served();
    until("three more rounds of the restored check", || async {
        (kept.served() >= from + 3).then_some(())
    })
    .await;
    assert_eq!(
        dropped.served(),
        settled,
        "the removed instance is not probed after the restore"
    );
    wait_status(&client, "web", "kept", "http", Health::Passing).await;
}
