//! Writes of a node alone applied in groups (`Registry::write_alone`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;

use roster_api::RegisterRequest;

use super::*;
use crate::catalog::{CatalogError, CatalogLimits};
use crate::model::{InstanceSpec, Limits};

fn registry() -> Arc<Registry> {
    Arc::new(Registry::new(
        CatalogLimits::default(),
        Arc::new(Metrics::new()),
    ))
}

fn register(id: &str) -> Command {
    let req = RegisterRequest {
        address: Some("10.0.0.1".into()),
        port: 80,
        ..Default::default()
    };
    Command::Register {
        service: ServiceName::parse("web").unwrap(),
        id: InstanceId::parse(id).unwrap(),
        spec: InstanceSpec::from_request(req, None, &Limits::default()).unwrap(),
    }
}

fn deregister(id: &str) -> Command {
    Command::Deregister {
        service: ServiceName::parse("web").unwrap(),
        id: InstanceId::parse(id).unwrap(),
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

#[tokio::test]
async fn writes_ready_together_are_applied_in_order_as_one_group() {
    let reg = registry();
    let _ = reg.snapshot();
    let before = count(&reg.publications);
    // Spawned before any runs: the first yields, the others queue behind it.
    let writes: Vec<_> = (0..20)
        .map(|i| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.write(register(&format!("i{i}"))).await })
        })
        .collect();
    let mut indexes = Vec::new();
    for w in writes {
        indexes.push(w.await.unwrap().unwrap().index);
    }
    assert_eq!(
        indexes,
        (2..22).collect::<Vec<u64>>(),
        "each write has its own index, in order"
    );
    assert_eq!(count(&reg.groups), 1);
    // Somebody had read the last state: the group published its own.
    assert_eq!(count(&reg.publications) - before, 1);
    let snap = reg.snapshot();
    assert_eq!(snap.index, 21);
    assert_eq!(snap.services.get("web").unwrap().instances.len(), 20);
    assert_eq!(
        count(&reg.publications) - before,
        1,
        "no second publication"
    );
    // Alone, a write is applied at once.
    reg.write(register("alone")).await.unwrap();
    assert_eq!(count(&reg.groups), 2);
    assert!(reg.snapshot().instance("web", "alone").is_some());
}

/// Writes that nobody reads publish nothing, so the catalog's tree nodes
/// are not shared and change in place; the first reader after them
/// publishes once and sees every one of them. A copy taken before keeps
/// its state.
#[tokio::test]
async fn writes_nobody_reads_are_published_by_the_next_reader() {
    let reg = registry();
    reg.write(register("a")).await.unwrap();
    let early = reg.snapshot();
    let before = count(&reg.publications);
    reg.write(register("b")).await.unwrap();
    assert_eq!(
        count(&reg.publications) - before,
        1,
        "read since the last publication: published at once"
    );
    for i in 0..50 {
        let out = reg.write(register(&format!("i{i}"))).await.unwrap();
        // What a heartbeat answers follows the writes, published or not.
        assert_eq!(reg.index(), out.index);
    }
    assert_eq!(
        count(&reg.publications) - before,
        1,
        "nobody read: nothing published"
    );
    // Read your writes: another task, after the last answer, sees them all.
    let seen = tokio::spawn({
        let reg = reg.clone();
        async move { reg.snapshot() }
    })
    .await
    .unwrap();
    assert_eq!(seen.services.get("web").unwrap().instances.len(), 52);
    assert_eq!(seen.index, reg.index());
    assert_eq!(
        count(&reg.publications) - before,
        2,
        "the reader published once"
    );
    let again = reg.snapshot();
    assert!(Arc::ptr_eq(&seen, &again), "and later readers share it");
    assert_eq!(count(&reg.publications) - before, 2);
    // The copy read before the writes is unchanged.
    assert_eq!(early.services.get("web").unwrap().instances.len(), 1);
    assert!(early.instance("web", "b").is_none());
    // A writer reads back its own write without publishing.
    reg.write(register("c")).await.unwrap();
    let c = reg.with_current(|now| now.instance("web", "c").cloned());
    assert!(c.is_some());
    assert_eq!(
        count(&reg.publications) - before,
        3,
        "read since: published at once"
    );
    reg.write(register("d")).await.unwrap();
    let d = reg.with_current(|now| now.instance("web", "d").cloned());
    assert!(d.is_some());
    assert_eq!(count(&reg.publications) - before, 3);
}

#[tokio::test]
async fn a_refused_write_in_a_group_fails_alone() {
    let reg = registry();
    let writes: Vec<_> = [register("a"), deregister("nobody"), register("b")]
        .into_iter()
        .map(|cmd| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.write(cmd).await })
        })
        .collect();
    let mut results = Vec::new();
    for w in writes {
        results.push(w.await.unwrap());
    }
    assert_eq!(results[0].as_ref().unwrap().index, 2);
    assert!(
        matches!(
            results[1],
            Err(WriteError::Catalog(CatalogError::NotFound { .. }))
        ),
        "{:?}",
        results[1]
    );
    assert_eq!(results[2].as_ref().unwrap().index, 3);
    let snap = reg.snapshot();
    assert!(snap.instance("web", "a").is_some() && snap.instance("web", "b").is_some());
}

