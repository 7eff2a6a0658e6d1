//! Response rate limiting: the limiter driven with chosen times and
//! addresses, and the real server over UDP and TCP on 127.0.0.1.

use crate::common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use roster_dns::{
    ConfigError, DnsConfig, DnsHandler, DnsServer, RateLimiter, RrlConfig, RrlStats, Verdict,
};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::time::Instant;

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn limiter(rate: u32, burst: u32, slip: u32) -> RateLimiter {
    RateLimiter::new(&RrlConfig {
        responses_per_second: rate,
        burst,
        slip,
        ..RrlConfig::default()
    })
    .unwrap()
}

fn verdicts(limiter: &RateLimiter, source: &str, at: Instant, n: usize) -> Vec<Verdict> {
    (0..n).map(|_| limiter.check(ip(source), at)).collect()
}

use Verdict::{Answer, Drop, Slip};

#[test]
fn the_bucket_holds_a_burst_and_refills_at_the_rate() {
    let limiter = limiter(10, 5, 2);
    let t0 = Instant::now();
    let source = "192.0.2.1";
    assert_eq!(
        verdicts(&limiter, source, t0, 9),
        [
            Answer, Answer, Answer, Answer, Answer, Drop, Slip, Drop, Slip
        ]
    );
    // 10 per second: one answer every 100 ms, not one more.
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(verdicts(&limiter, source, t1, 2), [Answer, Drop]);
    let t2 = t1 + Duration::from_millis(99);
    assert_eq!(verdicts(&limiter, source, t2, 1), [Slip]);
    let t3 = t1 + Duration::from_millis(300);
    assert_eq!(
        verdicts(&limiter, source, t3, 4),
        [Answer, Answer, Answer, Drop]
    );
    // A long quiet spell refills the bucket to the burst, never beyond.
    let t4 = t3 + Duration::from_secs(3600);
    assert_eq!(
        verdicts(&limiter, source, t4, 6),
        [Answer, Answer, Answer, Answer, Answer, Slip]
    );
    assert_eq!(
        limiter.stats(),
        RrlStats {
            dropped: 4,
            slipped: 4
        }
    );
    assert_eq!(limiter.stats().limited(), 8);
}

#[test]
fn slip_zero_drops_everything_and_slip_one_truncates_everything() {
    let t0 = Instant::now();
    let never = limiter(1, 1, 0);
    assert_eq!(
        verdicts(&never, "192.0.2.1", t0, 4),
        [Answer, Drop, Drop, Drop]
    );
    let always = limiter(1, 1, 1);
    assert_eq!(
        verdicts(&always, "192.0.2.1", t0, 4),
        [Answer, Slip, Slip, Slip]
    );
    let third = limiter(1, 1, 3);
    assert_eq!(
        verdicts(&third, "192.0.2.1", t0, 7),
        [Answer, Drop, Drop, Slip, Drop, Drop, Slip]
    );
}

#[test]
fn sources_share_a_bucket_by_prefix() {
    let t0 = Instant::now();
    let limiter = limiter(1, 2, 0);
    assert_eq!(
        verdicts(&limiter, "192.0.2.1", t0, 3),
        [Answer, Answer, Drop]
    );
    // Same /24, and the same address seen through a dual-stack socket.
    assert_eq!(verdicts(&limiter, "192.0.2.254", t0, 1), [Drop]);
    assert_eq!(verdicts(&limiter, "::ffff:192.0.2.9", t0, 1), [Drop]);
    // The next /24 has its own bucket.
    assert_eq!(verdicts(&limiter, "192.0.3.1", t0, 2), [Answer, Answer]);
    // IPv6 /56: 2001:db8:0:XX00::/56.
    assert_eq!(
        verdicts(&limiter, "2001:db8:0:1::1", t0, 3),
        [Answer, Answer, Drop]
    );
    assert_eq!(verdicts(&limiter, "2001:db8:0:ff:1:2:3:4", t0, 1), [Drop]);
    assert_eq!(verdicts(&limiter, "2001:db8:0:100::1", t0, 1), [Answer]);
    // An IPv4 prefix never shares with an IPv6 one, whatever the bits.
    assert_eq!(verdicts(&limiter, "::", t0, 1), [Answer]);
    assert_eq!(verdicts(&limiter, "0.0.0.1", t0, 1), [Answer]);
}

#[test]
fn prefix_lengths_are_configurable() {
    let t0 = Instant::now();
    let per_address = RateLimiter::new(&RrlConfig {
        responses_per_second: 1,
        burst: 1,
        slip: 0,
        ipv4_prefix: 32,
        ipv6_prefix: 128,
        ..RrlConfig::default()
    })
    .unwrap();
    for source in ["192.0.2.1", "192.0.2.2", "2001:db8::1", "2001:db8::2"] {
        assert_eq!(
            verdicts(&per_address, source, t0, 2),
            [Answer, Drop],
            "{source}"
        );
    }
    let wide = RateLimiter::new(&RrlConfig {
        responses_per_second: 1,
        burst: 1,
        slip: 0,
        ipv4_prefix: 8,
        ipv6_prefix: 0,
        ..RrlConfig::default()
    })
    .unwrap();
    assert_eq!(verdicts(&wide, "10.1.2.3", t0, 1), [Answer]);
    assert_eq!(verdicts(&wide, "10.200.0.1", t0, 1), [Drop]);
    assert_eq!(verdicts(&wide, "11.0.0.1", t0, 1), [Answer]);
    assert_eq!(verdicts(&wide, "2001:db8::1", t0, 1), [Answer]);
    assert_eq!(verdicts(&wide, "fe80::1", t0, 1), [Drop]);
}

