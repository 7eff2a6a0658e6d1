//! A [`reqwest_middleware::Middleware`] that sends `http://service/...` to an
//! instance of `service`, with balancing, timeouts, outlier ejection,
//! bulkheads and budgeted retries from a [`Router`].

use std::collections::HashSet;
use std::sync::Arc;

use http::Extensions;
use reqwest::{Request, Response, StatusCode, Url};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use tracing::Instrument;

use crate::call::{Attempt, AttemptOutcome};
use crate::error::CallError;
use crate::retry::{Idempotent, is_idempotent};
use crate::router::Router;

/// Resolves service names in request URLs through discovery.
///
/// A request whose host is a service name goes to an instance the router
/// picks: the URL's host and port are replaced by the instance's address and
/// port, path and query are kept. Which hosts are service names: by default
/// a host without a port, a dot or an IP address, other than `localhost`,
/// that is a service in the catalog ([`Router::is_service`]: the catalog's
/// service list, fetched once and followed) — `http://web/users` is when `web`
/// is registered, `http://redis/`, `http://example.com/` and
/// `http://10.0.0.1/` are not; [`RosterMiddleware::only`] names them instead.
/// Other requests pass through untouched, and leave nothing behind: only
/// services get a pool (released after the router's idle timeout).
///
/// Failed attempts are retried on another instance for idempotent methods
/// (GET, HEAD, PUT, DELETE, OPTIONS, or a request carrying the [`Idempotent`]
/// extension) whose body can be cloned, within the retry budget. After the
/// last attempt the caller gets the last response (a 5xx is still a
/// response) or error; the router's own errors are [`CallError`]s inside
/// [`reqwest_middleware::Error::Middleware`] (see
/// [`CallError::from_middleware`]).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use roster_client::{Discovery, RosterClient, RosterMiddleware, Router};
///
/// let discovery = Discovery::new(RosterClient::new("http://127.0.0.1:8500")?);
/// let http = RosterMiddleware::new(Router::new(discovery)).client(reqwest::Client::new());
/// let users = http.get("http://users/v1/users?limit=10").send().await?;
/// println!("{}", users.status());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RosterMiddleware {
    router: Router,
    only: Option<Arc<HashSet<String>>>,
}

impl RosterMiddleware {
    /// Resolves service-like hosts through `router`.
    pub fn new(router: Router) -> Self {
        RosterMiddleware { router, only: None }
    }

    /// Resolves exactly these hosts, whatever they look like.
    pub fn only<I, S>(mut self, services: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.only = Some(Arc::new(services.into_iter().map(Into::into).collect()));
        self
    }

    /// The router.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// A client sending every request through this middleware.
    pub fn client(self, http: reqwest::Client) -> ClientWithMiddleware {
        reqwest_middleware::ClientBuilder::new(http)
            .with(self)
            .build()
    }

    /// The service `url` names, if it names one.
    fn service_of<'u>(&self, url: &'u Url) -> Option<&'u str> {
        let host = url.host_str()?;
        match &self.only {
            Some(only) => only.contains(host).then_some(host),
            None => {
                let plain = url.port().is_none() && !host.contains(['.', '[']);
                (plain && host != "localhost").then_some(host)
            }
        }
    }

    async fn send(
        &self,
        service: &str,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let idempotent =
            is_idempotent(request.method()) || extensions.get::<Idempotent>().is_some();
        let mut call = self
            .router
            .call(service, idempotent)
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let config = self.router.config();
        let deadline = config
            .deadline
            .map(|d| (d, tokio::time::Instant::now() + d));
        let mut original = Some(request);
        let mut last = None;
        loop {
            let picked = match deadline {
                Some((_, at)) => tokio::time::timeout_at(at, call.next_attempt()).await.ok(),
                None => Some(call.next_attempt().await),
            };
            let attempt = match picked {
                Some(Ok(attempt)) => attempt,
                // A retry that found no endpoint: the caller gets the last failure.
                Some(Err(e)) => {
                    return last.unwrap_or(Err(reqwest_middleware::Error::middleware(e)));
                }
                None => return last.unwrap_or_else(|| Err(self.past_deadline(service, deadline))),
            };
            // The attempt's time: its own timeout, cut to what is left of
            // the request's deadline.
            let left =
                deadline.map(|(_, at)| at.saturating_duration_since(tokio::time::Instant::now()));
            let timeout = match (config.timeout, left) {
                (Some(t), Some(l)) => Some(t.min(l)),
                (t, l) => t.or(l),
            };
            // Keep the original for further attempts while the body allows.
            let request = match original.as_ref().and_then(Request::try_clone) {
                Some(copy) => copy,
                None => {
                    call.disable_retries();
                    original
                        .take()
                        .expect("the original is kept until it is sent")
                }
            };
            let span = tracing::debug_span!(
                "roster.attempt",
                service,
                endpoint = attempt.id(),
                attempt = attempt.number(),
                probe = attempt.is_probe(),
            );
            let result = self
                .attempt(
                    service,
                    &attempt,
                    request,
                    timeout,
                    &mut *extensions,
                    next.clone(),
                )
                .instrument(span)
                .await;
            let outcome = outcome_of(&result);
            if !call.finish(attempt, outcome) {
                return result;
            }
            tracing::debug!(service, ?outcome, "retrying on another endpoint");
            last = Some(result);
        }
    }

    fn past_deadline(
        &self,
        service: &str,
        deadline: Option<(std::time::Duration, tokio::time::Instant)>,
    ) -> reqwest_middleware::Error {
        reqwest_middleware::Error::middleware(CallError::DeadlineExceeded {
            service: service.to_owned(),
            after: deadline.map(|(d, _)| d).unwrap_or_default(),
        })
    }

    async fn attempt(
        &self,
        service: &str,
        attempt: &Attempt,
        mut request: Request,
        timeout: Option<std::time::Duration>,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        point_at(request.url_mut(), attempt.address(), attempt.port()).map_err(|()| {
            reqwest_middleware::Error::middleware(CallError::InvalidAddress {
                service: service.to_owned(),
                endpoint: attempt.id().to_owned(),
                address: format!("{}:{}", attempt.address(), attempt.port()),
            })
        })?;
        let sent = next.run(request, extensions);
        let Some(after) = timeout else {
            return sent.await;
        };
        match tokio::time::timeout(after, sent).await {
            Ok(result) => result,
            Err(_) => Err(reqwest_middleware::Error::middleware(CallError::Timeout {
                service: service.to_owned(),
                endpoint: attempt.id().to_owned(),
                after,
            })),
        }
    }
}