/// The first writer of a group applies it. Dropped while it yields (its
/// client went away, its request timed out), it must not strand the writes
/// queued behind it.
#[tokio::test]
async fn a_group_whose_first_writer_is_dropped_is_applied_all_the_same() {
    let reg = registry();
    let mut first = Box::pin(reg.write(register("first")));
    let pending =
        std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx).is_pending())).await;
    assert!(pending, "the first writer yields before it applies");
    let second = tokio::spawn({
        let reg = reg.clone();
        async move { reg.write(register("second")).await }
    });
    // Let the second queue behind the first.
    tokio::task::yield_now().await;
    assert!(!second.is_finished());
    drop(first);
    let out = tokio::time::timeout(std::time::Duration::from_secs(5), second)
        .await
        .expect("the second write is answered")
        .unwrap()
        .unwrap();
    assert_eq!(out.index, 3, "applied after the dropped writer's");
    let snap = reg.snapshot();
    assert!(snap.instance("web", "first").is_some());
    assert!(snap.instance("web", "second").is_some());
}

#[tokio::test]
async fn a_group_holds_at_most_max_group_writes() {
    let reg = registry();
    let n = MAX_GROUP + MAX_GROUP / 2;
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.write(register(&format!("i{i}"))).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().unwrap();
    }
    assert_eq!(count(&reg.groups), 2);
    assert_eq!(
        reg.snapshot().services.get("web").unwrap().instances.len(),
        n
    );
}

/// Groups are bounded by the instances they write, not by their commands:
/// one lock hold must not cover 64 batches of 1,000.
#[test]
fn a_group_is_bounded_by_the_instances_it_writes() {
    let batch = |n: usize| Command::Batch {
        items: (0..n).map(|i| register(&format!("b{i}"))).collect(),
    };
    let cmds = [batch(600), batch(424), register("x"), batch(10)];
    assert_eq!(
        group_len(cmds.iter()),
        2,
        "600 + 424 fit, one more does not"
    );
    assert_eq!(group_len(cmds[2..].iter()), 2);
    let huge = [batch(MAX_GROUP + 1), register("y")];
    assert_eq!(group_len(huge.iter()), 1, "a heavy write is a group alone");
}

/// The one publication tells the watchers of every service the group
/// changed, whichever of its writes changed it: the lists of a write are
/// kept when writes after it (applied or refused) reset the catalog's own.
#[tokio::test]
async fn watchers_hear_of_every_service_a_group_changed() {
    let reg = registry();
    let web = ServiceName::parse("web").unwrap();
    let api = ServiceName::parse("api").unwrap();
    let mut web_events = reg.subscribe(&web).changes;
    let mut api_events = reg.subscribe(&api).changes;
    let Command::Register { id, spec, .. } = register("a1") else {
        panic!("register builds a registration");
    };
    let on_api = Command::Register {
        service: api.clone(),
        id,
        spec,
    };
    // The write to web is followed by a refused one and then one to api;
    // then, in a second group, a lone applied write is followed by a refused
    // one.
    for group in [
        vec![register("w1"), deregister("nobody"), on_api],
        vec![register("w2"), deregister("nobody")],
    ] {
        let writes: Vec<_> = group
            .into_iter()
            .map(|cmd| {
                let reg = reg.clone();
                tokio::spawn(async move { reg.write(cmd).await })
            })
            .collect();
        for w in writes {
            let _ = w.await.unwrap();
        }
    }
    let first = web_events
        .try_recv()
        .expect("web changed in the first group");
    assert_eq!(first.state.as_ref().unwrap().instances.len(), 1);
    let api_event = api_events.try_recv().expect("api changed too");
    assert_eq!(api_event.state.as_ref().unwrap().instances.len(), 1);
    let second = web_events
        .try_recv()
        .expect("web changed in the second group");
    assert_eq!(second.state.as_ref().unwrap().instances.len(), 2);
    assert!(web_events.try_recv().is_err(), "one event per group");
}

/// Readers racing writers on two threads: whatever a reader knows to be
/// answered is in the snapshot it reads next, and the indexes it sees never
/// go back, whether the groups published or left it to a reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_racing_writers_see_every_answered_write() {
    let reg = registry();
    let answered = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (reg, answered) = (reg.clone(), answered.clone());
            tokio::spawn(async move {
                for i in 0..250 {
                    let id = format!("w{w}-{i}");
                    reg.write(register(&id)).await.unwrap();
                    answered.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (reg, answered, done) = (reg.clone(), answered.clone(), done.clone());
            tokio::spawn(async move {
                let (mut last, mut reads) = (0, 0u32);
                while !done.load(Ordering::Relaxed) {
                    // How many were answered, and the latest of them.
                    let (count, recent) = {
                        let all = answered.lock().unwrap();
                        (all.len(), all[all.len().saturating_sub(20)..].to_vec())
                    };
                    let snap = reg.snapshot();
                    assert!(snap.index >= last, "index went back");
                    last = snap.index;
                    let seen = snap.services.get("web").map_or(0, |s| s.instances.len());
                    assert!(seen >= count, "{count} answered, {seen} seen");
                    for id in &recent {
                        assert!(
                            snap.instance("web", id).is_some(),
                            "{id} answered, not seen"
                        );
                    }
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    assert_eq!(
        reg.snapshot().services.get("web").unwrap().instances.len(),
        2000
    );
}
