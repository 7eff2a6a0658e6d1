//! Failover in the HTTP faces: a healthy-only answer about a service with
//! no healthy local instance comes from the first datacenter on its failover
//! list that has some ([`crate::federation::Failover`] decides which).
//!
//! Such an answer carries `X-Roster-Datacenter` (and `datacenter` in the
//! native JSON), and an index with
//! [`crate::federation::failover::FAILOVER_INDEX_BIT`] set that moves
//! whenever the local service or the remote answer moves, so a blocking
//! query waiting on it wakes on either, and the switch to another datacenter
//! and back is a change like any other.

use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use axum::response::Response;
use roster_api::Health;
use tokio::sync::broadcast::error::RecvError;

use super::AppState;
use super::federation::Forwarded;
use super::watch::Blocking;
use crate::catalog::Snapshot;
use crate::federation::failover::LINGER;
use crate::federation::{Failover, RemoteAnswer};
use crate::metrics::WatchKind;
use crate::model::ServiceName;

/// The failover resolver of `service`, when it has a list and the call is
/// not one another datacenter forwarded (those are answered from the local
/// catalog alone: failover never chains across datacenters).
pub(super) fn failover_for(
    state: &AppState,
    service: &str,
    forwarded: Option<&Forwarded>,
) -> Option<Failover> {
    if forwarded.is_some() {
        return None;
    }
    let f = state.federation.as_ref()?.failover();
    (!f.targets(service).is_empty()).then(|| f.clone())
}

/// Whether the local datacenter has a healthy (passing or warning,
/// not in maintenance) instance of `service`.
pub(super) fn local_healthy(snap: &Snapshot, service: &str) -> bool {
    snap.services.get(service).is_some_and(|svc| {
        svc.instances
            .values()
            .any(|i| i.health() != Health::Critical)
    })
}

/// The remote answer that replaces the local one now, if any, and the index
/// of the answer (the local service's when there is none).
pub(super) async fn current(
    state: &AppState,
    service: &str,
    failover: &Failover,
) -> (u64, Option<Arc<RemoteAnswer>>) {
    let snap = state.registry.snapshot();
    let local = snap.service_index(service);
    if local_healthy(&snap, service) {
        return (local, None);
    }
    match failover.resolve(service).await {
        Some(remote) => (remote.failover_index(local), Some(remote)),
        None => (local, None),
    }
}

/// Holds a blocking query on a service with a failover list until its
/// answer's index differs from the client's: woken by local changes of the
/// service and by changes of the remote answers, keeping the remote pollers
/// alive while it waits.
pub(super) async fn wait(
    state: &AppState,
    service: &ServiceName,
    q: Blocking,
    failover: &Failover,
) {
    let registry = &state.registry;
    let _guard = registry.metrics().watcher(WatchKind::Blocking);
    let mut local = registry.subscribe(service);
    let mut remote = failover.subscribe();
    let deadline = tokio::time::sleep(q.wait);
    tokio::pin!(deadline);
    let mut keep_alive = tokio::time::interval(LINGER / 3);
    keep_alive.tick().await;
    loop {
        let (index, _) = current(state, service.as_str(), failover).await;
        if q.ready(index) {
            return;
        }
        tokio::select! {
            () = &mut deadline => return,
            () = state.shutdown.cancelled() => return,
            r = local.changes.recv() => if let Err(RecvError::Closed) = r { return },
            r = remote.changed() => if r.is_err() { return },
            _ = keep_alive.tick() => failover.touch(service.as_str()),
        }
    }
}

/// Marks `resp` as answered by datacenter `dc`.
pub(super) fn mark(resp: &mut Response, dc: &str) {
    if let Ok(v) = HeaderValue::from_str(dc) {
        resp.headers_mut()
            .insert(HeaderName::from_static(roster_api::DATACENTER_HEADER), v);
    }
}
