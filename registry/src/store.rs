//! Durable catalog on disk (redb), with group commit.
//!
//! The store holds the catalog's *state*, not a log of commands: one row per
//! instance ([`InstanceRow`] in the compact binary form of [`crate::rows::encode_row`];
//! JSON in stores written before format 2, still read) plus the global
//! index, so it stays as large as the catalog however long the registry runs.
//! At start-up the rows are decoded on every core. Writers hand their changed instances to
//! one writer thread; it takes everything queued, writes it in one transaction and
//! fsyncs once, then acknowledges every writer of the group. Heartbeats that
//! change nothing never reach it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::catalog::Instance;
use crate::rows::{FORMAT_VERSION, InstanceRow, STORE_FORMAT, decode_row, encode_row};

const INSTANCES: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("instances");
const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const DB_FILE: &str = "catalog.redb";
const LOCK_FILE: &str = "LOCK";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data directory.
    #[error("data directory {dir} is in use by another roster process (lock held on {lock})")]
    Locked {
        /// The directory.
        dir: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// The store file cannot be opened or read.
    #[error("cannot open the catalog store {file}: {message}")]
    Open {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A row or the metadata cannot be decoded.
    #[error("the catalog store {file} is corrupt: {message}")]
    Corrupt {
        /// The file.
        file: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A write failed; the writer keeps the changes and retries them with
    /// the next write.
    #[error("writing the catalog store failed: {0}")]
    Write(#[source] Arc<redb::Error>),
    /// The writer thread cannot be started.
    #[error("cannot start the catalog store's writer: {0}")]
    Spawn(#[source] std::io::Error),
    /// The task loading the catalog panicked or was cancelled.
    #[error("loading the catalog failed: {0}")]
    Load(#[source] tokio::task::JoinError),
    /// The writer thread is gone (shutdown).
    #[error("the store writer has stopped")]
    Stopped,
}

/// What the store held at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Global index.
    pub index: u64,
    /// Index of the last change to the set of service names.
    pub names_index: u64,
    /// Every instance.
    pub instances: Vec<Arc<Instance>>,
}

/// A set of changes to write together.
#[derive(Debug)]
pub struct WriteBatch {
    /// Global index after the changes.
    pub index: u64,
    /// Names index after the changes.
    pub names_index: u64,
    /// Remove every stored instance first (a restore).
    pub replace_all: bool,
    /// Changed instances by id; `None` removes one.
    pub changes: Vec<(Arc<str>, Option<Arc<Instance>>)>,
    /// Told once the batch is on disk, if somebody waits.
    pub done: Option<oneshot::Sender<Result<(), StoreError>>>,
}

/// Handle to the writer thread. Dropping it stops the thread after it has
/// written everything queued.
#[derive(Debug)]
pub struct Store {
    tx: Option<mpsc::Sender<WriteBatch>>,
    thread: Option<std::thread::JoinHandle<()>>,
    file: PathBuf,
    _lock: File,
}

impl Store {
    /// Locks `dir`, opens (or creates) the store in it and reads everything.
    /// Without a store file the catalog starts empty; a file that holds no
    /// valid store (empty, truncated, foreign) is refused, naming it.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            file: dir.to_owned(),
            message: format!("cannot create the data directory: {e}"),
        })?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::Open {
                file: lock_path.clone(),
                message: e.to_string(),
            })?;
        if lock.try_lock().is_err() {
            return Err(StoreError::Locked {
                dir: dir.to_owned(),
                lock: lock_path,
            });
        }
        let file = dir.join(DB_FILE);
        match std::fs::metadata(&file) {
            // redb would initialize an empty file as a new database: the
            // catalog would silently start empty in place of a store that was
            // emptied (truncated, a failed copy). Roster never writes an empty
            // store file (see `create_store`), so one is damage.
            Ok(meta) if meta.len() == 0 => {
                return Err(corrupt(
                    &file,
                    "the file is empty (0 bytes) and holds no store; restore it from a backup \
                     (or a snapshot), or remove it to start with an empty catalog",
                ));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_store(dir, &file)?,
            Err(e) => {
                return Err(StoreError::Open {
                    file: file.clone(),
                    message: e.to_string(),
                });
            }
        }
        // redb asserts on some damaged files (a truncated one, for instance)
        // instead of returning an error: report those as corruption too.
        let created = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_redb(&file)));
        let db = match created {
            Ok(Ok(db)) => db,
            Ok(Err(e)) => {
                return Err(StoreError::Open {
                    file: file.clone(),
                    message: e.to_string(),
                });
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unreadable".into());
                return Err(corrupt(&file, format!("damaged file ({message})")));
            }
        };
        let loaded = load(&db, &file)?;
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("roster-store".into())
            .spawn(move || writer(db, rx))
            .map_err(StoreError::Spawn)?;
        Ok((
            Store {
                tx: Some(tx),
                thread: Some(thread),
                file,
                _lock: lock,
            },
            loaded,
        ))
    }

    /// The store file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Queues a batch. Never blocks.
    pub fn submit(&self, batch: WriteBatch) {
        if let Some(tx) = &self.tx
            && let Err(mpsc::SendError(batch)) = tx.send(batch)
            && let Some(done) = batch.done
        {
            let _ = done.send(Err(StoreError::Stopped));
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Most bytes of a store's (or Raft log's) pages redb keeps in memory.
/// Its default is 1 GiB, and every page read while loading stays cached: at
/// a million instances that was the whole 134 MB store file, held for the
/// process's life though nothing reads it again (writes touch a few pages
/// per batch, and the kernel's page cache has the file anyway).
pub(crate) const REDB_CACHE: usize = 16 * 1024 * 1024;

/// Opens (or creates) the redb file at `file` with [`REDB_CACHE`].
pub(crate) fn open_redb(file: &Path) -> Result<Database, redb::DatabaseError> {
    Database::builder().set_cache_size(REDB_CACHE).create(file)
}

/// Creates a new, empty store at `file` whole: initialized under a temporary
/// name, synced, then renamed into place, so a crash never leaves a partial
/// (or empty) store file behind that a later start would have to refuse.
fn create_store(dir: &Path, file: &Path) -> Result<(), StoreError> {
    let open_err = |path: &Path, e: &dyn std::fmt::Display| StoreError::Open {
        file: path.to_owned(),
        message: e.to_string(),
    };
    let tmp = dir.join(format!("{DB_FILE}.new"));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(open_err(&tmp, &e)),
    }
    drop(Database::create(&tmp).map_err(|e| open_err(&tmp, &e))?);
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| open_err(&tmp, &e))?;
    std::fs::rename(&tmp, file).map_err(|e| open_err(file, &e))?;
    // The rename is durable once the directory is synced.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| open_err(dir, &e))
}