#[test]
fn the_table_is_bounded_and_keeps_limited_prefixes_through_a_flood() {
    let t0 = Instant::now();
    let limiter = RateLimiter::new(&RrlConfig {
        responses_per_second: 1,
        burst: 3,
        slip: 0,
        max_tracked: 64,
        ..RrlConfig::default()
    })
    .unwrap();
    assert_eq!(limiter.capacity(), 64);
    assert_eq!(
        verdicts(&limiter, "198.51.100.1", t0, 4),
        [Answer, Answer, Answer, Drop]
    );
    // A forger cycling through 10,000 prefixes, one answer each: every one is
    // answered (each bucket is new), the table does not grow, and the prefix
    // over its rate is not evicted, since its bucket is the emptiest of its set.
    for i in 0..10_000u32 {
        let source = IpAddr::from((0x0a00_0000 + (i << 8)).to_be_bytes());
        assert_eq!(limiter.check(source, t0), Answer, "{source}");
    }
    assert_eq!(limiter.tracked(), 64);
    assert_eq!(verdicts(&limiter, "198.51.100.1", t0, 1), [Drop]);
}

#[test]
fn impossible_settings_are_refused() {
    for rrl in [
        RrlConfig {
            responses_per_second: 0,
            ..RrlConfig::default()
        },
        RrlConfig {
            burst: 0,
            ..RrlConfig::default()
        },
        RrlConfig {
            ipv4_prefix: 33,
            ..RrlConfig::default()
        },
        RrlConfig {
            ipv6_prefix: 129,
            ..RrlConfig::default()
        },
        RrlConfig {
            max_tracked: 0,
            ..RrlConfig::default()
        },
    ] {
        let config = DnsConfig {
            rrl: Some(rrl.clone()),
            ..DnsConfig::default()
        };
        let error = DnsHandler::new(sample_view(), config).unwrap_err();
        assert!(
            matches!(error, ConfigError::InvalidRateLimit { .. }),
            "{rrl:?}: {error}"
        );
    }
    assert_eq!(DnsConfig::default().rrl, None, "off by default");
}

// ---------------------------------------------------------------------------
// The real server
// ---------------------------------------------------------------------------

/// How long a dropped answer is waited for: long enough that a loaded machine
/// still delivers a real answer within it.
const DROP_WAIT: Duration = Duration::from_millis(700);
const REPLY_WAIT: Duration = Duration::from_secs(5);

struct Limited {
    addr: SocketAddr,
    handler: DnsHandler,
    _stop: oneshot::Sender<()>,
}

async fn start_limited(rrl: Option<RrlConfig>) -> Limited {
    let config = DnsConfig {
        rrl,
        ..DnsConfig::default()
    };
    let handler = DnsHandler::new(sample_view(), config).unwrap();
    let server = DnsServer::bind("127.0.0.1:0".parse().unwrap(), handler.clone())
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(stopped));
    Limited {
        addr,
        handler,
        _stop: stop,
    }
}

/// Sends `message` from a new socket bound to `from`: the reply, or `None`
/// when none comes within `wait`.
async fn udp_from(
    from: IpAddr,
    to: SocketAddr,
    message: &Message,
    wait: Duration,
) -> Option<Message> {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).await.unwrap();
    socket
        .send_to(&message.to_vec().unwrap(), to)
        .await
        .unwrap();
    let mut buf = vec![0; 65_535];
    let (len, _) = tokio::time::timeout(wait, socket.recv_from(&mut buf))
        .await
        .ok()?
        .unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    assert_eq!(reply.metadata.id, message.metadata.id);
    Some(reply)
}

/// A full answer to `web.service.roster. A`: its two healthy IPv4 endpoints.
fn assert_full(reply: &Message) {
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(!reply.metadata.truncation, "{reply:?}");
    assert_eq!(answer_data(reply), ["10.0.0.1", "10.0.0.2"]);
}

/// A slipped answer: TC=1, the question echoed, not a single record.
fn is_slip(reply: &Message, query: &Message) -> bool {
    reply.metadata.truncation
        && reply.metadata.response_code == ResponseCode::NoError
        && reply.queries == query.queries
        && reply.answers.is_empty()
        && reply.authorities.is_empty()
        && reply.additionals.is_empty()
}

