//! Replication: several registry nodes kept in step by Raft ([`openraft`]).
//!
//! Durable writes (register, deregister, maintenance, check results, and the
//! effects of the lease clock) go through the leader's log; every node applies
//! committed entries to its own catalog, so any node answers reads, DNS and
//! watches. Heartbeats are soft state on the leader: followers forward them, and
//! a new leader re-arms every lease, so a failover expires nothing alive. Only
//! the leader runs the lease clock and the active health checks; what they
//! decide is replicated like any write.

// openraft's storage traits fix the error type (`StorageError`, 200+ bytes).
#![allow(clippy::result_large_err)]

mod binary_wire;
mod carrier;
mod codec;
mod error;
mod forward;
mod log;
pub(crate) mod machine;
mod network;
pub mod ops;
mod tls;
mod wire_error;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use openraft::raft::VoteRequest;
use openraft::{BasicNode, ChangeMembers, ServerState};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub(crate) use binary_wire::{
    CHUNK_CONTENT_TYPE, CONTENT_TYPE as APPEND_CONTENT_TYPE, decode as decode_append, decode_chunk,
};
pub(crate) use carrier::MAX_OPS as MAX_FORWARDED_OPS;
pub use error::ClusterError;
pub use log::{LogStore, RAFT_FILE};
pub use machine::StateMachine;
pub(crate) use network::PEER_BODY_LIMIT;
pub use network::{Contacts, NODE_HEADER, Peers, TOKEN_HEADER, base_url};
#[cfg(feature = "fault-injection")]
pub use network::{Cut, PARTITIONED};
pub use roster_api::{RaftMember as Member, RaftStatus as Status};
pub use tls::{PeerTls, is_peer};

use crate::catalog::{Command, Outcome};
use crate::model::{InstanceId, ServiceName};
use crate::registry::{Proposal, Registry, Replication, Unavailable, WriteError};
use ops::{Applied, Batch, ErrorWire, Op};

openraft::declare_raft_types!(
    /// The types of roster's Raft group.
    pub TypeConfig:
        D = Batch,
        R = Vec<Applied>,
);

/// Heartbeats a follower waits out after the last one it heard before it
/// stops honouring the leader's lease (openraft's `election_timeout_max`):
/// a silence of this many heartbeats is no blip on a loaded machine.
pub const LEASE_HEARTBEATS: u64 = 4;
/// Shortest election timeout, in heartbeats; each node draws its own between
/// this and [`LEASE_HEARTBEATS`]. A failover takes 7–8 heartbeats plus one
/// vote round (700–800 ms at the default 100 ms).
const ELECTION_MIN_HEARTBEATS: u64 = 3;

/// Log entries of writes the leader has in flight at once.
const MAX_IN_FLIGHT: usize = 2;
/// Most writes in one log entry.
const MAX_BATCH: usize = 1024;

/// A node's Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;

/// How a node joins a cluster (`roster serve --advertise-addr/--join/...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Node id; generated once and kept in the data directory when `None`.
    pub node_id: Option<u64>,
    /// `host:port` (or URL) other nodes reach this node's API at.
    pub advertise: String,
    /// Peers to contact: `host:port`, a name may resolve to several addresses.
    pub join: Vec<String>,
    /// The first cluster forms when this many nodes have met.
    pub bootstrap_expect: usize,
    /// Shared secret the nodes present to each other on every peer call; at
    /// least [`MIN_TOKEN_LEN`] characters, always required.
    pub token: String,
    /// Leader heartbeat period. Followers wait out the leader's lease
    /// ([`LEASE_HEARTBEATS`] of them) plus a random 3–4 more before they elect
    /// a new one.
    pub heartbeat: Duration,
    /// How long a write waits for a majority before it fails with 503.
    pub write_timeout: Duration,
    /// Entries between snapshots (the log is compacted after each).
    pub snapshot_every: u64,
    /// Peer TLS; `None` sends peer traffic over plain HTTP.
    pub peer_tls: Option<PeerTls>,
}

