//! Failover to another datacenter in EDS: when no local instance of a
//! service is up and its failover list names a datacenter that has some,
//! that datacenter's healthy instances are added as a locality of lower
//! priority (Envoy's and gRPC's own failover: traffic moves to priority 1
//! while priority 0 has nothing healthy, and back when it has).

use std::net::IpAddr;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::{Address, HealthStatus, Locality, SocketAddress};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use roster_api::Health;

use super::resources::Name;
use crate::catalog::ServiceState;
use crate::federation::failover::{Failover, RemoteAnswer};

/// The remote answer `state`'s service fails over to now, if any: only when
/// none of its local instances is passing or warning (maintenance counts as
/// down), as for the HTTP and DNS answers. Never waits; a datacenter not
/// asked yet starts being followed and shows up with the next change.
pub(super) fn remote_for(
    failover: Option<&Failover>,
    service: &str,
    state: &ServiceState,
) -> Option<Arc<RemoteAnswer>> {
    let failover = failover?;
    if failover.targets(service).is_empty()
        || state
            .instances
            .values()
            .any(|i| i.maintenance.is_none() && i.health() != Health::Critical)
    {
        return None;
    }
    let remote = failover.resolve_now(service)?;
    failover.served(&remote.datacenter);
    Some(remote)
}

/// Adds `remote`'s healthy instances (with the tag of `parsed`, and an IP
/// address) to `cla` as one locality named after their datacenter, at the
/// priority after the local ones (0 when there are no local endpoints:
/// priorities must start at 0).
pub(super) fn add_remote(cla: &mut ClusterLoadAssignment, parsed: &Name, remote: &RemoteAnswer) {
    let priority = u32::from(!cla.endpoints.is_empty());
    let clamp = |w: u32| w.clamp(1, u32::from(u16::MAX));
    let mut total = 0u32;
    let lb_endpoints: Vec<LbEndpoint> = remote
        .instances
        .iter()
        .filter(|i| {
            parsed
                .tag
                .as_ref()
                .is_none_or(|tag| i.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
        })
        .filter_map(|i| {
            let ip = i.address.parse::<IpAddr>().ok()?;
            let weight = match i.health {
                Health::Passing => clamp(i.weights.passing),
                Health::Warning => clamp(i.weights.warning),
                Health::Critical => return None,
            };
            total = total.saturating_add(weight);
            Some(LbEndpoint {
                health_status: HealthStatus::Healthy as i32,
                load_balancing_weight: Some(UInt32Value { value: weight }),
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(Address {
                        address: Some(AddressKind::SocketAddress(SocketAddress {
                            address: ip.to_string(),
                            port_specifier: Some(PortSpecifier::PortValue(u32::from(i.port))),
                            ..SocketAddress::default()
                        })),
                    }),
                    hostname: i.id.clone(),
                    ..Endpoint::default()
                })),
                ..LbEndpoint::default()
            })
        })
        .collect();
    if lb_endpoints.is_empty() {
        return;
    }
    cla.endpoints.push(LocalityLbEndpoints {
        locality: Some(Locality {
            region: remote.datacenter.clone(),
            ..Locality::default()
        }),
        load_balancing_weight: Some(UInt32Value {
            value: total.max(1),
        }),
        lb_endpoints,
        priority,
        ..LocalityLbEndpoints::default()
    });
}
