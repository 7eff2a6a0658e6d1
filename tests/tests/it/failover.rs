//! A client given several registry addresses: calls, registrations, watches and
//! blocking queries move to the next address when the one in use is down,
//! times out or has no leader (503), and stay put on every other answer.
//!
//! The registries here are independent (no replication): which one answered is
//! visible in what the client reads, so the tests assert where calls went.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use roster_client::api::RegisterRequest;
use roster_client::{
    Discovery, Error, InstanceQuery, Registration, RegistrationStatus, RosterClient, ServiceState,
};
use roster_tests::TestRegistry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::timeout;

/// Upper bound on anything that should happen; it only turns a hang into a failure.
const GUARD: Duration = Duration::from_secs(30);

fn instance(port: u16) -> RegisterRequest {
    RegisterRequest {
        address: Some("10.0.0.1".into()),
        port,
        ..Default::default()
    }
}

fn list(urls: &[&str]) -> String {
    urls.join(",")
}

/// A base URL nothing listens on: a port that was free a moment ago.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn ids(state: &ServiceState) -> Vec<&str> {
    state.healthy.iter().map(|i| i.id.as_str()).collect()
}

async fn instance_ids(client: &RosterClient, service: &str) -> Vec<String> {
    let all = InstanceQuery {
        all: true,
        ..Default::default()
    };
    let found = client.instances(service, &all).await.unwrap();
    found.instances.into_iter().map(|i| i.id).collect()
}

/// A fake registry node that answers every request with `status` and a problem
/// document, counting the requests.
struct Fake {
    url: String,
    hits: Arc<AtomicUsize>,
}

impl Fake {
    async fn answering(status: StatusCode) -> Fake {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = format!(
                    r#"{{"type":"about:blank","title":"fake","status":{},"detail":"fake {}"}}"#,
                    status.as_u16(),
                    status.as_u16()
                );
                (
                    status,
                    [
                        ("content-type", "application/problem+json"),
                        ("retry-after", "1"),
                    ],
                    body,
                )
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fake { url, hits }
    }

