//! `roster sync-k8s`: keeps roster in step with Kubernetes `Service`s and
//! their `EndpointSlice`s.
//!
//! Three watchers (Services, EndpointSlices, Namespaces) feed local copies of
//! the objects. Every event recomputes the Services it touches with the pure
//! [`mapping::desired_instances`] and applies the difference with the client
//! library; the first complete listing, every relist (a watch expiry answered
//! with 410 Gone) and a periodic timer run a full reconcile against what roster
//! holds, which also repairs a registry that restarted and forgot everything.
//! Instances are registered without a lease: the registrar, not a heartbeat,
//! is their source of truth. It only ever removes instances carrying the
//! [`mapping::MANAGED_BY_KEY`] marker, and leaves them in place when it stops
//! (a registrar's restart must not blank the catalog).

mod error;
pub mod mapping;
pub mod reconcile;
mod world;

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use roster_client::RosterClient;
use tokio_util::sync::CancellationToken;

pub use error::{K8sError, ParseNamingModeError};
use reconcile::Reconciler;
use world::World;

/// How a Kubernetes Service is named in roster (the `roster.io/service-name`
/// annotation overrides both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NamingMode {
    /// The Service's name.
    #[default]
    Name,
    /// `NAME-NAMESPACE`.
    NameNamespace,
}

impl std::str::FromStr for NamingMode {
    type Err = ParseNamingModeError;

    fn from_str(s: &str) -> Result<Self, ParseNamingModeError> {
        match s {
            "name" => Ok(NamingMode::Name),
            "name-namespace" => Ok(NamingMode::NameNamespace),
            other => Err(ParseNamingModeError(other.to_owned())),
        }
    }
}

/// Settings of the registrar.
#[derive(Clone, Debug)]
pub struct SyncSettings {
    /// Naming of roster services.
    pub naming: NamingMode,
    /// Whether Services without a `roster.io/sync` annotation (on themselves
    /// or their Namespace) are synced.
    pub default_sync: bool,
    /// Register not-ready endpoints as critical (`true`) or leave them out.
    pub include_not_ready: bool,
    /// Namespaces never synced, whatever their annotations.
    pub exclude_namespaces: Vec<String>,
    /// Time between full reconciles against roster.
    pub resync: Duration,
    /// Longest pause between retries after roster errors.
    pub max_backoff: Duration,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            naming: NamingMode::Name,
            default_sync: true,
            include_not_ready: true,
            exclude_namespaces: vec!["kube-system".into(), "kube-public".into()],
            resync: Duration::from_secs(60),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Backoff of the Kubernetes watchers after an error: 100 ms doubling to 30 s,
/// reset by the next good event.
#[derive(Clone, Debug)]
struct WatchBackoff {
    next: Duration,
}

const WATCH_FIRST_BACKOFF: Duration = Duration::from_millis(100);
const FIRST_RETRY: Duration = Duration::from_millis(200);

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        Some(now.mul_f64(0.5 + fastrand::f64()))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = WATCH_FIRST_BACKOFF;
    }
}

fn backoff() -> WatchBackoff {
    WatchBackoff {
        next: WATCH_FIRST_BACKOFF,
    }
}

/// A Kubernetes client from a config. Installs rustls' ring provider as the
/// process default first: the workspace builds rustls with both ring and
/// aws-lc-rs, and then rustls cannot pick one by itself (kube's TLS setup
/// would panic on an `https://` API server).
pub fn client_from_config(config: kube::Config) -> Result<kube::Client, K8sError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_from(config).map_err(K8sError::Client)
}

/// A Kubernetes client configured like kubectl: in-cluster (the pod's
/// ServiceAccount) or from `KUBECONFIG` / `~/.kube/config`.
pub async fn default_client() -> Result<kube::Client, K8sError> {
    let config = kube::Config::infer().await.map_err(K8sError::Config)?;
    client_from_config(config)
}

/// Runs the registrar until `cancel`. Errors from Kubernetes or roster are
/// logged and retried with backoff; they never end it.
pub async fn run(
    settings: SyncSettings,
    kube: kube::Client,
    roster: RosterClient,
    cancel: CancellationToken,
) -> Result<(), K8sError> {
    let services = watcher(
        Api::<Service>::all(kube.clone()),
        watcher::Config::default(),
    )
    .backoff(backoff())
    .boxed();
    let slices = watcher(
        Api::<EndpointSlice>::all(kube.clone()),
        watcher::Config::default(),
    )
    .backoff(backoff())
    .boxed();
    let namespaces = watcher(Api::<Namespace>::all(kube), watcher::Config::default())
        .backoff(backoff())
        .boxed();
    let restarts = registry_restarts(roster.clone(), cancel.clone());
    let mut loop_state = Loop {
        world: World::default(),
        reconciler: Reconciler::new(roster),
        settings,
        retry: None,
        retry_pause: FIRST_RETRY,
    };
    run_loop(
        &mut loop_state,
        services,
        slices,
        namespaces,
        restarts,
        cancel,
    )
    .await;
    Ok(())
}

