//! The floor of a watch over HTTP/2 on this machine: a bare server on the
//! `h2` crate that serves only what `watch_latency --skip-setup` asks,
//! `GET /v1/watch` streams and `PUT .../maintenance` changes, with the
//! fan-out a dedicated watch path in roster would have: each connection's
//! task holds its streams and hands every change's frame (one `Bytes`,
//! shared) to each of them in one pass, no task per stream and no body
//! adapters. Each event is an SSE frame of the size roster sends for a
//! service of 10 instances (the JSON of `--file`, with its `"index"`
//! rewritten per change), so the bytes through the kernel match.
//!
//! ```text
//! peer_h2_sse --addr 127.0.0.1:18701 --file bench/out/watch-event.json
//! ```
//!
//! `--fanout task` gives each watch stream a task of its own with its own
//! broadcast receiver, as roster's streams have under hyper (the rest
//! unchanged): what that model costs by itself, without hyper's stream
//! machinery and roster's body layers. `--fanout guarded` is the same with
//! what hyper's pipe from a body to a stream does around each frame: make
//! sure of some send capacity and listen for the client's reset.
//!
//! `--engine hyper` serves the same through hyper's HTTP/2 server, as roster
//! does: each stream a task running hyper's stream future, its body a
//! stream of the change frames (a broadcast receiver per stream), the same
//! gathered writes; `--fanout` does not apply there. With the environment
//! variable `PEER_HYPER_AS_ROSTER` set, hyper gets roster's settings too
//! (keep-alive pings, reset caps, header list size, its timer).
//!
//! Like roster under `taskset -c 0`, it runs one worker. It keeps no catalog,
//! checks no token and limits nothing: what it costs per stream is what the
//! HTTP/2 framing, the copies and the kernel cost, with nothing above them.
//! A connection's writes are gathered ([`Gather`]) and go out in one system
//! call once its task has handed every stream its frame: h2 flushes after
//! each DATA frame it encodes, which on a bare socket is one `writev` per
//! stream and change.

use std::io;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use h2::SendStream;
use h2::server::SendResponse;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const USAGE: &str =
    "usage: peer_h2_sse --addr ADDR --file FILE [--fanout inline|task|guarded] [--engine h2|hyper]";

/// What every connection shares.
struct Shared {
    /// The event JSON before and after its index.
    head: String,
    tail: String,
    index: AtomicU64,
    /// Every change's frame.
    changes: broadcast::Sender<Bytes>,
    /// The latest frame, a new stream's first event.
    current: std::sync::Mutex<Bytes>,
    /// Each watch stream runs in a task of its own (`--fanout task`).
    task_per_stream: bool,
    /// Those tasks check capacity and resets around each frame.
    guarded: bool,
}

/// Which HTTP/2 server runs the connections.
#[derive(Clone, Copy, PartialEq)]
enum Engine {
    H2,
    Hyper,
}

impl Shared {
    fn frame(&self, index: u64) -> Bytes {
        Bytes::from(format!(
            "event: service\nid: ab.{index}\ndata: {}{index}{}\n\n",
            self.head, self.tail
        ))
    }

    /// A change: moves the index on and publishes the new frame; the answer
    /// to the change's request, the index as the instance's `modify_index`.
    fn change(&self) -> Bytes {
        let index = self.index.fetch_add(1, Ordering::SeqCst) + 1;
        let frame = self.frame(index);
        *self.current.lock().unwrap() = frame.clone();
        let _ = self.changes.send(frame);
        Bytes::from(format!("{{\"modify_index\":{index}}}"))
    }
}

