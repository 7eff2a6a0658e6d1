//! [`RosterClient::batch`]: many instance writes in one request.

use reqwest::Method;
use serde::Serialize;

use crate::api::{BatchOp, BatchResponse, ItemProblem, MAX_BATCH_OPS, MaintenanceRequest, Problem};
use crate::{Error, RosterClient};

/// The body of `POST /v1/batch`, borrowing the caller's operations.
#[derive(Serialize)]
struct Body<'a> {
    ops: &'a [BatchOp],
}

impl RosterClient {
    /// Applies `ops` in one request (`POST /v1/batch`, at most
    /// [`crate::api::MAX_BATCH_OPS`]): all of them, in order, as one change,
    /// or none. A refusal is [`Error::Invalid`] (an operation is invalid or
    /// would fail) or [`Error::Denied`] (the token may not write a service
    /// named), and [`Error::batch_errors`] names each refused operation by
    /// its position. Sending a batch again is safe: registrations replace,
    /// heartbeats and maintenance set a state, and deregistering an instance
    /// that is gone is no error.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), roster_client::Error> {
    /// use roster_client::RosterClient;
    /// use roster_client::api::{BatchOp, BatchResult, RegisterRequest};
    /// let client = RosterClient::new("http://127.0.0.1:8500")?;
    /// let ops: Vec<BatchOp> = (0..100)
    ///     .map(|i| BatchOp::register("web", &format!("web-{i}"), RegisterRequest { port: 8080, ..Default::default() }))
    ///     .collect();
    /// let done = client.batch(&ops).await?;
    /// assert_eq!(done.results.len(), 100);
    /// println!("{} new", done.results.iter().filter(|r| **r == BatchResult::Created).count());
    /// # Ok(()) }
    /// ```
    pub async fn batch(&self, ops: &[BatchOp]) -> Result<BatchResponse, Error> {
        self.send(Method::POST, "/v1/batch", Some(&Body { ops }))
            .await
    }
}

impl RosterClient {
    /// Writes `ops` so that each succeeds or fails on its own, as if sent one
    /// by one, in as few requests as the registry allows: batches of at most
    /// [`MAX_BATCH_OPS`]; the operations a batch is refused for get their own
    /// error and the rest is sent again without them; a registry without the
    /// batch endpoint, or a batch failing as a whole (unreachable, no
    /// leader), gets the operations one by one. The results are in the order
    /// of `ops`. What registrars use to write many instances.
    pub async fn batch_each(&self, ops: &[BatchOp]) -> Vec<Result<(), Error>> {
        let mut results: Vec<Option<Result<(), Error>>> = ops.iter().map(|_| None).collect();
        let all: Vec<usize> = (0..ops.len()).collect();
        for chunk in all.chunks(MAX_BATCH_OPS) {
            let mut pending = chunk.to_vec();
            // Each round settles at least one operation, so this ends.
            while pending.len() > 1 {
                let batch: Vec<BatchOp> = pending.iter().map(|&i| ops[i].clone()).collect();
                match self.batch(&batch).await {
                    Ok(_) => {
                        for i in pending.drain(..) {
                            results[i] = Some(Ok(()));
                        }
                    }
                    Err(e) if !e.batch_errors().is_empty() => {
                        let mut refused = vec![false; pending.len()];
                        for item in e.batch_errors() {
                            if let Some(slot) = refused.get_mut(item.index)
                                && !*slot
                            {
                                *slot = true;
                                let i = pending[item.index];
                                // As `deregister` alone: an instance that is
                                // not there is deregistered.
                                let gone =
                                    item.status == 404 && matches!(ops[i], BatchOp::Deregister(_));
                                results[i] =
                                    Some(if gone { Ok(()) } else { Err(item_error(item)) });
                            }
                        }
                        pending = pending
                            .iter()
                            .zip(&refused)
                            .filter(|(_, r)| !**r)
                            .map(|(i, _)| *i)
                            .collect();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, operations = pending.len(), "batch not taken; writing one by one");
                        break;
                    }
                }
            }
            for i in pending {
                results[i] = Some(self.write_one(&ops[i]).await);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(not_written))
            .collect()
    }

    /// One operation through its own endpoint.
    async fn write_one(&self, op: &BatchOp) -> Result<(), Error> {
        match op {
            BatchOp::Register(r) => self
                .register(&r.service, &r.id, &r.instance)
                .await
                .map(drop),
            BatchOp::Deregister(r) => self.deregister(&r.service, &r.id).await,
            BatchOp::Heartbeat(r) => self.heartbeat(&r.service, &r.id).await,
            BatchOp::Maintenance(m) => {
                let req = MaintenanceRequest {
                    enabled: m.enabled,
                    reason: m.reason.clone(),
                };
                self.maintenance(&m.service, &m.id, &req).await.map(drop)
            }
        }
    }
}

/// The result of an operation left without one (never: every path above
/// settles each operation it takes).
fn not_written() -> Result<(), Error> {
    Err(Error::Protocol("operation not written".into()))
}

/// The error one refused operation of a batch would have had on its own.
fn item_error(item: &ItemProblem) -> Error {
    let problem = Problem {
        kind: String::new(),
        title: String::new(),
        status: item.status,
        detail: item.detail.clone(),
        field: item.field.clone(),
        errors: Box::default(),
    };
    match item.status {
        404 => Error::NotFound(problem),
        401 | 403 => Error::Denied(problem),
        _ => Error::Invalid(problem),
    }
}

impl Error {
    /// The refused operations of a batch ([`RosterClient::batch`]), each
    /// with its position, status, field and reason; empty for other errors.
    pub fn batch_errors(&self) -> &[ItemProblem] {
        self.problem().map_or(&[], |p| &p.errors)
    }

    /// Whether the registry has no batch endpoint (one older than it): the
    /// caller may write the operations one by one instead.
    pub fn is_no_batch_endpoint(&self) -> bool {
        matches!(self, Error::NotFound(p) if p.kind.ends_with(":no-route") || p.kind.is_empty())
            || matches!(self, Error::Invalid(p) if p.status == 405)
    }
}
