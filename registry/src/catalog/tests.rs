//! Unit tests of the catalog state machine.

use super::*;
use crate::model::Limits;
use roster_api::RegisterRequest;

fn spec(ttl: Option<u64>) -> InstanceSpec {
    let req = RegisterRequest {
        address: Some("10.0.0.1".into()),
        port: 80,
        ttl: ttl.map(Duration::from_secs),
        deregister_critical_after: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    InstanceSpec::from_request(req, None, &Limits::default()).unwrap()
}

fn reg(svc: &str, id: &str, ttl: Option<u64>) -> Command {
    Command::Register {
        service: ServiceName::parse(svc).unwrap(),
        id: InstanceId::parse(id).unwrap(),
        spec: spec(ttl),
    }
}

#[test]
fn lease_expires_then_instance_is_reaped() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    let out = c.apply(reg("web", "a", Some(10)), t0).unwrap();
    assert_eq!(out.index, 2, "the empty catalog is at index 1");
    assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(10)));
    let out = c.apply(Command::Tick, t0 + Duration::from_secs(9)).unwrap();
    assert!(!out.changed);
    let out = c
        .apply(Command::Tick, t0 + Duration::from_secs(10))
        .unwrap();
    assert_eq!((out.changed, out.expired, out.index), (true, 1, 3));
    assert_eq!(
        c.snapshot().instance("web", "a").unwrap().health(),
        Health::Critical
    );
    let out = c
        .apply(Command::Tick, t0 + Duration::from_secs(70))
        .unwrap();
    assert_eq!(out.reaped, 1);
    assert!(c.snapshot().services.is_empty());
    assert!(c.leases().is_empty());
    assert!(c.next_deadline().is_none());
}

#[test]
fn id_belongs_to_one_service() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    c.apply(reg("web", "a", None), t0).unwrap();
    let err = c.apply(reg("db", "a", None), t0).unwrap_err();
    assert!(matches!(err, CatalogError::Conflict { .. }));
    assert_eq!(c.snapshot().index, 2);
}

#[test]
fn limits_are_enforced() {
    let t0 = Instant::now();
    let limits = CatalogLimits {
        max_instances_per_service: 2,
        max_instances: 3,
    };
    let mut c = Catalog::new(t0, limits);
    c.apply(reg("web", "a", None), t0).unwrap();
    c.apply(reg("web", "b", None), t0).unwrap();
    assert!(matches!(
        c.apply(reg("web", "c", None), t0),
        Err(CatalogError::Full { .. })
    ));
    c.apply(reg("db", "d", None), t0).unwrap();
    assert!(matches!(
        c.apply(reg("db", "e", None), t0),
        Err(CatalogError::Full { .. })
    ));
    // Replacing an existing instance is not blocked by the limit.
    c.apply(reg("web", "a", Some(5)), t0).unwrap();
}

#[test]
fn maintenance_is_critical_but_not_reaped() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    c.apply(reg("web", "a", None), t0).unwrap();
    let maint = |reason: Option<&str>| Command::SetMaintenance {
        service: ServiceName::parse("web").unwrap(),
        id: InstanceId::parse("a").unwrap(),
        reason: reason.map(Into::into),
    };
    assert!(c.apply(maint(Some("deploy")), t0).unwrap().changed);
    assert!(!c.apply(maint(Some("deploy")), t0).unwrap().changed);
    assert_eq!(
        c.snapshot().instance("web", "a").unwrap().health(),
        Health::Critical
    );
    c.apply(Command::Tick, t0 + Duration::from_secs(3600))
        .unwrap();
    assert!(c.snapshot().instance("web", "a").is_some());
    assert!(c.apply(maint(None), t0).unwrap().changed);
    assert_eq!(
        c.snapshot().instance("web", "a").unwrap().health(),
        Health::Passing
    );
}

