//! Batched UDP on Linux: up to [`BATCH`] datagrams read with one `recvmmsg`
//! and the answers written with one `sendmmsg`. Under load most of a DNS
//! server's time is spent in the kernel, a large part of it entering and
//! leaving it once per datagram each way; batching pays that once per batch
//! (Knot and unbound do the same).
//!
//! Both calls are non-blocking: readiness comes from tokio
//! ([`tokio::net::UdpSocket::try_io`]).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};

/// Most datagrams read or written per system call.
pub(crate) const BATCH: usize = 32;

/// One datagram read: its length in its buffer, and its sender.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    pub(crate) len: usize,
    pub(crate) src: SocketAddr,
}

/// Reads the datagrams waiting on `fd`, at most one per buffer of `bufs`,
/// into `out` (cleared first). `WouldBlock` when there are none.
pub(crate) fn recv(fd: RawFd, bufs: &mut [Vec<u8>], out: &mut Vec<Received>) -> io::Result<()> {
    out.clear();
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
        bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(iovs.len(), None);
    let msgs = recvmmsg(
        fd,
        &mut headers,
        iovs.iter_mut(),
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    for msg in msgs {
        // A datagram without a usable sender (not IP) cannot be answered.
        if let Some(src) = msg.address.as_ref().and_then(to_std) {
            out.push(Received {
                len: msg.bytes,
                src,
            });
        }
    }
    Ok(())
}

/// Writes as many of `answers` as the socket takes now, in order; how many.
/// An error means the first one was not sent (`WouldBlock`: try again when
/// writable; anything else: that datagram cannot be sent).
pub(crate) fn send(fd: RawFd, answers: &[(Vec<u8>, SocketAddr)]) -> io::Result<usize> {
    let answers = &answers[..answers.len().min(BATCH)];
    let iovs: Vec<[IoSlice<'_>; 1]> = answers.iter().map(|(a, _)| [IoSlice::new(a)]).collect();
    let addrs: Vec<Option<SockaddrStorage>> = answers
        .iter()
        .map(|(_, to)| Some(SockaddrStorage::from(*to)))
        .collect();
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(answers.len(), None);
    let no_cmsgs: [ControlMessage<'_>; 0] = [];
    let sent = sendmmsg(
        fd,
        &mut headers,
        &iovs,
        &addrs,
        no_cmsgs,
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    Ok(sent.count())
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = addr.as_sockaddr_in6() {
        return Some(SocketAddr::V6(SocketAddrV6::from(*v6)));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_batch_is_read_and_written_with_every_sender_kept() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let clients: Vec<std::net::UdpSocket> = (0..5)
            .map(|_| {
                let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                // A lost answer fails the test rather than hanging it.
                c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                    .unwrap();
                c
            })
            .collect();
        for (n, c) in clients.iter().enumerate() {
            c.send_to(&[n as u8; 3], server.local_addr().unwrap())
                .unwrap();
        }
        let mut bufs = vec![vec![0u8; 64]; BATCH];
        let mut got = Vec::new();
        // Loopback delivers at send time: all five wait in the queue, and
        // one call reads them all.
        recv(server.as_raw_fd(), &mut bufs, &mut got).unwrap();
        assert_eq!(got.len(), 5);
        let senders: Vec<SocketAddr> = got.iter().map(|r| r.src).collect();
        for (i, r) in got.iter().enumerate() {
            assert_eq!(r.len, 3);
            let which = clients
                .iter()
                .position(|c| c.local_addr().unwrap() == r.src)
                .expect("a sender");
            assert_eq!(bufs[i][..3], [which as u8; 3], "buffer i holds datagram i");
        }
        let none = recv(server.as_raw_fd(), &mut [vec![0u8; 64]], &mut Vec::new()).unwrap_err();
        assert_eq!(none.kind(), io::ErrorKind::WouldBlock);

        // Answer each sender with its own bytes doubled.
        let answers: Vec<(Vec<u8>, SocketAddr)> = got
            .iter()
            .enumerate()
            .map(|(i, r)| (bufs[i][..r.len].repeat(2), r.src))
            .collect();
        assert_eq!(send(server.as_raw_fd(), &answers).unwrap(), answers.len());
        for c in &clients {
            let me = c.local_addr().unwrap();
            assert!(senders.contains(&me));
            let mut buf = [0u8; 16];
            let (n, from) = c.recv_from(&mut buf).unwrap();
            assert_eq!(from, server.local_addr().unwrap());
            assert_eq!(n, 6);
            let which = clients
                .iter()
                .position(|x| x.local_addr().unwrap() == me)
                .unwrap();
            assert_eq!(buf[..n], [which as u8; 6]);
        }
    }
}
