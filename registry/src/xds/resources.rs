//! The catalog as xDS resources: for a name `web` (or `v2.web`, the instances
//! of `web` tagged `v2`, as in DNS) a gRPC API listener, a route table, an EDS
//! cluster and its endpoints. Each resource is encoded once per change of its
//! service and shared by every stream that asks for it.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use envoy_types::pb::envoy::config::cluster::v3::load_balancing_policy::Policy;
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, LoadBalancingPolicy};
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
use envoy_types::pb::envoy::extensions::load_balancing_policies::wrr_locality::v3::WrrLocality;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Locality,
    SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{ApiListener, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::google::protobuf::{Any, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message as _;
use roster_api::Health;

use crate::catalog::{Instance, ServiceState, Snapshot};
use crate::federation::failover::Failover;

/// Instance metadata key that picks a service's balancing policy.
pub const LB_POLICY_KEY: &str = "lb_policy";
/// Instance metadata keys of its locality.
pub const REGION_KEY: &str = "region";
/// See [`REGION_KEY`].
pub const ZONE_KEY: &str = "zone";
/// See [`REGION_KEY`].
pub const SUB_ZONE_KEY: &str = "sub_zone";

/// The four resource types roster serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// LDS.
    Listener,
    /// RDS.
    Route,
    /// CDS.
    Cluster,
    /// EDS.
    Endpoints,
}

/// One value per kind, in an array indexed by the kind: a stream's
/// subscriptions are looked up on every request and change, without hashing.
#[derive(Debug)]
pub(crate) struct PerKind<T>([Option<T>; 4]);

impl<T> Default for PerKind<T> {
    fn default() -> Self {
        PerKind([None, None, None, None])
    }
}

impl<T> PerKind<T> {
    /// The value of `kind`, made when missing.
    pub(crate) fn entry(&mut self, kind: Kind) -> &mut T
    where
        T: Default,
    {
        self.0[kind as usize].get_or_insert_with(T::default)
    }

    /// The value of `kind`, if any.
    pub(crate) fn get_mut(&mut self, kind: Kind) -> Option<&mut T> {
        self.0[kind as usize].as_mut()
    }

    /// Every value held.
    pub(crate) fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter().flatten()
    }
}

impl Kind {
    /// Every kind, in the order a client needs them.
    pub const ALL: [Kind; 4] = [Kind::Listener, Kind::Route, Kind::Cluster, Kind::Endpoints];

    /// The kind of a type URL.
    pub fn from_type_url(url: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.type_url() == url)
    }

    /// The type URL of its resources.
    pub fn type_url(self) -> &'static str {
        match self {
            Kind::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            Kind::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
            Kind::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            Kind::Endpoints => "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        }
    }

    /// Short name for logs and metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Listener => "lds",
            Kind::Route => "rds",
            Kind::Cluster => "cds",
            Kind::Endpoints => "eds",
        }
    }

    /// Whether a response must list every resource the client asked for
    /// (one left out is gone), as for listeners and clusters; routes and
    /// endpoints may be sent one at a time.
    pub fn full_state(self) -> bool {
        matches!(self, Kind::Listener | Kind::Cluster)
    }
}

/// A resource name taken apart: `web` or `TAG.web`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    /// The service, lowercase.
    pub service: String,
    /// The tag filter.
    pub tag: Option<String>,
}

impl Name {
    /// Parses a resource name; `None` for one that can name no service.
    pub fn parse(name: &str) -> Option<Name> {
        let (tag, service) = match name.rsplit_once('.') {
            Some((tag, service)) => (Some(tag), service),
            None => (None, name),
        };
        let service = crate::model::ServiceName::parse(service).ok()?;
        if tag.is_some_and(|t| t.is_empty()) {
            return None;
        }
        Some(Name {
            service: service.as_str().to_owned(),
            tag: tag.map(str::to_owned),
        })
    }
}

