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
use crate::catalog::Snapshot as CatalogSnapshot;
use crate::registry::Registry;
use crate::rows::InstanceRow;

type Result<T> = std::result::Result<T, StorageError<u64>>;
type Meta = SnapshotMeta<u64, openraft::BasicNode>;

fn sm_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write_state_machine(AnyError::error(e.to_string())).into()
}

/// A snapshot as it travels and is stored: the catalog's rows and indexes.
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
    pub services: std::collections::BTreeMap<String, u64>,
}

impl SnapshotData {
    fn of(snap: &CatalogSnapshot) -> Self {
        SnapshotData {
            index: snap.index,
            names_index: snap.names_index,
            instances: InstanceRow::all_of(snap),
            services: snap
                .services
                .iter()
                .map(|(name, svc)| (name.to_string(), svc.modify_index))
                .collect(),
        }
    }
}

/// A stored snapshot (the `snapshot` row of the log file): its metadata and
/// its bytes, a [`SnapshotData`] in JSON.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Stored {
    pub(crate) meta: Meta,
    pub(crate) data: Vec<u8>,
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
        if let Some(stored) = sm.log.get_meta_now::<Stored>(SNAPSHOT)? {
            sm.load(&stored.meta, &stored.data)?;
        }
        Ok(sm)
    }

    fn load(&mut self, meta: &Meta, data: &[u8]) -> Result<()> {
        let data: SnapshotData = serde_json::from_slice(data).map_err(sm_err)?;
        let instances = data
            .instances
            .into_iter()
            .map(InstanceRow::into_instance)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(sm_err)?;
        self.registry.install(
            data.index,
            data.names_index,
            instances,
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
        let data = serde_json::to_vec(&SnapshotData::of(&self.snap)).map_err(sm_err)?;
        let meta = Meta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id: self.id.clone(),
        };
        let stored = Stored {
            meta: meta.clone(),
            data,
        };
        self.log.put_meta(SNAPSHOT, &stored).await?;
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
                    replies.push(
                        ops.into_iter()
                            .map(|op| match op.into_command() {
                                Ok(cmd) => self
                                    .registry
                                    .apply_committed(cmd)
                                    .map(OutcomeWire::from)
                                    .map_err(|e| (&e).into()),
                                Err(e) => Err(super::ops::ErrorWire::Invalid {
                                    message: e.to_string(),
                                }),
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
        self.log.put_meta(SNAPSHOT, &stored).await
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>> {
        Ok(self
            .log
            .get_meta::<Stored>(SNAPSHOT)
            .await?
            .map(|s| Snapshot {
                meta: s.meta,
                snapshot: Box::new(Cursor::new(s.data)),
            }))
    }
}
