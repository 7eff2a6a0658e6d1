//! The lease clock: times as nanoseconds since the registry's epoch, in a
//! `u64`, which is what a lease's `AtomicU64` holds (`lease.rs`).
//!
//! The top bit of a lease word is its "expired" flag, so a time must stay
//! below 2^63: an instant saturates at [`MAX_TIME`] (292 years after the
//! epoch) and a duration at [`MAX_SPAN`] (146 years). Real values are far
//! below both (a process's lifetime, TTLs of at most a day); the bounds only
//! keep conversions from failing, and deadlines are computed with saturating
//! additions.

use std::time::Duration;

use tokio::time::Instant;

/// Latest time the clock reads: just under the lease word's flag bit.
pub const MAX_TIME: u64 = u64::MAX >> 1;

/// Longest duration the clock adds: half of [`MAX_TIME`].
pub const MAX_SPAN: u64 = u64::MAX >> 2;

/// `t` on the clock that started at `epoch` (0 before it).
pub fn since(epoch: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(MAX_TIME)
}

/// `d` in the clock's unit.
pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).map_or(MAX_SPAN, |n| n.min(MAX_SPAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_spans_stay_under_the_flag_bit() {
        let epoch = Instant::now();
        assert_eq!(since(epoch, epoch), 0);
        assert_eq!(
            since(epoch + Duration::from_secs(1), epoch),
            0,
            "before the epoch"
        );
        assert_eq!(nanos(Duration::from_millis(1500)), 1_500_000_000);
        assert_eq!(nanos(Duration::MAX), MAX_SPAN);
    }
}