/// One encoded resource.
#[derive(Debug)]
pub struct Built {
    /// Its name, as asked.
    pub name: Arc<str>,
    /// Version: a digest of the encoded bytes, so equal content has equal
    /// versions across restarts of the registry (a reconnecting client that
    /// names the version it has gets nothing it already holds).
    pub version: Arc<str>,
    /// The resource.
    pub any: Any,
    /// The resource as one entry of a `DiscoveryResponse`'s `resources`
    /// (field 2, length-delimited), encoded once for every stream.
    pub entry: Bytes,
    /// The service it was built from, and that service's index then.
    service: Arc<str>,
    index: AtomicU64,
    /// The version of the other datacenter's answer it includes (failover),
    /// 0 for none.
    remote: u64,
    /// The state-of-the-world response of this resource alone, framed, and
    /// the catalog index it was made at (its version and its nonce).
    sotw: std::sync::Mutex<Option<(u64, Bytes)>>,
}

impl Built {
    /// The framed state-of-the-world response that carries this resource
    /// alone at catalog `index` (the response's version and nonce): made by
    /// the first stream that sends it and shared by every other.
    pub(super) fn sotw_response(&self, index: u64, type_url: &str) -> Bytes {
        let mut held = self.sotw.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, frame)) = &*held
            && *at == index
        {
            return frame.clone();
        }
        let version = index.to_string();
        let frame = super::sotw::encode_response(&version, &[self], type_url, &version);
        *held = Some((index, frame.clone()));
        frame
    }
}

/// Every listener or every cluster of one snapshot, for wildcard
/// subscriptions (Envoy's CDS and LDS): gathered once per catalog index and
/// shared by every wildcard stream.
#[derive(Debug)]
pub struct All {
    /// The catalog index it was gathered at.
    pub index: u64,
    /// The resources, by name.
    pub built: Vec<Arc<Built>>,
    /// A digest of every name and version: equal digests, same clusters.
    pub digest: u64,
}

/// Resources built from the catalog, cached per (kind, name) against the
/// service's index.
#[derive(Debug, Default)]
pub struct Resources {
    /// The latest [`All`] gathered, per kind (listeners and clusters).
    all: [std::sync::Mutex<Option<Arc<All>>>; 4],
    /// Hashed with foldhash: every stream looks up here on every change.
    cache: DashMap<(Kind, Arc<str>), Arc<Built>, foldhash::fast::RandomState>,
    /// `names_index` of the snapshot the cache was last pruned against.
    pruned: AtomicU64,
    /// Calls of [`Resources::get`], for tests that count a change's work.
    #[cfg(test)]
    pub(super) lookups: AtomicU64,
}

/// Entries above which the cache is cleared (names asked for by clients,
/// tag filters included, are not bounded by the catalog).
const CACHE_LIMIT: usize = 100_000;