/// Largest generated node id: 2^63 - 1, so an id survives tools that read
/// JSON numbers as signed 64-bit integers.
const MAX_NODE_ID: u64 = u64::MAX >> 1;

/// Added to three heartbeats before a silent member reads as unreachable.
const UNREACHABLE_FLOOR: Duration = Duration::from_millis(200);

/// Shortest cluster token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            node_id: None,
            advertise: String::new(),
            join: Vec::new(),
            bootstrap_expect: 1,
            token: String::new(),
            heartbeat: Duration::from_millis(100),
            write_timeout: Duration::from_secs(5),
            snapshot_every: 10_000,
            peer_tls: None,
        }
    }
}

/// What a node says about itself on `GET /v1/raft/node`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Node id.
    pub id: u64,
    /// Advertised address.
    pub addr: String,
    /// Whether it belongs to a cluster already.
    pub initialized: bool,
    /// The leader it knows, if any.
    pub leader: Option<u64>,
}

/// A running node: the Raft handle and what the rest of the server needs.
pub struct Cluster {
    raft: Raft,
    id: u64,
    addr: String,
    peers: Peers,
    /// Follower writes on their way to the leader, sent in batches.
    carrier: carrier::Batching,
    registry: Arc<Registry>,
    leading: AtomicBool,
    proposals: mpsc::UnboundedSender<Proposal>,
    /// When a follower last heard from its leader (ms since `epoch`).
    contact_ms: AtomicU64,
    epoch: Instant,
    config: ClusterConfig,
    /// An election of this node's own is being started (see
    /// [`Cluster::refused_a_vote`]).
    standing: AtomicBool,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("leading", &self.leading)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Opens the log in `dir`, loads the last snapshot into `registry`, starts
    /// Raft and the node's tasks (proposer, leadership watch, bootstrap) in
    /// `tasks`. `ready` turns true once the node knows a leader and has applied
    /// what it had committed.
    pub async fn start(
        registry: Arc<Registry>,
        dir: &std::path::Path,
        config: ClusterConfig,
        grace: Duration,
        ready: Arc<AtomicBool>,
        tasks: &mut JoinSet<std::io::Result<()>>,
        cancel: CancellationToken,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let dir = dir.to_owned();
        let log = tokio::task::spawn_blocking(move || LogStore::open(&dir)).await??;
        let id = match config.node_id {
            Some(id) => id,
            None => match log.get_meta::<u64>(log::NODE_ID).await? {
                Some(id) => id,
                None => {
                    let id = fastrand::u64(1..=MAX_NODE_ID);
                    log.put_meta(log::NODE_ID, &id).await?;
                    id
                }
            },
        };
        registry.set_replicated();
        let sm = StateMachine::open(registry.clone(), log.clone(), grace)?;
        let hb = config.heartbeat.as_millis().max(10) as u64;
        let raft_config = openraft::Config {
            cluster_name: "roster".into(),
            heartbeat_interval: hb,
            // openraft makes the leader's lease election_timeout_max: a
            // failover costs the lease plus this node's election timeout.
            election_timeout_min: hb * ELECTION_MIN_HEARTBEATS,
            election_timeout_max: hb * LEASE_HEARTBEATS,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_every.max(2)),
            max_in_snapshot_log_to_keep: 1_000.min(config.snapshot_every),
            ..openraft::Config::default()
        }
        .validate()?;
        if config.token.len() < MIN_TOKEN_LEN {
            // Without it, anyone who reaches the HTTP port could write to the log.
            return Err(ClusterError::TokenTooShort);
        }
        let peers = Peers::new(
            id,
            config.token.clone(),
            Duration::from_secs(10),
            config.peer_tls.clone(),
        )?;
        if config.peer_tls.is_none() {
            tracing::warn!(
                "peer TLS is off: Raft traffic between nodes (the log with every registration, snapshots, forwarded writes) and the cluster token cross the network in clear text; set --peer-tls-ca (and --peer-tls-cert/--peer-tls-key or the API's --tls-cert/--tls-key)"
            );
        }
        let raft = Raft::new(id, Arc::new(raft_config), peers.clone(), log, sm).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            raft,
            id,
            addr: config.advertise.clone(),
            carrier: carrier::Batching::new(peers.clone()),
            peers,
            registry: registry.clone(),
            leading: AtomicBool::new(false),
            proposals: tx,
            contact_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            standing: AtomicBool::new(false),
            config,
        });
        let weak: std::sync::Weak<dyn Replication> =
            Arc::downgrade(&(cluster.clone() as Arc<dyn Replication>));
        registry.attach_replication(weak);
        tracing::info!(node = id, addr = %cluster.addr, "raft node started");
        let c = cluster.clone();
        let stop = cancel.clone();
        tasks.spawn(async move {
            c.run_proposer(rx, stop).await;
            Ok(())
        });
        let c = cluster.clone();
        let stop = cancel.clone();
        tasks.spawn(async move {
            c.watch_leadership(grace, ready, stop).await;
            Ok(())
        });
        let c = cluster.clone();
        let stop = cancel.clone();
        tasks.spawn(async move {
            c.bootstrap(stop).await;
            Ok(())
        });
        let c = cluster.clone();
        tasks.spawn(async move {
            cancel.cancelled().await;
            let _ = c.raft.shutdown().await;
            Ok(())
        });
        Ok(cluster)
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The Raft handle (HTTP handlers feed it peers' messages).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The shared settings of peer traffic (token check, simulated partitions).
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Called after this node answered a vote request: when it refused a
    /// candidate whose log is behind its own while the leader has been
    /// silent for an election timeout, it stands for election itself at
    /// once, above the candidate's term.
    ///
    /// Without this a failover could take seconds (measured: 1.7 and 2.6 s
    /// in 2 of 5 rounds, against 0.9 s): the survivor one append behind often
    /// times out first, the other refuses it for its log without taking its
    /// term (openraft 0.9 has no pre-vote), and then stands at the same term,
    /// which the first refuses because it voted for itself; the two go on
    /// until the one with the longer log draws the earlier timeout.
    pub fn refused_a_vote(
        self: &Arc<Self>,
        req: &VoteRequest<u64>,
        resp: &openraft::raft::VoteResponse<u64>,
    ) {
        let silent = self.last_contact_ms();
        let hb = self.config.heartbeat.as_millis() as u64;
        if !should_stand(req, resp, silent, hb) || self.standing.swap(true, Ordering::AcqRel) {
            return;
        }
        let target = req.vote.leader_id().term;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            // Each election is this node's term plus one; a refusal by a
            // candidate at a higher term moves this node to that term, so
            // the next one is above it. A few tries at most: the timer
            // stays the safety net.
            for _ in 0..STAND_TRIES {
                let (term, settled) = {
                    let metrics = this.raft.metrics();
                    let m = metrics.borrow();
                    let settled = m.state == ServerState::Leader
                        || (m.current_leader.is_some() && m.current_term > target);
                    (m.current_term, settled)
                };
                if settled {
                    break;
                }
                tracing::info!(
                    term,
                    candidate_term = target,
                    "standing for election: a candidate behind this node's log asked for a vote"
                );
                if this.raft.trigger().elect().await.is_err() {
                    break;
                }
                tokio::time::sleep(this.config.heartbeat / 2).await;
            }
            this.standing.store(false, Ordering::Release);
        });
    }

    /// Records that the leader was heard from now.
    pub fn touch_leader(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.contact_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// The leader this node knows, if any.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Milliseconds since this node last heard from its leader (0 on the
    /// leader while it has a quorum); `None` when it never did.
    pub fn last_contact_ms(&self) -> Option<u64> {
        self.freshness().1
    }

    /// Whether the node knows a leader it heard from recently (within an
    /// election timeout).
    pub fn known_leader(&self) -> bool {
        self.freshness().0
    }

    /// [`Cluster::known_leader`] and [`Cluster::last_contact_ms`] from one look
    /// at the Raft state (every API answer of a cluster node carries both).
    pub fn freshness(&self) -> (bool, Option<u64>) {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let contact = if m.state == ServerState::Leader {
            Some(m.millis_since_quorum_ack.unwrap_or(0))
        } else {
            match self.contact_ms.load(Ordering::Relaxed) {
                0 => None,
                at => Some((self.epoch.elapsed().as_millis() as u64).saturating_sub(at)),
            }
        };
        let fresh = self.config.heartbeat.as_millis() as u64 * 8;
        let known = m.current_leader.is_some() && contact.is_some_and(|ms| ms <= fresh);
        (known, contact)
    }

    fn leader_url(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| self.peers.url(&n.addr))
    }

    /// What this node says about itself to peers.
    pub async fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.id,
            addr: self.addr.clone(),
            initialized: self.raft.is_initialized().await.unwrap_or(false),
            leader: self.leader(),
        }
    }

    /// The cluster as this node sees it.
    pub fn status(&self) -> Status {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        // Only the leader replicates, so only it knows who it reaches.
        let leading = m.state == ServerState::Leader;
        let matched = m.replication.clone().unwrap_or_default();
        let window = self.unreachable_after();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let me = *id == self.id;
                let index = if me {
                    m.last_log_index
                } else {
                    matched.get(id).and_then(|l| l.map(|l| l.index))
                };
                let since = if me {
                    Some(Duration::ZERO)
                } else {
                    self.peers.contacts.since(*id)
                };
                let lag = match (m.last_log_index, index) {
                    (Some(last), Some(at)) => last.saturating_sub(at),
                    (Some(last), None) => last + 1,
                    (None, _) => 0,
                };
                Member {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    leader: m.current_leader == Some(*id),
                    matched: index,
                    reachable: leading.then(|| since.is_some_and(|d| d <= window)),
                    last_contact_ms: since.filter(|_| leading).map(|d| d.as_millis() as u64),
                    lag: leading.then_some(lag),
                }
            })
            .collect();
        Status {
            node: self.id,
            state: format!("{:?}", m.state),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied: m.last_applied.map(|l| l.index),
            members,
            replication_view: leading.then_some(self.id),
        }
    }

    /// A member the leader has had no successful append from for this long
    /// reads as unreachable: three heartbeats (the leader sends one at least
    /// that often) plus a floor for a busy machine.
    pub fn unreachable_after(&self) -> Duration {
        self.config.heartbeat * 3 + UNREACHABLE_FLOOR
    }

    /// [`Cluster::status`], with the leader's view of each member (reachable,
    /// last contact, lag) when this node is a follower: asked of the leader
    /// over the peer link. Without an answer those fields stay empty.
    pub async fn status_with_leader_view(&self) -> Status {
        let mut status = self.status();
        if status.replication_view.is_some() {
            return status;
        }
        let Ok(req) = self.to_leader(reqwest::Method::GET, "/v1/raft/status") else {
            return status;
        };
        let view = async {
            let resp = req.timeout(Duration::from_secs(1)).send().await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            resp.json::<Status>().await.ok()
        };
        let Some(leader) = view.await else {
            return status;
        };
        if leader.replication_view.is_none() {
            return status;
        }
        for m in &mut status.members {
            if let Some(seen) = leader.members.iter().find(|l| l.id == m.id) {
                m.reachable = seen.reachable;
                m.last_contact_ms = seen.last_contact_ms;
                m.lag = seen.lag;
                m.matched = seen.matched;
            }
        }
        status.replication_view = leader.replication_view;
        status
    }

    /// Waits until this node may serve a linearizable read: the leader confirms
    /// it still leads, and this node has applied everything committed before.
    pub async fn read_barrier(&self) -> Result<(), WriteError> {
        let index = if self.is_leader() {
            self.read_index().await?
        } else {
            let url = self.leader_url().ok_or(Unavailable::NoLeader)?;
            let resp = self
                .peers
                .request(reqwest::Method::GET, format!("{url}/v1/raft/read-index"))
                .send()
                .await
                .map_err(|source| Unavailable::LeaderUnreachable { source })?;
            let r: Result<u64, ErrorWire> = resp
                .json()
                .await
                .map_err(|source| Unavailable::LeaderAnswer { source })?;
            r.map_err(WriteError::from)?
        };
        self.raft
            .wait(Some(self.config.write_timeout))
            .applied_index_at_least(Some(index), "consistent read")
            .await
            .map_err(|source| Unavailable::NotCaughtUp { source })?;
        Ok(())
    }

    /// The leader's read index: the log index a consistent read must see.
    pub async fn read_index(&self) -> Result<u64, WriteError> {
        match tokio::time::timeout(self.config.write_timeout, self.raft.ensure_linearizable()).await
        {
            Ok(Ok(log_id)) => Ok(log_id.map_or(0, |l| l.index)),
            Ok(Err(e)) => Err(Unavailable::LeadershipUnconfirmed(Box::new(e)).into()),
            Err(_) => Err(Unavailable::NoQuorum {
                timeout: self.config.write_timeout,
            }
            .into()),
        }
    }

    /// Adds the node at `addr` as a voter (on the leader).
    pub async fn add_peer(&self, addr: &str) -> Result<Member, ClusterError> {
        let info = fetch_info(&self.peers, addr).await?;
        self.add_node(info.id, addr.to_owned()).await?;
        Ok(Member {
            id: info.id,
            addr: addr.to_owned(),
            voter: true,
            leader: false,
            matched: None,
            reachable: None,
            last_contact_ms: None,
            lag: None,
        })
    }

    /// Adds node `id` at `addr`: first as a learner, which catches up (by
    /// snapshot if needed), then as a voter.
    pub async fn add_node(&self, id: u64, addr: String) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Err(ClusterError::NotLeader);
        }
        let already = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == id);
        if already {
            return Ok(());
        }
        self.raft.add_learner(id, BasicNode { addr }, true).await?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await?;
        Ok(())
    }

    /// Removes node `id` from the cluster (on the leader).
    pub async fn remove_peer(&self, id: u64) -> Result<(), ClusterError> {
        if !self.is_leader() {
            return Err(ClusterError::NotLeader);
        }
        let m = self.raft.metrics().borrow().membership_config.clone();
        let membership = m.membership();
        if membership.get_node(&id).is_none() {
            return Err(ClusterError::NotAMember { id });
        }
        if membership.voter_ids().any(|v| v == id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await?;
        }
        self.raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await?;
        Ok(())
    }

    /// Sends a request to the leader's API (operator calls made on a follower).
    pub fn to_leader(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<reqwest::RequestBuilder, WriteError> {
        let url = self.leader_url().ok_or(Unavailable::NoLeader)?;
        Ok(self.peers.request(method, format!("{url}{path}")))
    }

    /// Queues writes for the log in arrival order; each waits for its entry to
    /// be committed and applied here, or fails with 503 after the write timeout.
    async fn run_proposer(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<Proposal>,
        cancel: CancellationToken,
    ) {
        // At most this many log entries of writes in flight: while they are
        // being made durable and replicated, new writes queue up and go out
        // together in the next entry, so one fsync covers many writes.
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => return,
                p = in_flight.clone().acquire_owned() => p.expect("never closed"),
            };
            let first = tokio::select! {
                () = cancel.cancelled() => return,
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
            };
            // Bounded by the writes it carries, a batch write counting as
            // its items: an entry must stay well below the peers' body limit.
            let mut writes = weight(&first.0);
            let mut batch = vec![first];
            while writes < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => {
                        writes += weight(&p.0);
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            let mut ops = Vec::with_capacity(batch.len());
            let mut replies = Vec::with_capacity(batch.len());
            for (cmd, reply) in batch {
                match Op::from_command(&cmd) {
                    Some(op) => {
                        ops.push(op);
                        replies.push(reply);
                    }
                    // A local-only command (the lease clock, a node's own
                    // load) has no place in the log: say so rather than drop
                    // the caller's reply channel.
                    None => {
                        let _ = reply.send(Err(Unavailable::NotReplicable.into()));
                    }
                }
            }
            if ops.is_empty() {
                continue;
            }
            let submitted = self.raft.client_write_ff(Batch { ops }).await;
            let fail = |replies: Vec<tokio::sync::oneshot::Sender<_>>,
                        why: &dyn Fn() -> Unavailable| {
                for r in replies {
                    let _ = r.send(Err(WriteError::from(why())));
                }
            };
            let rx = match submitted {
                Ok(rx) => rx,
                Err(e) => {
                    fail(replies, &|| Unavailable::RaftStopped(Box::new(e.clone())));
                    continue;
                }
            };
            let timeout = self.config.write_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(Ok(resp))) => {
                        for (reply, result) in replies.into_iter().zip(resp.data) {
                            let _ = reply.send(result.map(Outcome::from).map_err(WriteError::from));
                        }
                    }
                    Ok(Ok(Err(e))) => {
                        fail(replies, &|| Unavailable::WriteRefused(Box::new(e.clone())));
                    }
                    Ok(Err(_)) => fail(replies, &|| Unavailable::SteppedDown),
                    Err(_) => fail(replies, &|| Unavailable::NotReplicated { timeout }),
                }
            });
        }
    }

    /// Follows this node's Raft state: leadership (re-arms leases on gaining
    /// it), and readiness.
    async fn watch_leadership(
        self: Arc<Self>,
        grace: Duration,
        ready: Arc<AtomicBool>,
        cancel: CancellationToken,
    ) {
        let mut metrics = self.raft.metrics();
        loop {
            let m = metrics.borrow_and_update().clone();
            let leading = m.state == ServerState::Leader && m.current_leader == Some(self.id);
            if self.leading.swap(leading, Ordering::AcqRel) != leading {
                tracing::info!(
                    node = self.id,
                    term = m.current_term,
                    leading,
                    "leadership changed"
                );
                self.registry.leadership_changed(leading, grace);
                if leading {
                    // Replies from an earlier term as leader say nothing of now.
                    self.peers.contacts.clear();
                }
            }
            // Ready: part of a cluster that has a leader (writes can be taken).
            ready.store(m.current_leader.is_some(), Ordering::Release);
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = metrics.changed() => if changed.is_err() { return },
            }
        }
    }

    /// Forms the first cluster, or joins an existing one, from `join`.
    async fn bootstrap(self: Arc<Self>, cancel: CancellationToken) {
        let mut pause = Duration::from_millis(200);
        loop {
            if self.raft.is_initialized().await.unwrap_or(true) {
                return;
            }
            match self.try_bootstrap().await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "bootstrap: not yet"),
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    async fn try_bootstrap(&self) -> Result<bool, ClusterError> {
        let mut met: BTreeMap<u64, NodeInfo> = BTreeMap::new();
        met.insert(self.id, self.info().await);
        for target in &self.config.join {
            for addr in resolve(target).await {
                if let Ok(info) = fetch_info_via(&self.peers, target, addr).await {
                    met.insert(info.id, info);
                }
            }
        }
        // A cluster exists already: ask it to take this node in.
        if let Some(member) = met.values().find(|n| n.initialized && n.id != self.id) {
            let peer = |source| ClusterError::Peer {
                addr: member.addr.clone(),
                source,
            };
            let resp = self
                .peers
                .request(
                    reqwest::Method::POST,
                    format!("{}/v1/raft/join", self.peers.url(&member.addr)),
                )
                .json(&NodeInfo {
                    id: self.id,
                    addr: self.addr.clone(),
                    initialized: false,
                    leader: None,
                })
                .send()
                .await
                .map_err(peer)?;
            if !resp.status().is_success() {
                return Err(ClusterError::JoinRefused {
                    body: resp.text().await.unwrap_or_default(),
                });
            }
            tracing::info!(node = self.id, via = %member.addr, "joined the cluster");
            return Ok(true);
        }
        // Without --bootstrap-expect the node only ever joins: a node that
        // cannot reach its cluster at start must not form one of its own (a
        // second leader and catalog beside the real ones).
        if self.config.bootstrap_expect == 0 || met.len() < self.config.bootstrap_expect {
            return Ok(false);
        }
        // The smallest id of the nodes that met forms the cluster; the others
        // wait for its first messages.
        if met.keys().next() != Some(&self.id) {
            return Ok(false);
        }
        let members: BTreeMap<u64, BasicNode> = met
            .into_values()
            .map(|n| (n.id, BasicNode { addr: n.addr }))
            .collect();
        tracing::info!(
            node = self.id,
            members = members.len(),
            "forming the cluster"
        );
        self.raft.initialize(members).await?;
        Ok(true)
    }
}

