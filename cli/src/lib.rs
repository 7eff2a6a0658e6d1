//! The `roster` binary's library: the command line, the client commands, and
//! the processes that follow a registry from outside it.
//!
//! - [`command`]: the clap command tree ([`Cli`]).
//! - [`client`]: the client commands ([`run_client`]): `register`,
//!   `services`, `watch`, `operator raft`, `snapshot` and the rest.
//! - [`agent`]: `roster agent`, a registrar that runs checks locally.
//! - [`k8s`]: `roster sync-k8s`, a registrar for Kubernetes Services.
//! - [`remote`]: `roster dns`, a DNS front end fed by a registry over HTTP.
//!
//! `roster serve` is the server itself, `roster_registry::server::Server`.
#![warn(missing_docs)]

pub mod agent;
pub mod client;
pub mod command;
pub mod k8s;
pub mod remote;

pub use client::{CliError, run_client};
pub use command::{Cli, ClientCommand, Command, GlobalArgs};
