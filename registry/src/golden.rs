//! Golden files for every format that outlives a process or crosses to
//! another node: the store's rows (`catalog.redb`), snapshot files, the Raft
//! log's entries and its other records (vote, commit point, purge point, node
//! id, snapshot; `raft.redb`), and what nodes send each other (Raft messages,
//! forwarded writes and heartbeats, their answers). They are made of the
//! registry's own row types (`rows.rs`, `cluster/ops.rs`), not of
//! `roster-api`'s, and of openraft's; a change to one of these types changes
//! the bytes, and the test fails and says so, instead of a node reading
//! yesterday's data wrongly. A format
//! change on purpose needs a version story (old rows must still load) and new
//! golden files: `ROSTER_BLESS=1 cargo test -p roster-registry golden`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta,
    SnapshotSegmentId, StoredMembership, Vote,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::cluster::machine::{SnapshotData, Stored};
use crate::cluster::ops::{Batch, ErrorWire, ItemErrorWire, Op, OutcomeWire};
use crate::cluster::{ForwardedHeartbeat, NodeInfo, TypeConfig};
use crate::http::snapshot::SnapshotFile;
use crate::rows::{FORMAT_VERSION, HealthRow, InstanceRow};

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// `value` in JSON (pretty, so a change reads well in a diff: the bytes on
/// disk and on the wire are the compact form of the same serialization) must
/// be the file's text; returns it.
fn golden<T: Serialize>(name: &str, value: &T) -> String {
    let text = serde_json::to_string_pretty(value).expect("serializes") + "\n";
    pin_file(
        name,
        &text,
        "the format changed; if on purpose, keep old data readable and rebless",
    )
}

/// `text` must be the golden file `name` (`ROSTER_BLESS=1` writes it
/// instead); `changed` says what a difference means. Returns the file's text.
pub(crate) fn pin_file(name: &str, text: &str, changed: &str) -> String {
    let file = path(name);
    if std::env::var_os("ROSTER_BLESS").is_some() {
        std::fs::write(&file, text).expect("golden file written");
    }
    let golden = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("{}: {e} (ROSTER_BLESS=1 writes it)", file.display()));
    assert_eq!(text, golden, "{name}: {changed}");
    golden
}

/// `value` must serialize to the file's bytes, and the file must read back as
/// `value`.
fn pin<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, value: &T) {
    let golden = golden(name, value);
    let back: T = serde_json::from_str(&golden).expect("the golden file reads back");
    assert_eq!(&back, value, "{name} reads back as written");
}

/// [`pin`] for types without `PartialEq`: the file must read back into a
/// value that writes the same bytes again.
fn pin_text<T: Serialize + DeserializeOwned>(name: &str, value: &T) {
    let golden = golden(name, value);
    let back: T = serde_json::from_str(&golden).expect("the golden file reads back");
    let again = serde_json::to_string_pretty(&back).expect("serializes") + "\n";
    assert_eq!(again, golden, "{name} reads back as written");
}

/// A row that uses every field: tags, metadata, weights, a lease, maintenance,
/// and one check of each kind with its last result.
fn row() -> InstanceRow {
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

/// A row with nothing optional: what the defaults write (weights 1, no
/// lease, no checks).
#[test]
fn store_rows_without_options_keep_their_format() {
    let minimal: InstanceRow = serde_json::from_str(
        r#"{"service": "db", "id": "db-1", "address": "db.internal", "port": 5432,
            "deregister_critical_after_ms": 60000, "create_index": 3, "modify_index": 3}"#,
    )
    .expect("the row parses");
    pin("store_row_minimal.json", &minimal);
}

/// A snapshot file (`GET /v1/snapshot`, read back by `PUT /v1/snapshot`).
#[test]
fn snapshot_files_keep_their_format() {
    let file = SnapshotFile {
        format: "roster-snapshot".into(),
        version: FORMAT_VERSION,
        index: 99,
        names_index: 98,
        instances: vec![row()],
    };
    pin_text("snapshot_file.json", &file);
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

/// A membership of three voters and a learner.
fn membership() -> Membership<u64, BasicNode> {
    let nodes: BTreeMap<u64, BasicNode> = [
        (1, "10.0.0.1:8500"),
        (2, "10.0.0.2:8500"),
        (3, "roster-2.roster:8500"),
        (4, "https://10.0.0.4:8500"),
    ]
    .into_iter()
    .map(|(id, addr)| (id, BasicNode { addr: addr.into() }))
    .collect();
    Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes)
}

fn snapshot_meta() -> SnapshotMeta<u64, BasicNode> {
    SnapshotMeta {
        last_log_id: Some(log_id(3, 120)),
        last_membership: StoredMembership::new(Some(log_id(2, 7)), membership()),
        snapshot_id: "3-120-1".into(),
    }
}