fn corrupt(file: &Path, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        file: file.to_owned(),
        message: message.to_string(),
    }
}

fn load(db: &Database, file: &Path) -> Result<Loaded, StoreError> {
    let txn = db.begin_read().map_err(|e| corrupt(file, e))?;
    let meta = match txn.open_table(META) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(corrupt(file, e)),
    };
    let Some(meta) = meta else {
        return Ok(Loaded::default());
    };
    let get = |key: &str| -> Result<Option<u64>, StoreError> {
        Ok(meta
            .get(key)
            .map_err(|e| corrupt(file, e))?
            .map(|v| v.value()))
    };
    match get("format")? {
        Some(FORMAT_VERSION | STORE_FORMAT) => {}
        Some(v) => {
            return Err(corrupt(
                file,
                format!(
                    "format version {v}; this roster reads versions {FORMAT_VERSION} and {STORE_FORMAT}"
                ),
            ));
        }
        None => return Err(corrupt(file, "no format version")),
    }
    let index = get("index")?.ok_or_else(|| corrupt(file, "no index"))?;
    let names_index = get("names_index")?.unwrap_or(0);
    let table = txn.open_table(INSTANCES).map_err(|e| corrupt(file, e))?;
    let rows = table.iter().map_err(|e| corrupt(file, e))?.map(|row| {
        let (key, value) = row.map_err(|e| corrupt(file, e))?;
        Ok((key.value().to_owned(), value.value().to_vec()))
    });
    let started = std::time::Instant::now();
    let instances = decode_parallel(rows, |id, bytes| {
        decode(file, index, id, bytes).map(Arc::new)
    })?;
    tracing::info!(
        instances = instances.len(),
        ms = started.elapsed().as_millis() as u64,
        "catalog store read"
    );
    Ok(Loaded {
        index,
        names_index,
        instances,
    })
}

