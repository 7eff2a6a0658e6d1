use std::time::Duration;

use crate::api::Problem;

/// What can go wrong talking to the registry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The service or instance is not known to the registry (HTTP 404).
    #[error("not found: {}", .0.detail)]
    NotFound(Problem),
    /// The registry rejected the request (HTTP 400/413/409); the problem names the field.
    #[error("rejected ({}): {}{}", .0.status, .0.detail, .0.field.as_deref().map(|f| format!(" [field {f}]")).unwrap_or_default())]
    Invalid(Problem),
    /// The registry refused the caller: no token (401) or a token that may not
    /// do this (403).
    #[error("denied ({}): {}", .0.status, .0.detail)]
    Denied(Problem),
    /// The registry could not be reached or answered with a server error;
    /// [`Unavailable`] says which.
    #[error("registry unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    /// The request did not complete within the client's timeout.
    #[error("registry request timed out")]
    Timeout,
    /// The client was configured wrongly (bad URL, for instance).
    #[error("client configuration: {0}")]
    Config(String),
    /// The registry answered with something this client cannot read.
    #[error("unexpected response from registry: {0}")]
    Protocol(String),
}

impl Error {
    pub(crate) fn from_reqwest(e: reqwest::Error) -> Self {
        if e.is_timeout() {
            Error::Timeout
        } else if e.is_decode() {
            Error::Protocol(e.to_string())
        } else if e.is_builder() {
            Error::Config(e.to_string())
        } else {
            Unavailable::Transport { source: e }.into()
        }
    }

    /// Whether the request died on a connection the registry had closed: a
    /// pooled keep-alive connection to a registry that restarted (or closed
    /// it while idle) fails the first request sent on it before the client
    /// notices. On a fresh connection the same request most likely goes
    /// through.
    pub(crate) fn is_stale_connection(&self) -> bool {
        let Error::Unavailable(Unavailable::Transport { source }) = self else {
            return false;
        };
        if source.is_connect() || source.is_timeout() {
            return false;
        }
        let mut cause = std::error::Error::source(source);
        while let Some(e) = cause {
            if let Some(h) = e.downcast_ref::<hyper::Error>()
                && h.is_incomplete_message()
            {
                return true;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>()
                && matches!(
                    io.kind(),
                    std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::BrokenPipe
                        | std::io::ErrorKind::ConnectionAborted
                )
            {
                return true;
            }
            cause = e.source();
        }
        false
    }

    /// The problem document behind a rejected or not-found request.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::NotFound(p) | Error::Invalid(p) | Error::Denied(p) => Some(p),
            _ => None,
        }
    }
}

/// Why the registry could not serve a request ([`Error::Unavailable`]): the
/// caller may try again later, or at another registry address.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Unavailable {
    /// The request did not get through, or its answer did not: connection
    /// refused or reset, TLS, name resolution, a broken stream.
    #[error("{}", with_cause(source))]
    Transport {
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with a server error (5xx, or a status this
    /// client cannot act on); the problem document says what it reported.
    #[error("{}", status_message(problem))]
    Status {
        /// The registry's problem document (`status` is the HTTP status).
        problem: Problem,
    },
    /// Discovery has had no answer from the registry for the service yet.
    #[error("no answer from the registry yet for {service}")]
    NoAnswerYet {
        /// The service.
        service: String,
    },
    /// The registry has been unreachable for longer than discovery serves
    /// a disconnected copy.
    #[error(
        "the registry has been unreachable for {age:?}; the copy of {service} is too old (served for at most {max_staleness:?})"
    )]
    TooStale {
        /// The service.
        service: String,
        /// How long the registry has been unreachable.
        age: Duration,
        /// Discovery's maximum staleness.
        max_staleness: Duration,
    },
    /// The discovery task behind a handle has stopped (its runtime is
    /// shutting down).
    #[error("discovery stopped")]
    DiscoveryStopped,
    /// The registry closed a watch stream that should have stayed open.
    #[error("the registry closed the watch stream")]
    StreamClosed,
}

impl Unavailable {
    /// The HTTP status the registry answered with, for [`Unavailable::Status`].
    pub fn status(&self) -> Option<u16> {
        match self {
            Unavailable::Status { problem } => Some(problem.status),
            _ => None,
        }
    }
}

