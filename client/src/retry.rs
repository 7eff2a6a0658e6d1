//! Which requests may be retried, how often, and how long to wait in between.

use std::time::Duration;

use reqwest::Method;

/// Retries of failed requests. A retry always goes to another endpoint than
/// the ones the request already tried, only for idempotent requests (or
/// requests that never reached the endpoint), and only while the service's
/// retry budget allows: retries may be `budget_ratio` of the requests plus
/// `budget_floor_per_sec` per second, counted over `budget_window`.
///
/// ```
/// use std::time::Duration;
/// use roster_client::RetryConfig;
///
/// let no_retries = RetryConfig { max_retries: 0, ..Default::default() };
/// let default = RetryConfig::default();
/// assert_eq!((default.budget_ratio, default.budget_floor_per_sec), (0.2, 10));
/// # let _ = no_retries;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryConfig {
    /// Retries after the first attempt (default 2).
    pub max_retries: u32,
    /// Pause before the first retry, doubled for each further one (default 25 ms).
    pub base_backoff: Duration,
    /// Longest pause (default 1 s).
    pub max_backoff: Duration,
    /// Retries allowed as a share of requests (default 0.2).
    pub budget_ratio: f64,
    /// Retries allowed on top, per second of the window (default 10).
    pub budget_floor_per_sec: u32,
    /// Window over which the budget counts (default 10 s).
    pub budget_window: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_retries: 2,
            base_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(1),
            budget_ratio: 0.2,
            budget_floor_per_sec: 10,
            budget_window: Duration::from_secs(10),
        }
    }
}

impl RetryConfig {
    /// The pause before retry number `retry` (1 for the first): exponential,
    /// capped, with "equal jitter" (between half and all of it), so clients
    /// that failed together do not retry together yet never retry at once.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(20))
            .min(self.max_backoff);
        exp.mul_f64(0.5 + 0.5 * fastrand::f64())
    }
}

/// Marks a request as safe to retry whatever its method. Attach it with
/// `reqwest_middleware::RequestBuilder::with_extension(Idempotent)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Idempotent;

/// Whether requests with `method` can be repeated without changing the
/// outcome (RFC 9110 §9.2.2, minus TRACE which nobody should balance).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotent_methods() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ] {
            assert!(is_idempotent(&m), "{m}");
        }
        for m in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!is_idempotent(&m), "{m}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let config = RetryConfig {
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
            ..Default::default()
        };
        for _ in 0..200 {
            let first = config.backoff(1);
            assert!((50..=100).contains(&first.as_millis()), "{first:?}");
            let second = config.backoff(2);
            assert!((100..=200).contains(&second.as_millis()), "{second:?}");
            let capped = config.backoff(30);
            assert!((175..=350).contains(&capped.as_millis()), "{capped:?}");
        }
    }
}
