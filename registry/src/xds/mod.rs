//! The xDS control plane: gRPC clients in any language (the `xds:///NAME`
//! resolver) and Envoy discover roster's instances over the Aggregated
//! Discovery Service, state of the world and incremental.
//!
//! Every stream reads the registry's published snapshot: a change wakes each
//! stream once (`Registry::subscribe_list`), the stream compares the versions
//! of what it subscribed to with what it sent, and sends what differs. The
//! resources themselves are built and encoded once per change of their
//! service ([`resources::Resources`]) and shared by every stream.

pub mod resources;

mod delta;
mod failover;
mod fanout;
mod sotw;
mod stream;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::acl::{Need, Tokens};
use crate::federation::Federation;
use crate::federation::failover::Failover;
use crate::http::serve::TlsState;
use crate::registry::Registry;
use resources::Resources;

/// Default gRPC (xDS) listen address, Consul's gRPC port.
pub const DEFAULT_GRPC_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8502,
));

/// What every stream shares.
#[derive(Debug)]
pub struct Xds {
    registry: Arc<Registry>,
    resources: Resources,
    acl: Option<Tokens>,
    streams: Arc<Semaphore>,
    cancel: CancellationToken,
    /// Other datacenters' answers for failover, when federated.
    failover: Option<Failover>,
    /// Responses sent, per kind (indexed by the kind's discriminant).
    pushes: [prometheus_client::metrics::counter::Counter; 4],
    /// Each thread's receivers of the followed services' changes.
    fanout: fanout::Fanout,
}

impl Xds {
    /// The control plane over `registry`, with at most `max_streams` streams;
    /// with `federation`, endpoints fail over to other datacenters.
    pub fn new(
        registry: Arc<Registry>,
        acl: Option<Tokens>,
        max_streams: usize,
        federation: Option<&Federation>,
        cancel: CancellationToken,
    ) -> Arc<Xds> {
        let mut pushes: [prometheus_client::metrics::counter::Counter; 4] = Default::default();
        for kind in resources::Kind::ALL {
            pushes[kind as usize] = registry.metrics().xds_push_counter(kind.label());
        }
        Arc::new(Xds {
            pushes,
            registry,
            resources: Resources::default(),
            acl,
            streams: Arc::new(Semaphore::new(max_streams)),
            cancel,
            failover: federation.map(|f| f.failover().clone()),
            fanout: fanout::Fanout::default(),
        })
    }

    /// The counter of `kind` responses sent.
    fn pushed(&self, kind: resources::Kind) -> &prometheus_client::metrics::counter::Counter {
        &self.pushes[kind as usize]
    }

    /// The failover resolver, when federated.
    fn failover(&self) -> Option<&Failover> {
        self.failover.as_ref()
    }

    /// Admits a stream: a token that may read (when ACLs are on) and room
    /// under the stream limit.
    fn admit(&self, headers: &http::HeaderMap) -> Result<OwnedSemaphorePermit, Status> {
        if let Some(tokens) = &self.acl {
            let secret = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .map(|v| v.strip_prefix("Bearer ").unwrap_or(v).trim())
                .filter(|v| !v.is_empty());
            let principal = match secret {
                None => tokens.anonymous().ok_or_else(|| {
                    self.registry.metrics().xds_refused("unauthenticated");
                    Status::unauthenticated(
                        "a token is required: send `authorization: Bearer TOKEN` metadata",
                    )
                })?,
                Some(secret) => tokens.lookup(secret).ok_or_else(|| {
                    self.registry.metrics().xds_refused("unauthenticated");
                    Status::unauthenticated("unknown token")
                })?,
            };
            if !principal.allows(&Need::Read) {
                self.registry.metrics().xds_refused("denied");
                return Err(Status::permission_denied(format!(
                    "token {:?} may not read the catalog",
                    principal.name
                )));
            }
        }
        self.streams.clone().try_acquire_owned().map_err(|_| {
            self.registry.metrics().xds_refused("full");
            Status::resource_exhausted("too many xDS streams on this node; try another")
        })
    }
}

