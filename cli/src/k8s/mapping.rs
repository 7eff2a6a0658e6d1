//! The pure part of `roster sync-k8s`: from a Kubernetes `Service`, its
//! `EndpointSlice`s and its `Namespace` to the roster instances it should have.
//! No I/O here, so every rule is unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use roster_api::{CheckDefinition, Health, RegisterRequest};

use super::{NamingMode, SyncSettings};

/// Annotation (on a Service or a Namespace) that turns syncing on (`"true"`)
/// or off (`"false"`); the Service's wins over its Namespace's.
pub const SYNC_ANNOTATION: &str = "roster.io/sync";
/// Service annotation naming the roster service, whatever the naming mode.
pub const NAME_ANNOTATION: &str = "roster.io/service-name";
/// Service annotation with a comma-separated list of tags.
pub const TAGS_ANNOTATION: &str = "roster.io/tags";
/// Prefix of Service annotations copied into metadata:
/// `roster.io/meta.version: "2"` gives `version = 2`.
pub const META_ANNOTATION_PREFIX: &str = "roster.io/meta.";
/// Label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Metadata key marking the instances the registrar owns. Roster metadata
/// keys hold only letters, digits, `_`, `-` and `.`, so no `/` here.
pub const MANAGED_BY_KEY: &str = "roster-managed-by";
/// Value of [`MANAGED_BY_KEY`].
pub const MANAGED_BY_VALUE: &str = "sync-k8s";
/// Metadata key holding `NAMESPACE/NAME` of the Kubernetes Service.
pub const SERVICE_KEY: &str = "k8s-service";
/// Id of the check that keeps a not-ready endpoint critical.
pub const READY_CHECK_ID: &str = "k8s-ready";
/// TTL of that check: the longest roster allows; it is never passed.
const READY_CHECK_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest instance id roster accepts.
const MAX_ID_LEN: usize = 128;

/// One instance the registrar wants in roster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    /// Roster service name.
    pub service: String,
    /// Instance id, unique in the registry.
    pub id: String,
    /// The registration.
    pub request: RegisterRequest,
}

impl Desired {
    /// `NAMESPACE/NAME` of the Kubernetes Service behind it.
    pub fn owner(&self) -> &str {
        self.request
            .meta
            .get(SERVICE_KEY)
            .map_or("", String::as_str)
    }
}

/// `NAMESPACE/NAME`, the key of a namespaced object.
pub fn object_key(namespace: Option<&str>, name: Option<&str>) -> String {
    format!("{}/{}", namespace.unwrap_or(""), name.unwrap_or(""))
}

fn parse_bool(v: Option<&String>) -> Option<bool> {
    match v?.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" => Some(true),
        "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Whether the Service is to be synced: an excluded namespace never is; else
/// the Service's annotation, else its Namespace's, else the default.
pub fn sync_enabled(svc: &Service, ns: Option<&Namespace>, settings: &SyncSettings) -> bool {
    let namespace = svc.metadata.namespace.as_deref().unwrap_or("");
    if settings.exclude_namespaces.iter().any(|n| n == namespace) {
        return false;
    }
    let own = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| parse_bool(a.get(SYNC_ANNOTATION)));
    let inherited = || {
        ns.and_then(|n| n.metadata.annotations.as_ref())
            .and_then(|a| parse_bool(a.get(SYNC_ANNOTATION)))
    };
    own.or_else(inherited).unwrap_or(settings.default_sync)
}

/// Turns free text into a roster service name: lowercase `[a-z0-9-]`, at most
/// 63 characters, no leading or trailing `-`. `None` when nothing is left.
pub fn sanitize_name(raw: &str) -> Option<String> {
    let mapped: String = raw
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '-'
            }
        })
        .collect();
    let cut: String = mapped.trim_matches('-').chars().take(63).collect();
    let name = cut.trim_end_matches('-').to_owned();
    (!name.is_empty()).then_some(name)
}

/// The roster service name of a Kubernetes Service.
pub fn service_name(svc: &Service, mode: NamingMode) -> Option<String> {
    if let Some(name) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(NAME_ANNOTATION))
        .and_then(|n| sanitize_name(n))
    {
        return Some(name);
    }
    let name = svc.metadata.name.as_deref()?;
    match mode {
        NamingMode::Name => sanitize_name(name),
        NamingMode::NameNamespace => sanitize_name(&format!(
            "{name}-{}",
            svc.metadata.namespace.as_deref().unwrap_or("default")
        )),
    }
}

