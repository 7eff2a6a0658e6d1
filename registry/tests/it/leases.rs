//! Lease behaviour of the running registry (catalog + reaper task), on tokio's
//! paused clock: hours of lease time run in milliseconds, with no wall-clock
//! assertions.

use std::sync::Arc;
use std::time::Duration;

use roster_client::api::{Health, RegisterRequest};
use roster_registry::catalog::{CatalogError, CatalogLimits, Command, SelfPreservation};
use roster_registry::metrics::Metrics;
use roster_registry::model::{InstanceId, InstanceSpec, Limits, ServiceName};
use roster_registry::registry::{Registry, WriteError};
use tokio::time::sleep;
use tokio_util::sync::CancellationToken;

struct Harness {
    registry: Arc<Registry>,
    cancel: CancellationToken,
}

impl Harness {
    /// A registry without self-preservation: these tests are about plain expiry.
    fn start(limits: CatalogLimits) -> Self {
        Self::start_with(
            limits,
            SelfPreservation {
                threshold: 0.0,
                ..SelfPreservation::default()
            },
        )
    }

    fn start_with(limits: CatalogLimits, guard: SelfPreservation) -> Self {
        let registry = Arc::new(Registry::new(limits, Arc::new(Metrics::new())));
        registry.set_self_preservation(guard);
        let cancel = CancellationToken::new();
        tokio::spawn(registry.clone().run_reaper(cancel.clone()));
        Harness { registry, cancel }
    }

    fn register(&self, service: &str, id: &str, ttl: u64, dca: u64) {
        let req = RegisterRequest {
            address: Some("10.0.0.1".into()),
            port: 80,
            ttl: Some(Duration::from_secs(ttl)),
            deregister_critical_after: Some(Duration::from_secs(dca)),
            ..Default::default()
        };
        let spec = InstanceSpec::from_request(req, None, &Limits::default()).unwrap();
        self.registry
            .apply(Command::Register {
                service: ServiceName::parse(service).unwrap(),
                id: InstanceId::parse(id).unwrap(),
                spec,
            })
            .unwrap();
    }

    async fn heartbeat(&self, service: &str, id: &str) -> Result<bool, WriteError> {
        self.registry
            .heartbeat(
                &ServiceName::parse(service).unwrap(),
                &InstanceId::parse(id).unwrap(),
            )
            .await
            .map(|out| out.changed)
    }

