//! Just enough HTTP/2 (RFC 9113) for a load generator that reads many streams
//! over one connection in one task: frames are cut and written by hand, the
//! request headers are HPACK literals that keep no state, and response headers
//! are not decoded beyond their first byte. Through the `h2` crate the
//! generators spent more CPU per event than the server they measured (a task
//! and a waker per stream, a lock per frame); this keeps their share small.

use bytes::{Buf as _, BufMut as _, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The stream and connection window a generator opens: large enough that the
/// server never waits for a window update in a run.
pub const WINDOW: u32 = 1 << 30;
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;

/// HPACK's whole-entry encoding of `:status: 200` (static table entry 8),
/// which is how servers, hyper's included, start a 200 response's headers.
pub const STATUS_200: u8 = 0x88;

/// Writes a frame header: payload length, type, flags, stream id.
pub fn frame_header(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    let len = u32::try_from(len).expect("small frame");
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// Appends an HPACK string literal, not Huffman-coded (all ours are short).
pub fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    out.push(u8::try_from(s.len()).expect("short header"));
    out.extend_from_slice(s);
}

/// The client's connection preface: the magic, SETTINGS (no push, stream
/// window [`WINDOW`]) and a connection window update to [`WINDOW`].
pub fn preface(out: &mut BytesMut) {
    out.put_slice(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    frame_header(out, 12, SETTINGS, 0, 0);
    out.put_u16(0x2); // SETTINGS_ENABLE_PUSH
    out.put_u32(0);
    out.put_u16(0x4); // SETTINGS_INITIAL_WINDOW_SIZE
    out.put_u32(WINDOW);
    frame_header(out, 4, WINDOW_UPDATE, 0, 0);
    out.put_u32(WINDOW - 65_535);
}

/// A client connection read and written by hand: what comes in is cut into
/// frames, what goes out is gathered in `out` and written by [`Conn::flush`],
/// with a window update once enough data came in.
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    buf: BytesMut,
    /// What to send on the next flush.
    pub out: BytesMut,
    /// DATA bytes received since the last window update.
    unacknowledged: usize,
}

impl Conn {
    /// Connects to `addr` with the [`preface`] queued in `out`.
    pub async fn connect(addr: &str) -> Result<Conn, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut out = BytesMut::with_capacity(1 << 16);
        preface(&mut out);
        Ok(Conn {
            tcp,
            buf: BytesMut::with_capacity(1 << 18),
            out,
            unacknowledged: 0,
        })
    }

    /// Reads what the server sent since; an error once it closed.
    pub async fn read(&mut self) -> Result<(), String> {
        self.buf.reserve(1 << 16);
        match self.tcp.read_buf(&mut self.buf).await {
            Ok(0) => Err("the server closed the connection".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// The next whole frame read, counted against the window.
    pub fn next_frame(&mut self) -> Option<Frame> {
        let frame = next_frame(&mut self.buf)?;
        if frame.kind == DATA {
            self.unacknowledged += frame.payload.len();
        }
        Some(frame)
    }

    /// Writes what is queued, with a connection window update once 16 MiB
    /// (a 64th of [`WINDOW`]) came in since the last.
    pub async fn flush(&mut self) -> Result<(), String> {
        if self.unacknowledged > (WINDOW / 64) as usize {
            frame_header(&mut self.out, 4, WINDOW_UPDATE, 0, 0);
            self.out
                .put_u32(u32::try_from(self.unacknowledged).expect("under the window"));
            self.unacknowledged = 0;
        }
        if !self.out.is_empty() {
            self.tcp
                .write_all(&self.out)
                .await
                .map_err(|e| e.to_string())?;
            self.out.clear();
        }
        Ok(())
    }
}

/// One received frame.
#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: BytesMut,
}

/// Takes the first whole frame off `buf`, if one is there.
pub fn next_frame(buf: &mut BytesMut) -> Option<Frame> {
    if buf.len() < 9 {
        return None;
    }
    let len = usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
    if buf.len() < 9 + len {
        return None;
    }
    let (kind, flags) = (buf[3], buf[4]);
    let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
    buf.advance(9);
    Some(Frame {
        kind,
        flags,
        stream,
        payload: buf.split_to(len),
    })
}

impl Frame {
    /// A DATA frame's data, without its padding.
    pub fn data(&self) -> Result<&[u8], String> {
        let data: &[u8] = &self.payload;
        if self.flags & PADDED == 0 {
            return Ok(data);
        }
        let pad = usize::from(*data.first().ok_or("bad padding")?);
        data.get(1..data.len().saturating_sub(pad))
            .ok_or_else(|| "bad padding".into())
    }

    /// The answer this frame asks of a client, if any (SETTINGS and PING
    /// acknowledgements), written to `out`.
    pub fn answer(&self, out: &mut BytesMut) {
        match self.kind {
            SETTINGS if self.flags & ACK == 0 => frame_header(out, 0, SETTINGS, ACK, 0),
            PING if self.flags & ACK == 0 => {
                frame_header(out, 8, PING, ACK, 0);
                out.put_slice(&self.payload);
            }
            _ => {}
        }
    }
}

/// The stream index (0, 1, 2, …) of a client stream id (1, 3, 5, …).
pub fn stream_index(id: u32) -> Option<usize> {
    (id % 2 == 1)
        .then(|| usize::try_from(id / 2).ok())
        .flatten()
}

/// The client stream id of the `n`-th stream.
pub fn stream_id(n: usize) -> u32 {
    u32::try_from(2 * n + 1).expect("few streams")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_cut_whole() {
        let mut out = BytesMut::new();
        frame_header(&mut out, 3, DATA, PADDED, 5);
        out.put_slice(&[1, b'x', 0]);
        frame_header(&mut out, 8, PING, 0, 0);
        out.put_slice(&[7; 8]);
        let mut half = out.split_to(10);
        assert!(next_frame(&mut half).is_none(), "a cut frame waits");
        half.unsplit(out);
        let data = next_frame(&mut half).expect("whole");
        assert_eq!((data.kind, data.stream), (DATA, 5));
        assert_eq!(data.data().unwrap(), b"x");
        let ping = next_frame(&mut half).expect("whole");
        let mut answer = BytesMut::new();
        ping.answer(&mut answer);
        assert_eq!(&answer[3..5], &[PING, ACK]);
        assert_eq!(&answer[9..], &[7; 8]);
        assert!(half.is_empty());
        assert_eq!(stream_index(stream_id(41)), Some(41));
        assert_eq!(stream_index(2), None);
    }
}
