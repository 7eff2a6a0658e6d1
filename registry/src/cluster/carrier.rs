//! How one attempt of a forwarded write reaches the leader: alone in its own
//! request ([`Direct`]), or queued with the other writes waiting on this
//! follower and sent with them in one request ([`Batching`]).
//!
//! Every write through a follower used to be one HTTP request to the leader,
//! and the leader spent 160 µs of CPU on each against 94 µs on a write of its
//! own clients (bench/RESULTS.md, issue 22). [`Batching`] keeps at most
//! [`IN_FLIGHT`] requests open per leader: a lone write leaves at once, and
//! writes that arrive while those requests are out wait and leave together in
//! the next one, so the batch grows with the load and adds no delay without
//! it. The leader puts a batch's ops into its proposer together (few log
//! entries) and answers each op on its own; the retry rules of a write
//! ([`super::forward::Forward::send`]) stay per write.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::network::Peers;
use super::ops::{ErrorWire, OutcomeWire};
use crate::registry::{Unavailable, WriteError};

/// The leader's endpoint for one forwarded write.
pub(crate) const WRITE_PATH: &str = "/v1/raft/write";
/// The leader's endpoint for several: `{"ops": [op, ...]}`, answered with one
/// `Result<OutcomeWire, ErrorWire>` per op, in order.
pub(crate) const WRITES_PATH: &str = "/v1/raft/writes";
/// The leader's endpoint for one forwarded heartbeat.
pub(crate) const HEARTBEAT_PATH: &str = "/v1/raft/heartbeat";
/// The leader's endpoint for several: `{"ops": [heartbeat, ...]}`, answered
/// like [`WRITES_PATH`]. Heartbeats never enter the log (the leader renews
/// its leases), so they travel in batches of their own.
pub(crate) const HEARTBEATS_PATH: &str = "/v1/raft/heartbeats";

/// The batch endpoint that carries several requests of the single
/// endpoint `path`, if there is one.
fn batch_path(path: &str) -> Option<&'static str> {
    match path {
        WRITE_PATH => Some(WRITES_PATH),
        HEARTBEAT_PATH => Some(HEARTBEATS_PATH),
        _ => None,
    }
}

/// Most ops in one batch request.
pub(crate) const MAX_OPS: usize = 256;
/// Most bytes of ops in one batch request (the peers' body limit is 16 MiB;
/// one op of the HTTP API is at most 64 KiB, a batch write up to 1,000 of
/// them). A larger op goes alone to [`WRITE_PATH`].
pub(crate) const MAX_BYTES: usize = 4 << 20;
/// Batch requests open at once to one leader.
const IN_FLIGHT: usize = 2;
/// How long a leader that does not know [`WRITES_PATH`] (an older version,
/// during a rolling upgrade) gets single writes before it is asked again.
const RECHECK: Duration = Duration::from_secs(30);

/// What one attempt came to.
#[derive(Debug)]
pub(super) enum Attempt {
    /// The leader's answer.
    Answer(Result<OutcomeWire, ErrorWire>),
    /// No answer. `carried`: the write may have reached the leader (a refused
    /// connection, or a write that never left the queue, carried nothing).
    Lost { error: WriteError, carried: bool },
}

/// Sends one attempt of a write to the leader at `url`.
pub(super) trait Carrier: Send + Sync {
    /// The answer to `body` posted to `url` + `path`, within `timeout`.
    fn carry<'a>(
        &'a self,
        url: &'a str,
        path: &'static str,
        body: &'a Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Attempt>;
}

/// Each write in its own request (the way of earlier versions; the tests
/// hold both ways to the same rules).
#[cfg(test)]
pub(super) struct Direct(pub(super) Peers);

#[cfg(test)]
impl Carrier for Direct {
    fn carry<'a>(
        &'a self,
        url: &'a str,
        path: &'static str,
        body: &'a Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Attempt> {
        direct(&self.0, url, path, body.clone(), timeout).boxed()
    }
}

async fn direct(
    peers: &Peers,
    url: &str,
    path: &'static str,
    body: Bytes,
    timeout: Duration,
) -> Attempt {
    let sent = peers
        .request(reqwest::Method::POST, format!("{url}{path}"))
        .timeout(timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) => match resp.json::<Result<OutcomeWire, ErrorWire>>().await {
            Ok(answer) => Attempt::Answer(answer),
            Err(source) => Attempt::Lost {
                error: Unavailable::LeaderAnswer { source }.into(),
                carried: true,
            },
        },
        Err(source) => Attempt::Lost {
            // Refused connections never carried the write.
            carried: !source.is_connect(),
            error: Unavailable::LeaderUnreachable { source }.into(),
        },
    }
}

