//! Self-registration: register an instance and keep it registered.
//!
//! [`Registration::start`] registers, then a background task heartbeats every
//! ttl/3 (±10 % jitter, so a fleet started together does not heartbeat in step).
//! When the registry answers 404 (it forgot the instance: a restart without
//! persistence, an operator's deregistration, an expiry) the task registers again.
//! While the registry is unreachable it retries every 0.2 s to 1 s (jittered,
//! whatever the TTL), so the instance is back within about a second of the
//! registry answering again. Between heartbeats the task keeps a watch stream
//! open on its own service (one connection): it breaks the moment the
//! registry stops, and carries the registry's run (epoch), so a restart
//! is noticed at once rather than at the next heartbeat, up to ttl/3 later.
//! With several registry addresses every heartbeat tries the next one when the
//! one in use fails, so a registry node going away costs no missed heartbeat.
//!
//! [`Registration::shutdown`] stops the task and deregisters. Dropping the
//! handle deregisters too, also at the end of `main`: the drop blocks for the
//! one request (at most [`DROP_DEREGISTER_TIMEOUT`]) on a thread of its own.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::RegisterRequest;
use crate::{Error, RosterClient, WatchStream};

/// First pause after a failed attempt; doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Longest pause between attempts while the registry does not answer.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Heartbeat interval of an instance registered without a TTL, which only needs
/// to notice that the registry forgot it.
const NO_TTL_INTERVAL: Duration = Duration::from_secs(30);

/// What the background task last managed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationStatus {
    /// The registry knows the instance and the last heartbeat went through.
    Registered,
    /// The last attempt failed; the task keeps trying.
    Retrying {
        /// Failed attempts in a row.
        attempts: u32,
        /// The last error.
        error: String,
    },
}

/// A registered instance, kept alive in the background.
#[derive(Debug)]
pub struct Registration {
    inner: Arc<Target>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    status: watch::Receiver<RegistrationStatus>,
}

#[derive(Debug)]
struct Target {
    client: RosterClient,
    service: String,
    id: String,
    request: RegisterRequest,
}

impl Registration {
    /// Registers the instance (this first attempt must succeed) and starts
    /// heartbeating. Needs a Tokio runtime.
    pub async fn start(
        client: RosterClient,
        service: &str,
        id: &str,
        request: RegisterRequest,
    ) -> Result<Registration, Error> {
        let target = Arc::new(Target {
            client,
            service: service.to_owned(),
            id: id.to_owned(),
            request,
        });
        target.register().await?;
        Ok(Registration::keep(target))
    }

    /// Keeps alive an instance registered already (by [`RosterClient::batch`]
    /// with others, say): heartbeats as [`Registration::start`] does, and
    /// registers again when the registry forgets it. Needs a Tokio runtime.
    pub fn adopt(
        client: RosterClient,
        service: &str,
        id: &str,
        request: RegisterRequest,
    ) -> Registration {
        Registration::keep(Arc::new(Target {
            client,
            service: service.to_owned(),
            id: id.to_owned(),
            request,
        }))
    }

    /// Starts keeping `target` alive.
    fn keep(target: Arc<Target>) -> Registration {
        let (status_tx, status) = watch::channel(RegistrationStatus::Registered);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep_alive(target.clone(), status_tx, stopped));
        Registration {
            inner: target,
            stop: Some(stop),
            task: Some(task),
            status,
        }
    }

    /// Stops heartbeating without deregistering, for a caller that
    /// deregisters many instances in one batch: the instance stays until it
    /// is deregistered or its lease runs out.
    pub async fn detach(mut self) {
        self.stop_task().await;
    }

    /// The current status.
    pub fn status(&self) -> RegistrationStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<RegistrationStatus> {
        self.status.clone()
    }

    /// Stops heartbeating and deregisters. An instance the registry already forgot
    /// counts as deregistered.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.stop_task().await;
        self.inner
            .client
            .deregister(&self.inner.service, &self.inner.id)
            .await
    }

    async fn stop_task(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    /// Deregisters on a thread of its own, with its own runtime and
    /// connections, and waits for it at most [`DROP_DEREGISTER_TIMEOUT`]:
    /// this works when the handle is dropped at the end of `main` (the
    /// runtime is about to stop and would never run a spawned task), and
    /// inside any runtime, at the cost of blocking the dropping thread for
    /// one round trip to the registry. [`Registration::shutdown`] is the
    /// non-blocking way, and reports errors.
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return; // shut down properly
        };
        task.abort();
        let target = self.inner.clone();
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("roster-deregister".into())
            .spawn(move || {
                let result = deregister_blocking(&target);
                if let Err(e) = &result {
                    tracing::warn!(service = %target.service, id = %target.id, error = %e, "deregistration on drop failed; the lease will expire");
                }
                let _ = done.send(result);
            });
        match spawned {
            Ok(_) => {
                let _ = finished.recv_timeout(DROP_DEREGISTER_TIMEOUT + Duration::from_millis(100));
            }
            Err(e) => tracing::warn!(error = %e, "cannot start a thread to deregister on drop"),
        }
    }
}

/// The most a drop of [`Registration`] waits for its deregistration.
pub const DROP_DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Deregisters `target` from a runtime of its own, within the drop timeout.
fn deregister_blocking(target: &Target) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Config(format!("runtime for the deregistration: {e}")))?;
    let client = target.client.detached()?;
    runtime.block_on(async {
        tokio::time::timeout(
            DROP_DEREGISTER_TIMEOUT,
            client.deregister(&target.service, &target.id),
        )
        .await
        .unwrap_or(Err(Error::Timeout))
    })
}

impl Target {
    async fn register(&self) -> Result<(), Error> {
        self.client
            .register(&self.service, &self.id, &self.request)
            .await
            .map(drop)
    }