/// How many writes a command is, for the size of a log entry.
fn weight(cmd: &Command) -> usize {
    match cmd {
        Command::Batch { items } => items.len().max(1),
        _ => 1,
    }
}

/// Most elections [`Cluster::refused_a_vote`] starts in a row.
const STAND_TRIES: usize = 3;

/// Whether a node that answered `req` with `resp` should stand for election
/// at once: it refused the candidate, its own log is ahead of the
/// candidate's (so the candidate cannot win with its vote), and it has not
/// heard from a leader for an election timeout (`silent_ms`; `None`: never),
/// so no leader's lease is being broken.
fn should_stand(
    req: &VoteRequest<u64>,
    resp: &openraft::raft::VoteResponse<u64>,
    silent_ms: Option<u64>,
    heartbeat_ms: u64,
) -> bool {
    !resp.vote_granted
        && resp.last_log_id > req.last_log_id
        && silent_ms.is_none_or(|ms| ms >= heartbeat_ms * ELECTION_MIN_HEARTBEATS)
}

/// A heartbeat forwarded to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ForwardedHeartbeat {
    /// Service.
    pub service: String,
    /// Instance id.
    pub id: String,
}

impl Replication for Cluster {
    fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    fn write_timeout(&self) -> Duration {
        self.config.write_timeout
    }

