//! `GET /v1/snapshot` and `PUT /v1/snapshot`: backups of the whole catalog.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::extract::parse_json;
use super::{ApiError, AppState, with_index};
use crate::catalog::{Command, MAX_RESTORE_INDEX};
use crate::model::{InstanceId, InstanceSpec, ServiceName};
use crate::rows::{FORMAT_VERSION, InstanceRow};

/// Largest snapshot accepted by a restore: a million instances are about
/// 270 MB of JSON, so 1 GiB leaves room for larger ones and their metadata.
/// The route is an admin's; the body is held in memory while it is read.
pub const SNAPSHOT_LIMIT: usize = 1024 * 1024 * 1024;

/// The snapshot file: versioned, self-describing JSON.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotFile {
    /// Always `roster-snapshot`.
    pub format: String,
    /// Format version.
    pub version: u64,
    /// Catalog index when the snapshot was taken; a restore refuses one
    /// above [`MAX_RESTORE_INDEX`] (2^63).
    pub index: u64,
    /// Index of the last change to the set of names.
    #[serde(default)]
    pub names_index: u64,
    /// Every instance.
    pub instances: Vec<InstanceRow>,
}

const FORMAT: &str = "roster-snapshot";

pub(super) async fn save(State(state): State<AppState>) -> Response {
    let snap = state.registry.snapshot();
    let file = SnapshotFile {
        format: FORMAT.into(),
        version: FORMAT_VERSION,
        index: snap.index,
        names_index: snap.names_index,
        instances: InstanceRow::all_of(&snap),
    };
    with_index(snap.index, Json(file))
}

pub(super) async fn restore(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let file: SnapshotFile = parse_json(&body)?;
    if file.format != FORMAT {
        return Err(ApiError::invalid(
            "format",
            format!("not a roster snapshot: format {:?}", file.format),
        ));
    }
    if file.version != FORMAT_VERSION {
        return Err(ApiError::invalid(
            "version",
            format!(
                "snapshot version {} cannot be read; this roster reads version {FORMAT_VERSION}",
                file.version
            ),
        ));
    }
    // A restore continues at the file's index; one near u64::MAX would leave
    // the catalog no room and wrap it (the catalog refuses it too, for the
    // replicated path).
    if file.index > MAX_RESTORE_INDEX {
        return Err(ApiError::invalid(
            "index",
            format!(
                "index {} is above {MAX_RESTORE_INDEX}, the highest a restore may set",
                file.index
            ),
        ));
    }
    if file.names_index > file.index {
        return Err(ApiError::invalid(
            "names_index",
            format!(
                "names_index {} is above the snapshot's index {}",
                file.names_index, file.index
            ),
        ));
    }
    let mut instances = Vec::with_capacity(file.instances.len());
    let mut seen = std::collections::HashSet::new();
    for (n, stored) in file.instances.into_iter().enumerate() {
        let at = |e: crate::model::FieldError| {
            ApiError::invalid(format!("instances[{n}].{}", e.field), e.detail)
        };
        let service = ServiceName::parse(&stored.service).map_err(at)?;
        let id = InstanceId::parse(&stored.id).map_err(at)?;
        if !seen.insert(id.clone()) {
            return Err(ApiError::invalid(
                format!("instances[{n}].id"),
                format!("duplicate instance id {id}"),
            ));
        }
        // The same rules as a registration, so a restore cannot smuggle in what
        // the API would refuse.
        InstanceSpec::from_request(stored.to_request(), None, &state.limits).map_err(at)?;
        let mut inst = stored
            .into_instance()
            .map_err(|e| ApiError::invalid(format!("instances[{n}].checks"), e.to_string()))?;
        inst.service = service.as_arc().clone();
        inst.id = id.as_arc().clone();
        instances.push(Arc::new(inst));
    }
    let out = state
        .registry
        .write(Command::Restore {
            index: file.index,
            names_index: file.names_index,
            instances,
            grace: state.lease_grace,
            stamp: true,
        })
        .await?;
    let snap = state.registry.snapshot();
    Ok(with_index(
        out.index,
        Json(serde_json::json!({ "index": out.index, "instances": snap.instance_count() })),
    ))
}
