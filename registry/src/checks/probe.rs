//! The probes behind active health checks: one HTTP request, one TCP connect or
//! one gRPC `Health/Check` call, each on a fresh connection (a check should
//! prove that a new client can get in, and a kept-alive connection would not).
//!
//! HTTP is spoken with hyper directly rather than a pooling client: every probe
//! owns its connection, so dropping the probe (timeout, shutdown) closes it, and
//! the response body is read only up to [`BODY_PREVIEW`] bytes.
//!
//! Checks are requests the registry makes on behalf of whoever may register, and
//! their output is shown to every reader, so a [`ProbePolicy`] bounds them: the
//! destination is resolved first and every address is checked against a
//! deny-list (link-local and cloud metadata endpoints by default) right before
//! connecting to exactly that address, so a name that resolves (or rebinds) to a
//! denied address is refused too; and response bodies stay out of the output
//! unless the operator turns them on.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use axum::http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use roster_api::Health;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::checks::{CheckSpec, ForbiddenInCheck, Target, check_http_header, check_http_method};

/// Bytes of an HTTP response body kept in the check output (with
/// [`ProbePolicy::output_body`]).
pub const BODY_PREVIEW: usize = 512;

/// What active checks may reach and what their output may show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePolicy {
    /// Put the start of HTTP response bodies in the check output. Off by
    /// default: the output is readable by every reader, and a check aimed at
    /// a private URL would otherwise read it back to them.
    pub output_body: bool,
    /// Networks probes never connect to, matched against every resolved
    /// address right before connecting (IPv4-mapped IPv6 counts as IPv4).
    pub deny: Vec<(IpAddr, u8)>,
    /// Host names refused before any resolution (lowercase, no trailing dot).
    pub deny_hosts: Vec<String>,
}

impl Default for ProbePolicy {
    fn default() -> Self {
        ProbePolicy {
            output_body: false,
            deny: vec![
                // Link-local, which holds 169.254.169.254 (AWS, GCP, Azure,
                // OpenStack metadata) and the ECS task metadata endpoints.
                (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
                (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
                // AWS metadata over IPv6.
                (
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
                    128,
                ),
                // Alibaba Cloud metadata.
                (IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)), 32),
            ],
            deny_hosts: vec!["metadata.google.internal".into()],
        }
    }
}

impl ProbePolicy {
    /// Also denies loopback (127.0.0.0/8, ::1) and the unspecified addresses
    /// that reach it (0.0.0.0/8, ::). Loopback is allowed by default because
    /// sidecar checks on 127.0.0.1 are common.
    pub fn deny_loopback(&mut self) {
        self.deny.extend([
            (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 8),
            (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
        ]);
    }

    /// Whether `ip` is in a denied network.
    ///
    /// ```
    /// use roster_registry::checks::probe::ProbePolicy;
    /// let p = ProbePolicy::default();
    /// assert!(p.denies("169.254.169.254".parse().unwrap()));
    /// assert!(p.denies("::ffff:169.254.169.254".parse().unwrap()));
    /// assert!(!p.denies("127.0.0.1".parse().unwrap()));
    /// ```
    pub fn denies(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.deny.iter().any(|&(net, len)| in_network(ip, net, len))
    }

    /// Whether the host name `host` is denied by name.
    pub fn denies_host(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.');
        self.deny_hosts.iter().any(|d| d.eq_ignore_ascii_case(host))
    }

    /// Resolves `host` and keeps the addresses probes may connect to; an error
    /// when there is none.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if self.denies_host(host) {
            return Err(ResolveError::Denied(host.to_owned()));
        }
        let found: Vec<SocketAddr> = match host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((host, port))
                .await
                .map_err(|source| ResolveError::Lookup {
                    host: host.to_owned(),
                    source,
                })?
                .collect(),
        };
        let (allowed, denied): (Vec<SocketAddr>, Vec<SocketAddr>) =
            found.into_iter().partition(|a| !self.denies(a.ip()));
        match (allowed.is_empty(), denied.first()) {
            (false, _) => Ok(allowed),
            (true, Some(d)) if d.ip().to_string() == host => {
                Err(ResolveError::Denied(d.ip().to_string()))
            }
            (true, Some(d)) => Err(ResolveError::ResolvesToDenied {
                host: host.to_owned(),
                ip: d.ip(),
            }),
            (true, None) => Err(ResolveError::NoAddress(host.to_owned())),
        }
    }

    /// Connects to the first allowed address of `host:port` that answers.
    async fn connect(&self, host: &str, port: u16) -> Result<TcpStream, ConnectError> {
        let mut last = None;
        for addr in self.resolve(host, port).await? {
            match TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        // `resolve` returns at least one address.
        Err(last.map_or_else(
            || ResolveError::NoAddress(host.to_owned()).into(),
            ConnectError::Io,
        ))
    }
}

