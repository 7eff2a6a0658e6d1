//! What each name answers: A/AAAA, tags, SRV, instances, CNAME, TXT, apex,
//! rotation, case echo and cache refresh, over real UDP and TCP.

use crate::common;

use std::collections::HashSet;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

/// NXDOMAIN or NODATA: no answer, the zone's SOA (TTL and minimum 5) in authority.
fn assert_negative(reply: &Message, rcode: ResponseCode) {
    assert_eq!(reply.metadata.response_code, rcode, "{reply:?}");
    assert!(reply.metadata.authoritative);
    assert!(reply.answers.is_empty(), "{:?}", reply.answers);
    assert_eq!(reply.authorities.len(), 1, "{reply:?}");
    let soa = &reply.authorities[0];
    assert_eq!(soa.name.to_string(), "roster.");
    assert_eq!(soa.ttl, 5);
    let RData::SOA(data) = &soa.data else {
        panic!("not a SOA: {soa:?}")
    };
    assert_eq!(data.minimum, 5);
    assert_eq!(data.mname.to_string(), "ns.roster.");
}

fn assert_ok(reply: &Message) {
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "{reply:?}"
    );
    assert!(reply.metadata.authoritative, "AA must be set");
    assert!(!reply.metadata.recursion_available, "RA must be clear");
    assert!(!reply.metadata.truncation);
    assert!(reply.authorities.is_empty());
}

#[tokio::test]
async fn service_a_and_aaaa_list_only_healthy_endpoints() {
    let server = start(sample_view()).await;
    let (reply, _) = udp(server.addr, &query("web.service.roster.", RecordType::A)).await;
    assert_ok(&reply);
    assert!(reply.metadata.recursion_desired, "RD is copied");
    assert_eq!(answer_data(&reply), ["10.0.0.1", "10.0.0.2"]);
    assert!(reply.answers.iter().all(|r| r.ttl == 0), "default TTL is 0");
    let (reply, _) = tcp(server.addr, &query("web.service.roster.", RecordType::AAAA)).await;
    assert_ok(&reply);
    assert_eq!(answer_data(&reply), ["2001:db8::4"]);
}

#[tokio::test]
async fn nodata_for_missing_types_and_services_without_healthy_instances() {
    let server = start(sample_view()).await;
    for (name, ty) in [
        ("v4only.service.roster.", RecordType::AAAA),
        ("v4only.service.roster.", RecordType::MX),
        ("down.service.roster.", RecordType::A),
        ("_web._tcp.service.roster.", RecordType::A),
        ("web.service.roster.", RecordType::SRV),
        ("service.roster.", RecordType::A),
        ("instance.roster.", RecordType::A),
        ("web.instance.roster.", RecordType::A),
        ("_web.service.roster.", RecordType::A),
        ("roster.", RecordType::A),
        ("web-2.web.instance.roster.", RecordType::TXT),
        ("old.web.service.roster.", RecordType::A),
    ] {
        let (reply, _) = udp(server.addr, &query(name, ty)).await;
        assert_negative(&reply, ResponseCode::NoError);
    }
}

#[tokio::test]
async fn nxdomain_for_unknown_services_instances_tags_and_shapes() {
    let server = start(sample_view()).await;
    for (name, ty) in [
        ("nope.service.roster.", RecordType::A),
        ("_nope._tcp.service.roster.", RecordType::SRV),
        ("web-9.web.instance.roster.", RecordType::A),
        ("web-1.nope.instance.roster.", RecordType::A),
        ("nope.instance.roster.", RecordType::A),
        ("v9.web.service.roster.", RecordType::A),
        ("_web._v9.service.roster.", RecordType::SRV),
        ("foo.roster.", RecordType::A),
        ("a.b.c.service.roster.", RecordType::A),
        ("_web.v2.service.roster.", RecordType::A),
    ] {
        let (reply, _) = udp(server.addr, &query(name, ty)).await;
        assert_negative(&reply, ResponseCode::NXDomain);
    }
}

