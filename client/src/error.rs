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
    /// The registry could not be reached or answered with a server error.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
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
            Error::Unavailable(e.to_string())
        }
    }

    /// The problem document behind a rejected or not-found request.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::NotFound(p) | Error::Invalid(p) | Error::Denied(p) => Some(p),
            _ => None,
        }
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
