//! The web console's server side: the files at `/ui/` (redirect, compression,
//! caching, content types, open even with ACLs on), the lease ages it shows
//! (`GET /v1/services/{service}/leases`) and the uptime on `/health`. The router
//! is called in-process; the time-dependent tests run on tokio's paused clock.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use roster_registry::acl::Tokens;
use roster_registry::catalog::CatalogLimits;
use roster_registry::config::Config;
use roster_registry::http::{AppState, router};
use roster_registry::metrics::Metrics;
use roster_registry::registry::Registry;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const READER: &str = "reader-secret-0123456789";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(&name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Api {
    router: Router,
    registry: Arc<Registry>,
}

impl Api {
    fn new(acl: bool) -> Api {
        let registry = Arc::new(Registry::new(
            CatalogLimits::default(),
            Arc::new(Metrics::new()),
        ));
        let mut config = Config::default();
        if acl {
            let tokens = Tokens::parse(&format!(
                "[[tokens]]\nname = \"reader\"\nsecret = \"{READER}\"\npolicies = [\"read\"]\n"
            ))
            .unwrap();
            config.acl = Some(tokens);
        }
        let state = AppState::builder(registry.clone(), &config, CancellationToken::new()).build();
        Api {
            router: router(state),
            registry,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Body::from(body.to_owned())).unwrap();
        let resp = tower::ServiceExt::oneshot(self.router.clone(), req)
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.send(Method::GET, path, headers, "").await
    }

    async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(
            Method::PUT,
            path,
            &[("content-type", "application/json")],
            &body.to_string(),
        )
        .await
    }
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("a valid gzip stream");
    out
}

/// `?v=…` of `file` as the page names it.
fn version_in_page(page: &str, file: &str) -> String {
    let start = page
        .find(&format!("{file}?v="))
        .unwrap_or_else(|| panic!("the page does not name {file}?v=: {page}"))
        + file.len()
        + 3;
    page[start..]
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect()
}

const ASSETS: [(&str, &str); 3] = [
    ("/ui/", "text/html; charset=utf-8"),
    ("/ui/app.js", "text/javascript; charset=utf-8"),
    ("/ui/app.css", "text/css; charset=utf-8"),
];

#[tokio::test]
async fn root_and_bare_ui_redirect_to_the_console() {
    let api = Api::new(false);
    for path in ["/", "/ui"] {
        let r = api.get(path, &[]).await;
        assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT, "{path}");
        assert_eq!(r.header(header::LOCATION), "/ui/", "{path}");
    }
}

#[tokio::test]
async fn assets_are_gzipped_when_accepted_and_plain_otherwise() {
    let api = Api::new(false);
    for (path, content_type) in ASSETS {
        let plain = api.get(path, &[]).await;
        assert_eq!(plain.status, StatusCode::OK, "{path}");
        assert_eq!(plain.header(header::CONTENT_TYPE), content_type, "{path}");
        assert_eq!(plain.header(header::CONTENT_ENCODING), "", "{path}");
        assert_eq!(plain.header(header::VARY), "Accept-Encoding", "{path}");
        assert!(
            plain.body.len() > 500,
            "{path} is {} bytes",
            plain.body.len()
        );

        let gz = api
            .get(path, &[("accept-encoding", "br, gzip;q=0.8, deflate")])
            .await;
        assert_eq!(gz.status, StatusCode::OK, "{path}");
        assert_eq!(gz.header(header::CONTENT_ENCODING), "gzip", "{path}");
        assert_eq!(gz.header(header::CONTENT_TYPE), content_type, "{path}");
        assert!(
            gz.body.len() < plain.body.len() * 3 / 4,
            "{path}: gzip {} vs plain {}",
            gz.body.len(),
            plain.body.len()
        );
        assert_eq!(
            gunzip(&gz.body),
            plain.body,
            "{path} decompresses to the same file"
        );

        let refused = api.get(path, &[("accept-encoding", "gzip;q=0")]).await;
        assert_eq!(refused.header(header::CONTENT_ENCODING), "", "{path}");
        assert_eq!(refused.body, plain.body, "{path}");
    }
    let page = api.get("/ui/", &[]).await.text();
    assert!(page.contains("<main id=\"main\""), "{page}");
    assert!(
        !page.contains("?v=dev"),
        "version placeholders left: {page}"
    );
}