fn reg_with_app_check(id: &str, dereg: u64) -> Command {
    let req: RegisterRequest = serde_json::from_value(serde_json::json!({
        "address": "10.0.0.1", "port": 80,
        "checks": [{"id": "app", "ttl": "10s", "deregister_critical_after": format!("{dereg}s")}]
    }))
    .unwrap();
    Command::Register {
        service: ServiceName::parse("web").unwrap(),
        id: InstanceId::parse(id).unwrap(),
        spec: InstanceSpec::from_request(req, None, &Limits::default()).unwrap(),
    }
}

fn report(id: &str, status: Health) -> Command {
    Command::SetCheck {
        service: ServiceName::parse("web").unwrap(),
        id: InstanceId::parse(id).unwrap(),
        check: "app".into(),
        status,
        output: String::new(),
        source: CheckSource::Report,
    }
}

#[test]
fn a_check_critical_past_its_deregister_time_removes_the_instance() {
    let t0 = Instant::now();
    let at = |s: u64| t0 + Duration::from_secs(s);
    let mut c = Catalog::new(t0, CatalogLimits::default());
    c.apply(reg_with_app_check("a", 30), t0).unwrap();
    c.apply(reg_with_app_check("b", 30), t0).unwrap();
    assert_eq!(c.instances_with_ttl_check("app").len(), 2);
    // Both start critical: the removal clock runs from registration, and
    // stops with the first pass.
    c.apply(report("a", Health::Passing), at(5)).unwrap();
    c.apply(report("b", Health::Passing), at(5)).unwrap();
    c.apply(report("b", Health::Passing), at(12)).unwrap();
    // a falls silent: critical at 15, removed 30 s later. b fails at 20
    // (removal due at 50), still fails at 29, recovers at 38.
    c.apply(Command::Tick, at(15)).unwrap();
    c.apply(report("b", Health::Critical), at(20)).unwrap();
    c.apply(report("b", Health::Critical), at(29)).unwrap();
    c.apply(report("b", Health::Passing), at(38)).unwrap();
    c.apply(Command::Tick, at(44)).unwrap();
    assert!(c.snapshot().instance("web", "a").is_some());
    let out = c.apply(Command::Tick, at(46)).unwrap();
    assert_eq!(out.reaped, 1);
    assert!(c.snapshot().instance("web", "a").is_none());
    assert_eq!(c.instances_with_ttl_check("app"), [Arc::from("b")]);
    c.apply(Command::Tick, at(55)).unwrap();
    assert!(
        c.snapshot().instance("web", "b").is_some(),
        "b recovered in time"
    );
    // Without its checks, b leaves the index.
    c.apply(reg("web", "b", None), at(56)).unwrap();
    assert!(c.instances_with_ttl_check("app").is_empty());
}

fn restore(index: u64, stamp: bool) -> Command {
    Command::Restore {
        index,
        names_index: 1,
        instances: Vec::new(),
        grace: Duration::ZERO,
        stamp,
    }
}

#[test]
fn a_restore_leaves_the_index_room_to_grow() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    for index in [u64::MAX, u64::MAX - 1, MAX_RESTORE_INDEX + 1] {
        let err = c.apply(restore(index, true), t0).unwrap_err();
        assert!(
            matches!(err, CatalogError::IndexTooHigh { index: i, .. } if i == index),
            "{err:?}"
        );
        assert_eq!(c.snapshot().index, 1, "a refused restore changes nothing");
    }
    let out = c.apply(restore(MAX_RESTORE_INDEX, true), t0).unwrap();
    assert_eq!(out.index, MAX_RESTORE_INDEX);
    let out = c.apply(reg("web", "a", None), t0).unwrap();
    assert_eq!(out.index, MAX_RESTORE_INDEX + 1, "the index keeps going up");
}

#[test]
fn an_exhausted_index_refuses_changes_instead_of_wrapping() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    c.apply(reg("web", "a", None), t0).unwrap();
    // The catalog's own data (the store at start-up) is loaded as it is, even
    // at the very top.
    let out = c.apply(restore(u64::MAX, false), t0).unwrap();
    assert_eq!(out.index, u64::MAX);
    let err = c.apply(reg("web", "b", None), t0).unwrap_err();
    assert!(matches!(err, CatalogError::IndexExhausted), "{err:?}");
    assert_eq!(c.snapshot().index, u64::MAX);
    assert!(c.snapshot().instance("web", "b").is_none());
    let err = c.apply(Command::Tick, t0).unwrap_err();
    assert!(matches!(err, CatalogError::IndexExhausted), "{err:?}");
}

