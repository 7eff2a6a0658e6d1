//! roster-registry's integration tests, in one binary: each module was a test
//! binary of its own, and every one of them linked the whole registry.

mod catalog_props;
mod checker;
mod fuzz_api;
mod http_api;
mod leases;
mod prometheus;
mod raft_store;
mod replication_props;
mod ui;
