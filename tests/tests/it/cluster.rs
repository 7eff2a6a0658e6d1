//! A replicated registry: three (or four) nodes in this process, each on its own
//! port and data directory, talking Raft over HTTP. Failover is a graceful stop
//! of the leader here; tests/cluster_fault.sh does it with SIGKILL and SIGSTOP
//! on real processes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use roster_client::api::{BatchOp, RegisterRequest};
use roster_client::{InstanceQuery, RosterClient, TlsOptions};
use roster_registry::catalog::SelfPreservation;
use roster_registry::cluster::{ClusterConfig, PeerTls};
use roster_registry::config::Config;
use roster_registry::http::serve::TlsFiles;
use roster_tests::TestRegistry;
use tokio::net::TcpListener;
use tokio::time::{Instant, sleep, timeout};

/// Generous upper bound for anything a cluster should do "soon".
const SOON: Duration = Duration::from_secs(30);

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "roster-cluster-{name}-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// One node's fixed identity: address and data directory survive restarts.
struct Slot {
    addr: SocketAddr,
    dir: PathBuf,
    node: Option<TestRegistry>,
}

struct Cluster {
    slots: Vec<Slot>,
    join: Vec<String>,
    expect: usize,
    snapshot_every: u64,
    dns: bool,
    guard: SelfPreservation,
    /// Peer TLS: every node gets a certificate from this CA.
    tls: Option<PeerCa>,
    /// The host nodes advertise and join by (and clients use).
    host: &'static str,
}

/// A peer CA and the directory of the nodes' certificates.
struct PeerCa {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
    dir: PathBuf,
    /// Subject alternative names of the node certificates.
    names: Vec<String>,
    /// The API's `--tls-client-ca` (the node certificates then serve the API
    /// too, as its `--tls-cert`), and the identity the harness's clients
    /// present (cert + key PEM).
    api_clients: Option<(Box<PeerCa>, String)>,
}

