//! Several datacenters, in-process: registries with different
//! `--datacenter`s federated with each other on loopback. Reads of another
//! datacenter with `?dc=` (native, Consul, blocking queries, event streams,
//! DNS names with a datacenter label, client `Discovery`), and failover of
//! healthy-only answers when every local instance is critical, and back.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use roster_client::api::{MaintenanceRequest, RegisterRequest, ServiceInstances};
use roster_client::{Discovery, RosterClient};
use roster_registry::config::{
    Config, FailoverPolicy, FederationConfig, RemoteDatacenter, RemoteServer,
};
use roster_tests::TestRegistry;
use roster_tests::dns::{answer_data, query, udp};
use serde_json::Value;
use tokio::net::TcpListener;

pub(crate) const TOKEN: &str = "federation-test-token";

/// A loopback listener, bound before any registry starts so each knows the
/// others' addresses.
pub(crate) async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

/// Federation settings: `remotes` by name and address, `failover` as the
/// flag spells it (`web=dc2,dc3;*=dc2`).
pub(crate) fn federation(remotes: &[(&str, SocketAddr)], failover: &str) -> FederationConfig {
    let mut policy = FailoverPolicy::default();
    for entry in failover.split(';').filter(|e| !e.is_empty()) {
        let (service, dcs) = entry.split_once('=').unwrap();
        let dcs: Vec<String> = dcs.split(',').map(str::to_owned).collect();
        if service == "*" {
            policy.default = dcs;
        } else {
            policy.services.insert(service.to_owned(), dcs);
        }
    }
    FederationConfig {
        remotes: remotes
            .iter()
            .map(|(name, addr)| RemoteDatacenter {
                name: (*name).to_owned(),
                servers: vec![RemoteServer {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                    https: false,
                }],
            })
            .collect(),
        token: TOKEN.into(),
        failover: policy,
        timeout: Duration::from_millis(500),
        probe_interval: Duration::from_millis(200),
        tls: None,
    }
}

/// A registry of datacenter `name` on `listener`, DNS on.
pub(crate) async fn start_dc(
    listener: TcpListener,
    name: &str,
    federation: Option<FederationConfig>,
) -> TestRegistry {
    let config = Config {
        datacenter: name.into(),
        federation,
        grpc_addr: None,
        ..Config::default()
    };
    TestRegistry::start_on(listener, config).await
}

pub(crate) fn instance(address: &str) -> RegisterRequest {
    RegisterRequest {
        address: Some(address.into()),
        port: 8080,
        ..Default::default()
    }
}

pub(crate) async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::get(url).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, headers, body)
}

fn dc_header(h: &reqwest::header::HeaderMap) -> Option<&str> {
    h.get("x-roster-datacenter").and_then(|v| v.to_str().ok())
}