/// Writes to [`WRITE_PATH`] (and heartbeats to [`HEARTBEAT_PATH`]) queued
/// per leader and sent in batches to [`WRITES_PATH`] ([`HEARTBEATS_PATH`]);
/// anything else (ops over [`MAX_BYTES`]) goes [`Direct`].
#[derive(Clone)]
pub(super) struct Batching(Arc<Inner>);

struct Inner {
    peers: Peers,
    lanes: Mutex<HashMap<LaneKey, Lane>>,
    next: std::sync::atomic::AtomicU64,
}

/// A leader's URL and the single endpoint its lane's requests are for.
type LaneKey = (String, &'static str);

/// The writes (or heartbeats) waiting for one leader.
#[derive(Default)]
struct Lane {
    queue: VecDeque<Waiting>,
    /// Sender tasks running for this lane (at most [`IN_FLIGHT`]).
    senders: usize,
    /// The leader answered 404/405 to a batch: single writes until then.
    single_until: Option<Instant>,
}

impl Lane {
    fn single(&self, now: Instant) -> bool {
        self.single_until.is_some_and(|t| now < t)
    }
}

struct Waiting {
    seq: u64,
    body: Bytes,
    /// End of the attempt this write is queued for.
    until: Instant,
    reply: oneshot::Sender<Attempt>,
}

impl Batching {
    pub(super) fn new(peers: Peers) -> Batching {
        Batching(Arc::new(Inner {
            peers,
            lanes: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(0),
        }))
    }

    /// Writes queued for the leader at `url` and not yet sent.
    #[cfg(test)]
    pub(super) fn queued(&self, url: &str) -> usize {
        self.0
            .lanes()
            .get(&(url.to_owned(), WRITE_PATH))
            .map_or(0, |l| l.queue.len())
    }
}

impl Inner {
    fn lanes(&self) -> std::sync::MutexGuard<'_, HashMap<LaneKey, Lane>> {
        // A panic under this lock leaves the queues consistent (every change
        // is one push, pop or counter step).
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Carrier for Batching {
    fn carry<'a>(
        &'a self,
        url: &'a str,
        path: &'static str,
        body: &'a Bytes,
        timeout: Duration,
    ) -> BoxFuture<'a, Attempt> {
        let direct_one = || direct(&self.0.peers, url, path, body.clone(), timeout).boxed();
        if batch_path(path).is_none() || body.len() > MAX_BYTES {
            return direct_one();
        }
        let key: LaneKey = (url.to_owned(), path);
        let now = Instant::now();
        let (tx, rx) = oneshot::channel();
        let seq = self
            .0
            .next
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let spawn = {
            let mut lanes = self.0.lanes();
            let lane = lanes.entry(key.clone()).or_default();
            if lane.single(now) {
                drop(lanes);
                return direct_one();
            }
            lane.queue.push_back(Waiting {
                seq,
                body: body.clone(),
                until: now + timeout,
                reply: tx,
            });
            let spawn = lane.senders < IN_FLIGHT;
            if spawn {
                lane.senders += 1;
            }
            spawn
        };
        if spawn {
            // Its own task: the batch it sends answers other callers too, so
            // it must not be cancelled with this one.
            tokio::spawn(send_batches(self.0.clone(), key.clone()));
        }
        async move {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(attempt)) => attempt,
                Ok(Err(_)) => Attempt::Lost {
                    error: Unavailable::Remote {
                        message: "the forwarding queue stopped".into(),
                    }
                    .into(),
                    carried: true,
                },
                Err(_) => {
                    // Still queued: it never left, and never will.
                    let mut lanes = self.0.lanes();
                    let removed = lanes.get_mut(&key).is_some_and(|lane| {
                        let before = lane.queue.len();
                        lane.queue.retain(|w| w.seq != seq);
                        lane.queue.len() < before
                    });
                    drop(lanes);
                    Attempt::Lost {
                        error: Unavailable::Remote {
                            message: format!("leader unreachable: no answer within {timeout:?}"),
                        }
                        .into(),
                        carried: !removed,
                    }
                }
            }
        }
        .boxed()
    }
}

/// What a sender took from its lane.
enum Take {
    /// Nothing left: the sender stops.
    Done,
    /// A batch for [`WRITES_PATH`].
    Batch(Vec<Waiting>),
    /// The leader does not take batches: these go one by one.
    Single(Vec<Waiting>),
}