/// The next change's frame on `changes`, past any the receiver fell behind
/// on; `None` once the channel is closed.
async fn next_change(changes: &mut broadcast::Receiver<Bytes>) -> Option<Bytes> {
    loop {
        match changes.recv().await {
            Ok(frame) => return Some(frame),
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let (mut task_per_stream, mut guarded, mut engine) = (false, false, Engine::H2);
    let parsed = roster_bench::peer_args(USAGE, |flag, v| match (flag, v.as_str()) {
        ("--fanout", "inline" | "task" | "guarded") => {
            task_per_stream = v != "inline";
            guarded = v == "guarded";
            true
        }
        ("--engine", "h2" | "hyper") => {
            engine = if v == "hyper" {
                Engine::Hyper
            } else {
                Engine::H2
            };
            true
        }
        _ => false,
    });
    let Some((addr, file)) = parsed else {
        return ExitCode::from(2);
    };
    let json = match std::fs::read_to_string(&file) {
        Ok(json) => json,
        Err(e) => {
            eprintln!("peer_h2_sse: {file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The event's own index, the first `"index":` of its JSON.
    const KEY: &str = "\"index\":";
    let Some(at) = json.find(KEY).map(|at| at + KEY.len()) else {
        eprintln!("peer_h2_sse: {file} has no \"index\"");
        return ExitCode::FAILURE;
    };
    let digits = json[at..].bytes().take_while(u8::is_ascii_digit).count();
    let shared = Arc::new(Shared {
        head: json[..at].to_owned(),
        tail: json[at + digits..].trim_end().to_owned(),
        index: AtomicU64::new(1),
        changes: broadcast::channel(64).0,
        current: std::sync::Mutex::new(Bytes::new()),
        task_per_stream,
        guarded,
    });
    *shared.current.lock().unwrap() = shared.frame(1);
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("peer_h2_sse: bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        if engine == Engine::Hyper {
            tokio::spawn(hyper_connection(tcp, shared.clone()));
        } else {
            tokio::spawn(connection(tcp, shared.clone()));
        }
    }
}

/// One connection: accepts its streams and, on every change, hands the
/// change's frame to each of its watch streams.
async fn connection(tcp: TcpStream, shared: Arc<Shared>) {
    let tcp = Gather::new(tcp);
    let Ok(mut conn) = h2::server::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .max_concurrent_streams(256)
        .handshake::<_, Bytes>(tcp)
        .await
    else {
        return;
    };
    let mut changes = shared.changes.subscribe();
    let mut watchers: Vec<SendStream<Bytes>> = Vec::new();
    loop {
        tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(Ok((req, respond))) => {
                    if req.method() == http::Method::GET {
                        match watch(respond, &shared) {
                            Some(w) if shared.task_per_stream => {
                                let changes = shared.changes.subscribe();
                                tokio::spawn(stream_task(w, changes, shared.guarded));
                            }
                            Some(w) => watchers.push(w),
                            None => {}
                        }
                    } else {
                        tokio::spawn(change(req.into_body(), respond, shared.clone()));
                    }
                }
                _ => return,
            },
            frame = next_change(&mut changes) => match frame {
                Some(frame) => watchers.retain_mut(|w| w.send_data(frame.clone(), false).is_ok()),
                None => return,
            },
        }
    }
}

/// One connection served by hyper: a watch is a body streaming the change
/// frames from a receiver of its own; a change is read whole and answered.
async fn hyper_connection(tcp: TcpStream, shared: Arc<Shared>) {
    use futures_util::StreamExt as _;
    use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
    type Body = BoxBody<Bytes, std::convert::Infallible>;
    let tcp = Gather::new(tcp);
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let shared = shared.clone();
        async move {
            let response = http::Response::builder();
            if req.method() == http::Method::GET {
                let first = shared.current.lock().unwrap().clone();
                let changes =
                    futures_util::stream::unfold(shared.changes.subscribe(), |mut rx| async move {
                        next_change(&mut rx).await.map(|frame| (frame, rx))
                    });
                let frames = futures_util::stream::iter([first])
                    .chain(changes)
                    .map(|b| Ok(hyper::body::Frame::data(b)));
                let body: Body = BoxBody::new(StreamBody::new(frames));
                return response
                    .header("content-type", "text/event-stream")
                    .body(body);
            }
            let _ = req.into_body().collect().await;
            let body: Body = BoxBody::new(Full::new(shared.change()));
            response
                .header("content-type", "application/json")
                .body(body)
        }
    });
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.max_concurrent_streams(256);
    if std::env::var_os("PEER_HYPER_AS_ROSTER").is_some() {
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .max_header_list_size(64 * 1024)
            .max_pending_accept_reset_streams(Some(20))
            .max_local_error_reset_streams(Some(1024))
            .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
            .keep_alive_timeout(std::time::Duration::from_secs(10));
    }
    let _ = builder
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        .await;
}

