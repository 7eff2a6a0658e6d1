//! `GET /v1/catalog/watch`: one Server-Sent Events stream over a set of
//! services, a name prefix or the whole catalog, sending the matching state
//! once (`snapshot`) and then only what changes (`delta`).
//!
//! Deltas come from the catalog feed ([`crate::watch::CatalogDelta`]): built
//! once per change under the registry's write lock and shared by every stream;
//! a stream only filters them and writes them out.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use super::extract::QueryPairs;
use super::watch::{Blocking, KEEP_ALIVE, parse_token};
use super::{ApiError, AppState, with_index};
use crate::catalog::Snapshot;
use crate::metrics::{WatchKind, WatcherGuard};
use crate::model::ServiceName;
use crate::registry::Registry;
use crate::watch::{CatalogDelta, CatalogFilter, merge_deltas};

/// Most `?service=` names one catalog stream may list (use a prefix, or no
/// filter, for more).
pub const MAX_CATALOG_SERVICES: usize = 4096;
/// Most `?prefix=` values one catalog stream may list.
pub const MAX_CATALOG_PREFIXES: usize = 64;

/// `GET /v1/catalog/watch?service=a&service=b&prefix=web-`.
pub(super) async fn watch_catalog(
    State(state): State<AppState>,
    query: QueryPairs,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let filter = parse_filter(&query)?;
    // As on the per-service streams: a token of another run (or garbled)
    // starts the stream over with a snapshot rather than failing it.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_token)
        .and_then(|(epoch, index)| (epoch == state.epoch).then_some(index));
    let watcher = CatalogWatcher::new(&state, filter, resume);
    let events = futures_util::stream::unfold(watcher, |mut w| async move {
        let event = w.next().await?;
        Some((Ok::<_, Infallible>(event), w))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// `GET /v1/catalog/changes?index=N&epoch=E&wait=D` (plus the stream's
/// filters): the blocking form. With the index and epoch of the client's last
/// answer, every change since, merged into one delta, as soon as there is one
/// for a matching service (or an empty delta at the current index when `wait`
/// runs out); without them, or when the registry no longer keeps the changes
/// since (another run, or more than the kept history), a snapshot at once.
pub(super) async fn catalog_changes(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let filter = parse_filter(&query)?;
    let blocking = Blocking::parse(&query)?;
    let epoch = match query.all("epoch").last() {
        None => None,
        Some(raw) => Some(u64::from_str_radix(raw.trim(), 16).map_err(|_| {
            ApiError::invalid("epoch", format!("epoch is hexadecimal, got {raw:?}"))
        })?),
    };
    let resume = blocking
        .filter(|b| b.index > 0 && epoch == Some(state.epoch))
        .map(|b| b.index);
    let registry = &state.registry;
    let _guard = blocking.map(|_| registry.metrics().watcher(WatchKind::Blocking));
    let mut sub = registry.subscribe_catalog(resume);
    let snapshot = |snap: &Snapshot| {
        // `CatalogChanges` with `snapshot: true`: the event's fields follow
        // the flag in one object.
        let event = registry.catalog_snapshot_json(snap, &filter);
        let body = format!(
            "{{\"snapshot\":true,\"epoch\":\"{:x}\",{}",
            state.epoch,
            &event[1..]
        );
        with_index(
            snap.index,
            (
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                body,
            ),
        )
    };
    if let Some(snap) = &sub.snapshot {
        return Ok(snapshot(snap));
    }
    let mut deltas = sub.backlog;
    let mut at = deltas.last().map_or(sub.at, |d| d.index);
    let passes = |d: &CatalogDelta| d.services.iter().any(|s| filter.matches(&s.service));
    if !deltas.iter().any(|d| passes(d)) {
        let wait = blocking.map_or(std::time::Duration::ZERO, |b| b.wait);
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            let got = tokio::select! {
                () = &mut deadline => break,
                () = state.shutdown.cancelled() => break,
                got = sub.changes.recv() => got,
            };
            match got {
                Ok(delta) if delta.index <= at => {}
                Ok(delta) if delta.prev > at => return Ok(snapshot(&registry.snapshot())),
                Ok(delta) => {
                    at = delta.index;
                    let done = passes(&delta);
                    deltas.push(delta);
                    if done {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => return Ok(snapshot(&registry.snapshot())),
                Err(RecvError::Closed) => break,
            }
        }
    }
    let event = merge_deltas(&deltas, &filter, at);
    Ok(with_index(
        at,
        axum::Json(roster_api::CatalogChanges {
            snapshot: false,
            epoch: format!("{:x}", state.epoch),
            event,
        }),
    ))
}

fn parse_filter(query: &QueryPairs) -> Result<CatalogFilter, ApiError> {
    let mut filter = CatalogFilter::default();
    for raw in query.all("service") {
        filter
            .services
            .insert(ServiceName::parse(raw)?.as_arc().clone());
    }
    if filter.services.len() > MAX_CATALOG_SERVICES {
        return Err(ApiError::invalid(
            "service",
            format!(
                "at most {MAX_CATALOG_SERVICES} services per stream; use ?prefix= or no filter"
            ),
        ));
    }
    for raw in query.all("prefix") {
        let prefix = raw.to_ascii_lowercase();
        if prefix.len() > 63
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ApiError::invalid(
                "prefix",
                format!(
                    "a prefix is the start of a service name ([a-z0-9-], at most 63), got {raw:?}"
                ),
            ));
        }
        if prefix.is_empty() {
            // The empty prefix matches every service.
            return Ok(CatalogFilter::default());
        }
        if !filter.prefixes.contains(&prefix) {
            filter.prefixes.push(prefix);
        }
    }
    if filter.prefixes.len() > MAX_CATALOG_PREFIXES {
        return Err(ApiError::invalid(
            "prefix",
            format!("at most {MAX_CATALOG_PREFIXES} prefixes per stream"),
        ));
    }
    Ok(filter)
}

/// One catalog stream. Events are produced only when the HTTP body is polled:
/// a stalled reader holds at most the feed's bounded buffer, and one that falls
/// behind it gets a fresh snapshot instead of the deltas it missed.
struct CatalogWatcher {
    registry: Arc<Registry>,
    shutdown: CancellationToken,
    filter: CatalogFilter,
    epoch: u64,
    /// Global index the reader is at (through every delta, matching or not).
    at: u64,
    snapshot: Option<Arc<Snapshot>>,
    backlog: VecDeque<Arc<CatalogDelta>>,
    changes: broadcast::Receiver<Arc<CatalogDelta>>,
    _guard: WatcherGuard,
}

impl CatalogWatcher {
    fn new(state: &AppState, filter: CatalogFilter, resume: Option<u64>) -> Self {
        let registry = state.registry.clone();
        let guard = registry.metrics().watcher(WatchKind::Stream);
        let sub = registry.subscribe_catalog(resume);
        CatalogWatcher {
            shutdown: state.shutdown.clone(),
            filter,
            epoch: state.epoch,
            at: sub.at,
            snapshot: sub.snapshot.map(Arc::new),
            backlog: sub.backlog.into(),
            changes: sub.changes,
            registry,
            _guard: guard,
        }
    }

    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(snap) = self.snapshot.take() {
                self.at = snap.index;
                self.registry.metrics().watch_event();
                return Some(
                    Event::default()
                        .event("snapshot")
                        .id(format!("{:x}.{}", self.epoch, snap.index))
                        .data(self.registry.catalog_snapshot_json(&snap, &self.filter)),
                );
            }
            let delta = match self.backlog.pop_front() {
                Some(delta) => delta,
                None => {
                    let shutdown = self.shutdown.clone();
                    let got = tokio::select! {
                        () = shutdown.cancelled() => return None,
                        got = self.changes.recv() => got,
                    };
                    match got {
                        Ok(delta) => delta,
                        Err(RecvError::Lagged(_)) => {
                            self.resync();
                            continue;
                        }
                        Err(RecvError::Closed) => return None,
                    }
                }
            };
            if delta.index <= self.at {
                // Already in the snapshot sent.
                continue;
            }
            if delta.prev > self.at {
                // A gap (cannot happen with an unbroken feed, but deltas must
                // never be applied out of line): start over.
                self.resync();
                continue;
            }
            self.at = delta.index;
            if let Some(json) = delta.json_for(&self.filter) {
                self.registry.metrics().watch_event();
                return Some(
                    Event::default()
                        .event("delta")
                        .id(format!("{:x}.{}", self.epoch, delta.index))
                        .data(json),
                );
            }
        }
    }

    /// The reader fell behind the feed's buffer: what it missed is replaced by
    /// the current state; later deltas follow from the receiver, which has
    /// skipped ahead (the ones the snapshot already holds are dropped).
    fn resync(&mut self) {
        self.registry.metrics().watch_coalesced();
        self.backlog.clear();
        self.snapshot = Some(self.registry.snapshot());
    }
}