/// An open stream: counted in the metrics and holding its place under the
/// stream limit until it is dropped (the client went away, the stream ended,
/// or the server stopped).
struct Open {
    metrics: Arc<crate::metrics::Metrics>,
    protocol: &'static str,
    _permit: OwnedSemaphorePermit,
}

impl Open {
    fn new(xds: &Xds, permit: OwnedSemaphorePermit, protocol: &'static str) -> Open {
        let metrics = xds.registry.metrics().clone();
        metrics.xds_stream(protocol, 1);
        Open {
            metrics,
            protocol,
            _permit: permit,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.xds_stream(self.protocol, -1);
    }
}

/// Services a stream follows one by one; past this it wakes on every change.
const MAX_FOLLOWED: usize = 256;

/// What wakes a stream: a change of a service it follows by name, or, for a
/// wildcard subscription, any change of the catalog. A change elsewhere does
/// not wake it, so a catalog of many services with many streams costs each
/// change only the streams that follow it.
struct Wake {
    /// The catalog index, for wildcard subscriptions.
    list: Option<tokio::sync::watch::Receiver<u64>>,
    /// Raised by a change of a service followed by name.
    signal: Arc<fanout::Signal>,
    /// The services followed by name, each shared with the other streams
    /// of this thread that follow it.
    services: Vec<fanout::Following>,
    /// Federated: other datacenters' answers changed, and a periodic look
    /// that keeps the answers a failed-over resource uses followed (a remote
    /// answer nobody asks about for a minute is dropped).
    failover: Option<(tokio::sync::watch::Receiver<u64>, tokio::time::Interval)>,
}

/// How often a federated stream looks again without a change.
const FAILOVER_LOOK: Duration = Duration::from_secs(20);

impl Wake {
    fn new(failover: Option<&Failover>) -> Wake {
        Wake {
            list: None,
            signal: Arc::default(),
            services: Vec::new(),
            failover: failover.map(|f| {
                let mut every = tokio::time::interval(FAILOVER_LOOK);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.reset();
                (f.subscribe(), every)
            }),
        }
    }

    /// Follows the services of `names` (resource names), and every change
    /// when `wildcard`. Call before reading the snapshot to answer from, so
    /// no change falls between.
    fn follow<'a>(&mut self, xds: &Xds, names: impl Iterator<Item = &'a Arc<str>>, wildcard: bool) {
        let mut wanted: std::collections::BTreeSet<crate::model::ServiceName> = names
            .filter_map(|n| resources::Name::parse(n))
            .filter_map(|n| crate::model::ServiceName::parse(&n.service).ok())
            .collect();
        // Past a few hundred services one subscription per service costs more
        // than waking on every change (and would let one stream hold
        // thousands of receivers).
        let everything = wildcard || wanted.len() > MAX_FOLLOWED;
        if everything {
            wanted.clear();
            if self.list.is_none() {
                self.list = Some(xds.registry.subscribe_list());
            }
        } else {
            self.list = None;
        }
        // Dropping a `Following` lets go of its service.
        self.services.retain(|f| wanted.remove(f.slot().service()));
        for service in wanted {
            let following = xds.fanout.follow(&xds.registry, &service, &self.signal);
            self.services.push(following);
        }
    }

    /// Takes the service changes that are already in: the look about to be
    /// taken answers them.
    fn drain(&mut self) {
        self.signal.lower();
    }

