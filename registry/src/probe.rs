//! The probes behind active health checks: one HTTP request, one TCP connect or
//! one gRPC `Health/Check` call, each on a fresh connection (a check should
//! prove that a new client can get in, and a kept-alive connection would not).
//!
//! HTTP is spoken with hyper directly rather than a pooling client: every probe
//! owns its connection, so dropping the probe (timeout, shutdown) closes it, and
//! the response body is read only up to [`BODY_PREVIEW`] bytes.

use std::future::Future;
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

use crate::checks::{CheckSpec, Target};

/// Bytes of an HTTP response body kept in the check output.
pub const BODY_PREVIEW: usize = 512;

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

/// The real prober: HTTP(S), TCP and gRPC over the network.
#[derive(Clone, Debug)]
pub struct NetProber {
    verified: Arc<ClientConfig>,
    unverified: Arc<ClientConfig>,
}

impl Default for NetProber {
    fn default() -> Self {
        Self::new()
    }
}

impl NetProber {
    /// A prober trusting the Mozilla root certificates compiled into the binary
    /// (so it needs no CA bundle on the host or in the container).
    pub fn new() -> Self {
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
                Box::pin(async move {
                    match http(&url, &method, &headers, tls).await {
                        Ok(r) => r,
                        Err(e) => ProbeResult::critical(format!("{method} {url}: {e}")),
                    }
                })
            }
            Target::Tcp { addr } => Box::pin(async move {
                match TcpStream::connect(addr.as_str()).await {
                    Ok(_) => ProbeResult {
                        status: Health::Passing,
                        output: format!("TCP connect {addr}: success"),
                    },
                    Err(e) => ProbeResult::critical(format!("TCP connect {addr}: {e}")),
                }
            }),
            Target::Grpc { addr, service } => {
                let timeout = spec.timeout;
                Box::pin(async move { grpc(&addr, &service, timeout).await })
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
) -> Result<ProbeResult, String> {
    let uri: Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let https = uri.scheme_str() == Some("https");
    let host = uri.host().ok_or("the URL has no host")?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare_host, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
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
        .map_err(|e| format!("invalid request: {e}"))?;
    let (status, body) = if https {
        let name = ServerName::try_from(bare_host.to_owned())
            .map_err(|e| format!("invalid TLS server name: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        exchange(stream, req).await?
    } else {
        exchange(tcp, req).await?
    };
    let reason = status.canonical_reason().unwrap_or("");
    let mut output = format!("{method} {url}: {} {reason}", status.as_u16());
    if !body.is_empty() {
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
async fn exchange<IO>(io: IO, req: Request<Empty<Bytes>>) -> Result<(StatusCode, String), String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let work = async move {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
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
        Ok::<_, String>((status, String::from_utf8_lossy(&preview).into_owned()))
    };
    tokio::pin!(conn, work);
    tokio::select! {
        r = &mut work => r,
        c = &mut conn => match c {
            Err(e) => Err(format!("connection: {e}")),
            // Closed after the whole response arrived: it is still readable.
            Ok(()) => work.await,
        },
    }
}

async fn grpc(addr: &str, service: &str, timeout: std::time::Duration) -> ProbeResult {
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
    let channel = match endpoint.connect().await {
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
