//! Reading a watch stream (Server-Sent Events) from the registry.

use std::sync::Arc;

use crate::api::{CatalogEvent, ServiceEvent};
use crate::error::Error;
use crate::failover::Registries;

/// One event of a watch stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// Resume token: pass it as `last_event_id` to continue after a reconnect.
    pub id: Option<String>,
    /// The new state of one service.
    pub event: ServiceEvent,
}

/// One event of a watch stream, not yet decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEvent {
    /// Resume token.
    pub id: Option<String>,
    /// The event's JSON ([`ServiceEvent`]).
    pub data: String,
}

impl RawEvent {
    /// Decodes the event.
    pub fn decode(self) -> Result<WatchEvent, Error> {
        let event = serde_json::from_str(&self.data)
            .map_err(|e| Error::Protocol(format!("bad watch event: {e}")))?;
        Ok(WatchEvent { id: self.id, event })
    }
}

/// An open watch stream. Read it with [`WatchStream::next`].
///
/// When the stream breaks or the registry ends it, the client that opened it
/// moves on to its next registry address (when it has several), so that
/// reopening the watch with the same client goes to another node.
#[derive(Debug)]
pub struct WatchStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// Bytes at the start of `buf` already searched for a frame end.
    scanned: usize,
    last_id: Option<String>,
    /// The opening client's addresses, and the index of the one this stream is on.
    registries: Arc<Registries>,
    at: usize,
    epoch: Option<u64>,
    /// Event kinds this stream reads; others are skipped.
    kinds: &'static [&'static str],
    /// Kind of the last event returned.
    kind: Option<String>,
}

/// Response header naming the registry run (random per start and per node,
/// in hex, as in the watch stream's event ids).
pub const EPOCH_HEADER: &str = "x-roster-epoch";

impl WatchStream {
    pub(crate) fn new(
        resp: reqwest::Response,
        last_id: Option<String>,
        registries: Arc<Registries>,
        at: usize,
    ) -> Self {
        let epoch = resp
            .headers()
            .get(EPOCH_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
        WatchStream {
            epoch,
            resp,
            buf: Vec::new(),
            scanned: 0,
            last_id,
            registries,
            at,
            kinds: &["service"],
            kind: None,
        }
    }

    /// The same stream, reading events of `kinds` instead.
    pub(crate) fn with_kinds(mut self, kinds: &'static [&'static str]) -> Self {
        self.kinds = kinds;
        self
    }

    /// The base URL of the registry this stream comes from.
    pub fn registry(&self) -> &str {
        self.registries.url(self.at)
    }

    /// The registry run this stream comes from, when the registry says
    /// (`X-Roster-Epoch`); every event id starts with it too.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// The id of the last event received (or the one the stream resumed from).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Waits for the next event. `Ok(None)` when the registry closed the stream.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>, Error> {
        self.next_raw().await?.map(RawEvent::decode).transpose()
    }

    /// Waits for the next event without decoding its JSON, for callers that
    /// forward events or only look at some of them.
    pub async fn next_raw(&mut self) -> Result<Option<RawEvent>, Error> {
        loop {
            while let Some(end) = frame_end(&self.buf, self.scanned) {
                let frame: Vec<u8> = self.buf.drain(..end).collect();
                self.scanned = 0;
                if let Some(event) = self.parse(&frame)? {
                    return Ok(Some(event));
                }
            }
            // Search only the new bytes next time: a large event arriving in many
            // chunks must not be rescanned from its start on every chunk.
            self.scanned = self.buf.len();
            match self.resp.chunk().await {
                Ok(Some(bytes)) => self.buf.extend_from_slice(&bytes),
                // The registry never ends a stream while it runs: this node is
                // shutting down, or the connection broke.
                Ok(None) => {
                    self.registries.leave(self.at);
                    return Ok(None);
                }
                Err(e) => {
                    self.registries.leave(self.at);
                    return Err(Error::from_reqwest(e));
                }
            }
        }
    }

    /// Parses one frame (the text up to and including its blank line). Comments
    /// (keep-alives) and events of other kinds give `None`.
    fn parse(&mut self, frame: &[u8]) -> Result<Option<RawEvent>, Error> {
        let text = std::str::from_utf8(frame)
            .map_err(|_| Error::Protocol("watch stream is not UTF-8".into()))?;
        let (mut kind, mut data, mut id) = (None, String::new(), None);
        for line in text.lines() {
            if line.is_empty() || line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => kind = Some(value.to_owned()),
                "id" => id = Some(value.to_owned()),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
        if let Some(id) = &id {
            self.last_id = Some(id.clone());
        }
        let Some(kind) = kind.filter(|k| self.kinds.contains(&k.as_str())) else {
            return Ok(None);
        };
        if data.is_empty() {
            return Ok(None);
        }
        self.kind = Some(kind);
        Ok(Some(RawEvent { id, data }))
    }
}