    /// Waits for a change worth looking at; `false` once the registry is gone.
    async fn changed(&mut self) -> bool {
        if self.list.is_none() && self.failover.is_none() {
            // Services followed by name only, nearly every stream: the
            // signal alone, without the select below.
            return service_changed(&self.signal, &self.services).await;
        }
        let list = async {
            match self.list.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let services = service_changed(&self.signal, &self.services);
        let failover = async {
            match self.failover.as_mut() {
                Some((rx, every)) => {
                    tokio::select! {
                        changed = rx.changed() => {
                            if changed.is_err() {
                                // The federation stopped: only local changes now.
                                self.failover = None;
                            }
                        }
                        _ = every.tick() => {}
                    }
                    true
                }
                None => std::future::pending().await,
            }
        };
        let open = tokio::select! {
            biased;
            open = list => open,
            open = services => open,
            open = failover => open,
        };
        self.drain();
        open
    }
}

/// Waits for a service of `services` to change (`signal` raised); `false`
/// once the registry is gone.
async fn service_changed(signal: &fanout::Signal, services: &[fanout::Following]) -> bool {
    if services.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| signal.poll_raised(cx)).await;
    !services.iter().any(|f| f.slot().is_closed())
}

/// The kind of a request's type URL; a type roster does not serve is logged
/// (at debug: Envoy asks for types it may not need) and skipped.
fn kind_of(node: &str, type_url: &str) -> Option<resources::Kind> {
    let kind = resources::Kind::from_type_url(type_url);
    if kind.is_none() {
        tracing::debug!(%node, %type_url, "xDS request for a type roster does not serve");
    }
    kind
}

/// A client rejected a response (NACK): counted and logged with its error.
/// Nothing is sent again for it; the next change of the catalog is.
fn rejected(
    xds: &Xds,
    node: &str,
    kind: resources::Kind,
    which: &str,
    error: &envoy_types::pb::google::rpc::Status,
) {
    xds.registry.metrics().xds_nack(kind.label());
    tracing::warn!(
        %node,
        r#type = kind.label(),
        response = %which,
        error = %error.message,
        "xDS client rejected a response (NACK); it is not sent again until the catalog changes"
    );
}

/// A client's node id, for logs.
fn node_id(node: Option<&envoy_types::pb::envoy::config::core::v3::Node>) -> &str {
    node.map_or("", |n| n.id.as_str())
}

/// Serves xDS on `listener` (over TLS with `tls`) until `shutdown`.
///
/// Connections are served by a few threads of their own, each a
/// single-threaded runtime, and handed to them in turn by the accept loop. On
/// such a runtime a task woken from inside it runs after the tasks already
/// queued: when a change wakes a connection's streams, each stream queues its
/// response and the connection writes them all in one go. On the shared
/// runtime the connection task ran right after every stream that woke it
/// (tokio's LIFO slot) and wrote each response with its own system call.
pub async fn serve(
    listener: TcpListener,
    xds: Arc<Xds>,
    tls: Option<Arc<TlsState>>,
    max_connections: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_THREADS));
    let slots = Arc::new(Semaphore::new(max_connections));
    let metrics = xds.registry.metrics().clone();
    let mut workers = Vec::with_capacity(threads);
    let mut finished = Vec::with_capacity(threads);
    for n in 0..threads {
        let (conns, accepted) = mpsc::unbounded_channel::<Accepted>();
        let (done, finish) = tokio::sync::oneshot::channel::<std::io::Result<()>>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (xds, tls, shutdown) = (xds.clone(), tls.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("roster-xds-{n}"))
            .spawn(move || {
                let served = runtime.block_on(serve_on_thread(accepted, xds, tls, shutdown));
                let _ = done.send(served);
            })?;
        workers.push(conns);
        finished.push(finish);
    }
    let mut next = 0usize;
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "xDS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Full: closed at once rather than queued.
            metrics.xds_refused("connections");
            continue;
        };
        // Moved to the thread's runtime, whose reactor then drives it.
        let Ok(tcp) = tcp.into_std() else { continue };
        let mut accepted = Accepted { tcp, peer, slot };
        // A thread whose runtime ended (a panic) is skipped; with none left
        // xDS stops rather than accepting connections nobody serves.
        loop {
            workers.retain(|w| !w.is_closed());
            if workers.is_empty() {
                return Err(std::io::Error::other("every xDS thread has stopped"));
            }
            next = next.wrapping_add(1);
            match workers[next % workers.len()].send(accepted) {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => accepted = back,
            }
        }
    }
    drop(workers);
    let mut result = Ok(());
    for finish in finished {
        if let Ok(Err(e)) = finish.await {
            result = Err(e);
        }
    }
    result
}

