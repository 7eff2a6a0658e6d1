//! Problem documents for the errors hyper answers by itself.
//!
//! A request whose head cannot be parsed (a broken request line, a URI or
//! headers past hyper's buffers) never becomes a request: hyper answers `400`,
//! `414` or `431` with an empty body and closes the connection, before any
//! layer of ours runs. This stream wrapper, between hyper and the socket,
//! recognises those answers (an error status, `content-length: 0` and no
//! content type: every answer of the API itself has a body and a type) and
//! gives them the `application/problem+json` body every other error has.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

/// hyper's own error answers, and what to say in their place.
const KNOWN: [(&[u8], &str, &str, &str); 3] = [
    (
        b"HTTP/1.1 400 ",
        "malformed-request",
        "Malformed request",
        "the request line or headers could not be parsed as HTTP/1.1",
    ),
    (
        b"HTTP/1.1 414 ",
        "uri-too-long",
        "URI too long",
        "the request URI is longer than the server accepts",
    ),
    (
        b"HTTP/1.1 431 ",
        "headers-too-large",
        "Request headers too large",
        "the request headers are larger than the server accepts",
    ),
];

/// The head and body to send instead of `head`, when `head` is one of hyper's
/// bodiless error answers.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let (status_line, kind, title, detail) =
        KNOWN.iter().find(|(prefix, ..)| head.starts_with(prefix))?;
    let text = std::str::from_utf8(head).ok()?;
    let lower = text.to_ascii_lowercase();
    if !lower.ends_with("\r\n\r\n")
        || !lower.contains("\r\ncontent-length: 0\r\n")
        || lower.contains("\r\ncontent-type:")
    {
        return None;
    }
    let status: u16 = std::str::from_utf8(&status_line[9..12])
        .ok()?
        .parse()
        .ok()?;
    let body = format!(
        r#"{{"type":"urn:roster:problem:{kind}","title":"{title}","status":{status},"detail":"{detail}"}}"#
    );
    let at = lower.find("\r\ncontent-length: 0\r\n")?;
    let mut out = Vec::with_capacity(text.len() + body.len() + 64);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&head[at + "\r\ncontent-length: 0\r\n".len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

/// The stream hyper writes to; see the module documentation.
#[derive(Debug)]
pub(super) struct ProblemBodies<IO> {
    io: IO,
    /// A replacement answer not yet fully written, and how much of it was.
    pending: Option<(Vec<u8>, usize)>,
}

impl<IO> ProblemBodies<IO> {
    pub(super) fn new(io: IO) -> Self {
        ProblemBodies { io, pending: None }
    }
}

impl<IO: AsyncWrite + Unpin> ProblemBodies<IO> {
    /// Writes what is pending; ready once nothing is.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some((bytes, done)) = &mut self.pending {
            std::task::ready!(super::serve::write_from(&mut self.io, cx, bytes, done))?;
            self.pending = None;
        }
        Poll::Ready(Ok(()))
    }
}

super::serve::reads_through!(ProblemBodies);

impl<IO: AsyncWrite + Unpin> AsyncWrite for ProblemBodies<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        if let Some(bytes) = replacement(buf) {
            // Taken whole: the replacement goes out on the next writes and
            // flushes, before anything else.
            self.pending = Some((bytes, 0));
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        // hyper puts an answer's whole head in the first slice.
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if let Some(first) = bufs.first()
            && bufs[1..].iter().all(|b| b.is_empty())
            && let Some(bytes) = replacement(first)
        {
            self.pending = Some((bytes, 0));
            let _ = self.drain(cx)?;
            return Poll::Ready(Ok(total));
        }
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.drain(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_bodiless_errors_are_replaced() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Sat, 05 Dec 2026 09:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(replacement(hyper).expect("replaced")).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 431 "), "{head}");
        assert!(head.contains("content-type: application/problem+json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close") && head.contains("date: "));
        let doc: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(doc["status"], 431);
        // The API's own answers have a type and a body: left alone.
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ours).is_none());
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        assert!(replacement(ok).is_none());
        let body_follows = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n";
        assert!(replacement(body_follows).is_none());
    }
}
