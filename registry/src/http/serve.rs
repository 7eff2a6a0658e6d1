//! The HTTP server loop: accepts connections (plain or TLS), caps how many are
//! open, gives each a header-read timeout (a slowloris client is cut off
//! instead of holding a connection forever), and shuts down gracefully.
//!
//! Connections speak HTTP/1.1 or HTTP/2: over TLS as ALPN settles it, in
//! plain text when the client opens with HTTP/2's preface (prior knowledge).
//! HTTP/2 lets one connection carry many requests and watch streams at once,
//! so a process that follows many services needs few sockets, and a change
//! reaches its watchers in few writes.
//!
//! `axum::serve` offers none of these knobs, so connections are served with
//! hyper directly.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::PeerTls;

/// Connection-level settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeConfig {
    /// Most connections open at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read_timeout: Duration,
    /// A connection whose client takes no bytes of the answer for this long is
    /// closed: a client that never reads cannot pin a connection and its
    /// buffered answer.
    pub write_timeout: Duration,
    /// Whether HTTP/2 is served (besides HTTP/1.1).
    pub http2: bool,
    /// Most requests (watch streams included) one HTTP/2 connection may have
    /// open at once; the client is told so in its SETTINGS and waits.
    pub http2_max_streams: u32,
    /// TLS, when set.
    pub tls: Option<TlsFiles>,
    /// How often the TLS files are checked for changes.
    pub tls_poll: Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(15),
            http2: true,
            http2_max_streams: 256,
            tls: None,
            tls_poll: Duration::from_secs(5),
        }
    }
}

/// Where the TLS material lives; read at start and again when it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates that client certificates must chain to; without it
    /// clients need none.
    pub client_ca: Option<PathBuf>,
}

