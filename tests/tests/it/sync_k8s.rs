//! `roster sync-k8s` against a fake Kubernetes API (axum, list + watch with
//! resourceVersions and 410 Gone) and a real in-process registry.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use roster_cli::k8s::{self, NamingMode, SyncSettings};
use roster_client::api::{Health, Instance, RegisterRequest};
use roster_client::{InstanceQuery, RosterClient};
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

// ---------------------------------------------------------------- fake API

#[derive(Default)]
struct FakeState {
    rv: u64,
    /// Oldest resourceVersion a watch may resume from; older ones get 410.
    compacted: u64,
    /// (kind, NAMESPACE/NAME) -> object.
    objects: BTreeMap<(String, String), Value>,
    /// Every change: (rv, kind, event type, object).
    history: Vec<(u64, String, &'static str, Value)>,
    watches: Vec<(String, mpsc::UnboundedSender<String>)>,
    /// "KIND list" or "KIND watch rv=N" per request.
    requests: Vec<String>,
    /// The raw path and query of every request.
    uris: Vec<String>,
}

#[derive(Clone, Default)]
struct FakeKube(Arc<Mutex<FakeState>>);

fn kind_of(obj: &Value) -> &'static str {
    match obj["kind"].as_str() {
        Some("Service") => "services",
        Some("EndpointSlice") => "endpointslices",
        Some("Namespace") => "namespaces",
        other => panic!("unexpected kind {other:?}"),
    }
}

fn key_of(obj: &Value) -> String {
    format!(
        "{}/{}",
        obj["metadata"]["namespace"].as_str().unwrap_or(""),
        obj["metadata"]["name"].as_str().unwrap()
    )
}

impl FakeKube {
    async fn start() -> (FakeKube, kube::Client) {
        let fake = FakeKube::default();
        let app = axum::Router::new()
            .route("/api/v1/{kind}", axum::routing::get(serve))
            .route(
                "/apis/discovery.k8s.io/v1/{kind}",
                axum::routing::get(serve),
            )
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let config = kube::Config::new(url.parse().unwrap());
        (fake, k8s::client_from_config(config).unwrap())
    }

    /// Adds or replaces an object, telling the open watches unless `silent`
    /// (a change the registrar can only learn of by listing again).
    fn put_with(&self, obj: impl serde::Serialize, silent: bool) {
        let mut obj = serde_json::to_value(obj).unwrap();
        let mut s = self.0.lock().unwrap();
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        let kind = kind_of(&obj).to_owned();
        let ty = if s
            .objects
            .insert((kind.clone(), key_of(&obj)), obj.clone())
            .is_some()
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        if !silent {
            s.publish(kind, ty, obj);
        }
    }

    fn put(&self, obj: impl serde::Serialize) {
        self.put_with(obj, false);
    }

    fn delete_with(&self, kind: &str, key: &str, silent: bool) {
        let mut s = self.0.lock().unwrap();
        s.rv += 1;
        let mut obj = s
            .objects
            .remove(&(kind.to_owned(), key.to_owned()))
            .expect("object exists");
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        if !silent {
            s.publish(kind.to_owned(), "DELETED", obj);
        }
    }

    fn delete(&self, kind: &str, key: &str) {
        self.delete_with(kind, key, false);
    }

    /// Ends every open watch with an ERROR event, code 410, and makes every
    /// resourceVersion seen so far too old: the watchers must list again.
    fn expire_watches(&self) {
        let mut s = self.0.lock().unwrap();
        s.compacted = s.rv + 1;
        for (_, tx) in s.watches.drain(..) {
            let _ = tx.send(gone_line());
        }
    }

    /// Sends a BOOKMARK at the current resourceVersion on every open watch.
    fn bookmark(&self) -> u64 {
        let s = self.0.lock().unwrap();
        for (kind, tx) in &s.watches {
            let (k, api) = match kind.as_str() {
                "services" => ("Service", "v1"),
                "endpointslices" => ("EndpointSlice", "discovery.k8s.io/v1"),
                _ => ("Namespace", "v1"),
            };
            let line = json!({"type": "BOOKMARK", "object": {
                "kind": k, "apiVersion": api,
                "metadata": {"resourceVersion": s.rv.to_string()}
            }})
            .to_string()
                + "\n";
            let _ = tx.send(line);
        }
        s.rv
    }