#[tokio::test]
async fn tag_names_filter_healthy_endpoints() {
    let server = start(sample_view()).await;
    let (reply, _) = udp(server.addr, &query("v2.web.service.roster.", RecordType::A)).await;
    assert_ok(&reply);
    assert_eq!(
        answer_data(&reply),
        ["10.0.0.1"],
        "web-3 has v2 but is critical"
    );
    let (reply, _) = udp(server.addr, &query("V1.web.service.roster.", RecordType::A)).await;
    assert_eq!(answer_data(&reply), ["10.0.0.2"]);
}

#[tokio::test]
async fn srv_lists_healthy_endpoints_with_addresses_of_every_target() {
    let server = start(sample_view()).await;
    let (reply, _) = udp(
        server.addr,
        &query("_web._tcp.service.roster.", RecordType::SRV),
    )
    .await;
    assert_ok(&reply);
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
            (1, 1, 8083, "web-4.web.instance.roster.".to_owned()),
            (1, 5, 8081, "web-2.web.instance.roster.".to_owned()),
            (1, 10, 8080, "web-1.web.instance.roster.".to_owned()),
        ]
    );
    let mut additional: Vec<String> = reply
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    additional.sort();
    assert_eq!(
        additional,
        [
            "web-1.web.instance.roster. 10.0.0.1",
            "web-2.web.instance.roster. 10.0.0.2",
            "web-4.web.instance.roster. 2001:db8::4",
        ]
    );

    let (reply, _) = udp(
        server.addr,
        &query("_web._v2.service.roster.", RecordType::SRV),
    )
    .await;
    assert_ok(&reply);
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.additionals.len(), 1);
    assert_eq!(
        reply.additionals[0].name.to_string(),
        "web-1.web.instance.roster."
    );

    let (reply, _) = udp(
        server.addr,
        &query("_web._legacy.service.roster.", RecordType::SRV),
    )
    .await;
    assert_negative(&reply, ResponseCode::NoError);
}

#[tokio::test]
async fn srv_targets_hostnames_directly() {
    let server = start(sample_view()).await;
    let (reply, _) = udp(
        server.addr,
        &query("_db._tcp.service.roster.", RecordType::SRV),
    )
    .await;
    assert_ok(&reply);
    assert_eq!(answer_data(&reply), ["1 1 5432 db1.example.com."]);
    assert!(reply.additionals.is_empty());
}

#[tokio::test]
async fn instance_names_answer_whatever_the_health() {
    let server = start(sample_view()).await;
    let (reply, _) = udp(
        server.addr,
        &query("web-3.web.instance.roster.", RecordType::A),
    )
    .await;
    assert_ok(&reply);
    assert_eq!(answer_data(&reply), ["10.0.0.3"]);
    let (reply, _) = udp(
        server.addr,
        &query("WEB-4.web.instance.roster.", RecordType::AAAA),
    )
    .await;
    assert_eq!(answer_data(&reply), ["2001:db8::4"]);
    let (reply, _) = udp(
        server.addr,
        &query("web-4.web.instance.roster.", RecordType::A),
    )
    .await;
    assert_negative(&reply, ResponseCode::NoError);
}

#[tokio::test]
async fn hostname_endpoints_are_cnames() {
    let server = start(sample_view()).await;
    for (name, ty) in [
        ("db.service.roster.", RecordType::A),
        ("db.service.roster.", RecordType::AAAA),
        ("db-1.db.instance.roster.", RecordType::A),
    ] {
        let (reply, _) = udp(server.addr, &query(name, ty)).await;
        assert_ok(&reply);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(answer_data(&reply), ["db1.example.com."]);
    }
    // Mixed IP and hostname endpoints: the name cannot hold a CNAME and data.
    let (reply, _) = udp(server.addr, &query("mixed.service.roster.", RecordType::A)).await;
    assert_eq!(answer_data(&reply), ["10.9.0.1"]);
    let (reply, _) = udp(
        server.addr,
        &query("_mixed._tcp.service.roster.", RecordType::SRV),
    )
    .await;
    let targets: HashSet<String> = reply
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => s.target.to_string(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        targets,
        HashSet::from([
            "m-1.mixed.instance.roster.".to_owned(),
            "m2.example.com.".to_owned()
        ])
    );
}

