//! Security and robustness over real connections: ACL policies, tokens kept out
//! of logs, TLS (server, client certificates, reload), and the overload limits.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use reqwest::StatusCode;
use roster_client::api::{MaintenanceRequest, RegisterRequest};
use roster_client::{Error, RosterClient, TlsOptions, Unavailable};
use roster_registry::acl::Tokens;
use roster_registry::config::Config;
use roster_registry::http::serve::TlsFiles;
use roster_tests::TestRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) const READER: &str = "reader-secret-0123456789";
pub(crate) const WRITER: &str = "writer-secret-0123456789";
const ADMIN: &str = "admin-secret-0123456789";

pub(crate) fn tokens() -> Tokens {
    Tokens::parse(&format!(
        r#"
        [[tokens]]
        name = "reader"
        secret = "{READER}"
        policies = ["read"]
        [[tokens]]
        name = "web-writer"
        secret = "{WRITER}"
        policies = ["write:web*"]
        [[tokens]]
        name = "ops"
        secret = "{ADMIN}"
        policies = ["admin"]
        "#
    ))
    .unwrap()
}

fn base_config() -> Config {
    Config {
        dns_addr: None,
        ..Config::default()
    }
}

async fn acl_registry() -> TestRegistry {
    TestRegistry::start_with(Config {
        acl: Some(tokens()),
        ..base_config()
    })
    .await
}

fn body(port: u16) -> RegisterRequest {
    RegisterRequest {
        address: Some("10.0.0.1".into()),
        port,
        ..Default::default()
    }
}

/// Sends a request with an optional bearer token; returns status, content type
/// and body text.
async fn call(
    method: reqwest::Method,
    url: String,
    token: Option<(&str, &str)>,
    body: Option<String>,
) -> (StatusCode, String, String) {
    let mut req = reqwest::Client::new().request(method, url);
    if let Some((header, value)) = token {
        req = req.header(header, value);
    }
    if let Some(b) = body {
        req = req.body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ct, resp.text().await.unwrap())
}

