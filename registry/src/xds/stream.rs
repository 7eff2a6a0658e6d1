//! Serving ADS over HTTP/2 directly: one task per connection runs all of its
//! streams.
//!
//! A stream is a future the connection's task polls, not a task of its own:
//! a change wakes the streams that follow it, the connection's task polls
//! every woken stream in one pass (each builds its response and hands it to
//! the connection), and then writes them all at once. Through tonic and
//! hyper every stream was a task woken by the change, polled through a
//! stack of body adapters, and woken again for each ACK; that work per
//! stream was most of the cost of a push to many streams.
//!
//! A stream does its work only when the client can take it: while the
//! client's HTTP/2 window is full the stream waits and reads nothing, and
//! when the client reads again it gets the latest state, so a client that
//! does not read costs nothing but its buffers. The protocol decides what to
//! answer ([`Session`]).

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::{Open, Wake, Xds, delta, sotw};
use crate::http::http2::ConnEvent;

/// One ADS protocol's state on one stream.
pub(super) trait Session: Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Outgoing;

    /// Takes in one request, queueing what it answers; an error ends the
    /// stream with that status.
    fn request(
        &mut self,
        xds: &Xds,
        wake: &mut Wake,
        req: Self::Request,
        out: &mut VecDeque<Self::Response>,
    ) -> Result<(), Status>;

    /// The catalog (or another datacenter's answer) changed: queues what
    /// the client should be sent now.
    fn changed(&mut self, xds: &Xds, out: &mut VecDeque<Self::Response>);
}

/// A response as it goes out.
pub(super) trait Outgoing: Send + 'static {
    /// The response as one gRPC message (uncompressed, length-prefixed).
    fn into_frame(self) -> Bytes;
}

impl Outgoing for envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse {
    fn into_frame(self) -> Bytes {
        frame(&self)
    }
}

/// A response already framed by its session.
pub(super) struct Framed(pub Bytes);

impl Outgoing for Framed {
    fn into_frame(self) -> Bytes {
        self.0
    }
}

/// The state-of-the-world method.
pub(super) const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// The incremental method.
pub(super) const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Largest request message taken.
pub(super) const MAX_REQUEST: usize = 4 << 20;
/// Streams one connection may have open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 1024;
/// HTTP/2 windows: what a client may send before roster takes it in. A
/// request's bytes are given back to the window only once the whole message
/// is read, so a stream's window holds the largest request, and what one
/// connection can make roster hold is bounded by its window, however many
/// streams it opens.
const STREAM_WINDOW: u32 = MAX_REQUEST as u32 + 5;
const CONNECTION_WINDOW: u32 = 2 * STREAM_WINDOW;
/// A connection is pinged after this long, and dropped when the ping is not
/// answered within [`KEEPALIVE_TIMEOUT`]: a client that vanished without
/// closing does not hold its streams for ever.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one connection's streams until the client closes it, it breaks,
/// or `shutdown` (every stream then ends, and the connection closes once
/// they are written).
pub(super) async fn serve_connection<IO>(
    io: IO,
    xds: Arc<Xds>,
    shutdown: CancellationToken,
    handshake_timeout: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .max_header_list_size(16 << 10)
        .handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(handshake_timeout, handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "xDS HTTP/2 handshake failed");
            return;
        }
        Err(_) => return,
    };
    let mut keepalive = pin!(crate::http::http2::keepalive(
        conn.ping_pong(),
        KEEPALIVE_INTERVAL,
        KEEPALIVE_TIMEOUT
    ));
    let mut stop = pin!(shutdown.cancelled());
    let mut streams = FuturesUnordered::new();
    let mut closing = false;
    loop {
        let event = poll_fn(|cx| {
            if !closing && stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Turn::Stop);
            }
            // The streams first, then the connection: what the woken
            // streams hand over is written in this same turn, so a change
            // goes out connection by connection as each is done, not once
            // every connection of the thread has built its responses.
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            ConnEvent::of(conn.poll_accept(cx), keepalive.as_mut(), cx).map(Turn::Conn)
        })
        .await;
        match event {
            Turn::Stop => {
                // The streams see the same token and end themselves; the
                // connection then closes once they are written.
                closing = true;
                conn.graceful_shutdown();
            }
            Turn::Conn(ConnEvent::Accepted(accepted)) => {
                let (request, respond) = *accepted;
                streams.push(Box::pin(run_stream(xds.clone(), request, respond)));
            }
            Turn::Conn(end) => return end.log_end("xDS"),
        }
    }
}

