//! Property tests of the catalog state machine: random command sequences against a
//! small reference model of leases.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use roster_client::api::{CheckDefinition, Health, RegisterRequest};
use roster_registry::catalog::{
    Catalog, CatalogError, CatalogLimits, CheckSource, Command, Snapshot,
};
use roster_registry::model::{InstanceId, InstanceSpec, Limits, ServiceName};
use tokio::time::Instant;

const SERVICES: [&str; 2] = ["web", "db"];
const IDS: [&str; 4] = ["i0", "i1", "i2", "i3"];

#[derive(Clone, Debug)]
enum Op {
    Register {
        svc: usize,
        id: usize,
        ttl: Option<u64>,
        dca: u64,
        port: u16,
        /// TTL of an `app` check the instance reports itself.
        check: Option<u64>,
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
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..4usize, prop::option::of(1..4u64), 1..4u64, 1..3u16, prop::option::of(1..3u64))
            .prop_map(|(svc, id, ttl, dca, port, check)| Op::Register { svc, id, ttl, dca, port, check }),
        2 => (0..2usize, 0..4usize, prop_oneof![Just(Health::Passing), Just(Health::Warning), Just(Health::Critical)])
            .prop_map(|(svc, id, status)| Op::Report { svc, id, status }),
        1 => (0..2usize, 0..4usize).prop_map(|(svc, id)| Op::Deregister { svc, id }),
        3 => (0..2usize, 0..4usize).prop_map(|(svc, id)| Op::Heartbeat { svc, id }),
        1 => (0..2usize, 0..4usize, any::<bool>()).prop_map(|(svc, id, on)| Op::Maintenance { svc, id, on }),
        3 => Just(Op::Tick),
    ]
}

/// Time steps on a 250 ms grid, so ticks often land exactly on a deadline.
fn step() -> impl Strategy<Value = u64> {
    (0..10u64).prop_map(|quarter| quarter * 250)
}

fn command(op: &Op) -> Command {
    let names = |svc: usize, id: usize| {
        (
            ServiceName::parse(SERVICES[svc]).unwrap(),
            InstanceId::parse(IDS[id]).unwrap(),
        )
    };
    match *op {
        Op::Register {
            svc,
            id,
            ttl,
            dca,
            port,
            check,
        } => {
            let (service, id) = names(svc, id);
            let req = RegisterRequest {
                address: Some("10.1.2.3".into()),
                port,
                ttl: ttl.map(Duration::from_secs),
                deregister_critical_after: Some(Duration::from_secs(dca)),
                checks: check
                    .map(|secs| CheckDefinition {
                        id: Some("app".into()),
                        ttl: Some(Duration::from_secs(secs)),
                        ..Default::default()
                    })
                    .into_iter()
                    .collect(),
                ..Default::default()
            };
            let spec = InstanceSpec::from_request(req, None, &Limits::default()).unwrap();
            Command::Register { service, id, spec }
        }
        Op::Deregister { svc, id } => {
            let (service, id) = names(svc, id);
            Command::Deregister { service, id }
        }
        Op::Heartbeat { svc, id } => {
            let (service, id) = names(svc, id);
            Command::Heartbeat { service, id }
        }
        Op::Maintenance { svc, id, on } => {
            let (service, id) = names(svc, id);
            Command::SetMaintenance {
                service,
                id,
                reason: on.then(|| "test".into()),
            }
        }
        Op::Report { svc, id, status } => {
            let (service, id) = names(svc, id);
            Command::SetCheck {
                service,
                id,
                check: "app".into(),
                status,
                output: String::new(),
                source: CheckSource::Report,
            }
        }
        Op::Tick => Command::Tick,
    }
}

/// The reference model of an instance's `app` TTL check.
#[derive(Clone, Copy, Debug)]
struct AppCheck {
    ttl: Duration,
    status: Health,
    due: Duration,
}

struct CommandSpec(InstanceSpec);