/// Most threads serving xDS connections.
const MAX_THREADS: usize = 8;

/// A connection accepted and not yet started.
struct Accepted {
    tcp: std::net::TcpStream,
    peer: SocketAddr,
    slot: OwnedSemaphorePermit,
}

/// One xDS thread: starts the connections handed to it (TLS handshake, or the
/// first bytes) and serves them until `shutdown`.
async fn serve_on_thread(
    mut accepted: mpsc::UnboundedReceiver<Accepted>,
    xds: Arc<Xds>,
    tls: Option<Arc<TlsState>>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = tokio_util::task::TaskTracker::new();
    while let Some(Accepted { tcp, peer, slot }) = tokio::select! {
        () = shutdown.cancelled() => None,
        accepted = accepted.recv() => accepted,
    } {
        let Ok(tcp) = tokio::net::TcpStream::from_std(tcp) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (xds, tls, shutdown) = (xds.clone(), tls.clone(), shutdown.clone());
        // Each connection starts (TLS handshake, or its first bytes) and is
        // served beside the others, so one that stalls holds nothing up.
        connections.spawn(async move {
            let transport = match tls {
                None => {
                    // A client that sends nothing does not keep its slot.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => Transport::Plain(tcp),
                        _ => return,
                    }
                }
                Some(tls) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(tls.h2_config());
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => Transport::Tls(Box::new(s)),
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "xDS TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            let conn = Conn {
                transport,
                _slot: slot,
            };
            stream::serve_connection(conn, xds, shutdown, HANDSHAKE_TIMEOUT).await;
        });
    }
    connections.close();
    // At shutdown every stream ends at once, but a connection whose client
    // does not read cannot deliver the end of its streams: it is dropped
    // after a short grace instead of holding the process up.
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::debug!("xDS connections still open after the shutdown grace; dropped");
    }
    Ok(())
}

/// How long a new connection may take to start (TLS handshake, or its first
/// bytes without TLS).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connections get to close at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// An accepted xDS connection.
#[derive(Debug)]
pub struct Conn {
    transport: Transport,
    /// Its place under the connection limit, given back when it is dropped.
    _slot: OwnedSemaphorePermit,
}

/// The transport of an accepted connection: plain TCP or TLS.
#[derive(Debug)]
enum Transport {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().transport {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// For tests: an empty registry and the control plane over it.
#[cfg(test)]
pub(super) fn test_xds() -> (Arc<Registry>, Arc<Xds>) {
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let registry = Arc::new(Registry::new(
        crate::catalog::CatalogLimits::default(),
        metrics,
    ));
    let xds = Xds::new(registry.clone(), None, 16, None, CancellationToken::new());
    (registry, xds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::CatalogLimits;
    use crate::metrics::Metrics;

    #[test]
    fn a_response_framed_from_shared_entries_is_what_prost_encodes() {
        use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
        use prost::Message as _;

        let registry = Registry::new(CatalogLimits::default(), Arc::new(Metrics::new()));
        registry.register_plain("web", "w1");
        registry.register_plain("api", "a1");
        let snap = registry.snapshot();
        let resources = Resources::default();
        let kind = resources::Kind::Endpoints;
        let built: Vec<_> = ["web", "api"]
            .iter()
            .map(|n| resources.get(&snap, kind, &Arc::from(*n), None).unwrap())
            .collect();
        for take in [0, 1, 2] {
            let out: Vec<&resources::Built> = built.iter().take(take).map(|b| &**b).collect();
            let framed = sotw::encode_response("42", &out, kind.type_url(), "7");
            let expected = DiscoveryResponse {
                version_info: "42".into(),
                resources: out.iter().map(|b| b.any.clone()).collect(),
                type_url: kind.type_url().into(),
                nonce: "7".into(),
                ..DiscoveryResponse::default()
            };
            assert_eq!(framed[0], 0, "not compressed");
            let len = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]) as usize;
            assert_eq!(len, framed.len() - 5);
            assert_eq!(
                &framed[5..],
                &expected.encode_to_vec()[..],
                "{take} resources"
            );
        }

        // One resource alone at an index: framed once, versioned and
        // nonced by the index, the same bytes for every caller.
        let web = &built[0];
        let shared = web.sotw_response(snap.index, kind.type_url());
        let index = snap.index.to_string();
        let alone = sotw::encode_response(&index, &[&**web], kind.type_url(), &index);
        assert_eq!(shared, alone);
        let again = web.sotw_response(snap.index, kind.type_url());
        assert_eq!(again.as_ptr(), shared.as_ptr(), "shared, not framed again");
        let later = web.sotw_response(snap.index + 1, kind.type_url());
        assert_ne!(later, shared, "another index is another response");
    }