impl PeerCa {
    fn new(name: &str) -> PeerCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} CA"));
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let dir = temp_dir(&format!("{name}-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), &pem).unwrap();
        PeerCa {
            params,
            key,
            pem,
            dir,
            names: vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            api_clients: None,
        }
    }

    /// A node certificate for 127.0.0.1 (server and client use): (cert, key) PEM.
    fn leaf(&self) -> (String, String) {
        let mut params = CertificateParams::new(self.names.clone()).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// The peer TLS files of the node on `addr` (written on first use; a
    /// restarted node keeps its certificate).
    fn files(&self, addr: SocketAddr) -> PeerTls {
        let tls = PeerTls {
            cert: self.dir.join(format!("node-{}-cert.pem", addr.port())),
            key: self.dir.join(format!("node-{}-key.pem", addr.port())),
            ca: self.dir.join("ca.pem"),
        };
        if !tls.cert.exists() {
            self.renew(&tls);
        }
        tls
    }

    /// Writes a new certificate and key for `tls` (each file replaced at once).
    fn renew(&self, tls: &PeerTls) -> String {
        let (cert, key) = self.leaf();
        for (path, pem) in [(&tls.key, &key), (&tls.cert, &cert)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, pem).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        cert
    }
}

impl Cluster {
    /// Starts `n` nodes that form one cluster.
    async fn start(name: &str, n: usize) -> Cluster {
        Self::start_with(name, n, 10_000).await
    }

    async fn start_with(name: &str, n: usize, snapshot_every: u64) -> Cluster {
        Self::start_full(name, n, snapshot_every, false).await
    }

    async fn start_full(name: &str, n: usize, snapshot_every: u64, dns: bool) -> Cluster {
        Self::start_guarded(name, n, snapshot_every, dns, SelfPreservation::default()).await
    }

    async fn start_guarded(
        name: &str,
        n: usize,
        snapshot_every: u64,
        dns: bool,
        guard: SelfPreservation,
    ) -> Cluster {
        Self::start_inner(name, n, snapshot_every, dns, guard, None).await
    }

    /// Starts `n` nodes that talk to each other over peer TLS.
    async fn start_tls(name: &str, n: usize) -> Cluster {
        let ca = PeerCa::new(name);
        Self::start_inner(
            name,
            n,
            10_000,
            false,
            SelfPreservation::default(),
            Some(ca),
        )
        .await
    }

    /// Starts `n` nodes over peer TLS whose certificates name `localhost`
    /// only; they advertise and join by that name.
    async fn start_tls_by_name(name: &str, n: usize) -> Cluster {
        let mut ca = PeerCa::new(name);
        ca.names = vec!["localhost".to_owned()];
        Self::start_inner(
            name,
            n,
            10_000,
            false,
            SelfPreservation::default(),
            Some(ca),
        )
        .await
    }

    async fn start_inner(
        name: &str,
        n: usize,
        snapshot_every: u64,
        dns: bool,
        guard: SelfPreservation,
        tls: Option<PeerCa>,
    ) -> Cluster {
        let mut listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let addrs: Vec<SocketAddr> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let host = match &tls {
            Some(ca) if !ca.names.iter().any(|n| n == "127.0.0.1") => "localhost",
            _ => "127.0.0.1",
        };
        let mut cluster = Cluster {
            slots: Vec::new(),
            join: addrs
                .iter()
                .map(|a| format!("{host}:{}", a.port()))
                .collect(),
            expect: n,
            snapshot_every,
            dns,
            guard,
            tls,
            host,
        };
        for (i, listener) in listeners.into_iter().enumerate() {
            let dir = temp_dir(&format!("{name}-{i}"));
            let config = cluster.config(addrs[i], &dir, n);
            let node = TestRegistry::start_on(listener, config).await;
            cluster.slots.push(Slot {
                addr: addrs[i],
                dir,
                node: Some(node),
            });
        }
        cluster.wait_ready().await;
        cluster
    }

    fn config(&self, addr: SocketAddr, dir: &std::path::Path, expect: usize) -> Config {
        let mut config = self.plain_config(addr, dir, expect);
        if let Some(ca) = &self.tls {
            config.serve.tls_poll = Duration::from_millis(100);
            let files = ca.files(addr);
            if let Some((clients, _)) = &ca.api_clients {
                config.serve.tls = Some(TlsFiles {
                    cert: files.cert.clone(),
                    key: files.key.clone(),
                    client_ca: Some(clients.dir.join("ca.pem")),
                });
            }
            if let Some(c) = config.cluster.as_mut() {
                c.peer_tls = Some(files);
            }
        }
        config
    }

    fn plain_config(&self, addr: SocketAddr, dir: &std::path::Path, expect: usize) -> Config {
        Config {
            // The harness gives DNS its own port 0 when it is on.
            dns_addr: if self.dns {
                Config::default().dns_addr
            } else {
                None
            },
            data_dir: Some(dir.to_owned()),
            lease_grace: Duration::from_secs(1),
            self_preservation: self.guard,
            cluster: Some(ClusterConfig {
                advertise: format!("{}:{}", self.host, addr.port()),
                join: self.join.clone(),
                bootstrap_expect: expect,
                token: "cluster-test-token-0123456789".into(),
                heartbeat: Duration::from_millis(100),
                write_timeout: Duration::from_secs(3),
                snapshot_every: self.snapshot_every,
                ..ClusterConfig::default()
            }),
            ..Config::default()
        }
    }

    fn url(&self, i: usize) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.slots[i].addr.port())
    }

    /// An API client of `urls`; over peer TLS it trusts the CA and has no
    /// client certificate of its own.
    fn api_client(&self, urls: &str) -> RosterClient {
        let tls = TlsOptions {
            ca_pem: self.tls.as_ref().map(|ca| ca.pem.clone().into_bytes()),
            identity_pem: self.identity().map(String::into_bytes),
        };
        RosterClient::with_tls(urls, Duration::from_secs(5), &tls).unwrap()
    }

    fn client(&self, i: usize) -> RosterClient {
        self.api_client(&self.url(i))
    }

    /// A client that knows every node.
    fn client_all(&self) -> RosterClient {
        let urls: Vec<String> = (0..self.slots.len()).map(|i| self.url(i)).collect();
        self.api_client(&urls.join(","))
    }

    /// A plain reqwest client that trusts the peer CA (when there is one),
    /// without a client certificate.
    fn http(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(5));
        if let Some(ca) = &self.tls {
            builder = builder
                .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap());
        }
        if let Some(pem) = self.identity() {
            builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }

    /// The certificate API clients present, when the API asks for one.
    fn identity(&self) -> Option<String> {
        let (_, pem) = self.tls.as_ref()?.api_clients.as_ref()?;
        Some(pem.clone())
    }

    fn running(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].node.is_some())
            .collect()
    }

    /// Waits until every running node is ready (knows a leader).
    async fn wait_ready(&self) {
        let http = self.http();
        for i in self.running() {
            let url = format!("{}/ready", self.url(i));
            timeout(SOON, async {
                loop {
                    if let Ok(r) = http.get(&url).send().await
                        && r.status().is_success()
                    {
                        return;
                    }
                    sleep(Duration::from_millis(50)).await;
                }
            })
            .await
            .unwrap_or_else(|_| panic!("node {i} never became ready"));
        }
    }

    /// The running node that leads, once the running nodes agree on one.
    async fn leader(&self) -> usize {
        self.leader_among(&self.running()).await
    }

    /// The node that `nodes` agree leads them.
    async fn leader_among(&self, nodes: &[usize]) -> usize {
        timeout(SOON, async {
            loop {
                let mut seen = BTreeSet::new();
                for &i in nodes {
                    if let Ok(s) = self.client(i).raft_status().await {
                        seen.insert(s.leader);
                    }
                }
                if seen.len() == 1
                    && let Some(Some(leader)) = seen.into_iter().next()
                {
                    for i in self.running() {
                        if self.node(i).cluster().map(|c| c.id()) == Some(leader) {
                            return i;
                        }
                    }
                }
                sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("the running nodes agree on a leader")
    }

    fn node(&self, i: usize) -> &roster_registry::server::Server {
        self.slots[i].node.as_ref().expect("running").server()
    }

    async fn stop(&mut self, i: usize) {
        self.slots[i].node.take().expect("running").stop().await;
    }

    async fn restart(&mut self, i: usize) {
        let config = self.config(self.slots[i].addr, &self.slots[i].dir, self.expect);
        // The old listener is closed; the port is free again on loopback.
        let listener = TcpListener::bind(self.slots[i].addr).await.unwrap();
        self.slots[i].node = Some(TestRegistry::start_on(listener, config).await);
    }

    /// Instance ids of `service` on node `i` (all of them, healthy or not).
    async fn ids(&self, i: usize, service: &str) -> BTreeSet<String> {
        match self
            .client(i)
            .instances(
                service,
                &InstanceQuery {
                    all: true,
                    ..InstanceQuery::default()
                },
            )
            .await
        {
            Ok(list) => list.instances.into_iter().map(|i| i.id).collect(),
            Err(roster_client::Error::NotFound(_)) => BTreeSet::new(),
            Err(e) => panic!("node {i}: {e}"),
        }
    }

    /// Waits until every running node has exactly `want` in `service`.
    async fn converge(&self, service: &str, want: &BTreeSet<String>) {
        for i in self.running() {
            let reached = timeout(SOON, async {
                loop {
                    if &self.ids(i, service).await == want {
                        return;
                    }
                    sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if reached.is_err() {
                panic!(
                    "node {i} has {:?}, expected {:?}",
                    self.ids(i, service).await,
                    want
                );
            }
        }
    }

    fn cut(&self, isolated: usize) {
        let ids: Vec<u64> = self
            .running()
            .into_iter()
            .map(|i| self.node(i).cluster().unwrap().id())
            .collect();
        let me = self.node(isolated).cluster().unwrap().id();
        for i in self.running() {
            let c = self.node(i).cluster().unwrap();
            let mut cut = c.peers().cut.write().unwrap();
            if i == isolated {
                cut.extend(ids.iter().copied().filter(|id| *id != me));
            } else {
                cut.insert(me);
            }
        }
    }

    /// Registers `web/id` through a running node, retrying while the
    /// survivors of a stopped leader elect another; `false` if no write is
    /// taken within [`SOON`].
    async fn register_on_a_survivor(&self, id: &str, port: u16) -> bool {
        let survivor = self.running()[0];
        timeout(SOON, async {
            while self
                .client(survivor)
                .register("web", id, &instance(port))
                .await
                .is_err()
            {
                sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .is_ok()
    }

    fn heal(&self) {
        for i in self.running() {
            self.node(i)
                .cluster()
                .unwrap()
                .peers()
                .cut
                .write()
                .unwrap()
                .clear();
        }
    }

    async fn shutdown(mut self) {
        for i in self.running() {
            self.stop(i).await;
        }
        for s in &self.slots {
            let _ = std::fs::remove_dir_all(&s.dir);
        }
        if let Some(ca) = &self.tls {
            let _ = std::fs::remove_dir_all(&ca.dir);
            if let Some((clients, _)) = &ca.api_clients {
                let _ = std::fs::remove_dir_all(&clients.dir);
            }
        }
    }
}

fn instance(port: u16) -> RegisterRequest {
    RegisterRequest {
        address: Some("10.1.0.1".into()),
        port,
        ..RegisterRequest::default()
    }
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_a_follower_are_read_on_every_node_and_survive_a_failover() {
    let mut c = Cluster::start("failover", 3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;

    // A write on a follower is forwarded, and the follower answers only once
    // it can read it back itself.
    let stored = c
        .client(follower)
        .register("web", "w1", &instance(80))
        .await
        .unwrap();
    assert_eq!(stored.id, "w1");
    assert_eq!(c.ids(follower, "web").await, set(&["w1"]));
    c.converge("web", &set(&["w1"])).await;

    // The leader goes away; a survivor takes writes again.
    c.stop(leader).await;
    let survivor = c.running()[0];
    let started = Instant::now();
    let took = timeout(SOON, async {
        loop {
            if c.client(survivor)
                .register("web", "w2", &instance(81))
                .await
                .is_ok()
            {
                return started.elapsed();
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("writes resume after the leader stops");
    eprintln!("failover: first write accepted {took:?} after the leader stopped");
    let new_leader = c.leader().await;
    assert_ne!(new_leader, leader);
    c.converge("web", &set(&["w1", "w2"])).await;

    // The old leader comes back as a follower and catches up.
    c.restart(leader).await;
    c.wait_ready().await;
    c.converge("web", &set(&["w1", "w2"])).await;
    let status = c.client(leader).raft_status().await.unwrap();
    assert_eq!(status.members.len(), 3);
    assert_ne!(status.state, "Leader");
    // Every node agrees on the catalog index too.
    let mut indexes = BTreeSet::new();
    for i in c.running() {
        indexes.insert(c.node(i).registry().snapshot().index);
    }
    assert_eq!(indexes.len(), 1, "indexes differ: {indexes:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_node_refuses_writes_and_flags_its_reads_stale() {
    let c = Cluster::start("partition", 3).await;
    let leader = c.leader().await;
    let isolated = (leader + 1) % 3;
    c.client(leader)
        .register("api", "a1", &instance(80))
        .await
        .unwrap();
    c.converge("api", &set(&["a1"])).await;

    c.cut(isolated);
    let http = reqwest::Client::new();
    // A write on the cut-off node cannot reach a leader: 503 with Retry-After.
    let resp = http
        .put(format!("{}/v1/services/api/instances/a2", c.url(isolated)))
        .json(&instance(81))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    // Its reads still answer, from its own (stale) copy, and say so once an
    // election timeout has passed without contact.
    let stale = timeout(SOON, async {
        loop {
            let resp = http
                .get(format!("{}/v1/services/api", c.url(isolated)))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let known = resp.headers()["x-roster-knownleader"]
                .to_str()
                .unwrap()
                .to_owned();
            let contact: u64 = resp.headers()["x-roster-lastcontact"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            if known == "false" {
                return contact;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the cut-off node flags its reads");
    // And the time since the last contact keeps growing.
    sleep(Duration::from_millis(500)).await;
    let later: u64 = http
        .get(format!("{}/v1/services/api", c.url(isolated)))
        .send()
        .await
        .unwrap()
        .headers()["x-roster-lastcontact"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        later >= stale + 400,
        "last contact {stale} ms, then {later} ms"
    );
    // A consistent read there cannot be served.
    let resp = http
        .get(format!("{}/v1/services/api?consistent", c.url(isolated)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);

    // The majority goes on: writes and consistent reads work there.
    let others: Vec<usize> = (0..3).filter(|i| *i != isolated).collect();
    let majority = c.leader_among(&others).await;
    assert_ne!(majority, isolated);
    // The leader of the majority reads the cut-off node as unreachable (a
    // partition looks like a dead node from there), and the others as reachable.
    let cut_id = c.node(isolated).cluster().unwrap().id();
    timeout(SOON, async {
        loop {
            let s = c.client(majority).raft_status().await.unwrap();
            if s.members
                .iter()
                .all(|m| m.reachable == Some(m.id != cut_id))
            {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the majority's leader reads the cut-off node unreachable");
    let writer = c.client((isolated + 1) % 3);
    timeout(SOON, async {
        while writer.register("api", "a3", &instance(82)).await.is_err() {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the majority takes writes");
    let resp = http
        .get(format!("{}/v1/services/api?consistent", c.url(majority)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-roster-knownleader"], "true");
    assert_eq!(c.ids(isolated, "api").await, set(&["a1"]), "stale copy");

    // Healed, the node catches up.
    c.heal();
    c.converge("api", &set(&["a1", "a3"])).await;
    c.shutdown().await;
}

/// Every acknowledged write is visible after failovers and restarts; no
/// acknowledged delete comes back. Writes whose outcome is unknown (the client
/// saw an error) may have happened or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_across_failovers() {
    let mut c = Cluster::start("history", 3).await;
    let client = c.client_all();
    // What the test knows for sure: Some(true) registered, Some(false) deleted.
    let mut known: BTreeMap<String, Option<bool>> = BTreeMap::new();
    let mut acked = 0;
    // Like a real caller, retry a failed write for a while: an election takes
    // a moment. A write that never succeeded has an unknown outcome.
    async fn retried<F, Fut>(mut op: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if op().await {
                return true;
            }
            sleep(Duration::from_millis(100)).await;
        }
        false
    }
    for round in 0..3 {
        for k in 0..20 {
            let id = format!("h{round}-{k}");
            let ok = retried(|| {
                let (client, id) = (&client, &id);
                async move {
                    client
                        .register("hist", id, &instance(1000 + k))
                        .await
                        .is_ok()
                }
            })
            .await;
            known.insert(id.clone(), ok.then_some(true));
            acked += usize::from(ok);
            if k % 4 == 0 {
                let del = retried(|| {
                    let (client, id) = (&client, &id);
                    async move { client.deregister("hist", id).await.is_ok() }
                })
                .await;
                known.insert(id, if del { Some(false) } else { None });
            }
            if k == 10 {
                // Take the leader down in the middle of the stream.
                let leader = c.leader().await;
                c.stop(leader).await;
            }
        }
        // Bring everything back before the next round.
        for i in 0..3 {
            if c.slots[i].node.is_none() {
                c.restart(i).await;
            }
        }
        c.wait_ready().await;
    }
    assert_eq!(acked, 60, "registrations acknowledged");
    let must: BTreeSet<String> = known
        .iter()
        .filter(|(_, v)| **v == Some(true))
        .map(|(k, _)| k.clone())
        .collect();
    let must_not: BTreeSet<String> = known
        .iter()
        .filter(|(_, v)| **v == Some(false))
        .map(|(k, _)| k.clone())
        .collect();
    // Let every node apply what is committed, then compare.
    let leader = c.leader().await;
    let reference = timeout(SOON, async {
        loop {
            let ids = c.ids(leader, "hist").await;
            if must.is_subset(&ids) {
                return ids;
            }
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("every acknowledged registration is on the leader");
    assert!(
        reference.is_disjoint(&must_not),
        "deleted instances came back: {:?}",
        reference.intersection(&must_not).collect::<Vec<_>>()
    );
    c.converge("hist", &reference).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leases_live_through_a_failover_and_expire_under_the_new_leader() {
    let mut c = Cluster::start("leases", 3).await;
    let client = c.client_all();
    let ttl = RegisterRequest {
        ttl: Some(Duration::from_secs(2)),
        ..instance(80)
    };
    client.register("beat", "alive", &ttl).await.unwrap();
    client.register("beat", "silent", &ttl).await.unwrap();
    let leader = c.leader().await;
    // Heartbeat "alive" through every node in turn (followers forward) while
    // the leader goes away; "silent" never heartbeats.
    let beats = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.heartbeat("beat", "alive").await;
                sleep(Duration::from_millis(300)).await;
            }
        })
    };
    sleep(Duration::from_millis(500)).await;
    c.stop(leader).await;
    let survivor = c.running()[0];
    // "silent" expires under the new leader (critical, then the new health
    // shows on every survivor); "alive" never does.
    let healthy = |i: usize| {
        let client = c.client(i);
        async move {
            client
                .instances("beat", &InstanceQuery::default())
                .await
                .map(|l| {
                    l.instances
                        .into_iter()
                        .map(|i| i.id)
                        .collect::<BTreeSet<_>>()
                })
                .unwrap_or_default()
        }
    };
    timeout(SOON, async {
        while healthy(survivor).await != set(&["alive"]) {
            sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the silent instance expires after the failover");
    // For several TTLs after the failover, the heartbeating instance stays healthy.
    for _ in 0..10 {
        for i in c.running() {
            assert!(
                healthy(i).await.contains("alive"),
                "alive expired on node {i}"
            );
        }
        sleep(Duration::from_millis(400)).await;
    }
    beats.abort();
    c.shutdown().await;
}

/// A node added later gets the catalog by snapshot (the log before it was
/// compacted away), votes, and can be removed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_joins_by_snapshot_and_can_be_removed() {
    join_by_snapshot_and_remove(Cluster::start_with("join", 3, 20).await).await;
}

/// The same over peer TLS: the snapshot is installed over HTTPS too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_peer_tls_a_new_node_joins_by_snapshot() {
    let ca = PeerCa::new("ptls-join");
    let c = Cluster::start_inner(
        "ptls-join",
        3,
        20,
        false,
        SelfPreservation::default(),
        Some(ca),
    )
    .await;
    join_by_snapshot_and_remove(c).await;
}

async fn join_by_snapshot_and_remove(mut c: Cluster) {
    let client = c.client_all();
    let mut want = BTreeSet::new();
    for k in 0..60 {
        let id = format!("j{k}");
        client
            .register("grow", &id, &instance(2000 + k))
            .await
            .unwrap();
        want.insert(id);
    }
    // A removal moves the service's index past every instance's.
    client.deregister("grow", "j59").await.unwrap();
    want.remove("j59");
    let leader = c.leader().await;
    let purged = timeout(SOON, async {
        loop {
            let status = c
                .node(leader)
                .cluster()
                .unwrap()
                .raft()
                .metrics()
                .borrow()
                .clone();
            if status.purged.is_some() {
                return status.purged;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the leader compacts its log after snapshots");
    assert!(purged.is_some());

    // A fourth node that only knows where the cluster is asks to join.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = temp_dir("join-new");
    let config = c.config(addr, &dir, 0);
    let node = TestRegistry::start_on(listener, config).await;
    c.slots.push(Slot {
        addr,
        dir,
        node: Some(node),
    });
    c.wait_ready().await;
    c.converge("grow", &want).await;
    // The node that started from a snapshot has the same indexes as the others.
    let index_of = |i: usize| {
        let snap = c.node(i).registry().snapshot();
        (
            snap.index,
            snap.services.get("grow").map(|s| s.modify_index),
        )
    };
    timeout(SOON, async {
        while index_of(3) != index_of(leader) {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("new node {:?}, leader {:?}", index_of(3), index_of(leader)));
    let new_id = c.node(3).cluster().unwrap().id();
    let status = c.client(0).raft_status().await.unwrap();
    assert!(
        status.members.iter().any(|m| m.id == new_id && m.voter),
        "{status:?}"
    );

    // The operator removes it again (through any node).
    c.client(3).raft_remove_peer(new_id).await.unwrap();
    timeout(SOON, async {
        loop {
            let s = c.client(0).raft_status().await.unwrap();
            if s.members.len() == 3 && s.members.iter().all(|m| m.id != new_id) {
                return;
            }
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the node is removed");
    let err = c.client(0).raft_remove_peer(new_id).await.unwrap_err();
    assert!(matches!(err, roster_client::Error::NotFound(_)), "{err:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_follower_reads_unreachable_within_a_few_heartbeats_and_reachable_again_once_back()
 {
    let mut c = Cluster::start("reach", 3).await;
    let leader = c.leader().await;
    let down = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let down_id = c.node(down).cluster().unwrap().id();
    let member = |s: &roster_client::api::RaftStatus| {
        s.members
            .iter()
            .find(|m| m.id == down_id)
            .cloned()
            .expect("still a member")
    };

    // Healthy: the leader reaches everyone (once each has answered it),
    // nobody is behind, all vote.
    let status = timeout(SOON, async {
        loop {
            let s = c.client(leader).raft_status().await.unwrap();
            if s.members.iter().all(|m| m.reachable == Some(true)) {
                return s;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the leader reaches every member");
    assert_eq!(status.replication_view, Some(status.node));
    for m in &status.members {
        assert!(m.voter, "{status:?}");
        assert!(m.last_contact_ms.unwrap() < 1000, "{status:?}");
    }

    // The follower goes away. The leader sends a heartbeat every 100ms; with
    // none answered for 3 of them (+200ms), the follower reads unreachable.
    c.stop(down).await;
    let stopped = Instant::now();
    let took = timeout(SOON, async {
        loop {
            let s = c.client(leader).raft_status().await.unwrap();
            if member(&s).reachable == Some(false) {
                return stopped.elapsed();
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the stopped follower reads unreachable");
    eprintln!("a stopped follower read unreachable {took:?} after it stopped");
    let bound = Duration::from_millis(3 * 100) + Duration::from_secs(1);
    assert!(
        took <= bound,
        "unreachable after {took:?}, more than {bound:?}"
    );

    // Writes go on without it, and it falls behind by them.
    c.client(leader)
        .register("web", "w1", &instance(80))
        .await
        .unwrap();
    let s = c.client(leader).raft_status().await.unwrap();
    let m = member(&s);
    assert!(m.lag.unwrap() >= 1, "{s:?}");
    assert!(m.last_contact_ms.unwrap() >= 300, "{s:?}");
    assert!(m.voter, "a stopped voter still votes: {s:?}");
    // The surviving follower shows the leader's view, not its own guess.
    let s = c.client(other).raft_status().await.unwrap();
    assert_eq!(s.node, c.node(other).cluster().unwrap().id());
    assert_ne!(s.replication_view, Some(s.node));
    assert_eq!(member(&s).reachable, Some(false), "{s:?}");
    // And /metrics on the leader says the same.
    let metrics = reqwest::get(format!("{}/metrics", c.url(leader)))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "roster_raft_peer_reachable{{node=\"{down_id}\"}} 0"
        )),
        "{metrics}"
    );

    // It comes back: reachable again and caught up.
    c.restart(down).await;
    timeout(SOON, async {
        loop {
            let s = c.client(leader).raft_status().await.unwrap();
            let m = member(&s);
            if m.reachable == Some(true) && m.lag == Some(0) {
                return;
            }
            sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the follower is reachable again and caught up");
    let back = stopped.elapsed();
    eprintln!("reachable and caught up {back:?} after it stopped (restart included)");
    c.converge("web", &set(&["w1"])).await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_lone_registry_has_no_raft_endpoints() {
    let r = TestRegistry::start().await;
    let client = RosterClient::new(r.url()).unwrap();
    assert!(matches!(
        client.raft_status().await,
        Err(roster_client::Error::NotFound(_))
    ));
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/raft/node", r.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dns_answers_on_every_node_and_a_remote_front_end_fails_over() {
    use hickory_proto::rr::RecordType;
    use roster_tests::dns::{answer_data, query, udp};

    let mut c = Cluster::start_full("dns", 3, 10_000, true).await;
    let leader = c.leader().await;
    let client = c.client_all();
    let at = |address: &str, port| RegisterRequest {
        address: Some(address.into()),
        ..instance(port)
    };
    client
        .register("web", "w1", &at("10.7.0.1", 80))
        .await
        .unwrap();
    async fn eventually(addr: SocketAddr, want: &[&str]) {
        timeout(SOON, async {
            loop {
                // NXDOMAIN (empty) until the name's first instance arrives.
                let mut got =
                    answer_data(&udp(addr, &query("web.service.roster.", RecordType::A)).await);
                got.sort();
                if got == want {
                    return;
                }
                sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{addr} never answered {want:?}"));
    }
    for i in c.running() {
        eventually(c.node(i).dns_addr().unwrap(), &["10.7.0.1"]).await;
    }

    // A DNS front end that follows the cluster, the leader's address first.
    let mut urls = vec![c.url(leader)];
    urls.extend((0..3).filter(|i| *i != leader).map(|i| c.url(i)));
    let follow = RosterClient::with_timeout(&urls.join(","), Duration::from_secs(2)).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let front = roster_cli::remote::RemoteDns::start(
        follow,
        "127.0.0.1:0".parse().unwrap(),
        roster_dns::DnsConfig::default(),
        shutdown.clone(),
    )
    .await
    .unwrap();
    eventually(front.local_addr(), &["10.7.0.1"]).await;

    // Its registry node goes away; it follows another one and sees new writes.
    c.stop(leader).await;
    timeout(SOON, async {
        while client
            .register("web", "w2", &at("10.7.0.2", 80))
            .await
            .is_err()
        {
            sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the survivors take writes");
    eventually(front.local_addr(), &["10.7.0.1", "10.7.0.2"]).await;
    for i in c.running() {
        eventually(c.node(i).dns_addr().unwrap(), &["10.7.0.1", "10.7.0.2"]).await;
    }
    shutdown.cancel();
    c.shutdown().await;
}

/// A leader cut off from the majority must not expire leases: the instances'
/// heartbeats go to the new leader on the other side.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_expires_nothing() {
    let c = Cluster::start("cutleader", 3).await;
    let old = c.leader().await;
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let urls: Vec<String> = others.iter().map(|i| c.url(*i)).collect();
    // The instance reaches only the two nodes that will stay together.
    let client = RosterClient::with_timeout(&urls.join(","), Duration::from_secs(2)).unwrap();
    let ttl = RegisterRequest {
        ttl: Some(Duration::from_secs(2)),
        ..instance(80)
    };
    client.register("cut", "i1", &ttl).await.unwrap();
    c.converge("cut", &set(&["i1"])).await;
    let beats = {
        let client = client.clone();
        tokio::spawn(async move {
            loop {
                let _ = client.heartbeat("cut", "i1").await;
                sleep(Duration::from_millis(250)).await;
            }
        })
    };
    c.cut(old);
    let healthy_everywhere = || async {
        for i in 0..3 {
            let list = c
                .client(i)
                .instances("cut", &InstanceQuery::default())
                .await
                .unwrap();
            assert_eq!(
                list.instances.len(),
                1,
                "node {i} shows i1 unhealthy (old leader {old})"
            );
        }
    };
    // Well past the TTL while cut off, then healed, the instance stays healthy
    // on every node, the old leader's included.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        healthy_everywhere().await;
        sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(c.leader_among(&others).await, old);
    c.heal();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        healthy_everywhere().await;
        sleep(Duration::from_millis(200)).await;
    }
    beats.abort();
    c.shutdown().await;
}

/// Peer endpoints take Raft messages and forwarded writes: nobody without the
/// cluster token reaches them, and a forwarded write gets no more trust than
/// the HTTP request it came from (hostile pass, issue 25).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_endpoints_need_the_cluster_token_and_forwarded_writes_are_validated() {
    let cluster = Cluster::start("peer-auth", 1).await;
    let client = cluster.client(0);
    client
        .register("web", "web-1", &instance(8080))
        .await
        .expect("a normal registration");
    let http = reqwest::Client::new();
    let write = format!("{}/v1/raft/write", cluster.url(0));
    let restore = serde_json::json!({
        "op": "restore", "index": 5, "names_index": 5, "instances": [], "grace_ms": 0
    });
    // No token, and a wrong one: refused before anything is decoded.
    for token in [None, Some("not-the-cluster-token-at-all")] {
        let mut req = http.post(&write).json(&restore);
        if let Some(t) = token {
            req = req.header("x-roster-cluster-token", t);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 403, "token {token:?}");
    }
    assert_eq!(
        cluster.ids(0, "web").await,
        BTreeSet::from(["web-1".to_owned()]),
        "the catalog was not emptied"
    );
    // The leader's view of its peers (addresses, reachability) is for peers too.
    let view = format!("{}/v1/raft/status", cluster.url(0));
    assert_eq!(http.get(&view).send().await.unwrap().status(), 403);
    // With the token, an op the HTTP API would refuse is refused here too.
    let token = "cluster-test-token-0123456789";
    let bad = serde_json::json!({
        "op": "register",
        "instance": {
            "service": "evil", "id": "evil-1", "address": "not an address!", "port": 0,
            "deregister_critical_after_ms": 60000, "create_index": 0, "modify_index": 0
        }
    });
    let expire = serde_json::json!({
        "op": "expire_lease", "service": "web", "id": "web-1", "create_index": 1
    });
    // A batch is checked item by item with the same rules: one bad item (or
    // an expiry smuggled into it) refuses the whole batch.
    let batch_bad = serde_json::json!({"op": "batch", "ops": [
        {"op": "heartbeat", "service": "web", "id": "web-1"}, bad.clone()
    ]});
    let batch_expire = serde_json::json!({"op": "batch", "ops": [expire.clone()]});
    for op in [bad, expire, batch_bad, batch_expire] {
        let resp = http
            .post(&write)
            .header("x-roster-cluster-token", token)
            .json(&op)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{op}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("forwarded write refused"), "{text}");
    }
    assert!(cluster.ids(0, "evil").await.is_empty());
    assert_eq!(cluster.ids(0, "web").await.len(), 1);
}

/// A batch sent to a follower travels to the leader as one write and is
/// applied on every node at one index; a batch with an item that would fail
/// is applied nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_through_a_follower_is_applied_on_every_node() {
    let c = Cluster::start("batch", 3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    let ops: Vec<BatchOp> = (0..100)
        .map(|i| BatchOp::register("web", &format!("b{i}"), instance(9000 + i)))
        .collect();
    let done = c.client(follower).batch(&ops).await.expect("applied");
    assert_eq!(done.results.len(), 100);
    let want: BTreeSet<String> = (0..100).map(|i| format!("b{i}")).collect();
    // The follower answered once it could read the batch itself.
    assert_eq!(c.ids(follower, "web").await, want);
    c.converge("web", &want).await;
    for i in c.running() {
        let snap = c.node(i).registry().snapshot();
        let web = &snap.services["web"];
        assert!(
            web.instances
                .values()
                .all(|inst| inst.modify_index == done.index),
            "node {i}: the batch is one index everywhere"
        );
    }
    // One item that would fail (an unknown instance's heartbeat): nothing
    // of the batch anywhere, and the answer names the item.
    let bad = vec![
        BatchOp::deregister("web", "b0"),
        BatchOp::register("web", "b100", instance(9100)),
        BatchOp::heartbeat("web", "ghost"),
    ];
    let err = c.client(follower).batch(&bad).await.unwrap_err();
    let items = err.batch_errors();
    assert_eq!(items.len(), 1, "{err}");
    assert_eq!((items[0].index, items[0].status), (2, 404));
    // A later write applied everywhere proves the refused batch came before it.
    c.client(follower)
        .register("db", "d1", &instance(5432))
        .await
        .unwrap();
    c.converge("db", &set(&["d1"])).await;
    c.converge("web", &want).await;
    c.shutdown().await;
}

/// Self-preservation on the leader of a cluster: a blip in which no heartbeat
/// arrives, shorter than max_hold, expires nothing on any node; half the
/// fleet leaving for good is expired on every node within ttl + max_hold, and
/// the guard lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn self_preservation_holds_a_blip_and_drains_a_departure() {
    let guard = SelfPreservation {
        window: Duration::from_secs(5),
        max_hold: Duration::from_secs(5),
        ..SelfPreservation::default()
    };
    let c = Cluster::start_guarded("guard", 3, 10_000, false, guard).await;
    let client = c.client_all();
    let ttl = RegisterRequest {
        ttl: Some(Duration::from_secs(2)),
        ..instance(80)
    };
    let ids: Vec<String> = (0..20).map(|i| format!("g{i:02}")).collect();
    for id in &ids {
        client.register("guard", id, &ttl).await.unwrap();
    }
    c.converge("guard", &ids.iter().cloned().collect()).await;
    // Heartbeats every 500 ms from the instances in `beating` (all of them,
    // none during the blip, then the first ten).
    let beating = std::sync::Arc::new(AtomicU64::new(20));
    let beats = {
        let (client, ids, beating) = (client.clone(), ids.clone(), beating.clone());
        tokio::spawn(async move {
            loop {
                let n = beating.load(Ordering::Relaxed) as usize;
                for id in &ids[..n] {
                    let _ = client.heartbeat("guard", id).await;
                }
                sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let healthy = |i: usize| {
        let client = c.client(i);
        async move {
            client
                .instances("guard", &InstanceQuery::default())
                .await
                .map(|l| {
                    l.instances
                        .into_iter()
                        .map(|i| i.id)
                        .collect::<BTreeSet<_>>()
                })
                .unwrap_or_default()
        }
    };
    let health = |i: usize| {
        let url = format!("{}/health", c.url(i));
        async move {
            reqwest::get(url)
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    sleep(Duration::from_secs(3)).await;
    let leader = c.leader().await;
    // A 4 s blip: every lease runs out (ttl 2 s) and is held on the leader.
    beating.store(0, Ordering::Relaxed);
    let mut seen_held = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let h = health(leader).await;
        seen_held = seen_held.max(h["self_preservation_status"]["held"].as_u64().unwrap_or(0));
        for i in 0..3 {
            assert_eq!(
                healthy(i).await.len(),
                20,
                "node {i} expired an instance during the blip"
            );
        }
        sleep(Duration::from_millis(200)).await;
    }
    assert!(seen_held >= 10, "the leader held the leases ({seen_held})");
    beating.store(20, Ordering::Relaxed);
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        for i in 0..3 {
            assert_eq!(
                healthy(i).await.len(),
                20,
                "node {i} expired an instance after the blip"
            );
        }
        sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(health(leader).await["self_preservation"], false);
    // Half of them leave for good: held at most max_hold past their deadline.
    beating.store(10, Ordering::Relaxed);
    let left = Instant::now();
    let want: BTreeSet<String> = ids[..10].iter().cloned().collect();
    for i in 0..3 {
        timeout(SOON, async {
            loop {
                let now = healthy(i).await;
                assert!(
                    now.is_superset(&want),
                    "node {i} lost a live instance: {now:?}"
                );
                if now == want {
                    return;
                }
                sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .expect("the departed expire");
    }
    // ttl + max_hold, and a second of slack for the heartbeat period and ticks.
    let took = left.elapsed();
    assert!(took <= Duration::from_secs(8), "took {took:?}");
    timeout(SOON, async {
        while health(leader).await["self_preservation"] != false {
            sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the guard lets go");
    beats.abort();
    c.shutdown().await;
}

/// The leader's probe results go through the log: an instance whose `tcp`
/// check passes turns passing on every node, not on the leader alone, and a
/// failing one turns critical everywhere (found reading health.rs: results
/// were applied to the leader's own catalog only, so followers kept every
/// probed instance critical and left it out of reads and DNS).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probe_results_reach_every_node() {
    let c = Cluster::start("probes", 3).await;
    let up = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = up.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        loop {
            let _ = up.accept().await;
        }
    });
    // A port nothing listens on.
    let down_addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let probed = |addr: SocketAddr| -> RegisterRequest {
        serde_json::from_value(serde_json::json!({
            "address": "127.0.0.1", "port": 80,
            "checks": [{"tcp": addr.to_string(), "interval": "1s", "timeout": "1s"}]
        }))
        .unwrap()
    };
    let client = c.client_all();
    client
        .register("probed", "up", &probed(up_addr))
        .await
        .unwrap();
    client
        .register("probed", "down", &probed(down_addr))
        .await
        .unwrap();
    for i in 0..3 {
        let node = c.client(i);
        timeout(SOON, async {
            loop {
                let healthy: BTreeSet<String> = node
                    .instances("probed", &InstanceQuery::default())
                    .await
                    .map(|s| s.instances.into_iter().map(|i| i.id).collect())
                    .unwrap_or_default();
                if healthy == BTreeSet::from(["up".to_owned()]) {
                    return;
                }
                sleep(Duration::from_millis(100)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("node {i} never saw the probed instance pass"));
    }
    accept.abort();
}

const TOKEN: &str = "cluster-test-token-0123456789";

/// A reqwest client that trusts `ca_pem` and presents `identity` (cert + key PEM).
fn peer_http(ca_pem: &str, identity: Option<(String, String)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_info(true)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// The certificate a node serves, DER.
async fn served_certificate(http: &reqwest::Client, url: &str) -> Vec<u8> {
    let resp = http.get(format!("{url}/ready")).send().await.unwrap();
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("a TLS connection")
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Peer TLS: the cluster forms, forwards, fails over and catches up with every
/// peer call over HTTPS; API clients need no certificate; the peer routes need
/// a peer certificate on top of the token, and plain HTTP gets nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_over_peer_tls_fails_over_and_catches_up() {
    let mut c = Cluster::start_tls("ptls-failover", 3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    // An API client without a certificate registers on a follower (forwarded
    // to the leader over peer TLS) and reads on every node.
    c.client(follower)
        .register("web", "w1", &instance(80))
        .await
        .unwrap();
    c.converge("web", &set(&["w1"])).await;

    // The leader goes away; a survivor takes writes.
    c.stop(leader).await;
    let survivor = c.running()[0];
    assert!(
        c.register_on_a_survivor("w2", 81).await,
        "a survivor takes writes after the leader stops"
    );
    c.converge("web", &set(&["w1", "w2"])).await;
    // The old leader comes back and catches up over TLS.
    c.restart(leader).await;
    c.wait_ready().await;
    c.converge("web", &set(&["w1", "w2"])).await;

    let ca = c.tls.as_ref().unwrap();
    let addr = c.slots[survivor].addr;
    // The right token but no client certificate: 403 on the peer routes.
    let no_cert = c.http();
    for (method, path) in [
        (reqwest::Method::GET, "node"),
        (reqwest::Method::POST, "append"),
        (reqwest::Method::POST, "vote"),
    ] {
        let resp = no_cert
            .request(method, format!("https://{addr}/v1/raft/{path}"))
            .header("x-roster-cluster-token", TOKEN)
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("peer certificate"), "{text}");
    }
    // A peer certificate and the token: let in (a check of the test itself).
    let peer = peer_http(&ca.pem, Some(ca.leaf()));
    let resp = peer
        .get(format!("https://{addr}/v1/raft/node"))
        .header("x-roster-cluster-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // A peer certificate without the token: still 403.
    let resp = peer
        .get(format!("https://{addr}/v1/raft/node"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Plain HTTP to the TLS port: no answer at all.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let sent = plain
        .get(format!("http://{addr}/v1/raft/node"))
        .header("x-roster-cluster-token", TOKEN)
        .send()
        .await;
    assert!(sent.is_err(), "plain HTTP answered: {sent:?}");
    c.shutdown().await;
}

/// A node whose certificate comes from another CA (even one that trusts the
/// cluster's CA) cannot join, and its append and vote requests are refused at
/// the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_a_certificate_from_another_ca_cannot_join() {
    let c = Cluster::start_tls("ptls-rogue", 3).await;
    let rogue_ca = PeerCa::new("ptls-rogue-other");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = temp_dir("ptls-rogue-new");
    let mut config = c.config(addr, &dir, 0);
    // Its own certificate from the other CA; it trusts the cluster's CA.
    let mut files = rogue_ca.files(addr);
    files.ca = c.tls.as_ref().unwrap().dir.join("ca.pem");
    config.cluster.as_mut().unwrap().peer_tls = Some(files);
    let rogue = TestRegistry::start_on(listener, config).await;
    sleep(Duration::from_secs(3)).await;
    let leader = c.leader().await;
    let status = c.client(leader).raft_status().await.unwrap();
    assert_eq!(status.members.len(), 3, "{status:?}");
    let rogue_id = rogue.server().cluster().unwrap().id();
    assert!(
        status.members.iter().all(|m| m.id != rogue_id),
        "{status:?}"
    );
    // (With --bootstrap-expect 0 and no peer it could reach, it made a
    // cluster of its own: one member, itself.)
    let own = rogue.server().cluster().unwrap().status();
    assert!(
        own.members.iter().all(|m| m.id == rogue_id),
        "the rogue node knows none of the cluster: {own:?}"
    );
    // Its requests die at the handshake: no HTTP status comes back.
    let http = peer_http(&c.tls.as_ref().unwrap().pem, Some(rogue_ca.leaf()));
    for path in ["append", "vote", "join"] {
        let sent = http
            .post(format!("{}/v1/raft/{path}", c.url(leader)))
            .header("x-roster-cluster-token", TOKEN)
            .json(&serde_json::json!({}))
            .send()
            .await;
        assert!(sent.is_err(), "{path}: {sent:?}");
    }
    rogue.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&rogue_ca.dir);
    c.shutdown().await;
}

/// New peer certificates from the same CA are picked up without a restart
/// (served and presented on new connections) and the cluster stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_peer_certificates_keeps_the_cluster_up() {
    let mut c = Cluster::start_tls("ptls-rotate", 3).await;
    c.client_all()
        .register("web", "r1", &instance(80))
        .await
        .unwrap();
    c.converge("web", &set(&["r1"])).await;
    let ca = c.tls.as_ref().unwrap();
    let mut renewed = Vec::new();
    for i in 0..3 {
        let files = ca.files(c.slots[i].addr);
        let before = served_certificate(&peer_http(&ca.pem, None), &c.url(i)).await;
        assert_eq!(before, der(&std::fs::read_to_string(&files.cert).unwrap()));
        sleep(Duration::from_millis(20)).await;
        renewed.push(der(&ca.renew(&files)));
    }
    for (i, new) in renewed.iter().enumerate() {
        timeout(SOON, async {
            // A fresh client each time: no pooled connection from before.
            let ca = c.tls.as_ref().unwrap();
            while &served_certificate(&peer_http(&ca.pem, None), &c.url(i)).await != new {
                sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("node {i} never served its new certificate"));
    }
    // Writes still replicate; a failover forces new peer connections, which
    // present the new certificates.
    c.client_all()
        .register("web", "r2", &instance(81))
        .await
        .unwrap();
    c.converge("web", &set(&["r1", "r2"])).await;
    let leader = c.leader().await;
    c.stop(leader).await;
    assert!(
        c.register_on_a_survivor("r3", 82).await,
        "the survivors elect a leader over the new certificates"
    );
    c.restart(leader).await;
    c.wait_ready().await;
    c.converge("web", &set(&["r1", "r2", "r3"])).await;
    c.shutdown().await;
}

/// Certificates that name the nodes by DNS name only: joining by that name
/// checks each resolved address's certificate against the name, and Raft
/// calls to the advertised names check it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_tls_checks_the_names_nodes_join_and_advertise_by() {
    let c = Cluster::start_tls_by_name("ptls-names", 3).await;
    c.client_all()
        .register("web", "n1", &instance(80))
        .await
        .unwrap();
    c.converge("web", &set(&["n1"])).await;
    let leader = c.leader().await;
    let status = c.client(leader).raft_status().await.unwrap();
    assert_eq!(status.members.len(), 3, "{status:?}");
    // The same node by IP: its certificate does not name 127.0.0.1.
    let ca = c.tls.as_ref().unwrap();
    let by_ip = peer_http(&ca.pem, None)
        .get(format!("https://{}/ready", c.slots[leader].addr))
        .send()
        .await;
    assert!(by_ip.is_err(), "{by_ip:?}");
    c.shutdown().await;
}

/// The API's certificate as the nodes' peer identity, next to an API client
/// CA: the cluster forms; an API client without a certificate gets 403 on
/// every request (the handshake lets it through because peers share the
/// port); a client certificate opens the API but not the peer routes; a peer
/// certificate opens both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_certificate_serves_peers_next_to_an_api_client_ca() {
    let mut ca = PeerCa::new("ptls-api");
    let clients = PeerCa::new("ptls-api-clients");
    let (cert, key) = clients.leaf();
    ca.api_clients = Some((Box::new(clients), format!("{cert}{key}")));
    let c = Cluster::start_inner(
        "ptls-api",
        3,
        10_000,
        false,
        SelfPreservation::default(),
        Some(ca),
    )
    .await;
    // The harness's clients present the client certificate.
    c.client_all()
        .register("web", "a1", &instance(80))
        .await
        .unwrap();
    c.converge("web", &set(&["a1"])).await;
    let ca = c.tls.as_ref().unwrap();
    let url = c.url(c.leader().await);
    let no_cert = peer_http(&ca.pem, None);
    let resp = no_cert.get(format!("{url}/ready")).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("client certificate"));
    // A client certificate: the API, not the peer routes.
    let client = c.http();
    assert_eq!(
        client
            .get(format!("{url}/v1/services"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let node = format!("{url}/v1/raft/node");
    let resp = client
        .get(&node)
        .header("x-roster-cluster-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // A peer certificate: both.
    let peer = peer_http(&ca.pem, Some(ca.leaf()));
    assert_eq!(
        peer.get(format!("{url}/v1/services"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = peer
        .get(&node)
        .header("x-roster-cluster-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_serves_xds_from_its_replica_across_a_failover() {
    use crate::xds::{EDS, Sotw, decode, endpoints};
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

    let mut c = Cluster::start("xds", 3).await;
    let leader = c.leader().await;
    let follower = (leader + 1) % 3;
    c.client(leader)
        .register("web", "w1", &instance(80))
        .await
        .unwrap();
    c.converge("web", &set(&["w1"])).await;
    let addr = c.node(follower).grpc_addr().expect("gRPC on");
    let mut s = Sotw::try_open_at(addr, None).await.expect("stream opens");
    s.ask(EDS, &["web"]).await;
    let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
    assert_eq!(
        endpoints(&cla[0]).len(),
        1,
        "the follower serves its replica"
    );
    s.ask(EDS, &["web"]).await;

    // The leader goes away; a write through the new leader reaches the stream
    // on the follower.
    c.stop(leader).await;
    assert!(
        c.register_on_a_survivor("w2", 81).await,
        "writes resume after the leader stops"
    );
    let pushed = timeout(SOON, async {
        loop {
            let cla: Vec<ClusterLoadAssignment> = decode(&s.next_of(EDS).await);
            s.ask(EDS, &["web"]).await;
            if endpoints(&cla[0]).len() == 2 {
                return;
            }
        }
    })
    .await;
    assert!(
        pushed.is_ok(),
        "the follower pushes the write made after the failover"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_only_joins_never_forms_a_cluster_of_its_own() {
    // Its cluster is unreachable at start (nothing listens at the address).
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = temp_dir("join-only");
    let config = Config {
        dns_addr: None,
        data_dir: Some(dir.clone()),
        cluster: Some(ClusterConfig {
            advertise: addr.to_string(),
            join: vec![dead.to_string()],
            bootstrap_expect: 0,
            token: "cluster-test-token-0123456789".into(),
            heartbeat: Duration::from_millis(100),
            ..ClusterConfig::default()
        }),
        ..Config::default()
    };
    let node = TestRegistry::start_on(listener, config).await;
    let raft = node.server().cluster().unwrap().raft().clone();
    // Several bootstrap rounds (200 ms, then doubling to 2 s) go by.
    sleep(Duration::from_secs(3)).await;
    assert!(
        !raft.is_initialized().await.unwrap(),
        "a node with --join alone formed a cluster by itself"
    );
    let ready = reqwest::get(format!("{}/ready", node.url())).await.unwrap();
    assert_eq!(ready.status(), 503, "not ready without a cluster");
    node.stop().await;
}