/// Why a probe's destination has no address it may connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The host name, or the address given, is denied by the [`ProbePolicy`].
    #[error("{0} is denied by the registry's check policy")]
    Denied(String),
    /// The name resolves to denied addresses only (the first one named).
    #[error("{host} resolves to {ip}, which is denied by the registry's check policy")]
    ResolvesToDenied {
        /// The name.
        host: String,
        /// A denied address it resolves to.
        ip: IpAddr,
    },
    /// The name does not resolve.
    #[error("resolve {host}: {source}")]
    Lookup {
        /// The name.
        host: String,
        /// What the resolver said.
        #[source]
        source: std::io::Error,
    },
    /// The name resolves to no address at all.
    #[error("resolve {0}: no address")]
    NoAddress(String),
}

/// Why a probe's connection could not be opened.
#[derive(Debug, thiserror::Error)]
enum ConnectError {
    /// No address to connect to.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Every address refused (the last one's error).
    #[error(transparent)]
    Io(std::io::Error),
}

/// Why an HTTP or TCP probe failed before it had a status to report; its
/// text is the check's output, after the method and URL (or the address).
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// The check's `host:port` does not split.
    #[error("expected host:port: {0:?}")]
    HostPort(String),
    /// A method or header registration refuses, in a definition stored by an
    /// older version.
    #[error(transparent)]
    Forbidden(#[from] ForbiddenInCheck),
    /// The URL does not parse.
    #[error("invalid URL: {0}")]
    Url(#[source] axum::http::uri::InvalidUri),
    /// The URL names no host.
    #[error("the URL has no host")]
    NoHost,
    /// No connection (for HTTP; a TCP probe reports the [`ConnectError`] alone).
    #[error("connect: {0}")]
    Connect(#[source] ConnectError),
    /// The request cannot be built from the definition.
    #[error("invalid request: {0}")]
    Request(#[source] axum::http::Error),
    /// The host is not a valid TLS server name.
    #[error("invalid TLS server name: {0}")]
    ServerName(#[source] rustls::pki_types::InvalidDnsNameError),
    /// The TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Tls(#[source] std::io::Error),
    /// The HTTP/1.1 handshake failed.
    #[error("HTTP handshake: {0}")]
    HttpHandshake(#[source] hyper::Error),
    /// Sending the request or reading the response head failed.
    #[error("request: {0}")]
    Send(#[source] hyper::Error),
    /// The connection failed before the response arrived.
    #[error("connection: {0}")]
    Connection(#[source] hyper::Error),
}

fn in_network(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip, net.to_canonical()) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Splits `host:port` or `[v6]:port` (validated at registration).
fn host_port(addr: &str) -> Result<(&str, u16), ProbeError> {
    let bad = || ProbeError::HostPort(addr.to_owned());
    let (host, port) = addr.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// The raw result of one probe, before the anti-flap thresholds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    /// What the probe saw.
    pub status: Health,
    /// What to show operators: status line, error, start of the body.
    pub output: String,
}

impl ProbeResult {
    fn critical(output: impl Into<String>) -> Self {
        ProbeResult {
            status: Health::Critical,
            output: output.into(),
        }
    }
}

/// A boxed probe future.
pub type ProbeFuture = Pin<Box<dyn Future<Output = ProbeResult> + Send>>;

/// Runs checks. The scheduler applies the timeout around the returned future.
pub trait Prober: Send + Sync + std::fmt::Debug + 'static {
    /// Probes the target of `spec` once.
    fn probe(&self, spec: &CheckSpec) -> ProbeFuture;
}

/// The real prober: HTTP(S), TCP and gRPC over the network, within a
/// [`ProbePolicy`].
#[derive(Clone, Debug)]
pub struct NetProber {
    verified: Arc<ClientConfig>,
    unverified: Arc<ClientConfig>,
    policy: Arc<ProbePolicy>,
}

impl Default for NetProber {
    fn default() -> Self {
        Self::new()
    }
}

impl NetProber {
    /// A prober trusting the Mozilla root certificates compiled into the binary
    /// (so it needs no CA bundle on the host or in the container), with the
    /// default [`ProbePolicy`].
    pub fn new() -> Self {
        Self::with_policy(ProbePolicy::default())
    }

    /// A prober bound by `policy`.
    pub fn with_policy(policy: ProbePolicy) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let verified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let unverified = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
            .with_no_client_auth();
        NetProber {
            verified: Arc::new(verified),
            unverified: Arc::new(unverified),
            policy: Arc::new(policy),
        }
    }
}

impl Prober for NetProber {
    fn probe(&self, spec: &CheckSpec) -> ProbeFuture {
        match spec.target.clone() {
            Target::Http {
                url,
                method,
                headers,
                tls_skip_verify,
            } => {
                let tls = if tls_skip_verify {
                    self.unverified.clone()
                } else {
                    self.verified.clone()
                };
                let policy = self.policy.clone();
                Box::pin(async move {
                    match http(&url, &method, &headers, tls, &policy).await {
                        Ok(r) => r,
                        Err(e) => ProbeResult::critical(format!("{method} {url}: {e}")),
                    }
                })
            }
            Target::Tcp { addr } => {
                let policy = self.policy.clone();
                Box::pin(async move {
                    let failed = |e: &dyn std::fmt::Display| {
                        ProbeResult::critical(format!("TCP connect {addr}: {e}"))
                    };
                    match host_port(&addr) {
                        Err(e) => failed(&e),
                        Ok((host, port)) => match policy.connect(host, port).await {
                            Ok(_) => ProbeResult {
                                status: Health::Passing,
                                output: format!("TCP connect {addr}: success"),
                            },
                            Err(e) => failed(&e),
                        },
                    }
                })
            }
            Target::Grpc { addr, service } => {
                let timeout = spec.timeout;
                let policy = self.policy.clone();
                Box::pin(async move { grpc(&addr, &service, timeout, &policy).await })
            }
            Target::Ttl { .. } => Box::pin(async {
                ProbeResult::critical("ttl checks are reported by the instance, not probed")
            }),
        }
    }
}

/// Health of an HTTP status: 2xx passing, 429 warning, anything else critical.
pub fn http_health(status: StatusCode) -> Health {
    if status.is_success() {
        Health::Passing
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        Health::Warning
    } else {
        Health::Critical
    }
}

async fn http(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    tls: Arc<ClientConfig>,
    policy: &ProbePolicy,
) -> Result<ProbeResult, ProbeError> {
    // Registration refuses these; a definition stored by an older version
    // may still hold one, and is not sent.
    check_http_method(method)?;
    for (k, _) in headers {
        check_http_header(k)?;
    }
    let uri: Uri = url.parse().map_err(ProbeError::Url)?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or(ProbeError::NoHost)?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = policy
        .connect(bare_host, port)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_owned();
    let mut req = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority)
        .header(header::USER_AGENT, "roster-health-check")
        .header(header::ACCEPT, "text/plain, */*")
        .header(header::CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(ProbeError::Request)?;
    let (status, body) = if https {
        let name = ServerName::try_from(bare_host.to_owned()).map_err(ProbeError::ServerName)?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(ProbeError::Tls)?;
        exchange(stream, req).await?
    } else {
        exchange(tcp, req).await?
    };
    let reason = status.canonical_reason().unwrap_or("");
    let mut output = format!("{method} {url}: {} {reason}", status.as_u16());
    if policy.output_body && !body.is_empty() {
        output.push('\n');
        output.push_str(&body);
    }
    Ok(ProbeResult {
        status: http_health(status),
        output,
    })
}

/// Sends `req` on a new HTTP/1.1 connection over `io` and reads the status and
/// the start of the body. The connection is driven inside this future, so it
/// closes when the future is dropped.
async fn exchange<IO>(
    io: IO,
    req: Request<Empty<Bytes>>,
) -> Result<(StatusCode, String), ProbeError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(ProbeError::HttpHandshake)?;
    let work = async move {
        let resp = sender.send_request(req).await.map_err(ProbeError::Send)?;
        let status = resp.status();
        let mut body = resp.into_body();
        let mut preview = Vec::new();
        while preview.len() < BODY_PREVIEW {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        preview.extend_from_slice(data);
                    }
                }
                // A broken body after a status line still tells the status.
                Some(Err(_)) | None => break,
            }
        }
        preview.truncate(BODY_PREVIEW);
        Ok::<_, ProbeError>((status, String::from_utf8_lossy(&preview).into_owned()))
    };
    tokio::pin!(conn, work);
    tokio::select! {
        r = &mut work => r,
        c = &mut conn => match c {
            Err(e) => Err(ProbeError::Connection(e)),
            // Closed after the whole response arrived: it is still readable.
            Ok(()) => work.await,
        },
    }
}

async fn grpc(
    addr: &str,
    service: &str,
    timeout: std::time::Duration,
    policy: &ProbePolicy,
) -> ProbeResult {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let shown = if service.is_empty() {
        addr.to_owned()
    } else {
        format!("{addr}/{service}")
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{addr}")) {
        Ok(e) => e.connect_timeout(timeout).timeout(timeout),
        Err(e) => return ProbeResult::critical(format!("gRPC {shown}: invalid address: {e}")),
    };
    // Resolved and checked here; the channel connects to exactly that address.
    let refused =
        |e: &dyn std::fmt::Display| ProbeResult::critical(format!("gRPC {shown}: connect: {e}"));
    let target = match host_port(addr) {
        Err(e) => return refused(&e),
        Ok((host, port)) => match policy.resolve(host, port).await {
            Ok(addrs) => addrs[0],
            Err(e) => return refused(&e),
        },
    };
    let connector = tower::service_fn(move |_: Uri| async move {
        TcpStream::connect(target).await.map(TokioIo::new)
    });
    let channel = match endpoint.connect_with_connector(connector).await {
        Ok(c) => c,
        Err(e) => return ProbeResult::critical(format!("gRPC {shown}: connect: {e}")),
    };
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(resp) => {
            let status = resp.into_inner().status();
            let health = if status == ServingStatus::Serving {
                Health::Passing
            } else {
                Health::Critical
            };
            ProbeResult {
                status: health,
                output: format!("gRPC {shown}: {}", status.as_str_name()),
            }
        }
        Err(status) => ProbeResult::critical(format!(
            "gRPC {shown}: {:?}: {}",
            status.code(),
            status.message()
        )),
    }
}

