//! The web console at `/ui/`: three hand-written files built into the binary
//! (no separate web server, nothing fetched from elsewhere, so it works
//! offline). Each is gzip-compressed once, on first use, and served with a
//! content-hash ETag; `index.html` names the other two with that hash in the
//! query (`app.js?v=…`), so they can be cached for good while the page itself is
//! revalidated on every load.
//!
//! The files are open to everyone (the open group in `http/mod.rs`); the data calls the page
//! makes go through the API and need a token when ACLs are on.

use std::io::Write;
use std::sync::LazyLock;

use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use flate2::Compression;
use flate2::write::GzEncoder;

const INDEX_HTML: &[u8] = include_bytes!("../../ui/index.html");
const APP_JS: &[u8] = include_bytes!("../../ui/app.js");
const APP_CSS: &[u8] = include_bytes!("../../ui/app.css");

/// Revalidate every time (a 304 when unchanged): the page names the current
/// versions of the script and the style sheet.
const REVALIDATE: &str = "no-cache";
/// A versioned asset never changes under its URL.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// One file, ready to send in either encoding.
struct Asset {
    content_type: &'static str,
    plain: Vec<u8>,
    gzip: Vec<u8>,
    /// Hex of the first 8 bytes of the content's SHA-256.
    version: String,
    etag: HeaderValue,
}

impl Asset {
    fn new(content_type: &'static str, plain: Vec<u8>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &plain);
        let version: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let etag = HeaderValue::from_str(&format!("\"{version}\"")).expect("hex is a valid header");
        let mut enc = GzEncoder::new(Vec::with_capacity(plain.len() / 3), Compression::best());
        enc.write_all(&plain).expect("writing to a Vec cannot fail");
        let gzip = enc.finish().expect("writing to a Vec cannot fail");
        Asset {
            content_type,
            plain,
            gzip,
            version,
            etag,
        }
    }

    /// The response to a GET with these request headers.
    fn respond(&self, headers: &HeaderMap, cache: &'static str) -> Response {
        let mut resp = if etag_matches(headers, &self.etag) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let gzip = accepts_gzip(headers);
            let body = if gzip { &self.gzip } else { &self.plain };
            let mut r = body.clone().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(self.content_type),
            );
            if gzip {
                r.headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            r
        };
        let h = resp.headers_mut();
        h.insert(header::ETAG, self.etag.clone());
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        resp
    }
}

struct Assets {
    index: Asset,
    js: Asset,
    css: Asset,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let js = Asset::new("text/javascript; charset=utf-8", APP_JS.to_vec());
    let css = Asset::new("text/css; charset=utf-8", APP_CSS.to_vec());
    let html = String::from_utf8_lossy(INDEX_HTML)
        .replace("app.js?v=dev", &format!("app.js?v={}", js.version))
        .replace("app.css?v=dev", &format!("app.css?v={}", css.version));
    Assets {
        index: Asset::new("text/html; charset=utf-8", html.into_bytes()),
        js,
        css,
    }
});

/// Whether `If-None-Match` names this ETag (or is `*`).
fn etag_matches(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let want = etag.to_str().unwrap_or_default();
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == want)
}

/// Whether `Accept-Encoding` allows gzip (by name or `*`, with a non-zero q).
fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            if !(name.eq_ignore_ascii_case("gzip") || name == "*") {
                return false;
            }
            parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .all(|q| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0))
        })
}

/// An asset named with its current version (`?v=HASH`, as the page names it)
/// may be cached for good; under any other URL it is revalidated.
fn versioned(asset: &Asset, uri: &Uri, headers: &HeaderMap) -> Response {
    let current = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair.strip_prefix("v=") == Some(asset.version.as_str()));
    asset.respond(headers, if current { IMMUTABLE } else { REVALIDATE })
}

/// `GET /` and `GET /ui`: to the console.
pub(super) async fn to_ui() -> Redirect {
    Redirect::permanent("/ui/")
}

/// `GET /ui/`.
pub(super) async fn index(headers: HeaderMap) -> Response {
    ASSETS.index.respond(&headers, REVALIDATE)
}

/// `GET /ui/app.js`.
pub(super) async fn app_js(uri: Uri, headers: HeaderMap) -> Response {
    versioned(&ASSETS.js, &uri, &headers)
}

/// `GET /ui/app.css`.
pub(super) async fn app_css(uri: Uri, headers: HeaderMap) -> Response {
    versioned(&ASSETS.css, &uri, &headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, value.parse().unwrap());
        h
    }

    #[test]
    fn gzip_negotiation() {
        let ae = header::ACCEPT_ENCODING;
        assert!(accepts_gzip(&headers(ae.clone(), "gzip, deflate, br")));
        assert!(accepts_gzip(&headers(ae.clone(), "br;q=1.0, GZIP;q=0.5")));
        assert!(accepts_gzip(&headers(ae.clone(), "*")));
        assert!(!accepts_gzip(&headers(ae.clone(), "gzip;q=0")));
        assert!(!accepts_gzip(&headers(ae.clone(), "identity")));
        assert!(!accepts_gzip(&HeaderMap::new()));
    }

    #[test]
    fn etag_lists_and_weak_tags() {
        let tag = HeaderValue::from_static("\"abc\"");
        let inm = header::IF_NONE_MATCH;
        assert!(etag_matches(
            &headers(inm.clone(), "\"x\", W/\"abc\""),
            &tag
        ));
        assert!(etag_matches(&headers(inm.clone(), "*"), &tag));
        assert!(!etag_matches(&headers(inm.clone(), "\"abd\""), &tag));
        assert!(!etag_matches(&HeaderMap::new(), &tag));
    }

    #[test]
    fn the_page_names_the_current_asset_versions() {
        let html = String::from_utf8_lossy(&ASSETS.index.plain).into_owned();
        assert!(html.contains(&format!("app.js?v={}", ASSETS.js.version)));
        assert!(html.contains(&format!("app.css?v={}", ASSETS.css.version)));
        assert!(!html.contains("?v=dev"), "placeholders left in the page");
    }
}
