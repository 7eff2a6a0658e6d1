//! Operational endpoints: liveness, readiness, metrics, the OpenAPI document.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{ApiError, AppState};

/// The OpenAPI 3.1 description of the native API.
pub const OPENAPI: &str = include_str!("../openapi.json");

pub(super) async fn health(State(state): State<AppState>) -> Response {
    let snap = state.registry.snapshot();
    let guard = state.registry.self_preservation();
    let now = tokio::time::Instant::now();
    let preserving = guard.active;
    let mut body = json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "index": snap.index,
        "services": snap.services.len(),
        "instances": snap.instance_count(),
        "self_preservation": preserving,
        "self_preservation_status": guard_json(&guard, now),
        "uptime_seconds": state.started.elapsed().as_secs(),
    });
    if let Some(c) = &state.cluster {
        let status = c.status();
        body["raft"] = json!({
            "node": status.node,
            "state": status.state,
            "term": status.term,
            "leader": status.leader,
            "applied": status.applied,
            "known_leader": c.known_leader(),
        });
    }
    let mut warnings = Vec::new();
    if let Some(f) = &state.federation {
        // A dead remote datacenter degrades the federation, not this node:
        // still 200, still "ok", so no orchestrator restarts a healthy node
        // over a WAN cut.
        let down = f.down();
        body["federation"] = json!({
            "status": if down.is_empty() { "ok" } else { "degraded" },
            "down": down,
            "datacenters": f.status(),
        });
        if !down.is_empty() {
            warnings.push(json!(format!(
                "federated datacenters unreachable: {} (calls to them fail at once; failover skips them)",
                down.join(", ")
            )));
        }
    }
    // Still 200: the process is alive and serving; the warning is for operators.
    if preserving {
        warnings.push(json!(format!(
            "self-preservation is on: too many leases ran out at once, so {} overdue leases are held (each for at most {} past its deadline; all held now are released within {}) until heartbeats come back; check the registry's network",
            guard.held,
            roster_api::duration::format(guard.max_hold),
            roster_api::duration::format(round_secs(guard.drained_within(now))),
        )));
    }
    if !warnings.is_empty() {
        body["warnings"] = json!(warnings);
    }
    Json(body).into_response()
}

/// The guard's state as `/health` shows it; times in seconds.
fn guard_json(guard: &crate::catalog::GuardStatus, now: tokio::time::Instant) -> serde_json::Value {
    json!({
        "active": guard.active,
        "since": guard.since.map(|s| {
            let ago = now.saturating_duration_since(s);
            std::time::SystemTime::now()
                .checked_sub(ago)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs())
        }),
        "active_seconds": guard.since.map(|s| now.saturating_duration_since(s).as_secs()),
        "held": guard.held,
        "oldest_hold_seconds": guard.oldest_hold(now).as_secs(),
        "max_hold_seconds": guard.max_hold.as_secs(),
        "drained_within_seconds": round_secs(guard.drained_within(now)).as_secs(),
        "drain_per_minute": (guard.drain_per_minute() * 10.0).round() / 10.0,
        "released_total": guard.released_total,
    })
}

/// Rounds up to whole seconds, so a bound is never understated.
fn round_secs(d: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

pub(super) async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else if state.cluster.is_some() {
        ApiError::unavailable("no Raft leader known yet (the cluster is forming or electing)")
            .into_response()
    } else {
        ApiError::unavailable("the catalog is still loading").into_response()
    }
}

pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    // The guard's gauges depend on the time (how long it has held): fresh.
    state.metrics().self_preservation_status(
        &state.registry.self_preservation(),
        tokio::time::Instant::now(),
    );
    let mut body = state.metrics().render(&state.registry.snapshot());
    if let Some(c) = &state.cluster {
        body.push_str(&raft_metrics(c));
    }
    if let Some(f) = &state.federation {
        body.push_str(&f.metrics_text());
    }
    let mut resp = (StatusCode::OK, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub(super) async fn openapi() -> Response {
    let mut resp = OPENAPI.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// One per-member value of the leader's view, if known.
type MemberGauge = fn(&roster_api::RaftMember) -> Option<u64>;

/// Prometheus lines for a cluster node.
fn raft_metrics(c: &crate::cluster::Cluster) -> String {
    use std::fmt::Write;
    let status = c.status();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    };
    gauge(
        "roster_raft_leader",
        "1 while this node is the Raft leader.",
        u64::from(status.leader == Some(status.node)),
    );
    gauge(
        "roster_raft_known_leader",
        "1 while this node knows a leader it heard from recently.",
        u64::from(c.known_leader()),
    );
    gauge("roster_raft_term", "Current Raft term.", status.term);
    gauge(
        "roster_raft_last_log_index",
        "Index of the last entry in this node's log.",
        status.last_log_index.unwrap_or(0),
    );
    gauge(
        "roster_raft_applied_index",
        "Index of the last entry applied to this node's catalog.",
        status.applied.unwrap_or(0),
    );
    gauge(
        "roster_raft_voters",
        "Voting members of the cluster.",
        status.members.iter().filter(|m| m.voter).count() as u64,
    );
    if let Some(ms) = c.last_contact_ms() {
        gauge(
            "roster_raft_last_contact_milliseconds",
            "Time since this node last heard from its leader (0 on a leader with a majority).",
            ms,
        );
    }
    // Per member, on the leader only: it alone replicates, so it alone knows.
    if status.replication_view.is_some() {
        let per_member: [(&str, &str, MemberGauge); 4] = [
            (
                "roster_raft_peer_reachable",
                "1 while the leader has had a successful append from this member within a few heartbeats.",
                |m| m.reachable.map(u64::from),
            ),
            (
                "roster_raft_peer_last_contact_milliseconds",
                "Time since this member last answered the leader's append with success.",
                |m| m.last_contact_ms,
            ),
            (
                "roster_raft_peer_lag_entries",
                "Entries this member's log is behind the leader's.",
                |m| m.lag,
            ),
            (
                "roster_raft_peer_voter",
                "1 for a voting member, 0 for a learner.",
                |m| Some(u64::from(m.voter)),
            ),
        ];
        for (name, help, value) in per_member {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for m in &status.members {
                if let Some(v) = value(m) {
                    let _ = writeln!(out, "{name}{{node=\"{}\"}} {v}", m.id);
                }
            }
        }
    }
    out
}
