//! UDP and TCP listeners on one port, feeding a [`DnsHandler`].
//!
//! These loops replace `hickory_server::Server`, which logs every request at
//! `info` level: they hand every message to [`DnsHandler::answer_bytes`] and
//! write what it answers. Undecodable messages with a readable header get
//! FORMERR; shorter ones and responses (QR=1) are dropped, like hickory does.
//!
//! TCP is bounded so it cannot starve the process of descriptors or memory
//! (the HTTP API shares both): at most [`DnsConfig::max_tcp_connections`]
//! connections, more are reset at once; an idle timeout and a write timeout;
//! small socket buffers, and one query read and one answer written at a time
//! per connection, so a client that never reads pins little.
//!
//! [`DnsConfig::max_tcp_connections`]: crate::DnsConfig::max_tcp_connections

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::debug;

use crate::{DnsHandler, Transport};

/// How many times [`DnsServer::bind`] looks for a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 10;
/// Largest UDP query read; longer datagrams are cut and then fail to parse.
const UDP_RECV_BUFFER: usize = 4096;
/// Most UDP receive loops on the socket.
const MAX_UDP_WORKERS: usize = 8;
/// Kernel send buffer of each TCP connection (Linux doubles it): room for the
/// largest answer, and with the write timeout a bound on what a client that
/// does not read can pin (the default autotuning grows to megabytes).
const TCP_SEND_BUFFER: u32 = 64 * 1024;
/// Kernel receive buffer of each TCP connection: queries are small, and a
/// client pipelining more than this waits for us to read them.
const TCP_RECV_BUFFER: u32 = 16 * 1024;
/// Listen backlog of the TCP socket.
const TCP_BACKLOG: u32 = 1024;
/// First and longest pause of a UDP loop after a receive error.
const UDP_BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_millis(100));

/// A DNS server: one UDP socket and one TCP listener on the same address.
///
/// ```no_run
/// # async fn example(handler: roster_dns::DnsHandler) -> std::io::Result<()> {
/// let server = roster_dns::DnsServer::bind("127.0.0.1:0".parse().unwrap(), handler).await?;
/// println!("DNS on {}", server.local_addr());
/// server.run(tokio::signal::ctrl_c()).await
/// # }
/// ```
#[derive(Debug)]
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    handler: DnsHandler,
    local_addr: SocketAddr,
}

impl DnsServer {
    /// Binds UDP and TCP on `addr`. With port 0, UDP gets a free port first and
    /// TCP takes the same one; when TCP finds it taken, both are tried again
    /// (a few times) on another port. `ns.DOMAIN` resolves to the bound
    /// address from then on (see [`DnsConfig::advertise_addr`](crate::DnsConfig::advertise_addr)).
    pub async fn bind(addr: SocketAddr, handler: DnsHandler) -> io::Result<DnsServer> {
        let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
        let mut last_error = None;
        for _ in 0..attempts {
            let udp = UdpSocket::bind(addr).await?;
            let local_addr = udp.local_addr()?;
            match tcp_listener(local_addr) {
                Ok(tcp) => {
                    handler.set_server_ip(local_addr.ip());
                    return Ok(DnsServer {
                        udp: Arc::new(udp),
                        tcp,
                        handler,
                        local_addr,
                    });
                }
                Err(error) if error.kind() == io::ErrorKind::AddrInUse => last_error = Some(error),
                Err(error) => return Err(error),
            }
        }
        Err(last_error.unwrap_or_else(|| io::Error::other("no port free for both UDP and TCP")))
    }

    /// The bound address, the same for UDP and TCP.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` completes, then stops every listener and
    /// connection. Returns an error only when a listener fails for good.
    pub async fn run<F: Future>(self, shutdown: F) -> io::Result<()> {
        let workers = std::thread::available_parallelism()
            .map_or(1, NonZeroUsize::get)
            .min(MAX_UDP_WORKERS);
        let mut tasks = JoinSet::new();
        for _ in 0..workers {
            tasks.spawn(udp_loop(self.udp.clone(), self.handler.clone()));
        }
        tasks.spawn(tcp_loop(self.tcp, self.handler.clone()));
        let result = tokio::select! {
            _ = shutdown => Ok(()),
            Some(ended) = tasks.join_next() => match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(io::Error::other(error)),
            },
        };
        tasks.shutdown().await;
        result
    }
}