fn spec_of(op: &Op) -> CommandSpec {
    match command(op) {
        Command::Register { spec, .. } => CommandSpec(spec),
        other => panic!("not a registration: {other:?}"),
    }
}

/// When each leased instance last proved itself alive, and its lease terms.
#[derive(Clone, Copy, Debug)]
struct Alive {
    at: Duration,
    ttl: Duration,
    dca: Duration,
}

fn check_indexes(snap: &Snapshot) {
    for svc in snap.services.values() {
        assert!(svc.modify_index <= snap.index);
        assert!(!svc.instances.is_empty(), "empty services are dropped");
        for inst in svc.instances.values() {
            assert!(inst.create_index <= inst.modify_index);
            assert!(inst.modify_index <= svc.modify_index);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The index only moves on change and then by exactly one; a refused command
    /// changes nothing; after every tick, an instance is critical exactly when its
    /// lease ran out, and gone once it stayed critical for deregister_critical_after.
    #[test]
    fn index_and_leases(steps in prop::collection::vec((op(), step()), 1..80)) {
        let t0 = Instant::now();
        let mut catalog = Catalog::new(t0, CatalogLimits::default());
        let mut elapsed = Duration::ZERO;
        let mut alive: HashMap<&str, Alive> = HashMap::new();
        let mut app: HashMap<&str, AppCheck> = HashMap::new();
        for (op, advance_ms) in &steps {
            elapsed += Duration::from_millis(*advance_ms);
            let now = t0 + elapsed;
            let before = catalog.snapshot().clone();
            let result = catalog.apply(command(op), now);
            let after = catalog.snapshot().clone();
            match &result {
                Ok(out) => {
                    prop_assert_eq!(out.index, after.index);
                    if out.changed {
                        prop_assert_eq!(after.index, before.index + 1);
                    } else {
                        prop_assert_eq!(&after, &before);
                    }
                }
                Err(_) => prop_assert_eq!(&after, &before, "a refused command changed the catalog"),
            }
            check_indexes(&after);
            // Exactly the services stamped with the new index (or gone) are reported
            // as touched, so watchers of the others are not woken.
            if result.as_ref().is_ok_and(|o| o.changed) {
                let touched = catalog.touched();
                for (name, svc) in &after.services {
                    prop_assert_eq!(svc.modify_index == after.index, touched.contains(name), "service {}", name);
                }
                for name in touched {
                    prop_assert!(after.services.get(name).is_none_or(|s| s.modify_index == after.index));
                }
            }
            for svc in ["web", "db", "other"] {
                prop_assert!(after.service_index(svc) >= 1, "index 0 would make blocking queries spin");
            }
            // Keep the reference model of app checks in step: a registration that
            // changes the spec restarts the check's TTL and keeps its status if the
            // check itself is unchanged; an identical one changes nothing.
            let instance_before = |id: usize| before.services.values().find_map(|s| s.instances.get(IDS[id])).cloned();
            match (op, &result) {
                (Op::Register { id, check, .. }, Ok(out)) => {
                    let key = IDS[*id];
                    match check {
                        None => {
                            app.remove(key);
                        }
                        Some(secs) => {
                            let ttl = Duration::from_secs(*secs);
                            let same_spec = instance_before(*id).is_some_and(|i| {
                                let CommandSpec(spec) = spec_of(op);
                                i.spec == spec
                            });
                            // A changed registration keeps an unchanged check as it
                            // is, deadline included; a new or changed check starts
                            // critical with a fresh TTL.
                            let kept = app.get(key).is_some_and(|a| a.ttl == ttl) && instance_before(*id).is_some();
                            if !same_spec && !kept {
                                app.insert(key, AppCheck { ttl, status: Health::Critical, due: elapsed + ttl });
                            }
                            let _ = out;
                        }
                    }
                }
                (Op::Report { id, status, .. }, Ok(_)) => {
                    let a = app.get_mut(IDS[*id]).expect("a report succeeds only on an app check");
                    a.status = *status;
                    a.due = elapsed + a.ttl;
                }
                (Op::Report { .. }, Err(e)) => {
                    prop_assert!(matches!(e, CatalogError::NotFound { .. } | CatalogError::CheckNotFound { .. }), "unexpected {:?}", e);
                }
                (Op::Deregister { id, .. }, Ok(_)) => {
                    app.remove(IDS[*id]);
                }
                _ => {}
            }
            // Keep the reference model of leases in step.
            match (op, &result) {
                (Op::Register { id, ttl, dca, .. }, Ok(_)) => match ttl {
                    Some(ttl) => {
                        alive.insert(IDS[*id], Alive {
                            at: elapsed,
                            ttl: Duration::from_secs(*ttl),
                            dca: Duration::from_secs(*dca),
                        });
                    }
                    None => {
                        alive.remove(IDS[*id]);
                    }
                },
                (Op::Heartbeat { id, .. }, Ok(_)) => {
                    if let Some(a) = alive.get_mut(IDS[*id]) {
                        a.at = elapsed;
                    }
                }
                (Op::Deregister { id, .. }, Ok(_)) => {
                    alive.remove(IDS[*id]);
                }
                (Op::Register { .. } | Op::Heartbeat { .. } | Op::Deregister { .. }, Err(e)) => {
                    prop_assert!(matches!(e, CatalogError::NotFound { .. } | CatalogError::Conflict { .. }), "unexpected {:?}", e);
                }
                _ => {}
            }
            if matches!(op, Op::Tick) {
                for (id, a) in app.clone() {
                    let Some(inst) = after.services.values().find_map(|s| s.instances.get(id)).cloned() else {
                        app.remove(id);
                        continue;
                    };
                    let want = if elapsed >= a.due { Health::Critical } else { a.status };
                    prop_assert_eq!(inst.checks[0].status, want, "app check of {}", id);
                    prop_assert!(inst.health() >= want, "health is the worst check");
                }
                for (id, a) in alive.clone() {
                    let inst = after.services.values().find_map(|s| s.instances.get(id)).cloned();
                    let expired = elapsed >= a.at + a.ttl;
                    let reaped = elapsed >= a.at + a.ttl + a.dca;
                    match inst {
                        None => {
                            prop_assert!(reaped, "{} removed before its time", id);
                            alive.remove(id);
                        }
                        Some(inst) => {
                            prop_assert!(!reaped, "{} should have been removed", id);
                            let _ = &inst;
                            let want = if expired { Health::Critical } else { Health::Passing };
                            prop_assert_eq!(inst.lease, Some(want), "lease of {}", id);
                            if expired {
                                prop_assert_eq!(inst.health(), Health::Critical);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every command the API calls idempotent leaves the same state when repeated.
    #[test]
    fn repeating_an_idempotent_command_changes_nothing(
        prefix in prop::collection::vec((op(), step()), 0..30),
        repeated in op().prop_filter("tick is not a client command", |o| !matches!(o, Op::Tick)),
    ) {
        let t0 = Instant::now();
        let mut catalog = Catalog::new(t0, CatalogLimits::default());
        let mut now = t0;
        for (op, advance_ms) in &prefix {
            now += Duration::from_millis(*advance_ms);
            let _ = catalog.apply(command(op), now);
        }
        let first = catalog.apply(command(&repeated), now);
        let once = catalog.snapshot().clone();
        let second = catalog.apply(command(&repeated), now);
        prop_assert_eq!(catalog.snapshot(), &once);
        match (first, second) {
            (Ok(_), Ok(out)) => prop_assert!(!out.changed),
            // Deregistering twice: the second finds nothing, and that is all.
            (Ok(_), Err(CatalogError::NotFound { .. })) => prop_assert!(matches!(repeated, Op::Deregister { .. }), "only deregister may fail the second time: {:?}", repeated),
            (Err(a), Err(b)) => prop_assert_eq!(a, b),
            (a, b) => prop_assert!(false, "first {:?}, then {:?}", a, b),
        }
    }
}
