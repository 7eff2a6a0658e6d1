//! The xDS control plane spoken to with a tonic ADS client, as gRPC clients
//! and Envoy speak it: state of the world and delta, ACK/NACK and nonces,
//! pushes on catalog changes, resources that do not exist, ACLs and limits.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use roster_client::RosterClient;
use roster_client::api::{MaintenanceRequest, RegisterRequest, Weights};
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Streaming};

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const RDS: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
const CDS: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub(crate) const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

/// Bound of every wait for an answer: far above what one takes.
const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing more arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC port")
}

fn instance(address: &str, port: u16, tags: &[&str], weight: u32) -> RegisterRequest {
    RegisterRequest {
        address: Some(address.into()),
        port,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        weights: Weights {
            passing: weight,
            warning: 1,
        },
        ..Default::default()
    }
}

/// A state-of-the-world ADS stream.
pub(crate) struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
    /// Last response per type (for ACKs).
    last: HashMap<String, DiscoveryResponse>,
}

impl Sotw {
    async fn open(reg: &TestRegistry) -> Sotw {
        Self::try_open(reg, None).await.expect("stream opens")
    }

    async fn try_open(reg: &TestRegistry, token: Option<&str>) -> Result<Sotw, tonic::Status> {
        Self::try_open_at(reg.grpc_addr(), token).await
    }

    /// A stream to the gRPC server at `addr`.
    pub(crate) async fn try_open_at(
        addr: std::net::SocketAddr,
        token: Option<&str>,
    ) -> Result<Sotw, tonic::Status> {
        let mut client = AggregatedDiscoveryServiceClient::new(channel(addr).await);
        let (tx, rx) = mpsc::channel(16);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(t) = token {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let rx = client.stream_aggregated_resources(req).await?.into_inner();
        Ok(Sotw {
            tx,
            rx,
            last: HashMap::new(),
        })
    }

    /// Asks for `names` of `type_url`, acknowledging the last response of it.
    pub(crate) async fn ask(&mut self, type_url: &str, names: &[&str]) {
        let last = self.last.get(type_url);
        self.send(DiscoveryRequest {
            node: Some(Node {
                id: "test-node".into(),
                ..Node::default()
            }),
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: last.map(|r| r.version_info.clone()).unwrap_or_default(),
            response_nonce: last.map(|r| r.nonce.clone()).unwrap_or_default(),
            ..DiscoveryRequest::default()
        })
        .await;
    }

    /// Rejects the last response of `type_url` (NACK), keeping `names`.
    async fn nack(&mut self, type_url: &str, names: &[&str]) {
        let last = self.last.get(type_url).expect("a response to reject");
        self.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: String::new(),
            response_nonce: last.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "test client rejects this".into(),
                details: vec![],
            }),
            ..DiscoveryRequest::default()
        })
        .await;
    }

    async fn send(&mut self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("stream open");
    }

    /// The next response.
    async fn next(&mut self) -> DiscoveryResponse {
        self.next_within(WAIT).await
    }

    /// The next response, waiting at most `wait` for it.
    async fn next_within(&mut self, wait: Duration) -> DiscoveryResponse {
        let r = tokio::time::timeout(wait, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream open");
        self.last.insert(r.type_url.clone(), r.clone());
        r
    }

    /// The next response of `type_url`, skipping others.
    pub(crate) async fn next_of(&mut self, type_url: &str) -> DiscoveryResponse {
        loop {
            let r = self.next().await;
            if r.type_url == type_url {
                return r;
            }
        }
    }

    /// Asserts nothing arrives for a while.
    async fn quiet(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }
}

pub(crate) fn decode<T: Message + Default>(r: &DiscoveryResponse) -> Vec<T> {
    r.resources
        .iter()
        .map(|a| T::decode(a.value.as_slice()).expect("decodes"))
        .collect()
}

/// (address:port, health, weight) of every endpoint, sorted.
pub(crate) fn endpoints(cla: &ClusterLoadAssignment) -> Vec<(String, HealthStatus, u32)> {
    let mut out: Vec<_> = cla
        .endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .map(|e| {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!("an endpoint");
            };
            let sa = match ep.address.as_ref().unwrap().address.as_ref().unwrap() {
                envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => s,
                other => panic!("{other:?}"),
            };
            let port = match sa.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            (
                format!("{}:{port}", sa.address),
                HealthStatus::try_from(e.health_status).unwrap(),
                e.load_balancing_weight.as_ref().map_or(0, |w| w.value),
            )
        })
        .collect();
    out.sort();
    out
}

