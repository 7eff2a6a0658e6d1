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

use super::resources::{Built, Kind, PerKind, Resources};
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
    /// For a wildcard listener or cluster subscription, the digest of the
    /// whole list it was last compared against ([`super::resources::All`]).
    all_seen: Option<u64>,
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
        if let Some(r) = respond(xds, kind, sub, &mut self.nonce, true) {
            out.push_back(r);
        }
        Ok(())
    }

    fn changed(&mut self, xds: &Xds, out: &mut VecDeque<DeltaDiscoveryResponse>) {
        for kind in Kind::ALL {
            if let Some(sub) = self.subs.get_mut(kind)
                && sub.started
                && let Some(r) = respond(xds, kind, sub, &mut self.nonce, false)
            {
                out.push_back(r);
            }
        }
    }
}

/// The difference between what the client holds and what exists now;
/// `None` when there is none. `asked`: answering a request (else a change).
///
/// A wildcard listener or cluster stream (Envoy) compares the digest of the
/// whole list, gathered once per catalog index for every stream, with the
/// one it last saw: an instance change leaves every cluster as it was, and
/// costs such a stream no lookup per service.
fn respond(
    xds: &Xds,
    kind: Kind,
    sub: &mut Sub,
    nonce: &mut u64,
    asked: bool,
) -> Option<DeltaDiscoveryResponse> {
    let snap = xds.registry.snapshot();
    let get = |name: &Arc<str>| xds.resources.get(&snap, kind, name, xds.failover());
    let mut resources = Vec::new();
    let mut removed = Vec::new();
    let all =
        (sub.wildcard && kind.full_state()).then(|| xds.resources.all(&snap, kind, xds.failover()));
    let seen = std::mem::replace(&mut sub.all_seen, all.as_ref().map(|a| a.digest));
    if !asked && all.is_some() && seen == sub.all_seen {
        // The same list as last time, and no request since: only the
        // names asked for outside it (tag filters) may have changed.
        for name in &sub.names {
            let (held, absent) = (&mut sub.held, &mut sub.absent);
            compare(
                held,
                absent,
                true,
                name,
                get(name),
                &mut resources,
                &mut removed,
            );
        }
    } else {
        let mut wanted: BTreeSet<Arc<str>> = sub.names.clone();
        match &all {
            Some(all) => wanted.extend(all.built.iter().map(|b| b.name.clone())),
            None if sub.wildcard => wanted.extend(Resources::all_services(&snap)),
            None => {}
        }
        for name in &wanted {
            let named = sub.names.contains(name);
            let (held, absent) = (&mut sub.held, &mut sub.absent);
            compare(
                held,
                absent,
                named,
                name,
                get(name),
                &mut resources,
                &mut removed,
            );
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

/// Adds `name` to the response when the client does not hold what exists
/// now (`built`, updating `held`), or to the removed names when it is gone.
/// `named`: the client asked for it by name (not only through the wildcard).
fn compare(
    held: &mut HashMap<Arc<str>, Arc<str>>,
    absent: &mut BTreeSet<Arc<str>>,
    named: bool,
    name: &Arc<str>,
    built: Option<Arc<Built>>,
    resources: &mut Vec<Resource>,
    removed: &mut Vec<String>,
) {
    match built {
        Some(b) => {
            absent.remove(name);
            if held.get(name) != Some(&b.version) {
                held.insert(name.clone(), b.version.clone());
                resources.push(Resource {
                    name: name.to_string(),
                    version: b.version.to_string(),
                    resource: Some(b.any.clone()),
                    ..Resource::default()
                });
            }
        }
        None => {
            let was_held = held.remove(name).is_some();
            // Named but never there: say so once, so the client need not
            // wait out its does-not-exist timer.
            let unknown = named && absent.insert(name.clone());
            if was_held || unknown {
                removed.push(name.to_string());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::catalog::Command;
    use crate::model::{InstanceId, ServiceName};

    /// One stream: its state, its wake, and what it sent.
    struct Stream(State, Wake, VecDeque<DeltaDiscoveryResponse>);

    impl Stream {
        fn new() -> Stream {
            Stream(State::default(), Wake::new(None), VecDeque::new())
        }

        fn subscribe(&mut self, xds: &Xds, kind: Kind, names: &[&str]) -> DeltaDiscoveryResponse {
            let req = DeltaDiscoveryRequest {
                type_url: kind.type_url().into(),
                resource_names_subscribe: names.iter().map(|n| (*n).to_owned()).collect(),
                ..DeltaDiscoveryRequest::default()
            };
            self.0.request(xds, &mut self.1, req, &mut self.2).unwrap();
            self.2.pop_front().expect("an answer")
        }

        fn changed(&mut self, xds: &Xds) -> Option<DeltaDiscoveryResponse> {
            self.0.changed(xds, &mut self.2);
            self.2.pop_front()
        }
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[tokio::test]
    async fn wildcard_cluster_streams_look_nothing_up_when_no_cluster_changed() {
        let (registry, xds) = super::super::test_xds();
        for i in 0..50 {
            registry.register_plain(&format!("s{i:02}"), &format!("i{i}"));
        }
        let (mut a, mut b) = (Stream::new(), Stream::new());
        assert_eq!(a.subscribe(&xds, Kind::Cluster, &[]).resources.len(), 50);
        assert_eq!(b.subscribe(&xds, Kind::Cluster, &["*"]).resources.len(), 50);
        let lookups = || xds.resources.lookups.load(Ordering::Relaxed);

        // An instance comes: every cluster is as it was. The list is
        // gathered once for the new index, and neither stream looks up a
        // service of its own.
        registry.register_plain("s07", "another");
        let before = lookups();
        assert!(a.changed(&xds).is_none());
        let gathered = lookups() - before;
        assert!(gathered <= 50, "{gathered} lookups to gather the list");
        assert!(b.changed(&xds).is_none());
        assert_eq!(lookups() - before, gathered, "b shares a's list");
        let before = lookups();
        assert!(a.changed(&xds).is_none());
        assert_eq!(lookups(), before, "nothing looked up without a change");

        // A new service: only its cluster is sent, to both.
        registry.register_plain("new", "n1");
        assert_eq!(names(&a.changed(&xds).unwrap()), ["new"]);
        assert_eq!(names(&b.changed(&xds).unwrap()), ["new"]);
        // A service gone: reported removed.
        registry
            .apply(Command::Deregister {
                service: ServiceName::parse("new").unwrap(),
                id: InstanceId::parse("n1").unwrap(),
            })
            .unwrap();
        assert_eq!(a.changed(&xds).unwrap().removed_resources, ["new"]);
        assert_eq!(b.changed(&xds).unwrap().removed_resources, ["new"]);
        assert!(a.changed(&xds).is_none(), "nothing new");
    }

    #[tokio::test]
    async fn a_wildcard_stream_still_hears_of_names_asked_beside_it() {
        let (registry, xds) = super::super::test_xds();
        registry.register_plain("web", "w1");
        let mut a = Stream::new();
        assert_eq!(names(&a.subscribe(&xds, Kind::Cluster, &["*"])), ["web"]);
        // A tag-filtered cluster is no service of its own: asked by name.
        let tagged = a.subscribe(&xds, Kind::Cluster, &["v2.web"]);
        assert_eq!(names(&tagged), ["v2.web"]);
        registry.register_plain("web", "w2");
        assert!(a.changed(&xds).is_none(), "no cluster changed");
        // Unsubscribing the wildcard: the services' clusters are dropped
        // from what the stream holds (the named one stays).
        let req = DeltaDiscoveryRequest {
            type_url: Kind::Cluster.type_url().into(),
            resource_names_unsubscribe: vec!["*".into()],
            ..DeltaDiscoveryRequest::default()
        };
        a.0.request(&xds, &mut a.1, req, &mut a.2).unwrap();
        let sub = a.0.subs.get_mut(Kind::Cluster).unwrap();
        assert!(sub.all_seen.is_none());
        assert!(sub.held.contains_key("v2.web"));
        assert!(!sub.held.contains_key("web"));
    }
}