/// The log's other entries: the blank one a new leader writes and a
/// membership change.
#[test]
fn raft_entries_of_every_kind_keep_their_format() {
    let entries: Vec<Entry<TypeConfig>> = vec![
        Entry {
            log_id: log_id(3, 118),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(3, 119),
            payload: EntryPayload::Membership(membership()),
        },
    ];
    pin_text("raft_entries.json", &entries);
}

/// The rows of the log file's `raft_meta` table besides the snapshot, each
/// under its key (`log.rs`).
#[test]
fn raft_meta_records_keep_their_format() {
    #[derive(Serialize, Deserialize)]
    struct RaftMeta {
        vote: Vote<u64>,
        committed: Option<LogId<u64>>,
        last_purged: Option<LogId<u64>>,
        node_id: u64,
    }
    let meta = RaftMeta {
        vote: Vote::new_committed(3, 1),
        committed: Some(log_id(3, 120)),
        last_purged: Some(log_id(2, 100)),
        node_id: 4_611_686_018_427_387_903,
    };
    pin_text("raft_meta.json", &meta);
    // Not voted yet, nothing committed or purged.
    let vote = Vote::<u64>::new(1, 2);
    pin_text("raft_vote_uncommitted.json", &vote);
}

/// A Raft snapshot: its data (the catalog's rows and indexes), and the
/// `snapshot` row of the log file (metadata and data bytes).
#[test]
fn raft_snapshots_keep_their_format() {
    let data = SnapshotData {
        index: 99,
        names_index: 98,
        instances: vec![row()],
        services: BTreeMap::from([("web".to_owned(), 57)]),
    };
    pin_text("raft_snapshot_data.json", &data);
    let small = SnapshotData {
        index: 7,
        names_index: 5,
        instances: Vec::new(),
        services: BTreeMap::new(),
    };
    let stored = Stored {
        meta: snapshot_meta(),
        data: serde_json::to_vec(&small).expect("serializes"),
    };
    pin_text("raft_snapshot_row.json", &stored);
}

/// What nodes send each other besides log entries: a forwarded heartbeat
/// (a forwarded write is an op, pinned with the log entries), the answers to
/// forwarded writes and read-index calls, and a node's description of itself
/// (join).
#[test]
fn peer_messages_keep_their_format() {
    #[derive(Serialize, Deserialize)]
    struct PeerMessages {
        heartbeat: ForwardedHeartbeat,
        node: NodeInfo,
        write_done: Result<OutcomeWire, ErrorWire>,
        write_refused: Vec<Result<OutcomeWire, ErrorWire>>,
        read_index: Result<u64, ErrorWire>,
        read_index_refused: Result<u64, ErrorWire>,
    }
    let (service, id) = (String::from("web"), String::from("web-1"));
    let messages = PeerMessages {
        heartbeat: ForwardedHeartbeat {
            service: service.clone(),
            id: id.clone(),
        },
        node: NodeInfo {
            id: 2,
            addr: "10.0.0.2:8500".into(),
            initialized: true,
            leader: Some(1),
        },
        write_done: Ok(OutcomeWire {
            index: 121,
            changed: true,
            expired: 2,
            reaped: 1,
            held: 3,
        }),
        write_refused: [
            ErrorWire::NotFound {
                service: service.clone(),
                id: id.clone(),
            },
            ErrorWire::Conflict {
                id: id.clone(),
                existing: "db".into(),
            },
            ErrorWire::CheckNotFound {
                id: id.clone(),
                check: "http".into(),
            },
            ErrorWire::WrongCheckKind {
                message: "only TTL checks take reports".into(),
            },
            ErrorWire::Full {
                what: "instances per service".into(),
                limit: 10_000,
            },
            ErrorWire::IndexTooHigh {
                index: u64::MAX,
                max: 1 << 63,
            },
            ErrorWire::IndexExhausted,
            ErrorWire::Invalid {
                message: "forwarded write refused: port: must be 1-65535".into(),
            },
            ErrorWire::Unavailable {
                message: "no quorum confirmed the leader within 5s".into(),
            },
        ]
        .into_iter()
        .map(Err)
        .collect(),
        read_index: Ok(121),
        read_index_refused: Err(ErrorWire::Unavailable {
            message: "not the leader".into(),
        }),
    };
    pin_text("raft_peer_messages.json", &messages);
}