async fn registry_with_web() -> (TestRegistry, RosterClient) {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register("web", "web-1", &instance("10.0.0.1", 8080, &["v2"], 1))
        .await
        .unwrap();
    client
        .register("web", "web-2", &instance("10.0.0.2", 8080, &["v1"], 1))
        .await
        .unwrap();
    (reg, client)
}

#[tokio::test]
async fn a_grpc_client_gets_listener_route_cluster_and_endpoints() {
    let (reg, _client) = registry_with_web().await;
    let mut s = Sotw::open(&reg).await;

    s.ask(LDS, &["web"]).await;
    let r = s.next_of(LDS).await;
    let listeners: Vec<Listener> = decode(&r);
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].name, "web");
    let api = listeners[0].api_listener.as_ref().expect("an API listener");
    let hcm =
        HttpConnectionManager::decode(api.api_listener.as_ref().unwrap().value.as_slice()).unwrap();
    let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
        panic!("routes over RDS: {hcm:?}");
    };
    assert_eq!(rds.route_config_name, "web");
    assert_eq!(
        hcm.http_filters.last().map(|f| f.name.as_str()),
        Some("envoy.filters.http.router"),
        "the router filter last, as gRPC requires"
    );
    s.ask(LDS, &["web"]).await; // ACK

    s.ask(RDS, &["web"]).await;
    let routes: Vec<RouteConfiguration> = decode(&s.next_of(RDS).await);
    let action = routes[0].virtual_hosts[0].routes[0]
        .action
        .as_ref()
        .unwrap();
    let Action::Route(ra) = action else {
        panic!("{action:?}")
    };
    assert_eq!(
        ra.cluster_specifier,
        Some(ClusterSpecifier::Cluster("web".into()))
    );
    s.ask(RDS, &["web"]).await;

    s.ask(CDS, &["web"]).await;
    let clusters: Vec<Cluster> = decode(&s.next_of(CDS).await);
    assert_eq!(clusters[0].name, "web");
    assert_eq!(
        clusters[0].cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(3)),
        "EDS"
    );
    assert_eq!(clusters[0].lb_policy, LbPolicy::RoundRobin as i32);
    s.ask(CDS, &["web"]).await;

    s.ask(EDS, &["web"]).await;
    let r = s.next_of(EDS).await;
    let cla: Vec<ClusterLoadAssignment> = decode(&r);
    assert_eq!(cla[0].cluster_name, "web");
    assert_eq!(
        endpoints(&cla[0]),
        vec![
            ("10.0.0.1:8080".into(), HealthStatus::Healthy, 1),
            ("10.0.0.2:8080".into(), HealthStatus::Healthy, 1),
        ]
    );
    assert!(
        cla[0].endpoints.iter().all(|l| l
            .load_balancing_weight
            .as_ref()
            .is_some_and(|w| w.value > 0)),
        "every locality weighted (gRPC drops those without)"
    );
    assert_eq!(
        r.version_info,
        reg_index(&reg).await.to_string(),
        "versioned by the catalog index"
    );
    s.ask(EDS, &["web"]).await;
    s.quiet().await;
}

async fn reg_index(reg: &TestRegistry) -> u64 {
    reg.server().registry().snapshot().index
}

#[tokio::test]
async fn changes_are_pushed_and_health_decides_what_is_served() {
    let (reg, client) = registry_with_web().await;
    let mut s = Sotw::open(&reg).await;
    s.ask(EDS, &["web"]).await;
    s.next_of(EDS).await;
    s.ask(EDS, &["web"]).await;

    client
        .register("web", "web-3", &instance("10.0.0.3", 8080, &[], 1))
        .await
        .unwrap();
    let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
    assert_eq!(endpoints(&cla[0]).len(), 3, "the new instance pushed");
    s.ask(EDS, &["web"]).await;

    client
        .maintenance(
            "web",
            "web-1",
            &MaintenanceRequest {
                enabled: true,
                reason: Some("disk".into()),
            },
        )
        .await
        .unwrap();
    let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
    let eps = endpoints(&cla[0]);
    assert_eq!(
        eps[0],
        ("10.0.0.1:8080".into(), HealthStatus::Draining, 1),
        "maintenance drains: {eps:?}"
    );
    s.ask(EDS, &["web"]).await;

    client.deregister("web", "web-2").await.unwrap();
    let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
    assert!(
        !endpoints(&cla[0]).iter().any(|e| e.0 == "10.0.0.2:8080"),
        "a deregistered instance is gone at once"
    );
}

