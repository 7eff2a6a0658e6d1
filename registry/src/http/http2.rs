//! HTTP/2 connections, served on the h2 crate directly.
//!
//! Every request is answered as over HTTP/1.1: a task of its own calls the
//! API and streams the answer's body, waiting for the client's window
//! before each frame and dropping the work when the client resets the
//! stream. One kind of answer is not streamed by its own task: an event
//! stream that follows one service (the watch nearly every client opens).
//! Its handler hands the stream back to the connection ([`Handoff`]), and
//! the connection's task sends it every change itself. The connection holds
//! one receiver per service its streams follow, so a change wakes the
//! connection once, and costs each stream one frame handed to h2 (a shared
//! buffer) and no task, waker, timer or body of its own. With thousands of
//! streams on one change, those were most of the work (bench/RESULTS.md,
//! "What a change to many HTTP/2 watchers costs at least").
//!
//! A stream whose client does not read (its window shut) falls behind: it
//! is sent nothing more until the window opens again, and then the latest
//! state of its service, so a stalled client holds at most one frame.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::io;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use hyper::body::{Body as _, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, ReusableBoxFuture};

use super::serve::{MAX_HEADER_BYTES, Peer, Settings};
use super::watch::{FanOutOffer, KEEP_ALIVE, KEEP_ALIVE_FRAME, Single};
use crate::registry::Registry;
use crate::watch::ServiceEvent;

/// A stream's and the connection's window: what a client may send before
/// roster takes it in (hyper's defaults, which served here before).
const WINDOW: u32 = 1 << 20;
/// What h2 takes from a stream's task ahead of the client's window.
const SEND_BUFFER: usize = 400 << 10;
/// How often a connection with event streams looks for streams the client
/// reset and for streams due a keep-alive comment.
const SWEEP: Duration = Duration::from_secs(1);
/// Streams a connection takes in before it lets their tasks run (a yield
/// after every so many).
const ACCEPT_BURST: u32 = 16;

/// Serves one HTTP/2 connection: the same API as HTTP/1.1, up to
/// `http2_max_streams` requests at once, with keep-alive pings and the
/// idle cut of [`Activity`].
pub(super) async fn connection<IO>(
    io: IO,
    peer: Peer,
    app: super::Api,
    settings: Settings,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let hold = Arc::new(Hold::default());
    let handshake = h2::server::Builder::new()
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(settings.http2_max_streams)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(H2_PENDING_RESETS)
        .max_local_error_reset_streams(Some(H2_ERROR_RESETS))
        .handshake::<_, Bytes>(Coalesce::new(io, hold.clone()));
    let mut conn = tokio::select! {
        conn = tokio::time::timeout(settings.header_timeout, handshake) => match conn {
            Ok(Ok(conn)) => conn,
            _ => return,
        },
        () = shutdown.cancelled() => return,
    };
    let activity = Arc::new(Activity::default());
    let (handoff, mut handed) = mpsc::unbounded_channel();
    let mut fan = FanOut::default();
    let mut keepalive = pin!(keepalive(
        conn.ping_pong(),
        H2_KEEPALIVE_INTERVAL,
        H2_KEEPALIVE_TIMEOUT
    ));
    let mut stop = pin!(shutdown.cancelled());
    let mut idle = pin!(tokio::time::sleep(settings.header_timeout));
    let mut closing = false;
    let mut accepted_since_yield = 0;
    loop {
        let turn = poll_fn(|cx| {
            if !closing {
                if stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Turn::Stop);
                }
                if idle.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Turn::Idle);
                }
            }
            // The event streams first, then the connection: what they
            // hand to h2 is written in this same turn.
            while let Poll::Ready(Some(joining)) = handed.poll_recv(cx) {
                fan.join(joining);
            }
            fan.poll(cx);
            // h2 writes what was handed over, and the answers of the
            // requests' tasks, each frame with a flush: those are gathered
            // and go out in one write at the end of the turn.
            hold.start();
            let mut accepted = conn.poll_accept(cx);
            if hold.stop() && accepted.is_pending() {
                accepted = conn.poll_accept(cx);
            }
            ConnEvent::of(accepted, keepalive.as_mut(), cx).map(Turn::Conn)
        })
        .await;
        match turn {
            Turn::Stop => {
                // Event streams end when the registry closes its topics;
                // the connection closes once every stream is done.
                closing = true;
                conn.graceful_shutdown();
            }
            Turn::Idle => {
                if activity.idle() {
                    closing = true;
                    conn.graceful_shutdown();
                } else {
                    idle.as_mut()
                        .reset(Instant::now() + settings.header_timeout);
                }
            }
            Turn::Conn(ConnEvent::Accepted(accepted)) => {
                let (request, respond) = *accepted;
                let open = activity.start();
                tokio::spawn(answer(
                    peer,
                    app.clone(),
                    request,
                    respond,
                    open,
                    handoff.clone(),
                    shutdown.clone(),
                ));
                // Let the requests' tasks run before taking more: a burst
                // of streams (a client opening hundreds of watches at once)
                // then has a few tasks in flight per connection, not all.
                accepted_since_yield += 1;
                if accepted_since_yield == ACCEPT_BURST {
                    accepted_since_yield = 0;
                    tokio::task::yield_now().await;
                }
            }
            Turn::Conn(end) => return end.log_end("HTTP/2"),
        }
    }
}

