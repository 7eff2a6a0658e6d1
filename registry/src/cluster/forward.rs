//! Writes a follower sends to the leader, and what an unanswered attempt
//! means for the next one.

use std::time::Duration;

use axum::body::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use openraft::BasicNode;
use tokio::time::Instant;

use super::carrier::{Attempt, Carrier};
use super::network::Peers;
use super::ops::ErrorWire;
use crate::catalog::Outcome;
use crate::registry::{Unavailable, WriteError};

/// Who leads, as a forwarded write sees it.
pub(super) trait Leaders: Send {
    /// The leader's id and base URL, if one is known.
    fn current(&mut self) -> Option<(u64, String)>;
    /// Resolves when the view may have changed.
    fn changed(&mut self) -> BoxFuture<'_, ()>;
}

/// [`Leaders`] from this node's Raft metrics.
pub(super) struct RaftLeaders {
    pub(super) metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
    pub(super) peers: Peers,
}

impl Leaders for RaftLeaders {
    fn current(&mut self) -> Option<(u64, String)> {
        let m = self.metrics.borrow_and_update();
        let l = m.current_leader?;
        let node = m.membership_config.membership().get_node(&l)?;
        Some((l, self.peers.url(&node.addr)))
    }

    fn changed(&mut self) -> BoxFuture<'_, ()> {
        async move {
            if self.metrics.changed().await.is_err() {
                // Raft stopped: nothing will change again.
                std::future::pending::<()>().await;
            }
        }
        .boxed()
    }
}

/// A write (or heartbeat) on its way to the leader.
pub(super) struct Forward {
    pub(super) path: &'static str,
    /// The JSON body, encoded once for every attempt.
    pub(super) body: Bytes,
    /// "Not found" after an attempt that may have been applied is success.
    pub(super) gone_is_done: bool,
    pub(super) deadline: Instant,
    /// Bound of one attempt.
    pub(super) attempt: Duration,
}

impl Forward {
    /// Sends the write to the leader, each attempt through `carrier` (alone,
    /// or in a batch with other writes: the rules below are per write either
    /// way). The leader may be gone (crashed, paused, cut off): each attempt
    /// gets a short timeout, and the write goes to whichever node leads next,
    /// until the deadline. Sending a write again is safe (registering,
    /// heartbeats, checks and maintenance set a state), but an attempt that
    /// went out and got no answer may have been applied: a deregistration
    /// sent again then finds the instance gone. With `gone_is_done`, that
    /// "not found" after an unanswered attempt is the earlier attempt's
    /// success, answered with the leader's read index so the caller still
    /// reads its write on this node.
    pub(super) async fn send(
        self,
        peers: &Peers,
        carrier: &dyn Carrier,
        mut leaders: impl Leaders,
    ) -> Result<Outcome, WriteError> {
        let deadline = self.deadline;
        let mut last = WriteError::from(Unavailable::NoLeader);
        let mut tried: Option<u64> = None;
        // An attempt went out and its fate is unknown.
        let mut maybe_applied = false;
        while Instant::now() < deadline {
            let Some((leader, url)) = leaders.current().filter(|(l, _)| Some(*l) != tried) else {
                // No leader, or still the one that just failed: wait for news.
                let wait = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(wait.min(self.attempt), leaders.changed())
                    .await
                    .is_err()
                {
                    tried = None;
                }
                continue;
            };
            let bound = self
                .attempt
                .min(deadline.saturating_duration_since(Instant::now()));
            let answer = match carrier.carry(&url, self.path, &self.body, bound).await {
                Attempt::Answer(answer) => Ok(answer),
                Attempt::Lost { error, carried } => {
                    maybe_applied |= carried;
                    Err(error)
                }
            };
            match answer {
                Ok(Ok(out)) => return Ok(out.into()),
                Ok(Err(ErrorWire::NotFound { .. })) if self.gone_is_done && maybe_applied => {
                    return earlier_attempt_done(peers, &url, deadline).await;
                }
                Ok(Err(e @ ErrorWire::Invalid { .. })) => last = WriteError::from(e),
                Ok(Err(e @ ErrorWire::Unavailable { .. })) => {
                    // The leader gave up waiting; the entry may still commit.
                    maybe_applied = true;
                    last = WriteError::from(e);
                }
                // The catalog's own answer (not found, conflict, full).
                Ok(Err(e)) => return Err(WriteError::from(e)),
                Err(e) => last = e,
            }
            tried = Some(leader);
        }
        Err(last)
    }
}

