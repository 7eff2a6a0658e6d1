//! Writes through a follower travel to the leader in batches
//! (`POST /v1/raft/writes`): every write still gets its own answer, a write
//! the leader refuses fails alone, and the batch endpoint is a peer endpoint
//! like the others (cluster token). The retry rules of a forwarded write, and
//! the fallback to single writes for an older leader, are unit-tested with
//! fake leaders in `registry/src/cluster/forward.rs`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use roster_client::api::{Instance, RegisterRequest};
use roster_registry::catalog::CatalogLimits;
use roster_registry::cluster::{ClusterConfig, TOKEN_HEADER};
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use tokio::net::TcpListener;
use tokio::time::{sleep, timeout};

const SOON: Duration = Duration::from_secs(30);
const TOKEN: &str = "batch-forward-test-token-0123";

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "roster-batch-forward-{name}-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Three nodes in this process, each on its own port and data directory.
struct Nodes {
    nodes: Vec<TestRegistry>,
    dirs: Vec<PathBuf>,
    api: Api,
}

/// The nodes' HTTP API, for tasks of their own.
#[derive(Clone)]
struct Api {
    urls: Vec<String>,
    http: reqwest::Client,
}

/// Runs every future in a task of its own (all at once), answers in order.
async fn all<T: Send + 'static>(
    futures: impl IntoIterator<Item = impl std::future::Future<Output = T> + Send + 'static>,
) -> Vec<T> {
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.expect("no panic"));
    }
    out
}

/// Registers instances `{prefix}0` to `{prefix}{n-1}` of `web` through node
/// `via`, all at once (instance i on port 1000 + i): their ids, and each
/// answer in the same order.
async fn register_all(
    c: &Nodes,
    via: usize,
    prefix: &str,
    n: usize,
) -> (Vec<String>, Vec<(u16, Option<u64>, Option<Instance>)>) {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    let answers = all(ids.iter().enumerate().map(|(i, id)| {
        let (api, id) = (c.api.clone(), id.clone());
        async move { api.register(via, "web", &id, 1000 + i as u16).await }
    }))
    .await;
    (ids, answers)
}