    fn has_quorum(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let limit = self.config.heartbeat.as_millis() as u64 * 4;
        m.state == ServerState::Leader && m.millis_since_quorum_ack.is_some_and(|ms| ms <= limit)
    }

    fn proposals(&self) -> &mpsc::UnboundedSender<Proposal> {
        &self.proposals
    }

    fn forward(&self, cmd: Command) -> BoxFuture<'static, Result<Outcome, WriteError>> {
        let Some(op) = Op::from_command(&cmd) else {
            return async { Err(Unavailable::NotReplicable.into()) }.boxed();
        };
        let gone_is_done = matches!(op, Op::Deregister { .. });
        self.post_json(carrier::WRITE_PATH, "write", &op, gone_is_done)
    }

    fn forward_heartbeat(
        &self,
        service: ServiceName,
        id: InstanceId,
    ) -> BoxFuture<'static, Result<Outcome, WriteError>> {
        let body = ForwardedHeartbeat {
            service: service.as_str().to_owned(),
            id: id.as_str().to_owned(),
        };
        self.post_json(carrier::HEARTBEAT_PATH, "heartbeat", &body, false)
    }
}

impl Cluster {
    /// [`Cluster::post_owned`] of `body` as JSON; a body that does not encode
    /// fails at once, naming `what` it was.
    fn post_json<T: Serialize>(
        &self,
        path: &'static str,
        what: &'static str,
        body: &T,
        gone_is_done: bool,
    ) -> BoxFuture<'static, Result<Outcome, WriteError>> {
        match serde_json::to_vec(body) {
            Ok(body) => self.post_owned(path, body.into(), gone_is_done).boxed(),
            Err(source) => async move { Err(Unavailable::Encode { what, source }.into()) }.boxed(),
        }
    }

    /// Sends `body` to the leader's `path` ([`forward::Forward::send`]);
    /// writes travel in batches with the others waiting here.
    fn post_owned(
        &self,
        path: &'static str,
        body: axum::body::Bytes,
        gone_is_done: bool,
    ) -> impl std::future::Future<Output = Result<Outcome, WriteError>> + Send + 'static {
        let leaders = forward::RaftLeaders {
            metrics: self.raft.metrics(),
            peers: self.peers.clone(),
        };
        let deadline = Instant::now() + self.config.write_timeout;
        // Long enough for a commit under load, short next to an election.
        let attempt = (self.config.heartbeat * 8).max(Duration::from_secs(1));
        let peers = self.peers.clone();
        let carrier = self.carrier.clone();
        async move {
            let to = forward::Forward {
                path,
                body,
                gone_is_done,
                deadline,
                attempt,
            };
            to.send(&peers, &carrier, leaders).await
        }
    }
}