/// The answer to a write whose earlier attempt was applied unseen: the
/// leader's read index (at or after that write), as the outcome's index.
async fn earlier_attempt_done(
    peers: &Peers,
    url: &str,
    deadline: Instant,
) -> Result<Outcome, WriteError> {
    let resp = peers
        .request(reqwest::Method::GET, format!("{url}/v1/raft/read-index"))
        .timeout(deadline.saturating_duration_since(Instant::now()))
        .send()
        .await
        .map_err(|source| Unavailable::LeaderUnreachable { source })?;
    let index: Result<u64, ErrorWire> = resp
        .json()
        .await
        .map_err(|source| Unavailable::LeaderAnswer { source })?;
    Ok(Outcome {
        index: index.map_err(WriteError::from)?,
        changed: true,
        ..Outcome::default()
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Json;
    use axum::routing::{get, post};

    use super::*;
    use crate::catalog::CatalogError;
    use crate::cluster::carrier::{
        Batching, Direct, HEARTBEAT_PATH, HEARTBEATS_PATH, WRITE_PATH, WRITES_PATH,
    };
    use crate::cluster::ops::OutcomeWire;

    /// A fixed list of leaders, the next one taken after each change.
    struct Script(Vec<(u64, String)>);

    impl Leaders for Script {
        fn current(&mut self) -> Option<(u64, String)> {
            self.0.first().cloned()
        }
        fn changed(&mut self) -> BoxFuture<'_, ()> {
            async move {
                if self.0.len() > 1 {
                    self.0.remove(0);
                } else {
                    std::future::pending::<()>().await;
                }
            }
            .boxed()
        }
    }

    /// Requests a fake leader took, per endpoint.
    #[derive(Clone, Default)]
    struct Calls {
        single: Arc<AtomicUsize>,
        batch: Arc<AtomicUsize>,
    }

    impl Calls {
        fn single(&self) -> usize {
            self.single.load(Ordering::SeqCst)
        }
        fn batch(&self) -> usize {
            self.batch.load(Ordering::SeqCst)
        }
    }

    fn not_found_wire() -> Result<OutcomeWire, ErrorWire> {
        Err(ErrorWire::NotFound {
            service: "web".into(),
            id: "a".into(),
        })
    }

    async fn serve(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// A leader that leaves the first `lost` requests unanswered (applied,
    /// but the answer never arrives within an attempt), then answers "not
    /// found" to every write, on the single endpoint and, when `batches`, on
    /// the batch endpoint (one answer per op); its read index is 42.
    async fn leader_with(lost: usize, batches: bool) -> (String, Calls) {
        let calls = Calls::default();
        let seen = Arc::new(AtomicUsize::new(0));
        let (single, batch) = (calls.single.clone(), calls.batch.clone());
        let lost_first = move |seen: &AtomicUsize| seen.fetch_add(1, Ordering::SeqCst) < lost;
        let seen1 = seen.clone();
        let mut app = axum::Router::new()
            .route(
                WRITE_PATH,
                post(move || {
                    single.fetch_add(1, Ordering::SeqCst);
                    let hang = lost_first(&seen1);
                    async move {
                        if hang {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Json(not_found_wire())
                    }
                }),
            )
            .route(
                "/v1/raft/read-index",
                get(|| async { Json(Ok::<u64, ErrorWire>(42)) }),
            );
        if batches {
            app = app.route(
                WRITES_PATH,
                post(move |Json(body): Json<serde_json::Value>| {
                    batch.fetch_add(1, Ordering::SeqCst);
                    let hang = lost_first(&seen);
                    async move {
                        if hang {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        let n = body["ops"].as_array().map_or(0, Vec::len);
                        Json(vec![not_found_wire(); n])
                    }
                }),
            );
        }
        (serve(app).await, calls)
    }

    async fn leader(lost: usize) -> (String, Calls) {
        leader_with(lost, true).await
    }

    fn deregister(gone_is_done: bool) -> Forward {
        Forward {
            path: WRITE_PATH,
            body: serde_json::to_vec(
                &serde_json::json!({"op": "deregister", "service": "web", "id": "a"}),
            )
            .expect("encodes")
            .into(),
            gone_is_done,
            deadline: Instant::now() + Duration::from_secs(10),
            attempt: Duration::from_millis(300),
        }
    }

    fn peers() -> Peers {
        Peers::new(9, "token".into(), Duration::from_secs(5), None).unwrap()
    }

    /// Both ways of carrying a write, each with the endpoint it uses.
    fn carriers() -> Vec<(&'static str, Box<dyn Carrier>)> {
        vec![
            (WRITE_PATH, Box::new(Direct(peers()))),
            (WRITES_PATH, Box::new(Batching::new(peers()))),
        ]
    }

    /// Requests on the endpoint `path` stands for.
    fn on(calls: &Calls, path: &str) -> usize {
        if path == WRITES_PATH {
            calls.batch()
        } else {
            calls.single()
        }
    }

    fn not_found(r: &Result<Outcome, WriteError>) -> bool {
        matches!(r, Err(WriteError::Catalog(CatalogError::NotFound { .. })))
    }

    #[tokio::test]
    async fn a_deregistration_whose_first_answer_was_lost_is_done() {
        for (path, carrier) in carriers() {
            let (url, calls) = leader(1).await;
            let r = deregister(true)
                .send(&peers(), carrier.as_ref(), Script(vec![(1, url)]))
                .await;
            assert_eq!(
                on(&calls, path),
                2,
                "{path}: sent again after the lost answer"
            );
            assert_eq!(calls.single() + calls.batch(), 2, "{path} only");
            let out = r.expect("the earlier attempt's success");
            assert_eq!(
                out.index, 42,
                "the leader's read index, for read-your-writes"
            );
            assert!(out.changed);
        }
    }

    #[tokio::test]
    async fn not_found_at_the_first_answer_stays_not_found() {
        for (path, carrier) in carriers() {
            let (url, calls) = leader(0).await;
            let r = deregister(true)
                .send(&peers(), carrier.as_ref(), Script(vec![(1, url)]))
                .await;
            assert_eq!(on(&calls, path), 1, "{path}");
            assert!(not_found(&r), "{path}: {r:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_carried_nothing() {
        for (path, carrier) in carriers() {
            // A port nothing listens on: the first attempt is refused, so the
            // "not found" of the next leader is the truth.
            let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let dead_url = format!("http://{}", dead.local_addr().unwrap());
            drop(dead);
            let (url, calls) = leader(0).await;
            let r = deregister(true)
                .send(
                    &peers(),
                    carrier.as_ref(),
                    Script(vec![(1, dead_url), (2, url)]),
                )
                .await;
            assert_eq!(on(&calls, path), 1, "{path}");
            assert!(not_found(&r), "{path}: {r:?}");
        }
    }

    #[tokio::test]
    async fn other_writes_keep_not_found_after_a_lost_answer() {
        for (path, carrier) in carriers() {
            let (url, calls) = leader(1).await;
            let heartbeat = deregister(false);
            let r = heartbeat
                .send(&peers(), carrier.as_ref(), Script(vec![(1, url)]))
                .await;
            assert_eq!(on(&calls, path), 2, "{path}");
            assert!(not_found(&r), "{path}: {r:?}");
        }
    }

    #[tokio::test]
    async fn an_older_leader_without_the_batch_endpoint_gets_single_writes() {
        // 404 (no such route), and 405 (a GET route at that path).
        for with_get in [false, true] {
            let (url, calls) = if with_get {
                let calls = Calls::default();
                let single = calls.single.clone();
                let app = axum::Router::new()
                    .route(
                        WRITE_PATH,
                        post(move || {
                            single.fetch_add(1, Ordering::SeqCst);
                            async { Json(not_found_wire()) }
                        }),
                    )
                    .route(WRITES_PATH, get(|| async { "not this way" }));
                (serve(app).await, calls)
            } else {
                leader_with(0, false).await
            };
            let batching = Batching::new(peers());
            for round in 0..2 {
                let r = deregister(true)
                    .send(&peers(), &batching, Script(vec![(1, url.clone())]))
                    .await;
                assert!(not_found(&r), "405: {with_get}, round {round}: {r:?}");
            }
            assert_eq!(
                calls.single(),
                2,
                "405: {with_get}: each write reached the single endpoint once"
            );
        }
    }

    /// A leader whose batch endpoint holds every request until `open`, then
    /// answers each deregistration of instance `iN` with index N.
    struct Echo {
        url: String,
        open: Arc<tokio::sync::Semaphore>,
        requests: Arc<AtomicUsize>,
        ops: Arc<AtomicUsize>,
        max_open: Arc<AtomicUsize>,
        /// Most ops in one request.
        max_ops: Arc<AtomicUsize>,
    }

    async fn echo_leader() -> Echo {
        let open = Arc::new(tokio::sync::Semaphore::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let ops = Arc::new(AtomicUsize::new(0));
        let max_open = Arc::new(AtomicUsize::new(0));
        let now_open = Arc::new(AtomicUsize::new(0));
        let max_ops = Arc::new(AtomicUsize::new(0));
        let (o, r, n, m) = (
            open.clone(),
            requests.clone(),
            ops.clone(),
            max_open.clone(),
        );
        let mo = max_ops.clone();
        let app = axum::Router::new().route(
            WRITES_PATH,
            post(move |Json(body): Json<serde_json::Value>| {
                let (o, n, m, now_open) = (o.clone(), n.clone(), m.clone(), now_open.clone());
                r.fetch_add(1, Ordering::SeqCst);
                let mo = mo.clone();
                async move {
                    let list = body["ops"].as_array().cloned().unwrap_or_default();
                    n.fetch_add(list.len(), Ordering::SeqCst);
                    mo.fetch_max(list.len(), Ordering::SeqCst);
                    let open_now = now_open.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(open_now, Ordering::SeqCst);
                    drop(o.acquire().await.expect("never closed"));
                    now_open.fetch_sub(1, Ordering::SeqCst);
                    let answers: Vec<Result<OutcomeWire, ErrorWire>> = list
                        .iter()
                        .map(|op| {
                            let id = op["id"].as_str().unwrap_or_default();
                            match id.strip_prefix('i').and_then(|n| n.parse::<u64>().ok()) {
                                Some(index) => Ok(OutcomeWire {
                                    index,
                                    changed: true,
                                    expired: 0,
                                    reaped: 0,
                                    held: 0,
                                }),
                                None => Err(ErrorWire::NotFound {
                                    service: "web".into(),
                                    id: id.into(),
                                }),
                            }
                        })
                        .collect();
                    Json(answers)
                }
            }),
        );
        Echo {
            url: serve(app).await,
            open,
            requests,
            ops,
            max_open,
            max_ops,
        }
    }

    fn deregister_id(id: &str) -> Forward {
        Forward {
            body: serde_json::to_vec(
                &serde_json::json!({"op": "deregister", "service": "web", "id": id}),
            )
            .expect("encodes")
            .into(),
            attempt: Duration::from_secs(20),
            deadline: Instant::now() + Duration::from_secs(30),
            ..deregister(false)
        }
    }

    #[tokio::test]
    async fn writes_waiting_together_leave_together_and_get_their_own_answers() {
        let leader = echo_leader().await;
        let batching = Batching::new(peers());
        let n = 100;
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..n {
            let (b, url) = (batching.clone(), leader.url.clone());
            // One write the leader refuses among the others.
            let id = if i == 50 {
                "bad".to_owned()
            } else {
                format!("i{i}")
            };
            sends.spawn(async move {
                let r = deregister_id(&id)
                    .send(&peers(), &b, Script(vec![(1, url)]))
                    .await;
                (i, r)
            });
            if i == 0 {
                // The first goes alone, at once; the others queue behind it.
                tokio::time::timeout(Duration::from_secs(20), async {
                    while leader.ops.load(Ordering::SeqCst) < 1 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                })
                .await
                .expect("a lone write leaves at once");
            }
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            while leader.ops.load(Ordering::SeqCst) + batching.queued(&leader.url) < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "every write sent or queued: {} requests, {} ops, {} queued",
                leader.requests.load(Ordering::SeqCst),
                leader.ops.load(Ordering::SeqCst),
                batching.queued(&leader.url)
            )
        });
        assert_eq!(
            leader.requests.load(Ordering::SeqCst),
            2,
            "the lone write, then one batch of what queued behind it"
        );
        leader.open.add_permits(1_000);
        while let Some(done) = sends.join_next().await {
            let (i, r) = done.expect("no panic");
            if i == 50 {
                assert!(not_found(&r), "the refused write gets its own error: {r:?}");
            } else {
                assert_eq!(r.expect("applied").index, i as u64, "write {i}");
            }
        }
        assert_eq!(leader.ops.load(Ordering::SeqCst), n, "each write sent once");
        assert!(
            leader.requests.load(Ordering::SeqCst) <= 3,
            "the lone write, then the queue in one or two batches: {} requests",
            leader.requests.load(Ordering::SeqCst)
        );
        assert!(leader.max_open.load(Ordering::SeqCst) <= 2);
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_max_ops() {
        use crate::cluster::carrier::MAX_OPS;
        let leader = echo_leader().await;
        let batching = Batching::new(peers());
        let n = 2 + 2 * MAX_OPS + 10;
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..n {
            let (b, url) = (batching.clone(), leader.url.clone());
            sends.spawn(async move {
                deregister_id(&format!("i{i}"))
                    .send(&peers(), &b, Script(vec![(1, url)]))
                    .await
                    .map(|o| (i, o.index))
            });
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            while leader.requests.load(Ordering::SeqCst) < 2
                || leader.ops.load(Ordering::SeqCst) + batching.queued(&leader.url) < n
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("every write sent or queued");
        let first_two = leader.ops.load(Ordering::SeqCst);
        leader.open.add_permits(10_000);
        while let Some(done) = sends.join_next().await {
            let (i, index) = done.expect("no panic").expect("applied");
            assert_eq!(index, i as u64);
        }
        let batches = leader.requests.load(Ordering::SeqCst) - 2;
        let rest = n - first_two;
        assert!(leader.max_ops.load(Ordering::SeqCst) <= MAX_OPS);
        assert!(
            batches >= rest.div_ceil(MAX_OPS),
            "{rest} queued writes in {batches} batches of at most {MAX_OPS}"
        );
    }

    /// A leader that renews heartbeats of instance `iN` with index N, on the
    /// batch endpoint when `batches`, always on the single one; counts the
    /// requests on each.
    async fn heartbeat_leader(batches: bool) -> (String, Calls) {
        fn answer(hb: &serde_json::Value) -> Result<OutcomeWire, ErrorWire> {
            let id = hb["id"].as_str().unwrap_or_default();
            let index = id
                .strip_prefix('i')
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            Ok(OutcomeWire {
                index,
                changed: false,
                expired: 0,
                reaped: 0,
                held: 0,
            })
        }
        let calls = Calls::default();
        let (single, batch) = (calls.single.clone(), calls.batch.clone());
        let mut app = axum::Router::new()
            .route(
                HEARTBEAT_PATH,
                post(move |Json(hb): Json<serde_json::Value>| {
                    single.fetch_add(1, Ordering::SeqCst);
                    async move { Json(answer(&hb)) }
                }),
            )
            // Nothing may come here: heartbeats never enter the log.
            .route(
                WRITES_PATH,
                post(|| async { axum::http::StatusCode::IM_A_TEAPOT }),
            )
            .route(
                WRITE_PATH,
                post(|| async { axum::http::StatusCode::IM_A_TEAPOT }),
            );
        if batches {
            app = app.route(
                HEARTBEATS_PATH,
                post(move |Json(body): Json<serde_json::Value>| {
                    batch.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let list = body["ops"].as_array().cloned().unwrap_or_default();
                        Json(list.iter().map(answer).collect::<Vec<_>>())
                    }
                }),
            );
        }
        (serve(app).await, calls)
    }

    fn heartbeat(id: &str) -> Forward {
        Forward {
            path: HEARTBEAT_PATH,
            body: serde_json::to_vec(&serde_json::json!({"service": "web", "id": id}))
                .expect("encodes")
                .into(),
            gone_is_done: false,
            deadline: Instant::now() + Duration::from_secs(10),
            attempt: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn heartbeats_travel_in_batches_of_their_own_each_answered() {
        for batches in [true, false] {
            let (url, calls) = heartbeat_leader(batches).await;
            let batching = Batching::new(peers());
            let sent = futures_util::future::join_all((1..=60u64).map(|n| {
                let (batching, url) = (&batching, url.clone());
                async move {
                    let r = heartbeat(&format!("i{n}"))
                        .send(&peers(), batching, Script(vec![(1, url)]))
                        .await;
                    (n, r)
                }
            }))
            .await;
            for (n, r) in sent {
                let out = r.unwrap_or_else(|e| panic!("batches {batches}: i{n}: {e:?}"));
                // The read index is the leader's 42 only for writes that
                // changed something; a renewal answers its own index.
                assert_eq!(out.index, n, "batches {batches}: i{n} got its own answer");
            }
            if batches {
                assert_eq!(calls.single(), 0);
                assert!(
                    (1..60).contains(&calls.batch()),
                    "60 heartbeats in fewer requests: {}",
                    calls.batch()
                );
            } else {
                // An older leader (404 on the batch endpoint): one by one.
                assert_eq!(calls.single(), 60);
            }
        }
    }
}
