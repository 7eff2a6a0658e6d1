//! Watches over HTTP: blocking queries (`?index=N&wait=30s`) and Server-Sent
//! Events streams.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::future::select_all;
use roster_api::duration;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::extract::QueryPairs;
use super::{ApiError, AppState};
use crate::metrics::{WatchKind, WatcherGuard};
use crate::model::ServiceName;
use crate::registry::Registry;
use crate::watch::{ServiceEvent, Subscription};

/// Default `wait` of a blocking query.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(300);
/// Longest `wait`; longer ones are cut to it.
pub const MAX_WAIT: Duration = Duration::from_secs(600);
/// Interval of keep-alive comments on event streams.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Most services one stream may watch.
pub const MAX_STREAM_SERVICES: usize = 64;

/// Reads a resume token `EPOCH.INDEX` (epoch in hex).
pub(super) fn parse_token(raw: &str) -> Option<(u64, u64)> {
    let (epoch, index) = raw.trim().split_once('.')?;
    Some((u64::from_str_radix(epoch, 16).ok()?, index.parse().ok()?))
}

/// `?index=N&wait=D` of a blocking query.
#[derive(Clone, Copy, Debug)]
pub(super) struct Blocking {
    /// The index the client already has.
    pub index: u64,
    /// How long to hold the request at most, jitter included.
    pub wait: Duration,
}

impl Blocking {
    /// `None` without `?index`: answer at once.
    pub fn parse(query: &QueryPairs) -> Result<Option<Blocking>, ApiError> {
        let Some(raw) = query.all("index").last() else {
            return Ok(None);
        };
        let index = raw.parse::<u64>().map_err(|_| {
            ApiError::invalid(
                "index",
                format!("index must be a non-negative integer, got {raw:?}"),
            )
        })?;
        let wait = match query.all("wait").last() {
            None => DEFAULT_WAIT,
            Some(w) => duration::parse(w).map_err(|e| ApiError::invalid("wait", e))?,
        }
        .min(MAX_WAIT);
        // Up to wait/16 of jitter spreads the herd of watchers whose waits ran out together.
        let jitter = wait.mul_f64(fastrand::f64() / 16.0);
        Ok(Some(Blocking {
            index,
            wait: wait + jitter,
        }))
    }

    /// Whether a result at `current` answers the client at once: it changed, the
    /// client has no index yet, or the index went backwards (a restore).
    pub(super) fn ready(self, current: u64) -> bool {
        self.index == 0 || current != self.index
    }
}

/// Holds a query on one service until its index differs from the client's or the
/// wait runs out. Changes to other services and heartbeats that change nothing do
/// not wake it.
pub(super) async fn wait_for_service(state: &AppState, service: &ServiceName, q: Blocking) {
    let registry = &state.registry;
    let _guard = registry.metrics().watcher(WatchKind::Blocking);
    let mut sub = registry.subscribe(service);
    let deadline = tokio::time::sleep(q.wait);
    tokio::pin!(deadline);
    loop {
        if q.ready(registry.snapshot().service_index(service.as_str())) {
            return;
        }
        tokio::select! {
            () = &mut deadline => return,
            () = state.shutdown.cancelled() => return,
            r = sub.changes.recv() => if let Err(RecvError::Closed) = r { return },
        }
    }
}