/// The addresses a `host:port` join target stands for (a headless service
/// name gives one per pod).
async fn resolve(target: &str) -> Vec<std::net::SocketAddr> {
    let target = target
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    match tokio::net::lookup_host(target).await {
        Ok(addrs) => addrs.collect(),
        Err(_) => Vec::new(),
    }
}

/// Asks the node at `addr`, one address of the join target `target`, who it is.
async fn fetch_info_via(
    peers: &Peers,
    target: &str,
    addr: std::net::SocketAddr,
) -> Result<NodeInfo, ClusterError> {
    let peer = |source| ClusterError::Peer {
        addr: addr.to_string(),
        source,
    };
    let resp = peers
        .request_via(reqwest::Method::GET, target, addr, "/v1/raft/node")?
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(peer)?;
    if !resp.status().is_success() {
        return Err(ClusterError::PeerStatus {
            addr: addr.to_string(),
            status: resp.status(),
        });
    }
    resp.json().await.map_err(peer)
}

/// Asks the node at `addr` who it is.
pub async fn fetch_info(peers: &Peers, addr: &str) -> Result<NodeInfo, ClusterError> {
    let peer = |source| ClusterError::Peer {
        addr: addr.to_owned(),
        source,
    };
    let resp = peers
        .request(
            reqwest::Method::GET,
            format!("{}/v1/raft/node", peers.url(addr)),
        )
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(peer)?;
    if !resp.status().is_success() {
        return Err(ClusterError::PeerStatus {
            addr: addr.to_owned(),
            status: resp.status(),
        });
    }
    resp.json().await.map_err(peer)
}

