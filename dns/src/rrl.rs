//! Response rate limiting (RRL) for UDP answers, in the manner of BIND's RRL.
//!
//! A UDP source address can be forged, so a server that answers every UDP
//! query can be used to flood a victim with answers to queries it never sent.
//! The limiter keeps one token bucket per source prefix (IPv4 /24 and IPv6 /56
//! by default: a forger usually varies the low bits, and one customer usually
//! owns a whole prefix). A prefix over its rate gets, every `slip`-th time, a
//! truncated empty answer (TC=1), which costs nothing to send and makes a real
//! client behind that prefix retry over TCP, where the source cannot be forged;
//! the other answers are dropped. TCP is never limited.
//!
//! The buckets live in a fixed table allocated once: a set-associative hash
//! table (a random hash seed, so a forger cannot aim at one set) whose sets of
//! `WAYS` slots each evict the slot with the fullest bucket. A full bucket
//! holds no information, so an eviction only loses state when every slot of
//! the set is limiting a prefix at that moment.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::ConfigError;

/// Slots per set of the table.
const WAYS: usize = 4;
const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// Settings of response rate limiting; see the [module docs](self).
///
/// ```
/// let config = roster_dns::DnsConfig {
///     rrl: Some(roster_dns::RrlConfig {
///         responses_per_second: 20,
///         ..Default::default()
///     }),
///     ..Default::default()
/// };
/// # assert_eq!(config.rrl.unwrap().slip, 2);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RrlConfig {
    /// Sustained UDP answers per second to one source prefix (default 100).
    pub responses_per_second: u32,
    /// Answers a prefix may get at once after being quiet (default 200): the
    /// bucket's size.
    pub burst: u32,
    /// Every `slip`-th answer over the rate is sent truncated and empty instead
    /// of dropped (default 2; 1 slips every one, 0 drops every one).
    pub slip: u32,
    /// Length of the IPv4 prefix sharing a bucket (default 24).
    pub ipv4_prefix: u8,
    /// Length of the IPv6 prefix sharing a bucket (default 56).
    pub ipv6_prefix: u8,
    /// Most prefixes tracked at once (default 16384, about 50 bytes each).
    pub max_tracked: usize,
}

impl Default for RrlConfig {
    fn default() -> Self {
        RrlConfig {
            responses_per_second: 100,
            burst: 200,
            slip: 2,
            ipv4_prefix: 24,
            ipv6_prefix: 56,
            max_tracked: 16_384,
        }
    }
}

/// What to do with one UDP answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within the rate: answer normally.
    Answer,
    /// Over the rate: send a truncated empty answer (TC=1).
    Slip,
    /// Over the rate: send nothing.
    Drop,
}

/// Counts of answers the limiter withheld since the handler was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RrlStats {
    /// Answers dropped.
    pub dropped: u64,
    /// Answers replaced by a truncated empty one.
    pub slipped: u64,
}

impl RrlStats {
    /// Answers withheld either way.
    pub fn limited(&self) -> u64 {
        self.dropped + self.slipped
    }
}

/// A source prefix: the masked address, and whether it is IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Prefix {
    bits: u128,
    v6: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    prefix: Option<Prefix>,
    /// Theoretical arrival time (GCRA), in nanoseconds since the limiter's
    /// epoch: the bucket is full when it is not after now.
    tat: u64,
    /// Answers over the rate so far, for the slip rotation.
    limited: u32,
}

/// Token buckets per source prefix in a table of fixed size; see the
/// [module docs](self). Safe to share between threads.
///
/// The clock is an argument, so the limiter can be driven with chosen times:
///
/// ```
/// use roster_dns::{RateLimiter, RrlConfig, Verdict};
/// use std::time::Duration;
///
/// let config = RrlConfig { responses_per_second: 1, burst: 1, slip: 0, ..Default::default() };
/// let limiter = RateLimiter::new(&config).unwrap();
/// let (source, t0) = ("192.0.2.7".parse().unwrap(), tokio::time::Instant::now());
/// assert_eq!(limiter.check(source, t0), Verdict::Answer);
/// assert_eq!(limiter.check(source, t0), Verdict::Drop);
/// assert_eq!(limiter.check(source, t0 + Duration::from_secs(1)), Verdict::Answer);
/// ```
#[derive(Debug)]
pub struct RateLimiter {
    sets: Box<[Mutex<[Slot; WAYS]>]>,
    hasher: RandomState,
    /// Nanoseconds between two answers at the sustained rate.
    interval: u64,
    /// How far ahead of now the theoretical arrival time may run: the burst.
    tolerance: u64,
    slip: u32,
    v4_mask: u32,
    v6_mask: u128,
    epoch: Instant,
    dropped: AtomicU64,
    slipped: AtomicU64,
}

