//! The replicated state machine: the registry's catalog, fed by committed log
//! entries, and its snapshots.
//!
//! The catalog itself lives in memory. Its durable copy is the last snapshot
//! (kept in the log file) plus the log after it: at start-up the snapshot is
//! loaded here and openraft re-applies the committed entries that follow.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::TypeConfig;
use super::log::{LogStore, SNAPSHOT};
use super::ops::{Applied, Batch, OutcomeWire};
use std::collections::BTreeMap;

use crate::catalog::{Instance, Snapshot as CatalogSnapshot};
use crate::registry::Registry;
use crate::rows::binary::{Reader, map_parallel, put_str, put_varint};
use crate::rows::{InstanceRow, RowError, decode_row, encode_row};

type Result<T> = std::result::Result<T, StorageError<u64>>;
type Meta = SnapshotMeta<u64, openraft::BasicNode>;

fn sm_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

/// A snapshot's data in JSON, as snapshots were written before the binary
/// form ([`encode_snapshot`]); still read. The catalog's rows and indexes.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SnapshotData {
    /// Catalog index.
    pub index: u64,
    /// Index of the last change to the set of names.
    pub names_index: u64,
    /// Every instance.
    pub instances: Vec<InstanceRow>,
    /// Every service's modify index.
    #[serde(default)]
    pub services: BTreeMap<String, u64>,
}

/// First byte of a binary snapshot; a JSON one starts with `{`.
pub(crate) const SNAPSHOT_BINARY: u8 = 2;

/// The binary form of a snapshot: at a million instances a third of the
/// JSON's size, and decoded on every core. Layout (varints and strings as in
/// [`crate::rows::encode_row`]):
///
/// ```text
/// version byte 0x02
/// index, names_index
/// services: count, then each name (string) and modify index
/// instances: count, then each row's byte length and binary row
/// ```
pub(crate) fn encode_snapshot(snap: &CatalogSnapshot) -> Vec<u8> {
    let count = snap.instance_count();
    let mut out = Vec::with_capacity(64 + count * 96);
    out.push(SNAPSHOT_BINARY);
    put_varint(&mut out, snap.index);
    put_varint(&mut out, snap.names_index);
    put_varint(&mut out, snap.services.len() as u64);
    for (name, svc) in &snap.services {
        put_str(&mut out, name);
        put_varint(&mut out, svc.modify_index);
    }
    put_varint(&mut out, count as u64);
    let mut row = Vec::new();
    for inst in snap.services.values().flat_map(|s| s.instances.values()) {
        row.clear();
        encode_row(&InstanceRow::from_instance(inst), &mut row);
        put_varint(&mut out, row.len() as u64);
        out.extend_from_slice(&row);
    }
    out
}

/// What a snapshot's bytes hold, ready for [`Registry::install`].
#[derive(Debug, PartialEq)]
pub(crate) struct Decoded {
    pub(crate) index: u64,
    pub(crate) names_index: u64,
    pub(crate) instances: Vec<Arc<Instance>>,
    pub(crate) services: BTreeMap<String, u64>,
}

/// Reads a snapshot in either form, binary or JSON; damage is an error
/// naming what was wrong, never a panic.
pub(crate) fn decode_snapshot(bytes: &[u8]) -> std::result::Result<Decoded, String> {
    let to_instances = |rows: &[InstanceRow]| {
        map_parallel(rows, |row| row.clone().into_instance().map(Arc::new))
            .map_err(|(n, e)| format!("snapshot instance {n} ({:?}): {e}", rows[n].id))
    };
    if bytes.first() != Some(&SNAPSHOT_BINARY) {
        let data: SnapshotData =
            serde_json::from_slice(bytes).map_err(|e| format!("snapshot: {e}"))?;
        return Ok(Decoded {
            index: data.index,
            names_index: data.names_index,
            instances: to_instances(&data.instances)?,
            services: data.services,
        });
    }
    let damaged = |e: RowError| format!("snapshot: {e}");
    let mut r = Reader::new(bytes, 1);
    let index = r.varint("the index").map_err(damaged)?;
    let names_index = r.varint("the names index").map_err(damaged)?;
    let n = r.len("the service count").map_err(damaged)?;
    let mut services = BTreeMap::new();
    for _ in 0..n {
        let name = r.string("a service name").map_err(damaged)?;
        let modify = r.varint("a service index").map_err(damaged)?;
        services.insert(name, modify);
    }
    let n = r.len("the instance count").map_err(damaged)?;
    let mut rows = Vec::with_capacity(n);
    for _ in 0..n {
        rows.push(r.slice("an instance").map_err(damaged)?);
    }
    r.finish().map_err(damaged)?;
    let instances = map_parallel(&rows, |bytes| {
        decode_row(bytes)
            .map_err(|e| e.to_string())
            .and_then(|row| row.into_instance().map(Arc::new).map_err(|e| e.to_string()))
    })
    .map_err(|(n, e)| format!("snapshot instance {n}: {e}"))?;
    Ok(Decoded {
        index,
        names_index,
        instances,
        services,
    })
}

