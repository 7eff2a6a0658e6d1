//! The most common shape of a service's `main`, for the end-to-end tests:
//! register with a [`Registration`] (TTL 60 s), then return from `main`,
//! dropping the handle on the way out. The drop must deregister.
//!
//! `roster-register-and-exit REGISTRY SERVICE ID`; prints `registered`
//! before it returns.

use std::process::ExitCode;
use std::time::Duration;

use roster_client::api::RegisterRequest;
use roster_client::{Registration, RosterClient};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [registry, service, id] = &args[..] else {
        eprintln!("usage: roster-register-and-exit REGISTRY SERVICE ID");
        return ExitCode::FAILURE;
    };
    let request = RegisterRequest {
        address: Some("127.0.0.1".into()),
        port: 8080,
        ttl: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let registered = match RosterClient::new(registry) {
        Ok(client) => Registration::start(client, service, id, request).await,
        Err(e) => Err(e),
    };
    let _registration = match registered {
        Ok(registration) => registration,
        Err(e) => {
            eprintln!("roster-register-and-exit: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("registered");
    // `_registration` drops here, then `#[tokio::main]` drops its runtime.
    ExitCode::SUCCESS
}