    /// Ends every open watch normally (as an API server does after its
    /// timeout): the watchers watch again from the last version they saw.
    fn close_watches(&self) {
        self.0.lock().unwrap().watches.clear();
    }

    fn uris(&self) -> Vec<String> {
        self.0.lock().unwrap().uris.clone()
    }

    fn count(&self, what: &str) -> usize {
        let s = self.0.lock().unwrap();
        s.requests.iter().filter(|r| r.starts_with(what)).count()
    }
}

impl FakeState {
    fn publish(&mut self, kind: String, ty: &'static str, obj: Value) {
        let line = json!({"type": ty, "object": obj}).to_string() + "\n";
        self.watches
            .retain(|(k, tx)| *k != kind || tx.send(line.clone()).is_ok());
        self.history.push((self.rv, kind, ty, obj));
    }
}

fn gone_line() -> String {
    json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410
    }})
    .to_string()
        + "\n"
}

async fn serve(
    State(fake): State<FakeKube>,
    uri: axum::http::Uri,
    Path(kind): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut s = fake.0.lock().unwrap();
    s.uris.push(uri.to_string());
    if q.get("watch").map(String::as_str) != Some("true") {
        s.requests.push(format!("{kind} list"));
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|((k, _), _)| *k == kind)
            .map(|(_, o)| o.clone())
            .collect();
        let list_kind = match kind.as_str() {
            "services" => "ServiceList",
            "endpointslices" => "EndpointSliceList",
            _ => "NamespaceList",
        };
        return axum::Json(json!({
            "kind": list_kind, "apiVersion": "v1",
            "metadata": {"resourceVersion": s.rv.to_string()},
            "items": items,
        }))
        .into_response();
    }
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    s.requests.push(format!("{kind} watch rv={from}"));
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    if from < s.compacted {
        let _ = tx.send(gone_line());
    } else {
        for (rv, k, ty, obj) in &s.history {
            if *rv > from && *k == kind {
                let _ = tx.send(json!({"type": ty, "object": obj}).to_string() + "\n");
            }
        }
        s.watches.push((kind, tx));
    }
    let stream = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
        Ok::<String, Infallible>,
    );
    axum::body::Body::from_stream(stream).into_response()
}

// ---------------------------------------------------------------- objects

fn meta(ns: Option<&str>, name: &str, ann: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        namespace: ns.map(str::to_owned),
        name: Some(name.to_owned()),
        annotations: (!ann.is_empty()).then(|| {
            ann.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        }),
        ..ObjectMeta::default()
    }
}

fn service(ns: &str, name: &str, ann: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(Some(ns), name, ann),
        ..Service::default()
    }
}

fn namespace(name: &str, ann: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: meta(None, name, ann),
        ..Namespace::default()
    }
}

/// A slice of `svc` with one endpoint per (ip, pod, ready), port 8080.
fn slice(ns: &str, svc: &str, eps: &[(&str, &str, bool)]) -> EndpointSlice {
    let mut m = meta(Some(ns), &format!("{svc}-slice"), &[]);
    m.labels = Some([("kubernetes.io/service-name".to_owned(), svc.to_owned())].into());
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: Some(
            eps.iter()
                .map(|(ip, pod, ready)| Endpoint {
                    addresses: vec![(*ip).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        ..EndpointConditions::default()
                    }),
                    node_name: Some("node-a".into()),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some((*pod).to_owned()),
                        namespace: Some(ns.to_owned()),
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
    }
}

// ---------------------------------------------------------------- harness

async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up waiting for {what}");
}

/// All instances of `service` (empty when the service is unknown).
async fn all(client: &RosterClient, service: &str) -> Vec<Instance> {
    let q = InstanceQuery {
        all: true,
        ..InstanceQuery::default()
    };
    client
        .instances(service, &q)
        .await
        .map(|l| l.instances)
        .unwrap_or_default()
}

async fn ids(client: &RosterClient, service: &str) -> Vec<String> {
    all(client, service)
        .await
        .into_iter()
        .map(|i| i.id)
        .collect()
}

