//! `ClusterError`: why starting a node or changing the membership failed.

use std::path::PathBuf;

use openraft::BasicNode;
use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};

use super::MIN_TOKEN_LEN;

/// Why a cluster operation (start-up, bootstrap, membership change, a call to
/// a peer) failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The data directory or the log file cannot be created.
    #[error("{path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The log file cannot be opened.
    #[error("{path}: {source}")]
    LogFile {
        /// The file.
        path: PathBuf,
        /// What redb said.
        #[source]
        source: redb::DatabaseError,
    },
    /// The log file exists but holds no Raft log (empty, truncated, another
    /// file): refused rather than started afresh, which would forget this
    /// node's vote and identity.
    #[error("{path}: {reason}")]
    LogFileDamaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it, and what to do.
        reason: &'static str,
    },
    /// The log file's tables cannot be set up.
    #[error(transparent)]
    Log(#[from] redb::Error),
    /// Raft's storage (log, vote, snapshot) failed.
    #[error(transparent)]
    Storage(#[from] openraft::StorageError<u64>),
    /// The Raft settings derived from the configuration are inconsistent.
    #[error(transparent)]
    Config(#[from] openraft::ConfigError),
    /// The cluster token is missing or too short.
    #[error("a cluster node needs a cluster token of at least {MIN_TOKEN_LEN} characters")]
    TokenTooShort,
    /// The Raft node stopped (a storage failure, or shutdown).
    #[error(transparent)]
    Fatal(#[from] Fatal<u64>),
    /// Forming the first cluster failed.
    #[error(transparent)]
    Initialize(#[from] RaftError<u64, InitializeError<u64, BasicNode>>),
    /// A membership change was not committed.
    #[error(transparent)]
    Membership(#[from] RaftError<u64, ClientWriteError<u64, BasicNode>>),
    /// A task of the node panicked or was cancelled.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    /// The peer TLS material could not be turned into a client.
    #[error("peer TLS: {0}")]
    PeerTls(#[source] crate::http::serve::TlsError),
    /// The HTTP client for peer traffic cannot be built.
    #[error("the peer HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A peer did not answer, or its answer did not decode.
    #[error("{addr}: {source}")]
    Peer {
        /// The peer's address.
        addr: String,
        /// What went wrong.
        #[source]
        source: reqwest::Error,
    },
    /// A peer answered with an error status.
    #[error("{addr}: {status}")]
    PeerStatus {
        /// The peer's address.
        addr: String,
        /// Its status.
        status: reqwest::StatusCode,
    },
    /// A member of the cluster refused to take this node in.
    #[error("join refused: {body}")]
    JoinRefused {
        /// The member's answer.
        body: String,
    },
    /// Only the leader changes the membership.
    #[error("not the leader")]
    NotLeader,
    /// The node to remove is not a member.
    #[error("node {id} is not a member")]
    NotAMember {
        /// Its id.
        id: u64,
    },
}