impl Resources {
    /// The resource `name` of `kind` in `snap`; `None` when it does not exist
    /// (no such service, or a name that cannot be one). The hot path, a
    /// resource unchanged since it was built, is one map lookup on each side
    /// and no allocation: every stream asks for every name it follows on
    /// every change.
    pub fn get(
        &self,
        snap: &Snapshot,
        kind: Kind,
        name: &Arc<str>,
        failover: Option<&Failover>,
    ) -> Option<Arc<Built>> {
        #[cfg(test)]
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.prune(snap);
        let key = (kind, name.clone());
        // Failover only changes endpoints, and only for a service with a
        // failover list: everything else never looks at other datacenters.
        let remote = |service: &str, state: &ServiceState| {
            (kind == Kind::Endpoints)
                .then(|| super::failover::remote_for(failover, service, state))
                .flatten()
        };
        if let Some(hit) = self.cache.get(&key) {
            match snap.services.get(&hit.service) {
                Some(state) if state.modify_index == hit.index.load(Ordering::Acquire) => {
                    let now = remote(&hit.service, state).map_or(0, |r| r.version);
                    if now == hit.remote {
                        return Some(hit.clone());
                    }
                }
                None => return None,
                Some(_) => {}
            }
        }
        let parsed = Name::parse(name)?;
        let (service, state) = snap.services.get_key_value(parsed.service.as_str())?;
        let remote = remote(service, state);
        let any = match (kind, &remote) {
            (Kind::Endpoints, Some(remote)) => {
                let mut cla = endpoints(name, &parsed, state);
                super::failover::add_remote(&mut cla, &parsed, remote);
                pack_any(cla)
            }
            _ => build(kind, name, &parsed, state),
        };
        let version: Arc<str> = digest(&any.value).into();
        let mut entry = BytesMut::with_capacity(any.encoded_len() + 8);
        prost::encoding::message::encode(2, &any, &mut entry);
        let fresh = Arc::new(Built {
            name: name.clone(),
            version,
            entry: entry.freeze(),
            any,
            service: service.clone(),
            index: AtomicU64::new(state.modify_index),
            remote: remote.map_or(0, |r| r.version),
            sotw: std::sync::Mutex::new(None),
        });
        let mut out = fresh.clone();
        self.cache
            .entry(key)
            .and_modify(|cached| {
                let fresh_index = state.modify_index;
                if cached.index.load(Ordering::Acquire) > fresh_index {
                    // Another stream built it from a newer snapshot: keep
                    // that in the cache, but answer this stream from its own
                    // snapshot. Handing it the newer bytes would label them
                    // with this snapshot's older version, and the stream would
                    // then see nothing new when it reaches the newer snapshot
                    // (a client left a change behind, issue 19).
                } else if cached.version == fresh.version && cached.remote == fresh.remote {
                    // Same bytes: keep the shared copy streams compare
                    // against, marked current.
                    cached.index.fetch_max(fresh_index, Ordering::AcqRel);
                    out = cached.clone();
                } else {
                    *cached = fresh.clone();
                }
            })
            .or_insert_with(|| fresh.clone());
        Some(out)
    }

    /// Every cluster name of the catalog (a wildcard CDS subscription).
    pub fn all_services(snap: &Snapshot) -> Vec<Arc<str>> {
        snap.services.keys().cloned().collect()
    }

    /// Every listener or every cluster (`kind`) of `snap`, gathered by the
    /// first wildcard stream that looks at this catalog index and shared by
    /// the others: a change costs each wildcard stream a comparison of
    /// digests, not a lookup per service. Not for endpoints: those also
    /// change with other datacenters' answers, which move no catalog index.
    pub fn all(&self, snap: &Snapshot, kind: Kind, failover: Option<&Failover>) -> Arc<All> {
        debug_assert!(kind.full_state(), "{kind:?} is not gathered whole");
        let slot = &self.all[kind as usize];
        let held = || slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some(all) = held()
            && all.index == snap.index
        {
            return all;
        }
        let built: Vec<Arc<Built>> = snap
            .services
            .keys()
            .filter_map(|n| self.get(snap, kind, n, failover))
            .collect();
        let digest = {
            use std::hash::{BuildHasher as _, Hasher as _};
            // Fixed seed: every stream and thread must agree.
            let mut h = foldhash::quality::FixedState::with_seed(0x5eed).build_hasher();
            for b in &built {
                h.write(b.name.as_bytes());
                h.write_u8(0);
                h.write(b.version.as_bytes());
                h.write_u8(0);
            }
            h.finish()
        };
        let all = Arc::new(All {
            index: snap.index,
            built,
            digest,
        });
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        // A stream on an older snapshot does not replace a newer list.
        if slot.as_ref().is_none_or(|held| held.index < all.index) {
            *slot = Some(all.clone());
        }
        all
    }

    fn prune(&self, snap: &Snapshot) {
        // A read first: every stream passes here on every change, and only
        // the first after a change of names needs to write.
        let moved = self.pruned.load(Ordering::Relaxed) != snap.names_index
            && self.pruned.swap(snap.names_index, Ordering::Relaxed) != snap.names_index;
        if moved || self.cache.len() > CACHE_LIMIT {
            self.cache.retain(|(_, name), _| {
                Name::parse(name).is_some_and(|n| snap.services.contains_key(n.service.as_str()))
            });
            if self.cache.len() > CACHE_LIMIT {
                self.cache.clear();
            }
        }
    }
}