#[tokio::test]
async fn each_policy_allows_and_denies_what_it_should() {
    let reg = acl_registry().await;
    let url = |p: &str| format!("{}{p}", reg.url());
    let bearer = |t: &'static str| {
        Some((
            "authorization",
            Box::leak(format!("Bearer {t}").into_boxed_str()) as &str,
        ))
    };
    use reqwest::Method;
    // Operational endpoints stay open.
    for path in ["/health", "/ready", "/metrics", "/v1/openapi.json"] {
        assert_eq!(
            call(Method::GET, url(path), None, None).await.0,
            StatusCode::OK,
            "{path}"
        );
    }
    // No token: 401; an unknown one: 403; both problem+json naming the kind.
    let (status, ct, text) = call(Method::GET, url("/v1/services"), None, None).await;
    assert_eq!(
        (status, ct.as_str()),
        (StatusCode::UNAUTHORIZED, "application/problem+json")
    );
    assert!(text.contains("urn:roster:problem:unauthorized"), "{text}");
    let (status, _, text) = call(
        Method::GET,
        url("/v1/services"),
        bearer("not-a-token-at-all"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(text.contains("unknown token"), "{text}");

    // Through the client library.
    let reader = RosterClient::new(reg.url()).unwrap().with_token(READER);
    let writer = RosterClient::new(reg.url()).unwrap().with_token(WRITER);
    let admin = RosterClient::new(reg.url()).unwrap().with_token(ADMIN);
    assert!(
        matches!(reader.register("web", "web-1", &body(80)).await, Err(Error::Denied(p)) if p.status == 403)
    );
    writer.register("web", "web-1", &body(80)).await.unwrap();
    writer
        .register("web-api", "web-2", &body(81))
        .await
        .unwrap();
    writer.heartbeat("web", "web-1").await.unwrap();
    assert!(matches!(
        writer.register("db", "db-1", &body(5432)).await,
        Err(Error::Denied(_))
    ));
    assert_eq!(reader.services().await.unwrap().services.len(), 2);
    assert_eq!(
        writer.services().await.unwrap().services.len(),
        2,
        "writers may read"
    );
    let maint = MaintenanceRequest {
        enabled: true,
        reason: None,
    };
    assert!(matches!(
        writer.maintenance("web", "web-1", &maint).await,
        Err(Error::Denied(_))
    ));
    assert!(matches!(
        reader.snapshot_save().await,
        Err(Error::Denied(_))
    ));
    admin.maintenance("web", "web-1", &maint).await.unwrap();
    assert!(!admin.snapshot_save().await.unwrap().is_empty());
    assert!(matches!(
        reader.deregister("web-api", "web-2").await,
        Err(Error::Denied(_))
    ));
    writer.deregister("web-api", "web-2").await.unwrap();

    // The Consul API takes X-Consul-Token and answers in plain text.
    let consul_token = |t: &'static str| Some(("x-consul-token", t));
    let reg_body = |name: &str| format!(r#"{{"Name":"{name}","Address":"10.0.0.2","Port":1}}"#);
    let (status, _, text) = call(
        Method::PUT,
        url("/v1/agent/service/register"),
        None,
        Some(reg_body("web")),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::UNAUTHORIZED, "ACL not found")
    );
    let (status, _, _) = call(
        Method::PUT,
        url("/v1/agent/service/register"),
        consul_token(WRITER),
        Some(reg_body("web")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, ct, text) = call(
        Method::PUT,
        url("/v1/agent/service/register"),
        consul_token(WRITER),
        Some(reg_body("db")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        ct.starts_with("text/plain") && text.starts_with("Permission denied"),
        "{text}"
    );
    let (status, _, _) = call(
        Method::PUT,
        url("/v1/agent/service/register"),
        consul_token(READER),
        Some(reg_body("web")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nothing denied reached the catalog.
    let names: Vec<String> = admin
        .services()
        .await
        .unwrap()
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["web"]);
}

/// A writer for the in-process log subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Every log line of a run with ACLs, at the most verbose level: the secrets
/// sent (valid, unknown, in either header) appear in none of them.
#[tokio::test(flavor = "current_thread")]
async fn tokens_never_reach_the_logs() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let reg = acl_registry().await;
    let writer = RosterClient::new(reg.url()).unwrap().with_token(WRITER);
    writer.register("web", "web-1", &body(80)).await.unwrap();
    let _ = writer.register("db", "db-1", &body(80)).await;
    let unknown = "unknown-secret-9876543210";
    let _ = RosterClient::new(reg.url())
        .unwrap()
        .with_token(unknown)
        .services()
        .await;
    let _ = call(
        reqwest::Method::GET,
        format!("{}/v1/catalog/services", reg.url()),
        Some(("x-consul-token", READER)),
        None,
    )
    .await;
    reg.stop().await;
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("ACLs on"), "the capture works: {logs}");
    for secret in [READER, WRITER, ADMIN, unknown] {
        assert!(!logs.contains(secret), "{secret} appears in the logs");
    }
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { params, key, pem }
}

/// A certificate signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, client: bool) -> (String, String) {
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    let key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("roster-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_server_cert(dir: &std::path::Path, ca: &Ca) -> TlsFiles {
    let (cert, key) = leaf(ca, false);
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        client_ca: None,
    }
}

/// A rustls client trusting `ca` alone, offering `alpn`.
fn tls_client(ca: &Ca, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let der = {
        use rustls::pki_types::pem::PemObject as _;
        rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap()
    };
    roots.add(der).unwrap();
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(tls))
}

fn trusting(url: &str, ca: &Ca, identity: Option<(String, String)>) -> RosterClient {
    let tls = TlsOptions {
        ca_pem: Some(ca.pem.clone().into_bytes()),
        identity_pem: identity.map(|(c, k)| format!("{c}{k}").into_bytes()),
    };
    RosterClient::with_tls(url, Duration::from_secs(5), &tls).unwrap()
}

