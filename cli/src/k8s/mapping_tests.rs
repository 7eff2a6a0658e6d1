//! Unit tests of the pure mapping.

use super::*;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn annotations(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    (!pairs.is_empty()).then(|| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    })
}

fn svc(ns: &str, name: &str, ann: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(name.into()),
            annotations: annotations(ann),
            ..ObjectMeta::default()
        },
        ..Service::default()
    }
}

fn namespace(name: &str, ann: &[(&str, &str)]) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            annotations: annotations(ann),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    }
}

fn endpoint(ip: &str, pod: Option<&str>, ready: Option<bool>) -> Endpoint {
    Endpoint {
        addresses: vec![ip.into()],
        conditions: Some(EndpointConditions {
            ready,
            ..EndpointConditions::default()
        }),
        node_name: Some("node-1".into()),
        target_ref: pod.map(|p| ObjectReference {
            kind: Some("Pod".into()),
            name: Some(p.into()),
            ..ObjectReference::default()
        }),
        ..Endpoint::default()
    }
}

fn slice(ns: &str, name: &str, ports: &[(i32, &str)], eps: Vec<Endpoint>) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(ns.into()),
            name: Some(format!("{name}-abc")),
            labels: annotations(&[(SERVICE_NAME_LABEL, name)]),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        endpoints: Some(eps),
        ports: Some(
            ports
                .iter()
                .map(|(p, n)| EndpointPort {
                    port: Some(*p),
                    name: (!n.is_empty()).then(|| (*n).to_owned()),
                    ..EndpointPort::default()
                })
                .collect(),
        ),
    }
}

fn settings() -> SyncSettings {
    SyncSettings::default()
}

#[test]
fn one_instance_per_ready_address_and_port_with_meta_and_tags() {
    let s = svc(
        "shop",
        "web",
        &[
            (TAGS_ANNOTATION, "v2, blue,,v2"),
            ("roster.io/meta.team", "a"),
        ],
    );
    let sl = slice(
        "shop",
        "web",
        &[(8080, "http"), (9090, "")],
        vec![
            endpoint("10.0.0.1", Some("web-1"), Some(true)),
            endpoint("10.0.0.2", None, None),
        ],
    );
    let got = desired_instances(&s, &[&sl], None, &settings());
    let ids: Vec<&str> = got.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "k8s-shop-web-10.0.0.2-8080",
            "k8s-shop-web-10.0.0.2-9090",
            "k8s-shop-web-web-1-8080",
            "k8s-shop-web-web-1-9090"
        ]
    );
    let web1 = got
        .iter()
        .find(|d| d.id == "k8s-shop-web-web-1-8080")
        .unwrap();
    assert_eq!(web1.service, "web");
    assert_eq!(web1.request.address.as_deref(), Some("10.0.0.1"));
    assert_eq!(web1.request.port, 8080);
    assert_eq!(web1.request.tags, ["blue", "v2"]);
    assert_eq!(web1.request.ttl, None);
    assert!(web1.request.checks.is_empty());
    let meta = &web1.request.meta;
    assert_eq!(meta[MANAGED_BY_KEY], MANAGED_BY_VALUE);
    assert_eq!(meta["k8s-namespace"], "shop");
    assert_eq!(meta["k8s-pod"], "web-1");
    assert_eq!(meta["k8s-node"], "node-1");
    assert_eq!(meta["k8s-port-name"], "http");
    assert_eq!(meta["team"], "a");
    assert_eq!(web1.owner(), "shop/web");
    assert!(!got[0].request.meta.contains_key("k8s-pod"));
}

#[test]
fn not_ready_endpoints_are_critical_or_left_out() {
    let s = svc("shop", "web", &[]);
    let sl = slice(
        "shop",
        "web",
        &[(80, "")],
        vec![endpoint("10.0.0.3", Some("p"), Some(false))],
    );
    let got = desired_instances(&s, &[&sl], None, &settings());
    assert_eq!(got.len(), 1);
    let check = &got[0].request.checks[0];
    assert_eq!(check.id.as_deref(), Some(READY_CHECK_ID));
    assert_eq!(check.initial_status, Some(Health::Critical));
    assert_eq!(got[0].request.meta["k8s-ready"], "false");
    let skip = SyncSettings {
        include_not_ready: false,
        ..settings()
    };
    assert!(desired_instances(&s, &[&sl], None, &skip).is_empty());
}