/// Binds `addr` ([`DnsServer::bind`]) and serves until `shutdown` completes.
/// Use [`DnsServer`] directly to learn the port chosen for port 0.
pub async fn serve<F: Future>(
    addr: SocketAddr,
    handler: DnsHandler,
    shutdown: F,
) -> io::Result<()> {
    DnsServer::bind(addr, handler).await?.run(shutdown).await
}

/// A TCP listener on `addr` whose accepted connections inherit small buffers.
fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.set_send_buffer_size(TCP_SEND_BUFFER)?;
    socket.set_recv_buffer_size(TCP_RECV_BUFFER)?;
    socket.bind(addr)?;
    socket.listen(TCP_BACKLOG)
}

/// Counters of the TCP side, shared by every clone of a [`DnsHandler`].
#[derive(Debug, Default)]
pub(crate) struct TcpCounters {
    open: AtomicUsize,
    refused: AtomicU64,
    idle_closed: AtomicU64,
    write_timeouts: AtomicU64,
}

/// What the TCP side of [`DnsServer`] is doing, from [`DnsHandler::tcp_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TcpStats {
    /// Connections open now.
    pub open: usize,
    /// Connections closed at once because [`DnsConfig::max_tcp_connections`](crate::DnsConfig::max_tcp_connections) were open.
    pub refused: u64,
    /// Connections closed after [`DnsConfig::tcp_idle_timeout`](crate::DnsConfig::tcp_idle_timeout) without a query.
    pub idle_closed: u64,
    /// Connections closed because the client did not read an answer within
    /// [`DnsConfig::tcp_write_timeout`](crate::DnsConfig::tcp_write_timeout).
    pub write_timeouts: u64,
}

impl TcpCounters {
    pub(crate) fn stats(&self) -> TcpStats {
        TcpStats {
            open: self.open.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            idle_closed: self.idle_closed.load(Ordering::Relaxed),
            write_timeouts: self.write_timeouts.load(Ordering::Relaxed),
        }
    }
}

/// Exponential pause after consecutive errors, back to the shortest after a success.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: UDP_BACKOFF.0,
        }
    }

    /// The pause before the next attempt.
    fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(UDP_BACKOFF.1);
        pause
    }

    fn reset(&mut self) {
        self.next = UDP_BACKOFF.0;
    }
}