#[tokio::test]
async fn txt_carries_metadata() {
    let server = start(sample_view()).await;
    for name in [
        "web.service.roster.",
        "web-1.web.instance.roster.",
        "v2.web.service.roster.",
    ] {
        let (reply, _) = udp(server.addr, &query(name, RecordType::TXT)).await;
        assert_ok(&reply);
        assert_eq!(answer_data(&reply), ["zone=eu-1"], "{name}");
    }
    let (reply, _) = udp(
        server.addr,
        &query("db-1.db.instance.roster.", RecordType::TXT),
    )
    .await;
    assert_eq!(answer_data(&reply), ["role=primary"]);
}

#[tokio::test]
async fn apex_has_soa_and_ns() {
    let server = start(sample_view()).await;
    let (reply, _) = udp(server.addr, &query("roster.", RecordType::SOA)).await;
    assert_ok(&reply);
    assert_eq!(reply.answers.len(), 1);
    assert_eq!(reply.answers[0].record_type(), RecordType::SOA);
    let (reply, _) = udp(server.addr, &query("Roster.", RecordType::NS)).await;
    assert_ok(&reply);
    assert_eq!(answer_data(&reply), ["ns.roster."]);
    let (reply, _) = udp(server.addr, &query("roster.", RecordType::ANY)).await;
    assert_eq!(reply.answers.len(), 2);
}

fn serial(record: &hickory_proto::rr::Record) -> u32 {
    match &record.data {
        RData::SOA(soa) => soa.serial,
        other => panic!("not a SOA: {other:?}"),
    }
}

/// The SOA serial is the view's index (low 32 bits), in the apex answer
/// and in negative answers, and follows it.
#[tokio::test]
async fn the_soa_serial_is_the_views_index() {
    let view = sample_view();
    view.set("v4only", 41, vec![ep("v-1", "10.1.0.1", 80, &[], true)]);
    let server = start(view.clone()).await;
    let (reply, _) = udp(server.addr, &query("roster.", RecordType::SOA)).await;
    assert_eq!(serial(&reply.answers[0]), 41);
    let (reply, _) = udp(server.addr, &query("nope.service.roster.", RecordType::A)).await;
    assert_negative(&reply, ResponseCode::NXDomain);
    assert_eq!(serial(&reply.authorities[0]), 41);
    view.set("v4only", (1 << 32) + 7, Vec::new());
    let (reply, _) = tcp(server.addr, &query("roster.", RecordType::SOA)).await;
    assert_eq!(serial(&reply.answers[0]), 7, "wraps (RFC 1982)");
}

/// `ns.DOMAIN`, the apex NS target, resolves to the server's address, and
/// NS answers carry it as glue.
#[tokio::test]
async fn the_name_server_has_the_servers_address() {
    let server = start(sample_view()).await;
    let (reply, _) = udp(server.addr, &query("ns.roster.", RecordType::A)).await;
    assert_ok(&reply);
    assert_eq!(answer_data(&reply), ["127.0.0.1"]);
    assert_eq!(reply.answers[0].name.to_string(), "ns.roster.");
    let (reply, _) = udp(server.addr, &query("NS.Roster.", RecordType::AAAA)).await;
    assert_negative(&reply, ResponseCode::NoError);
    let (reply, _) = udp(server.addr, &query("ns.roster.", RecordType::TXT)).await;
    assert_negative(&reply, ResponseCode::NoError);
    let (reply, _) = udp(server.addr, &query("roster.", RecordType::NS)).await;
    let glue: Vec<String> = reply
        .additionals
        .iter()
        .map(|r| format!("{} {}", r.name, r.data))
        .collect();
    assert_eq!(glue, ["ns.roster. 127.0.0.1"]);

    // An advertised address wins over the bound one.
    let server = start_with(
        sample_view(),
        roster_dns::DnsConfig {
            advertise_addr: Some("2001:db8::53".parse().unwrap()),
            ..Default::default()
        },
    )
    .await;
    let (reply, _) = udp(server.addr, &query("ns.roster.", RecordType::AAAA)).await;
    assert_eq!(answer_data(&reply), ["2001:db8::53"]);
    let (reply, _) = udp(server.addr, &query("ns.roster.", RecordType::A)).await;
    assert_negative(&reply, ResponseCode::NoError);
}

