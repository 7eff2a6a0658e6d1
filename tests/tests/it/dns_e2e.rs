//! DNS end to end: a real registry in-process with its DNS server on
//! 127.0.0.1:0, instances registered through the real client, and queries over
//! real UDP and TCP sockets (hickory-proto messages) and through the real `dig`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use roster_client::RosterClient;
use roster_client::api::{MaintenanceRequest, RegisterRequest, Weights};
use roster_registry::config::Config;
use roster_tests::TestRegistry;
use roster_tests::dns::{answer_data, ask, query, tcp, udp};

/// Asserts an NXDOMAIN (over UDP and TCP) with the zone's SOA in authority.
async fn assert_nxdomain(addr: SocketAddr, name: &str, ty: RecordType) {
    for reply in [
        udp(addr, &query(name, ty)).await,
        tcp(addr, &query(name, ty)).await,
    ] {
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{name} {ty}: {reply:?}"
        );
        assert!(reply.answers.is_empty(), "{reply:?}");
        assert_eq!(reply.authorities.len(), 1, "{reply:?}");
        assert_eq!(reply.authorities[0].record_type(), RecordType::SOA);
    }
}

fn register_request(
    address: &str,
    port: u16,
    tags: &[&str],
    passing_weight: u32,
) -> RegisterRequest {
    RegisterRequest {
        address: Some(address.into()),
        port,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        weights: Weights {
            passing: passing_weight,
            warning: 1,
        },
        ..Default::default()
    }
}

/// A registry with `web-1` (10.0.0.1:8080, tag v2, weight 10, meta zone and
/// version) and `web-2` (10.0.0.2:8081, tag v1, weight 5), registered through the client.
async fn registry_with_web() -> (TestRegistry, RosterClient) {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let mut web1 = register_request("10.0.0.1", 8080, &["v2"], 10);
    web1.meta = BTreeMap::from([
        ("zone".to_owned(), "eu-1".to_owned()),
        ("version".to_owned(), "2.4.1".to_owned()),
    ]);
    client.register("web", "web-1", &web1).await.unwrap();
    client
        .register(
            "web",
            "web-2",
            &register_request("10.0.0.2", 8081, &["v1"], 5),
        )
        .await
        .unwrap();
    (reg, client)
}

async fn set_maintenance(client: &RosterClient, id: &str, enabled: bool) {
    let req = MaintenanceRequest {
        enabled,
        reason: enabled.then(|| "disk replacement".to_owned()),
    };
    client.maintenance("web", id, &req).await.unwrap();
}

#[tokio::test]
async fn a_records_list_healthy_instances_only() {
    let (reg, client) = registry_with_web().await;
    let dns = reg.dns_addr();
    assert_ne!(dns.port(), 0);
    assert_eq!(
        ask(dns, "web.service.roster.", RecordType::A).await,
        ["10.0.0.1", "10.0.0.2"]
    );
    // Case-insensitive, and the answer echoes the query's case.
    let reply = udp(dns, &query("WEB.Service.Roster.", RecordType::A)).await;
    assert_eq!(answer_data(&reply), ["10.0.0.1", "10.0.0.2"]);
    assert_eq!(reply.answers[0].name.to_string(), "WEB.Service.Roster.");
    assert_eq!(reply.answers[0].ttl, 0, "default TTL");

    set_maintenance(&client, "web-2", true).await;
    assert_eq!(
        ask(dns, "web.service.roster.", RecordType::A).await,
        ["10.0.0.1"],
        "an instance in maintenance leaves DNS"
    );
    assert_eq!(
        ask(dns, "_web._tcp.service.roster.", RecordType::SRV)
            .await
            .len(),
        1
    );

    set_maintenance(&client, "web-1", true).await;
    assert!(
        ask(dns, "web.service.roster.", RecordType::A)
            .await
            .is_empty(),
        "no healthy instance: NODATA, not NXDOMAIN"
    );

    set_maintenance(&client, "web-1", false).await;
    set_maintenance(&client, "web-2", false).await;
    assert_eq!(
        ask(dns, "web.service.roster.", RecordType::A).await,
        ["10.0.0.1", "10.0.0.2"],
        "back after maintenance"
    );
    assert!(
        ask(dns, "web.service.roster.", RecordType::AAAA)
            .await
            .is_empty(),
        "no IPv6 instance: NODATA"
    );
    reg.stop().await;
}