#[test]
fn health_counts_follow_each_instance_health() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    for id in ["a", "b", "c"] {
        c.apply(reg("web", id, Some(10)), t0).unwrap();
    }
    c.apply(reg("web", "d", None), t0).unwrap();
    c.apply(
        Command::SetMaintenance {
            service: ServiceName::parse("web").unwrap(),
            id: InstanceId::parse("b").unwrap(),
            reason: Some("kernel upgrade".into()),
        },
        t0,
    )
    .unwrap();
    let snap = c.snapshot();
    let web = &snap.services.get("web").unwrap().instances;
    let counts = HealthCounts::of(web.values().map(|i| &**i));
    assert_eq!(
        (counts.passing, counts.warning, counts.critical),
        (3, 0, 1),
        "maintenance counts as critical"
    );
    // The leases of a, b and c run out; d has none.
    c.apply(Command::Tick, t0 + Duration::from_secs(10))
        .unwrap();
    let snap = c.snapshot();
    let web = &snap.services.get("web").unwrap().instances;
    let counts = HealthCounts::of(web.values().map(|i| &**i));
    assert_eq!(counts.get(Health::Passing), 1);
    assert_eq!(counts.get(Health::Critical), 3);
    assert_eq!(counts.get(Health::Warning), 0);
}

/// `n` instances over seven services (ids interleaved across them, every
/// third with a 10 s TTL), registered one by one.
fn registered(n: usize, t0: Instant) -> Catalog {
    let mut c = Catalog::new(t0, CatalogLimits::default());
    for k in 0..n {
        let ttl = (k % 3 == 0).then_some(10);
        c.apply(reg(&format!("svc{}", k % 7), &format!("i{k}"), ttl), t0)
            .unwrap();
    }
    c
}

fn instances_of(c: &Catalog) -> Vec<Instance> {
    c.snapshot()
        .services
        .values()
        .flat_map(|s| s.instances.values().map(|i| (**i).clone()))
        .collect()
}

fn dereg(svc: &str, id: &str) -> Command {
    Command::Deregister {
        service: ServiceName::parse(svc).unwrap(),
        id: InstanceId::parse(id).unwrap(),
    }
}

fn restore_of(instances: Vec<Instance>, index: u64) -> Command {
    Command::Restore {
        index,
        names_index: 1,
        instances: instances.into_iter().map(Arc::new).collect(),
        grace: Duration::ZERO,
        stamp: false,
    }
}

#[test]
fn a_restore_rebuilds_what_registrations_built_small_or_large() {
    let t0 = Instant::now();
    // Below and above the size at which a restore fills on two threads.
    for n in [50, write::PARALLEL_RESTORE + 500] {
        let source = registered(n, t0);
        let mut listed = instances_of(&source);
        listed.reverse(); // the store's order is not the services' order
        let mut c = Catalog::new(t0, CatalogLimits::default());
        c.apply(restore_of(listed, source.snapshot().index), t0)
            .unwrap();
        assert_eq!(
            c.snapshot().services,
            source.snapshot().services,
            "n={n}: the same services, instances and indexes"
        );
        let ttls = n.div_ceil(3);
        assert_eq!(c.leases().len(), ttls, "n={n}: one lease per TTL");
        assert_eq!(c.next_deadline(), Some(t0 + Duration::from_secs(10)));
        let out = c
            .apply(Command::Tick, t0 + Duration::from_secs(10))
            .unwrap();
        assert_eq!(
            (out.expired + out.held) as usize,
            ttls,
            "n={n}: every lease's timer is armed"
        );
        // The restored catalog takes writes like the one it copies.
        let err = c.apply(reg("db", "i1", None), t0).unwrap_err();
        assert!(matches!(err, CatalogError::Conflict { .. }), "n={n}");
    }
}