fn take(inner: &Inner, key: &LaneKey) -> Take {
    let mut lanes = inner.lanes();
    let Some(lane) = lanes.get_mut(key) else {
        return Take::Done;
    };
    let single = lane.single(Instant::now());
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(w) = lane.queue.front() {
        if !single
            && !batch.is_empty()
            && (batch.len() >= MAX_OPS || bytes + w.body.len() > MAX_BYTES)
        {
            break;
        }
        let w = lane.queue.pop_front().expect("looked at");
        // Its caller is gone (timed out and left, or cancelled): nobody
        // waits for the answer, so the write is not sent.
        if w.reply.is_closed() {
            continue;
        }
        bytes += w.body.len();
        batch.push(w);
    }
    if batch.is_empty() {
        lane.senders -= 1;
        if lane.senders == 0 && lane.queue.is_empty() && !lane.single(Instant::now()) {
            lanes.remove(key);
        }
        return Take::Done;
    }
    if single {
        Take::Single(batch)
    } else {
        Take::Batch(batch)
    }
}

/// Sends the lane's queued writes until the queue is empty.
async fn send_batches(inner: Arc<Inner>, key: LaneKey) {
    let (url, path) = (&key.0, key.1);
    loop {
        match take(&inner, &key) {
            Take::Done => return,
            Take::Single(writes) => singles(&inner.peers, url, path, writes).await,
            Take::Batch(writes) => {
                if let Some(refused) = batch(&inner.peers, url, path, writes).await {
                    // An older leader: these and the next writes go one by one.
                    {
                        let mut lanes = inner.lanes();
                        if let Some(lane) = lanes.get_mut(&key) {
                            lane.single_until = Some(Instant::now() + RECHECK);
                        }
                    }
                    tracing::info!(leader = %url, path, "the leader does not take batches of these (an older version?): forwarding them one by one");
                    singles(&inner.peers, url, path, refused).await;
                }
            }
        }
    }
}

/// Sends each write in its own request, all at once.
async fn singles(peers: &Peers, url: &str, path: &'static str, writes: Vec<Waiting>) {
    let now = Instant::now();
    futures_util::future::join_all(writes.into_iter().map(|w| async move {
        let left = w.until.saturating_duration_since(now);
        let attempt = direct(peers, url, path, w.body, left).await;
        let _ = w.reply.send(attempt);
    }))
    .await;
}

/// Sends `writes` (each for the single endpoint `path`) in one request to
/// its batch endpoint and answers each; gives them back when the leader does
/// not know the batch endpoint (404 or 405).
async fn batch(
    peers: &Peers,
    url: &str,
    path: &'static str,
    writes: Vec<Waiting>,
) -> Option<Vec<Waiting>> {
    let target = batch_path(path).expect("a lane is for a path with a batch endpoint");
    let size = writes.iter().map(|w| w.body.len() + 1).sum::<usize>() + 16;
    let mut body = Vec::with_capacity(size);
    body.extend_from_slice(b"{\"ops\":[");
    for (i, w) in writes.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&w.body);
    }
    body.extend_from_slice(b"]}");
    let until = writes.iter().map(|w| w.until).max().expect("not empty");
    let sent = peers
        .request(reqwest::Method::POST, format!("{url}{target}"))
        .timeout(until.saturating_duration_since(Instant::now()))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    let lost = |writes: Vec<Waiting>, message: String, carried: bool| {
        for w in writes {
            let _ = w.reply.send(Attempt::Lost {
                error: Unavailable::Remote {
                    message: message.clone(),
                }
                .into(),
                carried,
            });
        }
    };
    let resp = match sent {
        Ok(resp) => resp,
        Err(e) => {
            lost(writes, format!("leader unreachable: {e}"), !e.is_connect());
            return None;
        }
    };
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_FOUND || status == reqwest::StatusCode::METHOD_NOT_ALLOWED
    {
        return Some(writes);
    }
    match resp.json::<Vec<Result<OutcomeWire, ErrorWire>>>().await {
        Ok(answers) if answers.len() == writes.len() => {
            for (w, answer) in writes.into_iter().zip(answers) {
                let _ = w.reply.send(Attempt::Answer(answer));
            }
        }
        Ok(answers) => {
            let message = format!(
                "leader answer: {} answers to {} writes",
                answers.len(),
                writes.len()
            );
            lost(writes, message, true);
        }
        Err(e) => lost(writes, format!("leader answer: {e}"), true),
    }
    None
}
