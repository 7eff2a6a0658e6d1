//! UDP and TCP listeners on one port, feeding a [`DnsHandler`].
//!
//! These loops replace `hickory_server::Server`, which logs every request at
//! `info` level: they hand every message to [`DnsHandler::answer_bytes`] and
//! write what it answers. Undecodable messages with a readable header get
//! FORMERR; shorter ones and responses (QR=1) are dropped, like hickory does.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Mutex;
use tokio::task::JoinSet;
use tracing::debug;

use crate::{DnsHandler, Transport};

/// How many times [`DnsServer::bind`] looks for a port free for both UDP and TCP.
const BIND_ATTEMPTS: usize = 10;
/// A TCP connection idle this long is closed (RFC 7766 §6.2.3 suggests seconds).
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Largest UDP query read; longer datagrams are cut and then fail to parse.
const UDP_RECV_BUFFER: usize = 4096;
/// Most UDP receive loops on the socket.
const MAX_UDP_WORKERS: usize = 8;

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
    /// (a few times) on another port.
    pub async fn bind(addr: SocketAddr, handler: DnsHandler) -> io::Result<DnsServer> {
        let attempts = if addr.port() == 0 { BIND_ATTEMPTS } else { 1 };
        let mut last_error = None;
        for _ in 0..attempts {
            let udp = UdpSocket::bind(addr).await?;
            let local_addr = udp.local_addr()?;
            match TcpListener::bind(local_addr).await {
                Ok(tcp) => {
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

async fn udp_loop(socket: Arc<UdpSocket>, handler: DnsHandler) -> io::Result<()> {
    let mut buf = vec![0; UDP_RECV_BUFFER];
    loop {
        let (len, src) = match socket.recv_from(&mut buf).await {
            Ok(received) => received,
            Err(error) => {
                debug!(%error, "udp receive failed");
                continue;
            }
        };
        let sink = Sink::Udp(socket.clone(), src);
        handle(&handler, &buf[..len], src, Transport::Udp, &sink).await;
    }
}

async fn tcp_loop(listener: TcpListener, handler: DnsHandler) -> io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, src)) => {
                connections.spawn(tcp_connection(stream, src, handler.clone()));
            }
            Err(error) => {
                // Out of file descriptors and the like: back off instead of spinning.
                debug!(%error, "tcp accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

async fn tcp_connection(stream: TcpStream, src: SocketAddr, handler: DnsHandler) {
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let sink = Sink::Tcp(Arc::new(Mutex::new(writer)));
    loop {
        let len = match tokio::time::timeout(TCP_IDLE, reader.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            _ => return,
        };
        let mut buf = vec![0; len];
        if !matches!(
            tokio::time::timeout(TCP_IDLE, reader.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        handle(&handler, &buf, src, Transport::Tcp, &sink).await;
    }
}

/// Answers one message, if it gets an answer.
async fn handle(
    handler: &DnsHandler,
    bytes: &[u8],
    src: SocketAddr,
    transport: Transport,
    sink: &Sink,
) {
    if let Some(answer) = handler.answer_bytes(bytes, src, transport)
        && let Err(error) = sink.send(&answer).await
    {
        debug!(%error, "dns response not sent");
    }
}

/// Where a response goes.
#[derive(Clone, Debug)]
enum Sink {
    Udp(Arc<UdpSocket>, SocketAddr),
    Tcp(Arc<Mutex<OwnedWriteHalf>>),
}

impl Sink {
    async fn send(&self, message: &[u8]) -> io::Result<()> {
        match self {
            Sink::Udp(socket, dst) => socket.send_to(message, dst).await.map(drop),
            Sink::Tcp(writer) => {
                let len = u16::try_from(message.len()).map_err(io::Error::other)?;
                let mut framed = Vec::with_capacity(message.len() + 2);
                framed.extend_from_slice(&len.to_be_bytes());
                framed.extend_from_slice(message);
                writer.lock().await.write_all(&framed).await
            }
        }
    }
}
