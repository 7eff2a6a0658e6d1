//! A [`tower::discover::Discover`] source for tower and tonic users: a
//! stream of [`Change`]s keyed by instance id, following a [`ServiceHandle`].

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use tokio::sync::watch;

pub use tower::discover::Change;

use crate::api::Instance;
use crate::{ServiceHandle, ServiceState};

/// The healthy instances of a service as a [`Discover`](tower::discover::Discover)
/// stream: first an insert for every instance, then an insert when an
/// instance appears (or its address or port changes, replacing the old
/// service) and a remove when it leaves or stops being healthy. `make`
/// builds the tower service for an instance (a tonic `Channel`, say).
///
/// ```no_run
/// # async fn demo() -> Result<(), roster_client::Error> {
/// use roster_client::{Discovery, RosterClient, ServiceDiscover};
///
/// let discovery = Discovery::new(RosterClient::new("http://127.0.0.1:8500")?);
/// let discover = ServiceDiscover::new(discovery.service("grpc-users"), |instance| {
///     format!("http://{}:{}", instance.address, instance.port) // e.g. build a Channel here
/// });
/// // tower::balance::p2c::Balance::new(discover) ...
/// # let _ = discover; Ok(()) }
/// ```
pub struct ServiceDiscover<F> {
    changes: BoxStream<'static, Change<String, Instance>>,
    make: F,
    /// Keeps discovery's watch task running: it stops with the last handle.
    _handle: Option<ServiceHandle>,
}

impl<F> fmt::Debug for ServiceDiscover<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceDiscover").finish_non_exhaustive()
    }
}

impl<F, S> ServiceDiscover<F>
where
    F: FnMut(&Instance) -> S,
{
    /// Follows `handle`, building services with `make`.
    pub fn new(handle: ServiceHandle, make: F) -> Self {
        let mut discover = ServiceDiscover::from_changes(handle.changes(), make);
        discover._handle = Some(handle);
        discover
    }

    pub(crate) fn from_changes(changes: watch::Receiver<ServiceState>, make: F) -> Self {
        let batches = stream::unfold(
            (changes, BTreeMap::new(), true),
            |(mut rx, mut known, first)| async move {
                let mut wait = !first;
                loop {
                    if wait && rx.changed().await.is_err() {
                        return None; // discovery stopped
                    }
                    wait = true;
                    let state = rx.borrow_and_update().clone();
                    if state.index == 0 {
                        continue;
                    }
                    let changes = diff(&mut known, &state.healthy);
                    if !changes.is_empty() {
                        return Some((stream::iter(changes), (rx, known, false)));
                    }
                }
            },
        );
        ServiceDiscover {
            changes: batches.flatten().boxed(),
            make,
            _handle: None,
        }
    }
}

impl<F, S> ServiceDiscover<F>
where
    F: FnMut(&Instance) -> S + Unpin,
{
    /// The next change, for callers without a stream combinator at hand;
    /// `None` once discovery stopped.
    pub async fn next_change(&mut self) -> Option<Change<String, S>> {
        let Ok(change) = self.next().await?;
        Some(change)
    }
}

impl<F, S> Stream for ServiceDiscover<F>
where
    F: FnMut(&Instance) -> S + Unpin,
{
    type Item = Result<Change<String, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        this.changes.poll_next_unpin(cx).map(|change| {
            change.map(|change| {
                Ok(match change {
                    Change::Insert(id, instance) => Change::Insert(id, (this.make)(&instance)),
                    Change::Remove(id) => Change::Remove(id),
                })
            })
        })
    }
}

/// Turns the move from `known` to `healthy` into changes (removes first,
/// each group ordered by id) and updates `known`.
fn diff(
    known: &mut BTreeMap<String, (String, u16)>,
    healthy: &[Instance],
) -> Vec<Change<String, Instance>> {
    let mut changes: Vec<_> = known
        .keys()
        .filter(|id| !healthy.iter().any(|i| &i.id == *id))
        .map(|id| Change::Remove(id.clone()))
        .collect();
    for change in &changes {
        if let Change::Remove(id) = change {
            known.remove(id);
        }
    }
    for instance in healthy {
        let target = (instance.address.clone(), instance.port);
        if known.get(&instance.id) != Some(&target) {
            known.insert(instance.id.clone(), target);
            changes.push(Change::Insert(instance.id.clone(), instance.clone()));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn instance(id: &str, port: u16) -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": id, "service": "web", "address": "10.0.0.1", "port": port,
            "health": "passing", "deregister_critical_after": "1m",
            "create_index": 1, "modify_index": 1
        }))
        .unwrap()
    }

    fn state(index: u64, healthy: Vec<Instance>) -> ServiceState {
        let healthy: Arc<[Instance]> = healthy.into();
        ServiceState {
            index,
            epoch: Some(1),
            version: index,
            all: healthy.clone(),
            healthy,
            stale: Arc::from(Vec::new()),
            freshness: crate::Freshness::Fresh,
            settle_until: None,
            connected: true,
            disconnected_since: None,
        }
    }

    fn keys(changes: &[Change<String, u16>]) -> Vec<String> {
        changes
            .iter()
            .map(|c| match c {
                Change::Insert(id, port) => format!("+{id}:{port}"),
                Change::Remove(id) => format!("-{id}"),
            })
            .collect()
    }

    async fn take(
        d: &mut ServiceDiscover<impl FnMut(&Instance) -> u16 + Unpin>,
        n: usize,
    ) -> Vec<Change<String, u16>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), d.next());
            out.push(next.await.expect("a change").expect("open").unwrap());
        }
        out
    }

    #[tokio::test]
    async fn inserts_then_follows_changes() {
        let (tx, rx) = watch::channel(state(0, vec![]));
        let mut d = ServiceDiscover::from_changes(rx, |i: &Instance| i.port);
        tx.send_replace(state(1, vec![instance("a", 1), instance("b", 2)]));
        assert_eq!(keys(&take(&mut d, 2).await), ["+a:1", "+b:2"]);
        // b leaves, c arrives, a moves to another port; d's heartbeat-only
        // change (same address and port) gives nothing.
        tx.send_replace(state(2, vec![instance("a", 9), instance("c", 3)]));
        assert_eq!(keys(&take(&mut d, 3).await), ["-b", "+a:9", "+c:3"]);
        tx.send_replace(state(3, vec![instance("a", 9), instance("c", 3)]));
        tx.send_replace(state(4, vec![instance("c", 3)]));
        let removed = d.next_change().await.expect("a change");
        assert_eq!(keys(&[removed]), ["-a"]);
        drop(tx);
        assert!(d.next().await.is_none(), "ends when discovery stops");
    }

    #[test]
    fn is_a_tower_discover() {
        fn discover<D: tower::discover::Discover<Key = String>>(_: &D) {}
        let (_tx, rx) = watch::channel(state(0, vec![]));
        discover(&ServiceDiscover::from_changes(rx, |i: &Instance| i.port));
    }
}