/// Waits until `service` has exactly the instance ids `want`.
async fn wait_ids(client: &RosterClient, service: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| (*s).to_owned()).collect();
    until(&format!("{service} to hold {want:?}"), || {
        let want = want.clone();
        async move { (ids(client, service).await == want).then_some(()) }
    })
    .await;
}

struct Harness {
    fake: FakeKube,
    client: RosterClient,
    registry: TestRegistry,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), k8s::K8sError>>,
}

impl Harness {
    /// A fake cluster prepared by `setup`, a registry, and the registrar.
    async fn start(settings: SyncSettings, setup: impl FnOnce(&FakeKube)) -> Harness {
        let (fake, kube) = FakeKube::start().await;
        let registry = TestRegistry::start_with(Config {
            dns_addr: None,
            ..Config::default()
        })
        .await;
        let client = RosterClient::new(registry.url()).unwrap();
        setup(&fake);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(k8s::run(settings, kube, client.clone(), cancel.clone()));
        Harness {
            fake,
            client,
            registry,
            cancel,
            task,
        }
    }

    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the registrar stops when cancelled")
            .unwrap();
        result.expect("the registrar stops cleanly");
    }
}

/// A bookmark moves the watchers' resourceVersion without an event: when the
/// watch ends they resume from it, not from the last object they saw, and a
/// change made after it is applied as usual.
#[tokio::test]
async fn bookmarks_move_the_resume_point() {
    let h = Harness::start(settings(), standard_cluster).await;
    wait_ids(
        &h.client,
        "web",
        &["k8s-shop-web-web-1-8080", "k8s-shop-web-web-2-8080"],
    )
    .await;
    until("the services watch to be open", || async {
        (h.fake.count("services watch") > 0).then_some(())
    })
    .await;
    // Versions move on in a kind the services watch does not see.
    h.fake.put(namespace("other", &[]));
    h.fake.put(namespace("third", &[]));
    // The bookmark is queued before the end of each watch stream, so the
    // watchers read it before they see the stream end.
    let rv = h.fake.bookmark();
    h.fake.close_watches();
    until("the services watch to resume from the bookmark", || async {
        (h.fake.count(&format!("services watch rv={rv}")) > 0).then_some(())
    })
    .await;
    h.fake.put(slice(
        "shop",
        "web",
        &[("10.0.0.1", "web-1", true), ("10.0.0.3", "web-3", true)],
    ));
    wait_ids(
        &h.client,
        "web",
        &["k8s-shop-web-web-1-8080", "k8s-shop-web-web-3-8080"],
    )
    .await;
    h.stop().await;
}

fn settings() -> SyncSettings {
    SyncSettings {
        // Long, so that only watch events can explain a prompt change.
        resync: Duration::from_secs(3600),
        ..SyncSettings::default()
    }
}