    /// A node that accepts connections and reads requests but never answers.
    async fn hanging() -> Fake {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = axum::Router::new().fallback(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Fake { url, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_first_address_is_skipped_to_register_and_discover() {
    let reg = TestRegistry::start().await;
    let dead = dead_address().await;
    let client = RosterClient::new(&list(&[&dead, reg.url()])).unwrap();
    assert_eq!(client.addresses(), [dead.as_str(), reg.url()]);
    assert_eq!(client.base_url(), dead, "the first address until a call");

    let request = RegisterRequest {
        ttl: Some(Duration::from_secs(30)),
        ..instance(8080)
    };
    let registration = timeout(
        GUARD,
        Registration::start(client.clone(), "web", "web-1", request),
    )
    .await
    .unwrap()
    .expect("registers through the live address");
    assert_eq!(
        client.base_url(),
        reg.url(),
        "sticks to the address that answered"
    );

    let discovery = Discovery::new(client.clone());
    let web = discovery.service("web");
    timeout(GUARD, web.ready()).await.unwrap().unwrap();
    let found: Vec<String> = web
        .instances()
        .unwrap()
        .iter()
        .map(|i| i.id.clone())
        .collect();
    assert_eq!(found, ["web-1"]);

    // A new client (no shared state) gets there too, on its first call.
    let fresh = RosterClient::new(&list(&[&dead, reg.url()])).unwrap();
    assert_eq!(fresh.services().await.unwrap().services.len(), 1);

    timeout(GUARD, registration.shutdown())
        .await
        .unwrap()
        .unwrap();
    assert!(instance_ids(&fresh, "web").await.is_empty(), "deregistered");
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_watch_stream_moves_the_client_to_the_next_address() {
    let a = TestRegistry::start().await;
    let b = TestRegistry::start().await;
    RosterClient::new(a.url())
        .unwrap()
        .register("web", "on-a", &instance(1))
        .await
        .unwrap();
    RosterClient::new(b.url())
        .unwrap()
        .register("web", "on-b", &instance(2))
        .await
        .unwrap();
    let client = RosterClient::new(&list(&[a.url(), b.url()])).unwrap();

    let mut stream = client.watch(&["web"], None).await.unwrap();
    assert_eq!(stream.registry(), a.url());
    let first = timeout(GUARD, stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.event.instances[0].id, "on-a");

    a.stop().await;
    let end = timeout(GUARD, async {
        loop {
            match stream.next().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(!matches!(end, Ok(Some(_))));
    assert_eq!(client.base_url(), b.url(), "the break moved the client on");

    // Resuming with a token from the other registry gets B's full state.
    let token = stream.last_event_id().map(str::to_owned);
    let mut resumed = client.watch(&["web"], token.as_deref()).await.unwrap();
    assert_eq!(resumed.registry(), b.url());
    let event = timeout(GUARD, resumed.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.event.instances[0].id, "on-b");
    b.stop().await;
}

/// Waits on the change stream until `pred` holds, and checks on the way that
/// every state seen still served instances.
async fn until_always_serving(
    rx: &mut watch::Receiver<ServiceState>,
    what: &str,
    mut pred: impl FnMut(&ServiceState) -> bool,
) {
    timeout(
        GUARD,
        rx.wait_for(|s| {
            assert!(
                !s.healthy.is_empty() && s.index > 0,
                "the copy stopped serving while failing over: {s:?}"
            );
            pred(s)
        }),
    )
    .await
    .unwrap_or_else(|_| panic!("never: {what}"))
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_keeps_serving_and_follows_the_next_registry_when_one_stops() {
    let a = TestRegistry::start().await;
    let b = TestRegistry::start().await;
    let on_b = RosterClient::new(b.url()).unwrap();
    RosterClient::new(a.url())
        .unwrap()
        .register("web", "on-a", &instance(1))
        .await
        .unwrap();
    on_b.register("web", "on-b", &instance(2)).await.unwrap();

    let client = RosterClient::new(&list(&[a.url(), b.url()])).unwrap();
    // A and B are unrelated registries here; nodes of one cluster would hold
    // the same instances. What B does not know is held over for a short
    // settle period, then dropped.
    let discovery = Discovery::new(client.clone()).with_settle(Duration::from_millis(500));
    let web = discovery.service("web");
    timeout(GUARD, web.ready()).await.unwrap().unwrap();
    let mut changes = web.changes();
    until_always_serving(&mut changes, "A's set", |s| ids(s) == ["on-a"]).await;

    a.stop().await;
    until_always_serving(&mut changes, "B's set after the failover", |s| {
        s.connected && ids(s) == ["on-b"]
    })
    .await;
    assert_eq!(client.base_url(), b.url());

    // Changes on B keep coming through the new stream.
    on_b.register("web", "on-b-2", &instance(3)).await.unwrap();
    until_always_serving(&mut changes, "a registration on B", |s| {
        ids(s) == ["on-b", "on-b-2"]
    })
    .await;
    assert_eq!(web.instances().unwrap().len(), 2);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_loop_moves_to_the_next_registry() {
    let a = TestRegistry::start().await;
    let b = TestRegistry::start().await;
    RosterClient::new(b.url())
        .unwrap()
        .register("only-on-b", "x", &instance(1))
        .await
        .unwrap();
    let client = RosterClient::new(&list(&[a.url(), b.url()])).unwrap();
    let first = client.services_blocking(0, GUARD).await.unwrap();
    assert!(
        first.services.is_empty(),
        "A answered first, and A is empty"
    );

    let looping = client.clone();
    let follow = tokio::spawn(async move {
        let mut index = first.index;
        loop {
            // B is up the whole time: no call may fail, A's shutdown included.
            let list = looping.services_blocking(index, GUARD).await.unwrap();
            if list.services.iter().any(|s| s.name == "only-on-b") {
                return list;
            }
            index = list.index;
        }
    });
    a.stop().await;
    let seen = timeout(GUARD, follow).await.unwrap().unwrap();
    assert_eq!(seen.services.len(), 1);
    assert_eq!(client.base_url(), b.url());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_move_to_the_next_registry_which_gets_the_instance() {
    let a = TestRegistry::start().await;
    let b = TestRegistry::start().await;
    let client = RosterClient::new(&list(&[a.url(), b.url()])).unwrap();
    let request = RegisterRequest {
        ttl: Some(Duration::from_secs(1)),
        ..instance(8080)
    };
    let registration = Registration::start(client.clone(), "web", "web-1", request)
        .await
        .unwrap();
    let on_b = RosterClient::new(b.url()).unwrap();
    assert!(
        instance_ids(&on_b, "web").await.is_empty(),
        "registered on A only"
    );

    a.stop().await;
    // The next heartbeat cannot reach A, goes to B, gets 404 there and
    // registers again: B now has the instance.
    let mut index = 0;
    timeout(GUARD, async {
        loop {
            let q = InstanceQuery::default();
            let found = on_b
                .instances_blocking("web", &q, index, Duration::from_secs(5))
                .await
                .unwrap();
            if found.instances.iter().any(|i| i.id == "web-1") {
                return;
            }
            index = found.index;
        }
    })
    .await
    .expect("the instance reaches B");
    let mut status = registration.watch_status();
    timeout(
        GUARD,
        status.wait_for(|s| *s == RegistrationStatus::Registered),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(client.base_url(), b.url());
    timeout(GUARD, registration.shutdown())
        .await
        .unwrap()
        .unwrap();
    assert!(instance_ids(&on_b, "web").await.is_empty());
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_node_is_skipped_and_the_client_sticks_to_the_next() {
    let reg = TestRegistry::start().await;
    let no_leader = Fake::answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let client = RosterClient::new(&list(&[&no_leader.url, reg.url()])).unwrap();

    // A write: its body goes again, whole, to the next address.
    client
        .register("web", "web-1", &instance(8080))
        .await
        .expect("registered on the live registry");
    assert_eq!(no_leader.hits(), 1);
    assert_eq!(client.base_url(), reg.url());
    assert_eq!(instance_ids(&client, "web").await, ["web-1"]);
    client.heartbeat("web", "web-1").await.unwrap();
    assert_eq!(
        no_leader.hits(),
        1,
        "later calls start at the address that worked"
    );

    // 502 and 504 (a proxy in front of a dead node) fail over the same way.
    for status in [StatusCode::BAD_GATEWAY, StatusCode::GATEWAY_TIMEOUT] {
        let gateway = Fake::answering(status).await;
        let client = RosterClient::new(&list(&[&gateway.url, reg.url()])).unwrap();
        assert_eq!(client.services().await.unwrap().services.len(), 1);
        assert_eq!(gateway.hits(), 1, "{status}");
    }
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4xx_or_500_answer_is_returned_without_trying_the_next_address() {
    let reg = TestRegistry::start().await;
    let live = RosterClient::new(reg.url()).unwrap();

    let rejecting = Fake::answering(StatusCode::BAD_REQUEST).await;
    let client = RosterClient::new(&list(&[&rejecting.url, reg.url()])).unwrap();
    let err = client
        .register("web", "web-1", &instance(8080))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Invalid(p) if p.status == 400),
        "{err}"
    );
    assert_eq!(rejecting.hits(), 1);
    assert_eq!(
        client.base_url(),
        rejecting.url,
        "an answer is not a failure"
    );
    assert!(
        instance_ids(&live, "web").await.is_empty(),
        "the write never reached the next address"
    );

    let broken = Fake::answering(StatusCode::INTERNAL_SERVER_ERROR).await;
    let client = RosterClient::new(&list(&[&broken.url, reg.url()])).unwrap();
    let err = client.services().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(u) if u.status() == Some(500)),
        "{err}"
    );
    assert_eq!(broken.hits(), 1);
    assert_eq!(client.base_url(), broken.url);

    let missing = Fake::answering(StatusCode::NOT_FOUND).await;
    let client = RosterClient::new(&list(&[&missing.url, reg.url()])).unwrap();
    assert!(matches!(
        client.heartbeat("web", "web-1").await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(client.base_url(), missing.url);
    reg.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_every_address_fails_the_last_error_is_returned_after_one_try_each() {
    let first = Fake::answering(StatusCode::SERVICE_UNAVAILABLE).await;
    let second = Fake::answering(StatusCode::BAD_GATEWAY).await;
    let client = RosterClient::new(&list(&[&first.url, &second.url])).unwrap();
    let err = client.services().await.unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(u) if u.status() == Some(502)),
        "{err}"
    );
    assert_eq!((first.hits(), second.hits()), (1, 1));
    // Nothing worked, so the next call starts where this one did.
    assert_eq!(client.base_url(), first.url);
    assert!(client.watch(&["web"], None).await.is_err());
    assert_eq!((first.hits(), second.hits()), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_times_out_is_skipped() {
    let reg = TestRegistry::start().await;
    let hanging = Fake::hanging().await;
    let client = RosterClient::with_timeout(
        &list(&[&hanging.url, reg.url()]),
        Duration::from_millis(500),
    )
    .unwrap();
    let services = timeout(GUARD, client.services()).await.unwrap().unwrap();
    assert!(services.services.is_empty());
    assert_eq!(hanging.hits(), 1);
    assert_eq!(client.base_url(), reg.url());
    reg.stop().await;
}