/// Holds a query on the service list until the global index differs.
pub(super) async fn wait_for_list(state: &AppState, q: Blocking) {
    let registry = &state.registry;
    let _guard = registry.metrics().watcher(WatchKind::Blocking);
    let mut rx = registry.subscribe_list();
    let deadline = tokio::time::sleep(q.wait);
    tokio::pin!(deadline);
    loop {
        if q.ready(registry.snapshot().index) {
            return;
        }
        tokio::select! {
            () = &mut deadline => return,
            () = state.shutdown.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// `GET /v1/services/{service}/watch`.
pub(super) async fn watch_service(
    State(state): State<AppState>,
    Path(service): Path<String>,
    offer: Option<Extension<FanOutOffer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let service = ServiceName::parse(&service)?;
    stream(&state, vec![service], &headers, offer.is_some())
}

/// `GET /v1/watch?service=a&service=b`.
pub(super) async fn watch_many(
    State(state): State<AppState>,
    query: QueryPairs,
    offer: Option<Extension<FanOutOffer>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut services = Vec::new();
    for raw in query.all("service") {
        let name = ServiceName::parse(raw)?;
        if !services.contains(&name) {
            services.push(name);
        }
    }
    if services.is_empty() {
        return Err(ApiError::invalid(
            "service",
            "name at least one ?service= to watch",
        ));
    }
    if services.len() > MAX_STREAM_SERVICES {
        return Err(ApiError::invalid(
            "service",
            format!("at most {MAX_STREAM_SERVICES} services per stream"),
        ));
    }
    stream(&state, services, &headers, offer.is_some())
}

fn stream(
    state: &AppState,
    services: Vec<ServiceName>,
    headers: &HeaderMap,
    fan_out: bool,
) -> Result<Response, ApiError> {
    // An id this run of the server did not send (garbled by a proxy, from
    // before a restart or a failover) says nothing about this catalog's
    // indexes: the stream starts over with the full state, as EventSource
    // clients expect, rather than failing their reconnect.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_token)
        .and_then(|(epoch, index)| (epoch == state.epoch).then_some(index));
    if let ([service], true) = (&services[..], fan_out) {
        return Ok(handed_back(Single::new(state, service, resume)));
    }
    let watcher = Watcher::new(state, &services, resume);
    Ok(event_stream(watcher))
}

/// The headers of an event stream's answer, however it is sent.
const EVENT_STREAM_HEADERS: [(header::HeaderName, &str); 2] = [
    (header::CONTENT_TYPE, "text/event-stream"),
    (header::CACHE_CONTROL, "no-cache"),
];

/// Put in a request's extensions by an HTTP/2 connection that sends
/// one-service event streams itself ([`super::http2`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct FanOutOffer;

/// A one-service event stream handed back to its HTTP/2 connection, in the
/// answer's extensions (which must be `Clone`: the stream is taken once).
#[derive(Clone)]
pub(super) struct FanOutTicket(Arc<std::sync::Mutex<Option<Single>>>);

impl FanOutTicket {
    pub(super) fn take(&self) -> Option<Single> {
        self.0.lock().ok()?.take()
    }
}

/// The answer that hands `watch` back: the stream's headers, no body of its
/// own.
fn handed_back(watch: Single) -> Response {
    let mut response = (EVENT_STREAM_HEADERS, Body::empty()).into_response();
    response
        .extensions_mut()
        .insert(FanOutTicket(Arc::new(std::sync::Mutex::new(Some(watch)))));
    response
}

/// A stream following one service, sent by its HTTP/2 connection: where it
/// starts, and the receiver of the service's changes (which the connection
/// shares among its streams on the service).
pub(super) struct Single {
    registry: Arc<Registry>,
    service: Arc<str>,
    current: Arc<ServiceEvent>,
    changes: Option<broadcast::Receiver<Arc<ServiceEvent>>>,
    /// Resumed, and the client has `current` already.
    known: bool,
    token: u64,
    epoch: u64,
    opened: tokio::time::Instant,
    _guard: WatcherGuard,
}

impl Single {
    fn new(state: &AppState, service: &ServiceName, resume: Option<u64>) -> Self {
        let registry = state.registry.clone();
        let guard = registry.metrics().watcher(WatchKind::Stream);
        let sub = registry.subscribe(service);
        Single {
            known: resume.is_some_and(|r| sub.current.index <= r),
            registry,
            service: service.as_arc().clone(),
            current: sub.current,
            changes: Some(sub.changes),
            token: resume.unwrap_or(0),
            epoch: state.epoch,
            opened: tokio::time::Instant::now(),
            _guard: guard,
        }
    }

    pub(super) fn service(&self) -> &Arc<str> {
        &self.service
    }

    pub(super) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub(super) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The service's state when the stream opened.
    pub(super) fn current(&self) -> &Arc<ServiceEvent> {
        &self.current
    }

    pub(super) fn opened(&self) -> tokio::time::Instant {
        self.opened
    }

    /// The receiver of the service's changes after [`Single::first`] (once).
    pub(super) fn take_receiver(&mut self) -> Option<broadcast::Receiver<Arc<ServiceEvent>>> {
        self.changes.take()
    }

    /// The state the stream opens with, unless the client resumed past it.
    pub(super) fn first(&self) -> Option<Arc<ServiceEvent>> {
        (!self.known).then(|| self.current.clone())
    }

    /// The index of the state the client has (0: none) and the resume
    /// token it holds.
    pub(super) fn position(&self) -> (u64, u64) {
        let sent = if self.known { self.current.index } else { 0 };
        (sent, self.token)
    }
}

/// A comment line: what an idle event stream sends every [`KEEP_ALIVE`] so
/// that proxies and clients see it is alive.
pub(super) const KEEP_ALIVE_FRAME: &[u8] = b":\n\n";

/// The response streaming `watcher`'s events, each a frame shared with every
/// other stream that sends it (the write is the only work per stream), and a
/// keep-alive comment after [`KEEP_ALIVE`] without an event.
///
/// The keep-alive timer is armed once and moved on only when it fires: an
/// event costs the stream a clock read, not a timer set and cancelled (with
/// thousands of streams on one change, that was a tenth of the work).
fn event_stream(watcher: Watcher) -> Response {
    let alarm = Box::pin(tokio::time::sleep(KEEP_ALIVE));
    let last = tokio::time::Instant::now();
    let frames = futures_util::stream::unfold(
        (watcher, alarm, last),
        |(mut w, mut alarm, mut last)| async move {
            let frame = loop {
                tokio::select! {
                    biased;
                    frame = w.next() => {
                        last = tokio::time::Instant::now();
                        break frame?;
                    }
                    // The wait is dropped, not the watcher's state: what it
                    // was waiting for is still in its receivers.
                    () = alarm.as_mut() => {
                        let due = last + KEEP_ALIVE;
                        let now = tokio::time::Instant::now();
                        if due <= now {
                            last = now;
                            alarm.as_mut().reset(now + KEEP_ALIVE);
                            break Bytes::from_static(KEEP_ALIVE_FRAME);
                        }
                        alarm.as_mut().reset(due);
                    }
                }
            };
            Some((Ok::<_, Infallible>(frame), (w, alarm, last)))
        },
    );
    (EVENT_STREAM_HEADERS, Body::from_stream(frames)).into_response()
}

struct Watched {
    service: Arc<str>,
    sub: Subscription,
    /// Index of the last state sent for this service.
    sent: u64,
}

/// One stream's state. Events are produced only when the HTTP body is polled,
/// that is when the connection can take them: a stalled reader holds at most the
/// topics' bounded buffers, and on catching up gets the latest state.
///
/// Events go out in index order across all watched services, so the index of
/// the last event sent (with the registry run's epoch in front) is a resume token: a client that reconnects with it in
/// `Last-Event-ID` has seen every watched service as of that index, and gets
/// only the services that changed after it.
struct Watcher {
    registry: Arc<Registry>,
    watched: Vec<Watched>,
    pending: VecDeque<(usize, Arc<ServiceEvent>)>,
    token: u64,
    epoch: u64,
    /// The topics were closed (the server is shutting down): the stream
    /// ends once it has sent what they held.
    closed: bool,
    _guard: WatcherGuard,
}

type RecvFuture<'a> =
    Pin<Box<dyn Future<Output = (usize, Result<Arc<ServiceEvent>, RecvError>)> + Send + 'a>>;

impl Watcher {
    fn new(state: &AppState, services: &[ServiceName], resume: Option<u64>) -> Self {
        let registry = state.registry.clone();
        let guard = registry.metrics().watcher(WatchKind::Stream);
        let mut watched = Vec::with_capacity(services.len());
        let mut pending = VecDeque::new();
        for (i, service) in services.iter().enumerate() {
            let sub = registry.subscribe(service);
            let current = sub.current.clone();
            // Resuming: skip a service whose state the client already has.
            let known = resume.is_some_and(|r| current.index <= r);
            if !known {
                pending.push_back((i, current.clone()));
            }
            watched.push(Watched {
                service: service.as_arc().clone(),
                sub,
                sent: if known { current.index } else { 0 },
            });
        }
        pending.make_contiguous().sort_by_key(|(_, e)| e.index);
        Watcher {
            registry,
            watched,
            pending,
            token: resume.unwrap_or(0),
            epoch: state.epoch,
            closed: false,
            _guard: guard,
        }
    }

    async fn next(&mut self) -> Option<Bytes> {
        loop {
            while let Some((i, event)) = self.pending.pop_front() {
                let w = &mut self.watched[i];
                if event.index <= w.sent {
                    continue;
                }
                w.sent = event.index;
                self.token = self.token.max(event.index);
                self.registry.metrics().watch_event();
                return Some(if self.token == event.index {
                    event.sse_frame(self.epoch)
                } else {
                    crate::watch::sse_frame(self.epoch, self.token, event.json())
                });
            }
            if self.closed {
                return None;
            }
            // A shutting-down server closes the topics (`Registry::close_watches`):
            // a receiver reads "closed" once it has what was sent before.
            let (i, first) = Self::recv_any(&mut self.watched).await;
            let mut lagged = false;
            self.take(i, first, &mut lagged);
            // Changes are published in index order, so every change older than the
            // one just received is already waiting in some receiver: collect them
            // all and send them sorted.
            for i in 0..self.watched.len() {
                loop {
                    let result = match self.watched[i].sub.changes.try_recv() {
                        Ok(event) => Ok(event),
                        Err(TryRecvError::Empty) => break,
                        Err(TryRecvError::Lagged(n)) => Err(RecvError::Lagged(n)),
                        Err(TryRecvError::Closed) => {
                            self.closed = true;
                            break;
                        }
                    };
                    self.take(i, result, &mut lagged);
                }
            }
            if lagged {
                self.resync();
            }
            self.pending.make_contiguous().sort_by_key(|(_, e)| e.index);
        }
    }

    /// Queues a received change, or notes that the topics are closed.
    fn take(&mut self, i: usize, result: Result<Arc<ServiceEvent>, RecvError>, lagged: &mut bool) {
        match result {
            Ok(event) => self.pending.push_back((i, event)),
            Err(RecvError::Lagged(_)) => *lagged = true,
            Err(RecvError::Closed) => self.closed = true,
        }
    }

    /// The reader fell behind a topic's buffer: drop what is queued and send the
    /// latest state of every watched service that the client has not seen.
    fn resync(&mut self) {
        self.registry.metrics().watch_coalesced();
        self.pending.clear();
        let snap = self.registry.snapshot();
        for (i, w) in self.watched.iter().enumerate() {
            let event = ServiceEvent::from_snapshot(&snap, &w.service);
            if event.index > w.sent {
                self.pending.push_back((i, Arc::new(event)));
            }
        }
    }

    async fn recv_any(watched: &mut [Watched]) -> (usize, Result<Arc<ServiceEvent>, RecvError>) {
        if let [only] = watched {
            // One service, nearly every stream: no futures to gather.
            return (0, only.sub.changes.recv().await);
        }
        let futures: Vec<RecvFuture<'_>> = watched
            .iter_mut()
            .enumerate()
            .map(|(i, w)| -> RecvFuture<'_> {
                Box::pin(async move { (i, w.sub.changes.recv().await) })
            })
            .collect();
        select_all(futures).await.0
    }
}

/// For tests: a registry whose service `web` has one instance, `w1`, and
/// its state.
#[cfg(test)]
pub(super) fn web_with_one_instance() -> (Arc<Registry>, AppState) {
    use tokio_util::sync::CancellationToken;
    let registry = Arc::new(Registry::new(
        crate::catalog::CatalogLimits::default(),
        Arc::new(crate::metrics::Metrics::new()),
    ));
    registry.register_plain("web", "w1");
    let state = AppState::builder(
        registry.clone(),
        &crate::config::Config::default(),
        CancellationToken::new(),
    )
    .build();
    (registry, state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::BodyDataStream;
    use futures_util::StreamExt as _;

    async fn frame(body: &mut BodyDataStream) -> Bytes {
        body.next().await.unwrap().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn streams_share_each_event_frame_and_an_idle_one_sends_keep_alives() {
        let (registry, state) = web_with_one_instance();
        let web = [ServiceName::parse("web").unwrap()];
        let open = || {
            let response = event_stream(Watcher::new(&state, &web, None));
            assert_eq!(response.headers()["content-type"], "text/event-stream");
            response.into_body().into_data_stream()
        };
        let (mut a, mut b) = (open(), open());
        let first = frame(&mut a).await;
        assert_eq!(first, frame(&mut b).await);
        let text = std::str::from_utf8(&first).unwrap();
        let index = registry.snapshot().service_index("web");
        assert!(
            text.starts_with(&format!(
                "event: service\nid: {:x}.{index}\ndata: {{",
                state.epoch
            )),
            "{text}"
        );
        assert!(text.ends_with("}\n\n"), "{text}");

        // Nothing happens: a keep-alive comment after the interval, not before.
        let start = tokio::time::Instant::now();
        assert_eq!(&frame(&mut a).await[..], KEEP_ALIVE_FRAME);
        assert_eq!(start.elapsed(), KEEP_ALIVE);

        // A change halfway to the next keep-alive: both streams send the
        // very same bytes, built once.
        tokio::time::sleep(KEEP_ALIVE / 2).await;
        registry.register_plain("web", "w2");
        let (x, y) = (frame(&mut a).await, frame(&mut b).await);
        assert_eq!(x, y);
        assert_eq!(x.as_ptr(), y.as_ptr(), "one frame shared by both streams");
        assert!(std::str::from_utf8(&x).unwrap().contains("\"w2\""));
        // The next keep-alive comes a whole interval after that event, not
        // when the timer armed before it runs out.
        let start = tokio::time::Instant::now();
        assert_eq!(&frame(&mut a).await[..], KEEP_ALIVE_FRAME);
        assert_eq!(start.elapsed(), KEEP_ALIVE);

        // A stream opened long after the last change gets the frame built
        // then, and its first keep-alive comes an interval after it opened,
        // not at once.
        tokio::time::sleep(KEEP_ALIVE * 3).await;
        let opened = tokio::time::Instant::now();
        let mut c = open();
        assert_eq!(frame(&mut c).await.as_ptr(), x.as_ptr());
        assert_eq!(&frame(&mut c).await[..], KEEP_ALIVE_FRAME);
        assert_eq!(opened.elapsed(), KEEP_ALIVE);
    }

    /// Shutdown closes the topics: an open stream sends what was published
    /// before and ends (one watching one service, one watching two); a stream
    /// opened afterwards sends the current state and ends.
    #[tokio::test]
    async fn closing_the_watches_ends_the_streams_after_what_they_had() {
        let (registry, state) = web_with_one_instance();
        let web = [ServiceName::parse("web").unwrap()];
        let both = [
            ServiceName::parse("web").unwrap(),
            ServiceName::parse("db").unwrap(),
        ];
        let open = |services: &[ServiceName]| {
            event_stream(Watcher::new(&state, services, None))
                .into_body()
                .into_data_stream()
        };
        let (mut one, mut two) = (open(&web), open(&both));
        assert!(
            std::str::from_utf8(&frame(&mut one).await)
                .unwrap()
                .contains("\"w1\"")
        );
        frame(&mut two).await;
        frame(&mut two).await;
        registry.register_plain("web", "w2");
        registry.close_watches();
        for body in [&mut one, &mut two] {
            let last = frame(body).await;
            assert!(std::str::from_utf8(&last).unwrap().contains("\"w2\""));
            let end = tokio::time::timeout(std::time::Duration::from_secs(5), body.next());
            assert!(end.await.expect("the stream ends").is_none());
        }
        let mut late = open(&web);
        assert!(
            std::str::from_utf8(&frame(&mut late).await)
                .unwrap()
                .contains("\"w2\"")
        );
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), late.next());
        assert!(end.await.expect("the stream ends").is_none());
    }

    #[test]
    fn a_frame_puts_each_line_of_its_data_on_a_data_line() {
        let frame = crate::watch::sse_frame(0xab, 7, "{\"a\":1}\n{\"b\":2}");
        assert_eq!(
            &frame[..],
            b"event: service\nid: ab.7\ndata: {\"a\":1}\ndata: {\"b\":2}\n\n"
        );
    }
}