impl RateLimiter {
    /// A limiter with `config`, refusing settings that cannot work.
    pub fn new(config: &RrlConfig) -> Result<RateLimiter, ConfigError> {
        let invalid = |reason: &str| {
            Err(ConfigError::InvalidRateLimit {
                reason: reason.to_owned(),
            })
        };
        if config.responses_per_second == 0 {
            return invalid("responses_per_second must be at least 1");
        }
        if config.burst == 0 {
            return invalid("burst must be at least 1");
        }
        if config.ipv4_prefix > 32 {
            return invalid("ipv4_prefix must be at most 32");
        }
        if config.ipv6_prefix > 128 {
            return invalid("ipv6_prefix must be at most 128");
        }
        if config.max_tracked == 0 {
            return invalid("max_tracked must be at least 1");
        }
        let interval = (NANOS_PER_SECOND / u64::from(config.responses_per_second)).max(1);
        let sets = config.max_tracked.div_ceil(WAYS);
        Ok(RateLimiter {
            sets: (0..sets).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            interval,
            tolerance: interval.saturating_mul(u64::from(config.burst)),
            slip: config.slip,
            v4_mask: u32::MAX
                .checked_shl(32 - u32::from(config.ipv4_prefix))
                .unwrap_or(0),
            v6_mask: u128::MAX
                .checked_shl(128 - u32::from(config.ipv6_prefix))
                .unwrap_or(0),
            epoch: Instant::now(),
            dropped: AtomicU64::new(0),
            slipped: AtomicU64::new(0),
        })
    }

    /// Counts one answer to `source` at `now` and says what to do with it.
    pub fn check(&self, source: IpAddr, now: Instant) -> Verdict {
        let prefix = self.prefix(source);
        let now = nanos(now.saturating_duration_since(self.epoch));
        let index = (self.hasher.hash_one(prefix) % self.sets.len() as u64) as usize;
        let verdict = {
            let mut set = self.sets[index]
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let slot = match set.iter().position(|s| s.prefix == Some(prefix)) {
                Some(i) => &mut set[i],
                None => {
                    // Unused slots have tat 0, so they go first.
                    let slot = set.iter_mut().min_by_key(|s| s.tat).expect("WAYS > 0");
                    *slot = Slot {
                        prefix: Some(prefix),
                        ..Slot::default()
                    };
                    slot
                }
            };
            let tat = slot.tat.max(now).saturating_add(self.interval);
            if tat - now <= self.tolerance {
                slot.tat = tat;
                Verdict::Answer
            } else {
                slot.limited = slot.limited.wrapping_add(1);
                if self.slip != 0 && slot.limited % self.slip == 0 {
                    Verdict::Slip
                } else {
                    Verdict::Drop
                }
            }
        };
        match verdict {
            Verdict::Answer => {}
            Verdict::Slip => {
                self.slipped.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Drop => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        verdict
    }

    /// Answers withheld so far.
    pub fn stats(&self) -> RrlStats {
        RrlStats {
            dropped: self.dropped.load(Ordering::Relaxed),
            slipped: self.slipped.load(Ordering::Relaxed),
        }
    }

    /// Prefixes the table can hold: `max_tracked` rounded up to whole sets.
    pub fn capacity(&self) -> usize {
        self.sets.len() * WAYS
    }

    /// Prefixes tracked now (never more than [`capacity`](Self::capacity)).
    pub fn tracked(&self) -> usize {
        self.sets
            .iter()
            .map(|set| {
                let set = set.lock().unwrap_or_else(PoisonError::into_inner);
                set.iter().filter(|s| s.prefix.is_some()).count()
            })
            .sum()
    }

    fn prefix(&self, source: IpAddr) -> Prefix {
        // A v4 client reaching a dual-stack socket shows up as ::ffff:a.b.c.d.
        match source.to_canonical() {
            IpAddr::V4(v4) => Prefix {
                bits: u128::from(u32::from(v4) & self.v4_mask),
                v6: false,
            },
            IpAddr::V6(v6) => Prefix {
                bits: u128::from(v6) & self.v6_mask,
                v6: true,
            },
        }
    }
}

fn nanos(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
}