/// First 16 hex digits of the SHA-256 of `bytes`.
fn digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn build(kind: Kind, name: &str, parsed: &Name, state: &ServiceState) -> Any {
    match kind {
        Kind::Listener => pack_any(listener(name)),
        Kind::Route => pack_any(route(name)),
        Kind::Cluster => pack_any(cluster(name, policy(state))),
        Kind::Endpoints => pack_any(endpoints(name, parsed, state)),
    }
}

/// A gRPC client's listener: an API listener whose connection manager takes
/// its routes over ADS (RDS), with the router filter last as gRPC requires.
pub fn listener(name: &str) -> Listener {
    let hcm = HttpConnectionManager {
        stat_prefix: name.to_owned(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(ConfigType::TypedConfig(pack_any(Router::default()))),
            ..HttpFilter::default()
        }],
        ..HttpConnectionManager::default()
    };
    Listener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(hcm)),
        }),
        ..Listener::default()
    }
}

/// Every request of the virtual host to the cluster of the same name.
pub fn route(name: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts: vec![VirtualHost {
            name: name.to_owned(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix(String::new())),
                    ..RouteMatch::default()
                }),
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(ClusterSpecifier::Cluster(name.to_owned())),
                    ..RouteAction::default()
                })),
                ..Route::default()
            }],
            ..VirtualHost::default()
        }],
        ..RouteConfiguration::default()
    }
}

/// An EDS cluster whose endpoints come over ADS.
///
/// Round robin and ring hash are named in `lb_policy`, which every gRPC
/// release reads. Least request is not in every gRPC (the C core of 1.85
/// rejects the whole cluster for it), so it goes in `load_balancing_policy`
/// with round robin after it, and each client takes the first policy it
/// knows (gRFC A52): for gRPC a locality-weighted picker of least request, or
/// of round robin where least request is missing; for Envoy least request.
pub fn cluster(name: &str, policy: LbPolicy) -> Cluster {
    let (lb_policy, load_balancing_policy) = match policy {
        LbPolicy::LeastRequest => (LbPolicy::RoundRobin, Some(least_request_first())),
        other => (other, None),
    };
    Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_owned(),
        }),
        lb_policy: lb_policy as i32,
        load_balancing_policy,
        connect_timeout: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: 5,
            nanos: 0,
        }),
        ..Cluster::default()
    }
}

/// Least request where the client has it, round robin otherwise.
fn least_request_first() -> LoadBalancingPolicy {
    let policy = |name: &str, config: Any| Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.to_owned(),
            typed_config: Some(config),
        }),
    };
    let least_request = || {
        policy(
            "envoy.load_balancing_policies.least_request",
            pack_any(LeastRequest::default()),
        )
    };
    let round_robin = || {
        policy(
            "envoy.load_balancing_policies.round_robin",
            pack_any(RoundRobin::default()),
        )
    };
    // gRPC weighs localities only under wrr_locality; Envoy has no such
    // policy and skips to the next entry.
    let wrr_locality = WrrLocality {
        endpoint_picking_policy: Some(LoadBalancingPolicy {
            policies: vec![least_request(), round_robin()],
        }),
    };
    LoadBalancingPolicy {
        policies: vec![
            policy(
                "envoy.load_balancing_policies.wrr_locality",
                pack_any(wrr_locality),
            ),
            least_request(),
            round_robin(),
        ],
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..ConfigSource::default()
    }
}

/// The balancing policy named by the service's instances (metadata
/// [`LB_POLICY_KEY`], the first instance that has it), round robin otherwise.
pub fn policy(state: &ServiceState) -> LbPolicy {
    let named = state
        .instances
        .values()
        .find_map(|i| i.spec.meta.get(LB_POLICY_KEY));
    match named.map(String::as_str) {
        Some("ring_hash") => LbPolicy::RingHash,
        Some("least_request") => LbPolicy::LeastRequest,
        _ => LbPolicy::RoundRobin,
    }
}