/// What a turn of a connection's task came to.
enum Turn {
    /// The server stops.
    Stop,
    Conn(ConnEvent),
}

/// One request stream: routed by its method, admitted (token, stream limit),
/// then served to its end.
async fn run_stream(
    xds: Arc<Xds>,
    request: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
) {
    let sotw = match request.uri().path() {
        SOTW_PATH => true,
        DELTA_PATH => false,
        path => {
            let status = Status::unimplemented(format!("roster serves no method {path}"));
            return refuse(respond, &status);
        }
    };
    if request
        .headers()
        .get("grpc-encoding")
        .is_some_and(|e| e != "identity")
    {
        let status = Status::unimplemented("compressed requests are not supported");
        return refuse(respond, &status);
    }
    let permit = match xds.admit(request.headers()) {
        Ok(permit) => permit,
        Err(status) => return refuse(respond, &status),
    };
    let body = request.into_body();
    if sotw {
        let open = Open::new(&xds, permit, "sotw");
        drive(xds, body, respond, open, sotw::State::default()).await;
    } else {
        let open = Open::new(&xds, permit, "delta");
        drive(xds, body, respond, open, delta::State::default()).await;
    }
}

/// Answers a stream with only a status (gRPC's trailers-only response).
fn refuse(mut respond: SendResponse<Bytes>, status: &Status) {
    let mut response = http::Response::new(());
    *response.headers_mut() = grpc_headers();
    put_status(response.headers_mut(), status);
    let _ = respond.send_response(response, true);
}

/// Headers every response starts with.
fn grpc_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers
}

/// `grpc-status` and `grpc-message` (percent-encoded, as gRPC asks).
fn put_status(headers: &mut HeaderMap, status: &Status) {
    headers.insert("grpc-status", HeaderValue::from(status.code() as i32));
    if !status.message().is_empty() {
        let mut message = String::with_capacity(status.message().len());
        for b in status.message().bytes() {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                message.push(char::from(b));
            } else {
                message.push_str(&format!("%{b:02X}"));
            }
        }
        if let Ok(v) = HeaderValue::try_from(message) {
            headers.insert("grpc-message", v);
        }
    }
}

/// What woke an idle stream.
enum Event {
    Shutdown,
    Data(Option<Result<Bytes, h2::Error>>),
    Changed(bool),
}

/// Serves one admitted stream until it ends; `open` is held until then.
async fn drive<S: Session>(
    xds: Arc<Xds>,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    _open: Open,
    mut session: S,
) {
    let mut response = http::Response::new(());
    *response.headers_mut() = grpc_headers();
    let Ok(mut send) = respond.send_response(response, false) else {
        return;
    };
    let mut cancelled = pin!(xds.cancel.cancelled());
    let mut wake = Wake::new(xds.failover());
    let mut requests = Requests::default();
    let mut out: VecDeque<S::Response> = VecDeque::new();
    loop {
        // Hand over what is decided, each response once the client's window
        // has room for some of it (the rest waits in the connection, at most
        // one response per stream).
        while let Some(response) = out.pop_front() {
            if !has_room(&mut send, &mut cancelled).await {
                return finish(&mut send, &Status::new(Code::Ok, ""));
            }
            if send.send_data(response.into_frame(), false).is_err() {
                return;
            }
        }
        // One request at a time: what it answers goes out (as the client
        // reads) before the next is taken in, so a client that sends many
        // requests and reads nothing holds one request's answers, not all.
        match requests.next::<S::Request>() {
            Ok(Some((request, used))) => {
                let _ = body.flow_control().release_capacity(used);
                if let Err(status) = session.request(&xds, &mut wake, request, &mut out) {
                    return finish(&mut send, &status);
                }
                continue;
            }
            Ok(None) => {}
            Err(status) => return finish(&mut send, &status),
        }
        let event = tokio::select! {
            biased;
            () = &mut cancelled => Event::Shutdown,
            // A change first: when a push wakes every stream, none of them
            // looks at its request side (the ACKs come after).
            open = wake.changed() => Event::Changed(open),
            data = body.data() => Event::Data(data),
        };
        match event {
            Event::Shutdown | Event::Changed(false) | Event::Data(None) => {
                return finish(&mut send, &Status::new(Code::Ok, ""));
            }
            Event::Data(Some(Err(_))) => return, // reset by the client
            Event::Data(Some(Ok(chunk))) => requests.buf.extend_from_slice(&chunk),
            Event::Changed(true) => session.changed(&xds, &mut out),
        }
    }
}

