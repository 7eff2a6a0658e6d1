//! Consul's JSON shapes, rendered from the catalog.
//!
//! Field names and types follow Consul's HTTP API documentation. The whole
//! registry appears as one node (the "agent"): every instance is a service
//! registered on it, and every instance carries its own `ServiceAddress`, which
//! is what Prometheus' `consul_sd` and Traefik's Consul catalog provider read
//! first.

use std::collections::BTreeMap;

use roster_api::Health;
use serde::Serialize;
use serde_json::{Value, json};

use crate::catalog::Instance;
use crate::checks::{LEASE_CHECK, Target};

/// The synthetic node and datacenter every answer is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulNode {
    /// Datacenter name (`?dc=` must match it).
    pub datacenter: String,
    /// Node name.
    pub name: String,
    /// Node id, a UUID derived from the name so it is stable across restarts.
    pub id: String,
    /// The node's address: the registry's own.
    pub address: String,
    /// `host:port` reported as the leader and only peer.
    pub server: String,
}

impl ConsulNode {
    /// A node called `name` at `address`, serving on `port`.
    pub fn new(datacenter: &str, name: &str, address: std::net::IpAddr, port: u16) -> Self {
        let address = if address.is_unspecified() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            address
        };
        ConsulNode {
            datacenter: datacenter.to_owned(),
            name: name.to_owned(),
            id: uuid_from(name),
            address: address.to_string(),
            server: std::net::SocketAddr::new(address, port).to_string(),
        }
    }

    /// The node object (`Node` of `catalog/nodes` and `health/service`).
    pub fn node_json(&self, index: u64) -> Value {
        json!({
            "ID": self.id,
            "Node": self.name,
            "Address": self.address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": { "lan": self.address, "wan": self.address },
            "Meta": { "roster": "true" },
            "CreateIndex": 1,
            "ModifyIndex": index.max(1),
        })
    }
}

