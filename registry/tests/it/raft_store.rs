//! openraft's own storage test suite against roster's Raft storage: the redb log
//! store and the state machine over a registry.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use roster_registry::catalog::CatalogLimits;
use roster_registry::cluster::{LogStore, StateMachine, TypeConfig};
use roster_registry::metrics::Metrics;
use roster_registry::registry::Registry;

/// Removes a test's directory when the suite is done with its store.
struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Builder;

static NEXT: AtomicU64 = AtomicU64::new(0);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, Dir> for Builder {
    async fn build(&self) -> Result<(Dir, LogStore, StateMachine), StorageError<u64>> {
        let dir = std::env::temp_dir().join(format!(
            "roster-raft-suite-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let log = LogStore::open(&dir).expect("log store opens");
        let registry = Arc::new(Registry::new(
            CatalogLimits::default(),
            Arc::new(Metrics::new()),
        ));
        registry.set_replicated();
        let sm = StateMachine::open(registry, log.clone(), Duration::from_secs(1))?;
        Ok((Dir(dir), log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}