#[tokio::test]
async fn tag_names_filter_instances() {
    let (reg, client) = registry_with_web().await;
    let dns = reg.dns_addr();
    assert_eq!(
        ask(dns, "v2.web.service.roster.", RecordType::A).await,
        ["10.0.0.1"]
    );
    assert_eq!(
        ask(dns, "v1.web.service.roster.", RecordType::A).await,
        ["10.0.0.2"]
    );
    assert_nxdomain(dns, "v3.web.service.roster.", RecordType::A).await;

    // A tagged instance in maintenance: the tag still exists, with no answer.
    set_maintenance(&client, "web-2", true).await;
    assert!(
        ask(dns, "v1.web.service.roster.", RecordType::A)
            .await
            .is_empty()
    );
    reg.stop().await;
}

#[tokio::test]
async fn srv_has_weights_ports_and_an_address_for_every_target() {
    let (reg, _client) = registry_with_web().await;
    let dns = reg.dns_addr();
    for reply in [
        udp(dns, &query("_web._tcp.service.roster.", RecordType::SRV)).await,
        tcp(dns, &query("_web._tcp.service.roster.", RecordType::SRV)).await,
    ] {
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        let mut srv: Vec<(u16, u16, u16, String)> = reply
            .answers
            .iter()
            .map(|r| match &r.data {
                RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_string()),
                other => panic!("not SRV: {other:?}"),
            })
            .collect();
        srv.sort();
        assert_eq!(
            srv,
            [
                (1, 5, 8081, "web-2.web.instance.roster.".to_owned()),
                (1, 10, 8080, "web-1.web.instance.roster.".to_owned()),
            ],
            "weights are the passing weights"
        );
        let mut additional: Vec<String> = reply
            .additionals
            .iter()
            .filter(|r| r.record_type() != RecordType::OPT)
            .map(|r| format!("{} {} {}", r.name, r.record_type(), r.data))
            .collect();
        additional.sort();
        assert_eq!(
            additional,
            [
                "web-1.web.instance.roster. A 10.0.0.1",
                "web-2.web.instance.roster. A 10.0.0.2",
            ]
        );
    }

    let reply = udp(dns, &query("_web._v2.service.roster.", RecordType::SRV)).await;
    assert_eq!(reply.answers.len(), 1);
    let RData::SRV(srv) = &reply.answers[0].data else {
        panic!("not SRV: {reply:?}");
    };
    assert_eq!(srv.target.to_string(), "web-1.web.instance.roster.");
    assert_eq!(srv.port, 8080);
    assert_eq!(reply.additionals.len(), 1);
    reg.stop().await;
}

#[tokio::test]
async fn instance_names_answer_whatever_the_health() {
    let (reg, client) = registry_with_web().await;
    let dns = reg.dns_addr();
    assert_eq!(
        ask(dns, "web-1.web.instance.roster.", RecordType::A).await,
        ["10.0.0.1"]
    );
    set_maintenance(&client, "web-2", true).await;
    assert_eq!(
        ask(dns, "web-2.web.instance.roster.", RecordType::A).await,
        ["10.0.0.2"],
        "an instance name answers even in maintenance"
    );
    assert_nxdomain(dns, "web-9.web.instance.roster.", RecordType::A).await;
    assert_nxdomain(dns, "web-1.db.instance.roster.", RecordType::A).await;
    reg.stop().await;
}

