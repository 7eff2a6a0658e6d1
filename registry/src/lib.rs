//! The roster service registry: catalog, leases, health checks, persistence,
//! replication and the HTTP API. The `roster` binary, its client commands and
//! the registrars are in `roster-cli`.
#![warn(missing_docs)]

pub mod acl;
pub mod catalog;
pub mod checks;
pub(crate) mod clock;
pub mod cluster;
pub mod config;
pub mod dns_view;
pub mod federation;
#[cfg(test)]
mod golden;
pub mod http;
pub mod lease;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod rows;
pub mod server;
pub(crate) mod store;
pub mod watch;
pub(crate) mod xds;