#[tokio::test]
async fn an_unknown_name_is_answered_without_it_and_appears_when_registered() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let mut s = Sotw::open(&reg).await;
    s.ask(LDS, &["nope"]).await;
    let r = s.next_of(LDS).await;
    assert!(
        r.resources.is_empty(),
        "a listener left out of a listener response does not exist: the client fails fast"
    );
    s.ask(LDS, &["nope"]).await;
    // An unparseable name is simply absent too.
    s.ask(LDS, &["nope", "Not A Name!"]).await;
    assert!(s.next_of(LDS).await.resources.is_empty());
    s.ask(LDS, &["nope", "Not A Name!"]).await;

    client
        .register("nope", "n-1", &instance("10.0.0.9", 80, &[], 1))
        .await
        .unwrap();
    let listeners: Vec<Listener> = decode(&s.next_of(LDS).await);
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].name, "nope");
    s.ask(LDS, &["nope", "Not A Name!"]).await;

    client.deregister("nope", "n-1").await.unwrap();
    assert!(
        s.next_of(LDS).await.resources.is_empty(),
        "the last instance gone: the listener is gone"
    );
}

#[tokio::test]
async fn a_nack_is_not_answered_with_the_same_state_and_stale_nonces_are_ignored() {
    let (reg, client) = registry_with_web().await;
    let mut s = Sotw::open(&reg).await;
    s.ask(EDS, &["web"]).await;
    let first = s.next_of(EDS).await;
    s.nack(EDS, &["web"]).await;
    s.quiet().await; // no loop: the same state is not sent again

    // A request answering an older nonce is ignored.
    s.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec!["web".into(), "other".into()],
        response_nonce: "stale".into(),
        ..DiscoveryRequest::default()
    })
    .await;
    s.quiet().await;

    client
        .register("web", "web-3", &instance("10.0.0.3", 8080, &[], 1))
        .await
        .unwrap();
    let next = s.next_of(EDS).await;
    assert_ne!(next.nonce, first.nonce);
    assert_ne!(next.version_info, first.version_info);
    let metrics = reg.metrics_text().await;
    assert!(
        metrics.contains("roster_xds_nacks_total{kind=\"eds\"} 1"),
        "the NACK is counted: {}",
        metrics
            .lines()
            .filter(|l| l.contains("xds"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn a_first_request_carrying_a_nonce_of_an_earlier_stream_is_answered() {
    let (reg, _client) = registry_with_web().await;
    let mut s = Sotw::open(&reg).await;
    s.send(DiscoveryRequest {
        type_url: EDS.into(),
        resource_names: vec!["web".into()],
        version_info: "41".into(),
        response_nonce: "7".into(),
        ..DiscoveryRequest::default()
    })
    .await;
    let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
    assert_eq!(endpoints(&cla[0]).len(), 2);
}

#[tokio::test]
async fn a_tagged_name_serves_only_the_tagged_instances() {
    let (reg, _client) = registry_with_web().await;
    let mut s = Sotw::open(&reg).await;
    s.ask(EDS, &["v2.web"]).await;
    let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
    assert_eq!(cla[0].cluster_name, "v2.web");
    assert_eq!(
        endpoints(&cla[0]),
        vec![("10.0.0.1:8080".into(), HealthStatus::Healthy, 1)]
    );
    s.ask(LDS, &["v2.web"]).await;
    let listeners: Vec<Listener> = decode(&s.next_of(LDS).await);
    assert_eq!(listeners[0].name, "v2.web");
}

#[tokio::test]
async fn weights_under_round_robin_become_locality_weights() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register("api", "light", &instance("10.0.1.1", 80, &[], 1))
        .await
        .unwrap();
    client
        .register("api", "heavy", &instance("10.0.1.2", 80, &[], 3))
        .await
        .unwrap();
    let mut s = Sotw::open(&reg).await;
    s.ask(EDS, &["api"]).await;
    let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
    let mut by_locality: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for l in &cla[0].endpoints {
        let w = l.load_balancing_weight.as_ref().unwrap().value;
        for e in &l.lb_endpoints {
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else {
                panic!()
            };
            by_locality.entry(w).or_default().push(ep.hostname.clone());
        }
    }
    assert_eq!(
        by_locality,
        BTreeMap::from([(1, vec!["light".into()]), (3, vec!["heavy".into()])]),
        "one locality per endpoint, weighted as the endpoint"
    );
}

#[tokio::test]
async fn a_service_may_choose_ring_hash_and_localities_come_from_metadata() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    for (id, addr, zone) in [("a", "10.0.2.1", "z1"), ("b", "10.0.2.2", "z2")] {
        let mut req = instance(addr, 80, &[], 2);
        req.meta = BTreeMap::from([
            ("lb_policy".to_owned(), "ring_hash".to_owned()),
            ("region".to_owned(), "eu".to_owned()),
            ("zone".to_owned(), zone.to_owned()),
        ]);
        client.register("cache", id, &req).await.unwrap();
    }
    let mut s = Sotw::open(&reg).await;
    s.ask(CDS, &["cache"]).await;
    let clusters: Vec<Cluster> = decode(&s.next_of(CDS).await);
    assert_eq!(clusters[0].lb_policy, LbPolicy::RingHash as i32);
    s.ask(EDS, &["cache"]).await;
    let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
    let zones: Vec<(String, String, u32)> = cla[0]
        .endpoints
        .iter()
        .map(|l| {
            let loc = l.locality.as_ref().unwrap();
            (
                loc.region.clone(),
                loc.zone.clone(),
                l.load_balancing_weight.as_ref().unwrap().value,
            )
        })
        .collect();
    assert_eq!(
        zones,
        vec![("eu".into(), "z1".into(), 2), ("eu".into(), "z2".into(), 2)]
    );
}

#[tokio::test]
async fn a_wildcard_cluster_request_lists_every_service() {
    let (reg, client) = registry_with_web().await;
    client
        .register("db", "db-1", &instance("10.0.3.1", 5432, &[], 1))
        .await
        .unwrap();
    let mut s = Sotw::open(&reg).await;
    s.ask(CDS, &[]).await;
    let mut names: Vec<String> = decode::<Cluster>(&s.next_of(CDS).await)
        .into_iter()
        .map(|c| c.name)
        .collect();
    names.sort();
    assert_eq!(names, ["db", "web"]);
    s.ask(CDS, &[]).await;
    client.deregister("db", "db-1").await.unwrap();
    let names: Vec<String> = decode::<Cluster>(&s.next_of(CDS).await)
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["web"], "a cluster left out is removed");
}