/// Waits until the stream may send (the client's window is open); `false`
/// when the stream is gone or the server stops first.
async fn has_room(
    send: &mut SendStream<Bytes>,
    cancelled: &mut std::pin::Pin<&mut tokio_util::sync::WaitForCancellationFuture<'_>>,
) -> bool {
    send.reserve_capacity(1);
    if send.capacity() > 0 {
        return true;
    }
    loop {
        tokio::select! {
            () = &mut *cancelled => return false,
            capacity = poll_fn(|cx| send.poll_capacity(cx)) => match capacity {
                Some(Ok(0)) => {}
                Some(Ok(_)) => return true,
                Some(Err(_)) | None => return false,
            },
        }
    }
}

/// Ends the stream with `status` in its trailers.
fn finish(send: &mut SendStream<Bytes>, status: &Status) {
    let mut trailers = HeaderMap::new();
    put_status(&mut trailers, status);
    let _ = send.send_trailers(trailers);
}

/// `message` as one uncompressed gRPC message.
fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut buf = BytesMut::with_capacity(5 + len);
    buf.put_u8(0);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    message
        .encode(&mut buf)
        .expect("the buffer holds the message");
    buf.freeze()
}

/// The request bytes read so far, cut into gRPC messages.
#[derive(Default)]
struct Requests {
    buf: BytesMut,
}