/// Longest TLS handshake allowed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS material (the API's or the peers') cannot be used. Each names the
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read or parsed.
    #[error("{}: {source}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What the PEM reader said.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate chain file holds no certificate.
    #[error("{}: no certificate found", .0.display())]
    NoCertificate(PathBuf),
    /// A CA file holds no certificate.
    #[error("{}: no CA certificate found", .0.display())]
    NoCaCertificate(PathBuf),
    /// A CA certificate is not one rustls can use as a root.
    #[error("{}: {source}", path.display())]
    Root {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// No client certificate verifier can be built from the CA file.
    #[error("{}: {source}", path.display())]
    Verifier {
        /// The CA file.
        path: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate and the key do not go together (or do not suit TLS).
    #[error("{} and {}: {source}", cert.display(), key.display())]
    KeyPair {
        /// The certificate chain file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        #[source]
        source: rustls::Error,
    },
    /// The crypto provider supports none of the default protocol versions.
    #[error(transparent)]
    Protocols(rustls::Error),
    /// Neither the API's TLS files nor peer TLS are configured.
    #[error("no TLS files")]
    NoFiles,
}

impl TlsFiles {
    /// Builds a server configuration from the files.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        self.load_with(None)
    }

    /// Builds a server configuration from the files; with `peer_ca`, client
    /// certificates become optional at the handshake but must chain to the
    /// peer CA or the client CA when presented.
    pub fn load_with(&self, peer_ca: Option<&std::path::Path>) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Protocols)?;
        let builder = match (&self.client_ca, peer_ca) {
            (client_ca, Some(peer_ca)) => {
                let mut roots = rustls::RootCertStore::empty();
                read_roots(peer_ca, &mut roots)?;
                if let Some(path) = client_ca {
                    read_roots(path, &mut roots)?;
                }
                // A peer must show its certificate; the gate of /v1/raft/*
                // checks it came from the peer CA. API clients may come
                // without one (see `PeerCertificate`).
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .allow_unauthenticated()
                .build()
                .map_err(|source| TlsError::Verifier {
                    path: peer_ca.to_owned(),
                    source,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(path), None) => {
                let mut roots = rustls::RootCertStore::empty();
                read_roots(path, &mut roots)?;
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|source| TlsError::Verifier {
                    path: path.clone(),
                    source,
                })?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder
                .with_single_cert(certs, key)
                .map_err(|source| TlsError::KeyPair {
                    cert: self.cert.clone(),
                    key: self.key.clone(),
                    source,
                })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let mut out = vec![mtime(&self.cert), mtime(&self.key)];
        if let Some(ca) = &self.client_ca {
            out.push(mtime(ca));
        }
        out
    }
}

fn pem_error(path: &std::path::Path) -> impl Fn(rustls::pki_types::pem::Error) -> TlsError {
    move |source| TlsError::Pem {
        path: path.to_owned(),
        source,
    }
}

/// Reads a PEM certificate chain; fails when it holds no certificate.
pub fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(pem_error(path))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn read_key(path: &std::path::Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(pem_error(path))
}

/// Adds the PEM CA certificates of `path` to `roots`; fails when it holds none.
pub fn read_roots(
    path: &std::path::Path,
    roots: &mut rustls::RootCertStore,
) -> Result<(), TlsError> {
    let mut found = false;
    for cert in CertificateDer::pem_file_iter(path).map_err(pem_error(path))? {
        let cert = cert.map_err(pem_error(path))?;
        roots.add(cert).map_err(|source| TlsError::Root {
            path: path.to_owned(),
            source,
        })?;
        found = true;
    }
    if !found {
        return Err(TlsError::NoCaCertificate(path.to_owned()));
    }
    Ok(())
}

/// Whether the client of a TLS connection presented a certificate that chains
/// to the peer CA: in every request's extensions when peer TLS is on. The
/// gate of `/v1/raft/*` requires it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCertificate(pub bool);

/// A configuration in use and what checks a connection after its handshake.
#[derive(Debug)]
struct Loaded {
    /// Offering HTTP/1.1 alone (the API with HTTP/2 turned off).
    config: Arc<ServerConfig>,
    /// The same, offering HTTP/2 first, then HTTP/1.1 (the API).
    both: Arc<ServerConfig>,
    /// The same, offering HTTP/2 alone (gRPC).
    h2: Arc<ServerConfig>,
    /// The peer CA alone, when peer TLS is on.
    peer: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
}

/// What to run after a successful reload.
type OnReload = Box<dyn Fn() + Send + Sync>;

/// The TLS configuration in use, swapped when the files change or on SIGHUP.
pub struct TlsState {
    files: TlsFiles,
    peer: Option<PeerTls>,
    current: ArcSwap<Loaded>,
    on_reload: std::sync::Mutex<Vec<OnReload>>,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("files", &self.files)
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the files; fails when they cannot be used.
    pub fn new(files: TlsFiles) -> Result<Arc<TlsState>, TlsError> {
        Self::with_peers(Some(files), None)
    }

    /// The API's TLS files and peer TLS, either or both: the server presents
    /// the API certificate if there is one, else the peer certificate. `None`
    /// when neither is set.
    pub fn with_peers(
        api: Option<TlsFiles>,
        peer: Option<PeerTls>,
    ) -> Result<Arc<TlsState>, TlsError> {
        let files = match (api, &peer) {
            (Some(files), _) => files,
            (None, Some(p)) => TlsFiles {
                cert: p.cert.clone(),
                key: p.key.clone(),
                client_ca: None,
            },
            (None, None) => return Err(TlsError::NoFiles),
        };
        let loaded = Self::load(&files, peer.as_ref())?;
        Ok(Arc::new(TlsState {
            files,
            peer,
            current: ArcSwap::from_pointee(loaded),
            on_reload: std::sync::Mutex::new(Vec::new()),
        }))
    }

    fn load(files: &TlsFiles, peer: Option<&PeerTls>) -> Result<Loaded, TlsError> {
        let config = files.load_with(peer.map(|p| p.ca.as_path()))?;
        let peer = match peer {
            Some(p) => {
                // The files are read whole again: a cert and key that do not
                // match fail here, not on the first peer call.
                p.check()?;
                Some(p.verifier()?)
            }
            None => None,
        };
        let mut h2 = config.clone();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let mut both = config.clone();
        both.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Loaded {
            config: Arc::new(config),
            both: Arc::new(both),
            h2: Arc::new(h2),
            peer,
        })
    }

    /// Runs `f` after every successful reload (the peer client is rebuilt so).
    pub fn on_reload(&self, f: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut hooks) = self.on_reload.lock() {
            hooks.push(Box::new(f));
        }
    }

    /// Loads the files again; keeps the old configuration if they are broken.
    pub fn reload(&self) -> bool {
        match Self::load(&self.files, self.peer.as_ref()) {
            Ok(loaded) => {
                self.current.store(Arc::new(loaded));
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                if let Ok(hooks) = self.on_reload.lock() {
                    for hook in hooks.iter() {
                        hook();
                    }
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "TLS reload failed; still serving the previous certificate");
                false
            }
        }
    }

    fn modified(&self) -> Vec<Option<SystemTime>> {
        let mut out = self.files.modified();
        if let Some(p) = &self.peer {
            let mtime = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            out.extend([mtime(&p.cert), mtime(&p.key), mtime(&p.ca)]);
        }
        out
    }

    /// Reloads on SIGHUP and whenever a file's modification time changes
    /// (checked every `poll`), until `cancel`.
    pub async fn watch(self: Arc<Self>, poll: Duration, cancel: CancellationToken) {
        let mut seen = self.modified();
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<Option<()>>();
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = hangup => {
                    self.reload();
                    seen = self.modified();
                }
                () = tokio::time::sleep(poll) => {
                    let now = self.modified();
                    if now != seen {
                        seen = now;
                        self.reload();
                    }
                }
            }
        }
    }

    /// The current certificate for HTTP/2 (gRPC) connections.
    pub fn h2_config(&self) -> Arc<ServerConfig> {
        self.current.load().h2.clone()
    }

    /// What accepts one connection: offering HTTP/2 when `http2`.
    fn acceptor(&self, http2: bool) -> Acceptor {
        let loaded = self.current.load_full();
        let config = if http2 { &loaded.both } else { &loaded.config };
        Acceptor {
            tls: tokio_rustls::TlsAcceptor::from(config.clone()),
            peer: loaded.peer.clone(),
            // The API asked for client certificates; the handshake lets a
            // client without one through only because peers share the port.
            cert_required: self.peer.is_some() && self.files.client_ca.is_some(),
        }
    }
}