/// A stable UUID-shaped id from a name (FNV-1a, twice).
fn uuid_from(name: &str) -> String {
    let fnv = |seed: u64| {
        name.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let (a, b) = (fnv(0xcbf2_9ce4_8422_2325), fnv(0x8422_2325_cbf2_9ce4));
    let hex = format!("{a:016x}{b:016x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `Weights` as Consul spells it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: u32,
    warning: u32,
}

fn weights(inst: &Instance) -> Weights {
    Weights {
        passing: inst.spec.weights.passing,
        warning: inst.spec.weights.warning,
    }
}

/// An agent service (`agent/services`, `Service` of `health/service`).
pub fn agent_service(inst: &Instance, node: &ConsulNode) -> Value {
    json!({
        "ID": &*inst.id,
        "Service": &*inst.service,
        "Tags": inst.spec.tags,
        "Meta": inst.spec.meta,
        "Port": inst.spec.port,
        "Address": inst.spec.address,
        "Weights": weights(inst),
        "EnableTagOverride": false,
        "Datacenter": node.datacenter,
        "CreateIndex": inst.create_index,
        "ModifyIndex": inst.modify_index,
    })
}

/// One row of `catalog/service/{service}`.
pub fn catalog_service(inst: &Instance, node: &ConsulNode) -> Value {
    json!({
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": { "lan": node.address, "wan": node.address },
        "NodeMeta": { "roster": "true" },
        "ServiceKind": "",
        "ServiceID": &*inst.id,
        "ServiceName": &*inst.service,
        "ServiceTags": inst.spec.tags,
        "ServiceAddress": inst.spec.address,
        "ServiceWeights": weights(inst),
        "ServiceMeta": inst.spec.meta,
        "ServicePort": inst.spec.port,
        "ServiceEnableTagOverride": false,
        "CreateIndex": inst.create_index,
        "ModifyIndex": inst.modify_index,
    })
}

/// The check id Consul clients see for the instance's lease.
pub fn lease_check_id(instance: &str) -> String {
    format!("service:{instance}:{LEASE_CHECK}")
}

/// The check id of the synthetic maintenance check, as Consul names it.
pub fn maintenance_check_id(instance: &str) -> String {
    format!("_service_maintenance:{instance}")
}

/// Every check of an instance in Consul's shape: the lease, the registered
/// checks, and Consul's maintenance check while in maintenance.
pub fn checks(inst: &Instance, node: &ConsulNode) -> Vec<Value> {
    let base = |id: String, name: String, status: Health, output: &str, kind: &str| {
        json!({
            "Node": node.name,
            "CheckID": id,
            "Name": name,
            "Status": status.as_str(),
            "Notes": "",
            "Output": output,
            "ServiceID": &*inst.id,
            "ServiceName": &*inst.service,
            "ServiceTags": inst.spec.tags,
            "Type": kind,
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": inst.create_index,
            "ModifyIndex": inst.modify_index,
        })
    };
    let mut out = Vec::new();
    if let Some(status) = inst.lease {
        let output = if status == Health::Critical {
            "TTL expired"
        } else {
            "lease renewed"
        };
        out.push(base(
            lease_check_id(&inst.id),
            format!("Service '{}' lease", inst.service),
            status,
            output,
            "ttl",
        ));
    }
    for (def, state) in inst.spec.checks.iter().zip(&inst.checks) {
        let name = def
            .name
            .clone()
            .unwrap_or_else(|| format!("Service '{}' check", inst.service));
        let mut check = base(
            def.id.to_string(),
            name,
            state.status,
            &state.output,
            def.kind().as_str(),
        );
        if let Some(notes) = &def.notes {
            check["Notes"] = json!(notes);
        }
        if def.is_active() {
            check["Interval"] = json!(roster_api::duration::format(def.interval));
            check["Timeout"] = json!(roster_api::duration::format(def.timeout));
        }
        if let Target::Ttl { ttl } = def.target {
            check["Definition"] = json!({ "TTL": roster_api::duration::format(ttl) });
        }
        out.push(check);
    }
    if let Some(reason) = &inst.maintenance {
        let mut check = base(
            maintenance_check_id(&inst.id),
            "Service Maintenance Mode".into(),
            Health::Critical,
            "",
            "maintenance",
        );
        check["Notes"] = json!(reason);
        out.push(check);
    }
    out
}

/// One row of `health/service/{service}` for an instance of another
/// datacenter (a failover answer): the node is the remote datacenter, the
/// checks are the instance's as that datacenter reported them.
pub fn remote_health_row(inst: &roster_api::Instance, datacenter: &str) -> Value {
    let node = format!("roster-{datacenter}");
    let checks: Vec<Value> = inst
        .checks
        .iter()
        .map(|c| {
            json!({
                "Node": node,
                "CheckID": c.id,
                "Name": c.name.clone().unwrap_or_else(|| format!("Service '{}' check", inst.service)),
                "Status": c.status.as_str(),
                "Notes": c.notes.clone().unwrap_or_default(),
                "Output": c.output,
                "ServiceID": inst.id,
                "ServiceName": inst.service,
                "ServiceTags": inst.tags,
                "Type": "",
                "CreateIndex": inst.create_index,
                "ModifyIndex": inst.modify_index,
            })
        })
        .collect();
    json!({
        "Node": {
            "ID": uuid_from(&node),
            "Node": node,
            "Address": inst.address,
            "Datacenter": datacenter,
            "TaggedAddresses": { "lan": inst.address, "wan": inst.address },
            "Meta": { "roster": "true" },
            "CreateIndex": 1,
            "ModifyIndex": inst.modify_index.max(1),
        },
        "Service": {
            "ID": inst.id,
            "Service": inst.service,
            "Tags": inst.tags,
            "Meta": inst.meta,
            "Port": inst.port,
            "Address": inst.address,
            "Weights": { "Passing": inst.weights.passing, "Warning": inst.weights.warning },
            "EnableTagOverride": false,
            "Datacenter": datacenter,
            "CreateIndex": inst.create_index,
            "ModifyIndex": inst.modify_index,
        },
        "Checks": checks,
    })
}

/// Union of the tags of a service's instances, sorted.
pub fn service_tags<'a>(instances: impl Iterator<Item = &'a Instance>) -> Vec<String> {
    let mut tags: BTreeMap<&str, ()> = BTreeMap::new();
    for inst in instances {
        for t in &inst.spec.tags {
            tags.insert(t, ());
        }
    }
    tags.into_keys().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_look_like_uuids_and_are_stable() {
        let id = uuid_from("roster-0");
        assert_eq!(id, uuid_from("roster-0"));
        assert_ne!(id, uuid_from("roster-1"));
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
    }

    #[test]
    fn unspecified_addresses_become_loopback() {
        let n = ConsulNode::new("dc1", "r", "0.0.0.0".parse().unwrap(), 8500);
        assert_eq!(
            (n.address.as_str(), n.server.as_str()),
            ("127.0.0.1", "127.0.0.1:8500")
        );
    }
}