#[test]
fn a_restore_that_lists_an_id_twice_keeps_the_later_only() {
    let t0 = Instant::now();
    for n in [50, write::PARALLEL_RESTORE + 500] {
        let source = registered(n, t0);
        let mut listed = instances_of(&source);
        // i0 again, under a service of its own; and i1 twice in svc1.
        let mut moved = listed.iter().find(|i| &*i.id == "i0").unwrap().clone();
        moved.service = "other".into();
        let again = listed.iter().find(|i| &*i.id == "i1").unwrap().clone();
        listed.push(moved);
        listed.push(again);
        let mut c = Catalog::new(t0, CatalogLimits::default());
        c.apply(restore_of(listed, source.snapshot().index), t0)
            .unwrap();
        let snap = c.snapshot();
        assert!(snap.instance("svc0", "i0").is_none(), "n={n}");
        assert!(snap.instance("other", "i0").is_some(), "n={n}");
        assert!(snap.instance("svc1", "i1").is_some(), "n={n}");
        assert_eq!(snap.instance_count(), n, "n={n}");
        // Deregistering it where it now is works, and leaves nothing behind.
        c.apply(dereg("other", "i0"), t0).unwrap();
        assert!(!c.snapshot().services.contains_key("other"), "n={n}");
        assert_eq!(c.snapshot().instance_count(), n - 1, "n={n}");
    }
}

#[test]
fn a_restore_of_shared_instances_leaves_their_other_holders_as_they_were() {
    let t0 = Instant::now();
    let source = registered(20, t0);
    let before = source.snapshot().clone();
    // The snapshot's own instances, shared with it (as a Raft snapshot's are).
    let shared: Vec<Arc<Instance>> = before
        .services
        .values()
        .flat_map(|s| s.instances.values().cloned())
        .collect();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    let out = c
        .apply(
            Command::Restore {
                index: before.index + 10,
                names_index: 1,
                instances: shared,
                grace: Duration::ZERO,
                stamp: true,
            },
            t0,
        )
        .unwrap();
    let restored = c.snapshot().instance("svc3", "i3").unwrap().clone();
    assert_eq!(restored.modify_index, out.index, "stamped with the restore");
    assert_eq!(
        source.snapshot(),
        &before,
        "the source's instances are not stamped through the shared pointers"
    );
    assert!(before.instance("svc3", "i3").unwrap().modify_index < out.index);
}

fn reg_checked(id: &str, check: roster_api::CheckDefinition) -> Command {
    let req = RegisterRequest {
        address: Some("10.0.0.1".into()),
        port: 80,
        checks: vec![check],
        ..Default::default()
    };
    Command::Register {
        service: ServiceName::parse("web").unwrap(),
        id: InstanceId::parse(id).unwrap(),
        spec: InstanceSpec::from_request(req, None, &Limits::default()).unwrap(),
    }
}

