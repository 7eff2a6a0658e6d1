//! A cache of serialized `GET /v1/services/{service}` bodies.
//!
//! Building the JSON of a service's instances dominates the read path (serde and
//! allocation, measured in bench/RESULTS.md). A body depends only on the service's
//! index and the health filter, so it is built once per change and shared by
//! every reader until the next one. Queries with a tag filter are not cached.

use std::sync::Arc;

use axum::body::Bytes;
use axum::http::HeaderValue;
use dashmap::DashMap;

use crate::catalog::Snapshot;

/// A cached answer: the body, and the `X-Roster-Index` value that goes with
/// it (made once, not formatted per read).
#[derive(Clone, Debug)]
pub struct CachedBody {
    /// The JSON.
    pub body: Bytes,
    /// The index it was built at, as a header value.
    pub index: HeaderValue,
}

/// Bodies by `all` flag (healthy only, all) and service, each with the index
/// it was built at. One map per flag, so a lookup borrows the service name
/// instead of building a key; hashed with foldhash, as every read of a
/// service looks here.
#[derive(Debug, Default)]
pub struct BodyCache {
    entries: [DashMap<Arc<str>, (u64, CachedBody), foldhash::fast::RandomState>; 2],
}

impl BodyCache {
    /// The body of `service` at exactly `index`, if built.
    pub fn get(&self, service: &str, all: bool, index: u64) -> Option<CachedBody> {
        self.entries[usize::from(all)]
            .get(service)
            .filter(|entry| entry.0 == index)
            .map(|entry| entry.1.clone())
    }

    /// Stores a body built from `snap`. Entries of services that no longer exist
    /// are dropped once a flag's map holds more than the live services (and a
    /// few), so it stays bounded by the catalog.
    pub fn put(&self, snap: &Snapshot, service: &Arc<str>, all: bool, index: u64, body: Bytes) {
        let body = CachedBody {
            body,
            index: HeaderValue::from(index),
        };
        let entries = &self.entries[usize::from(all)];
        if entries.len() > snap.services.len() + 32 {
            entries.retain(|name, _| snap.services.contains_key(name));
        }
        entries
            .entry(service.clone())
            .and_modify(|entry| {
                // A reader holding an older snapshot must not replace a newer body.
                if entry.0 < index {
                    *entry = (index, body.clone());
                }
            })
            .or_insert((index, body));
    }
}
