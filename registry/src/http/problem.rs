//! `ApiError`: every HTTP error as an RFC 9457 `application/problem+json` document.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use roster_api::{ItemProblem, Problem};

use crate::catalog::CatalogError;
use crate::model::FieldError;

/// An HTTP error response.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    title: &'static str,
    detail: String,
    field: Option<String>,
    /// Seconds for `Retry-After`.
    retry_after: Option<u32>,
    /// The refused operations of a batch.
    errors: Vec<ItemProblem>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, title: &'static str, detail: String) -> Self {
        ApiError {
            status,
            kind,
            title,
            detail,
            field: None,
            retry_after: None,
            errors: Vec::new(),
        }
    }

    /// 400 (or `status`): operations of a batch refused, each named by its
    /// position and field; nothing of the batch was applied.
    pub fn batch(status: StatusCode, errors: Vec<ItemProblem>) -> Self {
        let (kind, title) = if status == StatusCode::FORBIDDEN {
            ("forbidden", "Not allowed")
        } else {
            ("invalid-batch", "Batch refused")
        };
        let first = errors
            .first()
            .map(|e| format!(" (first: operation {}: {})", e.index, e.detail))
            .unwrap_or_default();
        let mut e = Self::new(
            status,
            kind,
            title,
            format!(
                "{} operation(s) of the batch refused{first}; nothing of the batch was applied",
                errors.len()
            ),
        );
        e.field = errors.first().and_then(|i| i.field.clone());
        e.errors = errors;
        e
    }

    /// This error as one operation of a batch: the field named from the
    /// batch's root, `ops[index].…` (`id` when the error names none).
    pub fn into_item(self, index: usize) -> ItemProblem {
        let field = match self.field.as_deref() {
            // The operation as a whole.
            Some("") => format!("ops[{index}]"),
            Some(f) => format!("ops[{index}].{f}"),
            None => format!("ops[{index}].id"),
        };
        ItemProblem {
            index,
            status: self.status.as_u16(),
            detail: self.detail,
            field: Some(field),
        }
    }

    /// 401 (no token) or 403 (a token that may not do this).
    pub fn forbidden(status: StatusCode, detail: String) -> Self {
        if status == StatusCode::UNAUTHORIZED {
            Self::new(status, "unauthorized", "Token required", detail)
        } else {
            Self::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail)
        }
    }

    /// 404: `?dc=` names a datacenter this node is not federated with (only
    /// configured datacenters are ever called).
    pub fn unknown_datacenter(dc: &str, known: &[&str]) -> Self {
        let mut e = Self::new(
            StatusCode::NOT_FOUND,
            "unknown-datacenter",
            "Unknown datacenter",
            format!(
                "datacenter {dc:?} is not this one nor a federated one (known: {})",
                known.join(", ")
            ),
        );
        e.field = Some("dc".into());
        e
    }

    /// A call to another datacenter failed: 503 when it is known to be down
    /// (open circuit, overload), 504 when it did not answer in time, 502
    /// when it answered nonsense; `field` is `dc`.
    pub fn remote(status: StatusCode, detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            status,
            "remote-datacenter",
            "Another datacenter failed",
            detail.into(),
        );
        e.field = Some("dc".into());
        e
    }

    /// What went wrong, for humans.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// 400: a field of the request is wrong.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-field",
            "Invalid request field",
            detail.into(),
        );
        e.field = Some(field.into());
        e
    }

    /// 400: the body is not valid JSON at all.
    pub fn malformed(detail: impl Into<String>) -> Self {
        let mut e = Self::new(
            StatusCode::BAD_REQUEST,
            "malformed-body",
            "Malformed request body",
            detail.into(),
        );
        e.field = Some("body".into());
        e
    }

    /// 413: the body is over the size limit.
    pub fn too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            format!("request bodies are limited to {limit} bytes"),
        );
        e.field = Some("body".into());
        e
    }

    /// 404 for a path that names no route.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "no-route",
            "No such endpoint",
            format!("no endpoint at {path}; see /v1/openapi.json"),
        )
    }

    /// 404 for something named in the request that does not exist.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            detail.into(),
        )
    }

    /// 405 for a known path with the wrong method.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            format!("{method} is not allowed on {path}; see /v1/openapi.json"),
        )
    }

    /// 503 while the registry is not ready.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Registry not ready",
            detail.into(),
        )
    }

    /// 409: the request conflicts with the catalog's current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail.into())
    }

    /// 503 or 429 when the registry sheds load; always with `Retry-After`.
    pub fn overloaded(status: StatusCode, detail: impl Into<String>) -> Self {
        let title = if status == StatusCode::TOO_MANY_REQUESTS {
            "Too many writes"
        } else {
            "Overloaded"
        };
        Self::new(status, "overloaded", title, detail.into()).retry_after(1)
    }

    /// 408: the body did not arrive in time. Not a 503: the registry is not
    /// overloaded, the client is slow.
    pub fn body_timeout(limit: std::time::Duration) -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body-timeout",
            "Request body too slow",
            format!("the request body must arrive within {limit:?}"),
        );
        e.field = Some("body".into());
        e
    }

    /// 415: a `Content-Encoding` the API does not decode.
    pub fn unsupported_encoding(encoding: &str) -> Self {
        let mut e = Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-encoding",
            "Unsupported content encoding",
            format!("request bodies must not be encoded (got Content-Encoding {encoding:?})"),
        );
        e.field = Some("Content-Encoding".into());
        e
    }

    /// 431: the request's headers are over the limit.
    pub fn headers_too_large(limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            "Request headers too large",
            format!("request headers are limited to {limit} bytes in all"),
        );
        e.field = Some("headers".into());
        e
    }

    /// The same error with `Retry-After: secs`.
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// Seconds of `Retry-After`, when set.
    pub fn retry_after_secs(&self) -> Option<u32> {
        self.retry_after
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::invalid(e.field, e.detail)
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        let detail = e.to_string();
        match e {
            CatalogError::NotFound { .. } => Self::new(
                StatusCode::NOT_FOUND,
                "not-found",
                "Instance not found",
                detail,
            ),
            CatalogError::CheckNotFound { .. } => {
                let mut e = Self::new(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    "Check not found",
                    detail,
                );
                e.field = Some("check_id".into());
                e
            }
            CatalogError::WrongCheckKind(_) => {
                let mut e = Self::new(
                    StatusCode::BAD_REQUEST,
                    "wrong-check-kind",
                    "Check cannot be updated this way",
                    detail,
                );
                e.field = Some("check_id".into());
                e
            }
            CatalogError::Conflict { .. } => {
                let mut e = Self::new(
                    StatusCode::CONFLICT,
                    "id-conflict",
                    "Instance id in use",
                    detail,
                );
                e.field = Some("id".into());
                e
            }
            CatalogError::Full { what, .. } => {
                let mut e = Self::new(
                    StatusCode::BAD_REQUEST,
                    "limit-exceeded",
                    "Capacity limit reached",
                    detail,
                );
                e.field = Some(
                    if what.contains("per service") {
                        "service"
                    } else {
                        "id"
                    }
                    .into(),
                );
                e
            }
            CatalogError::IndexTooHigh { .. } => Self::invalid("index", detail),
            CatalogError::Unexpected { .. } => {
                let mut e = Self::conflict(detail);
                e.field = Some("id".into());
                e
            }
            CatalogError::Batch { errors } => Self::batch(
                StatusCode::BAD_REQUEST,
                errors
                    .into_iter()
                    .map(|i| ApiError::from(i.error).into_item(i.index))
                    .collect(),
            ),
            CatalogError::NotInBatch { .. } => Self::invalid("op", detail),
            CatalogError::IndexExhausted => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "index-exhausted",
                "Catalog index exhausted",
                detail,
            ),
        }
    }
}

