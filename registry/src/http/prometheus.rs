//! `GET /v1/prometheus/targets`: the catalog as Prometheus' HTTP service
//! discovery (`http_sd_configs`) reads it, so Prometheus finds what to scrape
//! without the Consul SD (which Debian's build of Prometheus leaves out).
//!
//! One target group per instance, not per service: Prometheus applies a
//! group's labels to all its targets, and an instance's id, tags, health and
//! metadata are its own. Every instance is listed by default, critical ones
//! too: a scrape that fails is worth seeing, and health is a label to relabel
//! on (`?passing=true` leaves critical instances out instead).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv6Addr;

use axum::Json;
use axum::extract::State;
use axum::response::Response;
use roster_api::Health;
use serde::Serialize;

use super::extract::QueryPairs;
use super::watch::{Blocking, wait_for_list};
use super::{ApiError, AppState, with_index};
use crate::catalog::{Instance, Snapshot};
use crate::model::{Limits, ServiceName};

/// Prefix of every label this endpoint sets, after Prometheus' `__meta_`
/// convention for discovery labels (dropped after relabeling).
const PREFIX: &str = "__meta_roster_";

/// Most services one query may name: the query string is bounded by the
/// header limit anyway, this keeps the set small and the error clear.
const MAX_SERVICES: usize = 256;

/// One entry of the `http_sd` answer: the targets and the labels they share.
#[derive(Debug, Serialize)]
struct TargetGroup {
    targets: [String; 1],
    labels: BTreeMap<String, String>,
}

/// What a query asks for, validated.
#[derive(Debug, Default)]
struct Filter {
    /// Only these services; `None`: all of them.
    services: Option<BTreeSet<ServiceName>>,
    /// Instances carrying every one of these tags.
    tags: Vec<String>,
    /// Leave out critical instances.
    passing: bool,
}

impl Filter {
    fn parse(query: &QueryPairs, limits: &Limits) -> Result<Filter, ApiError> {
        let mut services = None;
        for raw in query.all("service") {
            let set = services.get_or_insert_with(BTreeSet::new);
            // Service names never hold a comma: `a,b` can only mean two names.
            for name in raw.split(',') {
                set.insert(ServiceName::parse(name.trim())?);
            }
            if set.len() > MAX_SERVICES {
                return Err(ApiError::invalid(
                    "service",
                    format!("at most {MAX_SERVICES} services per query"),
                ));
            }
        }
        let mut tags: Vec<String> = Vec::new();
        for tag in query.all("tag") {
            // A registration's rules: a tag no instance could carry is a
            // mistake in the query, not a filter that matches nothing.
            if tag.is_empty() || tag.len() > limits.max_label_len {
                return Err(ApiError::invalid(
                    "tag",
                    format!(
                        "tags are 1 to {} bytes long, got {}",
                        limits.max_label_len,
                        tag.len()
                    ),
                ));
            }
            if tag.chars().any(char::is_control) {
                return Err(ApiError::invalid(
                    "tag",
                    "control characters are not allowed",
                ));
            }
            if !tags.iter().any(|t| t == tag) {
                tags.push(tag.to_owned());
            }
        }
        if tags.len() > limits.max_tags {
            return Err(ApiError::invalid(
                "tag",
                format!(
                    "at most {} tags per query (no instance carries more)",
                    limits.max_tags
                ),
            ));
        }
        Ok(Filter {
            services,
            tags,
            passing: query.flag("passing")?.unwrap_or(false),
        })
    }

    fn admits(&self, inst: &Instance) -> bool {
        (!self.passing || inst.health() != Health::Critical)
            && self
                .tags
                .iter()
                .all(|t| inst.spec.tags.iter().any(|x| x == t))
    }
}

/// `GET /v1/prometheus/targets[?service=a,b][&tag=t][&passing=true]`.
pub(super) async fn targets(
    State(state): State<AppState>,
    query: QueryPairs,
) -> Result<Response, ApiError> {
    let filter = Filter::parse(&query, &state.limits)?;
    // Blocking on the global index: any change wakes it, filtered or not.
    if let Some(q) = Blocking::parse(&query)? {
        wait_for_list(&state, q).await;
    }
    let snap = state.registry.snapshot();
    let groups = target_groups(&snap, &filter, &state.consul.datacenter);
    Ok(with_index(snap.index, Json(groups)))
}

/// The groups of every instance `filter` admits, by service name, then id.
fn target_groups(snap: &Snapshot, filter: &Filter, datacenter: &str) -> Vec<TargetGroup> {
    let services: Vec<_> = match &filter.services {
        Some(names) => names
            .iter()
            .filter_map(|n| snap.services.get(n.as_str()))
            .collect(),
        None => snap.services.values().collect(),
    };
    services
        .into_iter()
        .flat_map(|svc| svc.instances.values())
        .filter(|inst| filter.admits(inst))
        .map(|inst| group(inst, datacenter))
        .collect()
}