impl Nodes {
    async fn start(name: &str, catalog: CatalogLimits) -> Nodes {
        let mut listeners = Vec::new();
        for _ in 0..3 {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let join: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for (i, listener) in listeners.into_iter().enumerate() {
            let dir = temp_dir(&format!("{name}-{i}"));
            let config = Config {
                dns_addr: None,
                data_dir: Some(dir.clone()),
                lease_grace: Duration::from_secs(1),
                catalog,
                cluster: Some(ClusterConfig {
                    advertise: addrs[i].to_string(),
                    join: join.clone(),
                    bootstrap_expect: 3,
                    token: TOKEN.into(),
                    heartbeat: Duration::from_millis(100),
                    write_timeout: Duration::from_secs(10),
                    ..ClusterConfig::default()
                }),
                ..Config::default()
            };
            nodes.push(TestRegistry::start_on(listener, config).await);
            dirs.push(dir);
        }
        let c = Nodes {
            nodes,
            dirs,
            api: Api {
                urls: addrs.iter().map(|a| format!("http://{a}")).collect(),
                http: reqwest::Client::builder()
                    .timeout(Duration::from_secs(20))
                    .build()
                    .unwrap(),
            },
        };
        for url in &c.api.urls {
            let ready = format!("{url}/ready");
            timeout(SOON, async {
                loop {
                    if let Ok(r) = c.api.http.get(&ready).send().await
                        && r.status().is_success()
                    {
                        return;
                    }
                    sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .expect("node ready");
        }
        c
    }

    /// The node every node names as leader, once they agree.
    async fn leader(&self) -> usize {
        timeout(SOON, async {
            loop {
                let ids: BTreeSet<Option<u64>> = self
                    .nodes
                    .iter()
                    .map(|n| n.server().cluster().and_then(|c| c.leader()))
                    .collect();
                if ids.len() == 1
                    && let Some(Some(leader)) = ids.into_iter().next()
                    && let Some(i) = self
                        .nodes
                        .iter()
                        .position(|n| n.server().cluster().map(|c| c.id()) == Some(leader))
                {
                    return i;
                }
                sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the nodes agree on a leader")
    }

    async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
        for dir in &self.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Api {
    fn instance_url(&self, node: usize, service: &str, id: &str) -> String {
        format!("{}/v1/services/{service}/instances/{id}", self.urls[node])
    }

    /// Registers `service`/`id` on `node` with port `port`: the status, the
    /// `X-Roster-Index` header and the instance answered (on success).
    async fn register(
        &self,
        node: usize,
        service: &str,
        id: &str,
        port: u16,
    ) -> (u16, Option<u64>, Option<Instance>) {
        let req = RegisterRequest {
            address: Some("10.2.0.1".into()),
            port,
            ..RegisterRequest::default()
        };
        let resp = self
            .http
            .put(self.instance_url(node, service, id))
            .json(&req)
            .send()
            .await
            .expect("the node answers");
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("x-roster-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let inst = if resp.status().is_success() {
            Some(resp.json().await.expect("an instance"))
        } else {
            None
        };
        (status, index, inst)
    }

    /// Deregisters `service`/`id` on `node`: the status.
    async fn delete(&self, node: usize, service: &str, id: &str) -> u16 {
        self.http
            .delete(self.instance_url(node, service, id))
            .send()
            .await
            .expect("the node answers")
            .status()
            .as_u16()
    }

    /// The instance ids of `service` on `node`.
    async fn ids(&self, node: usize, service: &str) -> BTreeSet<String> {
        let resp = self
            .http
            .get(format!(
                "{}/v1/services/{service}?all=true",
                self.urls[node]
            ))
            .send()
            .await
            .expect("the node answers");
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return BTreeSet::new();
        }
        let list: roster_client::api::ServiceInstances = resp.json().await.expect("a list");
        list.instances.into_iter().map(|i| i.id).collect()
    }

    /// Waits until every node holds exactly `want` in `service`.
    async fn converge(&self, service: &str, want: &BTreeSet<String>) {
        for node in 0..self.urls.len() {
            let reached = timeout(SOON, async {
                loop {
                    if &self.ids(node, service).await == want {
                        return;
                    }
                    sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if reached.is_err() {
                let have = self.ids(node, service).await;
                panic!(
                    "node {node}: {} instances, want {}; missing {:?}, extra {:?}",
                    have.len(),
                    want.len(),
                    want.difference(&have).take(5).collect::<Vec<_>>(),
                    have.difference(want).take(5).collect::<Vec<_>>()
                );
            }
        }
    }
}

fn limits() -> CatalogLimits {
    Config::default().catalog
}

/// Each registration's answer is its own: created (201, which the follower
/// answers only when the index the leader gave back is the instance's own
/// create index), the instance it asked for, and the index header equal to
/// that instance's modify index.
fn check_own_answer(i: usize, id: &str, answer: &(u16, Option<u64>, Option<Instance>)) -> u64 {
    let (status, index, inst) = answer;
    assert_eq!(*status, 201, "write {i}: {answer:?}");
    let inst = inst.as_ref().expect("an instance");
    assert_eq!(inst.id, id, "write {i}");
    assert_eq!(inst.port, 1000 + i as u16, "write {i}");
    assert_eq!(Some(inst.modify_index), *index, "write {i}");
    inst.modify_index
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_writes_through_a_follower_land_on_every_node_with_their_own_answers() {
    let c = Nodes::start("many", limits()).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let n = 300;
    let (ids, answers) = register_all(&c, follower, "w", n).await;
    let mut indexes = BTreeSet::new();
    for (i, answer) in answers.iter().enumerate() {
        indexes.insert(check_own_answer(i, &ids[i], answer));
    }
    assert_eq!(indexes.len(), n, "every write its own index");
    c.api.converge("web", &ids.iter().cloned().collect()).await;

    // And they go away the same way: concurrent deregistrations, each 204.
    let gone = all(ids.iter().map(|id| {
        let (api, id) = (c.api.clone(), id.clone());
        async move { api.delete(follower, "web", &id).await }
    }))
    .await;
    assert!(gone.iter().all(|s| *s == 204), "{gone:?}");
    c.api.converge("web", &BTreeSet::new()).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_write_among_concurrent_ones_gets_its_own_error() {
    let c = Nodes::start("refused", limits()).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let n = 100;
    let ids: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    // The deregistration of an instance nobody registered goes in the middle
    // of the registrations: the leader's catalog refuses it (404), alone.
    let half = n / 2;
    let first = all(ids[..half].iter().enumerate().map(|(i, id)| {
        let (api, id) = (c.api.clone(), id.clone());
        async move { api.register(follower, "web", &id, 1000 + i as u16).await }
    }));
    let api = c.api.clone();
    let refused = tokio::spawn(async move { api.delete(follower, "web", "nobody").await });
    let second = all(ids[half..].iter().enumerate().map(|(i, id)| {
        let (api, id) = (c.api.clone(), id.clone());
        async move {
            api.register(follower, "web", &id, 1000 + (half + i) as u16)
                .await
        }
    }));
    let (first, second) = tokio::join!(first, second);
    assert_eq!(refused.await.expect("no panic"), 404);
    for (i, answer) in first.iter().chain(&second).enumerate() {
        check_own_answer(i, &ids[i], answer);
    }
    c.api.converge("web", &ids.iter().cloned().collect()).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leaders_capacity_refuses_exactly_the_writes_over_it() {
    let cap = 40;
    let c = Nodes::start(
        "full",
        CatalogLimits {
            max_instances_per_service: cap,
            ..limits()
        },
    )
    .await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let n = 100;
    let (ids, answers) = register_all(&c, follower, "f", n).await;
    let mut taken = BTreeSet::new();
    for (i, answer) in answers.iter().enumerate() {
        if answer.0 == 400 {
            continue;
        }
        check_own_answer(i, &ids[i], answer);
        taken.insert(ids[i].clone());
    }
    assert_eq!(taken.len(), cap, "the first {cap} in log order, no more");
    c.api.converge("web", &taken).await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_batch_endpoint_wants_the_cluster_token() {
    let c = Nodes::start("token", limits()).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let body = serde_json::json!({"ops": [
        {"op": "deregister", "service": "web", "id": "a"},
        {"op": "deregister", "service": "web", "id": "b"},
    ]});
    let post = |node: usize, token: Option<&str>| {
        let mut req = c
            .api
            .http
            .post(format!("{}/v1/raft/writes", c.api.urls[node]))
            .json(&body);
        if let Some(t) = token {
            req = req.header(TOKEN_HEADER, t);
        }
        req.send()
    };
    for token in [None, Some("not-the-cluster-token-0000")] {
        let resp = post(leader, token).await.expect("answers");
        assert_eq!(resp.status().as_u16(), 403, "token {token:?}");
    }
    // With it: one answer per op, in order; a follower sends them on to no one.
    let answers: Vec<serde_json::Value> = post(leader, Some(TOKEN))
        .await
        .expect("answers")
        .json()
        .await
        .expect("a list");
    assert_eq!(answers.len(), 2);
    for (answer, id) in answers.iter().zip(["a", "b"]) {
        assert_eq!(answer["Err"]["kind"], "not_found", "{answer}");
        assert_eq!(answer["Err"]["id"], id, "{answer}");
    }
    let answers: Vec<serde_json::Value> = post(follower, Some(TOKEN))
        .await
        .expect("answers")
        .json()
        .await
        .expect("a list");
    assert_eq!(answers.len(), 2);
    for answer in &answers {
        assert_eq!(answer["Err"]["kind"], "unavailable", "{answer}");
    }
    c.stop().await;
}

/// Sum of `roster_http_requests_total` for `route` on `node`.
async fn requests_on(api: &Api, node: usize, route: &str) -> u64 {
    let text = api
        .http
        .get(format!("{}/metrics", api.urls[node]))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    let label = format!("route=\"{route}\"");
    text.lines()
        .filter(|l| l.starts_with("roster_http_requests_total") && l.contains(&label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heartbeats_through_a_follower_reach_the_leader_in_batches_with_their_own_answers() {
    let c = Nodes::start("beats", limits()).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let n = 100;
    let ids: Vec<String> = (0..n).map(|i| format!("h{i}")).collect();
    let registered = all(ids.iter().map(|id| {
        let (api, id) = (c.api.clone(), id.clone());
        async move {
            let req = RegisterRequest {
                address: Some("10.2.0.1".into()),
                port: 80,
                ttl: Some(Duration::from_secs(60)),
                ..RegisterRequest::default()
            };
            api.http
                .put(api.instance_url(leader, "web", &id))
                .json(&req)
                .send()
                .await
                .expect("the node answers")
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(
        registered.iter().all(|s| *s == 200 || *s == 201),
        "{registered:?}"
    );
    c.api.converge("web", &ids.iter().cloned().collect()).await;
    let singles_before = requests_on(&c.api, leader, "/v1/raft/heartbeat").await;
    // Every instance heartbeats through the follower at once, and one that
    // does not exist among them.
    let beats = all(ids.iter().cloned().chain(["ghost".to_owned()]).map(|id| {
        let api = c.api.clone();
        async move {
            let status = api
                .http
                .put(format!(
                    "{}/heartbeat",
                    api.instance_url(follower, "web", &id)
                ))
                .send()
                .await
                .expect("the node answers")
                .status()
                .as_u16();
            (id, status)
        }
    }))
    .await;
    for (id, status) in &beats {
        let want = if id == "ghost" { 404 } else { 204 };
        assert_eq!(*status, want, "{id}");
    }
    let batches = requests_on(&c.api, leader, "/v1/raft/heartbeats").await;
    let singles = requests_on(&c.api, leader, "/v1/raft/heartbeat").await - singles_before;
    assert!(batches >= 1, "the leader took heartbeats in batches");
    assert!(
        batches + singles < n as u64,
        "{} heartbeats in {batches} batches and {singles} single requests",
        n + 1
    );
    c.stop().await;
}