impl From<crate::registry::WriteError> for ApiError {
    fn from(e: crate::registry::WriteError) -> Self {
        match e {
            crate::registry::WriteError::Catalog(e) => e.into(),
            crate::registry::WriteError::Store(e) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store-failed",
                "Change not durable",
                format!("the change is in memory but not on disk yet ({e}); retry"),
            ),
            crate::registry::WriteError::Unavailable(e) => no_leader(e.to_string()),
        }
    }
}

impl From<crate::cluster::ClusterError> for ApiError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        match e {
            crate::cluster::ClusterError::NotAMember { .. } => Self::not_found(e.to_string()),
            // Anything else an operator's membership change runs into passes
            // (an election, an unreachable node, a change under way).
            e => no_leader(e.to_string()),
        }
    }
}

/// 503 with `Retry-After`: no leader can do this now.
fn no_leader(detail: String) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "no-leader",
        "No leader",
        format!("{detail}; retry in a moment or on another node"),
    );
    e.retry_after = Some(1);
    e
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let problem = Problem {
            kind: format!("urn:roster:problem:{}", self.kind),
            title: self.title.into(),
            status: self.status.as_u16(),
            detail: self.detail,
            field: self.field,
            errors: Box::new(self.errors),
        };
        let body = serde_json::to_vec(&problem).expect("problem serializes");
        let mut resp = (self.status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
