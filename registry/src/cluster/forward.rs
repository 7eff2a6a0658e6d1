//! Writes a follower sends to the leader, and what an unanswered attempt
//! means for the next one.

use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use openraft::BasicNode;
use tokio::time::Instant;

use super::network::Peers;
use super::ops::{ErrorWire, OutcomeWire};
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
    pub(super) body: Vec<u8>,
    /// "Not found" after an attempt that may have been applied is success.
    pub(super) gone_is_done: bool,
    pub(super) deadline: Instant,
    /// Bound of one attempt.
    pub(super) attempt: Duration,
}

impl Forward {
    /// Sends the write to the leader. The leader may be gone (crashed, paused,
    /// cut off): each attempt gets a short timeout, and the write goes to
    /// whichever node leads next, until the deadline. Sending a write again
    /// is safe (registering, heartbeats, checks and maintenance set a state),
    /// but an attempt that went out and got no answer may have been applied:
    /// a deregistration sent again then finds the instance gone. With
    /// `gone_is_done`, that "not found" after an unanswered attempt is the
    /// earlier attempt's success, answered with the leader's read index so the
    /// caller still reads its write on this node.
    pub(super) async fn send(
        self,
        peers: &Peers,
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
            let sent = peers
                .request(reqwest::Method::POST, format!("{url}{}", self.path))
                .timeout(
                    self.attempt
                        .min(deadline.saturating_duration_since(Instant::now())),
                )
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(self.body.clone())
                .send()
                .await;
            let answer = match sent {
                Ok(resp) => resp
                    .json::<Result<OutcomeWire, ErrorWire>>()
                    .await
                    .map_err(|source| {
                        maybe_applied = true;
                        Unavailable::LeaderAnswer { source }.into()
                    }),
                Err(source) => {
                    // Refused connections never carried the write.
                    maybe_applied |= !source.is_connect();
                    Err(Unavailable::LeaderUnreachable { source }.into())
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

    /// A leader that leaves the first `lost` writes unanswered (applied, but
    /// the answer never arrives within an attempt), then answers "not found";
    /// its read index is 42.
    async fn leader(lost: usize) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let app = axum::Router::new()
            .route(
                "/v1/raft/write",
                post(move || {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < lost {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                        }
                        Json(Err::<OutcomeWire, _>(ErrorWire::NotFound {
                            service: "web".into(),
                            id: "a".into(),
                        }))
                    }
                }),
            )
            .route(
                "/v1/raft/read-index",
                get(|| async { Json(Ok::<u64, ErrorWire>(42)) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), calls)
    }

    fn deregister(gone_is_done: bool) -> Forward {
        Forward {
            path: "/v1/raft/write",
            body: serde_json::to_vec(
                &serde_json::json!({"op": "deregister", "service": "web", "id": "a"}),
            )
            .expect("encodes"),
            gone_is_done,
            deadline: Instant::now() + Duration::from_secs(10),
            attempt: Duration::from_millis(300),
        }
    }

    fn peers() -> Peers {
        Peers::new(9, "token".into(), Duration::from_secs(5), None).unwrap()
    }

    fn not_found(r: &Result<Outcome, WriteError>) -> bool {
        matches!(r, Err(WriteError::Catalog(CatalogError::NotFound { .. })))
    }

    #[tokio::test]
    async fn a_deregistration_whose_first_answer_was_lost_is_done() {
        let (url, calls) = leader(1).await;
        let r = deregister(true)
            .send(&peers(), Script(vec![(1, url)]))
            .await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "sent again after the lost answer"
        );
        let out = r.expect("the earlier attempt's success");
        assert_eq!(
            out.index, 42,
            "the leader's read index, for read-your-writes"
        );
        assert!(out.changed);
    }

    #[tokio::test]
    async fn not_found_at_the_first_answer_stays_not_found() {
        let (url, calls) = leader(0).await;
        let r = deregister(true)
            .send(&peers(), Script(vec![(1, url)]))
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(not_found(&r), "{r:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_carried_nothing() {
        // A port nothing listens on: the first attempt is refused, so the
        // "not found" of the next leader is the truth.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_url = format!("http://{}", dead.local_addr().unwrap());
        drop(dead);
        let (url, calls) = leader(0).await;
        let r = deregister(true)
            .send(&peers(), Script(vec![(1, dead_url), (2, url)]))
            .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(not_found(&r), "{r:?}");
    }

    #[tokio::test]
    async fn other_writes_keep_not_found_after_a_lost_answer() {
        let (url, calls) = leader(1).await;
        let heartbeat = deregister(false);
        let r = heartbeat.send(&peers(), Script(vec![(1, url)])).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(not_found(&r), "{r:?}");
    }
}
