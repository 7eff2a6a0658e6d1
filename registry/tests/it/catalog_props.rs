//! Property tests of the catalog state machine: random command sequences against a
//! small reference model of leases.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use roster_client::api::{CheckDefinition, Health, RegisterRequest};
use roster_registry::catalog::{
    Catalog, CatalogError, CatalogLimits, CheckSource, Command, SelfPreservation, Snapshot,
};
use roster_registry::lease::Renewal;
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

// Self-preservation ------------------------------------------------------------
//
// A fleet of instances heartbeating every ttl/3 (the client's schedule), some
// of which leave for good (a departure) while the registry may lose every
// heartbeat for a while (a registry-side blip). Time is a 250 ms grid with a
// tick on every step, so bounds are checked to the step.

/// The default `max_hold`: nothing in these tests sets it.
const MAX_HOLD: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
struct Fleet {
    /// Instances that heartbeat to the end (at least the guard's minimum).
    live: usize,
    /// Instances that stop heartbeating for good at `depart_at`.
    departed: usize,
    ttl: u64,
    dca: u64,
    window: u64,
    /// Each instance's registration offset, in steps within ttl/3.
    phases: Vec<u64>,
    depart_at: Duration,
    /// No heartbeat reaches the registry in `[start, start + len)`.
    blip: Option<(Duration, Duration)>,
}

fn fleet(blip: bool) -> impl Strategy<Value = Fleet> {
    (
        10..22usize,
        0..14usize,
        prop_oneof![Just(3u64), Just(6), Just(9)],
        5..40u64,
        prop_oneof![Just(5u64), Just(20), Just(60)],
        prop::collection::vec(0..1000u64, 36),
        20..60u64,
        // The blip starts up to ~3 minutes after the departure (before, during
        // or after its hold) and lasts up to just under max_hold.
        (0..800u64, 0..(MAX_HOLD.as_millis() as u64 / 250)),
    )
        .prop_map(
            move |(live, departed, ttl, dca, window, phases, depart_s, (blip_q, len_q))| Fleet {
                live,
                departed,
                ttl,
                dca,
                window,
                phases: phases.iter().map(|p| p % (ttl * 4 / 3)).collect(),
                depart_at: Duration::from_secs(depart_s),
                blip: blip.then(|| {
                    (
                        Duration::from_secs(depart_s) + STEP * blip_q as u32,
                        STEP * len_q as u32,
                    )
                }),
            },
        )
}

/// One node alone, or a leader and a follower fed the same log.
struct Nodes {
    leader: Catalog,
    follower: Option<Catalog>,
}

impl Nodes {
    fn new(t0: Instant, replicated: bool, guard: SelfPreservation) -> Self {
        let mut leader = Catalog::new(t0, CatalogLimits::default());
        leader.set_self_preservation(guard);
        let follower = replicated.then(|| {
            let mut f = Catalog::new(t0 + Duration::from_millis(37), CatalogLimits::default());
            f.set_self_preservation(guard);
            f.set_replicated();
            f
        });
        if replicated {
            leader.set_replicated();
        }
        Nodes { leader, follower }
    }

    /// A write that goes through the log (both nodes, the follower a little later).
    fn write(&mut self, cmd: Command, now: Instant) {
        let a = self.leader.apply(cmd.clone(), now);
        if let Some(f) = &mut self.follower {
            let b = f.apply(cmd, now + Duration::from_millis(3));
            assert_eq!(a, b);
        }
    }

    /// A heartbeat: the fast path on the leader; an expired lease through the log.
    fn heartbeat(&mut self, id: &str, now: Instant) {
        let clock = self.leader.clock(now);
        if self.leader.leases().renew("web", id, clock) != Renewal::Renewed {
            self.write(
                Command::Heartbeat {
                    service: ServiceName::parse("web").unwrap(),
                    id: InstanceId::parse(id).unwrap(),
                },
                now,
            );
        }
    }

    /// The leader's tick; replicated, its effects go through the log.
    fn tick(&mut self, now: Instant) {
        self.leader.apply(Command::Tick, now).unwrap();
        if self.follower.is_some() {
            for cmd in self.leader.take_effects() {
                self.write(cmd, now);
            }
        }
    }

    /// The state clients read (the follower's, when there is one).
    fn snapshot(&self) -> &Snapshot {
        if let Some(f) = &self.follower {
            assert_eq!(f.snapshot(), self.leader.snapshot(), "the nodes diverged");
        }
        self.follower.as_ref().unwrap_or(&self.leader).snapshot()
    }
}

