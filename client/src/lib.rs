//! Client library for the roster service registry.
//!
//! - [`api`]: the wire types shared with the server.
//! - [`RosterClient`]: typed calls for every native API endpoint, to one
//!   registry address or to several with failover between them.
//! - [`Registration`]: register an instance and keep it registered.
//! - [`Discovery`]: a watched, shared copy of a service's instances.
//! - [`balance`]: balancers (round robin, random, weighted, power of two choices).
//! - [`Router`]: balancing plus resilience (timeouts, outlier ejection,
//!   bulkheads, budgeted retries) for any transport.
//! - [`RosterMiddleware`]: all of that for `reqwest`, resolving
//!   `http://service-name/...`.
//! - [`ServiceDiscover`]: a `tower::discover::Discover` stream for tower and
//!   tonic balancers.
//!
//! # The registry API
//!
//! ```no_run
//! # async fn demo() -> Result<(), roster_client::Error> {
//! use roster_client::{RosterClient, api::RegisterRequest};
//! let client = RosterClient::new("http://127.0.0.1:8500")?;
//! let req = RegisterRequest { port: 8080, ttl: Some(std::time::Duration::from_secs(15)), ..Default::default() };
//! client.register("web", "web-1", &req).await?;
//! client.heartbeat("web", "web-1").await?;
//! let web = client.instances("web", &Default::default()).await?;
//! println!("{} healthy instances", web.instances.len());
//! # Ok(()) }
//! ```
//!
//! # Registering a service
//!
//! ```no_run
//! # async fn demo() -> Result<(), roster_client::Error> {
//! use std::time::Duration;
//! use roster_client::{Registration, RosterClient, api::RegisterRequest};
//!
//! let client = RosterClient::new("http://127.0.0.1:8500")?;
//! let request = RegisterRequest { port: 8080, ttl: Some(Duration::from_secs(15)), ..Default::default() };
//! // Heartbeats every ttl/3 in the background, re-registers if the registry forgets.
//! let registration = Registration::start(client, "web", "web-1", request).await?;
//! // ... serve ...
//! registration.shutdown().await?; // deregisters
//! # Ok(()) }
//! ```
//!
//! # Calling a service over HTTP
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use roster_client::balance::WeightedRoundRobin;
//! use roster_client::resilience::{OutlierConfig, ResilienceConfig};
//! use roster_client::{CallError, Discovery, Idempotent, RetryConfig, RosterClient, RosterMiddleware, Router};
//!
//! let discovery = Discovery::new(RosterClient::new("http://127.0.0.1:8500")?);
//! let router = Router::builder(discovery)
//!     .balancer(WeightedRoundRobin::new)
//!     .config(ResilienceConfig {
//!         timeout: Some(Duration::from_secs(2)),
//!         outlier: Some(OutlierConfig { consecutive_failures: 5, ..Default::default() }),
//!         max_in_flight_per_endpoint: Some(100),
//!         retry: RetryConfig { max_retries: 2, ..Default::default() },
//!         ..Default::default()
//!     })
//!     .build();
//! let http = RosterMiddleware::new(router).client(reqwest::Client::new());
//!
//! // `web` is looked up in the registry; the request goes to one of its instances.
//! let page = http.get("http://web/index.html").send().await?;
//! // POST is not retried unless marked idempotent.
//! let created = http.post("http://web/orders").body("{}").with_extension(Idempotent).send().await;
//! if let Err(e) = &created {
//!     if CallError::from_middleware(e).is_some_and(CallError::is_overloaded) {
//!         eprintln!("web is saturated; shed load");
//!     }
//! }
//! # let _ = page; Ok(()) }
//! ```
//!
//! # Failing and hung instances
//!
//! By default each attempt has 2 s to get its response headers and a request
//! 5 s across its attempts; 5 failures in a row eject an instance for 30 s,
//! doubling with each ejection in a row up to 300 s, then a single request
//! probes it. An instance that has requests in flight and answers none of
//! them for longer than max(250 ms, 4 × its latency peak) is ejected at once,
//! before those requests time out, so a hung instance costs a few slow calls
//! whatever the length of the hang. See [`resilience`] for the details and
//! [`resilience::StallConfig`] for the settings.
#![warn(missing_docs)]

pub use roster_api as api;
pub mod balance;
mod batch;
mod bulkhead;
mod call;
mod client;
mod discovery;
mod error;
mod failover;
mod healthy;
mod middleware;
mod registration;
pub mod resilience;
mod retry;
mod router;
mod tower_discover;
mod watch;

pub use call::{Attempt, AttemptOutcome, Call};
pub use client::{CatalogFilter, InstanceQuery, RosterClient, TlsOptions};
pub use discovery::{DEFAULT_SETTLE, Discovery, Freshness, ServiceHandle, ServiceState};
pub use error::{CallError, Error, Unavailable};
pub use healthy::{HealthyState, HealthyWatch};
pub use middleware::RosterMiddleware;
pub use registration::{DROP_DEREGISTER_TIMEOUT, Registration, RegistrationStatus};
/// The `reqwest-middleware` this crate is built against, so callers use the
/// same version.
pub use reqwest_middleware;
pub use retry::{Idempotent, RetryConfig, is_idempotent};
pub use router::{DEFAULT_IDLE_TIMEOUT, EndpointStats, Router, RouterBuilder};
pub use tower_discover::{Change, ServiceDiscover};
pub use watch::{
    CatalogEventKind, CatalogStream, CatalogWatchEvent, EPOCH_HEADER, RawEvent, WatchEvent,
    WatchStream,
};