/// What a turn of a connection's task came to.
enum Turn {
    /// The server stops.
    Stop,
    /// The idle period ran out: close the connection if nothing happened.
    Idle,
    Conn(ConnEvent),
}

/// A request from an HTTP/2 server connection, as `poll_accept` answers it.
type Accepted = Option<Result<(Request<RecvStream>, SendResponse<Bytes>), h2::Error>>;

/// What an HTTP/2 server connection came to in a turn of its task (here
/// and in the xDS server).
pub(crate) enum ConnEvent {
    /// A new stream.
    Accepted(Box<(Request<RecvStream>, SendResponse<Bytes>)>),
    /// The connection closed (with the error that broke it).
    Ended(Option<h2::Error>),
    /// The client did not answer a ping.
    Silent,
}

impl ConnEvent {
    /// The connection's side of a turn, from what `poll_accept` answered
    /// and the [`keepalive`]; pending while nothing happened.
    pub(crate) fn of(
        accepted: Poll<Accepted>,
        keepalive: Pin<&mut impl Future<Output = ()>>,
        cx: &mut Context<'_>,
    ) -> Poll<ConnEvent> {
        match accepted {
            Poll::Ready(Some(Ok(accepted))) => Poll::Ready(ConnEvent::Accepted(Box::new(accepted))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(ConnEvent::Ended(Some(e))),
            Poll::Ready(None) => Poll::Ready(ConnEvent::Ended(None)),
            Poll::Pending => keepalive.poll(cx).map(|()| ConnEvent::Silent),
        }
    }

    /// Says why a connection of `server` ended (or that a stream was taken
    /// for an end).
    pub(crate) fn log_end(self, server: &str) {
        match self {
            ConnEvent::Ended(Some(e)) => tracing::debug!(error = %e, "{server} connection ended"),
            ConnEvent::Ended(None) => {}
            ConnEvent::Silent => {
                tracing::debug!("{server} client did not answer a ping; connection dropped");
            }
            ConnEvent::Accepted(_) => tracing::debug!("{server} stream dropped"),
        }
    }
}

/// Pings the client every `interval`; returns when a ping goes unanswered
/// for `timeout` (a client that vanished without closing).
pub(crate) async fn keepalive(
    ping_pong: Option<h2::PingPong>,
    interval: Duration,
    timeout: Duration,
) {
    let Some(mut ping_pong) = ping_pong else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        let pong = ping_pong.ping(h2::Ping::opaque());
        match tokio::time::timeout(timeout, pong).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}

/// An event stream handed back to its connection, with what its answer
/// holds for as long as it lasts (the watcher's slot, the open request).
pub(super) struct Handoff {
    send: SendStream<Bytes>,
    watch: Single,
    _held: (Body, OpenRequest),
}

/// One request: the API's answer, streamed as the client takes it.
async fn answer(
    peer: Peer,
    app: super::Api,
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    open: OpenRequest,
    handoff: mpsc::UnboundedSender<Handoff>,
    shutdown: CancellationToken,
) {
    let head_only = request.method() == Method::HEAD;
    let (mut parts, recv) = request.into_parts();
    let body = if recv.is_end_stream() {
        Body::empty()
    } else {
        let hint = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map_or_else(SizeHint::default, SizeHint::with_exact);
        Body::new(Incoming {
            recv,
            hint,
            data_done: false,
            done: false,
        })
    };
    // Only a watch can be handed back; any other request goes without the
    // extension map the offer would allocate.
    if parts.uri.path().ends_with("/watch") {
        parts.extensions.insert(FanOutOffer);
    }
    let mut call = pin!(peer.call(&app, Request::from_parts(parts, body)));
    // A client that resets the stream first drops the work.
    let answered = poll_fn(|cx| {
        if let Poll::Ready(answered) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(answered));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    let response = match answered {
        Some(Ok(response)) => response,
        Some(Err(never)) => match never {},
        None => return,
    };
    let (mut head, body) = response.into_parts();
    strip_connection_headers(&mut head.headers);
    head.headers.entry(header::DATE).or_insert_with(http_date);
    if let Some(watch) = head
        .extensions
        .remove::<super::watch::FanOutTicket>()
        .and_then(|ticket| ticket.take())
    {
        head.headers.remove(header::CONTENT_LENGTH);
        let Ok(send) = respond.send_response(Response::from_parts(head, ()), false) else {
            return;
        };
        let _ = handoff.send(Handoff {
            send,
            watch,
            _held: (body, open),
        });
        return;
    }
    let end = head_only || body.is_end_stream();
    if !end && let Some(len) = body.size_hint().exact() {
        head.headers
            .entry(header::CONTENT_LENGTH)
            .or_insert_with(|| HeaderValue::from(len));
    }
    let Ok(send) = respond.send_response(Response::from_parts(head, ()), end) else {
        return;
    };
    if !end {
        pipe(body, send, &shutdown).await;
    }
    drop(open);
}

/// Headers that name the connection, which HTTP/2 forbids (RFC 9113,
/// 8.2.2).
fn strip_connection_headers(headers: &mut HeaderMap) {
    if let Some(named) = headers.remove(header::CONNECTION)
        && let Ok(named) = named.to_str()
    {
        for name in named.split(',') {
            headers.remove(name.trim());
        }
    }
    for name in [
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
    ] {
        headers.remove(name);
    }
}

/// The `Date` header's value, formatted once a second per thread.
fn http_date() -> HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, Option<HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, value)| {
        if *at != second || value.is_none() {
            *at = second;
            *value = HeaderValue::from_str(&httpdate::fmt_http_date(now)).ok();
        }
        value
            .clone()
            .unwrap_or_else(|| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
    })
}

