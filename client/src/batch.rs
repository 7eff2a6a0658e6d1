//! [`RosterClient::batch`]: many instance writes in one request.

use reqwest::Method;
use serde::Serialize;

use crate::api::{BatchOp, BatchResponse, ItemProblem};
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

impl Error {
    /// The refused operations of a batch ([`RosterClient::batch`]), each
    /// with its position, status, field and reason; empty for other errors.
    pub fn batch_errors(&self) -> &[ItemProblem] {
        self.problem().map_or(&[], |p| p.errors.as_slice())
    }

    /// Whether the registry has no batch endpoint (one older than it): the
    /// caller may write the operations one by one instead.
    pub fn is_no_batch_endpoint(&self) -> bool {
        matches!(self, Error::NotFound(p) if p.kind.ends_with(":no-route") || p.kind.is_empty())
            || matches!(self, Error::Invalid(p) if p.status == 405)
    }
}
