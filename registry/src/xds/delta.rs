//! Incremental ADS (what Envoy speaks at scale): the client subscribes and
//! unsubscribes names, and gets only what changed: resources whose version
//! differs from the one it holds, and the names of those that are gone (or
//! never existed). A client that reconnects names the versions it holds and
//! is sent nothing it already has.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use tonic::Status;

use super::resources::{Kind, PerKind, Resources};
use super::stream::Session;
use super::{Wake, Xds, node_id};

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

/// What one stream holds.
#[derive(Default)]
pub(super) struct State {
    subs: PerKind<Sub>,
    nonce: u64,
    node: String,
}

impl Session for State {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;

    /// Takes in one request: (un)subscriptions are answered with what the
    /// client lacks.
    fn request(
        &mut self,
        xds: &Xds,
        wake: &mut Wake,
        req: DeltaDiscoveryRequest,
        out: &mut VecDeque<DeltaDiscoveryResponse>,
    ) -> Result<(), Status> {
        if self.node.is_empty() {
            self.node = node_id(req.node.as_ref()).to_owned();
        }
        let Some(kind) = super::kind_of(&self.node, &req.type_url) else {
            return Ok(());
        };
        let sub = self.subs.entry(kind);
        if let Some(err) = &req.error_detail {
            super::rejected(
                xds,
                &self.node,
                kind,
                &format!("nonce {}", req.response_nonce),
                err,
            );
        }
        if !sub.started {
            sub.started = true;
            for (name, version) in &req.initial_resource_versions {
                sub.held
                    .insert(Arc::from(name.as_str()), Arc::from(version.as_str()));
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
            return Err(Status::invalid_argument(format!(
                "at most {MAX_NAMES} resource names per type"
            )));
        }
        wake.follow(
            xds,
            self.subs.values().flat_map(|s| s.names.iter()),
            self.subs.values().any(|s| s.wildcard),
        );
        let sub = self.subs.get_mut(kind).expect("just added");
        if let Some(r) = respond(xds, kind, sub, &mut self.nonce) {
            out.push_back(r);
        }
        Ok(())
    }

    fn changed(&mut self, xds: &Xds, out: &mut VecDeque<DeltaDiscoveryResponse>) {
        for kind in Kind::ALL {
            if let Some(sub) = self.subs.get_mut(kind)
                && sub.started
                && let Some(r) = respond(xds, kind, sub, &mut self.nonce)
            {
                out.push_back(r);
            }
        }
    }
}

/// The difference between what the client holds and what exists now;
/// `None` when there is none.
fn respond(
    xds: &Xds,
    kind: Kind,
    sub: &mut Sub,
    nonce: &mut u64,
) -> Option<DeltaDiscoveryResponse> {
    let snap = xds.registry.snapshot();
    let mut wanted: BTreeSet<Arc<str>> = sub.names.clone();
    if sub.wildcard {
        wanted.extend(Resources::all_services(&snap));
    }
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    for name in &wanted {
        match xds.resources.get(&snap, kind, name, xds.failover()) {
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
        return None;
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
    xds.pushed(kind).inc();
    Some(response)
}
