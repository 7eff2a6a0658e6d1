//! Property test of replication: a leader and a follower catalog, both in
//! replicated mode, fed the same log, stay identical, whatever the leader's
//! soft state (heartbeats, its lease clock) did in between and however often
//! leadership moves. Every logged command also goes through its wire form.

use std::time::Duration;

use proptest::prelude::*;
use roster_client::api::{CheckDefinition, Health, RegisterRequest};
use roster_registry::catalog::{Catalog, CatalogLimits, CheckSource, Command};
use roster_registry::cluster::ops::Op as Wire;
use roster_registry::lease::Renewal;
use roster_registry::model::{InstanceId, InstanceSpec, Limits, ServiceName};
use tokio::time::Instant;

const SERVICES: [&str; 2] = ["web", "db"];
const IDS: [&str; 4] = ["i0", "i1", "i2", "i3"];

#[derive(Clone, Debug)]
enum Step {
    Register {
        svc: usize,
        id: usize,
        ttl: Option<u64>,
        port: u16,
        check: bool,
    },
    Report {
        svc: usize,
        id: usize,
        status: Health,
    },
    Deregister {
        svc: usize,
        id: usize,
    },
    Heartbeat {
        svc: usize,
        id: usize,
    },
    Maintenance {
        svc: usize,
        id: usize,
        on: bool,
    },
    Tick,
    /// The follower becomes the leader (and the leader a follower).
    Failover,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..2usize, 0..4usize, prop::option::of(1..3u64), 1..3u16, any::<bool>())
            .prop_map(|(svc, id, ttl, port, check)| Step::Register { svc, id, ttl, port, check }),
        2 => (0..2usize, 0..4usize, prop_oneof![Just(Health::Passing), Just(Health::Critical)])
            .prop_map(|(svc, id, status)| Step::Report { svc, id, status }),
        1 => (0..2usize, 0..4usize).prop_map(|(svc, id)| Step::Deregister { svc, id }),
        3 => (0..2usize, 0..4usize).prop_map(|(svc, id)| Step::Heartbeat { svc, id }),
        1 => (0..2usize, 0..4usize, any::<bool>()).prop_map(|(svc, id, on)| Step::Maintenance { svc, id, on }),
        4 => Just(Step::Tick),
        1 => Just(Step::Failover),
    ]
}

fn names(svc: usize, id: usize) -> (ServiceName, InstanceId) {
    (
        ServiceName::parse(SERVICES[svc]).unwrap(),
        InstanceId::parse(IDS[id]).unwrap(),
    )
}

fn register(svc: usize, id: usize, ttl: Option<u64>, port: u16, check: bool) -> Command {
    let (service, id) = names(svc, id);
    let req = RegisterRequest {
        address: Some("10.0.0.1".into()),
        port,
        ttl: ttl.map(Duration::from_secs),
        deregister_critical_after: Some(Duration::from_secs(2)),
        checks: if check {
            vec![CheckDefinition {
                id: Some("app".into()),
                ttl: Some(Duration::from_secs(1)),
                ..CheckDefinition::default()
            }]
        } else {
            Vec::new()
        },
        ..RegisterRequest::default()
    };
    let limits = Limits {
        ttl_range: (Duration::from_millis(1), Duration::from_secs(3600)),
        dereg_range: (Duration::from_millis(1), Duration::from_secs(3600)),
        ..Limits::default()
    };
    let spec = InstanceSpec::from_request(req, None, &limits).unwrap();
    Command::Register { service, id, spec }
}

/// Through the wire form, as the log carries it.
fn wire(cmd: &Command) -> Command {
    let op = Wire::from_command(cmd).expect("a replicated command");
    let json = serde_json::to_vec(&op).unwrap();
    let back: Wire = serde_json::from_slice(&json).unwrap();
    back.into_command().unwrap()
}

struct Node {
    catalog: Catalog,
}

impl Node {
    fn new(epoch: Instant) -> Self {
        let mut catalog = Catalog::new(epoch, CatalogLimits::default());
        catalog.set_replicated();
        Node { catalog }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn leader_and_follower_stay_identical(
        steps in prop::collection::vec((step(), 0..6u64), 1..120)
    ) {
        let start = Instant::now();
        // The nodes' lease clocks start at different times, as on real machines.
        let mut nodes = [Node::new(start), Node::new(start + Duration::from_millis(37))];
        let mut leader = 0usize;
        let mut now = start + Duration::from_secs(1);
        // Effects the leader's ticks decided, not yet in the log: in flight, as
        // proposals are. They enter the log before any later write; a failover
        // loses them.
        let mut pending: Vec<Command> = Vec::new();
        for (s, quarters) in steps {
            now += Duration::from_millis(quarters * 250);
            // What goes into the log at this step.
            let mut log: Vec<Command> = Vec::new();
            match s {
                Step::Register { svc, id, ttl, port, check } => log.push(register(svc, id, ttl, port, check)),
                Step::Report { svc, id, status } => {
                    let (service, id) = names(svc, id);
                    log.push(Command::SetCheck {
                        service,
                        id,
                        check: "app".into(),
                        status,
                        output: String::new(),
                        source: CheckSource::Report,
                    });
                }
                Step::Deregister { svc, id } => {
                    let (service, id) = names(svc, id);
                    log.push(Command::Deregister { service, id });
                }
                Step::Maintenance { svc, id, on } => {
                    let (service, id) = names(svc, id);
                    log.push(Command::SetMaintenance { service, id, reason: on.then(|| "m".into()) });
                }
                Step::Heartbeat { svc, id } => {
                    // Soft state on the leader; only a lease it found expired
                    // goes through the log.
                    let l = &nodes[leader].catalog;
                    let clock = l.clock(now);
                    if l.leases().renew(SERVICES[svc], IDS[id], clock) != Renewal::Renewed {
                        let (service, id) = names(svc, id);
                        log.push(Command::Heartbeat { service, id });
                    }
                }
                Step::Tick => {
                    let l = &mut nodes[leader].catalog;
                    let out = l.apply(Command::Tick, now).unwrap();
                    prop_assert!(!out.changed, "a replicated tick changes nothing itself");
                    pending.extend(l.take_effects());
                }
                Step::Failover => {
                    pending.clear();
                    leader = 1 - leader;
                    // The new leader rebuilds its soft state from the shared state.
                    let l = &mut nodes[leader].catalog;
                    let snap = l.snapshot().clone();
                    l.rearm(now, Duration::from_millis(500));
                    prop_assert_eq!(l.snapshot(), &snap, "re-arming leases changes no shared state");
                }
            }
            if !log.is_empty() {
                log.splice(0..0, pending.drain(..));
            }
            for cmd in log {
                let cmd = wire(&cmd);
                // The follower applies a little later than the leader.
                let a = nodes[leader].catalog.apply(cmd.clone(), now);
                let b = nodes[1 - leader]
                    .catalog
                    .apply(cmd.clone(), now + Duration::from_millis(3));
                prop_assert_eq!(&a, &b, "same result for {:?}", cmd);
            }
            prop_assert_eq!(nodes[0].catalog.snapshot(), nodes[1].catalog.snapshot());
        }
    }
}
