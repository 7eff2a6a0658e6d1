//! `WriteError`: why a write (or a consistent read) failed, with its typed
//! cause: the catalog's refusal, the store, or why no leader can take it.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, Fatal, RaftError};
use openraft::metrics::WaitError;

use crate::catalog::CatalogError;
use crate::model::FieldError;
use crate::store::StoreError;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The catalog refused the command; nothing changed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// The change is in memory but could not be made durable; the store retries
    /// it with the next write.
    #[error("the change could not be written to disk: {0}")]
    Store(#[from] StoreError),
    /// Replicated: no leader can take the write now (election under way, or this
    /// node is cut off from the majority). Nothing is known to have changed.
    #[error("no leader can take the write now: {0}")]
    Unavailable(#[from] Unavailable),
}

/// Why no leader can take a write (or confirm a read) now; nothing is known to
/// have changed, so the caller may retry, here or on another node.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// No leader is known (an election is under way, or this node is cut off).
    #[error("no leader known (election under way?)")]
    NoLeader,
    /// This node was asked to do what only the leader does, and is not the
    /// leader (any more).
    #[error("not the leader any more")]
    NotLeader,
    /// The leader could not confirm it still leads: no quorum answered in time.
    #[error("no quorum confirmed the leader within {timeout:?}")]
    NoQuorum {
        /// How long it waited.
        timeout: Duration,
    },
    /// The leader could not confirm it still leads.
    #[error("{0}")]
    LeadershipUnconfirmed(
        #[source] Box<RaftError<u64, CheckIsLeaderError<u64, openraft::BasicNode>>>,
    ),
    /// The write was not committed by a majority in time; it may still be.
    #[error("no majority acknowledged the write within {timeout:?}")]
    NotReplicated {
        /// How long it waited.
        timeout: Duration,
    },
    /// The leader lost its leadership before the write was committed.
    #[error("the leader stepped down")]
    SteppedDown,
    /// Raft refused the write (this node stopped leading, or a membership
    /// change is under way).
    #[error("{0}")]
    WriteRefused(#[source] Box<ClientWriteError<u64, openraft::BasicNode>>),
    /// The Raft node has stopped.
    #[error("{0}")]
    RaftStopped(#[source] Box<Fatal<u64>>),
    /// The leader did not answer.
    #[error("leader unreachable: {source}")]
    LeaderUnreachable {
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
    },
    /// The leader's answer could not be read.
    #[error("leader answer: {source}")]
    LeaderAnswer {
        /// What the HTTP client said.
        #[source]
        source: reqwest::Error,
    },
    /// This node did not apply what the leader committed in time.
    #[error("not caught up: {source}")]
    NotCaughtUp {
        /// What the wait said.
        #[source]
        source: WaitError,
    },
    /// The command is local to a node (the lease clock, a node's own load)
    /// and has no place in the log.
    #[error("this command is not replicated")]
    NotReplicable,
    /// A write could not be encoded for the leader.
    #[error("the {what} could not be encoded for the leader: {source}")]
    Encode {
        /// `write` or `heartbeat`.
        what: &'static str,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A follower forwarded something this leader cannot decode.
    #[error("bad forwarded {what}: {source}")]
    BadForward {
        /// `write` or `heartbeat`.
        what: &'static str,
        /// The field that did not validate.
        #[source]
        source: FieldError,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The write was queued behind another of this node's writes, whose
    /// task failed before it applied the group (see `Registry::write_alone`).
    #[error("the write was not applied: the group it was queued in failed")]
    GroupLost,
    /// The leader's proposer task has stopped.
    #[error("the proposer stopped")]
    ProposerStopped,
    /// Another node's answer (see [`crate::cluster::ops::ErrorWire`]).
    #[error("{message}")]
    Remote {
        /// What it said.
        message: String,
    },
}