    fn health(&self, service: &str, id: &str) -> Option<Health> {
        self.registry
            .snapshot()
            .instance(service, id)
            .map(|i| i.health())
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.registry.metrics().render(&self.registry.snapshot());
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in\n{text}"))
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

#[tokio::test(start_paused = true)]
async fn silent_instance_turns_critical_after_ttl_and_is_removed_later() {
    let h = Harness::start(CatalogLimits::default());
    h.register("web", "a", 10, 60);
    sleep(secs(9.9)).await;
    assert_eq!(h.health("web", "a"), Some(Health::Passing));
    sleep(secs(0.2)).await;
    assert_eq!(h.health("web", "a"), Some(Health::Critical));
    assert_eq!(h.metric("roster_lease_expirations_total"), 1.0);
    sleep(secs(59.8)).await;
    assert_eq!(h.health("web", "a"), Some(Health::Critical));
    sleep(secs(0.2)).await;
    assert_eq!(h.health("web", "a"), None);
    assert_eq!(h.metric("roster_instances_reaped_total"), 1.0);
    assert!(matches!(
        h.heartbeat("web", "a").await,
        Err(WriteError::Catalog(CatalogError::NotFound { .. }))
    ));
}

#[tokio::test(start_paused = true)]
async fn heartbeating_instance_never_expires_and_heartbeats_do_not_move_the_index() {
    let h = Harness::start(CatalogLimits::default());
    h.register("web", "a", 9, 5);
    let index = h.registry.snapshot().index;
    // Ten simulated hours of heartbeats every ttl/3.
    for _ in 0..(10 * 3600 / 3) {
        sleep(secs(3.0)).await;
        assert!(!h.heartbeat("web", "a").await.unwrap(), "nothing changes");
        assert_eq!(h.health("web", "a"), Some(Health::Passing));
    }
    assert_eq!(h.registry.snapshot().index, index);
    assert_eq!(h.metric("roster_lease_expirations_total"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn heartbeat_after_expiry_brings_the_instance_back() {
    let h = Harness::start(CatalogLimits::default());
    h.register("web", "a", 5, 60);
    sleep(secs(6.0)).await;
    assert_eq!(h.health("web", "a"), Some(Health::Critical));
    let index = h.registry.snapshot().index;
    assert!(h.heartbeat("web", "a").await.unwrap(), "health flips back");
    assert_eq!(h.health("web", "a"), Some(Health::Passing));
    assert_eq!(h.registry.snapshot().index, index + 1);
    // The pending removal was cancelled: long after the first deadline it is still here.
    sleep(secs(61.0)).await;
    assert_eq!(
        h.health("web", "a"),
        Some(Health::Critical),
        "expired again, not removed yet"
    );
    sleep(secs(5.0)).await;
    assert_eq!(h.health("web", "a"), None);
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_wakes_the_sleeping_reaper() {
    let h = Harness::start(CatalogLimits::default());
    h.register("web", "slow", 3600, 60);
    sleep(secs(1.0)).await; // the reaper now sleeps until the one-hour deadline
    h.register("web", "fast", 2, 60);
    sleep(secs(2.1)).await;
    assert_eq!(h.health("web", "fast"), Some(Health::Critical));
    assert_eq!(h.health("web", "slow"), Some(Health::Passing));
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_leases_expire_with_one_reaper_task() {
    let limits = CatalogLimits {
        max_instances_per_service: 10_000,
        max_instances: 10_000,
    };
    let h = Harness::start(limits);
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    tokio::task::yield_now().await;
    assert_eq!(tasks(), 1, "only the reaper runs");
    for i in 0..10_000 {
        // Deadlines spread over whole seconds 10..19 so the reaper wakes many times;
        // the test looks at half-seconds, never at the same instant as a deadline.
        h.register("web", &format!("i{i}"), 10 + (i % 10), 20);
    }
    assert_eq!(tasks(), 1, "registering adds no tasks");
    // Even-numbered instances heartbeat every 2.5 s until t = 12.5 s.
    for _ in 0..5 {
        sleep(secs(2.5)).await;
        for i in (0..10_000).step_by(2) {
            h.heartbeat("web", &format!("i{i}")).await.unwrap();
        }
    }
    // t = 12.5 s: the silent ones with ttl <= 12 s have expired, no live one has.
    let snap = h.registry.snapshot();
    for (id, inst) in &snap.services["web"].instances {
        let i: u64 = id[1..].parse().unwrap();
        let want = if i % 2 == 1 && 10 + (i % 10) <= 12 {
            Health::Critical
        } else {
            Health::Passing
        };
        assert_eq!(inst.health(), want, "instance {id}");
    }
    // t = 40.5 s: every silent lease expired by 19 s and was removed by 39 s; the
    // others expired between 22.5 s and 31.5 s and are due for removal from 42.5 s.
    sleep(secs(28.0)).await;
    let snap = h.registry.snapshot();
    assert_eq!(snap.instance_count(), 5_000);
    assert!(
        snap.services["web"]
            .instances
            .values()
            .all(|i| i.health() == Health::Critical)
    );
    assert_eq!(h.metric("roster_lease_expirations_total"), 10_000.0);
    assert_eq!(h.metric("roster_instances_reaped_total"), 5_000.0);
    // t = 52 s: all gone.
    sleep(secs(11.5)).await;
    assert_eq!(h.registry.snapshot().instance_count(), 0);
    assert!(h.registry.snapshot().services.is_empty());
    assert_eq!(tasks(), 1);
}

/// Eureka's lesson: when half the instances fall silent at once, the registry is
/// more likely cut off than they are dead, so nothing expires until heartbeats
/// come back (or max_hold runs out); then the ones still silent get one more
/// ttl and expire.
#[tokio::test(start_paused = true)]
async fn self_preservation_holds_a_mass_expiry_and_resumes_when_heartbeats_return() {
    let h = Harness::start_with(CatalogLimits::default(), SelfPreservation::default());
    let ids: Vec<String> = (0..20).map(|i| format!("i{i:02}")).collect();
    for id in &ids {
        h.register("web", id, 10, 30);
    }
    let beat = |range: std::ops::Range<usize>| {
        let h = &h;
        let ids = &ids;
        async move {
            for id in &ids[range] {
                h.heartbeat("web", id).await.unwrap();
            }
        }
    };
    // t = 0..9: everyone heartbeats; from t = 9 half of them fall silent.
    for _ in 0..3 {
        sleep(secs(3.0)).await;
        beat(0..20).await;
    }
    assert_eq!(h.metric("roster_self_preservation_active"), 0.0);
    // t = 9..30: the silent half is overdue from t = 19, but nothing expires.
    for _ in 0..7 {
        sleep(secs(3.0)).await;
        beat(0..10).await;
    }
    let snap = h.registry.snapshot();
    assert!(
        snap.services["web"]
            .instances
            .values()
            .all(|i| i.health() == Health::Passing),
        "no lease expires while half are overdue"
    );
    assert!(h.registry.self_preservation_active());
    assert_eq!(h.metric("roster_self_preservation_active"), 1.0);
    assert_eq!(h.metric("roster_lease_expirations_total"), 0.0);
    // t = 30: eight of the silent ten come back; two (i18, i19) stay silent.
    for _ in 0..3 {
        beat(0..18).await;
        sleep(secs(3.0)).await;
    }
    // t = 39: 2 of 20 overdue is under 15 %: the guard is off. The two it
    // held get one more ttl (10 s) from then to come back, as stragglers of a
    // blip would, and then expire.
    assert!(!h.registry.self_preservation_active());
    assert_eq!(h.metric("roster_self_preservation_active"), 0.0);
    assert_eq!(h.metric("roster_lease_expirations_total"), 0.0);
    beat(0..18).await;
    sleep(secs(3.0)).await;
    // t = 42.
    assert_eq!(h.metric("roster_lease_expirations_total"), 2.0);
    assert_eq!(h.metric("roster_self_preservation_released_total"), 2.0);
    for (n, id) in ids.iter().enumerate() {
        let want = if n >= 18 {
            Health::Critical
        } else {
            Health::Passing
        };
        assert_eq!(h.health("web", id), Some(want), "{id}");
    }
    // They are removed deregister_critical_after (30 s) after their release,
    // while the others keep heartbeating.
    for _ in 0..10 {
        beat(0..18).await;
        sleep(secs(3.0)).await;
    }
    assert_eq!(h.health("web", "i18"), None);
    assert_eq!(h.health("web", "i19"), None);
    assert_eq!(h.registry.snapshot().instance_count(), 18);
}

/// A small setup (fewer leased instances than the guard's minimum) expires
/// normally even when all of its leases run out at once.
#[tokio::test(start_paused = true)]
async fn self_preservation_ignores_small_catalogs() {
    let h = Harness::start_with(CatalogLimits::default(), SelfPreservation::default());
    for i in 0..5 {
        h.register("web", &format!("i{i}"), 10, 30);
    }
    sleep(secs(10.5)).await;
    assert!(!h.registry.self_preservation_active());
    assert_eq!(h.metric("roster_lease_expirations_total"), 5.0);
}

/// The same with heartbeats out of step (deadlines spread over a heartbeat
/// period, as in real life): the guard must trip before the first silent lease
/// expires, not after 15 % of them already have.
#[tokio::test(start_paused = true)]
async fn self_preservation_trips_before_the_first_of_spread_deadlines() {
    let h = Harness::start_with(CatalogLimits::default(), SelfPreservation::default());
    let ids: Vec<String> = (0..20).map(|i| format!("i{i:02}")).collect();
    // Instance n registers (and then heartbeats every 3 s) at an offset of n*100 ms.
    for step in 0..300u64 {
        let t_ms = step * 100;
        for (n, id) in ids.iter().enumerate() {
            let phase = n as u64 * 100;
            if t_ms < phase || !(t_ms - phase).is_multiple_of(3000) {
                continue;
            }
            if t_ms == phase {
                h.register("web", id, 10, 30);
            } else if n < 10 || t_ms < 9000 {
                // Instances 10..20 fall silent at t = 9 s.
                h.heartbeat("web", id).await.unwrap();
            }
        }
        sleep(secs(0.1)).await;
    }
    // t = 30 s: the silent ones were due between 16 s and 19 s.
    assert!(h.registry.self_preservation_active());
    assert_eq!(h.metric("roster_lease_expirations_total"), 0.0);
    assert!(
        ids.iter()
            .all(|id| h.health("web", id) == Some(Health::Passing))
    );
}

/// Heartbeats `ids` every 0.5 s from `t` until `until` (seconds).
async fn beat_until(h: &Harness, ids: &[String], t: &mut f64, until: f64) {
    while *t < until {
        sleep(secs(0.5)).await;
        *t += 0.5;
        for id in ids {
            h.heartbeat("web", id).await.unwrap();
        }
    }
}

/// Blue/green: 20 old instances (ttl 2 s) fall silent while 20 new ones keep
/// heartbeating. Half the fleet silent at once trips the guard, which holds
/// the old ones (still passing) for at most max_hold (2 min by default) past
/// their deadlines, then expires them; they are removed
/// deregister_critical_after later, and the guard lets go.
#[tokio::test(start_paused = true)]
async fn self_preservation_releases_a_real_departure_after_max_hold() {
    let h = Harness::start_with(CatalogLimits::default(), SelfPreservation::default());
    let old: Vec<String> = (0..20).map(|i| format!("blue-{i:02}")).collect();
    let new: Vec<String> = (0..20).map(|i| format!("green-{i:02}")).collect();
    for id in old.iter().chain(&new) {
        h.register("web", id, 2, 30);
    }
    // The old ones never heartbeat again (deadline t = 2 s); the new ones
    // heartbeat every 0.5 s throughout.
    let mut t = 0.0;
    beat_until(&h, &new, &mut t, 3.0).await;
    assert!(
        h.registry.self_preservation_active(),
        "half the fleet silent at once"
    );
    assert_eq!(h.metric("roster_lease_expirations_total"), 0.0);
    // t = 80 s, past the 1 m window: still held (the bound is 2 m), and
    // visible as such.
    beat_until(&h, &new, &mut t, 80.0).await;
    assert!(
        old.iter()
            .all(|id| h.health("web", id) == Some(Health::Passing))
    );
    assert_eq!(h.metric("roster_self_preservation_held_leases"), 20.0);
    let oldest = h.metric("roster_self_preservation_oldest_hold_seconds");
    assert!((77.0..=78.5).contains(&oldest), "oldest hold {oldest}");
    assert_eq!(h.metric("roster_self_preservation_max_hold_seconds"), 120.0);
    let within = h.metric("roster_self_preservation_drained_within_seconds");
    assert!((41.5..=43.0).contains(&within), "drained within {within}");
    let status = h.registry.self_preservation();
    assert_eq!((status.active, status.held), (true, 20));
    // t = 122.5 s: released at deadline (2 s) + 120 s, critical now.
    beat_until(&h, &new, &mut t, 122.5).await;
    assert!(
        old.iter()
            .all(|id| h.health("web", id) == Some(Health::Critical)),
        "released at max_hold"
    );
    assert!(
        new.iter()
            .all(|id| h.health("web", id) == Some(Health::Passing))
    );
    assert_eq!(h.metric("roster_lease_expirations_total"), 20.0);
    assert_eq!(h.metric("roster_self_preservation_released_total"), 20.0);
    assert_eq!(h.metric("roster_self_preservation_held_leases"), 0.0);
    assert!(h.metric("roster_self_preservation_drain_per_minute") >= 20.0);
    // The released ones count nowhere: the guard lets go within a recheck.
    beat_until(&h, &new, &mut t, 124.0).await;
    assert!(!h.registry.self_preservation_active(), "the guard lets go");
    assert_eq!(h.metric("roster_self_preservation_active"), 0.0);
    // Removed 30 s after their release.
    beat_until(&h, &new, &mut t, 153.0).await;
    assert!(old.iter().all(|id| h.health("web", id).is_none()));
    assert_eq!(h.registry.snapshot().instance_count(), 20);
}

/// Churn, as autoscaling and crashed jobs make it: instances (ttl 5 s)
/// arrive in 200 services all the time, live 5–30 s heartbeating every ttl/3,
/// then a third deregister and the rest just stop. The lapses keep the guard
/// on, but each one is held for max_hold at most, so after a warm-up the
/// catalog stays flat instead of growing without bound. Eight minutes of
/// paused time.
#[tokio::test(start_paused = true)]
async fn churn_keeps_the_catalog_flat() {
    let h = Harness::start_with(CatalogLimits::default(), SelfPreservation::default());
    // A small deterministic generator: the test needs no randomness.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    struct Live {
        service: String,
        id: String,
        /// Steps (100 ms) until the next heartbeat and until it leaves.
        next_beat: u64,
        leaves: u64,
    }
    let mut live: Vec<Live> = Vec::new();
    let mut serial = 0u64;
    let mut sizes: Vec<(u64, usize)> = Vec::new();
    let mut guard_on = 0u64;
    for step in 0..(8 * 600u64) {
        // Two arrivals per 100 ms: 20 per second.
        for _ in 0..2 {
            serial += 1;
            let service = format!("svc-{:03}", rand(200));
            let id = format!("{service}-{serial}");
            h.register(&service, &id, 5, 10);
            live.push(Live {
                service,
                id,
                next_beat: step + 16,
                leaves: step + 50 + rand(250),
            });
        }
        let mut i = 0;
        while i < live.len() {
            let l = &mut live[i];
            if l.leaves <= step {
                let l = live.swap_remove(i);
                if rand(3) == 0 {
                    h.registry
                        .apply(Command::Deregister {
                            service: ServiceName::parse(&l.service).unwrap(),
                            id: InstanceId::parse(&l.id).unwrap(),
                        })
                        .unwrap();
                }
                continue;
            }
            if l.next_beat <= step {
                l.next_beat = step + 16;
                let (service, id) = (l.service.clone(), l.id.clone());
                h.heartbeat(&service, &id).await.unwrap();
            }
            i += 1;
        }
        sleep(secs(0.1)).await;
        if h.registry.self_preservation_active() {
            guard_on += 1;
        }
        if step % 300 == 299 {
            sizes.push(((step + 1) / 10, h.registry.snapshot().instance_count()));
        }
    }
    eprintln!("catalog size (seconds, instances): {sizes:?}; guard on {guard_on} of 4800 steps");
    // Warm-up: ttl + max_hold + deregister_critical_after (about 2.3 min).
    // From 3 minutes on, every sample is within 10 % of their mean, and the
    // last is no larger than the first.
    let after: Vec<usize> = sizes
        .iter()
        .filter(|(t, _)| *t >= 180)
        .map(|(_, n)| *n)
        .collect();
    let mean = after.iter().sum::<usize>() as f64 / after.len() as f64;
    for (t, n) in &sizes {
        if *t >= 180 {
            assert!(
                (*n as f64 - mean).abs() <= 0.1 * mean,
                "at {t} s: {n} instances, mean {mean:.0}: {sizes:?}"
            );
        }
    }
    assert!(
        after.last().unwrap() <= &(after[0] + after[0] / 20),
        "grows: {sizes:?}"
    );
}

/// An outage of the registry longer than max_hold: every lease is held until
/// its deadline + max_hold (2 m), then expires; the instances come back on
/// their first heartbeat after the outage, and are not removed meanwhile if
/// their deregister_critical_after is longer than the rest of the outage.
#[tokio::test(start_paused = true)]
async fn an_outage_longer_than_max_hold_expires_at_max_hold_and_heartbeats_revive() {
    let h = Harness::start_with(CatalogLimits::default(), SelfPreservation::default());
    let ids: Vec<String> = (0..20).map(|i| format!("i{i:02}")).collect();
    for id in &ids {
        h.register("web", id, 10, 300);
    }
    // Nothing heartbeats for 150 s: the deadlines are at 10 s.
    sleep(secs(129.5)).await;
    assert!(h.registry.self_preservation_active());
    assert!(
        ids.iter()
            .all(|id| h.health("web", id) == Some(Health::Passing))
    );
    assert_eq!(h.metric("roster_self_preservation_held_leases"), 20.0);
    sleep(secs(1.0)).await;
    // t = 130.5 s: released at 10 s + 2 m.
    assert!(
        ids.iter()
            .all(|id| h.health("web", id) == Some(Health::Critical))
    );
    assert_eq!(h.metric("roster_lease_expirations_total"), 20.0);
    sleep(secs(20.0)).await;
    for id in &ids {
        assert!(h.heartbeat("web", id).await.unwrap(), "{id} revives");
    }
    assert!(
        ids.iter()
            .all(|id| h.health("web", id) == Some(Health::Passing))
    );
    sleep(secs(2.0)).await;
    assert!(!h.registry.self_preservation_active());
}
