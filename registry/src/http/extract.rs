//! Request extractors that turn every kind of bad input into an `ApiError` naming
//! the field.

use std::net::{IpAddr, SocketAddr};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::problem::ApiError;

/// The maximum request body, in bytes.
pub const BODY_LIMIT: usize = 64 * 1024;

/// A JSON body. Unknown fields are ignored; a field of the wrong type or out of
/// range is a 400 naming it (`port`, `tags[2]`, `weights.passing`). The
/// content type is not checked, so `curl -d` works without `-H`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            if rej.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large(BODY_LIMIT)
            } else {
                ApiError::malformed(rej.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Reads a body the gate has already read in whole (under its group's
/// limit) as JSON, as [`JsonBody`] does.
pub async fn read_json<T: DeserializeOwned>(body: axum::body::Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|e| {
        match e
            .into_inner()
            .downcast::<http_body_util::LengthLimitError>()
        {
            Ok(_) => ApiError::too_large(BODY_LIMIT),
            Err(e) => ApiError::malformed(format!("the request body could not be read: {e}")),
        }
    })?;
    parse_json(&bytes)
}

/// Parses a JSON object, naming the failing field in the error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would also read a struct from an array, field by field in declaration
    // order; a body like `["10.0.0.1", 80]` must be refused, not guessed at.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::malformed(
            "the request body must be a JSON object",
        ));
    }
    // A body that reads is read once, without tracking the path (the
    // tracking wraps every value the parser visits); only one that fails is
    // read again to name the field, with the same rules, so it fails the
    // same way.
    //
    // The body is checked as UTF-8 once, whole, and read as text: read as
    // bytes, every string in it is checked on its own (a tenth of a batch
    // registration's parse). A body that is not UTF-8 fails, and does so on
    // the second read, which says where.
    if let Ok(text) = std::str::from_utf8(bytes) {
        let mut de = serde_json::Deserializer::from_str(text);
        if let Ok(value) = T::deserialize(&mut de)
            && de.end().is_ok()
        {
            return Ok(value);
        }
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(path_error)?;
    de.end()
        .map_err(|e| ApiError::malformed(format!("trailing data after the JSON value: {e}")))?;
    Ok(value)
}

/// Reads a value already parsed as JSON (one operation of a batch), naming
/// the failing field from the value's root.
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(path_error)
}

/// The 400 for a body that is JSON but not what was asked for, naming the field.
fn path_error(err: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = err.path().to_string();
    let inner = err.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return ApiError::malformed(format!("invalid JSON: {inner}"));
    }
    let msg = inner.to_string();
    // serde reports a missing field against its parent: name the field itself.
    if let Some(name) = msg
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        let field = if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        return ApiError::invalid(field, format!("{name} is required"));
    }
    if path == "." {
        return ApiError::malformed(format!("the request body must be a JSON object: {msg}"));
    }
    ApiError::invalid(path, msg)
}

/// The IP address the request came from, when the server knows it: the
/// server gives it to writes only (`limits::is_write`), the requests that
/// use it.
#[derive(Clone, Copy, Debug)]
pub struct PeerIp(pub Option<IpAddr>);

impl PeerIp {
    /// The address the server stored in a request's extensions, if any.
    pub fn of(extensions: &axum::http::Extensions) -> PeerIp {
        PeerIp(
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_canonical()),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PeerIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerIp::of(&parts.extensions))
    }
}

/// Raw query pairs, so that repeated keys (`?tag=a&tag=b`) survive.
#[derive(Debug, Default)]
pub struct QueryPairs(pub Vec<(String, String)>);

impl QueryPairs {
    /// The pairs of a request's query (none when it has none).
    pub fn parse(query: Option<&str>) -> Result<QueryPairs, ApiError> {
        match query {
            None | Some("") => Ok(QueryPairs(Vec::new())),
            Some(query) => serde_urlencoded::from_str(query)
                .map(QueryPairs)
                .map_err(|e| ApiError::invalid("query", format!("malformed query string: {e}"))),
        }
    }

    /// All values of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A boolean parameter: `true`/`false`/`1`/`0`, or present without a value (`?all`).
    pub fn flag(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.all(key).last() {
            None => Ok(None),
            Some("" | "true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(other) => Err(ApiError::invalid(
                key,
                format!("{key} must be true or false, got {other:?}"),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        QueryPairs::parse(parts.uri.query())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_that_is_not_utf8_is_a_400_saying_where() {
        // Read as text first: a body that is not UTF-8 must still be
        // refused, saying what and where.
        let err =
            parse_json::<roster_api::RegisterRequest>(b"{\"port\":80,\"address\":\"10.0.0.\xff\"}")
                .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(
            err.detail().contains("invalid unicode") && err.detail().contains("column 30"),
            "{}",
            err.detail()
        );
        // The same request in UTF-8 reads.
        let ok = parse_json::<roster_api::RegisterRequest>(
            r#"{"port":80,"address":"10.0.0.1","tags":["hé"]}"#.as_bytes(),
        )
        .unwrap();
        assert_eq!(ok.tags, ["hé"]);
    }

    #[test]
    fn a_repeated_metadata_key_is_a_400_naming_meta() {
        let err = parse_json::<roster_api::RegisterRequest>(
            br#"{"port":80,"meta":{"owner":"a","owner":"b"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        assert!(
            err.detail().contains("duplicate key `owner`"),
            "{}",
            err.detail()
        );
        let resp = axum::response::IntoResponse::into_response(err);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
}