#[tokio::test]
async fn unknown_services_are_nxdomain() {
    let (reg, _client) = registry_with_web().await;
    let dns = reg.dns_addr();
    assert_nxdomain(dns, "nope.service.roster.", RecordType::A).await;
    assert_nxdomain(dns, "_nope._tcp.service.roster.", RecordType::SRV).await;
    assert_nxdomain(dns, "web.services.roster.", RecordType::A).await;
    // Names outside the domain are refused, not answered.
    let reply = udp(dns, &query("web.service.consul.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    reg.stop().await;
}

#[tokio::test]
async fn changes_reach_dns_at_once() {
    let (reg, client) = registry_with_web().await;
    let dns = reg.dns_addr();
    // Warm the per-service cache, then change the service: the next query must
    // see the change (the cache is keyed by the service's index).
    assert_eq!(
        ask(dns, "web.service.roster.", RecordType::A).await,
        ["10.0.0.1", "10.0.0.2"]
    );
    client.deregister("web", "web-1").await.unwrap();
    assert_eq!(
        ask(dns, "web.service.roster.", RecordType::A).await,
        ["10.0.0.2"]
    );
    assert_nxdomain(dns, "web-1.web.instance.roster.", RecordType::A).await;

    // Same instance, new address: replaced at once too.
    client
        .register(
            "web",
            "web-2",
            &register_request("10.0.0.22", 8081, &["v1"], 5),
        )
        .await
        .unwrap();
    assert_eq!(
        ask(dns, "web.service.roster.", RecordType::A).await,
        ["10.0.0.22"]
    );

    // The last instance gone: the service is gone.
    client.deregister("web", "web-2").await.unwrap();
    assert_nxdomain(dns, "web.service.roster.", RecordType::A).await;
    assert_nxdomain(dns, "_web._tcp.service.roster.", RecordType::SRV).await;

    // And back.
    client
        .register("web", "web-3", &register_request("10.0.0.3", 80, &[], 1))
        .await
        .unwrap();
    assert_eq!(
        ask(dns, "web.service.roster.", RecordType::A).await,
        ["10.0.0.3"]
    );
    reg.stop().await;
}

/// The TXT strings of every answer, one inner vector per record, sorted.
fn txt_strings(reply: &Message) -> Vec<Vec<String>> {
    let mut records: Vec<Vec<String>> = reply
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::TXT(txt) => txt
                .txt_data
                .iter()
                .map(|s| String::from_utf8(s.to_vec()).unwrap())
                .collect(),
            other => panic!("not TXT: {other:?}"),
        })
        .collect();
    records.sort();
    records
}