#[async_trait::async_trait]
impl Middleware for RosterMiddleware {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let Some(service) = self.service_of(request.url()).map(str::to_owned) else {
            return next.run(request, extensions).await;
        };
        if self.only.is_none() && !self.router.is_service(&service).await {
            return next.run(request, extensions).await;
        }
        let span = tracing::debug_span!(
            "roster.request",
            service = %service,
            method = %request.method(),
        );
        self.send(&service, request, extensions, next)
            .instrument(span)
            .await
    }
}

/// Rewrites `url` to go to `address:port` (an IPv6 address gets brackets).
fn point_at(url: &mut Url, address: &str, port: u16) -> Result<(), ()> {
    let host = if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]")
    } else {
        address.to_owned()
    };
    url.set_host(Some(&host)).map_err(drop)?;
    url.set_port(Some(port))
}

/// How a result counts for the endpoint's health and for retries.
fn outcome_of(result: &reqwest_middleware::Result<Response>) -> AttemptOutcome {
    match result {
        // 501 is the application's answer, not the endpoint failing.
        Ok(r) if r.status().is_server_error() && r.status() != StatusCode::NOT_IMPLEMENTED => {
            AttemptOutcome::Failed
        }
        Ok(_) => AttemptOutcome::Success,
        Err(reqwest_middleware::Error::Reqwest(e)) if e.is_connect() => AttemptOutcome::NotSent,
        Err(reqwest_middleware::Error::Reqwest(e)) if e.is_timeout() => AttemptOutcome::TimedOut,
        Err(e)
            if matches!(
                CallError::from_middleware(e),
                Some(CallError::Timeout { .. })
            ) =>
        {
            AttemptOutcome::TimedOut
        }
        Err(_) => AttemptOutcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_host_and_port_and_keeps_the_rest() {
        let mut url = Url::parse("http://web/a/b?x=1&y=2#frag").unwrap();
        point_at(&mut url, "10.0.0.7", 8080).unwrap();
        assert_eq!(url.as_str(), "http://10.0.0.7:8080/a/b?x=1&y=2#frag");
        let mut url = Url::parse("http://web/").unwrap();
        point_at(&mut url, "::1", 9000).unwrap();
        assert_eq!(url.as_str(), "http://[::1]:9000/");
        let mut url = Url::parse("http://web/").unwrap();
        point_at(&mut url, "db.internal", 5432).unwrap();
        assert_eq!(url.as_str(), "http://db.internal:5432/");
        assert!(point_at(&mut url, "bad host", 1).is_err());
    }

    #[test]
    fn which_hosts_are_services() {
        let client = crate::RosterClient::new("http://127.0.0.1:1").unwrap();
        let mw = RosterMiddleware::new(Router::new(crate::Discovery::new(client)));
        let service = |mw: &RosterMiddleware, u: &str| {
            mw.service_of(&Url::parse(u).unwrap()).map(str::to_owned)
        };
        assert_eq!(service(&mw, "http://web/x?y=1").as_deref(), Some("web"));
        for other in [
            "http://web:8080/",
            "http://example.com/",
            "http://10.0.0.1/",
            "http://[::1]/",
            "http://localhost/",
        ] {
            assert_eq!(service(&mw, other), None, "{other}");
        }
        let only = mw.only(["api.internal"]);
        assert_eq!(
            service(&only, "http://api.internal/").as_deref(),
            Some("api.internal")
        );
        assert_eq!(service(&only, "http://web/"), None);
    }
}