/// A delta ADS stream.
struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(reg: &TestRegistry) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::new(channel(reg.grpc_addr()).await);
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream opens")
            .into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("stream open");
    }

    async fn subscribe(&self, type_url: &str, add: &[&str], remove: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: add.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: remove.iter().map(|n| n.to_string()).collect(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..DeltaDiscoveryRequest::default()
        })
        .await;
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no stream error")
            .expect("stream open")
    }

    async fn quiet(&mut self) {
        if let Ok(r) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("expected no response, got {r:?}");
        }
    }
}

fn names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    let mut n: Vec<String> = r.resources.iter().map(|r| r.name.clone()).collect();
    n.sort();
    n
}

#[tokio::test]
async fn delta_sends_only_what_changed_and_names_what_is_gone() {
    let (reg, client) = registry_with_web().await;
    client
        .register("db", "db-1", &instance("10.0.3.1", 5432, &[], 1))
        .await
        .unwrap();
    let mut d = Delta::open(&reg).await;
    d.subscribe(EDS, &["web", "db", "nope"], &[]).await;
    let r = d.next().await;
    assert_eq!(names(&r), ["db", "web"]);
    assert_eq!(
        r.removed_resources,
        ["nope"],
        "a name that does not exist is said to be absent at once"
    );
    assert!(r.resources.iter().all(|x| !x.version.is_empty()));
    d.ack(&r).await;
    d.quiet().await;

    // One service changes: only it is sent.
    client
        .register("web", "web-3", &instance("10.0.0.3", 8080, &[], 1))
        .await
        .unwrap();
    let r = d.next().await;
    assert_eq!(names(&r), ["web"]);
    assert!(r.removed_resources.is_empty());
    d.ack(&r).await;

    // Unsubscribed: its changes are no longer sent. (A name that does not
    // exist rides along, so the answer about it shows the request was read.)
    d.subscribe(EDS, &["ghost"], &["web"]).await;
    let r = d.next().await;
    assert_eq!(r.removed_resources, ["ghost"]);
    assert!(r.resources.is_empty());
    d.ack(&r).await;
    client.deregister("web", "web-3").await.unwrap();
    d.quiet().await;

    // A subscribed resource that goes away is named removed.
    client.deregister("db", "db-1").await.unwrap();
    let r = d.next().await;
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["db"]);
}