#[tokio::test]
async fn txt_carries_metadata() {
    let (reg, _client) = registry_with_web().await;
    let dns = reg.dns_addr();
    for name in [
        "web-1.web.instance.roster.",
        "web.service.roster.",
        "v2.web.service.roster.",
    ] {
        for reply in [
            udp(dns, &query(name, RecordType::TXT)).await,
            tcp(dns, &query(name, RecordType::TXT)).await,
        ] {
            assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
            assert_eq!(
                txt_strings(&reply),
                [["version=2.4.1", "zone=eu-1"]],
                "{name}: one record, key=value strings in key order"
            );
        }
    }
    // An instance without metadata has no TXT record: NODATA.
    let reply = udp(dns, &query("web-2.web.instance.roster.", RecordType::TXT)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    reg.stop().await;
}

#[tokio::test]
async fn domain_and_ttl_come_from_the_config() {
    let mut config = Config::default();
    config.dns.domain = "Example.Internal.".into();
    config.dns.ttl = 30;
    let reg = TestRegistry::start_with(config).await;
    let client = RosterClient::new(reg.url()).unwrap();
    client
        .register("web", "web-1", &register_request("10.0.0.1", 80, &[], 1))
        .await
        .unwrap();
    let dns = reg.dns_addr();
    let reply = udp(dns, &query("web.service.example.internal.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answer_data(&reply), ["10.0.0.1"]);
    assert_eq!(reply.answers[0].ttl, 30);
    let reply = udp(dns, &query("web.service.roster.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    reg.stop().await;
}

#[tokio::test]
async fn dns_can_be_turned_off() {
    let config = Config {
        dns_addr: None,
        ..Config::default()
    };
    let reg = TestRegistry::start_with(config).await;
    assert_eq!(reg.server().dns_addr(), None);
    RosterClient::new(reg.url())
        .unwrap()
        .register("web", "web-1", &register_request("10.0.0.1", 80, &[], 1))
        .await
        .unwrap();
    reg.stop().await;
}

/// Runs the real `dig` against `addr`; its stdout. Fails (never skips) when
/// `dig` is not installed.
async fn dig(addr: SocketAddr, args: &[&str]) -> String {
    let mut command = std::process::Command::new("dig");
    command
        .arg(format!("@{}", addr.ip()))
        .args(["-p", &addr.port().to_string()])
        .args(["+time=3", "+tries=1"])
        .args(args);
    let shown = format!("{command:?}");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!(
                    "`dig` is not installed: run tests/run.sh, which installs it \
                     (apt-get install -y bind9-dnsutils)"
                )
            }
            panic!("cannot run dig: {e}")
        });
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "{shown} failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// dig's output with every run of blanks and tabs turned into one space.
fn squash(out: &str) -> String {
    out.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `+short` output as sorted lines.
fn lines(out: &str) -> Vec<&str> {
    let mut lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.sort_unstable();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dig_queries_the_real_server() {
    let (reg, client) = registry_with_web().await;
    let dns = reg.dns_addr();

    let out = dig(dns, &["web.service.roster", "A", "+short"]).await;
    assert_eq!(lines(&out), ["10.0.0.1", "10.0.0.2"], "{out}");
    let out = dig(dns, &["web.service.roster", "A", "+short", "+tcp"]).await;
    assert_eq!(lines(&out), ["10.0.0.1", "10.0.0.2"], "over TCP: {out}");

    let out = dig(dns, &["_web._tcp.service.roster", "SRV", "+short"]).await;
    assert_eq!(
        lines(&out),
        [
            "1 10 8080 web-1.web.instance.roster.",
            "1 5 8081 web-2.web.instance.roster.",
        ],
        "{out}"
    );
    let out = squash(&dig(dns, &["_web._tcp.service.roster", "SRV", "+tcp"]).await);
    assert!(out.contains("status: NOERROR"), "{out}");
    assert!(out.contains("flags: qr aa rd"), "authoritative: {out}");
    assert!(out.contains(";; ADDITIONAL SECTION:"), "{out}");
    assert!(
        out.contains("web-1.web.instance.roster. 0 IN A 10.0.0.1")
            && out.contains("web-2.web.instance.roster. 0 IN A 10.0.0.2"),
        "an A record for every SRV target: {out}"
    );

    let out = dig(dns, &["v2.web.service.roster", "A", "+short"]).await;
    assert_eq!(lines(&out), ["10.0.0.1"], "{out}");
    let out = dig(dns, &["web-2.web.instance.roster", "A", "+short"]).await;
    assert_eq!(lines(&out), ["10.0.0.2"], "{out}");
    let out = dig(dns, &["web-1.web.instance.roster", "TXT", "+short"]).await;
    assert_eq!(lines(&out), ["\"version=2.4.1\" \"zone=eu-1\""], "{out}");

    let out = squash(&dig(dns, &["nope.service.roster", "A"]).await);
    assert!(out.contains("status: NXDOMAIN"), "{out}");
    let index = reg.server().registry().snapshot().index;
    assert!(
        out.contains(&format!(
            "roster. 5 IN SOA ns.roster. hostmaster.roster. {index} "
        )),
        "the serial is the catalog's index, {index}: {out}"
    );
    let out = dig(dns, &["ns.roster", "A", "+short"]).await;
    assert_eq!(lines(&out), ["127.0.0.1"], "{out}");

    set_maintenance(&client, "web-2", true).await;
    let out = dig(dns, &["web.service.roster", "A", "+short"]).await;
    assert_eq!(lines(&out), ["10.0.0.1"], "{out}");
    reg.stop().await;
}

/// `--dns-allow`: sources outside the allowed networks get REFUSED, over UDP
/// and TCP; the HTTP API is not affected.
#[tokio::test]
async fn dns_answers_only_the_allowed_networks() {
    let outside = TestRegistry::start_with(Config {
        dns: roster_dns::DnsConfig {
            allow: vec![("10.0.0.0".parse().unwrap(), 8)],
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    let inside = TestRegistry::start_with(Config {
        dns: roster_dns::DnsConfig {
            allow: vec![("127.0.0.0".parse().unwrap(), 8)],
            ..Default::default()
        },
        ..Config::default()
    })
    .await;
    for reg in [&outside, &inside] {
        let client = RosterClient::new(reg.url()).unwrap();
        client
            .register("web", "web-1", &register_request("10.0.0.1", 80, &[], 1))
            .await
            .unwrap();
    }
    let q = query("web.service.roster.", RecordType::A);
    for reply in [
        udp(outside.dns_addr(), &q).await,
        tcp(outside.dns_addr(), &q).await,
    ] {
        assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
        assert!(reply.answers.is_empty());
    }
    assert_eq!(
        ask(inside.dns_addr(), "web.service.roster.", RecordType::A).await,
        ["10.0.0.1"]
    );
}

/// Sends one raw HTTP/1.1 request (no URL normalization on the way, unlike
/// any HTTP client) and returns the whole response text.
async fn raw_http(addr: &str, method: &str, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: roster\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).await.unwrap();
    out
}

/// Every id the API accepts has its SRV record and an instance name that
/// answers: ids of 64 to 128 characters and ids with empty labels get a
/// one-label alias instead of silently missing from SRV (14 of 17 were shown).
/// Ids of dots alone, which URLs resolve away, are refused with a 400 naming
/// `id`.
#[tokio::test]
async fn every_accepted_instance_id_is_in_srv() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    let dns = reg.dns_addr();
    let ids: Vec<String> = vec![
        "a".into(),
        "web-1".into(),
        "Web-2:8080".into(),
        "x.y.z".into(),
        "_nomad-task-1".into(),
        "x".repeat(63),
        "x".repeat(64),
        "y".repeat(100),
        "z".repeat(128),
        format!("{}.{}", "a".repeat(63), "b".repeat(64)),
        format!("{}.{}", "c".repeat(63), "d".repeat(63)),
        "a..b".into(),
        ".lead".into(),
        "trail.".into(),
        "...x".into(),
        "k8s-a-very-long-namespace-name-with-a-long-service-name-and-pod-7d9f8b6c4-x2k9z-8080"
            .into(),
        "e".repeat(127),
    ];
    assert_eq!(ids.len(), 17);
    for (n, id) in ids.iter().enumerate() {
        let address = format!("10.0.1.{}", n + 1);
        client
            .register(
                "web",
                id,
                &register_request(&address, 8000 + n as u16, &[], 1),
            )
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
    }
    let reply = tcp(dns, &query("_web._tcp.service.roster.", RecordType::SRV)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let targets: BTreeMap<u16, hickory_proto::rr::Name> = reply
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.port, s.target.clone()),
            other => panic!("not SRV: {other:?}"),
        })
        .collect();
    assert_eq!(
        targets.len(),
        ids.len(),
        "every instance in SRV: {targets:?}"
    );
    for (n, id) in ids.iter().enumerate() {
        let target = &targets[&(8000 + n as u16)];
        let shown = target.to_string();
        assert!(shown.ends_with(".web.instance.roster."), "{id}: {shown}");
        // Asked with the record's own name: the text form of `Web-2:8080`
        // does not parse back.
        let mut message = Message::query();
        message.add_query(hickory_proto::op::Query::query(
            target.clone(),
            RecordType::A,
        ));
        let reply = tcp(dns, &message).await;
        assert_eq!(
            answer_data(&reply),
            [format!("10.0.1.{}", n + 1)],
            "{id}: the SRV target {shown} answers"
        );
    }
    // Short ids keep their own name.
    assert_eq!(targets[&8001].to_string(), "web-1.web.instance.roster.");
    assert_eq!(targets[&8003].to_string(), "x.y.z.web.instance.roster.");

    // Dots alone: refused by the server (sent raw, since an HTTP client would
    // resolve the segment away) and by the client before sending.
    let addr = reg.url().trim_start_matches("http://").to_owned();
    for id in [".", "..", "..."] {
        let out = raw_http(
            &addr,
            "PUT",
            &format!("/v1/services/web/instances/{id}"),
            r#"{"address":"10.0.0.9","port":80}"#,
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 400"), "{id}: {out}");
        assert!(out.contains("application/problem+json"), "{id}: {out}");
        assert!(out.contains(r#""field":"id""#), "{id}: {out}");
        let err = client
            .register("web", id, &register_request("10.0.0.9", 80, &[], 1))
            .await
            .unwrap_err();
        assert_eq!(err.problem().unwrap().field.as_deref(), Some("id"), "{id}");
    }
    // The Consul API applies the same rule.
    let out = raw_http(
        &addr,
        "PUT",
        "/v1/agent/service/register",
        r#"{"Name":"web","ID":"..","Address":"10.0.0.9","Port":80}"#,
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        client
            .instances("web", &Default::default())
            .await
            .unwrap()
            .instances
            .len(),
        ids.len()
    );
    reg.stop().await;
}

fn soa_serial(reply: &Message) -> u32 {
    let soa = reply
        .answers
        .iter()
        .chain(&reply.authorities)
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        });
    soa.unwrap_or_else(|| panic!("no SOA: {reply:?}"))
}

/// The SOA serial follows the catalog's global index (it was always 1), and
/// `ns.roster`, the apex NS target, resolves to the DNS server's address.
#[tokio::test]
async fn the_zone_serial_moves_and_its_name_server_resolves() {
    let (reg, client) = registry_with_web().await;
    let dns = reg.dns_addr();
    let index = || reg.server().registry().snapshot().index;
    let before = soa_serial(&udp(dns, &query("roster.", RecordType::SOA)).await);
    assert_eq!(u64::from(before), index());
    assert!(before > 1, "{before}");
    set_maintenance(&client, "web-2", true).await;
    let after = soa_serial(&tcp(dns, &query("roster.", RecordType::SOA)).await);
    assert_eq!(u64::from(after), index());
    assert!(after > before, "{after} after {before}");
    let negative = udp(dns, &query("nope.service.roster.", RecordType::A)).await;
    assert_eq!(soa_serial(&negative), after);

    assert_eq!(ask(dns, "ns.roster.", RecordType::A).await, ["127.0.0.1"]);
    let ns = udp(dns, &query("roster.", RecordType::NS)).await;
    assert_eq!(answer_data(&ns), ["ns.roster."]);
    assert_eq!(answer_data_of(&ns.additionals), ["127.0.0.1"], "glue");
    reg.stop().await;
}

fn answer_data_of(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    records
        .iter()
        .filter(|r| r.record_type() != RecordType::OPT)
        .map(|r| r.data.to_string())
        .collect()
}

/// Amplification, end to end: a 53-byte SRV query advertising a 4096-byte
/// buffer gets at most 1232 bytes over UDP (TC set, no additional records),
/// and the whole answer over TCP, never with TC.
#[tokio::test]
async fn udp_answers_are_capped_and_tcp_has_the_rest() {
    let reg = TestRegistry::start().await;
    let client = RosterClient::new(reg.url()).unwrap();
    for i in 0..120 {
        let address = format!("10.0.{}.{}", i / 200, i % 200 + 1);
        client
            .register(
                "web",
                &format!("web-{i}"),
                &register_request(&address, 8080, &[], 1),
            )
            .await
            .unwrap();
    }
    let dns = reg.dns_addr();
    let mut request = query("_web._tcp.service.roster.", RecordType::SRV);
    let mut edns = hickory_proto::op::Edns::new();
    edns.set_max_payload(4096);
    request.set_edns(edns);
    let request_len = request.to_vec().unwrap().len();
    assert_eq!(request_len, 53);

    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&request.to_vec().unwrap(), dns)
        .await
        .unwrap();
    let mut buf = vec![0; 65_535];
    let (len, _) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        socket.recv_from(&mut buf),
    )
    .await
    .unwrap()
    .unwrap();
    let reply = Message::from_vec(&buf[..len]).unwrap();
    println!(
        "UDP: {request_len}-byte query, {len}-byte answer ({:.1}x), {} of 120 SRV records",
        len as f64 / request_len as f64,
        reply.answers.len()
    );
    assert!(len <= 1232, "{len}");
    assert!(reply.metadata.truncation);
    let full = tcp(dns, &request).await;
    assert!(!full.metadata.truncation);
    assert_eq!(full.answers.len(), 120);
    assert_eq!(answer_data_of(&full.additionals).len(), 120);
    reg.stop().await;
}
