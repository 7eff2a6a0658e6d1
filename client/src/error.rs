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
            Error::NotFound(p) | Error::Invalid(p) => Some(p),
            _ => None,
        }
    }
}