/// Streams `body` to the client: a frame is taken from the body only once
/// the client's window has room, so a client that does not read holds one
/// frame, and a stream the client resets stops. A stream still waiting for
/// room when the server stops is reset, so that a client that does not
/// read cannot hold the shutdown up.
async fn pipe(body: Body, mut send: SendStream<Bytes>, shutdown: &CancellationToken) {
    let mut body = pin!(body);
    loop {
        if !has_room(&mut send, shutdown).await {
            return;
        }
        let frame = poll_fn(|cx| {
            if let Poll::Ready(frame) = body.as_mut().poll_frame(cx) {
                return Poll::Ready(Some(frame));
            }
            match send.poll_reset(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let Some(frame) = frame else {
            return;
        };
        match frame {
            None => {
                let _ = send.send_data(Bytes::new(), true);
                return;
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "answer's body failed");
                send.send_reset(h2::Reason::INTERNAL_ERROR);
                return;
            }
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if (!data.is_empty() || end) && send.send_data(data, end).is_err() {
                        return;
                    }
                    if end {
                        return;
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        let _ = send.send_trailers(trailers);
                    } else {
                        let _ = send.send_data(Bytes::new(), true);
                    }
                    return;
                }
            },
        }
    }
}

/// Waits until the stream may send (its window has room); `false` when the
/// client reset it, the connection is gone, or the server stops first.
async fn has_room(send: &mut SendStream<Bytes>, shutdown: &CancellationToken) -> bool {
    send.reserve_capacity(1);
    if send.capacity() > 0 {
        return true;
    }
    let mut stop = pin!(shutdown.cancelled());
    poll_fn(|cx| {
        if stop.as_mut().poll(cx).is_ready() {
            send.send_reset(h2::Reason::CANCEL);
            return Poll::Ready(false);
        }
        loop {
            if send.capacity() > 0 {
                return Poll::Ready(true);
            }
            match send.poll_capacity(cx) {
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(_)) | None) => return Poll::Ready(false),
                Poll::Pending => {
                    return match send.poll_reset(cx) {
                        Poll::Ready(_) => Poll::Ready(false),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    })
    .await
}

/// A request's body as the client sends it; what is read is given back to
/// the client's window at once (the API's limits cut a body too long).
struct Incoming {
    recv: RecvStream,
    hint: SizeHint,
    data_done: bool,
    done: bool,
}

impl hyper::body::Body for Incoming {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match this.recv.poll_data(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(data))) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => this.data_done = true,
            }
        }
        let trailers = std::task::ready!(this.recv.poll_trailers(cx));
        this.done = true;
        Poll::Ready(match trailers {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// An HTTP/2 connection is pinged this often and dropped when the ping is
/// not answered within [`H2_KEEPALIVE_TIMEOUT`]:
/// a client that vanished does not hold its watch streams for ever.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams an HTTP/2 client may open and reset before the server answers
/// them; past it the connection is closed (the "rapid reset" attack,
/// CVE-2023-44487, opens and cancels streams to make the server work for
/// nothing).
const H2_PENDING_RESETS: usize = 20;
/// Streams the server may reset for a client's errors before it closes the
/// connection.
const H2_ERROR_RESETS: usize = 1024;

/// How many requests an HTTP/2 connection has open, and whether one came
/// since it was last asked. A connection with neither for the header
/// timeout is closed, as an idle HTTP/1.1 connection is, so an idle client
/// (or one that never finishes a header block) does not keep its slot.
#[derive(Debug, Default)]
struct Activity {
    open: std::sync::atomic::AtomicUsize,
    seen: std::sync::atomic::AtomicBool,
}

impl Activity {
    /// One more request, open until the returned guard is dropped.
    fn start(self: &Arc<Self>) -> OpenRequest {
        use std::sync::atomic::Ordering::Relaxed;
        self.open.fetch_add(1, Relaxed);
        self.seen.store(true, Relaxed);
        OpenRequest(self.clone())
    }

    /// Whether nothing is open and nothing came since the last call.
    fn idle(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        !self.seen.swap(false, Relaxed) && self.open.load(Relaxed) == 0
    }
}

/// One request of an HTTP/2 connection, counted open until its answer's
/// body is done with.
#[derive(Debug)]
struct OpenRequest(Arc<Activity>);

impl Drop for OpenRequest {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Bytes an HTTP/2 connection gathers before it writes them out without
/// waiting for the flush.
const COALESCE_BYTES: usize = 256 * 1024;
/// A buffer larger than this is let go once written: an idle connection
/// keeps no large buffer.
const COALESCE_KEEP: usize = 16 * 1024;

/// Whether a [`Coalesce`] keeps what it gathered through a flush.
#[derive(Debug, Default)]
struct Hold(std::sync::atomic::AtomicU8);

impl Hold {
    const FREE: u8 = 0;
    const HOLDING: u8 = 1;
    const HELD: u8 = 2;

    /// From now on a flush keeps what is gathered.
    fn start(&self) {
        self.0
            .store(Self::HOLDING, std::sync::atomic::Ordering::Relaxed);
    }

    /// Flushes write again; `true` when one kept bytes since
    /// [`Hold::start`], which a flush must now write.
    fn stop(&self) -> bool {
        self.0
            .swap(Self::FREE, std::sync::atomic::Ordering::Relaxed)
            == Self::HELD
    }
}

/// Gathers an HTTP/2 connection's writes and sends them in one system call
/// per turn of the connection's task, instead of one per frame.
///
/// h2 flushes after each frame it takes from a stream (a frame's data is
/// handed to the socket beside its header, not copied behind the others),
/// so on a bare socket a change to 100 watch streams of one connection was
/// 100 writes. Here writes are copied into a buffer, and while the
/// connection's task holds it ([`Hold`]: while it hands h2 the frames of a
/// turn) a flush keeps them; the flush that ends the turn writes them all
/// at once. A full buffer is written at once.
struct Coalesce<IO> {
    io: IO,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    /// Bytes the last round wrote: the next round's buffer is made this
    /// large at once rather than grown (and copied) step by step.
    last_round: usize,
    hold: Arc<Hold>,
}

impl<IO> Coalesce<IO> {
    fn new(io: IO, hold: Arc<Hold>) -> Self {
        Coalesce {
            io,
            buf: Vec::new(),
            sent: 0,
            last_round: 0,
            hold,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Coalesce<IO> {
    /// Writes out what is gathered; ready once all of it is written.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(super::serve::write_from(
            &mut self.io,
            cx,
            &self.buf,
            &mut self.sent
        ))?;
        self.last_round = self.buf.len().min(COALESCE_BYTES);
        self.buf.clear();
        self.sent = 0;
        if self.buf.capacity() > COALESCE_KEEP {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }

    /// Copies `data` in, making the buffer as large as the last round's
    /// when a round starts.
    fn gather(&mut self, data: &[u8]) {
        if self.buf.is_empty() && self.last_round > self.buf.capacity() {
            self.buf.reserve(self.last_round);
        }
        self.buf.extend_from_slice(data);
    }

    /// Makes room for more: a full buffer is written out first.
    fn room(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() >= COALESCE_BYTES {
            return self.drain(cx);
        }
        Poll::Ready(Ok(()))
    }
}

super::serve::reads_through!(Coalesce);

impl<IO: AsyncWrite + Unpin> AsyncWrite for Coalesce<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.room(cx))?;
        self.gather(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.room(cx))?;
        let mut n = 0;
        for b in bufs {
            self.gather(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() > self.sent {
            use std::sync::atomic::Ordering::Relaxed;
            let kept = self
                .hold
                .0
                .compare_exchange(Hold::HOLDING, Hold::HELD, Relaxed, Relaxed);
            if kept.is_ok() || kept == Err(Hold::HELD) {
                return Poll::Ready(Ok(()));
            }
        }
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The connection's event streams, by the service they follow.
#[derive(Default)]
struct FanOut {
    groups: slab::Slab<Group>,
    by_service: HashMap<Arc<str>, usize>,
    /// Groups whose receiver was woken.
    woken: Arc<Woken>,
    /// Streams that fell behind, waiting for their window: (group, stream).
    behind: Vec<(usize, usize)>,
    /// Looks for reset streams and keep-alives due, while there are streams.
    sweep: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Which groups have a change waiting, and the connection's task to wake.
#[derive(Default)]
struct Woken {
    groups: Mutex<Vec<usize>>,
    task: AtomicWaker,
}

/// A group's receiver's waker: notes the group and wakes the connection.
struct GroupWaker {
    group: usize,
    woken: Arc<Woken>,
    queued: AtomicBool,
}

impl Wake for GroupWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            if let Ok(mut groups) = self.woken.groups.lock() {
                groups.push(self.group);
            }
            self.woken.task.wake();
        }
    }
}

type Received = (
    broadcast::Receiver<Arc<ServiceEvent>>,
    Result<Arc<ServiceEvent>, RecvError>,
);

async fn receive(mut rx: broadcast::Receiver<Arc<ServiceEvent>>) -> Received {
    let result = rx.recv().await;
    (rx, result)
}

/// The streams of one connection that follow one service, and the one
/// receiver of its changes they share.
struct Group {
    service: Arc<str>,
    registry: Arc<Registry>,
    epoch: u64,
    next: ReusableBoxFuture<'static, Received>,
    waker: Arc<GroupWaker>,
    /// The latest state received: what a stream catching up is sent.
    last: Arc<ServiceEvent>,
    streams: slab::Slab<Stream>,
}

/// One event stream.
struct Stream {
    send: SendStream<Bytes>,
    /// Index of the last state sent.
    sent: u64,
    /// The resume token of the last event sent.
    token: u64,
    /// The client's window was shut when a frame was due.
    behind: bool,
    /// When the last frame went out.
    last: Instant,
    _held: (Single, (Body, OpenRequest)),
}

/// What sending to a stream came to.
enum Sent {
    Yes,
    Skipped,
    Behind,
    Gone,
}

impl Stream {
    /// Sends `event` unless the stream has it or cannot take it now.
    fn send_event(&mut self, event: &ServiceEvent, epoch: u64, frame: &Bytes, at: Instant) -> Sent {
        if event.index <= self.sent {
            return Sent::Skipped;
        }
        if self.behind {
            return Sent::Behind;
        }
        let token = self.token.max(event.index);
        let frame = if token == event.index {
            frame.clone()
        } else {
            crate::watch::sse_frame(epoch, token, event.json())
        };
        match self.send_frame(frame, at) {
            Sent::Yes => {
                self.sent = event.index;
                self.token = token;
                Sent::Yes
            }
            other => other,
        }
    }

    fn send_frame(&mut self, frame: Bytes, at: Instant) -> Sent {
        // Room for one byte means all that was handed over before is
        // covered by the client's window: nothing piles up in h2.
        self.send.reserve_capacity(1);
        if self.send.capacity() == 0 {
            self.behind = true;
            return Sent::Behind;
        }
        if self.send.send_data(frame, false).is_err() {
            return Sent::Gone;
        }
        self.last = at;
        Sent::Yes
    }
}

impl Group {
    /// Sends `event` to every stream, one frame built for all of them;
    /// notes in `behind` the streams that fell behind, drops those gone,
    /// and returns how many were sent it.
    fn deliver(&mut self, event: &ServiceEvent, behind: &mut Vec<usize>) -> usize {
        let frame = event.sse_frame(self.epoch);
        let now = Instant::now();
        let mut sent = 0;
        let mut gone = Vec::new();
        for (id, stream) in &mut self.streams {
            let was_behind = stream.behind;
            match stream.send_event(event, self.epoch, &frame, now) {
                Sent::Yes => sent += 1,
                Sent::Skipped => {}
                Sent::Behind => {
                    if !was_behind {
                        behind.push(id);
                    }
                }
                Sent::Gone => gone.push(id),
            }
        }
        for id in gone {
            self.streams.remove(id);
        }
        sent
    }
}

impl FanOut {
    /// Takes in a stream handed back by its request's task.
    fn join(&mut self, joining: Handoff) {
        let Handoff {
            send,
            mut watch,
            _held,
        } = joining;
        let rx = watch.take_receiver();
        let gid = match self.by_service.get(watch.service()) {
            // The group's receiver serves this stream too.
            Some(&gid) => gid,
            None => {
                let Some(rx) = rx else { return };
                let entry = self.groups.vacant_entry();
                let gid = entry.key();
                let waker = Arc::new(GroupWaker {
                    group: gid,
                    woken: self.woken.clone(),
                    queued: AtomicBool::new(false),
                });
                entry.insert(Group {
                    service: watch.service().clone(),
                    registry: watch.registry().clone(),
                    epoch: watch.epoch(),
                    next: ReusableBoxFuture::new(receive(rx)),
                    waker: waker.clone(),
                    last: watch.current().clone(),
                    streams: slab::Slab::new(),
                });
                self.by_service.insert(watch.service().clone(), gid);
                // Polled in this turn, so that it waits with its waker.
                waker.wake_by_ref();
                gid
            }
        };
        let group = &mut self.groups[gid];
        let first = watch.first();
        let (sent, token) = watch.position();
        let mut stream = Stream {
            send,
            sent,
            token,
            behind: false,
            last: watch.opened(),
            _held: (watch, _held),
        };
        let epoch = group.epoch;
        let now = Instant::now();
        let mut count = 0;
        for event in first.iter().chain([&group.last]) {
            match stream.send_event(event, epoch, &event.sse_frame(epoch), now) {
                Sent::Yes => count += 1,
                Sent::Skipped => {}
                Sent::Behind => break,
                Sent::Gone => return,
            }
        }
        group.registry.metrics().watch_events(count);
        let behind = stream.behind;
        let sid = group.streams.insert(stream);
        if behind {
            self.behind.push((gid, sid));
        }
        if self.sweep.is_none() {
            self.sweep = Some(Box::pin(tokio::time::sleep(SWEEP)));
        }
    }

    /// Sends what the woken groups received, catches up streams whose window
    /// opened, and sweeps now and then.
    fn poll(&mut self, cx: &mut Context<'_>) {
        if self.groups.is_empty() {
            return;
        }
        self.woken.task.register(cx.waker());
        let woken =
            std::mem::take(&mut *self.woken.groups.lock().unwrap_or_else(|e| e.into_inner()));
        for gid in woken {
            self.poll_group(gid);
        }
        if !self.behind.is_empty() {
            self.catch_up(cx);
        }
        if let Some(sweep) = &mut self.sweep
            && sweep.as_mut().poll(cx).is_ready()
        {
            self.sweep_streams();
            if let Some(sweep) = &mut self.sweep {
                sweep.as_mut().reset(Instant::now() + SWEEP);
                let _ = sweep.as_mut().poll(cx);
            }
        }
    }

    fn poll_group(&mut self, gid: usize) {
        let Some(group) = self.groups.get_mut(gid) else {
            return;
        };
        group.waker.queued.store(false, Ordering::Release);
        let waker = Waker::from(group.waker.clone());
        let mut cx = Context::from_waker(&waker);
        let mut behind = Vec::new();
        let mut closed = false;
        while let Poll::Ready((mut rx, first)) = group.next.poll(&mut cx) {
            let mut lagged = false;
            let mut sent = 0;
            let mut result = first.map_err(|e| match e {
                RecvError::Lagged(n) => TryRecvError::Lagged(n),
                RecvError::Closed => TryRecvError::Closed,
            });
            // Every change already waiting, in order.
            loop {
                match result {
                    Ok(event) => {
                        sent += group.deliver(&event, &mut behind);
                        group.last = event;
                    }
                    Err(TryRecvError::Lagged(_)) => lagged = true,
                    Err(TryRecvError::Closed) => closed = true,
                    Err(TryRecvError::Empty) => break,
                }
                if closed {
                    break;
                }
                result = rx.try_recv();
            }
            if lagged && !closed {
                // The connection fell behind the topic: the latest state
                // stands for what it missed.
                group.registry.metrics().watch_coalesced();
                let snapshot = group.registry.snapshot();
                let event = Arc::new(ServiceEvent::from_snapshot(&snapshot, &group.service));
                sent += group.deliver(&event, &mut behind);
                group.last = event;
            }
            group.registry.metrics().watch_events(sent as u64);
            if closed {
                break;
            }
            group.next.set(receive(rx));
        }
        self.behind.extend(behind.into_iter().map(|sid| (gid, sid)));
        if closed || group.streams.is_empty() {
            self.close_group(gid, closed);
        }
    }

    /// Ends a group's streams (the registry stopped), or drops the group
    /// whose streams are all gone.
    fn close_group(&mut self, gid: usize, end_streams: bool) {
        let group = self.groups.remove(gid);
        self.by_service.remove(&group.service);
        self.behind.retain(|&(g, _)| g != gid);
        if end_streams {
            for (_, mut stream) in group.streams {
                if stream.behind {
                    // It cannot take even the end: reset, or a client
                    // that does not read would hold the shutdown up.
                    stream.send.send_reset(h2::Reason::CANCEL);
                } else {
                    let _ = stream.send.send_data(Bytes::new(), true);
                }
            }
        }
        if self.groups.is_empty() {
            self.sweep = None;
        }
    }

    /// Streams behind whose window opened get their service's latest state.
    fn catch_up(&mut self, cx: &mut Context<'_>) {
        let mut still = Vec::new();
        for (gid, sid) in std::mem::take(&mut self.behind) {
            let Some(group) = self.groups.get_mut(gid) else {
                continue;
            };
            let Some(stream) = group.streams.get_mut(sid) else {
                continue;
            };
            let gone = loop {
                if stream.send.capacity() > 0 {
                    stream.behind = false;
                    break false;
                }
                match stream.send.poll_capacity(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(_)) | None) => break true,
                    Poll::Pending => break stream.send.poll_reset(cx).is_ready(),
                }
            };
            if gone {
                group.streams.remove(sid);
                continue;
            }
            if stream.behind {
                still.push((gid, sid));
                continue;
            }
            let last = group.last.clone();
            match stream.send_event(
                &last,
                group.epoch,
                &last.sse_frame(group.epoch),
                Instant::now(),
            ) {
                Sent::Yes => group.registry.metrics().watch_events(1),
                Sent::Skipped => {}
                Sent::Behind => still.push((gid, sid)),
                Sent::Gone => {
                    group.streams.remove(sid);
                }
            }
        }
        self.behind = still;
        let empty: Vec<usize> = self
            .groups
            .iter()
            .filter(|(_, g)| g.streams.is_empty())
            .map(|(gid, _)| gid)
            .collect();
        for gid in empty {
            self.close_group(gid, false);
        }
    }

    /// Drops the streams the client reset and sends a keep-alive comment on
    /// those quiet for [`KEEP_ALIVE`].
    fn sweep_streams(&mut self) {
        let now = Instant::now();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut empty = Vec::new();
        for (gid, group) in &mut self.groups {
            let mut gone = Vec::new();
            for (sid, stream) in &mut group.streams {
                if stream.behind {
                    continue;
                }
                if stream.send.poll_reset(&mut cx).is_ready() {
                    gone.push(sid);
                    continue;
                }
                if now >= stream.last + KEEP_ALIVE {
                    match stream.send_frame(Bytes::from_static(KEEP_ALIVE_FRAME), now) {
                        Sent::Gone => gone.push(sid),
                        Sent::Behind => self.behind.push((gid, sid)),
                        _ => {}
                    }
                }
            }
            for sid in gone {
                group.streams.remove(sid);
            }
            if group.streams.is_empty() {
                empty.push(gid);
            }
        }
        for gid in empty {
            self.close_group(gid, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::AppState;
    use crate::http::serve::{ClientCert, ServeConfig};

    /// A registry with `web` (one instance) served over an in-memory
    /// HTTP/2 connection, and the client's end of it.
    async fn served() -> (Arc<Registry>, AppState, h2::client::SendRequest<Bytes>) {
        let (registry, state) = super::super::watch::web_with_one_instance();
        let (client, server) = tokio::io::duplex(1 << 20);
        let peer = Peer {
            remote: ([127, 0, 0, 1], 1).into(),
            client: ClientCert::default(),
        };
        let settings = Settings::of(&ServeConfig::default());
        tokio::spawn(connection(
            server,
            peer,
            super::super::Api::new(state.clone()),
            settings,
            CancellationToken::new(),
        ));
        let (send, conn) = h2::client::handshake(client).await.unwrap();
        tokio::spawn(conn);
        (registry, state, send)
    }

    async fn open(
        send: &h2::client::SendRequest<Bytes>,
        path: &str,
        last_event_id: Option<String>,
    ) -> RecvStream {
        let mut request = Request::get(format!("http://roster{path}"));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let (response, _) = send
            .clone()
            .ready()
            .await
            .unwrap()
            .send_request(request.body(()).unwrap(), true)
            .unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        assert!(!response.headers().contains_key("content-length"));
        response.into_body()
    }

    /// The next frame of a stream.
    async fn next(stream: &mut RecvStream) -> String {
        let chunk = stream.data().await.unwrap().unwrap();
        let _ = stream.flow_control().release_capacity(chunk.len());
        String::from_utf8(chunk.to_vec()).unwrap()
    }

    fn index_of(frame: &str) -> u64 {
        let at = frame.find("\"index\":").expect(frame) + 8;
        frame[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn one_service_streams_get_their_changes_and_keep_alives_when_quiet() {
        let (registry, _state, send) = served().await;
        let mut a = open(&send, "/v1/services/web/watch", None).await;
        let mut b = open(&send, "/v1/watch?service=web", None).await;
        let mut db = open(&send, "/v1/services/db/watch", None).await;
        let start = Instant::now();
        let first = next(&mut a).await;
        assert_eq!(first, next(&mut b).await);
        let db_first = next(&mut db).await;
        assert!(db_first.contains("\"service\":\"db\""), "{db_first}");

        // A change to web reaches both web streams, in one frame each.
        tokio::time::sleep(Duration::from_secs(5)).await;
        registry.register_plain("web", "w2");
        let changed = next(&mut a).await;
        assert!(changed.contains("w2"), "{changed}");
        assert!(index_of(&changed) > index_of(&first));
        assert_eq!(changed, next(&mut b).await);

        // The db stream got nothing but, a full interval after it opened,
        // a keep-alive comment; the web streams get theirs an interval
        // after the change.
        assert_eq!(next(&mut db).await, ":\n\n");
        let quiet = start.elapsed();
        assert!(
            quiet >= KEEP_ALIVE && quiet <= KEEP_ALIVE + SWEEP,
            "{quiet:?}"
        );
        assert_eq!(next(&mut a).await, ":\n\n");
        let quiet = start.elapsed();
        let after_change = Duration::from_secs(5) + KEEP_ALIVE;
        assert!(
            quiet >= after_change && quiet <= after_change + SWEEP,
            "{quiet:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_resumed_stream_gets_only_what_changed_after_its_token() {
        let (registry, state, send) = served().await;
        let mut a = open(&send, "/v1/services/web/watch", None).await;
        let first = next(&mut a).await;
        let token = format!("{:x}.{}", state.epoch, index_of(&first));
        // Resumed at the current state: nothing to send until a change.
        let mut resumed = open(&send, "/v1/services/web/watch", Some(token.clone())).await;
        registry.register_plain("web", "w2");
        let changed = next(&mut resumed).await;
        assert!(changed.contains("w2"), "{changed}");
        assert_eq!(changed, next(&mut a).await);
        // A token from another run: the full state at once.
        let stale = format!("{:x}.{}", state.epoch + 1, index_of(&changed));
        let mut restarted = open(&send, "/v1/services/web/watch", Some(stale)).await;
        assert_eq!(index_of(&next(&mut restarted).await), index_of(&changed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_many_service_stream_is_streamed_by_its_own_task() {
        let (registry, _state, send) = served().await;
        registry.register_plain("db", "d1");
        let mut both = open(&send, "/v1/watch?service=web&service=db", None).await;
        let seen = [next(&mut both).await, next(&mut both).await];
        for service in ["db", "web"] {
            let named = format!("\"service\":\"{service}\"");
            assert!(seen.iter().any(|f| f.contains(&named)), "{seen:?}");
        }
        registry.register_plain("db", "d2");
        assert!(next(&mut both).await.contains("d2"));
    }

    /// Records what reaches the socket, one entry per write call.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        /// Takes nothing while set.
        full: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.full {
                return Poll::Pending;
            }
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn gathered_writes_go_out_in_one_write_when_the_hold_ends() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let hold = Arc::new(Hold::default());
        let mut c = Coalesce::new(Recorder::default(), hold.clone());
        // Not held: a flush writes what came.
        let _ = Pin::new(&mut c).poll_write(&mut cx, b"zero");
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert_eq!(c.io.writes, vec![b"zero".to_vec()]);
        // Held: flushes after each frame keep them.
        hold.start();
        for frame in [&b"one"[..], b"two", b"three"] {
            let wrote = Pin::new(&mut c).poll_write(&mut cx, frame);
            assert!(matches!(wrote, Poll::Ready(Ok(n)) if n == frame.len()));
            assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        }
        let wrote = Pin::new(&mut c).poll_write_vectored(
            &mut cx,
            &[io::IoSlice::new(b"-four"), io::IoSlice::new(b"-five")],
        );
        assert!(matches!(wrote, Poll::Ready(Ok(10))));
        assert_eq!(c.io.writes.len(), 1, "nothing written while held");
        // The hold ends, saying bytes were kept; the next flush writes
        // them all at once.
        assert!(hold.stop());
        assert!(Pin::new(&mut c).poll_flush(&mut cx).is_ready());
        assert_eq!(c.io.writes[1], b"onetwothree-four-five".to_vec());
        // A hold in which nothing was flushed says so.
        hold.start();
        assert!(!hold.stop());
    }

    #[test]
    fn a_full_buffer_is_written_before_more_is_taken() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let hold = Arc::new(Hold::default());
        hold.start();
        let mut c = Coalesce::new(Recorder::default(), hold);
        let chunk = vec![7u8; COALESCE_BYTES];
        assert!(Pin::new(&mut c).poll_write(&mut cx, &chunk).is_ready());
        assert!(c.io.writes.is_empty());
        // The socket takes nothing: no more is taken in either, so a client
        // that does not read cannot make the buffer grow.
        c.io.full = true;
        assert!(Pin::new(&mut c).poll_write(&mut cx, b"more").is_pending());
        assert!(Pin::new(&mut c).poll_write(&mut cx, b"more").is_pending());
        assert_eq!(c.buf.len(), COALESCE_BYTES);
        c.io.full = false;
        assert!(Pin::new(&mut c).poll_write(&mut cx, b"more").is_ready());
        assert_eq!(c.io.writes.len(), 1, "the full buffer went out first");
        assert_eq!(c.buf, b"more");
    }
}