/// The target group of one instance.
fn group(inst: &Instance, datacenter: &str) -> TargetGroup {
    let spec = &inst.spec;
    let label = |name: &str| format!("{PREFIX}{name}");
    let mut labels = BTreeMap::from([
        (label("service"), inst.service.to_string()),
        (label("instance_id"), inst.id.to_string()),
        (label("address"), spec.address.clone()),
        (label("port"), spec.port.to_string()),
        (label("tags"), tag_list(&spec.tags)),
        (label("health"), inst.health().as_str().to_owned()),
        (label("datacenter"), datacenter.to_owned()),
    ]);
    for (key, value) in &spec.meta {
        let name = label(&format!("metadata_{}", sanitize(key)));
        // Keys that differ only in '-' or '.' make the same label: the key
        // already written that way wins, otherwise the first in key order,
        // so the answer never depends on chance.
        if is_label_name(key) || !labels.contains_key(&name) {
            labels.insert(name, value.clone());
        }
    }
    TargetGroup {
        targets: [target(&spec.address, spec.port)],
        labels,
    }
}

/// `host:port`, with an IPv6 address in brackets (`[::1]:80`), as Prometheus
/// parses `__address__`.
fn target(address: &str, port: u16) -> String {
    if address.parse::<Ipv6Addr>().is_ok() {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    }
}

/// Tags as Prometheus' Consul SD joins them: with the separator around the
/// list too (`,a,b,`; `,,` without tags), so a relabel regex such as
/// `.*,v2,.*` matches a whole tag wherever it stands.
fn tag_list(tags: &[String]) -> String {
    format!(",{},", tags.join(","))
}

/// A metadata key as a label-name suffix: Prometheus allows `[a-zA-Z0-9_]`,
/// every other character (`-` and `.` in a valid key) becomes `_`.
fn sanitize(key: &str) -> String {
    key.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn is_label_name(key: &str) -> bool {
    key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_bracket_ipv6_only() {
        assert_eq!(target("10.0.0.1", 80), "10.0.0.1:80");
        assert_eq!(target("2001:db8::7", 9100), "[2001:db8::7]:9100");
        assert_eq!(target("::ffff:10.0.0.1", 1), "[::ffff:10.0.0.1]:1");
        assert_eq!(target("db-1.example.com", 5432), "db-1.example.com:5432");
    }

    #[test]
    fn tags_are_wrapped_in_separators() {
        assert_eq!(tag_list(&[]), ",,");
        assert_eq!(tag_list(&["v2".into()]), ",v2,");
        assert_eq!(tag_list(&["a".into(), "b c".into()]), ",a,b c,");
    }

    #[test]
    fn metadata_keys_become_label_names() {
        assert_eq!(sanitize("zone"), "zone");
        assert_eq!(sanitize("app.kubernetes.io-name"), "app_kubernetes_io_name");
        assert_eq!(sanitize("9_lives"), "9_lives");
        assert!(is_label_name("a_B9") && !is_label_name("a-b"));
    }

    #[test]
    fn a_key_already_a_label_name_wins_a_clash() {
        let inst = |meta: &[(&str, &str)]| {
            let mut catalog = crate::catalog::Catalog::new(
                tokio::time::Instant::now(),
                crate::catalog::CatalogLimits::default(),
            );
            let req = roster_api::RegisterRequest {
                address: Some("10.0.0.1".into()),
                port: 80,
                meta: meta
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ..Default::default()
            };
            let spec = crate::model::InstanceSpec::from_request(req, None, &Limits::default())
                .expect("valid registration");
            catalog
                .apply(
                    crate::catalog::Command::Register {
                        service: ServiceName::parse("web").unwrap(),
                        id: crate::model::InstanceId::parse("web-1").unwrap(),
                        spec,
                    },
                    tokio::time::Instant::now(),
                )
                .unwrap();
            catalog.snapshot().instance("web", "web-1").unwrap().clone()
        };
        let key = "__meta_roster_metadata_a_b";
        // '-' sorts before '.' and '_': without the rule "a-b" would win.
        let g = group(
            &inst(&[("a-b", "dash"), ("a.b", "dot"), ("a_b", "plain")]),
            "dc1",
        );
        assert_eq!(g.labels[key], "plain");
        let g = group(&inst(&[("a.b", "dot"), ("a-b", "dash")]), "dc1");
        assert_eq!(g.labels[key], "dash", "otherwise the first in key order");
    }
}