#[tokio::test]
async fn https_round_trip_and_a_wrong_ca_is_refused() {
    let (good, other) = (ca("roster test CA"), ca("another CA"));
    let dir = tls_dir("basic");
    let mut config = base_config();
    config.serve.tls = Some(write_server_cert(&dir, &good));
    let reg = TestRegistry::start_with(config).await;
    assert!(reg.url().starts_with("https://"));
    let client = trusting(reg.url(), &good, None);
    client.register("web", "web-1", &body(80)).await.unwrap();
    assert_eq!(client.services().await.unwrap().services.len(), 1);
    // A client trusting another CA, or only the public roots, refuses the server.
    let wrong = trusting(reg.url(), &other, None);
    assert!(matches!(
        wrong.services().await,
        Err(Error::Unavailable(Unavailable::Transport { .. }))
    ));
    let public = RosterClient::new(reg.url()).unwrap();
    assert!(matches!(
        public.services().await,
        Err(Error::Unavailable(Unavailable::Transport { .. }))
    ));
    // Plain HTTP on the TLS port gets nowhere.
    let plain = RosterClient::new(&reg.url().replace("https://", "http://")).unwrap();
    assert!(plain.services().await.is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

/// Over TLS, ALPN settles the version: HTTP/2 when the client offers it
/// and the server serves it, HTTP/1.1 otherwise, and the typed client's
/// `with_http2` works either way.
#[tokio::test]
async fn http2_is_negotiated_over_tls_and_falls_back_when_off() {
    let good = ca("roster test CA");
    let dir = tls_dir("alpn");
    for http2 in [true, false] {
        let mut config = base_config();
        config.serve.tls = Some(write_server_cert(&dir, &good));
        config.serve.http2 = http2;
        let reg = TestRegistry::start_with(config).await;
        let client = trusting(reg.url(), &good, None).with_http2().unwrap();
        client.register("web", "web-1", &body(80)).await.unwrap();
        assert_eq!(client.services().await.unwrap().services.len(), 1);

        let tcp = TcpStream::connect(reg.server().local_addr()).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let stream = tls_client(&good, &[b"h2", b"http/1.1"])
            .connect(name, tcp)
            .await
            .unwrap();
        let agreed = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let want: &[u8] = if http2 { b"h2" } else { b"http/1.1" };
        assert_eq!(agreed.as_deref(), Some(want));
        if http2 {
            let (send, conn) = h2::client::handshake(stream).await.unwrap();
            tokio::spawn(conn);
            let req = http::Request::get("https://localhost/v1/services/web")
                .body(())
                .unwrap();
            let (answer, _) = send.ready().await.unwrap().send_request(req, true).unwrap();
            assert_eq!(answer.await.unwrap().status(), 200);
        }
        reg.stop().await;
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn client_certificates_are_required_when_configured() {
    let (good, other) = (ca("roster test CA"), ca("another CA"));
    let dir = tls_dir("mtls");
    let mut files = write_server_cert(&dir, &good);
    std::fs::write(dir.join("clients.pem"), &good.pem).unwrap();
    files.client_ca = Some(dir.join("clients.pem"));
    let mut config = base_config();
    config.serve.tls = Some(files);
    let reg = TestRegistry::start_with(config).await;
    let without = trusting(reg.url(), &good, None);
    assert!(matches!(
        without.services().await,
        Err(Error::Unavailable(Unavailable::Transport { .. }))
    ));
    let foreign = trusting(reg.url(), &good, Some(leaf(&other, true)));
    assert!(matches!(
        foreign.services().await,
        Err(Error::Unavailable(Unavailable::Transport { .. }))
    ));
    let with = trusting(reg.url(), &good, Some(leaf(&good, true)));
    assert!(with.services().await.unwrap().services.is_empty());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_new_certificate_is_picked_up_without_a_restart() {
    let (first, second) = (ca("first CA"), ca("second CA"));
    let dir = tls_dir("reload");
    let mut config = base_config();
    config.serve.tls = Some(write_server_cert(&dir, &first));
    config.serve.tls_poll = Duration::from_millis(100);
    let reg = TestRegistry::start_with(config).await;
    let old = trusting(reg.url(), &first, None);
    let new = trusting(reg.url(), &second, None);
    assert!(old.services().await.is_ok());
    assert!(new.services().await.is_err());
    // Replace the files (a certificate renewal); the mtime check notices.
    tokio::time::sleep(Duration::from_millis(20)).await;
    write_server_cert(&dir, &second);
    for _ in 0..500 {
        if new.services().await.is_ok() {
            // A fresh client (no pooled connection from before) no longer
            // accepts the server.
            let old = trusting(reg.url(), &first, None);
            assert!(old.services().await.is_err(), "the old certificate is gone");
            std::fs::remove_dir_all(dir).unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the new certificate was never served");
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .unwrap_or_default();
    out
}

#[tokio::test]
async fn a_slowloris_connection_is_closed() {
    let mut config = base_config();
    config.serve.header_read_timeout = Duration::from_millis(300);
    let reg = TestRegistry::start_with(config).await;
    let addr = reg.server().local_addr();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /v1/services HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let sent = read_to_close(&mut slow).await;
    let text = String::from_utf8_lossy(&sent);
    assert!(
        sent.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // The server still answers others.
    let ok = RosterClient::new(reg.url()).unwrap().services().await;
    assert!(ok.is_ok());
}

#[tokio::test]
async fn connections_past_the_cap_are_closed() {
    let mut config = base_config();
    config.serve.max_connections = 2;
    let reg = TestRegistry::start_with(config).await;
    let addr = reg.server().local_addr();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // A complete request each, so both are surely accepted and open.
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    let mut third = TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        read_to_close(&mut third).await.is_empty(),
        "closed unanswered"
    );
    drop(held);
}

#[tokio::test]
async fn overload_gets_503_with_retry_after() {
    let mut config = base_config();
    config.limits_http.max_watchers = 1;
    config.limits_http.max_requests = 1;
    let reg = TestRegistry::start_with(config).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client.register("web", "web-1", &body(80)).await.unwrap();
    let index = client.services().await.unwrap().index;
    // One watcher holds the only watcher slot.
    let blocking = format!("{}/v1/services?index={index}&wait=30s", reg.url());
    let held = tokio::spawn(reqwest::get(blocking.clone()));
    let mut refused = None;
    for _ in 0..500 {
        let resp = reqwest::get(&blocking).await.unwrap();
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(resp);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let resp = refused.expect("a second watcher is refused");
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // A request whose body never finishes holds no request slot (the only
    // one here): plain requests are still served meanwhile.
    let addr = reg.server().local_addr();
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"PUT /v1/services/web/instances/web-2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    for _ in 0..20 {
        let resp = reqwest::get(format!("{}/v1/services", reg.url()))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(stuck);
    held.abort();
}

#[tokio::test]
async fn writes_past_the_per_address_rate_get_429() {
    let mut config = base_config();
    config.limits_http.write_rate = 1.0;
    let reg = TestRegistry::start_with(config).await;
    let url = format!("{}/v1/services/web/instances/web-1", reg.url());
    let body = r#"{"address":"10.0.0.1","port":80}"#.to_owned();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, _, _) =
            call(reqwest::Method::PUT, url.clone(), None, Some(body.clone())).await;
        statuses.push(status);
    }
    // A burst of two (twice the rate) passes, the third is refused; reads are
    // never rate-limited.
    assert_eq!(statuses[..2], [StatusCode::CREATED, StatusCode::OK]);
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS);
    let (status, _, _) = call(reqwest::Method::GET, url, None, None).await;
    assert_eq!(status, StatusCode::OK);
}

/// Every route the OpenAPI document lists, and every Consul route, refuses a
/// call without a token unless it is one of the few open ones: permissions
/// come from the route's group, so a new route cannot be reachable without
/// one.
#[tokio::test]
async fn every_route_needs_a_token_but_the_open_ones() {
    let reg = acl_registry().await;
    let doc: serde_json::Value =
        serde_json::from_str(roster_registry::http::OPENAPI).expect("the document parses");
    let mut routes: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "put", "post", "delete"] {
            if item.get(method).is_some() {
                routes.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    for (m, p) in [
        ("GET", "/v1/agent/self"),
        ("GET", "/v1/agent/services"),
        ("GET", "/v1/agent/checks"),
        ("PUT", "/v1/agent/service/register"),
        ("PUT", "/v1/agent/service/deregister/{id}"),
        ("PUT", "/v1/agent/service/maintenance/{id}"),
        ("PUT", "/v1/agent/check/update/{check_id}"),
        ("PUT", "/v1/agent/check/pass/{check_id}"),
        ("GET", "/v1/catalog/datacenters"),
        ("GET", "/v1/catalog/nodes"),
        ("GET", "/v1/catalog/services"),
        ("GET", "/v1/catalog/service/{service}"),
        ("GET", "/v1/health/service/{service}"),
        ("GET", "/v1/health/checks/{service}"),
        ("GET", "/v1/health/state/{status}"),
        ("GET", "/v1/status/leader"),
        ("GET", "/v1/status/peers"),
        ("PUT", "/v1/txn"),
    ] {
        routes.push((m.into(), p.into()));
    }
    let open = [
        "/health",
        "/ready",
        "/metrics",
        "/v1/openapi.json",
        "/v1/status/leader",
        "/v1/status/peers",
    ];
    assert!(routes.len() > 30, "{routes:?}");
    for (method, template) in routes {
        let path = template
            .replace("{service}", "web")
            .replace("{id}", "web-1")
            .replace("{check_id}", "c1")
            .replace("{status}", "passing");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, _, text) =
            call(method.clone(), format!("{}{path}", reg.url()), None, None).await;
        if open.contains(&template.as_str()) {
            assert_eq!(status, StatusCode::OK, "{method} {path} is open: {text}");
        } else {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {text}");
        }
    }
}

/// Authorization looks at the name the handler writes, after percent-decoding
/// and validation, never at the raw path (hostile pass, issue 25).
#[tokio::test]
async fn writes_are_authorized_on_the_decoded_service_name() {
    let tokens = Tokens::parse(
        r#"
        [[tokens]]
        name = "ab"
        secret = "ab-writer-secret-0123"
        policies = ["write:*ab"]
        [[tokens]]
        name = "web"
        secret = "web-writer-secret-0123"
        policies = ["write:web-*"]
        [[tokens]]
        name = "globs"
        secret = "glob-writer-secret-0123"
        policies = ["write:*-*-*x"]
        "#,
    )
    .unwrap();
    let reg = TestRegistry::start_with(Config {
        acl: Some(tokens),
        ..base_config()
    })
    .await;
    let put = |path: &str, secret: &'static str| {
        let url = format!("{}{path}", reg.url());
        async move {
            call(
                reqwest::Method::PUT,
                url,
                Some((
                    "authorization",
                    Box::leak(format!("Bearer {secret}").into_boxed_str()),
                )),
                Some(r#"{"address":"10.0.0.1","port":80}"#.into()),
            )
            .await
        }
    };
    // `x%6Ab` is the service `xjb`, which `*ab` does not cover.
    let (status, _, text) = put("/v1/services/x%6Ab/instances/h2", "ab-writer-secret-0123").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{text}");
    assert!(text.contains(r#"service \"xjb\""#), "{text}");
    // `%77eb-a` is `web-a`, which `web-*` covers.
    let (status, _, text) = put(
        "/v1/services/%77eb-a/instances/h1",
        "web-writer-secret-0123",
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let (status, _, text) = call(
        reqwest::Method::GET,
        format!("{}/v1/services/web-a", reg.url()),
        Some(("authorization", "Bearer web-writer-secret-0123")),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("\"h1\""), "{text}");
    // A 2,000-byte segment is refused as a name before any pattern sees it.
    let long = format!("/v1/services/{}/instances/h3", "-".repeat(2000));
    let (status, ct, text) = put(&long, "glob-writer-secret-0123").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(ct, "application/problem+json");
    assert!(text.contains("\"field\":\"service\""), "{text}");
    // Bytes that are not UTF-8 get a problem document, not "Invalid URL".
    let (status, ct, text) = put("/v1/services/%ff/instances/h4", "web-writer-secret-0123").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(ct, "application/problem+json", "{text}");
}

/// Consul clients (consul-api, Spring Cloud Consul) send their token as
/// `?token=`; `/v1/status/*` needs none, as in Consul.
#[tokio::test]
async fn consul_paths_take_the_token_from_the_query() {
    let reg = acl_registry().await;
    let get = |path: String| {
        call(
            reqwest::Method::GET,
            format!("{}{path}", reg.url()),
            None,
            None,
        )
    };
    assert_eq!(
        get("/v1/catalog/services".into()).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _, text) = get(format!("/v1/catalog/services?token={READER}")).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(
        get(format!("/v1/catalog/services?token={}", "x".repeat(20)))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(get("/v1/status/leader".into()).await.0, StatusCode::OK);
    // Native paths take tokens in headers only: a URL ends up in logs.
    assert_eq!(
        get(format!("/v1/services?token={READER}")).await.0,
        StatusCode::UNAUTHORIZED
    );
}

/// Sends raw bytes and returns what the server answers, up to its close or
/// `wait`.
async fn raw(addr: std::net::SocketAddr, request: &[u8], wait: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(wait, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    // One complete answer is enough.
                    let text = String::from_utf8_lossy(&out);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if body.len() >= len && !head.starts_with("HTTP/1.1 100") {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// What a body declares is checked before a byte of it is read: size,
/// encoding, and the caller's token (so `Expect: 100-continue` is refused
/// without inviting the body).
#[tokio::test]
async fn bodies_are_refused_before_they_are_sent() {
    let reg = acl_registry().await;
    let addr = reg.server().local_addr();
    let auth = format!("Authorization: Bearer {WRITER}\r\n");
    let put = "PUT /v1/services/web/instances/web-1 HTTP/1.1\r\nHost: x\r\n";
    let answer = raw(
        addr,
        format!("{put}{auth}Content-Length: 99999999999\r\n\r\n{{").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    // (Before the fix the answer came after the 30 s request timeout, a 503,
    // so the status alone tells the two apart.)
    let answer = raw(
        addr,
        format!("{put}Expect: 100-continue\r\nContent-Length: 40\r\n\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let answer = raw(
        addr,
        format!("{put}{auth}Content-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 415"), "{answer}");
    // A snapshot restore has its own, larger limit (1 GiB: a million
    // instances are about 270 MB), refused the same way above it.
    let admin = format!("Authorization: Bearer {ADMIN}\r\n");
    let answer = raw(
        addr,
        format!(
            "PUT /v1/snapshot HTTP/1.1\r\nHost: x\r\n{admin}Content-Length: {}\r\n\r\n{{",
            (1u64 << 30) + 1
        )
        .as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("limited to 1073741824 bytes"), "{answer}");
    // 80 KiB of headers: over the documented 64 KiB.
    let big: String = (0..80)
        .map(|i| format!("X-Filler-{i}: {}\r\n", "a".repeat(1000)))
        .collect();
    let answer = raw(
        addr,
        format!("GET /v1/services HTTP/1.1\r\nHost: x\r\n{big}\r\n").as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

/// With an `[anonymous]` policy, calls without a token get its rights (what
/// Spring's Consul health indicator needs); calls it does not cover still need
/// a token.
#[tokio::test]
async fn the_anonymous_policy_covers_calls_without_a_token() {
    let text = format!(
        r#"
        [[tokens]]
        name = "web-writer"
        secret = "{WRITER}"
        policies = ["write:web*"]
        [anonymous]
        policies = ["read"]
        "#
    );
    let reg = TestRegistry::start_with(Config {
        acl: Some(Tokens::parse(&text).unwrap()),
        ..base_config()
    })
    .await;
    let url = |p: &str| format!("{}{p}", reg.url());
    for path in ["/v1/catalog/services", "/v1/services", "/v1/status/leader"] {
        let (status, _, body) = call(reqwest::Method::GET, url(path), None, None).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let put = r#"{"address":"10.0.0.1","port":80}"#.to_owned();
    let (status, _, _) = call(
        reqwest::Method::PUT,
        url("/v1/services/web/instances/w1"),
        None,
        Some(put.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "anonymous may not write");
    let (status, _, _) = call(
        reqwest::Method::PUT,
        url("/v1/services/web/instances/w1"),
        Some(("x-consul-token", WRITER)),
        Some(put),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = call(reqwest::Method::GET, url("/v1/snapshot"), None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// With HTTP/2 turned off, a client with prior knowledge gets GOAWAY with
/// HTTP_1_1_REQUIRED (RFC 9113), not a silent close.
#[tokio::test]
async fn http2_prior_knowledge_is_refused_clearly_when_turned_off() {
    let mut config = base_config();
    config.serve.http2 = false;
    let reg = TestRegistry::start_with(config).await;
    let mut s = TcpStream::connect(reg.server().local_addr()).await.unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let got = read_to_close(&mut s).await;
    // Walk the frames: 9-byte headers, then the payload.
    let mut at = 0;
    let mut goaway = None;
    while at + 9 <= got.len() {
        let len = u32::from_be_bytes([0, got[at], got[at + 1], got[at + 2]]) as usize;
        if got[at + 3] == 0x7 {
            goaway = Some(got[at + 9..at + 9 + len].to_vec());
        }
        at += 9 + len;
    }
    let payload = goaway.expect("a GOAWAY frame");
    assert_eq!(payload[4..8], 0xdu32.to_be_bytes(), "HTTP_1_1_REQUIRED");
    // HTTP/1.1 still works on the same port.
    assert!(
        RosterClient::new(reg.url())
            .unwrap()
            .services()
            .await
            .is_ok()
    );
}

/// Requests hyper cannot parse get a problem document too, not an empty 400.
#[tokio::test]
async fn unparsable_requests_get_a_problem_document() {
    let reg = TestRegistry::start_with(base_config()).await;
    let addr = reg.server().local_addr();
    let answer = raw(addr, b"GARBAGE\r\n\r\n", Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        answer.contains("urn:roster:problem:malformed-request"),
        "{answer}"
    );
    let long = format!(
        "GET /v1/services?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "a".repeat(70_000)
    );
    let answer = raw(addr, long.as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
}

#[tokio::test]
async fn the_cli_trusts_a_private_ca_and_presents_a_client_certificate() {
    use clap::Parser;
    use roster_cli::{Cli, Command, run_client};

    let ca = ca("roster cli CA");
    let dir = tls_dir("cli");
    let mut files = write_server_cert(&dir, &ca);
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    files.client_ca = Some(dir.join("ca.pem"));
    let (cert, key) = leaf(&ca, true);
    std::fs::write(dir.join("client.pem"), cert).unwrap();
    std::fs::write(dir.join("client-key.pem"), key).unwrap();
    let mut config = base_config();
    config.serve.tls = Some(files);
    let reg = TestRegistry::start_with(config).await;
    let path = |f: &str| dir.join(f).display().to_string();
    let run = |extra: Vec<String>| {
        let url = reg.url().to_owned();
        async move {
            let mut argv = vec!["roster".to_owned(), "--registry".to_owned(), url];
            argv.extend(extra);
            argv.push("services".to_owned());
            let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
            let Command::Client(command) = &cli.command else {
                unreachable!("services is a client command")
            };
            let mut out = Vec::new();
            run_client(&cli.global, command, &mut out)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(String::from_utf8(out).unwrap())
        }
    };
    let ca_args = vec!["--ca-cert".to_owned(), path("ca.pem")];
    let identity = vec![
        "--client-cert".to_owned(),
        path("client.pem"),
        "--client-key".to_owned(),
        path("client-key.pem"),
    ];

    // The CA and the client certificate: the call goes through.
    let both = [ca_args.clone(), identity.clone()].concat();
    run(both)
        .await
        .expect("trusted CA and a client certificate");
    // Without the CA the server is not trusted; without the certificate the
    // server refuses the client; a missing file is named.
    let no_ca = run(identity).await.unwrap_err();
    assert!(no_ca.contains("unavailable"), "{no_ca}");
    assert!(run(ca_args.clone()).await.is_err(), "no client certificate");
    let missing = run(vec!["--ca-cert".to_owned(), path("nope.pem")])
        .await
        .unwrap_err();
    assert!(missing.contains("nope.pem"), "{missing}");
    // A certificate without its key is refused by the command line.
    let half = run([
        ca_args,
        vec!["--client-cert".to_owned(), path("client.pem")],
    ]
    .concat())
    .await
    .unwrap_err();
    assert!(half.contains("--client-key"), "{half}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// One state-of-the-world request for the endpoints of `service` over `io`,
/// as raw HTTP/2; the first response, decoded.
async fn first_eds_response<IO>(io: IO, service: &str) -> Result<DiscoveryResponse, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use prost::Message as _;
    const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    let (requests, conn) = h2::client::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut requests = requests.ready().await.map_err(|e| e.to_string())?;
    let request = http::Request::post(
        "https://localhost/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    )
    .header("content-type", "application/grpc")
    .body(())
    .unwrap();
    let (response, mut send) = requests
        .send_request(request, false)
        .map_err(|e| e.to_string())?;
    let ask = DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec![service.into()],
        ..DiscoveryRequest::default()
    };
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(ask.encoded_len()).unwrap().to_be_bytes());
    ask.encode(&mut frame).unwrap();
    send.send_data(bytes::Bytes::from(frame), false)
        .map_err(|e| e.to_string())?;
    let mut body = response.await.map_err(|e| e.to_string())?.into_body();
    let mut got = Vec::new();
    while got.len() < 5
        || got.len() < 5 + u32::from_be_bytes(got[1..5].try_into().unwrap()) as usize
    {
        let chunk = body
            .data()
            .await
            .ok_or("stream ended")?
            .map_err(|e| e.to_string())?;
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    DiscoveryResponse::decode(&got[5..]).map_err(|e| e.to_string())
}

#[tokio::test]
async fn xds_is_served_over_tls_only_to_clients_that_trust_the_certificate() {
    let (good, other) = (ca("roster test CA"), ca("another CA"));
    let dir = tls_dir("xds");
    let mut config = base_config();
    config.serve.tls = Some(write_server_cert(&dir, &good));
    config.grpc_addr = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let reg = TestRegistry::start_with(config).await;
    trusting(reg.url(), &good, None)
        .register("web", "web-1", &body(80))
        .await
        .unwrap();
    let connect = |ca: &Ca| {
        let connector = tls_client(ca, &[b"h2"]);
        let addr = reg.grpc_addr();
        async move {
            let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())
        }
    };

    let tls = connect(&good).await.unwrap();
    let response = first_eds_response(tls, "web").await.unwrap();
    assert_eq!(response.resources.len(), 1, "{response:?}");
    assert!(!response.version_info.is_empty());

    // A client trusting another CA does not get through the handshake.
    assert!(connect(&other).await.is_err());
    // Plain HTTP/2 on the TLS port gets no answer.
    let plain = TcpStream::connect(reg.grpc_addr()).await.unwrap();
    let answered =
        tokio::time::timeout(Duration::from_secs(5), first_eds_response(plain, "web")).await;
    assert!(!matches!(answered, Ok(Ok(_))), "{answered:?}");
    std::fs::remove_dir_all(dir).unwrap();
}