/// "HTTP 503 Service Unavailable: the detail".
fn status_message(problem: &Problem) -> String {
    let reason = reqwest::StatusCode::from_u16(problem.status)
        .ok()
        .and_then(|s| s.canonical_reason());
    let mut message = format!("HTTP {}", problem.status);
    if let Some(reason) = reason {
        message = format!("{message} {reason}");
    }
    if !problem.detail.is_empty() {
        message = format!("{message}: {}", problem.detail);
    }
    message
}

/// `e`'s message followed by its innermost cause ("connection refused"),
/// which reqwest's own message leaves out.
fn with_cause(e: &reqwest::Error) -> String {
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    if std::ptr::addr_eq(root, e as &dyn std::error::Error) {
        e.to_string()
    } else {
        format!("{e}: {root}")
    }
}

/// Why a request through the [`Router`](crate::Router) (or the middleware)
/// failed before an endpoint could answer it.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Discovery has no usable copy of the service (no answer yet, or the
    /// registry has been unreachable for longer than the maximum staleness).
    #[error("service {service}: {source}")]
    Discovery {
        /// The service.
        service: String,
        /// What discovery reported.
        #[source]
        source: Box<Error>,
    },
    /// The service has no healthy instance (or none left to retry on).
    #[error("service {service} has no instance to send to")]
    NoEndpoints {
        /// The service.
        service: String,
    },
    /// Bulkhead: every endpoint the request could go to already has `limit`
    /// requests in flight.
    #[error("service {service}: every endpoint has {limit} requests in flight (bulkhead full)")]
    EndpointsFull {
        /// The service.
        service: String,
        /// The per-endpoint limit.
        limit: usize,
    },
    /// Bulkhead: the service already has `limit` requests in flight.
    #[error("service {service} has {limit} requests in flight (bulkhead full)")]
    ServiceFull {
        /// The service.
        service: String,
        /// The per-service limit.
        limit: usize,
    },
    /// The instance's registered address cannot go in a URL.
    #[error(
        "service {service}: instance {endpoint} has an address that cannot go in a URL: {address}"
    )]
    InvalidAddress {
        /// The service.
        service: String,
        /// The instance id.
        endpoint: String,
        /// The address and port.
        address: String,
    },
    /// The endpoint did not answer within the configured timeout.
    #[error("service {service}: endpoint {endpoint} did not answer within {after:?}")]
    Timeout {
        /// The service.
        service: String,
        /// The instance id of the endpoint.
        endpoint: String,
        /// The timeout.
        after: std::time::Duration,
    },
    /// The request's deadline ran out before an attempt could start.
    #[error("service {service}: no answer within the request's deadline of {after:?}")]
    DeadlineExceeded {
        /// The service.
        service: String,
        /// The deadline.
        after: std::time::Duration,
    },
}

impl CallError {
    /// Whether a bulkhead turned the request away (it was never sent).
    pub fn is_overloaded(&self) -> bool {
        matches!(
            self,
            CallError::EndpointsFull { .. } | CallError::ServiceFull { .. }
        )
    }

    /// The `CallError` inside an error of the
    /// [middleware](crate::RosterMiddleware), if it is one.
    pub fn from_middleware(error: &reqwest_middleware::Error) -> Option<&CallError> {
        match error {
            reqwest_middleware::Error::Middleware(e) => e.downcast_ref(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_names_its_status_and_detail() {
        let problem = Problem {
            status: 503,
            detail: "not ready".into(),
            ..Problem::default()
        };
        let e = Error::from(Unavailable::Status { problem });
        assert_eq!(
            e.to_string(),
            "registry unavailable: HTTP 503 Service Unavailable: not ready"
        );
        assert!(matches!(&e, Error::Unavailable(u) if u.status() == Some(503)));
    }

    #[tokio::test]
    async fn a_refused_connection_says_so_and_keeps_its_source() {
        // Nothing listens on port 1.
        let e = reqwest::get("http://127.0.0.1:1/").await.unwrap_err();
        let e = Error::from_reqwest(e);
        let Error::Unavailable(u @ Unavailable::Transport { .. }) = &e else {
            panic!("{e:?}");
        };
        let source = std::error::Error::source(u).expect("the reqwest error");
        assert!(
            source
                .downcast_ref::<reqwest::Error>()
                .is_some_and(reqwest::Error::is_connect)
        );
        let message = e.to_string().to_lowercase();
        assert!(message.contains("refused"), "{message}");
    }
}