/// Signals when the registry may have forgotten what was registered: its
/// index went back (an in-memory registry restarted) or it answers again
/// after being unreachable. Followed with one blocking query on the service
/// list, so a restart is repaired at once rather than at the next periodic
/// reconcile.
fn registry_restarts(
    roster: RosterClient,
    cancel: CancellationToken,
) -> tokio::sync::mpsc::Receiver<()> {
    const WAIT: Duration = Duration::from_secs(300);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        let mut index = 0u64;
        let mut lost = false;
        let mut pause = FIRST_RETRY;
        loop {
            let answer = tokio::select! {
                () = cancel.cancelled() => return,
                a = roster.services_blocking(index, WAIT) => a,
            };
            match answer {
                Ok(list) => {
                    let restarted = list.index < index;
                    if restarted || lost {
                        tracing::info!(
                            was = index,
                            now = list.index,
                            "sync-k8s: the registry restarted or came back; reconciling"
                        );
                        // Full: a reconcile is already due.
                        let _ = tx.try_send(());
                    }
                    index = list.index;
                    lost = false;
                    pause = FIRST_RETRY;
                }
                Err(_) => {
                    lost = index > 0;
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    rx
}

type Events<K> = futures_util::stream::BoxStream<'static, watcher::Result<watcher::Event<K>>>;

struct Loop {
    world: World,
    reconciler: Reconciler,
    settings: SyncSettings,
    /// When to run a full reconcile after a failure.
    retry: Option<tokio::time::Instant>,
    retry_pause: Duration,
}

async fn run_loop(
    state: &mut Loop,
    mut services: Events<Service>,
    mut slices: Events<EndpointSlice>,
    mut namespaces: Events<Namespace>,
    mut restarts: tokio::sync::mpsc::Receiver<()>,
    cancel: CancellationToken,
) {
    let mut resync = tokio::time::interval(state.settings.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await; // the first tick is immediate; the initial listing reconciles
    loop {
        let retry_at = state.retry;
        let touched = tokio::select! {
            () = cancel.cancelled() => return,
            Some(ev) = services.next() => state.world.on_service(ev),
            Some(ev) = slices.next() => state.world.on_slice(ev),
            Some(ev) = namespaces.next() => state.world.on_namespace(ev),
            _ = resync.tick() => world::Touched::All,
            Some(()) = restarts.recv() => world::Touched::All,
            () = sleep_until(retry_at) => {
                state.retry = None;
                world::Touched::All
            }
        };
        if !state.world.synced() {
            continue;
        }
        match touched {
            world::Touched::Nothing => {}
            world::Touched::All => state.full().await,
            world::Touched::Services(keys) => {
                for key in keys {
                    let desired = state.world.desired_for(&key, &state.settings);
                    let done = state.reconciler.service(&key, desired).await;
                    if done.registered + done.deregistered > 0 {
                        tracing::info!(service = %key, registered = done.registered, deregistered = done.deregistered, "sync-k8s: applied");
                    }
                    if done.failed > 0 {
                        state.schedule_retry();
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Loop {
    async fn full(&mut self) {
        let desired = self.world.desired_all(&self.settings);
        match self.reconciler.full(desired).await {
            Ok(done) if done.failed == 0 => {
                tracing::info!(
                    registered = done.registered,
                    deregistered = done.deregistered,
                    "sync-k8s: reconciled"
                );
                self.retry = None;
                self.retry_pause = FIRST_RETRY;
            }
            Ok(done) => {
                tracing::warn!(failed = done.failed, "sync-k8s: reconcile incomplete");
                self.schedule_retry();
            }
            Err(e) => {
                tracing::warn!(error = %e, "sync-k8s: cannot read roster; retrying");
                self.schedule_retry();
            }
        }
    }

    fn schedule_retry(&mut self) {
        if self.retry.is_none() {
            let pause = self.retry_pause.mul_f64(0.75 + 0.5 * fastrand::f64());
            self.retry = Some(tokio::time::Instant::now() + pause);
            self.retry_pause = (self.retry_pause * 2).min(self.settings.max_backoff);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naming_modes_parse() {
        assert_eq!("name".parse::<NamingMode>(), Ok(NamingMode::Name));
        assert_eq!(
            "name-namespace".parse::<NamingMode>(),
            Ok(NamingMode::NameNamespace)
        );
        assert!("namespace".parse::<NamingMode>().is_err());
    }

    #[test]
    fn watch_backoff_grows_to_its_cap_and_resets() {
        let mut b = backoff();
        let first = b.next().unwrap();
        assert!(first <= WATCH_FIRST_BACKOFF * 2, "{first:?}");
        let late = (0..20).map(|_| b.next().unwrap()).last().unwrap();
        assert!(
            late >= Duration::from_secs(15) && late <= Duration::from_secs(45),
            "{late:?}"
        );
        b.reset();
        assert!(b.next().unwrap() <= WATCH_FIRST_BACKOFF * 2);
    }

    #[tokio::test]
    async fn an_https_client_builds_without_a_crypto_provider_panic() {
        let config = kube::Config::new("https://127.0.0.1:6443".parse().unwrap());
        assert!(client_from_config(config).is_ok());
    }
}
