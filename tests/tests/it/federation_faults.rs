//! Federation against hostile or unlucky peers: missing and wrong federation
//! tokens, forwarding loops, `?dc=` aimed at arbitrary hosts, a remote
//! datacenter that is dead, one that never answers, one that answers
//! garbage, and ACLs on crossing datacenters.

use std::time::Duration;

use roster_client::RosterClient;
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::federation::{TOKEN, federation, get, instance, listener, start_dc, wait_state};

#[tokio::test]
async fn forwarded_calls_need_the_federation_token() {
    let (l2, a2) = listener().await;
    let dc2 = start_dc(l2, "dc2", Some(federation(&[], ""))).await;
    let http = reqwest::Client::new();
    let ask = |headers: Vec<(&'static str, &'static str)>, path: &str| {
        let mut req = http.get(format!("{}{path}", dc2.url()));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let path = "/v1/services/web";
    assert_eq!(ask(vec![("x-roster-forwarded-dc", "dc1")], path).await, 401);
    assert_eq!(
        ask(
            vec![
                ("x-roster-forwarded-dc", "dc1"),
                ("x-roster-federation-token", "not-the-right-token")
            ],
            path
        )
        .await,
        403
    );
    assert_eq!(
        ask(vec![("x-roster-federation-token", TOKEN)], path).await,
        200
    );
    assert_eq!(ask(vec![], "/v1/federation/ping").await, 401);
    assert_eq!(
        ask(
            vec![("x-roster-federation-token", TOKEN)],
            "/v1/federation/ping"
        )
        .await,
        200
    );

    // A datacenter with the wrong token: its probes and calls are refused.
    let (l1, _) = listener().await;
    let mut wrong = federation(&[("dc2", a2)], "");
    wrong.token = "a-different-federation-token".into();
    let dc1 = start_dc(l1, "dc1", Some(wrong)).await;
    let list = wait_state(&dc1, "dc2", "down").await;
    let error = list[1]["servers"][0]["error"].as_str().unwrap().to_owned();
    assert!(error.contains("403"), "{error}");
    // Refused by dc2 (403, passed on) or, once the failed probes opened the
    // circuit, at once by dc1 (503).
    let (status, _, _) = get(&format!("{}/v1/services/web?dc=dc2", dc1.url())).await;
    assert!(status == 403 || status == 503, "{status}");

    // A node without a federation token takes no forwarded calls at all.
    let lone = TestRegistry::start_with(Config {
        grpc_addr: None,
        dns_addr: None,
        ..Config::default()
    })
    .await;
    let status = http
        .get(format!("{}/v1/services/web", lone.url()))
        .header("x-roster-federation-token", TOKEN)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 403);
}

#[tokio::test]
async fn forwarded_calls_are_never_forwarded_again() {
    // dc1 believes dc3's server is "dc2": dc3 refuses to pass the call on.
    let (l1, _) = listener().await;
    let (l3, a3) = listener().await;
    let dc3 = start_dc(l3, "dc3", Some(federation(&[("dc2", a3)], ""))).await;
    let dc1 = start_dc(l1, "dc1", Some(federation(&[("dc2", a3)], ""))).await;
    let (status, _, problem) = get(&format!("{}/v1/services/web?dc=dc2", dc1.url())).await;
    assert_eq!(status, 508, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("never forwarded again")
    );
    // The prober tells the operator what is wrong.
    let list = wait_state(&dc1, "dc2", "down").await;
    let error = list[1]["servers"][0]["error"].as_str().unwrap().to_owned();
    assert!(error.contains("answers as datacenter \"dc3\""), "{error}");
    // A forwarded call naming another datacenter, sent by hand.
    let status = reqwest::Client::new()
        .get(format!("{}/v1/services/web?dc=dc1", dc3.url()))
        .header("x-roster-federation-token", TOKEN)
        .header("x-roster-forwarded-dc", "dc1")
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 508);
}

#[tokio::test]
async fn dc_cannot_name_arbitrary_hosts() {
    let (l1, _) = listener().await;
    let (_, closed) = listener().await;
    let dc1 = start_dc(l1, "dc1", Some(federation(&[("dc2", closed)], ""))).await;
    for dc in [
        "127.0.0.1:80",
        "evil.example.com",
        "..",
        "dc2%00",
        "169.254.169.254",
    ] {
        let (status, _, problem) = get(&format!("{}/v1/services/web?dc={dc}", dc1.url())).await;
        assert_eq!(status, 404, "{dc}: {problem}");
        assert_eq!(problem["field"], "dc");
    }
    let calls = dc1
        .metric("roster_federation_calls_total{dc=\"dc2\",result=\"ok\"}")
        .await;
    assert_eq!(calls, Some(0.0));
}

