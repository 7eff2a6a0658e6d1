//! What both ADS protocols share: a stream is the response body tonic polls.
//! It does its work only when polled, so a client that does not read (its
//! HTTP/2 window full) costs nothing until it reads again, and then gets the
//! latest state. The protocol decides what to answer ([`Session`]); the
//! driver here waits for a request or a change and hands out the answers.

use std::collections::VecDeque;
use std::sync::Arc;

use futures_util::Stream;
use tonic::{Status, Streaming};

use super::{Open, Wake, Xds};

/// One ADS protocol's state on one stream.
pub(super) trait Session: Send + 'static {
    type Request: Send + 'static;
    type Response: Send + 'static;

    /// Takes in one request, queueing what it answers; an error ends the
    /// stream with that status.
    fn request(
        &mut self,
        xds: &Xds,
        wake: &mut Wake,
        req: Self::Request,
        out: &mut VecDeque<Self::Response>,
    ) -> Result<(), Status>;

    /// The catalog (or another datacenter's answer) changed: queues what
    /// the client should be sent now.
    fn changed(&mut self, xds: &Xds, out: &mut VecDeque<Self::Response>);
}

/// The response stream of `session` over `requests`.
pub(super) fn drive<S: Session>(
    xds: Arc<Xds>,
    requests: Streaming<S::Request>,
    open: Open,
    session: S,
) -> impl Stream<Item = Result<S::Response, Status>> + Send + 'static {
    let driver = Driver {
        wake: Wake::new(xds.failover()),
        xds,
        requests,
        _open: open,
        session,
        pending: VecDeque::new(),
        done: false,
    };
    futures_util::stream::unfold(driver, |mut driver| async move {
        let next = driver.next().await?;
        Some((next, driver))
    })
}

struct Driver<S: Session> {
    xds: Arc<Xds>,
    requests: Streaming<S::Request>,
    /// Held for the stream's life: its place under the stream limit.
    _open: Open,
    wake: Wake,
    session: S,
    /// Responses decided on and not yet taken (one change can produce one
    /// per type).
    pending: VecDeque<S::Response>,
    done: bool,
}

impl<S: Session> Driver<S> {
    /// The next response; `None` once the stream ends.
    async fn next(&mut self) -> Option<Result<S::Response, Status>> {
        loop {
            if let Some(response) = self.pending.pop_front() {
                return Some(Ok(response));
            }
            if self.done {
                return None;
            }
            // A request, or `None` for a change.
            let request = tokio::select! {
                () = self.xds.cancel.cancelled() => return None,
                req = self.requests.message() => Some(req),
                open = self.wake.changed() => {
                    if !open {
                        return None;
                    }
                    None
                }
            };
            match request {
                Some(Ok(Some(req))) => {
                    let (xds, wake) = (&*self.xds, &mut self.wake);
                    if let Err(status) = self.session.request(xds, wake, req, &mut self.pending) {
                        self.done = true;
                        return Some(Err(status));
                    }
                }
                Some(Ok(None) | Err(_)) => return None,
                None => {
                    // Let every stream woken by this change queue its
                    // response before the connections write: on the xDS
                    // threads' runtimes a yielded task runs again after the
                    // others, so a connection writes its streams' responses
                    // together instead of one system call each.
                    tokio::task::yield_now().await;
                    self.session.changed(&self.xds, &mut self.pending);
                }
            }
        }
    }
}
