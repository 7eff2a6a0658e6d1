//! A service's healthy instances as the registry's healthy-only answer gives
//! them, failover across datacenters included.
//!
//! [`crate::Discovery`] follows the whole catalog stream and filters health
//! itself, so it only ever sees its own datacenter. [`HealthyWatch`] follows
//! `GET /v1/services/{service}` with blocking queries instead: when the
//! registry's datacenter has no healthy instance and the service has a
//! failover list, that answer comes from another datacenter, and
//! [`HealthyState::datacenter`] names it. The switch there and back arrives
//! as a change like any other.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::Instance;
use crate::{Error, InstanceQuery, RosterClient, Unavailable};

/// `wait` of the blocking queries.
const WAIT: Duration = Duration::from_secs(30);
/// Longest pause between attempts after an error (jittered).
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// One state of a [`HealthyWatch`].
#[derive(Clone, Debug, Default)]
pub struct HealthyState {
    /// The answer's index (0 before the first answer).
    pub index: u64,
    /// Strictly increasing with every change of this copy.
    pub version: u64,
    /// The healthy instances, from the datacenter that answered.
    pub instances: Arc<[Instance]>,
    /// The datacenter they are from when it is not the registry's own (a
    /// failover answer, or a client made with
    /// [`RosterClient::with_datacenter`]).
    pub datacenter: Option<String>,
    /// When the registry last failed to answer, while it does.
    pub failing_since: Option<Instant>,
    /// Why, while it does.
    pub error: Option<String>,
}

/// Follows one service's healthy-only answer; the task stops when the
/// handle is dropped.
#[derive(Debug)]
pub struct HealthyWatch {
    service: String,
    rx: watch::Receiver<HealthyState>,
    task: JoinHandle<()>,
    max_staleness: Duration,
}

impl Drop for HealthyWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HealthyWatch {
    /// Starts following `service` through `client` (needs a Tokio runtime);
    /// the last answer is served for at most `max_staleness` while the
    /// registry does not answer.
    pub fn new(client: RosterClient, service: &str, max_staleness: Duration) -> HealthyWatch {
        let (tx, rx) = watch::channel(HealthyState::default());
        let task = tokio::spawn(follow(client, service.to_owned(), tx));
        HealthyWatch {
            service: service.to_owned(),
            rx,
            task,
            max_staleness,
        }
    }

    /// The healthy instances now (possibly another datacenter's).
    pub fn instances(&self) -> Result<Arc<[Instance]>, Error> {
        let state = self.rx.borrow();
        if state.index == 0 {
            return Err(Unavailable::NoAnswerYet {
                service: self.service.clone(),
            }
            .into());
        }
        if let Some(since) = state.failing_since {
            let age = since.elapsed();
            if age > self.max_staleness {
                return Err(Unavailable::TooStale {
                    service: self.service.clone(),
                    age,
                    max_staleness: self.max_staleness,
                }
                .into());
            }
        }
        Ok(state.instances.clone())
    }

    /// The datacenter the instances come from, when not the registry's own.
    pub fn datacenter(&self) -> Option<String> {
        self.rx.borrow().datacenter.clone()
    }

    /// Waits for the first answer.
    pub async fn ready(&self) -> Result<(), Error> {
        let mut rx = self.rx.clone();
        rx.wait_for(|s| s.index > 0)
            .await
            .map(drop)
            .map_err(|_| Unavailable::DiscoveryStopped.into())
    }

    /// Every change.
    pub fn changes(&self) -> watch::Receiver<HealthyState> {
        self.rx.clone()
    }
}

async fn follow(client: RosterClient, service: String, tx: watch::Sender<HealthyState>) {
    let query = InstanceQuery::default();
    let mut index = 0;
    let mut backoff = Duration::from_millis(100);
    let mut version = 0;
    loop {
        match client
            .instances_blocking(&service, &query, index, WAIT)
            .await
        {
            Ok(answer) => {
                backoff = Duration::from_millis(100);
                let datacenter = answer
                    .datacenter
                    .clone()
                    .or_else(|| client.datacenter().map(str::to_owned));
                let changed = {
                    let s = tx.borrow();
                    s.index != answer.index
                        || s.failing_since.is_some()
                        || s.datacenter != datacenter
                };
                index = answer.index;
                if changed {
                    version += 1;
                    tx.send_replace(HealthyState {
                        index: answer.index,
                        version,
                        instances: answer.instances.into(),
                        datacenter,
                        failing_since: None,
                        error: None,
                    });
                }
            }
            Err(e) => {
                tx.send_modify(|s| {
                    s.failing_since.get_or_insert_with(Instant::now);
                    s.error = Some(e.to_string());
                });
                // The next answer is complete, whatever index it comes at.
                index = 0;
                let pause = backoff.mul_f64(0.5 + fastrand::f64());
                backoff = (backoff * 2).min(MAX_BACKOFF);
                tokio::time::sleep(pause).await;
            }
        }
    }
}