#[tokio::test]
async fn delta_wildcard_clusters_and_a_reconnect_that_names_its_versions() {
    let (reg, client) = registry_with_web().await;
    let mut d = Delta::open(&reg).await;
    d.subscribe(CDS, &[], &[]).await; // first request naming nothing: wildcard
    let r = d.next().await;
    assert_eq!(names(&r), ["web"]);
    let held: HashMap<String, String> = r
        .resources
        .iter()
        .map(|x| (x.name.clone(), x.version.clone()))
        .collect();
    d.ack(&r).await;
    client
        .register("db", "db-1", &instance("10.0.3.1", 5432, &[], 1))
        .await
        .unwrap();
    let r = d.next().await;
    assert_eq!(names(&r), ["db"], "only the new cluster");
    d.ack(&r).await;
    drop(d);

    // A client that reconnects naming what it holds gets only the rest.
    let mut d = Delta::open(&reg).await;
    d.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        resource_names_subscribe: vec!["*".into()],
        initial_resource_versions: held,
        ..DeltaDiscoveryRequest::default()
    })
    .await;
    let r = d.next().await;
    assert_eq!(
        names(&r),
        ["db"],
        "web is held at its version: not sent again"
    );
    d.ack(&r).await;
    client.deregister("db", "db-1").await.unwrap();
    let r = d.next().await;
    assert_eq!(r.removed_resources, ["db"]);
}

const READER: &str = "reader-secret-0123456789abcdef";
const NOBODY: &str = "nobody-secret-0123456789abcdef";