/// Reads queries a batch at a time and writes the batch's answers together
/// (see [`crate::batch`]).
#[cfg(target_os = "linux")]
async fn udp_loop(socket: Arc<UdpSocket>, handler: DnsHandler) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use tokio::io::Interest;

    use crate::batch::{self, BATCH};

    let fd = socket.as_raw_fd();
    let mut bufs = vec![vec![0u8; UDP_RECV_BUFFER]; BATCH];
    let mut received = Vec::with_capacity(BATCH);
    let mut answers: Vec<(Vec<u8>, SocketAddr)> = Vec::with_capacity(BATCH);
    let mut backoff = Backoff::new();
    loop {
        socket.readable().await?;
        match socket.try_io(Interest::READABLE, || {
            batch::recv(fd, &mut bufs, &mut received)
        }) {
            Ok(()) => backoff.reset(),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => {
                // Errors that repeat (out of memory, a socket gone bad) must
                // not spin a core.
                let pause = backoff.pause();
                debug!(%error, ?pause, "udp receive failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        }
        answers.clear();
        for (r, buf) in received.iter().zip(&bufs) {
            if let Some(answer) = handler.answer_bytes(&buf[..r.len], r.src, Transport::Udp) {
                answers.push((answer, r.src));
            }
        }
        let mut sent = 0;
        while sent < answers.len() {
            socket.writable().await?;
            match socket.try_io(Interest::WRITABLE, || batch::send(fd, &answers[sent..])) {
                // The kernel took none (it never should without an error):
                // drop one rather than spin.
                Ok(0) => sent += 1,
                Ok(n) => sent += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => {
                    // This datagram cannot go (an unreachable or refused
                    // address); the rest of the batch still can.
                    debug!(%error, to = %answers[sent].1, "dns response not sent");
                    sent += 1;
                }
            }
        }
    }
}

/// One query read and answered at a time (systems without `recvmmsg`).
#[cfg(not(target_os = "linux"))]
async fn udp_loop(socket: Arc<UdpSocket>, handler: DnsHandler) -> io::Result<()> {
    let mut buf = vec![0; UDP_RECV_BUFFER];
    let mut backoff = Backoff::new();
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(received) => {
                backoff.reset();
                received
            }
            Err(error) => {
                let pause = backoff.pause();
                debug!(%error, ?pause, "udp receive failed");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if let Some(answer) = handler.answer_bytes(&buf[..len], src, Transport::Udp)
            && let Err(error) = socket.send_to(&answer, src).await
        {
            debug!(%error, "dns response not sent");
        }
    }
}

/// A connection's hold on one of the [`DnsConfig::max_tcp_connections`](crate::DnsConfig::max_tcp_connections) slots.
struct Slot {
    _permit: OwnedSemaphorePermit,
    handler: DnsHandler,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handler
            .tcp_counters()
            .open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn tcp_loop(listener: TcpListener, handler: DnsHandler) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(handler.config().max_tcp_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, src)) => match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    handler.tcp_counters().open.fetch_add(1, Ordering::Relaxed);
                    let slot = Slot {
                        _permit: permit,
                        handler: handler.clone(),
                    };
                    connections.spawn(tcp_connection(stream, src, handler.clone(), slot));
                }
                Err(_) => {
                    handler
                        .tcp_counters()
                        .refused
                        .fetch_add(1, Ordering::Relaxed);
                    debug!(%src, "too many dns tcp connections: closed");
                    // A reset frees the socket at once: no TIME_WAIT for a
                    // flood of refused connections, and the client knows.
                    reset(&stream);
                }
            },
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!(%error, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

/// Makes the close of `stream` a reset, dropping unsent data.
fn reset(stream: &TcpStream) {
    // A zero linger never blocks on close (a positive one would).
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
}

/// Serves one connection: one query read and answered at a time (pipelined
/// queries wait in the socket), until the client closes, stays idle too long
/// or does not read an answer in time.
async fn tcp_connection(mut stream: TcpStream, src: SocketAddr, handler: DnsHandler, _slot: Slot) {
    let config = handler.config();
    let (idle, write_timeout) = (config.tcp_idle_timeout, config.tcp_write_timeout);
    let counters = handler.tcp_counters();
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let len = match tokio::time::timeout(idle, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(_)) => return,
            Err(_) => {
                counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        buf.resize(len, 0);
        match tokio::time::timeout(idle, stream.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let Some(answer) = handler.answer_bytes(&buf, src, Transport::Tcp) else {
            continue;
        };
        let Ok(len) = u16::try_from(answer.len()) else {
            debug!(len = answer.len(), "dns answer longer than a tcp message");
            return;
        };
        let mut framed = Vec::with_capacity(answer.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(&answer);
        match tokio::time::timeout(write_timeout, stream.write_all(&framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                debug!(%error, "dns response not sent");
                return;
            }
            Err(_) => {
                counters.write_timeouts.fetch_add(1, Ordering::Relaxed);
                debug!(%src, "dns tcp client does not read: closed");
                reset(&stream);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_errors_back_off_exponentially_and_recover() {
        let mut backoff = Backoff::new();
        let pauses: Vec<u64> = (0..10)
            .map(|_| backoff.pause().as_millis() as u64)
            .collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 64, 100, 100, 100]);
        backoff.reset();
        assert_eq!(backoff.pause(), Duration::from_millis(1));
    }
}
