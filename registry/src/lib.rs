//! The roster service registry: catalog, leases, HTTP API and the `roster` binary.
#![warn(missing_docs)]

pub mod acl;
pub mod agent;
pub mod catalog;
pub mod checks;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dns_view;
#[cfg(test)]
mod golden;
pub mod http;
pub mod k8s;
pub mod lease;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod remote;
pub mod rows;
pub mod server;
pub mod store;
pub mod watch;
pub mod xds;