/// One stored row back to an instance, checked against the catalog index.
fn decode(file: &Path, index: u64, key: &str, bytes: &[u8]) -> Result<Instance, StoreError> {
    let stored = decode_row(bytes).map_err(|e| corrupt(file, format!("instance {key:?}: {e}")))?;
    if stored.modify_index > index {
        return Err(corrupt(
            file,
            format!("instance {key:?} is newer than the catalog index"),
        ));
    }
    stored
        .into_instance()
        .map_err(|e| corrupt(file, format!("instance {key:?}: {e}")))
}

/// Rows are handed to the decoding threads in chunks of this many.
const CHUNK: usize = 4096;

/// Decodes `rows` (id, bytes) with `decode` on every core while this thread
/// reads them; the first error wins. The instances come back in no
/// particular order.
fn decode_parallel<I, F>(rows: I, decode: F) -> Result<Vec<Arc<Instance>>, StoreError>
where
    I: Iterator<Item = Result<(String, Vec<u8>), StoreError>>,
    F: Fn(&str, &[u8]) -> Result<Arc<Instance>, StoreError> + Sync,
{
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (tx, rx) = mpsc::sync_channel::<Vec<(String, Vec<u8>)>>(workers * 2);
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<Vec<Arc<Instance>>, StoreError> {
                    let mut out = Vec::new();
                    loop {
                        // The lock is held only to take the next chunk.
                        let chunk = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok(chunk) = chunk else { return Ok(out) };
                        for (id, bytes) in &chunk {
                            out.push(decode(id, bytes)?);
                        }
                    }
                })
            })
            .collect();
        let mut read_error = None;
        let mut chunk = Vec::with_capacity(CHUNK);
        for row in rows {
            match row {
                Ok(row) => chunk.push(row),
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            }
            if chunk.len() == CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                // A send fails only when every worker has stopped on an error.
                if tx.send(full).is_err() {
                    break;
                }
            }
        }
        if !chunk.is_empty() {
            let _ = tx.send(chunk);
        }
        drop(tx);
        let mut instances = Vec::new();
        let mut first_error = read_error;
        for handle in handles {
            match handle.join() {
                Ok(Ok(mut part)) => {
                    if instances.is_empty() {
                        instances = part;
                    } else {
                        instances.append(&mut part);
                    }
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(instances),
        }
    })
}