#[test]
fn opt_in_and_out_by_service_then_namespace_then_default() {
    let off = SyncSettings {
        default_sync: false,
        ..settings()
    };
    let plain = svc("a", "x", &[]);
    let yes = svc("a", "x", &[(SYNC_ANNOTATION, "true")]);
    let no = svc("a", "x", &[(SYNC_ANNOTATION, "false")]);
    let ns_yes = namespace("a", &[(SYNC_ANNOTATION, "true")]);
    let ns_no = namespace("a", &[(SYNC_ANNOTATION, "false")]);
    assert!(sync_enabled(&plain, None, &settings()));
    assert!(!sync_enabled(&plain, None, &off));
    assert!(sync_enabled(&yes, None, &off));
    assert!(!sync_enabled(&no, None, &settings()));
    assert!(sync_enabled(&plain, Some(&ns_yes), &off));
    assert!(!sync_enabled(&plain, Some(&ns_no), &settings()));
    assert!(sync_enabled(&yes, Some(&ns_no), &off), "the Service wins");
    assert!(!sync_enabled(&no, Some(&ns_yes), &settings()));
    let system = svc("kube-system", "dns", &[(SYNC_ANNOTATION, "true")]);
    assert!(
        !sync_enabled(&system, None, &settings()),
        "excluded namespace"
    );
}

#[test]
fn naming_modes_and_annotation() {
    let s = svc("shop", "Web_API", &[]);
    assert_eq!(
        service_name(&s, NamingMode::Name).as_deref(),
        Some("web-api")
    );
    assert_eq!(
        service_name(&s, NamingMode::NameNamespace).as_deref(),
        Some("web-api-shop")
    );
    let named = svc("shop", "web", &[(NAME_ANNOTATION, "Storefront")]);
    assert_eq!(
        service_name(&named, NamingMode::NameNamespace).as_deref(),
        Some("storefront")
    );
    let long = svc(&"n".repeat(40), &"s".repeat(40), &[]);
    let name = service_name(&long, NamingMode::NameNamespace).unwrap();
    assert!(name.len() <= 63 && !name.ends_with('-'), "{name}");
    assert_eq!(sanitize_name("--"), None);
}

#[test]
fn ids_are_valid_and_bounded() {
    let id = instance_id("ns", "svc", "fd00::1", 80);
    assert_eq!(id, "k8s-ns-svc-fd00::1-80");
    let a = instance_id(&"n".repeat(63), &"s".repeat(63), &"p".repeat(100), 80);
    let b = instance_id(&"n".repeat(63), &"s".repeat(63), &"p".repeat(101), 80);
    assert!(a.len() <= 128 && b.len() <= 128);
    assert_ne!(a, b);
}

#[test]
fn dual_stack_pods_use_ipv4_and_external_name_is_skipped() {
    let s = svc("shop", "web", &[]);
    let mut v6 = slice(
        "shop",
        "web",
        &[(80, "")],
        vec![endpoint("fd00::5", Some("p"), None)],
    );
    v6.address_type = "IPv6".into();
    v6.metadata.name = Some("aaa".into());
    let v4 = slice(
        "shop",
        "web",
        &[(80, "")],
        vec![endpoint("10.0.0.5", Some("p"), None)],
    );
    let got = desired_instances(&s, &[&v6, &v4], None, &settings());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].request.address.as_deref(), Some("10.0.0.5"));
    let mut ext = svc("shop", "web", &[]);
    ext.spec = Some(k8s_openapi::api::core::v1::ServiceSpec {
        type_: Some("ExternalName".into()),
        ..Default::default()
    });
    assert!(desired_instances(&ext, &[&v4], None, &settings()).is_empty());
}