impl Requests {
    /// The next whole message, if one has arrived, and the bytes it took.
    fn next<M: prost::Message + Default>(&mut self) -> Result<Option<(M, usize)>, Status> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        if self.buf[0] != 0 {
            return Err(Status::unimplemented(
                "compressed requests are not supported",
            ));
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > MAX_REQUEST {
            return Err(Status::resource_exhausted(format!(
                "a request of {len} bytes is over the limit of {MAX_REQUEST}"
            )));
        }
        if self.buf.len() < 5 + len {
            // Not reserved ahead: a five-byte header must not make roster
            // allocate the megabytes it announces.
            return Ok(None);
        }
        self.buf.advance(5);
        let message = self.buf.split_to(len);
        M::decode(message.freeze())
            .map(|m| Some((m, 5 + len)))
            .map_err(|e| Status::internal(format!("a request that does not decode: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use tokio::io::DuplexStream;
    use tokio::time::Instant;

    use super::*;

    /// A connection served over an in-memory pipe, and the client's end.
    async fn served() -> (
        tokio::task::JoinHandle<()>,
        h2::client::SendRequest<Bytes>,
        h2::client::Connection<DuplexStream, Bytes>,
    ) {
        let (_, xds) = super::super::test_xds();
        let (client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(serve_connection(
            server,
            xds,
            CancellationToken::new(),
            Duration::from_secs(10),
        ));
        let (send, conn) = h2::client::handshake(client).await.unwrap();
        (served, send, conn)
    }

    /// The status of a call to `path` with `headers`, answered with no message.
    async fn status_of(path: &str, headers: &[(&str, &str)]) -> (String, String) {
        let (_served, mut send, conn) = served().await;
        tokio::spawn(conn);
        let mut request = http::Request::post(format!("http://xds{path}"))
            .header("content-type", "application/grpc");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let (response, _) = send.send_request(request.body(()).unwrap(), true).unwrap();
        let response = response.await.unwrap();
        assert!(response.body().is_end_stream(), "trailers only");
        let h = response.headers();
        let get = |k: &str| h.get(k).map_or("", |v| v.to_str().unwrap()).to_owned();
        (get("grpc-status"), get("grpc-message"))
    }

    #[tokio::test]
    async fn another_method_and_compressed_requests_get_unimplemented() {
        let (code, message) = status_of("/grpc.health.v1.Health/Check", &[]).await;
        assert_eq!(code, "12");
        assert!(message.contains("Health/Check"), "{message}");
        let (code, message) = status_of(SOTW_PATH, &[("grpc-encoding", "gzip")]).await;
        assert_eq!(code, "12");
        assert!(message.contains("compressed"), "{message}");
    }

    #[tokio::test]
    async fn a_connection_can_make_roster_hold_no_more_than_its_window() {
        let (_served, mut requests, conn) = served().await;
        tokio::spawn(conn);
        // Three streams, each starting a request of the largest size and
        // never finishing it.
        let mut streams = Vec::new();
        for _ in 0..3 {
            let request = http::Request::post(format!("http://xds{SOTW_PATH}"))
                .header("content-type", "application/grpc")
                .body(())
                .unwrap();
            requests = requests.ready().await.unwrap();
            let (response, mut send) = requests.send_request(request, false).unwrap();
            let mut header = BytesMut::new();
            header.put_u8(0);
            header.put_u32(u32::try_from(MAX_REQUEST).unwrap());
            send.send_data(header.freeze(), false).unwrap();
            streams.push((response, send, MAX_REQUEST - 1));
        }
        let mut sent = 15;
        loop {
            let mut progressed = false;
            for (_, send, left) in &mut streams {
                send.reserve_capacity((*left).min(1 << 20));
                let wait = Duration::from_millis(200);
                let granted = tokio::time::timeout(wait, poll_fn(|cx| send.poll_capacity(cx)));
                if let Ok(Some(Ok(n))) = granted.await {
                    let n = n.min(*left);
                    if n > 0 {
                        send.send_data(Bytes::from(vec![0u8; n]), false).unwrap();
                        (*left, sent, progressed) = (*left - n, sent + n, true);
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        assert!(sent <= CONNECTION_WINDOW as usize, "{sent} bytes held");
        assert!(
            sent > STREAM_WINDOW as usize,
            "one stream's window only: {sent}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_answers_no_ping_is_dropped_and_one_that_does_is_kept() {
        // Answers pings: its connection is driven.
        let (kept, _send, conn) = served().await;
        tokio::spawn(conn);
        // Never driven again after the handshake: it answers nothing.
        let (dropped, _send2, _conn2) = served().await;
        let start = Instant::now();
        tokio::time::timeout(KEEPALIVE_INTERVAL * 20, dropped)
            .await
            .expect("the silent client is dropped")
            .unwrap();
        let took = start.elapsed();
        assert!(
            took >= KEEPALIVE_INTERVAL && took <= KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT,
            "{took:?}"
        );
        tokio::time::sleep(KEEPALIVE_INTERVAL * 4).await;
        assert!(!kept.is_finished(), "a client that answers is kept");
    }

    #[test]
    fn requests_are_cut_at_message_bounds_whatever_the_chunks() {
        let a = DiscoveryRequest {
            type_url: "t".into(),
            resource_names: vec!["web".into()],
            ..DiscoveryRequest::default()
        };
        let b = DiscoveryRequest {
            version_info: "7".into(),
            ..a.clone()
        };
        let mut bytes = frame(&a).to_vec();
        bytes.extend_from_slice(&frame(&b));
        for cut in 0..bytes.len() {
            let mut r = Requests::default();
            let mut got = Vec::new();
            for chunk in [&bytes[..cut], &bytes[cut..]] {
                r.buf.extend_from_slice(chunk);
                while let Some((m, used)) = r.next::<DiscoveryRequest>().unwrap() {
                    assert_eq!(used, frame(&m).len());
                    got.push(m);
                }
            }
            assert_eq!(got, vec![a.clone(), b.clone()], "cut at {cut}");
        }
    }

    #[test]
    fn oversized_compressed_and_garbled_requests_are_refused() {
        let mut r = Requests::default();
        r.buf.put_u8(0);
        r.buf.put_u32(u32::try_from(MAX_REQUEST + 1).unwrap());
        let err = r.next::<DiscoveryRequest>().unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);

        // Announcing the most allowed reserves nothing ahead of the bytes.
        let mut r = Requests::default();
        r.buf.put_u8(0);
        r.buf.put_u32(u32::try_from(MAX_REQUEST).unwrap());
        assert!(r.next::<DiscoveryRequest>().unwrap().is_none());
        assert!(r.buf.capacity() < 1024, "{}", r.buf.capacity());

        let mut r = Requests::default();
        r.buf.extend_from_slice(&[1, 0, 0, 0, 0]);
        let err = r.next::<DiscoveryRequest>().unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);

        let mut r = Requests::default();
        r.buf.extend_from_slice(&[0, 0, 0, 0, 2, 0xff, 0xff]);
        let err = r.next::<DiscoveryRequest>().unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }

    #[test]
    fn status_messages_are_percent_encoded() {
        let mut headers = HeaderMap::new();
        put_status(
            &mut headers,
            &Status::permission_denied("token \"x\" may not: 100% ünread\n"),
        );
        assert_eq!(headers["grpc-status"], "7");
        assert_eq!(
            headers["grpc-message"],
            "token \"x\" may not: 100%25 %C3%BCnread%0A"
        );
    }
}
