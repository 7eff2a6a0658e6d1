//! Unit tests of [`Command::Batch`] and [`Command::Expect`].

use super::*;
use crate::model::Limits;
use roster_api::RegisterRequest;

fn names(svc: &str, id: &str) -> (ServiceName, InstanceId) {
    (
        ServiceName::parse(svc).unwrap(),
        InstanceId::parse(id).unwrap(),
    )
}

fn reg(svc: &str, id: &str, port: u16) -> Command {
    let (service, id) = names(svc, id);
    let req = RegisterRequest {
        address: Some("10.0.0.1".into()),
        port,
        ttl: Some(Duration::from_secs(10)),
        ..Default::default()
    };
    let spec = InstanceSpec::from_request(req, None, &Limits::default()).unwrap();
    Command::Register { service, id, spec }
}

fn dereg(svc: &str, id: &str) -> Command {
    let (service, id) = names(svc, id);
    Command::Deregister { service, id }
}

fn beat(svc: &str, id: &str) -> Command {
    let (service, id) = names(svc, id);
    Command::Heartbeat { service, id }
}

fn expect(svc: &str, id: &str, index: Option<u64>) -> Command {
    let (service, id) = names(svc, id);
    Command::Expect { service, id, index }
}

fn batch(items: Vec<Command>) -> Command {
    Command::Batch { items }
}

fn failing(err: CatalogError) -> Vec<usize> {
    match err {
        CatalogError::Batch { errors } => errors.iter().map(|e| e.index).collect(),
        other => panic!("not a batch error: {other:?}"),
    }
}

#[test]
fn a_batch_is_one_change_with_one_index() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    let items = (0..100).map(|i| reg("web", &format!("w{i}"), 80)).collect();
    let out = c.apply(batch(items), t0).unwrap();
    assert!(out.changed);
    assert_eq!(out.index, 2, "one index for the whole batch");
    let web = &c.snapshot().services["web"];
    assert_eq!(web.instances.len(), 100);
    assert!(web.instances.values().all(|i| i.create_index == 2));
    assert_eq!(c.touched().len(), 1);
    assert_eq!(c.changed().len(), 100);
}

#[test]
fn one_failing_item_applies_nothing_and_every_failure_is_named() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    c.apply(reg("db", "taken", 5432), t0).unwrap();
    let before = c.snapshot().clone();
    let mut items: Vec<Command> = (0..10).map(|i| reg("web", &format!("w{i}"), 80)).collect();
    items[3] = reg("web", "taken", 80);
    items.push(beat("web", "nobody"));
    let err = c.apply(batch(items), t0).unwrap_err();
    assert_eq!(failing(err), vec![3, 10]);
    assert_eq!(c.snapshot().index, before.index);
    assert!(!c.snapshot().services.contains_key("web"));
    assert!(
        c.leases().get("w0").is_none(),
        "no lease armed by a refused batch"
    );
    assert!(
        c.next_deadline()
            .is_some_and(|d| d == t0 + Duration::from_secs(10))
    );
}

#[test]
fn items_see_the_items_before_them() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    // Register then heartbeat the same instance; deregister one the batch
    // made; a deregistration of an unknown instance is no error.
    let out = c
        .apply(
            batch(vec![
                reg("web", "a", 80),
                beat("web", "a"),
                reg("web", "b", 80),
                dereg("web", "b"),
                dereg("web", "never"),
                expect("web", "a", None),
                expect("web", "b", Some(0)),
            ]),
            t0,
        )
        .unwrap();
    assert!(out.changed);
    let web = &c.snapshot().services["web"];
    assert!(web.instances.contains_key("a") && !web.instances.contains_key("b"));
    // Heartbeat after a deregistration in the same batch fails.
    let err = c
        .apply(batch(vec![dereg("web", "a"), beat("web", "a")]), t0)
        .unwrap_err();
    assert_eq!(failing(err), vec![1]);
}