#[cfg(test)]
mod tests {
    use openraft::raft::VoteResponse;
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_node_stands_only_against_a_candidate_behind_it_with_the_leader_silent() {
        let hb = 100;
        // A candidate at term 6, one append behind; this node at term 5.
        let req = VoteRequest::new(Vote::new(6, 2), log(5, 41));
        let ahead = VoteResponse::new(Vote::new_committed(5, 1), log(5, 42), false);
        assert!(should_stand(&req, &ahead, Some(hb * 3), hb));
        assert!(should_stand(&req, &ahead, None, hb), "never heard a leader");
        assert!(
            !should_stand(&req, &ahead, Some(hb * 3 - 1), hb),
            "a leader heard within an election timeout keeps its lease"
        );
        let granted = VoteResponse::new(Vote::new(6, 2), log(5, 42), true);
        assert!(!should_stand(&req, &granted, Some(hb * 10), hb));
        // Refused with logs alike (a split vote at one term): the timers decide.
        let even = VoteResponse::new(Vote::new(6, 3), log(5, 41), false);
        assert!(!should_stand(&req, &even, Some(hb * 10), hb));
        // The candidate's log is ahead: it may win, this node must not stand.
        let behind = VoteResponse::new(Vote::new_committed(5, 1), log(5, 40), false);
        assert!(!should_stand(&req, &behind, Some(hb * 10), hb));
        // A later term in the log outranks a longer one.
        let req = VoteRequest::new(Vote::new(7, 2), log(6, 3));
        let older = VoteResponse::new(Vote::new_committed(5, 1), log(5, 90), false);
        assert!(!should_stand(&req, &older, Some(hb * 10), hb));
    }
}