/// Where an instance runs, from its metadata.
fn locality(i: &Instance) -> Locality {
    let get = |k: &str| i.spec.meta.get(k).cloned().unwrap_or_default();
    Locality {
        region: get(REGION_KEY),
        zone: get(ZONE_KEY),
        sub_zone: get(SUB_ZONE_KEY),
    }
}

/// How an instance of this health is offered: passing and warning are
/// served (weighted by the weight for that health), critical is not, and
/// maintenance is draining.
fn status(i: &Instance) -> (HealthStatus, u32) {
    let clamp = |w: u32| w.clamp(1, u32::from(u16::MAX));
    if i.maintenance.is_some() {
        return (HealthStatus::Draining, 1);
    }
    match i.health() {
        Health::Passing => (HealthStatus::Healthy, clamp(i.spec.weights.passing)),
        Health::Warning => (HealthStatus::Healthy, clamp(i.spec.weights.warning)),
        Health::Critical => (HealthStatus::Unhealthy, 1),
    }
}

/// An endpoint, its weight, and whether it is served.
type Member = (LbEndpoint, u32, bool);

/// The endpoints of `name`: the service's instances (with the tag, for a
/// tagged name) that have an IP address, grouped by locality. Every locality
/// has a weight (gRPC ignores those without): the sum of its served
/// endpoints' weights. Under round robin, a locality whose endpoints have
/// different weights is split into one locality per endpoint, since gRPC's
/// round robin ignores endpoint weights and only locality weights then make
/// 1:3 weights give 1:3 traffic; Envoy uses the endpoint weights either way.
pub fn endpoints(name: &str, parsed: &Name, state: &ServiceState) -> ClusterLoadAssignment {
    let split = policy(state) == LbPolicy::RoundRobin;
    let mut groups: BTreeMap<(String, String, String), Vec<Member>> = BTreeMap::new();
    for i in state.instances.values() {
        if let Some(tag) = &parsed.tag
            && !i.spec.tags.iter().any(|t| t.eq_ignore_ascii_case(tag))
        {
            continue;
        }
        // xDS endpoints are addresses; a host name would be NACKed.
        let Ok(ip) = i.spec.address.parse::<IpAddr>() else {
            continue;
        };
        let (health, weight) = status(i);
        let l = locality(i);
        let endpoint = LbEndpoint {
            health_status: health as i32,
            load_balancing_weight: Some(UInt32Value { value: weight }),
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(AddressKind::SocketAddress(SocketAddress {
                        address: ip.to_string(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(i.spec.port))),
                        ..SocketAddress::default()
                    })),
                }),
                hostname: i.id.to_string(),
                ..Endpoint::default()
            })),
            ..LbEndpoint::default()
        };
        groups
            .entry((l.region, l.zone, l.sub_zone))
            .or_default()
            .push((endpoint, weight, health == HealthStatus::Healthy));
    }
    let mut out = Vec::new();
    for ((region, zone, sub_zone), members) in groups {
        // Served endpoints' weights; 1 for a locality with none up (gRPC
        // skips it while nothing in it is ready, and a weight must be set).
        let served = |m: &[Member]| -> u32 {
            m.iter()
                .filter(|(_, _, up)| *up)
                .fold(0u32, |sum, (_, w, _)| sum.saturating_add(*w))
                .max(1)
        };
        let mut up_weights = members.iter().filter(|(_, _, up)| *up).map(|(_, w, _)| *w);
        let first = up_weights.next();
        let weights_differ = up_weights.any(|w| Some(w) != first);
        if split && weights_differ {
            for (endpoint, weight, up) in members {
                let id = match &endpoint.host_identifier {
                    Some(HostIdentifier::Endpoint(e)) => e.hostname.clone(),
                    _ => String::new(),
                };
                out.push(LocalityLbEndpoints {
                    locality: Some(Locality {
                        region: region.clone(),
                        zone: zone.clone(),
                        sub_zone: if sub_zone.is_empty() {
                            id
                        } else {
                            format!("{sub_zone}/{id}")
                        },
                    }),
                    load_balancing_weight: Some(UInt32Value {
                        value: if up { weight } else { 1 },
                    }),
                    lb_endpoints: vec![endpoint],
                    ..LocalityLbEndpoints::default()
                });
            }
        } else {
            let weight = served(&members);
            out.push(LocalityLbEndpoints {
                locality: Some(Locality {
                    region,
                    zone,
                    sub_zone,
                }),
                load_balancing_weight: Some(UInt32Value { value: weight }),
                lb_endpoints: members.into_iter().map(|(e, _, _)| e).collect(),
                ..LocalityLbEndpoints::default()
            });
        }
    }
    ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: out,
        ..ClusterLoadAssignment::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use imbl::OrdMap;
    use roster_api::Weights;

    use super::*;
    use crate::model::InstanceSpec;

    fn inst(id: &str, address: &str, weight: u32, lease: Option<Health>) -> Arc<Instance> {
        Arc::new(Instance {
            id: id.into(),
            service: "web".into(),
            spec: InstanceSpec {
                address: address.into(),
                port: 80,
                tags: vec!["v2".into()],
                meta: Default::default(),
                weights: Weights {
                    passing: weight,
                    warning: 1,
                },
                ttl: None,
                deregister_critical_after: Duration::from_secs(60),
                checks: Arc::new([]),
            },
            lease,
            maintenance: None,
            checks: Vec::new(),
            create_index: 1,
            modify_index: 1,
        })
    }

    fn state(instances: &[Arc<Instance>], index: u64) -> ServiceState {
        ServiceState {
            modify_index: index,
            instances: instances
                .iter()
                .map(|i| (i.id.clone(), i.clone()))
                .collect::<OrdMap<_, _>>(),
        }
    }

    /// Instances a and b of `web`, changed last at `index`.
    fn two_instances(index: u64) -> ServiceState {
        state(
            &[
                inst("a", "10.0.0.1", 1, None),
                inst("b", "10.0.0.2", 1, None),
            ],
            index,
        )
    }

    #[test]
    fn names_are_a_service_with_an_optional_tag() {
        let n = |s: &str| Name::parse(s).map(|n| (n.service, n.tag));
        assert_eq!(n("web"), Some(("web".into(), None)));
        assert_eq!(n("Web"), Some(("web".into(), None)), "services ignore case");
        assert_eq!(n("v2.web"), Some(("web".into(), Some("v2".into()))));
        assert_eq!(n("a.b.web"), Some(("web".into(), Some("a.b".into()))));
        for bad in ["", ".web", "web.", "we b", "-web", "x/web"] {
            assert_eq!(n(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn endpoints_keep_ip_addresses_and_weigh_localities_by_what_is_served() {
        let s = state(
            &[
                inst("a", "10.0.0.1", 2, None),
                inst("b", "10.0.0.2", 2, Some(Health::Critical)),
                inst("c", "db.internal", 2, None),
            ],
            5,
        );
        let cla = endpoints("web", &Name::parse("web").unwrap(), &s);
        assert_eq!(cla.endpoints.len(), 1, "equal weights: one locality");
        let l = &cla.endpoints[0];
        assert_eq!(l.lb_endpoints.len(), 2, "a host name is not an xDS address");
        assert_eq!(
            l.load_balancing_weight.as_ref().unwrap().value,
            2,
            "the critical endpoint adds nothing"
        );
        let health: Vec<i32> = l.lb_endpoints.iter().map(|e| e.health_status).collect();
        assert_eq!(
            health,
            [HealthStatus::Healthy as i32, HealthStatus::Unhealthy as i32]
        );
    }

    #[test]
    fn different_weights_split_only_under_round_robin() {
        let a = inst("a", "10.0.0.1", 1, None);
        let b = inst("b", "10.0.0.2", 3, None);
        let cla = endpoints("web", &Name::parse("web").unwrap(), &state(&[a, b], 5));
        let weights: Vec<(String, u32)> = cla
            .endpoints
            .iter()
            .map(|l| {
                (
                    l.locality.as_ref().unwrap().sub_zone.clone(),
                    l.load_balancing_weight.as_ref().unwrap().value,
                )
            })
            .collect();
        assert_eq!(weights, [("a".into(), 1), ("b".into(), 3)]);

        let mut ring = Arc::unwrap_or_clone(inst("a", "10.0.0.1", 1, None));
        ring.spec
            .meta
            .insert(LB_POLICY_KEY.into(), "ring_hash".into());
        let s = state(&[Arc::new(ring), inst("b", "10.0.0.2", 3, None)], 6);
        assert_eq!(policy(&s), LbPolicy::RingHash);
        let cla = endpoints("web", &Name::parse("web").unwrap(), &s);
        assert_eq!(cla.endpoints.len(), 1, "ring hash weighs endpoints itself");
        assert_eq!(
            cla.endpoints[0]
                .load_balancing_weight
                .as_ref()
                .unwrap()
                .value,
            4
        );
    }

    #[test]
    fn resources_are_built_once_per_change_and_shared_while_the_bytes_hold() {
        let r = Resources::default();
        let web: Arc<str> = "web".into();
        let mut snap = Snapshot {
            index: 5,
            names_index: 1,
            services: OrdMap::new(),
        };
        assert!(
            r.get(&snap, Kind::Endpoints, &web, None).is_none(),
            "no service"
        );
        snap.services
            .insert("web".into(), state(&[inst("a", "10.0.0.1", 1, None)], 5));
        let eds = r.get(&snap, Kind::Endpoints, &web, None).unwrap();
        let lds = r.get(&snap, Kind::Listener, &web, None).unwrap();
        assert!(Arc::ptr_eq(
            &eds,
            &r.get(&snap, Kind::Endpoints, &web, None).unwrap()
        ));

        // A change to the service: new endpoints, the same listener bytes.
        snap.index = 6;
        snap.services.insert("web".into(), two_instances(6));
        let eds2 = r.get(&snap, Kind::Endpoints, &web, None).unwrap();
        assert_ne!(eds2.version, eds.version);
        let lds2 = r.get(&snap, Kind::Listener, &web, None).unwrap();
        assert!(
            Arc::ptr_eq(&lds, &lds2),
            "unchanged bytes: the same resource"
        );
        assert_eq!(lds.version.len(), 16);

        // The service gone: the cache forgets it once the names move.
        snap.services.remove("web");
        snap.names_index = 7;
        assert!(r.get(&snap, Kind::Listener, &web, None).is_none());
        assert!(r.cache.is_empty());
    }

    #[test]
    fn a_stream_on_an_older_snapshot_is_answered_from_that_snapshot() {
        let r = Resources::default();
        let web: Arc<str> = "web".into();
        let older = Snapshot {
            index: 5,
            names_index: 1,
            services: [(
                Arc::<str>::from("web"),
                state(&[inst("a", "10.0.0.1", 1, None)], 5),
            )]
            .into_iter()
            .collect(),
        };
        let mut newer = older.clone();
        newer.index = 6;
        newer.services.insert("web".into(), two_instances(6));
        // One stream builds from the newer snapshot first; a second, still
        // holding the older one, asks after it.
        let new = r.get(&newer, Kind::Endpoints, &web, None).unwrap();
        let old = r.get(&older, Kind::Endpoints, &web, None).unwrap();
        assert_ne!(
            old.version, new.version,
            "the older snapshot's stream gets the older bytes, so it sees the change later"
        );
        assert_eq!(old.index.load(Ordering::Acquire), 5);
        assert!(
            Arc::ptr_eq(&new, &r.get(&newer, Kind::Endpoints, &web, None).unwrap()),
            "the cache keeps the newer build"
        );
    }
}