/// A stored snapshot (the `snapshot` row of the log file): its metadata and
/// its bytes ([`encode_snapshot`]; a [`SnapshotData`] in JSON before).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) meta: Meta,
    pub(crate) data: Vec<u8>,
}

/// First byte of a `snapshot` row in the raw form: the metadata's JSON, then
/// the snapshot's bytes as they are. Rows of earlier versions are the whole
/// [`Stored`] in JSON (the bytes as an array of numbers, about 3.6 bytes per
/// byte) and start with `{`.
const STORED_RAW: u8 = 1;

impl Stored {
    /// The row: [`STORED_RAW`], the metadata's JSON length (u32, little
    /// endian), the metadata's JSON, the snapshot's bytes.
    fn to_row(&self) -> Result<Vec<u8>> {
        let meta = serde_json::to_vec(&self.meta).map_err(sm_err)?;
        let len = u32::try_from(meta.len()).map_err(sm_err)?;
        let mut row = Vec::with_capacity(5 + meta.len() + self.data.len());
        row.push(STORED_RAW);
        row.extend_from_slice(&len.to_le_bytes());
        row.extend_from_slice(&meta);
        row.extend_from_slice(&self.data);
        Ok(row)
    }

    /// Reads a row of either form; damaged bytes are an error naming what is
    /// wrong.
    fn from_row(mut row: Vec<u8>) -> Result<Stored> {
        let damaged = |what: &str| {
            StorageError::from(StorageIOError::read_state_machine(AnyError::error(
                format!("the stored snapshot is damaged: {what}"),
            )))
        };
        match row.first() {
            Some(&STORED_RAW) => {
                let len: [u8; 4] = row
                    .get(1..5)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| damaged("its metadata length is cut off"))?;
                let end = 5usize
                    .checked_add(u32::from_le_bytes(len) as usize)
                    .filter(|&end| end <= row.len())
                    .ok_or_else(|| damaged("its metadata is cut off"))?;
                let meta = serde_json::from_slice(&row[5..end])
                    .map_err(|e| damaged(&format!("its metadata does not decode: {e}")))?;
                let data = row.split_off(end);
                Ok(Stored { meta, data })
            }
            Some(b'{') => serde_json::from_slice(&row)
                .map_err(|e| damaged(&format!("the JSON row does not decode: {e}"))),
            Some(b) => Err(damaged(&format!("unknown row format {b}"))),
            None => Err(damaged("the row is empty")),
        }
    }
}

/// The state machine over a node's [`Registry`].
#[derive(Debug)]
pub struct StateMachine {
    registry: Arc<Registry>,
    log: LogStore,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    grace: Duration,
    snapshots: u64,
}

impl StateMachine {
    /// The state machine of `registry`, loaded from the last snapshot in `log`.
    pub fn open(registry: Arc<Registry>, log: LogStore, grace: Duration) -> Result<Self> {
        let mut sm = StateMachine {
            registry,
            log,
            last_applied: None,
            membership: StoredMembership::default(),
            grace,
            snapshots: 0,
        };
        if let Some(row) = sm.log.get_meta_raw_now(SNAPSHOT)? {
            let stored = Stored::from_row(row)?;
            sm.load(&stored.meta, &stored.data)?;
        }
        Ok(sm)
    }