/// One connection's TLS settings, taken at accept.
struct Acceptor {
    tls: tokio_rustls::TlsAcceptor,
    peer: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
    cert_required: bool,
}

/// What the handshake told about the client.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ClientCert {
    /// `Some(from the peer CA)` when peer TLS is on.
    peer: Option<PeerCertificate>,
    /// The API requires a client certificate and none was presented: every
    /// request is refused.
    missing: bool,
}

/// Serves `app` on `listener` until `shutdown`; then stops accepting, lets
/// in-flight requests finish and waits for every connection to close.
pub async fn serve(
    listener: TcpListener,
    app: super::Api,
    config: ServeConfig,
    tls: Option<Arc<TlsState>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    loop {
        let (tcp, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Over the cap: closing at once costs less than serving slowly.
            drop(tcp);
            continue;
        };
        let app = app.clone();
        let acceptor = tls.as_ref().map(|t| t.acceptor(config.http2));
        let shutdown = shutdown.clone();
        let settings = Settings::of(&config);
        tracker.spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            // Until a connection has sent something (or finished its TLS
            // handshake) there is nothing in flight: a shutdown drops it
            // rather than wait out the header or handshake timeout.
            let h2 = async {
                acceptor.is_none() && opens_with_h2_preface(&tcp, settings.header_timeout).await
            };
            let h2 = tokio::select! {
                h2 = h2 => h2,
                () = shutdown.cancelled() => return,
            };
            if h2 && !settings.http2 {
                refuse_h2(tcp).await;
                return;
            }
            let tcp = WriteStall::new(tcp, settings.write_timeout);
            match acceptor {
                None => {
                    let client = ClientCert::default();
                    let io = Peer { remote, client };
                    if h2 {
                        super::http2::connection(tcp, io, app, settings, shutdown).await;
                    } else {
                        connection(tcp, io, app, settings.header_timeout, shutdown).await;
                    }
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.tls.accept(tcp));
                    let handshake = tokio::select! {
                        h = handshake => h,
                        () = shutdown.cancelled() => return,
                    };
                    if let Ok(Ok(stream)) = handshake {
                        let tls = stream.get_ref().1;
                        let chain = tls.peer_certificates().unwrap_or_default();
                        let client = ClientCert {
                            peer: acceptor.peer.as_ref().map(|v| {
                                PeerCertificate(crate::cluster::is_peer(v.as_ref(), chain))
                            }),
                            missing: acceptor.cert_required && chain.is_empty(),
                        };
                        let h2 = tls.alpn_protocol() == Some(b"h2");
                        let io = Peer { remote, client };
                        if h2 {
                            super::http2::connection(stream, io, app, settings, shutdown).await;
                        } else {
                            connection(stream, io, app, settings.header_timeout, shutdown).await;
                        }
                    }
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// What one connection's settings are, copied into its task.
#[derive(Clone, Copy, Debug)]
pub(super) struct Settings {
    pub(super) header_timeout: Duration,
    write_timeout: Duration,
    http2: bool,
    pub(super) http2_max_streams: u32,
}

impl Settings {
    pub(super) fn of(config: &ServeConfig) -> Self {
        Settings {
            header_timeout: config.header_read_timeout,
            write_timeout: config.write_timeout,
            http2: config.http2,
            http2_max_streams: config.http2_max_streams.max(1),
        }
    }
}

/// Who is at the other end of a connection.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peer {
    pub(super) remote: SocketAddr,
    pub(super) client: ClientCert,
}

/// The future of one request handed to the API.
type Answer = futures_util::future::Either<
    std::future::Ready<Result<axum::response::Response, std::convert::Infallible>>,
    super::direct::ApiFuture,
>;

impl Peer {
    /// Hands one request to `app`, with what the connection knows about
    /// the client, or refuses it when the client lacks a required
    /// certificate. The same for both HTTP versions.
    pub(super) fn call(
        self,
        app: &super::Api,
        mut req: hyper::Request<axum::body::Body>,
    ) -> Answer {
        if self.client.missing {
            use axum::response::IntoResponse;
            let refused = (
                hyper::StatusCode::FORBIDDEN,
                "a client certificate is required\n",
            )
                .into_response();
            return futures_util::future::Either::Left(std::future::ready(Ok(refused)));
        }
        // Only writes look at the caller's address (the per-address write
        // rate, a registration's default address); a read does without it,
        // and so without the extension map it would allocate.
        if super::limits::is_write(req.method()) {
            req.extensions_mut().insert(ConnectInfo(self.remote));
        }
        if let Some(peer) = self.client.peer {
            req.extensions_mut().insert(peer);
        }
        futures_util::future::Either::Right(app.call(req))
    }
}

async fn connection<IO>(
    io: IO,
    peer: Peer,
    app: super::Api,
    header_timeout: Duration,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        peer.call(&app, req.map(axum::body::Body::new))
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    let io = super::parse_errors::ProblemBodies::new(io);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Largest header block taken, either HTTP version: HTTP/1.1 reads a head
/// into a buffer of this size, and HTTP/2 takes a header list as large.
pub(super) const MAX_HEADER_BYTES: usize = 64 * 1024;
/// An answer's body that holds `_held` (a watcher's slot) until the server
/// is done sending it, for as long as a stream lasts. Its frames pass
/// through untouched.
pub(super) struct Holding<T> {
    pub body: axum::body::Body,
    pub _held: T,
}

impl<T: Unpin> hyper::body::Body for Holding<T> {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Writes `bytes[*done..]` to `io`, moving `done` on as it goes; ready once
/// all of it is written. What the stream wrappers below and
/// [`super::parse_errors::ProblemBodies`] send out of their own buffers.
pub(super) fn write_from<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    cx: &mut Context<'_>,
    bytes: &[u8],
    done: &mut usize,
) -> Poll<io::Result<()>> {
    while *done < bytes.len() {
        match Pin::new(&mut *io).poll_write(cx, &bytes[*done..]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => *done += n,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Poll::Ready(Ok(()))
}

/// Reads of a stream wrapper (a struct with the stream in its `io` field)
/// go straight to the stream: the wrappers here only change writes.
macro_rules! reads_through {
    ($wrapper:ident) => {
        impl<IO: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for $wrapper<IO> {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
            }
        }
    };
}
pub(super) use reads_through;

/// The client connection preface of HTTP/2 (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether a plain-text connection opens with HTTP/2's preface (a client with
/// "prior knowledge"). Over TLS, ALPN settles the version instead. Costs one
/// `peek` for an HTTP/1 client.
async fn opens_with_h2_preface(tcp: &tokio::net::TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; H2_PREFACE.len()];
    tokio::time::timeout(wait, async {
        loop {
            let n = match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => n,
            };
            if !H2_PREFACE.starts_with(&buf[..n]) {
                return false;
            }
            if n == H2_PREFACE.len() {
                return true;
            }
            // Part of the preface so far (or one `P`): look again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or(false)
}

/// Answers an HTTP/2 client, when HTTP/2 is turned off, the way RFC 9113
/// provides for: an empty SETTINGS frame, then GOAWAY with
/// `HTTP_1_1_REQUIRED`, so it reports a clear error instead of a connection
/// closed without a word.
async fn refuse_h2(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    const HTTP_1_1_REQUIRED: u32 = 0xd;
    let debug = b"HTTP/2 is turned off on this roster (--no-http2)";
    let mut frames = vec![0, 0, 0, 0x4, 0, 0, 0, 0, 0];
    let len = (8 + debug.len()) as u32;
    frames.extend_from_slice(&len.to_be_bytes()[1..]);
    frames.extend_from_slice(&[0x7, 0]);
    frames.extend_from_slice(&0u32.to_be_bytes()); // stream 0
    frames.extend_from_slice(&0u32.to_be_bytes()); // last stream id
    frames.extend_from_slice(&HTTP_1_1_REQUIRED.to_be_bytes());
    frames.extend_from_slice(debug);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = tcp.write_all(&frames).await;
        let _ = tcp.shutdown().await;
    })
    .await;
}

/// A stream whose writes fail once the peer has taken no bytes for `limit`.
/// hyper has no write timeout of its own: without this, a client that sends
/// requests and never reads the answers holds its connection (and the
/// answers' memory) for as long as it likes.
#[derive(Debug)]
struct WriteStall<IO> {
    io: IO,
    limit: Duration,
    /// Armed when a write first finds the socket full; cleared by progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> WriteStall<IO> {
    fn new(io: IO, limit: Duration) -> Self {
        WriteStall {
            io,
            limit,
            stalled: None,
        }
    }

    /// What to answer for a write that found no room: pending, or an error
    /// once the stall has lasted `limit`.
    fn pending<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn track<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match poll {
            Poll::Ready(r) => {
                self.stalled = None;
                Poll::Ready(r)
            }
            Poll::Pending => self.pending(cx),
        }
    }
}

reads_through!(WriteStall);

impl<IO: AsyncWrite + Unpin> AsyncWrite for WriteStall<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.track(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.track(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.track(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// One connection served as `serve` serves it, over an in-memory pipe.
    fn serve_one(header_timeout: Duration) -> (DuplexStream, tokio::task::JoinHandle<()>) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let app = axum::Router::new().route("/ok", get(|| async { "ok" }));
        let remote = SocketAddr::from(([127, 0, 0, 1], 1));
        let peer = Peer {
            remote,
            client: ClientCert::default(),
        };
        let conn = tokio::spawn(connection(
            server,
            peer,
            app.into(),
            header_timeout,
            CancellationToken::new(),
        ));
        (client, conn)
    }

    /// Sends one request and reads its answer (whose body is `ok`).
    async fn request(client: &mut DuplexStream) {
        client
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok") {
            let mut buf = [0u8; 512];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 200"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_that_never_ends_is_cut_at_the_header_timeout() {
        let (mut client, conn) = serve_one(Duration::from_secs(10));
        client
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(9_900)).await;
        assert!(!conn.is_finished(), "cut before its deadline");
        tokio::time::timeout(Duration::from_millis(200), conn)
            .await
            .expect("cut at its deadline")
            .unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"));
    }

    /// Each request arms a later deadline than the one before: the
    /// connection's single timer must follow them, neither cutting a busy
    /// connection at an old request's deadline nor letting an idle one live
    /// past its last request's.
    #[tokio::test(start_paused = true)]
    async fn keep_alive_requests_move_the_deadline_and_idleness_is_cut() {
        let (mut client, conn) = serve_one(Duration::from_secs(1));
        for _ in 0..10 {
            request(&mut client).await;
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        assert!(!conn.is_finished(), "a busy connection was cut");
        // Off the timer's whole periods, so that a timer that only ever woke
        // a period after its last firing would be seen to close late.
        tokio::time::sleep(Duration::from_millis(300)).await;
        request(&mut client).await;
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!conn.is_finished(), "cut before the idle deadline");
        tokio::time::timeout(Duration::from_millis(200), conn)
            .await
            .expect("an idle connection is cut at its deadline")
            .unwrap();
    }
}