async fn registry_with_acl() -> TestRegistry {
    let tokens = roster_registry::acl::Tokens::parse(&format!(
        "[[tokens]]\nname = \"reader\"\nsecret = \"{READER}\"\npolicies = [\"read\"]\n\
         [[tokens]]\nname = \"nobody\"\nsecret = \"{NOBODY}\"\npolicies = []\n"
    ))
    .unwrap();
    TestRegistry::start_with(Config {
        acl: Some(tokens),
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn with_acls_a_stream_needs_a_read_token() {
    let reg = registry_with_acl().await;
    let err = Sotw::try_open(&reg, None).await.err().expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = Sotw::try_open(&reg, Some("wrong"))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = Sotw::try_open(&reg, Some(NOBODY))
        .await
        .err()
        .expect("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("nobody"), "{err:?}");
    let mut s = Sotw::try_open(&reg, Some(READER)).await.expect("admitted");
    s.ask(LDS, &["web"]).await;
    assert!(s.next_of(LDS).await.resources.is_empty());
}

#[tokio::test]
async fn streams_past_the_limit_are_refused_and_a_closed_one_frees_its_place() {
    let reg = TestRegistry::start_with(Config {
        max_xds_streams: 2,
        ..Config::default()
    })
    .await;
    let mut a = Sotw::open(&reg).await;
    let _b = Sotw::open(&reg).await;
    a.ask(LDS, &["x"]).await;
    a.next_of(LDS).await;
    let err = Sotw::try_open(&reg, None).await.err().expect("refused");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    drop(a);
    // The place is freed once the server sees the stream end.
    let reopened = tokio::time::timeout(WAIT, async {
        loop {
            if Sotw::try_open(&reg, None).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(reopened.is_ok(), "a closed stream frees its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_streams_each_get_the_change() {
    const STREAMS: usize = 10_000;
    const PER_CONNECTION: usize = 100;
    let (reg, client) = registry_with_web().await;
    let mut channels = Vec::new();
    for _ in 0..STREAMS / PER_CONNECTION {
        channels.push(channel(reg.grpc_addr()).await);
    }
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let ch = channels[i / PER_CONNECTION].clone();
        let (ready, done) = (ready_tx.clone(), done_tx.clone());
        tasks.spawn(async move {
            let mut client = AggregatedDiscoveryServiceClient::new(ch);
            let (tx, rx) = mpsc::channel(4);
            tx.send(DiscoveryRequest {
                type_url: EDS.into(),
                resource_names: vec!["web".into()],
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
            let mut stream = client
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await
                .expect("admitted")
                .into_inner();
            let first = stream.message().await.unwrap().unwrap();
            let _ = ready.send(());
            tx.send(DiscoveryRequest {
                type_url: EDS.into(),
                resource_names: vec!["web".into()],
                version_info: first.version_info.clone(),
                response_nonce: first.nonce.clone(),
                ..DiscoveryRequest::default()
            })
            .await
            .unwrap();
            let next = stream.message().await.unwrap().unwrap();
            let cla: Vec<ClusterLoadAssignment> = decode(&next);
            let _ = done.send(endpoints(&cla[0]).len());
            // Hold the stream until every other one is done.
            std::future::pending::<()>().await;
        });
    }
    for n in 0..STREAMS {
        tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {n} streams answered"));
    }
    client
        .register("web", "web-3", &instance("10.0.0.3", 8080, &[], 1))
        .await
        .unwrap();
    for n in 0..STREAMS {
        let got = tokio::time::timeout(Duration::from_secs(120), done_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {n} streams got the change"));
        assert_eq!(got, Some(3), "stream {n} saw the new instance");
    }
    tasks.abort_all();
}

// This test found a bug (issue 19): a stream answering from an older
// snapshot was handed a resource another stream had built from a newer one,
// labelled with the older version; when it reached the newer snapshot it saw
// nothing new, and the client stayed a version short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_holds_up_neither_others_nor_shutdown() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    // Big answers (200 endpoints), so unread ones fill the flow-control window.
    for i in 0..200u16 {
        let addr = format!("10.1.{}.{}", i / 250, i % 250 + 1);
        client
            .register("big", &format!("b-{i}"), &instance(&addr, 80, &[], 1))
            .await
            .unwrap();
    }
    let mut stuck = Sotw::open(&reg).await;
    stuck.ask(EDS, &["big"]).await; // and never read again
    let mut reader = Sotw::open(&reg).await;
    reader.ask(EDS, &["big"]).await;
    reader.next_of(EDS).await;
    reader.ask(EDS, &["big"]).await;
    for k in 0..300u16 {
        client
            .maintenance(
                "big",
                &format!("b-{}", k % 200),
                &MaintenanceRequest {
                    enabled: k % 400 < 200,
                    reason: Some("churn".into()),
                },
            )
            .await
            .unwrap();
    }
    let last = reg.server().registry().snapshot().index.to_string();
    // A bound on a broken server, not a timing assertion: the reader takes
    // 300 answers of 200 endpoints, and CI runs this beside the
    // 10,000-stream test on two cores (10 s, for the whole and for one
    // answer, ran out there when the machine was loaded besides).
    let caught_up = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            // Only endpoints are asked for on this stream.
            let r = reader.next_within(Duration::from_secs(60)).await;
            reader.ask(EDS, &["big"]).await;
            if r.version_info == last {
                return;
            }
        }
    })
    .await;
    assert!(
        caught_up.is_ok(),
        "a reading stream reaches the last change"
    );
    // Without the grace the server waits for that stream forever; with it,
    // about 2 s. The bound is far above that: CI runs this beside the
    // 10,000-stream test on two busy cores.
    let stopped = tokio::time::timeout(Duration::from_secs(60), reg.stop()).await;
    assert!(
        stopped.is_ok(),
        "shutdown does not wait on the stream nobody reads"
    );
    drop(stuck);
}

#[tokio::test]
async fn connections_past_the_limit_are_closed_and_idle_ones_free_their_place() {
    let mut config = Config::default();
    config.serve.max_connections = 2;
    let reg = TestRegistry::start_with(config).await;
    // Two clients that connect and send nothing hold both places.
    let idle1 = tokio::net::TcpStream::connect(reg.grpc_addr())
        .await
        .unwrap();
    let idle2 = tokio::net::TcpStream::connect(reg.grpc_addr())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tokio::time::timeout(WAIT, async {
        match Channel::from_shared(format!("http://{}", reg.grpc_addr()))
            .unwrap()
            .connect()
            .await
        {
            Ok(ch) => AggregatedDiscoveryServiceClient::new(ch)
                .stream_aggregated_resources(ReceiverStream::new(mpsc::channel(1).1))
                .await
                .is_err(),
            Err(_) => true,
        }
    })
    .await
    .expect("answered in time");
    assert!(refused, "a third connection is closed");
    drop((idle1, idle2));
    let opened = tokio::time::timeout(WAIT, async {
        loop {
            if Sotw::try_open(&reg, None).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(opened.is_ok(), "closed connections free their places");
}