    fn load(&mut self, meta: &Meta, data: &[u8]) -> Result<()> {
        let data = decode_snapshot(data).map_err(sm_err)?;
        self.registry.install(
            data.index,
            data.names_index,
            data.instances,
            self.grace,
            &data.services,
        );
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

/// Builds a snapshot from the catalog as it was when the builder was made.
#[derive(Debug)]
pub struct Builder {
    snap: Arc<CatalogSnapshot>,
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, openraft::BasicNode>,
    log: LogStore,
    id: String,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>> {
        let snap = self.snap.clone();
        let data = tokio::task::spawn_blocking(move || encode_snapshot(&snap))
            .await
            .map_err(sm_err)?;
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        self.log.put_meta_raw(SNAPSHOT, stored.to_row()?).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(
        &mut self,
    ) -> Result<(
        Option<LogId<u64>>,
        StoredMembership<u64, openraft::BasicNode>,
    )> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Vec<Applied>>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(Vec::new()),
                EntryPayload::Normal(Batch { ops }) => {
                    // The entry's commands are applied together, one
                    // publication per group; an op that does not decode
                    // keeps its place among the replies.
                    let mut invalid = Vec::with_capacity(ops.len());
                    let mut cmds = Vec::with_capacity(ops.len());
                    for op in ops {
                        match op.into_command() {
                            Ok(cmd) => {
                                cmds.push(cmd);
                                invalid.push(None);
                            }
                            Err(e) => invalid.push(Some(e.to_string())),
                        }
                    }
                    let mut applied = self.registry.apply_committed_all(cmds).into_iter();
                    replies.push(
                        invalid
                            .into_iter()
                            .map(|invalid| match invalid {
                                None => applied
                                    .next()
                                    .expect("a result per command")
                                    .map(OutcomeWire::from)
                                    .map_err(|e| (&e).into()),
                                Some(message) => Err(super::ops::ErrorWire::Invalid { message }),
                            })
                            .collect(),
                    );
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    replies.push(Vec::new());
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshots += 1;
        let id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshots),
            None => format!("0-0-{}", self.snapshots),
        };
        Builder {
            snap: self.registry.snapshot(),
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            log: self.log.clone(),
            id,
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<()> {
        let data = snapshot.into_inner();
        self.load(meta, &data)?;
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        self.log.put_meta_raw(SNAPSHOT, stored.to_row()?).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        let Some(row) = self.log.get_meta_raw(SNAPSHOT).await? else {
            return Ok(None);
        };
        let stored = Stored::from_row(row)?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use imbl::OrdMap;

    use super::*;
    use crate::catalog::ServiceState;

    fn stored(data: Vec<u8>) -> Stored {
        Stored {
            meta: Meta {
                last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(3, 1), 120)),
                last_membership: StoredMembership::default(),
                snapshot_id: "3-120-1".into(),
            },
            data,
        }
    }

    #[test]
    fn snapshot_rows_keep_their_bytes_raw_and_old_json_rows_still_load() {
        let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let row = stored(data.clone()).to_row().unwrap();
        assert_eq!(row[0], STORED_RAW);
        // The bytes as they are, after a short metadata header.
        assert!(row.len() < data.len() + 300, "{} bytes", row.len());
        assert!(row.ends_with(&data));
        let back = Stored::from_row(row.clone()).unwrap();
        assert_eq!(back.meta, stored(Vec::new()).meta);
        assert_eq!(back.data, data);

        // What earlier versions wrote: the whole row in JSON.
        let old = serde_json::to_vec(&stored(data.clone())).unwrap();
        assert_eq!(old[0], b'{');
        assert!(
            old.len() > 3 * data.len(),
            "the JSON form is the larger one"
        );
        let back = Stored::from_row(old).unwrap();
        assert_eq!(back.meta, stored(Vec::new()).meta);
        assert_eq!(back.data, data);

        // A row cut inside its header or metadata is an error, never a panic.
        // Past the metadata a cut row still reads, with fewer bytes: the
        // snapshot's own encoding carries its lengths and refuses them when
        // it is installed (decode_snapshot's tests).
        let end = 5 + u32::from_le_bytes(row[1..5].try_into().unwrap()) as usize;
        for cut in 0..end + 8 {
            let read = Stored::from_row(row[..cut].to_vec());
            if cut < end {
                assert!(read.is_err(), "cut at {cut}");
            } else {
                assert_eq!(read.unwrap().data, data[..cut - end]);
            }
        }
        assert!(Stored::from_row(vec![9, 0, 0, 0]).is_err());
        assert!(Stored::from_row(b"{not json".to_vec()).is_err());
    }

    fn golden_path(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name)
    }

    /// A golden row; the full one's TTL check is renamed, as its id `ttl`
    /// is the lease's and the catalog refuses it.
    fn row(name: &str) -> InstanceRow {
        let mut row: InstanceRow =
            serde_json::from_str(&std::fs::read_to_string(golden_path(name)).unwrap()).unwrap();
        for check in &mut row.checks {
            if check.definition.id.as_deref() == Some("ttl") {
                check.definition.id = Some("app".into());
            }
        }
        row
    }

    /// A catalog of the two golden rows, in services `web` and `db`.
    fn catalog() -> CatalogSnapshot {
        let mut services = OrdMap::new();
        for (name, modify) in [("store_row.json", 57), ("store_row_minimal.json", 3)] {
            let inst = row(name).into_instance().unwrap();
            let svc: &mut ServiceState = services.entry(inst.service.clone()).or_default();
            svc.modify_index = modify;
            svc.instances.insert(inst.id.clone(), Arc::new(inst));
        }
        CatalogSnapshot {
            index: 99,
            names_index: 98,
            services,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(32)
            .map(|line| line.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
            .collect()
    }

    fn decoded_of(snap: &CatalogSnapshot) -> Decoded {
        Decoded {
            index: snap.index,
            names_index: snap.names_index,
            instances: snap
                .services
                .values()
                .flat_map(|s| s.instances.values())
                .cloned()
                .collect(),
            services: snap
                .services
                .iter()
                .map(|(k, v)| (k.to_string(), v.modify_index))
                .collect(),
        }
    }

    /// The binary snapshot's bytes are pinned (`raft_snapshot_v2.hex`,
    /// `ROSTER_BLESS=1` writes it) and read back to the catalog.
    #[test]
    fn binary_snapshots_keep_their_format() {
        let snap = catalog();
        let bytes = encode_snapshot(&snap);
        crate::golden::pin_file(
            "raft_snapshot_v2.hex",
            &hex(&bytes),
            "the binary snapshot format changed",
        );
        assert_eq!(decode_snapshot(&bytes).unwrap(), decoded_of(&snap));
    }

    /// A snapshot in JSON, as nodes wrote them before (the layout of
    /// `raft_snapshot_data.json`, pinned by `golden.rs`), still loads.
    #[test]
    fn json_snapshots_still_load() {
        let data = SnapshotData {
            index: 99,
            names_index: 98,
            instances: vec![row("store_row.json")],
            services: BTreeMap::from([("web".to_owned(), 57)]),
        };
        let text = serde_json::to_string(&data).unwrap();
        let golden = std::fs::read_to_string(golden_path("raft_snapshot_data.json")).unwrap();
        let golden: serde_json::Value = serde_json::from_str(&golden).unwrap();
        let mut ours: serde_json::Value = serde_json::from_str(&text).unwrap();
        // The same layout as the golden file, but for the check's id.
        ours["instances"][0]["checks"][3]["definition"]["id"] = "ttl".into();
        assert_eq!(ours, golden);
        let decoded = decode_snapshot(text.as_bytes()).unwrap();
        assert_eq!((decoded.index, decoded.names_index), (99, 98));
        assert_eq!(decoded.services, BTreeMap::from([("web".to_owned(), 57)]));
        assert_eq!(
            decoded.instances,
            vec![Arc::new(row("store_row.json").into_instance().unwrap())]
        );
    }

    /// Every cut of a binary snapshot and every changed byte is an error or
    /// a snapshot, never a panic; a cut one is always an error.
    #[test]
    fn damaged_snapshots_are_errors() {
        let bytes = encode_snapshot(&catalog());
        for end in 1..bytes.len() {
            let err = decode_snapshot(&bytes[..end]).unwrap_err();
            assert!(err.starts_with("snapshot"), "{err}");
        }
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                let _ = decode_snapshot(&damaged);
            }
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(
            decode_snapshot(&long)
                .unwrap_err()
                .contains("after the end")
        );
    }
}