#[test]
fn capacity_counts_the_batch_itself() {
    let t0 = Instant::now();
    let limits = CatalogLimits {
        max_instances_per_service: 3,
        max_instances: 100,
    };
    let mut c = Catalog::new(t0, limits);
    c.apply(reg("web", "a", 80), t0).unwrap();
    let err = c
        .apply(
            batch(vec![
                reg("web", "b", 80),
                reg("web", "c", 80),
                reg("web", "d", 80),
            ]),
            t0,
        )
        .unwrap_err();
    assert_eq!(failing(err), vec![2]);
    // Room made by a deregistration earlier in the batch counts.
    c.apply(
        batch(vec![
            dereg("web", "a"),
            reg("web", "b", 80),
            reg("web", "c", 80),
            reg("web", "d", 80),
        ]),
        t0,
    )
    .unwrap();
    assert_eq!(c.snapshot().services["web"].instances.len(), 3);
}

#[test]
fn conditions_compare_modify_indexes() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    let out = c.apply(reg("web", "a", 80), t0).unwrap();
    let at = out.index;
    // Compare-and-set: the change applies only at the expected index.
    let stale = c.apply(
        batch(vec![expect("web", "a", Some(at + 7)), reg("web", "a", 81)]),
        t0,
    );
    assert!(matches!(
        stale,
        Err(CatalogError::Batch { ref errors }) if matches!(errors[0].error, CatalogError::Unexpected { actual: Some(a), .. } if a == at)
    ));
    assert_eq!(c.snapshot().instance("web", "a").unwrap().spec.port, 80);
    let out = c
        .apply(
            batch(vec![expect("web", "a", Some(at)), reg("web", "a", 81)]),
            t0,
        )
        .unwrap();
    assert_eq!(c.snapshot().instance("web", "a").unwrap().spec.port, 81);
    // Alone, a condition changes nothing and says why it fails.
    let same = c.apply(expect("web", "a", Some(out.index)), t0).unwrap();
    assert!(!same.changed);
    assert_eq!(same.index, out.index);
    let absent = c.apply(expect("web", "a", Some(0)), t0).unwrap_err();
    assert!(
        absent.to_string().contains("must not be registered"),
        "{absent}"
    );
}

#[test]
fn a_batch_holds_only_instance_writes() {
    let t0 = Instant::now();
    let mut c = Catalog::new(t0, CatalogLimits::default());
    let err = c
        .apply(
            batch(vec![reg("web", "a", 80), Command::Tick, batch(vec![])]),
            t0,
        )
        .unwrap_err();
    assert_eq!(failing(err), vec![1, 2]);
    let too_many = (0..=MAX_BATCH_ITEMS)
        .map(|i| reg("web", &format!("w{i}"), 80))
        .collect();
    assert!(matches!(
        c.apply(batch(too_many), t0),
        Err(CatalogError::Full { .. })
    ));
    assert!(c.snapshot().services.is_empty());
}

#[test]
fn the_registry_wide_limit_counts_the_batch_across_services() {
    let t0 = Instant::now();
    let limits = CatalogLimits {
        max_instances_per_service: 100,
        max_instances: 4,
    };
    let mut c = Catalog::new(t0, limits);
    c.apply(reg("a", "x", 80), t0).unwrap();
    let err = c
        .apply(
            batch(vec![
                reg("b", "b1", 80),
                reg("b", "b2", 80),
                reg("c", "c1", 80),
                reg("c", "c2", 80),
            ]),
            t0,
        )
        .unwrap_err();
    assert_eq!(failing(err), vec![3], "the fifth instance in all");
    // A deregistration in another service makes room for all four.
    c.apply(
        batch(vec![
            dereg("a", "x"),
            reg("b", "b1", 80),
            reg("b", "b2", 80),
            reg("c", "c1", 80),
            reg("c", "c2", 80),
        ]),
        t0,
    )
    .unwrap();
    assert_eq!(c.snapshot().services.len(), 2);
}
