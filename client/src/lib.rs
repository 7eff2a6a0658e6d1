//! Client library for the roster service registry.
//!
//! - [`api`]: the wire types shared with the server.
//! - [`RosterClient`]: typed calls for every native API endpoint.
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
#![warn(missing_docs)]

pub mod api;
pub mod balance;
mod client;
mod discovery;
mod error;
mod registration;
pub mod resilience;
mod watch;

pub use client::{InstanceQuery, RosterClient};
pub use discovery::{Discovery, ServiceHandle, ServiceState};
pub use error::Error;
pub use registration::{Registration, RegistrationStatus};
pub use watch::{RawEvent, WatchEvent, WatchStream};