/// Bound to 0.0.0.0, the server answers with an address it can be reached
/// at (the default route's interface, else loopback), never 0.0.0.0.
#[tokio::test]
async fn a_wildcard_server_names_a_real_address() {
    let handler = roster_dns::DnsHandler::new(sample_view(), Default::default()).unwrap();
    let server = roster_dns::DnsServer::bind("0.0.0.0:0".parse().unwrap(), handler)
        .await
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], server.local_addr().port()));
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(stopped));
    let (reply, _) = udp(addr, &query("ns.roster.", RecordType::A)).await;
    assert_eq!(reply.answers.len(), 1, "{reply:?}");
    let RData::A(a) = &reply.answers[0].data else {
        panic!("not A: {reply:?}")
    };
    assert!(!a.0.is_unspecified(), "{a}");
}

#[tokio::test]
async fn names_are_case_insensitive_and_the_case_is_echoed() {
    let server = start(sample_view()).await;
    let name = "WeB.SeRvIcE.RoStEr.";
    let (reply, _) = udp(server.addr, &query(name, RecordType::A)).await;
    assert_ok(&reply);
    assert_eq!(reply.queries[0].name().to_string(), name);
    assert_eq!(reply.answers.len(), 2);
    for answer in &reply.answers {
        assert!(
            answer.name.eq_case(reply.queries[0].name()),
            "{}",
            answer.name
        );
        assert_eq!(answer.name.to_string(), name);
    }
}

#[tokio::test]
async fn answers_rotate_between_queries() {
    let server = start(sample_view()).await;
    for (name, ty) in [
        ("big.service.roster.", RecordType::A),
        ("web.service.roster.", RecordType::A),
        ("_web._tcp.service.roster.", RecordType::SRV),
    ] {
        let (first, _) = tcp(server.addr, &query(name, ty)).await;
        let (second, _) = tcp(server.addr, &query(name, ty)).await;
        assert_eq!(answer_data(&first), answer_data(&second), "same set");
        assert_ne!(
            first.answers[0].data, second.answers[0].data,
            "{name}: no rotation"
        );
    }
}

#[tokio::test]
async fn a_new_index_refreshes_cached_records() {
    let view = sample_view();
    let server = start(view.clone()).await;
    let (reply, _) = udp(server.addr, &query("v4only.service.roster.", RecordType::A)).await;
    assert_eq!(answer_data(&reply), ["10.1.0.1"]);
    view.set("v4only", 2, vec![ep("v-2", "10.1.0.2", 80, &[], true)]);
    let (reply, _) = udp(server.addr, &query("v4only.service.roster.", RecordType::A)).await;
    assert_eq!(answer_data(&reply), ["10.1.0.2"]);
}

#[tokio::test]
async fn configured_domain_and_ttl() {
    let config = roster_dns::DnsConfig {
        domain: "Consul.Example.".into(),
        ttl: 30,
        negative_ttl: 5,
        ..Default::default()
    };
    let server = start_with(sample_view(), config).await;
    let (reply, _) = udp(
        server.addr,
        &query("web.service.consul.example.", RecordType::A),
    )
    .await;
    assert_ok(&reply);
    assert!(reply.answers.iter().all(|r| r.ttl == 30));
    let (reply, _) = udp(server.addr, &query("web.service.roster.", RecordType::A)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
}
