//! The changes of a service, taken from the registry once per xDS thread and
//! handed to every stream of that thread that follows the service.
//!
//! The registry announces a change on a broadcast channel, from the thread
//! that wrote it. With one receiver per stream, that thread woke every
//! stream's connection one by one, and each wake-up of an xDS thread from
//! outside (a system call) let the xDS thread preempt the writer, serve a
//! few streams and sleep again: a push to 1,000 streams was dozens of
//! context switches. Here each xDS thread has one receiver per followed
//! service, so a change wakes each thread once, and the thread raises the
//! signals of its own streams without leaving it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::thread::ThreadId;

use futures_util::task::AtomicWaker;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::model::ServiceName;
use crate::registry::Registry;

/// What one stream waits on: raised by a change of any service it follows.
#[derive(Debug, Default)]
pub(super) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready (and lowered) once raised since the last time.
    pub(super) fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.raised.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.raised.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Lowers it: what raised it is answered by the look about to be taken.
    pub(super) fn lower(&self) {
        self.raised.store(false, Ordering::Release);
    }
}

type Key = (ThreadId, ServiceName);
type Slots = Mutex<HashMap<Key, Weak<Slot>>>;

/// The followed services of every xDS thread.
#[derive(Debug, Default)]
pub(super) struct Fanout {
    slots: Arc<Slots>,
}

/// One service followed on one thread: the registry's receiver lives in a
/// task on that thread, which raises the signal of every follower.
#[derive(Debug)]
pub(super) struct Slot {
    key: Key,
    slots: Arc<Slots>,
    /// Held in a slab: a follower lets go in constant time, so 10,000
    /// streams closing at once cost 10,000 steps, not 10,000 squared.
    followers: Mutex<slab::Slab<Arc<Signal>>>,
    /// The registry stopped: no change will come again.
    closed: AtomicBool,
    /// The task runs (not dropped with its runtime).
    running: Arc<AtomicBool>,
    /// Ends the task when the last follower lets go.
    _stop: DropGuard,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned one is still whole.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fanout {
    /// `signal` follows `service` on this thread from now on. Call before
    /// reading the snapshot to answer from, so that no change falls between.
    /// Must be called from within the thread's runtime (the slot's task is
    /// spawned on it).
    pub(super) fn follow(
        &self,
        registry: &Registry,
        service: &ServiceName,
        signal: &Arc<Signal>,
    ) -> Following {
        let key = (std::thread::current().id(), service.clone());
        // Slots are taken and dropped outside the lock: a slot's drop takes it.
        let found = locked(&self.slots).get(&key).and_then(Weak::upgrade);
        let slot = match found {
            Some(slot) if !slot.is_closed() && slot.running.load(Ordering::Acquire) => slot,
            _ => {
                // Keys are per thread, so no other caller makes this slot now.
                let slot = self.start(registry, key.clone());
                locked(&self.slots).insert(key, Arc::downgrade(&slot));
                slot
            }
        };
        let place = locked(&slot.followers).insert(signal.clone());
        Following { slot, place }
    }

    /// A new slot and its task. The registry's receiver is taken here, so a
    /// change published after this call is seen by the task.
    fn start(&self, registry: &Registry, key: Key) -> Arc<Slot> {
        let mut changes = registry.subscribe(&key.1).changes;
        let stop = CancellationToken::new();
        let slot = Arc::new(Slot {
            key,
            slots: self.slots.clone(),
            followers: Mutex::new(slab::Slab::new()),
            closed: AtomicBool::new(false),
            running: Arc::new(AtomicBool::new(true)),
            _stop: stop.clone().drop_guard(),
        });
        let weak = Arc::downgrade(&slot);
        let running = Running(slot.running.clone());
        tokio::spawn(async move {
            let _running = running;
            loop {
                let open = tokio::select! {
                    biased;
                    () = stop.cancelled() => return,
                    got = changes.recv() => !matches!(got, Err(RecvError::Closed)),
                };
                // Every event already in is answered by the same look.
                let open = open
                    && loop {
                        match changes.try_recv() {
                            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
                            Err(TryRecvError::Empty) => break true,
                            Err(TryRecvError::Closed) => break false,
                        }
                    };
                let Some(slot) = weak.upgrade() else { return };
                if !open {
                    slot.closed.store(true, Ordering::Release);
                }
                for (_, follower) in locked(&slot.followers).iter() {
                    follower.raise();
                }
                if !open {
                    return;
                }
            }
        });
        slot
    }
}

impl Slot {
    /// The service followed.
    pub(super) fn service(&self) -> &ServiceName {
        &self.key.1
    }

    /// Whether the registry has stopped announcing changes of this service.
    pub(super) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// One stream following one service; it lets go when dropped.
#[derive(Debug)]
pub(super) struct Following {
    slot: Arc<Slot>,
    /// Its place among the slot's followers.
    place: usize,
}

impl Following {
    /// The slot followed.
    pub(super) fn slot(&self) -> &Arc<Slot> {
        &self.slot
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        locked(&self.slot.followers).try_remove(self.place);
    }
}

/// Marks a slot's task as ended when the task is dropped, however that
/// happens.
struct Running(Arc<AtomicBool>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut slots = locked(&self.slots);
        if slots.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
            slots.remove(&self.key);
        }
    }
}