/// Raft's own messages (`/v1/raft/append`, `vote`, `snapshot`) and their
/// answers, in openraft's serialization: an openraft upgrade that changes
/// them breaks mixed-version clusters, and fails here first.
#[test]
fn raft_messages_keep_their_format() {
    #[derive(Serialize, Deserialize)]
    struct RaftMessages {
        append: AppendEntriesRequest<TypeConfig>,
        append_answers: Vec<Result<AppendEntriesResponse<u64>, RaftError<u64>>>,
        vote: VoteRequest<u64>,
        vote_answer: Result<VoteResponse<u64>, RaftError<u64>>,
        snapshot: InstallSnapshotRequest<TypeConfig>,
        snapshot_answers:
            Vec<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>>,
    }
    let messages = RaftMessages {
        append: AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(3, 119)),
            entries: vec![Entry {
                log_id: log_id(3, 120),
                payload: EntryPayload::Normal(Batch {
                    ops: vec![Op::Heartbeat {
                        service: "web".into(),
                        id: "web-1".into(),
                    }],
                }),
            }],
            leader_commit: Some(log_id(3, 119)),
        },
        append_answers: vec![
            Ok(AppendEntriesResponse::Success),
            Ok(AppendEntriesResponse::PartialSuccess(Some(log_id(3, 119)))),
            Ok(AppendEntriesResponse::Conflict),
            Ok(AppendEntriesResponse::HigherVote(Vote::new_committed(4, 2))),
            Err(RaftError::Fatal(Fatal::Stopped)),
        ],
        vote: VoteRequest {
            vote: Vote::new(4, 2),
            last_log_id: Some(log_id(3, 120)),
        },
        vote_answer: Ok(VoteResponse {
            vote: Vote::new(4, 2),
            vote_granted: true,
            last_log_id: Some(log_id(3, 120)),
        }),
        snapshot: InstallSnapshotRequest {
            vote: Vote::new_committed(3, 1),
            meta: snapshot_meta(),
            offset: 0,
            data: br#"{"index":7}"#.to_vec(),
            done: false,
        },
        snapshot_answers: vec![
            Ok(InstallSnapshotResponse {
                vote: Vote::new_committed(3, 1),
            }),
            Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
                SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: "3-120-1".into(),
                        offset: 0,
                    },
                    got: SnapshotSegmentId {
                        id: "3-120-1".into(),
                        offset: 11,
                    },
                },
            ))),
        ],
    };
    pin_text("raft_messages.json", &messages);
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
                status: HealthRow::Warning,
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
    // The entry as earlier versions' log store kept it (a JSON row, openraft's
    // envelope around it); the log still reads such rows. Binary rows
    // (format byte 0x01) are pinned in cluster/codec.rs and
    // raft_log_rows_v1.hex.
    let entry = openraft::Entry::<TypeConfig> {
        log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(3, 1), 120),
        payload: openraft::EntryPayload::Normal(batch),
    };
    let text = serde_json::to_string_pretty(&entry).expect("serializes") + "\n";
    let golden = pin_file(
        "raft_entry.json",
        &text,
        "the Raft log entry format changed",
    );
    let back: openraft::Entry<TypeConfig> = serde_json::from_str(&golden).unwrap();
    assert_eq!(back.log_id, entry.log_id);
}

/// A batch write (`POST /v1/batch`, Consul's `/v1/txn`) as one op of a log
/// entry, with every kind of item it may hold, and the answer to a refused
/// one: each failing item by its position.
#[test]
fn batch_ops_keep_their_format() {
    let (service, id) = (String::from("web"), String::from("web-1"));
    let batch = Batch {
        ops: vec![Op::Batch {
            ops: vec![
                Op::Expect {
                    service: service.clone(),
                    id: id.clone(),
                    index: Some(57),
                },
                Op::Register { instance: row() },
                Op::Heartbeat {
                    service: service.clone(),
                    id: id.clone(),
                },
                Op::SetMaintenance {
                    service: service.clone(),
                    id: id.clone(),
                    reason: None,
                },
                Op::Expect {
                    service: service.clone(),
                    id: "web-2".into(),
                    index: None,
                },
                Op::Deregister {
                    service: service.clone(),
                    id: "web-2".into(),
                },
            ],
        }],
    };
    let refused: Result<OutcomeWire, ErrorWire> = Err(ErrorWire::Batch {
        errors: vec![
            ItemErrorWire {
                index: 0,
                error: ErrorWire::Unexpected {
                    service: service.clone(),
                    id: id.clone(),
                    expected: Some(57),
                    actual: Some(60),
                },
            },
            ItemErrorWire {
                index: 1,
                error: ErrorWire::Conflict {
                    id,
                    existing: "db".into(),
                },
            },
            ItemErrorWire {
                index: 2,
                error: ErrorWire::NotInBatch {
                    what: "a check result".into(),
                },
            },
            ItemErrorWire {
                index: 4,
                error: ErrorWire::NotFound {
                    service,
                    id: "web-2".into(),
                },
            },
        ],
    });
    pin("raft_op_batch.json", &(batch, refused));
}
