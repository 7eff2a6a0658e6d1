//! DNS front end for the roster service registry (server-side discovery).
//!
//! This crate will hold a hickory-server `RequestHandler` answering
//! `SERVICE.service.DOMAIN` (A/AAAA), SRV and TXT queries from a `ServiceView`
//! implemented by the registry. It is empty until the DNS issue lands; the crate
//! exists now so the workspace layout and its dependency arrows are fixed
//! (`registry -> dns -> client`).
#![warn(missing_docs)]
