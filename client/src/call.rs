//! One logical request through the [`Router`](crate::Router): its attempts,
//! the endpoints they went to, and the retry decisions between them.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use crate::api::Instance;
use crate::balance::InFlight;
use crate::bulkhead::Permit;
use crate::error::CallError;
use crate::router::{EndpointSet, Pool};

/// How an attempt went, as far as the endpoint's health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// The endpoint answered (any answer that is not a server failure: a 404
    /// is the endpoint working).
    Success,
    /// The endpoint failed (5xx, broken connection) after the request may
    /// have reached it: retried only if the request is idempotent.
    Failed,
    /// The endpoint did not answer in time: a failure, retried only if the
    /// request is idempotent, and no sign of life (the endpoint's silence
    /// goes on; see [`StallConfig`](crate::resilience::StallConfig)).
    TimedOut,
    /// The request never reached the endpoint (connection refused): counts
    /// against the endpoint, and may be retried whatever the method.
    NotSent,
}

/// A logical request in progress: ask for an [`Attempt`] with
/// [`next_attempt`](Call::next_attempt), send it, report with
/// [`finish`](Call::finish), and go again while `finish` says to retry.
///
/// Holds a place in the service's bulkhead until dropped.
pub struct Call {
    pool: Arc<Pool>,
    idempotent: bool,
    retries_allowed: bool,
    tried: Vec<Arc<str>>,
    snapshot: Option<Arc<EndpointSet>>,
    _permit: Permit,
}

impl fmt::Debug for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("service", &self.pool.service)
            .field("idempotent", &self.idempotent)
            .field("tried", &self.tried)
            .finish_non_exhaustive()
    }
}

impl Call {
    pub(crate) fn new(pool: Arc<Pool>, idempotent: bool, permit: Permit) -> Self {
        Call {
            pool,
            idempotent,
            retries_allowed: true,
            tried: Vec::new(),
            snapshot: None,
            _permit: permit,
        }
    }

    /// The service.
    pub fn service(&self) -> &str {
        &self.pool.service
    }

    /// Attempts so far.
    pub fn attempts(&self) -> u32 {
        self.tried.len() as u32
    }

    /// Forbids retries, e.g. because the request body cannot be sent twice.
    pub fn disable_retries(&mut self) {
        self.retries_allowed = false;
    }

    /// The endpoint for the next attempt, after the backoff pause when it is
    /// a retry. Never one this call already tried.
    pub async fn next_attempt(&mut self) -> Result<Attempt, CallError> {
        let retry = self.attempts();
        if retry > 0 {
            tokio::time::sleep(self.pool.config.retry.backoff(retry)).await;
        }
        let snapshot = self.pool.snapshot()?;
        let pick = self.pool.pick(&snapshot, &self.tried, Instant::now())?;
        let id = snapshot.endpoints[pick.index].id_arc().clone();
        self.tried.push(id.clone());
        let attempt = Attempt {
            pool: self.pool.clone(),
            snapshot: snapshot.clone(),
            index: pick.index,
            id,
            number: retry + 1,
            in_flight: Some(pick.in_flight),
            probe: pick.probe,
            started: Instant::now(),
        };
        self.snapshot = Some(snapshot);
        Ok(attempt)
    }

    /// Reports how `attempt` went and says whether to retry: only after a
    /// failure, for an idempotent request (or one never sent), with retries
    /// left, another endpoint to go to, and room in the retry budget.
    pub fn finish(&mut self, mut attempt: Attempt, outcome: AttemptOutcome) -> bool {
        let now = Instant::now();
        attempt.report(outcome);
        let retryable = match outcome {
            AttemptOutcome::Success => false,
            AttemptOutcome::Failed | AttemptOutcome::TimedOut => self.idempotent,
            AttemptOutcome::NotSent => true,
        };
        let config = &self.pool.config.retry;
        if !retryable || !self.retries_allowed || self.attempts() > config.max_retries {
            return false;
        }
        let Some(snapshot) = &self.snapshot else {
            return false;
        };
        if !self.pool.has_untried(snapshot, &self.tried, now) {
            return false;
        }
        if !self.pool.budget.try_retry(now) {
            tracing::debug!(service = %self.pool.service, "retry budget exhausted; not retrying");
            return false;
        }
        true
    }
}

/// One attempt of a [`Call`]: the endpoint to send to. Counts as in flight
/// (for balancing and the endpoint bulkhead) until passed to
/// [`Call::finish`] or dropped; dropping it counts as a cancellation, not a
/// failure.
pub struct Attempt {
    pool: Arc<Pool>,
    snapshot: Arc<EndpointSet>,
    index: usize,
    id: Arc<str>,
    number: u32,
    in_flight: Option<InFlight>,
    probe: bool,
    started: Instant,
}

impl fmt::Debug for Attempt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attempt")
            .field("service", &self.pool.service)
            .field("endpoint", &self.id)
            .field("number", &self.number)
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl Attempt {
    /// The instance id of the endpoint.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The registered instance.
    pub fn instance(&self) -> &Instance {
        self.snapshot.instance(self.index)
    }

    /// The address to send to (IP address or host name).
    pub fn address(&self) -> &str {
        &self.instance().address
    }

    /// The port to send to.
    pub fn port(&self) -> u16 {
        self.instance().port
    }

    /// 1 for the first attempt, 2 for the first retry, ...
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Whether this attempt probes an endpoint whose ejection just ended.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    fn report(&mut self, outcome: AttemptOutcome) {
        let Some(in_flight) = self.in_flight.take() else {
            return;
        };
        self.pool.report(
            &self.id,
            in_flight,
            outcome,
            self.started,
            self.probe,
            self.snapshot.endpoints.len(),
        );
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.in_flight.is_some() && self.probe {
            // Cancelled before an outcome: let another request probe.
            if let Some(d) = &self.pool.outlier {
                d.cancel_probe(&self.id);
            }
        }
    }
}