fn standard_cluster(fake: &FakeKube) {
    fake.put(namespace("shop", &[]));
    fake.put(service("shop", "web", &[("roster.io/tags", "v1,blue")]));
    fake.put(slice(
        "shop",
        "web",
        &[("10.0.0.1", "web-1", true), ("10.0.0.2", "web-2", true)],
    ));
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn endpoints_are_registered_and_follow_changes() {
    let h = Harness::start(settings(), standard_cluster).await;
    wait_ids(
        &h.client,
        "web",
        &["k8s-shop-web-web-1-8080", "k8s-shop-web-web-2-8080"],
    )
    .await;
    let inst = &all(&h.client, "web").await[0];
    assert_eq!(inst.address, "10.0.0.1");
    assert_eq!(inst.port, 8080);
    assert_eq!(inst.tags, ["blue", "v1"]);
    assert_eq!(inst.health, Health::Passing);
    assert_eq!(inst.ttl, None, "registered without a lease");
    assert_eq!(inst.meta["roster-managed-by"], "sync-k8s");
    assert_eq!(inst.meta["k8s-namespace"], "shop");
    assert_eq!(inst.meta["k8s-pod"], "web-1");
    assert_eq!(inst.meta["k8s-node"], "node-a");
    // The registrar writes several instances in one batch request.
    let batches = h
        .registry
        .metric(r#"roster_http_requests_total{method="POST",route="/v1/batch",status="200"}"#)
        .await;
    assert!(batches.is_some_and(|n| n >= 1.0), "no batch: {batches:?}");

    // A third endpoint, and web-2 turning not ready.
    h.fake.put(slice(
        "shop",
        "web",
        &[
            ("10.0.0.1", "web-1", true),
            ("10.0.0.2", "web-2", false),
            ("10.0.0.3", "web-3", true),
        ],
    ));
    let web2 = until("web-2 to turn critical", || async {
        let list = all(&h.client, "web").await;
        (list.len() == 3)
            .then(|| list.into_iter().find(|i| i.id == "k8s-shop-web-web-2-8080"))
            .flatten()
            .filter(|i| i.health == Health::Critical)
    })
    .await;
    assert_eq!(web2.meta["k8s-ready"], "false");
    let healthy = h
        .client
        .instances("web", &InstanceQuery::default())
        .await
        .unwrap();
    let healthy: Vec<&str> = healthy.instances.iter().map(|i| i.id.as_str()).collect();
    assert_eq!(
        healthy,
        ["k8s-shop-web-web-1-8080", "k8s-shop-web-web-3-8080"]
    );

    // web-1 goes away; web-2 is ready again.
    h.fake.put(slice(
        "shop",
        "web",
        &[("10.0.0.2", "web-2", true), ("10.0.0.3", "web-3", true)],
    ));
    until("web-2 passing and web-1 gone", || async {
        let list = all(&h.client, "web").await;
        (list.len() == 2 && list.iter().all(|i| i.health == Health::Passing)).then_some(())
    })
    .await;
    assert_eq!(
        ids(&h.client, "web").await,
        ["k8s-shop-web-web-2-8080", "k8s-shop-web-web-3-8080"]
    );
    h.stop().await;
}

#[tokio::test]
async fn not_ready_endpoints_can_be_left_out() {
    let s = SyncSettings {
        include_not_ready: false,
        ..settings()
    };
    let h = Harness::start(s, |fake| {
        fake.put(namespace("shop", &[]));
        fake.put(service("shop", "web", &[]));
        fake.put(slice(
            "shop",
            "web",
            &[("10.0.0.1", "web-1", true), ("10.0.0.2", "web-2", false)],
        ));
    })
    .await;
    wait_ids(&h.client, "web", &["k8s-shop-web-web-1-8080"]).await;
    h.fake.put(slice(
        "shop",
        "web",
        &[("10.0.0.1", "web-1", false), ("10.0.0.2", "web-2", true)],
    ));
    wait_ids(&h.client, "web", &["k8s-shop-web-web-2-8080"]).await;
    h.stop().await;
}

#[tokio::test]
async fn opt_in_and_out_by_service_and_namespace() {
    let s = SyncSettings {
        default_sync: false,
        ..settings()
    };
    let h = Harness::start(s, |fake| {
        fake.put(namespace("plain", &[]));
        fake.put(namespace("opted", &[("roster.io/sync", "true")]));
        // plain: only the annotated Service is synced.
        fake.put(service("plain", "in", &[("roster.io/sync", "true")]));
        fake.put(slice("plain", "in", &[("10.1.0.1", "in-1", true)]));
        fake.put(service("plain", "quiet", &[]));
        fake.put(slice("plain", "quiet", &[("10.1.0.2", "quiet-1", true)]));
        // opted: everything but the Service that opts out.
        fake.put(service("opted", "api", &[]));
        fake.put(slice("opted", "api", &[("10.2.0.1", "api-1", true)]));
        fake.put(service("opted", "out", &[("roster.io/sync", "false")]));
        fake.put(slice("opted", "out", &[("10.2.0.2", "out-1", true)]));
    })
    .await;
    wait_ids(&h.client, "in", &["k8s-plain-in-in-1-8080"]).await;
    wait_ids(&h.client, "api", &["k8s-opted-api-api-1-8080"]).await;
    // One full reconcile registered all of these at once: the others are not coming.
    let services: Vec<String> = h
        .client
        .services()
        .await
        .unwrap()
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(services, ["api", "in"]);

    // The namespace opts out: its Services go; the opted-in Service stays.
    h.fake
        .put(namespace("opted", &[("roster.io/sync", "false")]));
    wait_ids(&h.client, "api", &[]).await;
    assert_eq!(ids(&h.client, "in").await, ["k8s-plain-in-in-1-8080"]);
    // A Service opts in by annotation.
    h.fake
        .put(service("plain", "quiet", &[("roster.io/sync", "yes")]));
    wait_ids(&h.client, "quiet", &["k8s-plain-quiet-quiet-1-8080"]).await;
    // And out again.
    h.fake
        .put(service("plain", "in", &[("roster.io/sync", "false")]));
    wait_ids(&h.client, "in", &[]).await;
    h.stop().await;
}

#[tokio::test]
async fn deleted_services_are_deregistered_promptly_and_foreign_instances_kept() {
    let h = Harness::start(settings(), standard_cluster).await;
    // Registered by someone else, in the same roster service.
    let req = RegisterRequest {
        address: Some("192.168.1.1".into()),
        port: 80,
        meta: [("k8s-namespace".to_owned(), "shop".to_owned())].into(),
        ..RegisterRequest::default()
    };
    h.client.register("web", "manual-1", &req).await.unwrap();
    wait_ids(
        &h.client,
        "web",
        &[
            "k8s-shop-web-web-1-8080",
            "k8s-shop-web-web-2-8080",
            "manual-1",
        ],
    )
    .await;
    // The resync is an hour away (settings()), so only the watch event can
    // explain the removal within the bounded wait.
    h.fake.delete("services", "shop/web");
    wait_ids(&h.client, "web", &["manual-1"]).await;
    h.stop().await;
}

#[tokio::test]
async fn the_initial_reconcile_removes_stale_owned_instances_only() {
    let registry = TestRegistry::start_with(Config {
        dns_addr: None,
        ..Config::default()
    })
    .await;
    let client = RosterClient::new(registry.url()).unwrap();
    let owned = |addr: &str| RegisterRequest {
        address: Some(addr.into()),
        port: 8080,
        meta: [
            ("roster-managed-by".to_owned(), "sync-k8s".to_owned()),
            ("k8s-service".to_owned(), "old/gone".to_owned()),
        ]
        .into(),
        ..RegisterRequest::default()
    };
    // Left behind by an earlier run: a Service deleted while it was down,
    // and a stale copy of a live endpoint with the wrong address.
    client
        .register("gone", "k8s-old-gone-p-8080", &owned("10.9.9.9"))
        .await
        .unwrap();
    client
        .register("web", "k8s-shop-web-web-1-8080", &owned("10.9.9.8"))
        .await
        .unwrap();
    let foreign = RegisterRequest {
        address: Some("10.9.9.7".into()),
        port: 1,
        ..RegisterRequest::default()
    };
    client
        .register("gone", "someone-elses", &foreign)
        .await
        .unwrap();

    let (fake, kube) = FakeKube::start().await;
    standard_cluster(&fake);
    let cancel = CancellationToken::new();
    let task = tokio::spawn(k8s::run(settings(), kube, client.clone(), cancel.clone()));
    wait_ids(&client, "gone", &["someone-elses"]).await;
    wait_ids(
        &client,
        "web",
        &["k8s-shop-web-web-1-8080", "k8s-shop-web-web-2-8080"],
    )
    .await;
    let fixed = client
        .instance("web", "k8s-shop-web-web-1-8080")
        .await
        .unwrap();
    assert_eq!(fixed.address, "10.0.0.1", "the stale copy was replaced");
    cancel.cancel();
    task.await.unwrap().expect("the registrar stops cleanly");
    // Stopping leaves the instances in place: a registrar restart must not
    // blank the catalog.
    assert_eq!(ids(&client, "web").await.len(), 2);
}

#[tokio::test]
async fn a_410_gone_makes_the_watchers_list_again() {
    let h = Harness::start(settings(), |fake| {
        standard_cluster(fake);
        fake.put(service("shop", "cart", &[]));
        fake.put(slice("shop", "cart", &[("10.0.1.1", "cart-1", true)]));
    })
    .await;
    wait_ids(&h.client, "cart", &["k8s-shop-cart-cart-1-8080"]).await;
    wait_ids(
        &h.client,
        "web",
        &["k8s-shop-web-web-1-8080", "k8s-shop-web-web-2-8080"],
    )
    .await;
    until("the watches to be open", || async {
        (h.fake.count("services watch") > 0
            && h.fake.count("endpointslices watch") > 0
            && h.fake.count("namespaces watch") > 0)
            .then_some(())
    })
    .await;
    // The requests kube-runtime's watcher makes: a paged list, then a watch
    // from the list's resourceVersion.
    for uri in h.fake.uris() {
        let watch = uri.contains("watch=true");
        assert!(uri.contains("limit=500") || watch, "{uri}");
        assert!(
            !watch
                || (uri.contains("resourceVersion=") && uri.contains("allowWatchBookmarks=true")),
            "{uri}"
        );
    }
    let lists_before = h.fake.count("services list");
    // Changes the watches never report: only a relist can reveal them.
    h.fake.delete_with("services", "shop/cart", true);
    h.fake.put_with(service("shop", "new", &[]), true);
    h.fake
        .put_with(slice("shop", "new", &[("10.0.2.1", "new-1", true)]), true);
    h.fake.expire_watches();
    wait_ids(&h.client, "cart", &[]).await;
    wait_ids(&h.client, "new", &["k8s-shop-new-new-1-8080"]).await;
    assert!(h.fake.count("services list") > lists_before, "listed again");
    assert!(
        h.fake.count("services watch rv=") >= 2,
        "watching again after the relist"
    );
    assert_eq!(ids(&h.client, "web").await.len(), 2, "untouched");
    // Watching resumes after the relist: a plain delete is seen again.
    h.fake.delete("services", "shop/new");
    wait_ids(&h.client, "new", &[]).await;
    h.stop().await;
}

#[tokio::test]
async fn naming_modes_and_the_name_annotation() {
    let s = SyncSettings {
        naming: NamingMode::NameNamespace,
        ..settings()
    };
    let h = Harness::start(s, |fake| {
        standard_cluster(fake);
        fake.put(service(
            "shop",
            "cart",
            &[("roster.io/service-name", "basket")],
        ));
        fake.put(slice("shop", "cart", &[("10.0.1.1", "cart-1", true)]));
    })
    .await;
    wait_ids(
        &h.client,
        "web-shop",
        &["k8s-shop-web-web-1-8080", "k8s-shop-web-web-2-8080"],
    )
    .await;
    wait_ids(&h.client, "basket", &["k8s-shop-cart-cart-1-8080"]).await;
    // Renaming moves the instances.
    h.fake.put(service(
        "shop",
        "cart",
        &[("roster.io/service-name", "trolley")],
    ));
    wait_ids(&h.client, "trolley", &["k8s-shop-cart-cart-1-8080"]).await;
    wait_ids(&h.client, "basket", &[]).await;
    h.stop().await;
}

/// Runs the registrar with `resync`, restarts the registry empty on the same
/// address, and waits until the registrar has filled it again.
async fn restart_and_refill(resync: Duration) {
    let (fake, kube) = FakeKube::start().await;
    standard_cluster(&fake);
    let first = TestRegistry::start_with(Config {
        dns_addr: None,
        ..Config::default()
    })
    .await;
    let addr: std::net::SocketAddr = first.url().trim_start_matches("http://").parse().unwrap();
    let client = RosterClient::new(first.url()).unwrap();
    let s = SyncSettings {
        resync,
        ..settings()
    };
    let cancel = CancellationToken::new();
    let task = tokio::spawn(k8s::run(s, kube, client.clone(), cancel.clone()));
    let want = ["k8s-shop-web-web-1-8080", "k8s-shop-web-web-2-8080"];
    wait_ids(&client, "web", &want).await;
    // The registry restarts without persistence and forgets everything.
    first.stop().await;
    let _second = TestRegistry::start_at(
        addr,
        Config {
            dns_addr: None,
            ..Config::default()
        },
    )
    .await;
    wait_ids(&client, "web", &want).await;
    cancel.cancel();
    task.await.unwrap().expect("the registrar stops cleanly");
}

#[tokio::test]
async fn a_restarted_registry_is_filled_again_by_the_periodic_reconcile() {
    restart_and_refill(Duration::from_millis(300)).await;
}

/// The periodic reconcile is an hour away: only noticing the restart can
/// refill the registry within `wait_ids`' bound.
#[tokio::test]
async fn a_restarted_registry_is_filled_again_at_once_not_at_the_next_resync() {
    restart_and_refill(Duration::from_secs(3600)).await;
}