/// One watch stream in a task of its own (`--fanout task`); `guarded`, it
/// reserves send capacity and listens for a reset around each frame.
async fn stream_task(
    mut stream: SendStream<Bytes>,
    mut changes: broadcast::Receiver<Bytes>,
    guarded: bool,
) {
    loop {
        if guarded {
            stream.reserve_capacity(1);
            if stream.capacity() == 0 {
                match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
                    Some(Ok(_)) => {}
                    _ => return,
                }
            }
        }
        let received = if guarded {
            tokio::select! {
                biased;
                _ = std::future::poll_fn(|cx| stream.poll_reset(cx)) => return,
                frame = next_change(&mut changes) => frame,
            }
        } else {
            next_change(&mut changes).await
        };
        let Some(frame) = received else { return };
        if stream.send_data(frame, false).is_err() {
            return;
        }
    }
}

/// Opens a watch stream with the current state.
fn watch(mut respond: SendResponse<Bytes>, shared: &Shared) -> Option<SendStream<Bytes>> {
    let head = http::Response::builder()
        .header("content-type", "text/event-stream")
        .body(())
        .ok()?;
    let mut stream = respond.send_response(head, false).ok()?;
    let current = shared.current.lock().unwrap().clone();
    stream.send_data(current, false).ok()?;
    Some(stream)
}

/// A change's request: reads its body, then makes the change and answers.
async fn change(mut body: h2::RecvStream, mut respond: SendResponse<Bytes>, shared: Arc<Shared>) {
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let answer = shared.change();
    let head = http::Response::builder()
        .header("content-type", "application/json")
        .body(())
        .expect("a valid head");
    if let Ok(mut stream) = respond.send_response(head, false) {
        let _ = stream.send_data(answer, true);
    }
}

/// A socket whose writes are held until the task that writes them has been
/// woken by the runtime once more (tokio's deferred wake, after the tasks
/// ready now): flushes before that hold the bytes and say ready, so h2
/// goes on encoding; the first flush after it writes them all.
struct Gather {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    sent: usize,
    /// Set by the deferred wake of the round under way.
    round: Option<Arc<Round>>,
}

struct Round {
    came: AtomicBool,
    task: Waker,
}

impl Wake for Round {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.came.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

impl Gather {
    fn new(tcp: TcpStream) -> Self {
        Gather {
            tcp,
            buf: Vec::new(),
            sent: 0,
            round: None,
        }
    }

    fn write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.buf.len() {
            let n =
                std::task::ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.buf[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.buf.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Gather {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gather {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.buf.len() > self.sent {
            match &self.round {
                Some(round) if round.came.load(Ordering::Acquire) => self.round = None,
                Some(_) => return Poll::Ready(Ok(())),
                None => {
                    let round = Arc::new(Round {
                        came: AtomicBool::new(false),
                        task: cx.waker().clone(),
                    });
                    let waker = Waker::from(round.clone());
                    let mut yielded = std::pin::pin!(tokio::task::yield_now());
                    let _ = yielded.as_mut().poll(&mut Context::from_waker(&waker));
                    self.round = Some(round);
                    return Poll::Ready(Ok(()));
                }
            }
        }
        std::task::ready!(self.write_out(cx))?;
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.write_out(cx))?;
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