#[test]
fn the_catalog_knows_whether_any_instance_has_an_active_check() {
    let t0 = Instant::now();
    let tcp = || roster_api::CheckDefinition {
        tcp: Some("127.0.0.1:1".into()),
        ..Default::default()
    };
    let ttl = || roster_api::CheckDefinition {
        ttl: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let mut c = Catalog::new(t0, CatalogLimits::default());
    c.apply(reg("web", "plain", Some(10)), t0).unwrap();
    c.apply(reg_checked("reported", ttl()), t0).unwrap();
    assert!(
        !c.has_active_checks(),
        "a lease and a TTL check are not run"
    );
    c.apply(reg_checked("a", tcp()), t0).unwrap();
    c.apply(reg_checked("b", tcp()), t0).unwrap();
    assert!(c.has_active_checks());
    // Re-registered without it, and removed: none left.
    c.apply(reg_checked("a", ttl()), t0).unwrap();
    assert!(c.has_active_checks(), "b still has one");
    c.apply(dereg("web", "b"), t0).unwrap();
    assert!(!c.has_active_checks());
    // A restore counts what it brings, an id listed twice once.
    c.apply(reg_checked("b", tcp()), t0).unwrap();
    let listed = instances_of(&c);
    let twice: Vec<Instance> = listed.iter().chain(listed.iter()).cloned().collect();
    let index = c.snapshot().index;
    let mut d = Catalog::new(t0, CatalogLimits::default());
    d.apply(restore_of(twice, index), t0).unwrap();
    assert!(d.has_active_checks());
    d.apply(dereg("web", "b"), t0).unwrap();
    assert!(
        !d.has_active_checks(),
        "the restored count was 1, not 2, for b listed twice"
    );
}

#[test]
fn dedup_names_keeps_the_first_of_each_in_place() {
    let names = |v: &[&str]| v.iter().map(|s| Arc::<str>::from(*s)).collect::<Vec<_>>();
    for (input, want) in [
        (&["a", "b", "a", "c", "b", "a"][..], &["a", "b", "c"][..]),
        (&["x", "x"], &["x"]),
        (&["x", "y"], &["x", "y"]),
        (&["z"], &["z"]),
        (&[], &[]),
        (&["c", "b", "a"], &["c", "b", "a"]),
    ] {
        let mut v = names(input);
        dedup_names(&mut v);
        assert_eq!(v, names(want), "{input:?}");
    }
}

/// Timers armed by one write share their due; removing some of them must
/// remove exactly those (the timer set tells them apart by a hash of the id
/// before the id itself).
#[test]
fn timers_of_one_due_are_removed_and_fired_one_by_one() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    // All of them lapse at once: the self-preservation guard would hold them.
    c.set_self_preservation(SelfPreservation {
        threshold: 0.0,
        ..SelfPreservation::default()
    });
    let items = (0..300)
        .map(|i| reg(&format!("svc{}", i % 7), &format!("i{i}"), Some(10)))
        .collect();
    c.apply(Command::Batch { items }, t0).unwrap();
    let gone: Vec<Command> = (0..300)
        .step_by(3)
        .map(|i| Command::Deregister {
            service: ServiceName::parse(&format!("svc{}", i % 7)).unwrap(),
            id: InstanceId::parse(&format!("i{i}")).unwrap(),
        })
        .collect();
    c.apply(Command::Batch { items: gone }, t0 + Duration::from_secs(1))
        .unwrap();
    let dues: Vec<u64> = c.timers.iter().map(|(due, _, _)| *due).collect();
    assert_eq!(dues.len(), 200, "one lease timer per instance left");
    assert!(dues.windows(2).all(|w| w[0] <= w[1]), "in due order");
    let out = c
        .apply(Command::Tick, t0 + Duration::from_secs(10))
        .unwrap();
    assert_eq!(out.expired, 200);
    let snap = c.snapshot();
    for i in 0..300 {
        let inst = snap.instance(&format!("svc{}", i % 7), &format!("i{i}"));
        if i % 3 == 0 {
            assert!(inst.is_none(), "i{i} was deregistered");
        } else {
            assert_eq!(inst.unwrap().health(), Health::Critical, "i{i}");
        }
    }
    // Each expired lease armed its removal: 200 timers, due together.
    assert_eq!(c.timers.iter().count(), 200);
    let out = c
        .apply(Command::Tick, t0 + Duration::from_secs(10 + 60))
        .unwrap();
    assert_eq!(out.reaped, 200);
    assert_eq!(c.timers.next_due(), None);
    assert!(c.snapshot().services.is_empty());
}

#[test]
fn an_outcome_counts_the_instances_new_to_the_catalog() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    let items = vec![
        reg("web", "a", Some(10)),
        reg("web", "b", Some(10)),
        reg("db", "c", None),
        // The same id again, changed: not new a second time.
        reg("web", "a", Some(20)),
    ];
    let out = c.apply(Command::Batch { items }, t0).unwrap();
    assert_eq!(out.created, 3);
    let out = c.apply(reg("web", "b", Some(10)), t0).unwrap();
    assert_eq!((out.changed, out.created), (false, 0), "a renewal");
    let out = c.apply(reg("web", "d", None), t0).unwrap();
    assert_eq!(out.created, 1);
    let out = c.apply(Command::Tick, t0).unwrap();
    assert_eq!(out.created, 0);
}