/// What a [`CatalogWatchEvent`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogEventKind {
    /// Every matching service: replace everything held with it.
    Snapshot,
    /// Only what changed since the previous event: apply it.
    Delta,
}

/// One event of a catalog stream ([`CatalogStream`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CatalogWatchEvent {
    /// Resume token: pass it as `last_event_id` to continue after a reconnect.
    pub id: Option<String>,
    /// Snapshot or delta.
    pub kind: CatalogEventKind,
    /// The services in it.
    pub event: CatalogEvent,
}

/// An open catalog stream (`GET /v1/catalog/watch`): a snapshot of the
/// matching services first, then deltas. Read it with [`CatalogStream::next`].
///
/// Like [`WatchStream`], a stream that breaks moves its client to its next
/// registry address. Reopen it with [`CatalogStream::last_event_id`] to get
/// only the deltas missed (or a snapshot, when the registry no longer has them
/// or is another run).
#[derive(Debug)]
pub struct CatalogStream {
    inner: WatchStream,
}

impl CatalogStream {
    pub(crate) fn new(inner: WatchStream) -> Self {
        CatalogStream {
            inner: inner.with_kinds(&["snapshot", "delta"]),
        }
    }

    /// The base URL of the registry this stream comes from.
    pub fn registry(&self) -> &str {
        self.inner.registry()
    }

    /// The registry run this stream comes from (`X-Roster-Epoch`).
    pub fn epoch(&self) -> Option<u64> {
        self.inner.epoch()
    }

    /// The id of the last event received (or the one the stream resumed from).
    pub fn last_event_id(&self) -> Option<&str> {
        self.inner.last_event_id()
    }

    /// Waits for the next event. `Ok(None)` when the registry closed the stream.
    pub async fn next(&mut self) -> Result<Option<CatalogWatchEvent>, Error> {
        let Some((kind, raw)) = self.next_raw().await? else {
            return Ok(None);
        };
        let event = serde_json::from_str(&raw.data)
            .map_err(|e| Error::Protocol(format!("bad catalog event: {e}")))?;
        Ok(Some(CatalogWatchEvent {
            id: raw.id,
            kind,
            event,
        }))
    }

    /// Waits for the next event without decoding its JSON (to count or
    /// forward bytes).
    pub async fn next_raw(&mut self) -> Result<Option<(CatalogEventKind, RawEvent)>, Error> {
        let Some(raw) = self.inner.next_raw().await? else {
            return Ok(None);
        };
        let kind = match self.inner.kind.as_deref() {
            Some("snapshot") => CatalogEventKind::Snapshot,
            _ => CatalogEventKind::Delta,
        };
        Ok(Some((kind, raw)))
    }
}

/// End (exclusive) of the first complete frame in `buf`: a blank line (`\n\n` or
/// `\r\n\r\n`). The first `from` bytes are known to hold none.
fn frame_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from.saturating_sub(3);
    while let Some(p) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let at = i + p;
        if buf.get(at + 1) == Some(&b'\n') {
            return Some(at + 2);
        }
        if at > 0 && buf[at - 1] == b'\r' && buf.get(at + 1..at + 3) == Some(b"\r\n") {
            return Some(at + 3);
        }
        i = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::frame_end;

    #[test]
    fn frames_end_at_blank_lines() {
        assert_eq!(frame_end(b": keep-alive\n\nevent: x", 0), Some(14));
        assert_eq!(frame_end(b"data: 1\r\n\r\n", 0), Some(11));
        assert_eq!(frame_end(b"data: partial\n", 0), None);
        // A blank line split across two reads is still found.
        let buf = b"data: 1\n\nnext";
        assert_eq!(frame_end(buf, 8), Some(9));
        assert_eq!(frame_end(b"a\r\n\r\n", 4), Some(5));
    }
}
