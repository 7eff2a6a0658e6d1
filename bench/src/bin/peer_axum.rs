//! The framework ceiling: a bare axum server answering every GET with the bytes
//! of one file, read once at start and served from memory as `application/json`.
//! Same runtime as roster (`#[tokio::main]`, one worker per CPU it may use), so
//! under `taskset -c 0` both run one worker on one core.
//!
//! ```text
//! peer_axum --addr 127.0.0.1:18700 --file bench/out/run/list-100.json [--nodelay on]
//! ```
//!
//! `--nodelay on` sets `TCP_NODELAY` on every connection, as roster does
//! (axum's default leaves Nagle's algorithm on). `--stack roster` serves the
//! same route through roster's own connection code
//! (`roster_registry::http::serve::serve`: its timeouts, stream wrappers and
//! per-request extensions) instead of `axum::serve`, which splits what a
//! request costs roster above this handler into the connection's part and
//! the router's part.
//!
//! `--route PATH` serves the bytes on that one route (an axum path such as
//! `/v1/services/{service}`; the parameter is matched and ignored) instead of
//! as the fallback for every path: routing a path with a parameter costs axum
//! its own work per request (it decodes the parameters and stores them, with
//! the matched path, in the request's extensions), which any server of the
//! same API pays whatever its middleware.

use std::process::ExitCode;

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use tokio::net::TcpListener;

const USAGE: &str = "usage: peer_axum --addr ADDR --file FILE [--nodelay on|off] [--stack axum|roster] [--route PATH]";

#[tokio::main]
async fn main() -> ExitCode {
    let (mut nodelay, mut roster_stack, mut route) = (false, false, None);
    let parsed = roster_bench::peer_args(USAGE, |flag, v| match flag {
        "--nodelay" if v == "on" || v == "off" => {
            nodelay = v == "on";
            true
        }
        "--stack" if v == "axum" || v == "roster" => {
            roster_stack = v == "roster";
            true
        }
        "--route" if v.starts_with('/') => {
            route = Some(v);
            true
        }
        _ => false,
    });
    let Some((addr, file)) = parsed else {
        return ExitCode::from(2);
    };
    let body = match std::fs::read(&file) {
        Ok(b) => Bytes::from(b),
        Err(e) => {
            eprintln!("peer_axum: {file}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Bytes clones are a reference count: no copy, no serialization per request.
    let answer = move || {
        let body = body.clone();
        async move { ([(header::CONTENT_TYPE, "application/json")], body) }
    };
    let app = match route {
        Some(path) => Router::new().route(&path, axum::routing::get(answer)),
        None => Router::new().fallback(answer),
    };
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("peer_axum: bind {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = if roster_stack {
        use roster_registry::http::serve::{ServeConfig, serve};
        let shutdown = tokio_util::sync::CancellationToken::new();
        serve(listener, app.into(), ServeConfig::default(), None, shutdown).await
    } else if nodelay {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, app).await
    } else {
        axum::serve(listener, app).await
    };
    if let Err(e) = served {
        eprintln!("peer_axum: {e}");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
