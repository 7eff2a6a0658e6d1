//! A tiny HTTP backend for the end-to-end tests, as a process of its own (so a
//! test can SIGSTOP it): answers every request with its name.
//!
//! `roster-echo NAME [REGISTRY SERVICE]` listens on a free port of 127.0.0.1,
//! registers itself as instance NAME of SERVICE (TTL 60 s) when a registry is
//! given (several comma-separated addresses fail over), prints `ready PORT`
//! and serves until it is killed.

use std::process::ExitCode;
use std::time::Duration;

use roster_client::api::RegisterRequest;
use roster_client::{Registration, RosterClient};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (name, registry) = match &args[..] {
        [name] => (name.clone(), None),
        [name, registry, service] => (name.clone(), Some((registry.clone(), service.clone()))),
        _ => {
            eprintln!("usage: roster-echo NAME [REGISTRY SERVICE]");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("roster-echo: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let body = name.clone();
    let app = axum::Router::new().fallback(move || std::future::ready(body.clone()));
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    // Held until the process is killed: the instance stays registered.
    let _registration = match registry {
        None => None,
        Some((registry, service)) => {
            let request = RegisterRequest {
                address: Some("127.0.0.1".into()),
                port,
                ttl: Some(Duration::from_secs(60)),
                ..Default::default()
            };
            let registered = match RosterClient::new(&registry) {
                Ok(client) => Registration::start(client, &service, &name, request).await,
                Err(e) => Err(e),
            };
            match registered {
                Ok(registration) => Some(registration),
                Err(e) => {
                    eprintln!("roster-echo: cannot register: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    println!("ready {port}");
    match serving.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        other => {
            eprintln!("roster-echo: server stopped: {other:?}");
            ExitCode::FAILURE
        }
    }
}
