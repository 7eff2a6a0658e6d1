//! Self-registration: register an instance and keep it registered.
//!
//! [`Registration::start`] registers, then a background task heartbeats every
//! ttl/3 (±10 % jitter, so a fleet started together does not heartbeat in step).
//! When the registry answers 404 (it forgot the instance: a restart without
//! persistence, an operator's deregistration, an expiry) the task registers again.
//! While the registry is unreachable it retries with jittered exponential backoff,
//! and picks up again as soon as the registry answers. With several registry
//! addresses every heartbeat tries the next one when the one in use fails, so a
//! registry node going away costs no missed heartbeat. [`Registration::shutdown`]
//! stops the task and deregisters; dropping the handle deregisters on a best-effort
//! basis.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::api::RegisterRequest;
use crate::{Error, RosterClient};

/// First pause after a failed attempt; doubles up to the heartbeat interval.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
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
        let (status_tx, status) = watch::channel(RegistrationStatus::Registered);
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(keep_alive(target.clone(), status_tx, stopped));
        Ok(Registration {
            inner: target,
            stop: Some(stop),
            task: Some(task),
            status,
        })
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
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return; // shut down properly
        };
        task.abort();
        // Best effort: deregister in the background if a runtime is still there.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let target = self.inner.clone();
            runtime.spawn(async move {
                if let Err(e) = target.client.deregister(&target.service, &target.id).await {
                    tracing::debug!(error = %e, "deregistration on drop failed");
                }
            });
        }
    }
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

async fn keep_alive(
    target: Arc<Target>,
    status: watch::Sender<RegistrationStatus>,
    mut stop: oneshot::Receiver<()>,
) {
    let interval = target.interval();
    let mut pause = jitter(interval, 0.1);
    let mut attempts = 0u32;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(pause) => {}
        }
        match target.beat().await {
            Ok(()) => {
                attempts = 0;
                status.send_if_modified(|s| {
                    let changed = *s != RegistrationStatus::Registered;
                    *s = RegistrationStatus::Registered;
                    changed
                });
                pause = jitter(interval, 0.1);
            }
            Err(e) => {
                attempts += 1;
                tracing::warn!(service = %target.service, id = %target.id, error = %e, attempts, "heartbeat failed");
                status.send_replace(RegistrationStatus::Retrying {
                    attempts,
                    error: e.to_string(),
                });
                let backoff = FIRST_BACKOFF
                    .saturating_mul(1 << attempts.min(16))
                    .min(interval.max(FIRST_BACKOFF));
                pause = jitter(backoff, 0.5);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
