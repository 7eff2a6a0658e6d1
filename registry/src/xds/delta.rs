//! Incremental ADS (what Envoy speaks at scale): the client subscribes and
//! unsubscribes names, and gets only what changed: resources whose version
//! differs from the one it holds, and the names of those that are gone (or
//! never existed). A client that reconnects names the versions it holds and
//! is sent nothing it already has.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::resources::{Kind, Resources};
use super::{Xds, node_id};

/// Most names one stream may subscribe to per type.
const MAX_NAMES: usize = 10_000;

/// One resource type on one stream.
#[derive(Debug, Default)]
struct Sub {
    /// Names subscribed to by name.
    names: BTreeSet<Arc<str>>,
    /// Subscribed to everything of the type (`*`, or the first request of a
    /// listener or cluster subscription naming nothing).
    wildcard: bool,
    /// Version of each resource the client holds.
    held: HashMap<Arc<str>, Arc<str>>,
    /// Names the client was told do not exist.
    absent: BTreeSet<Arc<str>>,
    /// Whether the client sent a request for the type yet.
    started: bool,
}

pub(super) async fn run(
    xds: &Xds,
    mut requests: Streaming<DeltaDiscoveryRequest>,
    tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) {
    let mut wake = super::Wake::new();
    let mut subs: HashMap<Kind, Sub> = HashMap::new();
    let mut nonce = 0u64;
    let mut node = String::new();
    loop {
        tokio::select! {
            () = xds.cancel.cancelled() => return,
            req = requests.message() => {
                let req = match req {
                    Ok(Some(req)) => req,
                    Ok(None) | Err(_) => return,
                };
                if node.is_empty() {
                    node = node_id(req.node.as_ref()).to_owned();
                }
                let Some(kind) = super::kind_of(&node, &req.type_url) else {
                    continue;
                };
                let sub = subs.entry(kind).or_default();
                if let Some(err) = &req.error_detail {
                    super::rejected(xds, &node, kind, &format!("nonce {}", req.response_nonce), err);
                }
                if !sub.started {
                    sub.started = true;
                    for (name, version) in &req.initial_resource_versions {
                        sub.held.insert(Arc::from(name.as_str()), Arc::from(version.as_str()));
                    }
                    if req.resource_names_subscribe.is_empty() && kind.full_state() {
                        sub.wildcard = true;
                    }
                }
                for name in &req.resource_names_subscribe {
                    if name == "*" {
                        sub.wildcard = true;
                    } else {
                        sub.names.insert(Arc::from(name.as_str()));
                    }
                }
                for name in &req.resource_names_unsubscribe {
                    if name == "*" {
                        sub.wildcard = false;
                    } else {
                        sub.names.remove(name.as_str());
                        sub.held.remove(name.as_str());
                        sub.absent.remove(name.as_str());
                    }
                }
                if sub.names.len() > MAX_NAMES {
                    let _ = tx
                        .send(Err(Status::invalid_argument(format!(
                            "at most {MAX_NAMES} resource names per type"
                        ))))
                        .await;
                    return;
                }
                wake.follow(
                    &xds.registry,
                    subs.values().flat_map(|s| s.names.iter()),
                    subs.values().any(|s| s.wildcard),
                );
                let sub = subs.get_mut(&kind).expect("just added");
                if !send(xds, kind, sub, &mut nonce, &tx).await {
                    return;
                }
            }
            open = wake.changed() => {
                if !open {
                    return;
                }
                for kind in Kind::ALL {
                    if let Some(sub) = subs.get_mut(&kind)
                        && sub.started
                        && !send(xds, kind, sub, &mut nonce, &tx).await
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// Sends the difference between what the client holds and what exists now;
/// nothing when there is none. `false` once the stream is closed.
async fn send(
    xds: &Xds,
    kind: Kind,
    sub: &mut Sub,
    nonce: &mut u64,
    tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
) -> bool {
    let snap = xds.registry.snapshot();
    let mut wanted: BTreeSet<Arc<str>> = sub.names.clone();
    if sub.wildcard {
        wanted.extend(Resources::all_services(&snap));
    }
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    for name in &wanted {
        match xds.resources.get(&snap, kind, name) {
            Some(b) => {
                sub.absent.remove(name);
                if sub.held.get(name) != Some(&b.version) {
                    sub.held.insert(name.clone(), b.version.clone());
                    resources.push(Resource {
                        name: name.to_string(),
                        version: b.version.to_string(),
                        resource: Some(b.any.clone()),
                        ..Resource::default()
                    });
                }
            }
            None => {
                let held = sub.held.remove(name).is_some();
                // Named but never there: say so once, so the client need not
                // wait out its does-not-exist timer.
                let unknown = sub.names.contains(name) && sub.absent.insert(name.clone());
                if held || unknown {
                    removed.push(name.to_string());
                }
            }
        }
    }
    // Held resources no longer wanted (a wildcard member that is gone).
    let gone: Vec<Arc<str>> = sub
        .held
        .keys()
        .filter(|n| !wanted.contains(*n))
        .cloned()
        .collect();
    for name in gone {
        sub.held.remove(&name);
        if sub.wildcard {
            removed.push(name.to_string());
        }
    }
    if resources.is_empty() && removed.is_empty() {
        return true;
    }
    *nonce += 1;
    let response = DeltaDiscoveryResponse {
        system_version_info: snap.index.to_string(),
        resources,
        type_url: kind.type_url().to_owned(),
        removed_resources: removed,
        nonce: nonce.to_string(),
        ..DeltaDiscoveryResponse::default()
    };
    xds.registry.metrics().xds_push(kind.label());
    super::deliver(xds, tx, response).await
}