#[tokio::test]
async fn assets_carry_an_etag_and_answer_304_when_it_matches() {
    let api = Api::new(false);
    for (path, _) in ASSETS {
        let first = api.get(path, &[("accept-encoding", "gzip")]).await;
        let etag = first.header(header::ETAG).to_owned();
        assert!(
            etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
            "{path}: ETag {etag:?}"
        );
        // The same ETag in either encoding: it names the content.
        assert_eq!(
            api.get(path, &[]).await.header(header::ETAG),
            etag,
            "{path}"
        );

        let again = api.get(path, &[("if-none-match", &etag)]).await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{path}");
        assert!(again.body.is_empty(), "{path}: a 304 has no body");
        assert_eq!(again.header(header::ETAG), etag, "{path}");

        let listed = format!("\"other\", W/{etag}");
        let weak = api.get(path, &[("if-none-match", &listed)]).await;
        assert_eq!(weak.status, StatusCode::NOT_MODIFIED, "{path}");

        let stale = api.get(path, &[("if-none-match", "\"0000\"")]).await;
        assert_eq!(stale.status, StatusCode::OK, "{path}");
        assert_eq!(stale.body, api.get(path, &[]).await.body, "{path}");
    }

    // The page is revalidated on every load; the files it names by version are
    // cached for good, and under any other URL revalidated.
    let page = api.get("/ui/", &[]).await;
    assert_eq!(page.header(header::CACHE_CONTROL), "no-cache");
    let page = page.text();
    for file in ["app.js", "app.css"] {
        let v = version_in_page(&page, file);
        assert_eq!(v.len(), 16, "{file}?v={v}");
        let current = api.get(&format!("/ui/{file}?v={v}"), &[]).await;
        assert_eq!(current.status, StatusCode::OK);
        assert!(
            current.header(header::CACHE_CONTROL).contains("immutable"),
            "{file}: {}",
            current.header(header::CACHE_CONTROL)
        );
        assert!(current.header(header::ETAG).contains(&v), "{file}");
        let unversioned = api.get(&format!("/ui/{file}?v=old"), &[]).await;
        assert_eq!(
            unversioned.header(header::CACHE_CONTROL),
            "no-cache",
            "{file}"
        );
    }
}

#[tokio::test]
async fn the_console_loads_without_a_token_but_its_data_needs_one() {
    let api = Api::new(true);
    for (path, _) in ASSETS {
        assert_eq!(api.get(path, &[]).await.status, StatusCode::OK, "{path}");
    }
    assert_eq!(
        api.get("/", &[]).await.status,
        StatusCode::PERMANENT_REDIRECT
    );
    for path in ["/v1/services", "/v1/services/web/leases"] {
        let anonymous = api.get(path, &[]).await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            anonymous.text().contains("token is required"),
            "{path}: {}",
            anonymous.text()
        );
        let bearer = format!("Bearer {READER}");
        let reader = api.get(path, &[("authorization", &bearer)]).await;
        assert_eq!(reader.status, StatusCode::OK, "{path}: {}", reader.text());
    }
    // An unrouted path under /ui/ is still a plain 404, not an open door.
    assert_eq!(
        api.get("/ui/../v1/services", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(start_paused = true)]
async fn leases_report_the_time_since_the_last_renewal() {
    let api = Api::new(false);
    let reg = |ttl: Option<&str>| {
        let mut body = json!({"address": "10.0.0.1", "port": 80});
        if let Some(ttl) = ttl {
            body["ttl"] = json!(ttl);
        }
        body
    };
    let r = api
        .put("/v1/services/web/instances/web-1", reg(Some("10s")))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let r = api.put("/v1/services/web/instances/web-2", reg(None)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    tokio::time::advance(Duration::from_secs(3)).await;

    let r = api.get("/v1/services/web/leases", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let body = r.json();
    assert_eq!(
        body["index"].as_u64().unwrap().to_string(),
        r.header("x-roster-index".parse().unwrap())
    );
    let leases = body["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 1, "only the instance with a ttl: {body}");
    assert_eq!(leases[0]["id"], "web-1");
    assert_eq!(leases[0]["ttl"], "10s");
    assert_eq!(leases[0]["expired"], false);
    let ago = leases[0]["renewed_ago_ms"].as_u64().unwrap();
    assert!(
        (3000..3100).contains(&ago),
        "renewed {ago} ms ago, expected 3000"
    );

    let hb = api
        .send(
            Method::PUT,
            "/v1/services/web/instances/web-1/heartbeat",
            &[],
            "",
        )
        .await;
    assert_eq!(hb.status, StatusCode::NO_CONTENT, "{}", hb.text());
    let body = api.get("/v1/services/web/leases", &[]).await.json();
    let ago = body["leases"][0]["renewed_ago_ms"].as_u64().unwrap();
    assert!(ago < 100, "renewed {ago} ms ago right after a heartbeat");

    // The reaper expires the lease once its ttl passes without a heartbeat; the
    // age keeps counting from the last renewal.
    let cancel = CancellationToken::new();
    tokio::spawn(api.registry.clone().run_reaper(cancel.clone()));
    tokio::time::advance(Duration::from_secs(11)).await;
    let mut body = Value::Null;
    for _ in 0..1000 {
        body = api.get("/v1/services/web/leases", &[]).await.json();
        if body["leases"][0]["expired"] == true {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(body["leases"][0]["expired"], true, "{body}");
    let ago = body["leases"][0]["renewed_ago_ms"].as_u64().unwrap();
    assert!((11_000..11_100).contains(&ago), "renewed {ago} ms ago");
    cancel.cancel();

    // Unknown services have no leases; bad names are a 400.
    let none = api.get("/v1/services/nothing/leases", &[]).await;
    assert_eq!(none.status, StatusCode::OK);
    assert_eq!(none.json()["leases"], json!([]));
    let bad = api.get("/v1/services/no_such!/leases", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", bad.text());
}

#[tokio::test(start_paused = true)]
async fn health_reports_uptime() {
    let api = Api::new(false);
    let first = api.get("/health", &[]).await.json();
    assert_eq!(first["uptime_seconds"], 0, "{first}");
    tokio::time::advance(Duration::from_secs(125)).await;
    let later = api.get("/health", &[]).await.json();
    assert_eq!(later["uptime_seconds"], 125, "{later}");
    assert_eq!(later["self_preservation"], false);
    assert!(
        later["version"].is_string() && later["index"].is_u64(),
        "{later}"
    );
}
