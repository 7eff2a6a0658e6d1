//! roster's end-to-end tests, in one binary: real servers started in-process
//! on port 0 (and, where said, real processes), real clients, real DNS.

mod agent;
mod balancing;
mod batch;
mod callers;
mod catalog_watch;
mod cli_e2e;
mod cluster;
mod cluster_batch_forward;
mod consul_api;
mod consul_txn;
mod discovery;
mod dns_e2e;
mod dns_remote;
mod failover;
mod federation;
mod federation_faults;
mod health_checks;
mod hostile;
mod http2;
mod registration;
mod restart;
mod security;
mod sync_k8s;
mod watch;
mod xds;

/// The Rust examples of docs/client.md, compiled (see tests/build.rs).
mod doc_examples {
    include!(concat!(env!("OUT_DIR"), "/doc_examples.rs"));

    // Registering, discovering, calling through the middleware, at least:
    // an extraction that finds fewer fails the build.
    const _: () = assert!(COUNT >= 3, "too few examples found in docs/client.md");
}
