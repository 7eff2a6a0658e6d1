//! The Raft log, the vote and the last snapshot on disk, in one redb file.
//!
//! Entries are JSON rows keyed by log index. Every write is one redb
//! transaction, committed with fsync before openraft hears it is done; reads and
//! writes run on the blocking pool so an fsync never stalls the runtime.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ClusterError, TypeConfig};

const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("raft_meta");

/// Keys of the metadata table.
pub(super) const VOTE: &str = "vote";
pub(super) const COMMITTED: &str = "committed";
pub(super) const PURGED: &str = "last_purged";
pub(super) const SNAPSHOT: &str = "snapshot";
pub(super) const NODE_ID: &str = "node_id";

/// The file that holds a node's log, in its data directory.
pub const RAFT_FILE: &str = "raft.redb";

type Result<T> = std::result::Result<T, StorageError<u64>>;

fn read_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

fn write_err(e: impl ToString) -> StorageError<u64> {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

/// A node's durable Raft state: log entries, vote, commit point, snapshot.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    /// Opens (or creates) the log file in `dir`.
    pub fn open(dir: &Path) -> std::result::Result<LogStore, ClusterError> {
        std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let file = dir.join(RAFT_FILE);
        let db = Database::create(&file).map_err(|source| ClusterError::LogFile {
            path: file.clone(),
            source,
        })?;
        let tx = db.begin_write().map_err(redb::Error::from)?;
        tx.open_table(LOG).map_err(redb::Error::from)?;
        tx.open_table(META).map_err(redb::Error::from)?;
        tx.commit().map_err(redb::Error::from)?;
        Ok(LogStore { db: Arc::new(db) })
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(write_err)?
    }

    /// Reads one metadata value.
    pub(super) async fn get_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>> {
        self.blocking(move |db| get_meta(db, key)).await
    }

    /// Writes one metadata value durably.
    pub(super) async fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec(value).map_err(write_err)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(META)
                .map_err(write_err)?
                .insert(key, bytes.as_slice())
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
    }

    /// Reads one metadata value, blocking (start-up only).
    pub(super) fn get_meta_now<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>> {
        get_meta(&self.db, key)
    }
}

fn get_meta<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<T>> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(v) => serde_json::from_slice(v.value())
            .map(Some)
            .map_err(read_err),
        None => Ok(None),
    }
}

fn last_entry(db: &Database) -> Result<Option<LogId<u64>>> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(LOG).map_err(read_err)?;
    match table.last().map_err(read_err)? {
        Some((_, v)) => {
            let entry: Entry<TypeConfig> = serde_json::from_slice(v.value()).map_err(read_err)?;
            Ok(Some(entry.log_id))
        }
        None => Ok(None),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>> {
        let bounds: (Bound<u64>, Bound<u64>) =
            (range.start_bound().cloned(), range.end_bound().cloned());
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(read_err)?;
            let table = tx.open_table(LOG).map_err(read_err)?;
            let mut out = Vec::new();
            for row in table.range(bounds).map_err(read_err)? {
                let (_, v) = row.map_err(read_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(read_err)?);
            }
            Ok(out)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>> {
        self.blocking(|db| {
            let purged: Option<LogId<u64>> = get_meta(db, PURGED)?;
            let last = last_entry(db)?.or(purged);
            Ok(LogState {
                last_purged_log_id: purged,
                last_log_id: last,
            })
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<()> {
        self.put_meta(VOTE, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>> {
        self.get_meta(VOTE).await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<()> {
        self.put_meta(COMMITTED, &committed).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>> {
        Ok(self
            .get_meta::<Option<LogId<u64>>>(COMMITTED)
            .await?
            .flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let rows = entries
            .into_iter()
            .map(|e| serde_json::to_vec(&e).map(|v| (e.log_id.index, v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(write_err)?;
        let result = self
            .blocking(move |db| {
                let tx = db.begin_write().map_err(write_err)?;
                {
                    let mut table = tx.open_table(LOG).map_err(write_err)?;
                    for (index, bytes) in &rows {
                        table.insert(index, bytes.as_slice()).map_err(write_err)?;
                    }
                }
                tx.commit().map_err(write_err)
            })
            .await;
        callback.log_io_completed(
            result
                .as_ref()
                .map(|_| ())
                .map_err(|e| std::io::Error::other(e.to_string())),
        );
        result
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<()> {
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(LOG)
                .map_err(write_err)?
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<()> {
        let purged = serde_json::to_vec(&Some(log_id)).map_err(write_err)?;
        self.blocking(move |db| {
            let tx = db.begin_write().map_err(write_err)?;
            tx.open_table(META)
                .map_err(write_err)?
                .insert(PURGED, purged.as_slice())
                .map_err(write_err)?;
            tx.open_table(LOG)
                .map_err(write_err)?
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
            tx.commit().map_err(write_err)
        })
        .await
    }
}