    async fn wakes(wake: &mut Wake) -> bool {
        tokio::time::timeout(Duration::from_millis(200), wake.changed())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_stream_wakes_for_the_services_it_follows_only() {
        let (registry, xds) = test_xds();
        let mut wake = Wake::new(None);
        let names: Vec<Arc<str>> = vec!["web".into(), "v2.api".into()];
        wake.follow(&xds, names.iter(), false);
        registry.register_plain("db", "d1");
        assert!(!wakes(&mut wake).await, "another service changed");
        registry.register_plain("web", "w1");
        assert!(wakes(&mut wake).await, "a followed service changed");
        registry.register_plain("api", "a1");
        assert!(wakes(&mut wake).await, "the service of a tagged name");

        // Unfollowed: no longer woken; a wildcard wakes on everything.
        wake.follow(&xds, names[..1].iter(), false);
        registry.register_plain("api", "a2");
        assert!(!wakes(&mut wake).await);
        wake.follow(&xds, names[..1].iter(), true);
        registry.register_plain("db", "d2");
        assert!(wakes(&mut wake).await, "a wildcard follows every change");
    }

    #[tokio::test]
    async fn streams_of_a_thread_share_one_receiver_per_service_and_each_is_woken() {
        let (registry, xds) = test_xds();
        let web: Vec<Arc<str>> = vec!["web".into()];
        let both: Vec<Arc<str>> = vec!["web".into(), "api".into()];
        let mut a = Wake::new(None);
        let mut b = Wake::new(None);
        a.follow(&xds, web.iter(), false);
        b.follow(&xds, both.iter(), false);
        let b_web = b
            .services
            .iter()
            .find(|f| f.slot().service().as_str() == "web");
        assert!(
            Arc::ptr_eq(a.services[0].slot(), b_web.unwrap().slot()),
            "one slot for web"
        );
        let receivers = |s: &str| registry.watchers_of(s);
        assert_eq!(receivers("web"), 1, "one receiver for the thread");
        registry.register_plain("web", "w1");
        assert!(wakes(&mut a).await);
        assert!(wakes(&mut b).await);
        // Several changes before a stream looks: one wake answers them all.
        registry.register_plain("web", "w2");
        registry.register_plain("web", "w3");
        assert!(wakes(&mut a).await);
        assert!(!wakes(&mut a).await, "already answered");
        assert!(wakes(&mut b).await);

        // A stream that lets go is not woken; the last one to let go of a
        // service ends its receiver.
        drop(a);
        registry.register_plain("api", "a1");
        assert!(wakes(&mut b).await);
        b.follow(&xds, std::iter::empty(), false);
        tokio::task::yield_now().await;
        registry.register_plain("web", "w4");
        tokio::task::yield_now().await;
        assert_eq!(receivers("web"), 0, "no one follows web");
        assert!(!wakes(&mut b).await);
    }
}