/// Runs `f` and checks, at every step: no instance that keeps heartbeating
/// ever expires (a blip is shorter than max_hold); every departed instance is
/// critical by its deadline + max_hold and removed by that + its
/// deregister_critical_after; at the end the guard has let go and exactly the
/// live instances are left, all passing.
fn run_fleet(f: &Fleet, replicated: bool) -> Result<(), TestCaseError> {
    let t0 = Instant::now();
    let guard = SelfPreservation {
        threshold: 0.15,
        window: Duration::from_secs(f.window),
        min_instances: 10,
        ..SelfPreservation::default()
    };
    let mut nodes = Nodes::new(t0, replicated, guard);
    let n = f.live + f.departed;
    let ids: Vec<String> = (0..n).map(|i| format!("i{i:02}")).collect();
    let ttl = Duration::from_secs(f.ttl);
    let beat = ttl / 3;
    let dca = Duration::from_secs(f.dca);
    // Instance i registers at its phase and heartbeats every ttl/3 after.
    let start: Vec<Duration> = f.phases[..n].iter().map(|p| STEP * *p as u32).collect();
    let mut last: Vec<Option<Duration>> = vec![None; n];
    let blip_end = f.blip.map_or(Duration::ZERO, |(s, l)| s + l);
    let end = f.depart_at.max(blip_end)
        + ttl
        + MAX_HOLD
        + dca
        + Duration::from_secs(f.window)
        + Duration::from_secs(5);
    let mut t = Duration::ZERO;
    while t <= end {
        let now = t0 + t;
        let in_blip = f.blip.is_some_and(|(s, l)| t >= s && t < s + l);
        for i in 0..n {
            if t < start[i] {
                continue;
            }
            let since = t - start[i];
            let on_beat = since.as_millis().is_multiple_of(beat.as_millis());
            if since.is_zero() {
                let req = RegisterRequest {
                    address: Some("10.0.0.1".into()),
                    port: 80,
                    ttl: Some(ttl),
                    deregister_critical_after: Some(dca),
                    ..Default::default()
                };
                let spec = InstanceSpec::from_request(req, None, &Limits::default()).unwrap();
                nodes.write(
                    Command::Register {
                        service: ServiceName::parse("web").unwrap(),
                        id: InstanceId::parse(&ids[i]).unwrap(),
                        spec,
                    },
                    now,
                );
                last[i] = Some(t);
            } else if on_beat && !in_blip && (i < f.live || t < f.depart_at) {
                nodes.heartbeat(&ids[i], now);
                last[i] = Some(t);
            }
        }
        nodes.tick(now);
        let snap = nodes.snapshot();
        for i in 0..n {
            let Some(last) = last[i] else { continue };
            let inst = snap.instance("web", &ids[i]);
            if i < f.live {
                let inst = inst.expect("a live instance is never removed");
                prop_assert_eq!(
                    inst.lease,
                    Some(Health::Passing),
                    "live {} expired at {:?} (last heartbeat {:?})",
                    &ids[i],
                    t,
                    last
                );
                continue;
            }
            let deadline = last + ttl;
            if t >= deadline + MAX_HOLD + dca {
                prop_assert!(
                    inst.is_none(),
                    "departed {} still there at {:?} (deadline {:?})",
                    &ids[i],
                    t,
                    deadline
                );
            } else if t >= deadline + MAX_HOLD {
                prop_assert!(
                    inst.is_none_or(|i| i.lease == Some(Health::Critical)),
                    "departed {} still passing at {:?} (deadline {:?})",
                    &ids[i],
                    t,
                    deadline
                );
            }
        }
        t += STEP;
    }
    prop_assert!(
        !nodes.leader.self_preservation_active(),
        "the guard never let go"
    );
    prop_assert_eq!(nodes.leader.guard_status().held, 0, "held leases left over");
    let snap = nodes.snapshot();
    prop_assert_eq!(snap.instance_count(), f.live);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// A registry-side blip shorter than max_hold (every heartbeat lost, some
    /// instances having left before or during it) expires no live instance,
    /// and the guard lets go once heartbeats are back and the departed drained.
    #[test]
    fn a_blip_shorter_than_max_hold_expires_nothing(f in fleet(true)) {
        run_fleet(&f, false)?;
    }

    /// Instances that leave for good are expired within max_hold of their
    /// deadline and removed deregister_critical_after later, however many
    /// leave at once; the others never expire.
    #[test]
    fn a_departure_drains_within_max_hold(f in fleet(false)) {
        run_fleet(&f, false)?;
    }

    /// Both, in a cluster: the leader's clock decides, the log carries the
    /// effects, and the follower shows the same.
    #[test]
    fn a_blip_shorter_than_max_hold_expires_nothing_in_a_cluster(f in fleet(true)) {
        run_fleet(&f, true)?;
    }

    #[test]
    fn a_departure_drains_within_max_hold_in_a_cluster(f in fleet(false)) {
        run_fleet(&f, true)?;
    }
}