/// FNV-1a, enough to keep shortened ids apart.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `k8s-NAMESPACE-SERVICE-POD_OR_ADDRESS-PORT`, made of the characters roster
/// allows in ids and shortened (with a hash of the whole) past 128 bytes. The
/// Kubernetes Service is part of it because two Services may select one pod.
pub fn instance_id(namespace: &str, service: &str, target: &str, port: u16) -> String {
    let raw = format!("k8s-{namespace}-{service}-{target}-{port}");
    let id: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    if id.len() <= MAX_ID_LEN {
        return id;
    }
    format!("{}-{:016x}", &id[..MAX_ID_LEN - 17], fnv(&id))
}

fn tags_of(svc: &Service) -> Vec<String> {
    let set: BTreeSet<String> = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TAGS_ANNOTATION))
        .map(|t| {
            t.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    set.into_iter().collect()
}

fn valid_meta_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 128
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// The desired instances of one Service: one per endpoint address and port
/// (per endpoint when it has several addresses: they are interchangeable).
/// Empty when the Service is not synced or has no name.
pub fn desired_instances(
    svc: &Service,
    slices: &[&EndpointSlice],
    ns: Option<&Namespace>,
    settings: &SyncSettings,
) -> Vec<Desired> {
    if !sync_enabled(svc, ns, settings)
        || svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName")
    {
        return Vec::new();
    }
    let Some(service) = service_name(svc, settings.naming) else {
        return Vec::new();
    };
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let k8s_name = svc.metadata.name.clone().unwrap_or_default();
    let tags = tags_of(svc);
    let mut base_meta: BTreeMap<String, String> = BTreeMap::new();
    if let Some(annotations) = &svc.metadata.annotations {
        for (k, v) in annotations {
            if let Some(key) = k.strip_prefix(META_ANNOTATION_PREFIX)
                && valid_meta_key(key)
            {
                base_meta.insert(key.to_owned(), v.clone());
            }
        }
    }
    base_meta.insert("k8s-namespace".into(), namespace.clone());
    base_meta.insert(
        SERVICE_KEY.into(),
        object_key(Some(&namespace), Some(&k8s_name)),
    );
    base_meta.insert(MANAGED_BY_KEY.into(), MANAGED_BY_VALUE.into());

    // IPv4 slices first, so a dual-stack pod is registered by its IPv4 address.
    let mut ordered: Vec<&EndpointSlice> = slices.to_vec();
    ordered.sort_by_key(|s| (s.address_type != "IPv4", s.metadata.name.clone()));
    let mut out: BTreeMap<String, Desired> = BTreeMap::new();
    for slice in ordered {
        let ports: Vec<(u16, Option<&str>)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok().filter(|p| *p > 0)?;
                Some((port, p.name.as_deref().filter(|n| !n.is_empty())))
            })
            .collect();
        for endpoint in slice.endpoints.iter().flatten() {
            let Some(address) = endpoint.addresses.first() else {
                continue;
            };
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready && !settings.include_not_ready {
                continue;
            }
            let pod = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.name.clone());
            for &(port, port_name) in &ports {
                let id = instance_id(
                    &namespace,
                    &k8s_name,
                    pod.as_deref().unwrap_or(address),
                    port,
                );
                if out.contains_key(&id) {
                    continue;
                }
                let mut meta = base_meta.clone();
                if let Some(pod) = &pod {
                    meta.insert("k8s-pod".into(), pod.clone());
                }
                if let Some(node) = &endpoint.node_name {
                    meta.insert("k8s-node".into(), node.clone());
                }
                if let Some(name) = port_name {
                    meta.insert("k8s-port-name".into(), name.to_owned());
                }
                meta.insert("k8s-ready".into(), ready.to_string());
                let checks = if ready {
                    Vec::new()
                } else {
                    vec![CheckDefinition {
                        id: Some(READY_CHECK_ID.into()),
                        name: Some("Kubernetes readiness".into()),
                        notes: Some("the endpoint is not ready in Kubernetes".into()),
                        ttl: Some(READY_CHECK_TTL),
                        initial_status: Some(Health::Critical),
                        ..CheckDefinition::default()
                    }]
                };
                let request = RegisterRequest {
                    address: Some(address.clone()),
                    port,
                    tags: tags.clone(),
                    meta,
                    ttl: None,
                    checks,
                    ..RegisterRequest::default()
                };
                out.insert(
                    id.clone(),
                    Desired {
                        service: service.clone(),
                        id,
                        request,
                    },
                );
            }
        }
    }
    out.into_values().collect()
}

#[cfg(test)]
#[path = "mapping_tests.rs"]
mod tests;
