//! The registry addresses of one client, and which of them it uses now.
//!
//! A client given several addresses (the nodes of a replicated registry) sends
//! every call to the address that last worked. When that address cannot be
//! reached, times out, or answers 502, 503 (a node without a leader) or 504,
//! the call is tried on the next address, each at most once per call. Clones of
//! a client share one [`Registries`], so what one call learns (node A is down,
//! B works) every other call and watch of that client uses at once.

use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::StatusCode;

use crate::Error;

/// The parsed address list and the index of the address in use.
#[derive(Debug)]
pub(crate) struct Registries {
    urls: Box<[String]>,
    current: AtomicUsize,
}

impl Registries {
    /// Parses `list`: one base URL or several separated by commas, each
    /// starting with `http://` or `https://`. Spaces around entries and
    /// trailing slashes are dropped, a repeated address is kept once (so no
    /// call tries it twice), an empty entry is an error.
    pub(crate) fn parse(list: &str) -> Result<Self, Error> {
        if list.trim().is_empty() {
            return Err(Error::Config("no registry address given".into()));
        }
        let mut urls: Vec<String> = Vec::new();
        for (position, entry) in list.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(Error::Config(format!(
                    "registry address list {list:?} has an empty entry (number {}); \
                     separate addresses with single commas",
                    position + 1
                )));
            }
            let url = entry.trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Error::Config(format!(
                    "registry URL {entry:?} must start with http:// or https://"
                )));
            }
            if !urls.iter().any(|u| u == url) {
                urls.push(url.to_owned());
            }
        }
        Ok(Registries {
            urls: urls.into(),
            current: AtomicUsize::new(0),
        })
    }

    /// Every address, in the order given.
    pub(crate) fn all(&self) -> &[String] {
        &self.urls
    }

    /// The address at `at`.
    pub(crate) fn url(&self, at: usize) -> &str {
        &self.urls[at]
    }

    /// Index of the address in use.
    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// The addresses one call tries, in order: the one in use, then the ones
    /// after it in the list, wrapping around; each once.
    pub(crate) fn attempt_order(&self) -> impl Iterator<Item = usize> + use<> {
        let n = self.urls.len();
        let start = self.current();
        (0..n).map(move |k| (start + k) % n)
    }

    /// The address at `at` answered: later calls start there. Returns the
    /// index that was in use before.
    pub(crate) fn settle(&self, at: usize) -> usize {
        self.current.swap(at, Ordering::Relaxed)
    }

    /// The address at `at` failed outside a call (a watch stream on it broke):
    /// move on to the next one, unless something has already moved the client
    /// off `at`. Ten streams breaking together when a node dies move the client
    /// one step, not ten.
    pub(crate) fn leave(&self, at: usize) {
        let next = (at + 1) % self.urls.len();
        let _ = self
            .current
            .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// Whether an answer with `status` means "this node cannot serve now, another
/// may": a gateway error, or 503, which a registry node without a Raft leader
/// sends (with Retry-After). Every other status, 4xx and 500 included, is the
/// registry's answer and goes back to the caller as it is.
pub(crate) fn fails_over(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(r: &Registries) -> Vec<usize> {
        r.attempt_order().collect()
    }

    #[test]
    fn parses_one_or_several_addresses() {
        let one = Registries::parse("http://h:1/").unwrap();
        assert_eq!(one.all(), ["http://h:1"]);
        let many = Registries::parse(" http://a:1 ,https://b:2/,http://c:3").unwrap();
        assert_eq!(many.all(), ["http://a:1", "https://b:2", "http://c:3"]);
        assert_eq!(
            many.url(many.current()),
            "http://a:1",
            "the first address first"
        );
        let repeated = Registries::parse("http://a:1,http://b:2,http://a:1/").unwrap();
        assert_eq!(repeated.all(), ["http://a:1", "http://b:2"]);
    }

    #[test]
    fn rejects_empty_entries_and_urls_without_scheme() {
        assert!(
            matches!(Registries::parse(" "), Err(Error::Config(m)) if m == "no registry address given")
        );
        for bad in ["http://a:1,", ",http://a:1", "http://a:1,,http://b:2"] {
            let Err(Error::Config(message)) = Registries::parse(bad) else {
                panic!("{bad:?} accepted");
            };
            assert!(message.contains("empty entry"), "{bad:?}: {message}");
        }
        let Err(Error::Config(message)) = Registries::parse("http://a:1,b:2") else {
            panic!("an address without a scheme accepted");
        };
        assert!(
            message.contains("\"b:2\" must start with http://"),
            "{message}"
        );
    }

    #[test]
    fn a_call_tries_every_address_once_starting_with_the_one_in_use() {
        let r = Registries::parse("http://a,http://b,http://c").unwrap();
        assert_eq!(order(&r), [0, 1, 2]);
        assert_eq!(r.settle(2), 0);
        assert_eq!(order(&r), [2, 0, 1], "wraps around after the last");
        assert_eq!(r.settle(1), 2);
        assert_eq!(order(&r), [1, 2, 0]);
        let single = Registries::parse("http://a").unwrap();
        assert_eq!(order(&single), [0]);
    }

    #[test]
    fn leaving_a_broken_address_moves_one_step_once() {
        let r = Registries::parse("http://a,http://b,http://c").unwrap();
        r.leave(0);
        assert_eq!(r.current(), 1);
        // The other streams on `a` break too: the client is already off it.
        r.leave(0);
        r.leave(0);
        assert_eq!(r.current(), 1);
        r.leave(1);
        r.leave(2);
        assert_eq!(r.current(), 0, "wraps around");
        let single = Registries::parse("http://a").unwrap();
        single.leave(0);
        assert_eq!(single.current(), 0);
    }

    #[test]
    fn only_gateway_errors_and_503_fail_over() {
        for status in [502, 503, 504] {
            assert!(
                fails_over(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
        for status in [200, 201, 400, 401, 403, 404, 409, 413, 429, 500, 501] {
            assert!(
                !fails_over(StatusCode::from_u16(status).unwrap()),
                "{status}"
            );
        }
    }
}