/// Waits until `dc`'s `/v1/datacenters` says `remote` is in `state`.
pub(crate) async fn wait_state(reg: &TestRegistry, remote: &str, state: &str) -> Value {
    for _ in 0..200 {
        let (_, _, body) = get(&format!("{}/v1/datacenters", reg.url())).await;
        if let Some(row) = body
            .as_array()
            .and_then(|a| a.iter().find(|d| d["name"] == remote))
            && row["state"] == state
        {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{remote} never became {state}");
}

/// Two datacenters federated with each other: dc1 fails `web` over to dc2.
async fn two_dcs() -> (TestRegistry, TestRegistry) {
    two_dcs_with_grpc(false).await
}

/// [`two_dcs`], dc1 serving xDS too when `grpc`.
async fn two_dcs_with_grpc(grpc: bool) -> (TestRegistry, TestRegistry) {
    let (l1, a1) = listener().await;
    let (l2, a2) = listener().await;
    let config = Config {
        datacenter: "dc1".into(),
        federation: Some(federation(&[("dc2", a2)], "web=dc2")),
        grpc_addr: grpc.then(|| SocketAddr::from(([127, 0, 0, 1], 0))),
        ..Config::default()
    };
    let dc1 = TestRegistry::start_on(l1, config).await;
    let dc2 = start_dc(l2, "dc2", Some(federation(&[("dc1", a1)], ""))).await;
    (dc1, dc2)
}

#[tokio::test]
async fn reads_of_another_datacenter_native_and_consul() {
    let (dc1, dc2) = two_dcs().await;
    let c2 = RosterClient::new(dc2.url()).unwrap();
    c2.register("web", "web-2", &instance("10.2.0.1"))
        .await
        .unwrap();

    let (status, headers, body) = get(&format!("{}/v1/services/web?dc=dc2", dc1.url())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(dc_header(&headers), Some("dc2"));
    assert_eq!(body["instances"][0]["id"], "web-2");
    let (_, _, list) = get(&format!("{}/v1/services?dc=dc2", dc1.url())).await;
    assert_eq!(list["services"][0]["name"], "web");
    // The local name is a local answer.
    let (_, headers, body) = get(&format!("{}/v1/services/other?dc=dc1", dc1.url())).await;
    assert_eq!(dc_header(&headers), None);
    assert_eq!(body["instances"], serde_json::json!([]));

    let (status, headers, rows) = get(&format!(
        "{}/v1/health/service/web?dc=dc2&passing",
        dc1.url()
    ))
    .await;
    assert_eq!(status, 200);
    assert!(headers.contains_key("x-consul-index"));
    assert_eq!(rows[0]["Service"]["ID"], "web-2");
    assert_eq!(rows[0]["Node"]["Datacenter"], "dc2");
    let (_, _, services) = get(&format!("{}/v1/catalog/services?dc=dc2", dc1.url())).await;
    assert!(services.get("web").is_some(), "{services}");

    // Unknown datacenters: problem+json naming dc, Consul's own text.
    let resp = reqwest::get(format!("{}/v1/services/web?dc=dc9", dc1.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["field"], "dc", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("dc9"));
    let (status, _, text) = get(&format!("{}/v1/health/service/web?dc=dc9", dc1.url())).await;
    assert_eq!((status, text), (500, Value::from("No path to datacenter")));

    // The list of datacenters: local first, the remote with its RTT.
    let list = wait_state(&dc1, "dc2", "up").await;
    assert_eq!(list[0]["name"], "dc1");
    assert_eq!(list[0]["local"], true);
    assert_eq!(list[1]["circuit"], "closed");
    assert!(list[1]["rtt_ms"].as_f64().is_some(), "{list}");
    let (_, _, names) = get(&format!("{}/v1/catalog/datacenters", dc1.url())).await;
    assert_eq!(names, serde_json::json!(["dc1", "dc2"]));
    assert_eq!(
        dc1.metric("roster_federation_datacenter_up{dc=\"dc2\"}")
            .await,
        Some(1.0)
    );
    let (_, _, health) = get(&format!("{}/health", dc1.url())).await;
    assert_eq!(health["federation"]["status"], "ok");
}

#[tokio::test]
async fn blocking_query_and_event_stream_through_dc() {
    let (dc1, dc2) = two_dcs().await;
    let c2 = RosterClient::new(dc2.url()).unwrap();
    c2.register("api", "api-1", &instance("10.2.0.1"))
        .await
        .unwrap();
    let url = format!("{}/v1/services/api?dc=dc2", dc1.url());
    let (_, headers, _) = get(&url).await;
    let index: u64 = headers["x-roster-index"].to_str().unwrap().parse().unwrap();

    // A blocking query proxied with the remote index: it returns on the
    // remote change, not before.
    let blocked = tokio::spawn(get_owned(format!("{url}&index={index}&wait=10s")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished(), "returned before any change");
    // An event stream through dc1 too.
    let mut stream = reqwest::get(format!("{}/v1/services/api/watch?dc=dc2", dc1.url()))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(dc_header(stream.headers()), Some("dc2"));
    let first = next_event(&mut stream).await;
    assert!(first.contains("api-1"), "{first}");

    c2.register("api", "api-2", &instance("10.2.0.2"))
        .await
        .unwrap();
    let (status, headers, body) = blocked.await.unwrap();
    assert_eq!(status, 200);
    let after: u64 = headers["x-roster-index"].to_str().unwrap().parse().unwrap();
    assert!(after > index);
    assert_eq!(body["instances"].as_array().unwrap().len(), 2);
    let second = next_event(&mut stream).await;
    assert!(second.contains("api-2"), "{second}");

    // Client discovery of a service in another datacenter.
    let discovery = Discovery::new(RosterClient::new(dc1.url()).unwrap()).in_datacenter("dc2");
    let handle = discovery.service("api");
    tokio::time::timeout(Duration::from_secs(5), handle.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.instances().unwrap().len(), 2);
}

async fn get_owned(url: String) -> (u16, reqwest::header::HeaderMap, Value) {
    get(&url).await
}

/// The next `data:` line of an event stream.
async fn next_event(resp: &mut reqwest::Response) -> String {
    let mut buf = String::new();
    loop {
        if let Some(at) = buf.find("data:")
            && let Some(end) = buf[at..].find('\n')
        {
            return buf[at..at + end].to_owned();
        }
        let chunk = tokio::time::timeout(Duration::from_secs(5), resp.chunk())
            .await
            .expect("an event in time")
            .unwrap()
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        // Keep only what follows the last complete event.
        if let Some(cut) = buf.rfind("\n\n")
            && !buf[..cut].contains("data:")
        {
            buf.drain(..cut);
        }
    }
}

/// The sorted A answers of `name`, or the response code when not NOERROR.
async fn a_records(dns: SocketAddr, name: &str) -> Result<Vec<String>, ResponseCode> {
    let reply = udp(dns, &query(name, RecordType::A)).await;
    match reply.metadata.response_code {
        ResponseCode::NoError => Ok(answer_data(&reply)),
        code => Err(code),
    }
}

async fn eventually<T: PartialEq + std::fmt::Debug, F, Fut>(what: &str, want: T, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let mut last = None;
    for _ in 0..200 {
        let got = f().await;
        if got == want {
            return;
        }
        last = Some(got);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what}: wanted {want:?}, last {last:?}");
}

#[tokio::test]
async fn dns_names_of_another_datacenter() {
    let (dc1, dc2) = two_dcs().await;
    let c2 = RosterClient::new(dc2.url()).unwrap();
    c2.register("db", "db-1", &instance("10.2.0.7"))
        .await
        .unwrap();
    let dns = dc1.dns_addr();
    // The first question starts the remote poller (SERVFAIL until it answers).
    eventually("A in dc2", Ok(vec!["10.2.0.7".to_owned()]), || {
        a_records(dns, "db.service.dc2.roster.")
    })
    .await;
    let srv = udp(dns, &query("_db._tcp.service.dc2.roster.", RecordType::SRV)).await;
    assert_eq!(srv.metadata.response_code, ResponseCode::NoError);
    let data = answer_data(&srv);
    assert_eq!(data.len(), 1, "{srv:?}");
    assert!(
        data[0].ends_with(" 8080 db-1.db.instance.dc2.roster."),
        "{data:?}"
    );
    assert_eq!(srv.additionals[0].data.to_string(), "10.2.0.7");
    let txt = udp(dns, &query("db.service.dc2.roster.", RecordType::TXT)).await;
    assert!(answer_data(&txt)[0].contains("datacenter=dc2"), "{txt:?}");
    // The local datacenter's name is the local zone; an unknown one is NXDOMAIN.
    assert_eq!(
        a_records(dns, "db.service.dc1.roster.").await,
        Err(ResponseCode::NXDomain)
    );
    assert_eq!(
        a_records(dns, "db.service.dc9.roster.").await,
        Err(ResponseCode::NXDomain)
    );
    // A new instance in dc2 reaches dc1's answers through the poller.
    c2.register("db", "db-2", &instance("10.2.0.8"))
        .await
        .unwrap();
    eventually(
        "A in dc2 after a change",
        Ok(vec!["10.2.0.7".to_owned(), "10.2.0.8".to_owned()]),
        || a_records(dns, "db.service.dc2.roster."),
    )
    .await;
}

async fn maintenance(client: &RosterClient, id: &str, on: bool) {
    let req = MaintenanceRequest {
        enabled: on,
        reason: on.then(|| "test".to_owned()),
    };
    client.maintenance("web", id, &req).await.unwrap();
}

#[tokio::test]
async fn failover_when_every_local_instance_is_critical_and_back() {
    let (dc1, dc2) = two_dcs().await;
    let c1 = RosterClient::new(dc1.url()).unwrap();
    let c2 = RosterClient::new(dc2.url()).unwrap();
    c1.register("web", "web-1", &instance("10.1.0.1"))
        .await
        .unwrap();
    c2.register("web", "web-2", &instance("10.2.0.1"))
        .await
        .unwrap();
    let url = format!("{}/v1/services/web", dc1.url());
    let (_, headers, body) = get(&url).await;
    assert_eq!(dc_header(&headers), None);
    assert_eq!(body["instances"][0]["id"], "web-1");
    let local_index: u64 = body["index"].as_u64().unwrap();
    let watch = Discovery::new(c1.clone()).healthy("web");
    tokio::time::timeout(Duration::from_secs(5), watch.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(watch.datacenter(), None);
    let mut changes = watch.changes();

    // A blocking query held on the local answer sees the switch as a change.
    let blocked = tokio::spawn(get_owned(format!("{url}?index={local_index}&wait=10s")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    maintenance(&c1, "web-1", true).await;
    let (_, headers, body) = blocked.await.unwrap();
    assert_eq!(dc_header(&headers), Some("dc2"), "{body}");
    let answer: ServiceInstances = serde_json::from_value(body).unwrap();
    assert_eq!(answer.datacenter.as_deref(), Some("dc2"));
    assert_eq!(answer.instances[0].id, "web-2");
    assert_ne!(answer.index, local_index);

    // Consul's healthy-only answer, DNS and the client library fail over too.
    let (_, headers, rows) = get(&format!("{}/v1/health/service/web?passing", dc1.url())).await;
    assert_eq!(dc_header(&headers), Some("dc2"));
    assert_eq!(rows[0]["Service"]["ID"], "web-2");
    assert_eq!(rows[0]["Service"]["Datacenter"], "dc2");
    let dns = dc1.dns_addr();
    eventually("DNS fails over", Ok(vec!["10.2.0.1".to_owned()]), || {
        a_records(dns, "web.service.roster.")
    })
    .await;
    let txt = udp(dns, &query("web.service.roster.", RecordType::TXT)).await;
    assert!(answer_data(&txt)[0].contains("datacenter=dc2"), "{txt:?}");
    tokio::time::timeout(
        Duration::from_secs(5),
        changes.wait_for(|s| s.datacenter.as_deref() == Some("dc2")),
    )
    .await
    .expect("the client sees the failover")
    .unwrap();
    assert_eq!(watch.instances().unwrap()[0].id, "web-2");
    // A change in dc2 reaches a blocking query on the failed-over answer.
    let (_, headers, _) = get(&url).await;
    let failover_index = headers["x-roster-index"].to_str().unwrap().to_owned();
    let blocked = tokio::spawn(get_owned(format!("{url}?index={failover_index}&wait=10s")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    c2.register("web", "web-3", &instance("10.2.0.2"))
        .await
        .unwrap();
    let (_, _, body) = blocked.await.unwrap();
    assert_eq!(body["instances"].as_array().unwrap().len(), 2, "{body}");

    // A local instance recovers: every face moves back.
    let (_, headers, _) = get(&url).await;
    let failover_index = headers["x-roster-index"].to_str().unwrap().to_owned();
    let blocked = tokio::spawn(get_owned(format!("{url}?index={failover_index}&wait=10s")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    maintenance(&c1, "web-1", false).await;
    let (_, headers, body) = blocked.await.unwrap();
    assert_eq!(dc_header(&headers), None);
    assert_eq!(body["instances"][0]["id"], "web-1");
    assert!(body.get("datacenter").is_none());
    eventually("DNS moves back", Ok(vec!["10.1.0.1".to_owned()]), || {
        a_records(dns, "web.service.roster.")
    })
    .await;
    tokio::time::timeout(
        Duration::from_secs(5),
        changes.wait_for(|s| s.datacenter.is_none()),
    )
    .await
    .expect("the client moves back")
    .unwrap();
    let (_, headers, _) = get(&format!("{}/v1/health/service/web?passing", dc1.url())).await;
    assert_eq!(dc_header(&headers), None);
    let served = dc1
        .metric("roster_federation_failover_answers_total{dc=\"dc2\"}")
        .await
        .unwrap();
    assert!(served >= 3.0, "{served}");
    // The other datacenter answers what it has, never failing over back.
    maintenance(&c1, "web-1", true).await;
    let (_, headers, body) = get(&format!("{}/v1/services/web?dc=dc1", dc2.url())).await;
    assert_eq!(dc_header(&headers), Some("dc1"));
    assert_eq!(body["instances"], serde_json::json!([]), "{body}");
}

/// The endpoints of one EDS response: (locality region, priority, address)
/// of every endpoint, sorted.
fn eds_rows(
    r: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
) -> Vec<(String, u32, Vec<String>)> {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let cla: Vec<ClusterLoadAssignment> = crate::xds::decode(r);
    let mut rows: Vec<(String, u32, Vec<String>)> = cla[0]
        .endpoints
        .iter()
        .map(|l| {
            let one = ClusterLoadAssignment {
                endpoints: vec![l.clone()],
                ..ClusterLoadAssignment::default()
            };
            let addrs = crate::xds::endpoints(&one)
                .into_iter()
                .map(|(a, _, _)| a)
                .collect();
            (
                l.locality.clone().unwrap_or_default().region,
                l.priority,
                addrs,
            )
        })
        .collect();
    rows.sort();
    rows
}

/// Reads (and acknowledges) EDS responses of `web` until one's rows satisfy
/// `done`; panics with what was seen after 10 s.
async fn eds_until(
    s: &mut crate::xds::Sotw,
    what: &str,
    done: impl Fn(&[(String, u32, Vec<String>)]) -> bool,
) {
    let eds = crate::xds::EDS;
    let mut seen = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let r = s.next_of(eds).await;
            s.ask(eds, &["web"]).await;
            let rows = eds_rows(&r);
            if done(&rows) {
                return;
            }
            seen.push(rows);
        }
    })
    .await;
    assert!(got.is_ok(), "{what}; saw {seen:?}");
}

/// xDS fails over as Envoy and gRPC expect: the other datacenter's healthy
/// instances arrive as a locality of priority 1 (named after the
/// datacenter) beside the local ones, and leave when a local one is back.
#[tokio::test]
async fn xds_endpoints_fail_over_as_a_lower_priority_locality() {
    let (dc1, dc2) = two_dcs_with_grpc(true).await;
    let c1 = RosterClient::new(dc1.url()).unwrap();
    let c2 = RosterClient::new(dc2.url()).unwrap();
    c1.register("web", "web-1", &instance("10.1.0.1"))
        .await
        .unwrap();
    c2.register("web", "web-2", &instance("10.2.0.1"))
        .await
        .unwrap();
    let eds = crate::xds::EDS;
    let mut s = crate::xds::Sotw::try_open_at(dc1.grpc_addr(), None)
        .await
        .unwrap();
    s.ask(eds, &["web"]).await;
    let local = vec![(String::new(), 0, vec!["10.1.0.1:8080".to_owned()])];
    assert_eq!(eds_rows(&s.next_of(eds).await), local);

    // Every local instance down: dc2's arrive at priority 1 (the first push
    // may come before dc2 has answered; the next one brings them).
    maintenance(&c1, "web-1", true).await;
    let failed_over = vec![
        (String::new(), 0, vec!["10.1.0.1:8080".to_owned()]),
        ("dc2".to_owned(), 1, vec!["10.2.0.1:8080".to_owned()]),
    ];
    eds_until(&mut s, "no failover in EDS", |rows| rows == failed_over).await;

    // A change in dc2 is pushed too.
    c2.register("web", "web-3", &instance("10.2.0.2"))
        .await
        .unwrap();
    eds_until(&mut s, "dc2's new instance not pushed", |rows| {
        rows.iter().any(|(dc, _, a)| dc == "dc2" && a.len() == 2)
    })
    .await;

    // Back: the local instance recovers and dc2's locality leaves.
    maintenance(&c1, "web-1", false).await;
    eds_until(
        &mut s,
        "EDS did not move back to the local instance",
        |rows| rows == local,
    )
    .await;
}