/// The writer thread: group commit until the channel closes.
fn writer(db: Database, rx: mpsc::Receiver<WriteBatch>) {
    // Changes of a group that failed to commit, written again with the next group.
    let mut carried: Vec<WriteBatch> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut group = std::mem::take(&mut carried);
        group.push(first);
        group.extend(rx.try_iter());
        let result = write_group(&db, &group).map_err(Arc::new);
        if let Err(e) = &result {
            tracing::error!(error = %e, "catalog store write failed; the changes are kept and retried with the next write");
        }
        for batch in &mut group {
            if let Some(done) = batch.done.take() {
                let _ = done.send(result.clone().map_err(StoreError::Write));
            }
        }
        if result.is_err() {
            carried = group;
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if !carried.is_empty()
        && let Err(e) = write_group(&db, &carried)
    {
        tracing::error!(error = %e, "catalog store: changes lost at shutdown");
    }
}

fn write_group(db: &Database, group: &[WriteBatch]) -> Result<(), redb::Error> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        let mut table = txn.open_table(INSTANCES)?;
        let mut row = Vec::new();
        for batch in group {
            if batch.replace_all {
                table.retain(|_, _| false)?;
            }
            for (id, change) in &batch.changes {
                match change {
                    Some(inst) => {
                        row.clear();
                        encode_row(&InstanceRow::from_instance(inst), &mut row);
                        table.insert(&**id, row.as_slice())?;
                    }
                    None => {
                        table.remove(&**id)?;
                    }
                }
            }
        }
        let last = group.last().expect("groups are never empty");
        meta.insert("format", STORE_FORMAT)?;
        meta.insert("index", last.index)?;
        meta.insert("names_index", last.names_index)?;
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("roster-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A golden row; the full one's TTL check is renamed, as its id `ttl`
    /// is the lease's and the catalog refuses it.
    fn golden_row(name: &str) -> InstanceRow {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden")
            .join(name);
        let mut row: InstanceRow =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for check in &mut row.checks {
            if check.definition.id.as_deref() == Some("ttl") {
                check.definition.id = Some("app".into());
            }
        }
        row
    }

    /// A store as format 1 wrote it: JSON rows, `meta.format` 1.
    fn write_format_1(dir: &Path, rows: &[InstanceRow], index: u64) {
        std::fs::create_dir_all(dir).unwrap();
        let db = Database::create(dir.join(DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(META).unwrap();
            let mut table = txn.open_table(INSTANCES).unwrap();
            for row in rows {
                table
                    .insert(row.id.as_str(), serde_json::to_vec(row).unwrap().as_slice())
                    .unwrap();
            }
            meta.insert("format", FORMAT_VERSION).unwrap();
            meta.insert("index", index).unwrap();
            meta.insert("names_index", 2).unwrap();
        }
        txn.commit().unwrap();
    }

    fn sorted(v: Vec<Arc<Instance>>) -> Vec<Instance> {
        let mut v: Vec<Instance> = v.into_iter().map(Arc::unwrap_or_clone).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// A format-1 store loads; its next write makes it format 2 with binary
    /// rows beside the JSON ones, and that loads to the same instances.
    #[tokio::test]
    async fn format_1_stores_load_and_move_to_format_2() {
        let dir = dir("v1");
        let rows = [
            golden_row("store_row.json"),
            golden_row("store_row_minimal.json"),
        ];
        write_format_1(&dir, &rows, 60);
        let expected: Vec<Instance> = sorted(
            rows.iter()
                .map(|r| Arc::new(r.clone().into_instance().unwrap()))
                .collect(),
        );
        let (store, loaded) = Store::open(&dir).unwrap();
        assert_eq!((loaded.index, loaded.names_index), (60, 2));
        assert_eq!(sorted(loaded.instances), expected);
        // Rewrite one instance: its row becomes binary, the other stays JSON.
        let (done, wait) = oneshot::channel();
        store.submit(WriteBatch {
            index: 61,
            names_index: 2,
            replace_all: false,
            changes: vec![(expected[1].id.clone(), Some(Arc::new(expected[1].clone())))],
            done: Some(done),
        });
        wait.await.unwrap().unwrap();
        drop(store);
        {
            let db = Database::create(dir.join(DB_FILE)).unwrap();
            let txn = db.begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            assert_eq!(meta.get("format").unwrap().unwrap().value(), STORE_FORMAT);
            let table = txn.open_table(INSTANCES).unwrap();
            let first = |id: &str| table.get(id).unwrap().unwrap().value()[0];
            assert_eq!(first(&expected[1].id), crate::rows::BINARY_ROW_VERSION);
            assert_eq!(first(&expected[0].id), b'{');
        }
        let (_store, loaded) = Store::open(&dir).unwrap();
        assert_eq!(loaded.index, 61);
        assert_eq!(sorted(loaded.instances), expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Many rows decode on several threads to the same set of instances.
    #[test]
    fn many_rows_load_whole() {
        let dir = dir("many");
        let base = golden_row("store_row_minimal.json");
        let rows: Vec<InstanceRow> = (0..CHUNK * 3 + 17)
            .map(|i| InstanceRow {
                id: format!("db-{i}"),
                ..base.clone()
            })
            .collect();
        write_format_1(&dir, &rows, 60);
        let (_store, loaded) = Store::open(&dir).unwrap();
        let mut ids: Vec<String> = loaded.instances.iter().map(|i| i.id.to_string()).collect();
        ids.sort();
        let mut want: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
        want.sort();
        assert_eq!(ids, want);
        drop(_store);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A damaged row, or a store of an unknown format, stops the load with
    /// an error that names it.
    #[test]
    fn damaged_rows_and_unknown_formats_are_refused() {
        let dir = dir("damaged");
        write_format_1(&dir, &[golden_row("store_row_minimal.json")], 60);
        {
            let db = Database::create(dir.join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(INSTANCES)
                .unwrap()
                .insert(
                    "db-1",
                    [crate::rows::BINARY_ROW_VERSION, 9, b'x'].as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&dir).unwrap_err().to_string();
        assert!(err.contains("corrupt") && err.contains("\"db-1\""), "{err}");
        assert!(err.contains("damaged binary row"), "{err}");
        {
            let db = Database::create(dir.join(DB_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META).unwrap().insert("format", 3).unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(&dir).unwrap_err().to_string();
        assert!(err.contains("format version 3"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