    fn interval(&self) -> Duration {
        self.request.ttl.map_or(NO_TTL_INTERVAL, |ttl| ttl / 3)
    }

    /// One heartbeat; registers again when the registry forgot the instance.
    async fn beat(&self) -> Result<(), Error> {
        match self.client.heartbeat(&self.service, &self.id).await {
            Err(Error::NotFound(_)) => {
                tracing::info!(service = %self.service, id = %self.id, "registry forgot the instance; registering again");
                self.register().await
            }
            other => other,
        }
    }
}

/// Scales `d` by a random factor in [1 - spread, 1 + spread].
fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 - spread + 2.0 * spread * fastrand::f64())
}

/// The pause after `attempts` failures in a row: 200 ms doubling up to 1 s
/// (never more than the heartbeat interval), with equal jitter (between
/// half and all of it), so the instance is back within about a second of
/// the registry answering again, whatever its TTL.
fn retry_pause(attempts: u32, interval: Duration) -> Duration {
    let backoff = FIRST_BACKOFF
        .saturating_mul(1 << attempts.saturating_sub(1).min(16))
        .min(MAX_RETRY_PAUSE)
        .min(interval.max(FIRST_BACKOFF));
    backoff.mul_f64(0.5 + 0.5 * fastrand::f64())
}

/// Why the task woke up.
enum Wake {
    Stop,
    Beat,
    /// The registry said something on the link: `Some(epoch)` of an event.
    Link(Result<Option<Option<u64>>, Error>),
}

/// The next event on the link, or never without one.
async fn next_on(link: &mut Option<WatchStream>) -> Result<Option<Option<u64>>, Error> {
    match link {
        Some(stream) => Ok(stream.next_raw().await?.map(|raw| {
            raw.id.as_deref().and_then(|id| {
                let (epoch, _) = id.split_once('.')?;
                u64::from_str_radix(epoch, 16).ok()
            })
        })),
        None => std::future::pending().await,
    }
}

async fn keep_alive(
    target: Arc<Target>,
    status: watch::Sender<RegistrationStatus>,
    mut stop: oneshot::Receiver<()>,
) {
    let interval = target.interval();
    let mut next_beat = Instant::now() + jitter(interval, 0.1);
    let mut attempts = 0u32;
    // A watch stream on the instance's own service, open while registered:
    // it breaks the moment the registry goes away, and carries the registry's
    // run, so a restart is noticed at once instead of at the next heartbeat.
    let mut link: Option<WatchStream> = None;
    let mut link_epoch: Option<u64> = None;
    let mut open_link = true;
    loop {
        if open_link && link.is_none() {
            open_link = false;
            let services = [target.service.as_str()];
            let opened = tokio::select! {
                _ = &mut stop => return,
                opened = target.client.watch(&services, None) => opened,
            };
            match opened {
                Ok(stream) => {
                    link_epoch = stream.epoch();
                    link = Some(stream);
                }
                // The registry went away right after the last heartbeat (a
                // stopping registry may still answer one): check again soon.
                Err(e @ (Error::Unavailable(_) | Error::Timeout)) => {
                    tracing::debug!(service = %target.service, error = %e, "registry unreachable");
                    let soon = Instant::now() + retry_pause(1, interval);
                    next_beat = next_beat.min(soon);
                }
                // Not allowed to watch, say: heartbeats alone will do.
                Err(e) => {
                    tracing::debug!(service = %target.service, error = %e, "cannot watch the registry; relying on heartbeats")
                }
            }
        }
        let wake = tokio::select! {
            _ = &mut stop => Wake::Stop,
            () = tokio::time::sleep_until(next_beat) => Wake::Beat,
            got = next_on(&mut link) => Wake::Link(got),
        };
        match wake {
            Wake::Stop => return,
            Wake::Beat => {}
            Wake::Link(Ok(Some(epoch))) => {
                if link_epoch.is_none() {
                    link_epoch = epoch;
                }
                if epoch.is_none() || epoch == link_epoch {
                    continue; // news about the service: nothing to do
                }
                // Another registry run behind the same stream: check at once.
                link = None;
            }
            Wake::Link(_) => {
                // The registry went away (or this node did): heartbeat soon,
                // and retry quickly until it answers again.
                tracing::debug!(service = %target.service, id = %target.id, "registry link broke");
                link = None;
                let soon = jitter(Duration::from_millis(100), 0.5);
                next_beat = next_beat.min(Instant::now() + soon);
                continue;
            }
        }
        match target.beat().await {
            Ok(()) => {
                attempts = 0;
                status.send_if_modified(|s| {
                    let changed = *s != RegistrationStatus::Registered;
                    *s = RegistrationStatus::Registered;
                    changed
                });
                next_beat = Instant::now() + jitter(interval, 0.1);
                open_link = true;
            }
            Err(e) => {
                attempts += 1;
                tracing::warn!(service = %target.service, id = %target.id, error = %e, attempts, "heartbeat failed");
                status.send_replace(RegistrationStatus::Retrying {
                    attempts,
                    error: e.to_string(),
                });
                next_beat = Instant::now() + retry_pause(attempts, interval);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_short_whatever_the_ttl() {
        let hour = Duration::from_secs(3600);
        for attempts in 1..40 {
            let p = retry_pause(attempts, hour);
            assert!(
                p <= MAX_RETRY_PAUSE && p >= Duration::from_millis(100),
                "{p:?}"
            );
        }
        assert!(retry_pause(5, Duration::from_millis(300)) <= Duration::from_millis(300));
    }

    #[test]
    fn jitter_stays_in_its_band() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_secs(10), 0.1);
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
    }
}
