//! The ACL gate in front of every route: finds the caller's token, refuses
//! with 401 (no token) or 403 (unknown token, or a policy that does not allow
//! the call), and hands the caller's [`Principal`] to the handlers that must
//! look inside the request to decide (Consul writes name their service in the
//! body or only by id).

use std::sync::{Arc, LazyLock};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{ApiError, AppState};
use crate::acl::{Need, Principal};

static ROOT: LazyLock<Arc<Principal>> = LazyLock::new(|| Arc::new(Principal::root()));

/// Paths open to everyone: probes, metrics, the API description, and the web
/// console's own files (its data calls go through the API and its gate).
fn is_open(path: &str) -> bool {
    matches!(
        path,
        "/health" | "/ready" | "/metrics" | "/v1/openapi.json" | "/" | "/ui"
    ) || path.starts_with("/ui/")
        // Node-to-node traffic carries the cluster token instead (http/raft.rs).
        || path.starts_with("/v1/raft/")
}

/// Consul-compatible paths answer errors in Consul's plain text.
pub(super) fn is_consul(path: &str) -> bool {
    ["/v1/agent/", "/v1/catalog/", "/v1/health/", "/v1/status/"]
        .iter()
        .any(|p| path.starts_with(p))
}

/// The secret from `Authorization: Bearer …` or Consul's `X-Consul-Token`.
fn secret(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-consul-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// What a call needs, from its method and path; `None` for paths no route
/// serves (they get their 404 or 405).
fn need_of(method: &Method, path: &str) -> Option<Need> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if segs.first() != Some(&"v1") {
        return None;
    }
    if matches!(segs.get(1), Some(&"snapshot" | &"operator")) {
        return Some(Need::Admin);
    }
    if method == Method::GET || method == Method::HEAD {
        return Some(Need::Read);
    }
    match segs.as_slice() {
        [_, "services", service, "instances", _, rest @ ..] => {
            if rest.first() == Some(&"maintenance") {
                Some(Need::Admin)
            } else {
                Some(Need::Write(service.to_ascii_lowercase()))
            }
        }
        [_, "agent", "service", "maintenance", ..] => Some(Need::Admin),
        [_, "agent", ..] => Some(Need::AnyWrite),
        _ => None,
    }
}

/// A refusal in the shape the path's API uses.
pub(super) fn refuse(path: &str, status: StatusCode, detail: String) -> Response {
    if is_consul(path) {
        let text = if status == StatusCode::UNAUTHORIZED {
            "ACL not found".to_owned()
        } else {
            format!("Permission denied: {detail}")
        };
        let mut resp = (status, text).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return resp;
    }
    ApiError::forbidden(status, detail).into_response()
}

/// The middleware.
pub(super) async fn authorize(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    if is_open(&path) {
        return next.run(req).await;
    }
    let principal = match &state.acl {
        None => ROOT.clone(),
        Some(tokens) => {
            let Some(secret) = secret(req.headers()) else {
                return refuse(
                    &path,
                    StatusCode::UNAUTHORIZED,
                    "a token is required: send Authorization: Bearer TOKEN".into(),
                );
            };
            match tokens.lookup(secret) {
                Some(p) => p,
                None => {
                    return refuse(&path, StatusCode::FORBIDDEN, "unknown token".into());
                }
            }
        }
    };
    if let Some(need) = need_of(req.method(), &path)
        && !principal.allows(&need)
    {
        let what = match &need {
            Need::Read => "read the catalog".to_owned(),
            Need::Write(s) => format!("write service {s:?}"),
            Need::AnyWrite => "write any service".to_owned(),
            Need::Admin => "administer the registry".to_owned(),
        };
        return refuse(
            &path,
            StatusCode::FORBIDDEN,
            format!("token {:?} may not {what}", principal.name),
        );
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_by_route() {
        let put = Method::PUT;
        assert_eq!(need_of(&Method::GET, "/v1/services/web"), Some(Need::Read));
        assert_eq!(need_of(&Method::GET, "/v1/snapshot"), Some(Need::Admin));
        assert_eq!(
            need_of(&put, "/v1/services/Web/instances/a/heartbeat"),
            Some(Need::Write("web".into()))
        );
        assert_eq!(
            need_of(&Method::DELETE, "/v1/services/web/instances/a"),
            Some(Need::Write("web".into()))
        );
        assert_eq!(
            need_of(&put, "/v1/services/web/instances/a/maintenance"),
            Some(Need::Admin)
        );
        assert_eq!(
            need_of(&put, "/v1/agent/service/register"),
            Some(Need::AnyWrite)
        );
        assert_eq!(
            need_of(&put, "/v1/agent/service/maintenance/a"),
            Some(Need::Admin)
        );
        assert_eq!(need_of(&put, "/nothing"), None);
    }

    #[test]
    fn secrets_from_either_header() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(secret(&h), Some("abc"));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(secret(&h), None);
        let mut h = HeaderMap::new();
        h.insert("x-consul-token", "xyz".parse().unwrap());
        assert_eq!(secret(&h), Some("xyz"));
    }
}