/// Accepts any server certificate (`tls_skip_verify`); handshake signatures
/// are still checked, so the peer must hold the key of the certificate it sent.
#[derive(Debug)]
struct AcceptAnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_match_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(in_network(ip("169.254.0.1"), ip("169.254.0.0"), 16));
        assert!(!in_network(ip("169.255.0.1"), ip("169.254.0.0"), 16));
        assert!(
            in_network(ip("10.1.2.3"), ip("0.0.0.0"), 0),
            "/0 is everything"
        );
        assert!(in_network(ip("fe80::1"), ip("fe80::"), 10));
        assert!(in_network(ip("febf::1"), ip("fe80::"), 10));
        assert!(!in_network(ip("fec0::1"), ip("fe80::"), 10));
        assert!(in_network(ip("fd00:ec2::254"), ip("fd00:ec2::254"), 128));
        assert!(!in_network(ip("fd00:ec2::253"), ip("fd00:ec2::254"), 128));
        assert!(
            !in_network(ip("169.254.0.1"), ip("fe80::"), 10),
            "families differ"
        );
        let mut p = ProbePolicy::default();
        assert!(p.denies(ip("::ffff:169.254.169.254")), "IPv4-mapped");
        assert!(p.denies_host("Metadata.Google.Internal."));
        assert!(!p.denies(ip("::1")));
        p.deny_loopback();
        assert!(p.denies(ip("::1")) && p.denies(ip("127.0.0.2")) && p.denies(ip("0.0.0.0")));
        assert!(p.denies(ip("::ffff:127.0.0.1")));
    }

    #[tokio::test]
    async fn resolution_is_checked() {
        let mut p = ProbePolicy::default();
        let err = p.resolve("169.254.169.254", 80).await.unwrap_err();
        assert!(matches!(&err, ResolveError::Denied(a) if a == "169.254.169.254"));
        assert_eq!(
            err.to_string(),
            "169.254.169.254 is denied by the registry's check policy"
        );
        let err = p.resolve("metadata.google.internal", 80).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "metadata.google.internal is denied by the registry's check policy"
        );
        assert!(p.resolve("localhost", 80).await.is_ok());
        p.deny_loopback();
        let err = p.resolve("localhost", 80).await.unwrap_err();
        assert!(
            matches!(err, ResolveError::ResolvesToDenied { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("localhost resolves to "),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with(", which is denied by the registry's check policy")
        );
        let err = p.resolve("[::1]", 80).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "::1 is denied by the registry's check policy"
        );
    }

    /// What a probe that cannot start says, in the check's output.
    #[tokio::test]
    async fn probe_failures_read_as_before() {
        let spec = |target: Target| CheckSpec {
            target,
            ..CheckSpec::parse_all(
                vec![roster_api::CheckDefinition {
                    tcp: Some("127.0.0.1:1".into()),
                    ..Default::default()
                }],
                &crate::model::Limits::default(),
            )
            .unwrap()
            .remove(0)
        };
        let prober = NetProber::new();
        let out = prober
            .probe(&spec(Target::Tcp {
                addr: "no-port".into(),
            }))
            .await;
        assert_eq!(
            out.output,
            r#"TCP connect no-port: expected host:port: "no-port""#
        );
        let out = prober
            .probe(&spec(Target::Tcp {
                addr: "169.254.169.254:80".into(),
            }))
            .await;
        assert_eq!(
            out.output,
            "TCP connect 169.254.169.254:80: 169.254.169.254 is denied by the registry's check policy"
        );
        let http = |url: &str, method: &str, headers: Vec<(String, String)>| Target::Http {
            url: url.into(),
            method: method.into(),
            headers,
            tls_skip_verify: false,
        };
        let out = prober
            .probe(&spec(http("http://169.254.169.254/latest", "GET", vec![])))
            .await;
        assert_eq!(
            out.output,
            "GET http://169.254.169.254/latest: connect: 169.254.169.254 is denied by the registry's check policy"
        );
        let out = prober
            .probe(&spec(http("http://10.0.0.1/", "DELETE", vec![])))
            .await;
        assert_eq!(
            out.output,
            r#"DELETE http://10.0.0.1/: method "DELETE" is not allowed in a check; use one of GET, HEAD, POST, PUT, OPTIONS"#
        );
        let out = prober
            .probe(&spec(http(
                "http://10.0.0.1/",
                "GET",
                vec![("Host".into(), "x".into())],
            )))
            .await;
        assert_eq!(
            out.output,
            r#"GET http://10.0.0.1/: header "Host" may not be set by a check"#
        );
        let out = prober
            .probe(&spec(Target::Grpc {
                addr: "169.254.169.254:9000".into(),
                service: String::new(),
            }))
            .await;
        assert_eq!(
            out.output,
            "gRPC 169.254.169.254:9000: connect: 169.254.169.254 is denied by the registry's check policy"
        );
        assert!(out.status == Health::Critical);
    }

    #[test]
    fn status_mapping() {
        assert_eq!(http_health(StatusCode::OK), Health::Passing);
        assert_eq!(http_health(StatusCode::NO_CONTENT), Health::Passing);
        assert_eq!(http_health(StatusCode::TOO_MANY_REQUESTS), Health::Warning);
        assert_eq!(http_health(StatusCode::MOVED_PERMANENTLY), Health::Critical);
        assert_eq!(
            http_health(StatusCode::SERVICE_UNAVAILABLE),
            Health::Critical
        );
    }
}
