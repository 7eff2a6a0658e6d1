//! Golden files for every format that outlives a process: the store's rows
//! (`catalog.redb`, snapshot files) and the Raft log's entries (`raft.redb`,
//! and what nodes send each other). A change to a type these embed, the wire
//! types of `roster-api` included, changes these bytes; the test then fails
//! and says so, instead of a node reading yesterday's data wrongly. A format
//! change on purpose needs a version story (old rows must still load) and new
//! golden files: `ROSTER_BLESS=1 cargo test -p roster-registry golden`.

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cluster::TypeConfig;
use crate::cluster::ops::{Batch, Op};
use crate::store::StoredInstance;
use roster_api::Health;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// `value` must serialize to the file's bytes, and the file must read back as
/// `value`.
fn pin<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let text = serde_json::to_string_pretty(value).expect("serializes") + "\n";
    let file = path(name);
    if std::env::var_os("ROSTER_BLESS").is_some() {
        std::fs::write(&file, &text).expect("golden file written");
    }
    let golden = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (ROSTER_BLESS=1 writes it)", file.display()));
    assert_eq!(
        text, golden,
        "{name}: the format changed; if on purpose, keep old data readable and rebless"
    );
    let back: T = serde_json::from_str(&golden).expect("the golden file reads back");
    assert_eq!(&back, value, "{name} reads back as written");
}

/// A row that uses every field: tags, metadata, weights, a lease, maintenance,
/// and one check of each kind with its last result.
fn row() -> StoredInstance {
    serde_json::from_str(
        r#"{
            "service": "web", "id": "web-1", "address": "10.0.0.7", "port": 8080,
            "tags": ["v2", "canary"], "meta": {"zone": "eu-1a", "version": "2.4.1"},
            "weights": {"passing": 10, "warning": 1},
            "ttl_ms": 15000, "deregister_critical_after_ms": 60000,
            "lease": "passing", "maintenance": "kernel upgrade",
            "checks": [
                {"definition": {"id": "http", "http": "http://10.0.0.7:8080/health",
                    "method": "GET", "headers": {"x-probe": "roster"}, "interval": "5s",
                    "timeout": "2s", "failures_before_critical": 3},
                 "status": "warning", "output": "HTTP 429"},
                {"definition": {"id": "tcp", "tcp": "10.0.0.7:8080", "interval": "10s"},
                 "status": "passing", "output": ""},
                {"definition": {"id": "grpc", "grpc": "10.0.0.7:9090/web", "interval": "10s"},
                 "status": "critical", "output": "UNAVAILABLE"},
                {"definition": {"id": "ttl", "ttl": "30s"}, "status": "passing", "output": "ok"}
            ],
            "create_index": 41, "modify_index": 57
        }"#,
    )
    .expect("the row parses")
}

#[test]
fn store_rows_keep_their_format() {
    pin("store_row.json", &row());
}

#[test]
fn raft_log_entries_keep_their_format() {
    let (service, id) = (String::from("web"), String::from("web-1"));
    let batch = Batch {
        ops: vec![
            Op::Register { instance: row() },
            Op::Deregister {
                service: service.clone(),
                id: id.clone(),
            },
            Op::Heartbeat {
                service: service.clone(),
                id: id.clone(),
            },
            Op::SetMaintenance {
                service: service.clone(),
                id: id.clone(),
                reason: Some("kernel upgrade".into()),
            },
            Op::SetCheck {
                service: service.clone(),
                id: id.clone(),
                check: "ttl".into(),
                status: Health::Warning,
                output: "slow".into(),
                report: true,
            },
            Op::ExpireLease {
                service: service.clone(),
                id: id.clone(),
                create_index: 41,
            },
            Op::ExpireCheck {
                service: service.clone(),
                id: id.clone(),
                check: "ttl".into(),
                output: "no report within 30s".into(),
            },
            Op::Restore {
                index: 99,
                names_index: 98,
                instances: vec![row()],
                grace_ms: 30_000,
            },
            Op::Reap {
                service,
                id,
                create_index: 41,
                check: Some("http".into()),
            },
        ],
    };
    pin("raft_batch.json", &batch);
    // The entry as the log store keeps it: openraft's envelope around it.
    let entry = openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 120),
        payload: openraft::EntryPayload::Normal(batch),
    };
    let text = serde_json::to_string_pretty(&entry).expect("serializes") + "\n";
    let file = path("raft_entry.json");
    if std::env::var_os("ROSTER_BLESS").is_some() {
        std::fs::write(&file, &text).expect("golden file written");
    }
    let golden = std::fs::read_to_string(&file).expect("golden file");
    assert_eq!(text, golden, "the Raft log entry format changed");
    let back: openraft::Entry<TypeConfig> = serde_json::from_str(&golden).unwrap();
    assert_eq!(back.log_id, entry.log_id);
}
