//! Durable catalog on disk (redb), with group commit.
//!
//! The store holds the catalog's *state*, not a log of commands: one row per
//! instance (JSON, [`InstanceRow`], versioned) plus the global index, so it stays as large as the
//! catalog however long the registry runs. Writers hand their changed instances to
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
use crate::rows::{FORMAT_VERSION, InstanceRow};

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
    pub instances: Vec<Instance>,
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
        let created =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Database::create(&file)));
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
        Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(corrupt(
                file,
                format!("format version {v}; this roster reads version {FORMAT_VERSION}"),
            ));
        }
        None => return Err(corrupt(file, "no format version")),
    }
    let mut loaded = Loaded {
        index: get("index")?.ok_or_else(|| corrupt(file, "no index"))?,
        names_index: get("names_index")?.unwrap_or(0),
        instances: Vec::new(),
    };
    let table = txn.open_table(INSTANCES).map_err(|e| corrupt(file, e))?;
    for row in table.iter().map_err(|e| corrupt(file, e))? {
        let (key, value) = row.map_err(|e| corrupt(file, e))?;
        let stored: InstanceRow = serde_json::from_slice(value.value())
            .map_err(|e| corrupt(file, format!("instance {:?}: {e}", key.value())))?;
        if stored.modify_index > loaded.index {
            return Err(corrupt(
                file,
                format!("instance {:?} is newer than the catalog index", key.value()),
            ));
        }
        let id = stored.id.clone();
        let inst = stored
            .into_instance()
            .map_err(|e| corrupt(file, format!("instance {id:?}: {e}")))?;
        loaded.instances.push(inst);
    }
    Ok(loaded)
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
        for batch in group {
            if batch.replace_all {
                table.retain(|_, _| false)?;
            }
            for (id, change) in &batch.changes {
                match change {
                    Some(inst) => {
                        let row = serde_json::to_vec(&InstanceRow::from_instance(inst))
                            .expect("instances serialize");
                        table.insert(&**id, row.as_slice())?;
                    }
                    None => {
                        table.remove(&**id)?;
                    }
                }
            }
        }
        let last = group.last().expect("groups are never empty");
        meta.insert("format", FORMAT_VERSION)?;
        meta.insert("index", last.index)?;
        meta.insert("names_index", last.names_index)?;
    }
    txn.commit()?;
    Ok(())
}