#[tokio::test]
async fn over_the_rate_udp_slips_or_drops_but_tcp_and_other_prefixes_are_answered() {
    let server = start_limited(Some(RrlConfig {
        responses_per_second: 1,
        burst: 3,
        slip: 2,
        ..RrlConfig::default()
    }))
    .await;
    let local = ip("127.0.0.1");
    let query = query("web.service.roster.", RecordType::A);

    // The burst: answered in full.
    for _ in 0..3 {
        let reply = udp_from(local, server.addr, &query, REPLY_WAIT).await;
        assert_full(&reply.expect("no answer within the burst"));
    }
    assert_eq!(server.handler.rrl_stats(), RrlStats::default());

    // Over the rate. One answer a second comes back in full as the bucket
    // refills; the others alternate between dropped and slipped.
    let (mut slipped, mut dropped, mut full) = (0, 0, 0);
    for _ in 0..20 {
        match udp_from(local, server.addr, &query, DROP_WAIT).await {
            None => dropped += 1,
            Some(reply) if is_slip(&reply, &query) => slipped += 1,
            Some(reply) => {
                assert_full(&reply);
                full += 1;
            }
        }
        if slipped >= 2 && dropped >= 2 {
            break;
        }
    }
    assert!(
        slipped >= 2 && dropped >= 2,
        "{slipped} slipped, {dropped} dropped, {full} full"
    );
    let stats = server.handler.rrl_stats();
    assert!(stats.slipped >= slipped && stats.dropped >= 1, "{stats:?}");

    // The limited source still gets everything over TCP.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..10 {
        let raw = tcp_raw(&mut stream, &query.to_vec().unwrap()).await;
        assert_full(&Message::from_vec(&raw).unwrap());
    }
    let big = tcp(
        server.addr,
        &query_edns("big.service.roster.", RecordType::A, 1232),
    )
    .await;
    assert_eq!(big.0.answers.len(), 200);

    // Another /24 of the loopback network has a bucket of its own.
    let other = ip("127.0.1.1");
    if UdpSocket::bind(SocketAddr::new(other, 0)).await.is_ok() {
        for _ in 0..3 {
            let reply = udp_from(other, server.addr, &query, REPLY_WAIT).await;
            assert_full(&reply.expect("another prefix is limited"));
        }
    } else {
        eprintln!("127.0.1.1 cannot be bound here; prefixes are covered by the limiter tests");
    }
}

#[tokio::test]
async fn slipped_answers_to_edns_queries_keep_the_opt_record_and_stay_small() {
    let server = start_limited(Some(RrlConfig {
        responses_per_second: 1,
        burst: 1,
        slip: 1,
        ..RrlConfig::default()
    }))
    .await;
    let query = query_edns("big.service.roster.", RecordType::A, 4096);
    let request_len = query.to_vec().unwrap().len();
    let first = udp(server.addr, &query).await;
    assert!(first.1 > 1000, "the burst gets the big answer: {}", first.1);
    // Slip 1 answers every time; a full answer only when a second passed and
    // the bucket refilled, so a few tries find a slipped one.
    let mut slipped = None;
    for _ in 0..5 {
        let raw = udp_raw(server.addr, &query.to_vec().unwrap(), REPLY_WAIT)
            .await
            .expect("slip 1 answers every time");
        let reply = Message::from_vec(&raw).unwrap();
        if reply.answers.is_empty() {
            slipped = Some((reply, raw.len()));
            break;
        }
    }
    let (reply, len) = slipped.expect("no slipped answer");
    assert!(is_slip(&reply, &query), "{reply:?}");
    assert!(reply.edns.is_some());
    assert!(len <= request_len, "{len} > {request_len}");
}

#[tokio::test]
async fn rate_limiting_is_off_by_default() {
    let server = start_limited(None).await;
    let query = query("web.service.roster.", RecordType::A);
    for _ in 0..50 {
        let reply = udp_from(ip("127.0.0.1"), server.addr, &query, REPLY_WAIT).await;
        assert_full(&reply.expect("an answer"));
    }
    assert_eq!(server.handler.rrl_stats(), RrlStats::default());
}

/// The clock is paused, so the bucket cannot refill between the calls.
#[tokio::test(start_paused = true)]
async fn the_handler_counts_what_its_clones_limit() {
    let config = DnsConfig {
        rrl: Some(RrlConfig {
            responses_per_second: 1,
            burst: 1,
            slip: 2,
            ..RrlConfig::default()
        }),
        ..DnsConfig::default()
    };
    let handler = DnsHandler::new(sample_view(), config).unwrap();
    let clone = handler.clone();
    let query = query("web.service.roster.", RecordType::A)
        .to_vec()
        .unwrap();
    let src: SocketAddr = "192.0.2.1:5353".parse().unwrap();
    let udp = roster_dns::Transport::Udp;
    assert!(clone.answer_bytes(&query, src, udp).is_some());
    assert!(clone.answer_bytes(&query, src, udp).is_none(), "dropped");
    let slip = clone.answer_bytes(&query, src, udp).expect("slipped");
    assert!(Message::from_vec(&slip).unwrap().metadata.truncation);
    // TCP is not counted and not limited.
    let tcp = clone
        .answer_bytes(&query, src, roster_dns::Transport::Tcp)
        .expect("TCP is answered");
    assert_eq!(Message::from_vec(&tcp).unwrap().answers.len(), 2);
    assert_eq!(
        handler.rrl_stats(),
        RrlStats {
            dropped: 1,
            slipped: 1
        }
    );
}