/// A TCP server that accepts connections and never answers.
async fn black_hole() -> std::net::SocketAddr {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    addr
}

/// A TCP server that answers every request with a 200 and garbage.
async fn garbage() -> std::net::SocketAddr {
    let (l, addr) = listener().await;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let body = "{\"service\": 42, \"not\": \"roster\"";
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn dead_silent_and_garbage_datacenters_cost_local_queries_nothing() {
    let (l1, _) = listener().await;
    let (_, closed) = listener().await; // bound, then dropped: refused
    let silent = black_hole().await;
    let junk = garbage().await;
    let config = federation(
        &[("dead", closed), ("silent", silent), ("junk", junk)],
        "web=dead,silent,junk",
    );
    let dc1 = start_dc(l1, "dc1", Some(config)).await;
    let c1 = RosterClient::new(dc1.url()).unwrap();
    c1.register("web", "web-1", &instance("10.1.0.1"))
        .await
        .unwrap();

    // Every remote is down (the silent one by timeout): after three failed
    // probe rounds their circuits open.
    let mut list = serde_json::Value::Null;
    for _ in 0..400 {
        (_, _, list) = get(&format!("{}/v1/datacenters", dc1.url())).await;
        let rows = list.as_array().unwrap();
        if rows
            .iter()
            .skip(1)
            .all(|r| r["circuit"] == "open" && r["state"] == "down")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for row in list.as_array().unwrap().iter().skip(1) {
        assert_eq!(row["circuit"], "open", "{row}");
    }
    let junk_error = list
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "junk")
        .unwrap()["servers"][0]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        junk_error.contains("not a roster ping answer"),
        "{junk_error}"
    );

    // A healthy local service makes no remote call at all.
    let before = dc1.metrics_text().await;
    for _ in 0..20 {
        let (status, headers, _) = get(&format!("{}/v1/services/web", dc1.url())).await;
        assert_eq!(status, 200);
        assert!(headers.get("x-roster-datacenter").is_none());
    }
    let calls = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("roster_federation_calls_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let after = dc1.metrics_text().await;
    assert_eq!(calls(&before), calls(&after), "local answers called out");

    // Every local instance down: failover walks the list, skipping open
    // circuits without a call, and answers locally (empty) at once.
    let req = roster_client::api::MaintenanceRequest {
        enabled: true,
        reason: Some("test".into()),
    };
    c1.maintenance("web", "web-1", &req).await.unwrap();
    let wire_before = failed_calls(&dc1.metrics_text().await);
    for _ in 0..10 {
        let (status, headers, body) = get(&format!("{}/v1/services/web", dc1.url())).await;
        assert_eq!(status, 200);
        assert!(headers.get("x-roster-datacenter").is_none());
        assert_eq!(body["instances"], serde_json::json!([]));
    }
    assert_eq!(
        failed_calls(&dc1.metrics_text().await),
        wire_before,
        "no call went out to a datacenter whose circuit is open"
    );
    // `?dc=` to them fails fast with 503 and Retry-After.
    let resp = reqwest::get(format!("{}/v1/services/web?dc=silent", dc1.url()))
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    // The local node stays healthy; the federation is degraded.
    let (status, _, health) = get(&format!("{}/health", dc1.url())).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["federation"]["status"], "degraded");
    let down = health["federation"]["down"].as_array().unwrap();
    assert!(down.iter().any(|d| d == "silent"), "{health}");
    assert_eq!(
        dc1.metric("roster_federation_circuit_open{dc=\"silent\"}")
            .await,
        Some(1.0)
    );
}

fn failed_calls(text: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.starts_with("roster_federation_calls_total{") && l.contains("result=\"failed\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_killed_remote_is_skipped_and_its_return_is_seen() {
    let (l1, _) = listener().await;
    let (l2, a2) = listener().await;
    let (l3, a3) = listener().await;
    let dc2 = start_dc(l2, "dc2", Some(federation(&[], ""))).await;
    let dc3 = start_dc(l3, "dc3", Some(federation(&[], ""))).await;
    let dc1 = start_dc(
        l1,
        "dc1",
        Some(federation(&[("dc2", a2), ("dc3", a3)], "*=dc2,dc3")),
    )
    .await;
    for (reg, addr) in [(&dc2, "10.2.0.1"), (&dc3, "10.3.0.1")] {
        RosterClient::new(reg.url())
            .unwrap()
            .register("pay", "pay-1", &instance(addr))
            .await
            .unwrap();
    }
    let url = format!("{}/v1/services/pay", dc1.url());
    let (_, headers, _) = get(&url).await;
    assert_eq!(headers["x-roster-datacenter"], "dc2", "first on the list");
    dc2.stop().await;
    // Once dc2's circuit is open (or its poller failed), dc3 answers.
    let mut last = String::new();
    for _ in 0..200 {
        let (_, headers, _) = get(&url).await;
        last = headers["x-roster-datacenter"].to_str().unwrap().to_owned();
        if last == "dc3" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last, "dc3");
    // dc2 comes back on the same address: answers move back to it.
    let l2 = tokio::net::TcpListener::bind(a2).await.unwrap();
    let dc2 = start_dc(l2, "dc2", Some(federation(&[], ""))).await;
    RosterClient::new(dc2.url())
        .unwrap()
        .register("pay", "pay-1", &instance("10.2.0.1"))
        .await
        .unwrap();
    wait_state(&dc1, "dc2", "up").await;
    for _ in 0..200 {
        let (_, headers, _) = get(&url).await;
        last = headers["x-roster-datacenter"].to_str().unwrap().to_owned();
        if last == "dc2" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(last, "dc2");
}

#[tokio::test]
async fn acl_tokens_need_a_dc_policy_to_cross() {
    let tokens = r#"
[[tokens]]
name = "reader"
secret = "reader-secret-0123456789"
policies = ["read"]

[[tokens]]
name = "traveller"
secret = "traveller-secret-0123456789"
policies = ["read", "write:web", "dc:dc2"]
"#;
    let acl = roster_registry::acl::Tokens::parse(tokens).unwrap();
    let (l1, a1) = listener().await;
    let (l2, a2) = listener().await;
    let config = |name: &str, fed| Config {
        datacenter: name.into(),
        federation: Some(fed),
        acl: Some(acl.clone()),
        grpc_addr: None,
        dns_addr: None,
        ..Config::default()
    };
    let dc1 = TestRegistry::start_on(l1, config("dc1", federation(&[("dc2", a2)], ""))).await;
    let _dc2 = TestRegistry::start_on(l2, config("dc2", federation(&[("dc1", a1)], ""))).await;
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: &str| {
        let req = http
            .request(method.clone(), format!("{}{path}", dc1.url()))
            .bearer_auth(token);
        let req = if method == reqwest::Method::PUT {
            req.json(&instance("10.2.0.9"))
        } else {
            req
        };
        req.send()
    };
    let read = "/v1/services/web?dc=dc2";
    let write = "/v1/services/web/instances/web-9?dc=dc2";
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(
            call(reqwest::Method::GET, read, "reader-secret-0123456789")
                .await
                .unwrap()
        ),
        403,
        "no dc: policy"
    );
    assert_eq!(
        status(
            call(reqwest::Method::GET, read, "traveller-secret-0123456789")
                .await
                .unwrap()
        ),
        200
    );
    // A write forwarded on the caller's token: created in dc2, not in dc1.
    assert_eq!(
        status(
            call(reqwest::Method::PUT, write, "traveller-secret-0123456789")
                .await
                .unwrap()
        ),
        201
    );
    let (_, _, here) = get(&format!("{}/v1/services/web", dc1.url())).await;
    assert_eq!(here["status"], 401, "dc1 requires a token for reads too");
    let local = http
        .get(format!("{}/v1/services/web?all", dc1.url()))
        .bearer_auth("reader-secret-0123456789")
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(
        local["instances"],
        serde_json::json!([]),
        "never replicated"
    );
    let there = call(
        reqwest::Method::GET,
        "/v1/services/web?dc=dc2&all",
        "traveller-secret-0123456789",
    )
    .await
    .unwrap()
    .json::<serde_json::Value>()
    .await
    .unwrap();
    assert_eq!(there["instances"][0]["id"], "web-9");
}
