//! `K8sError`: why the Kubernetes registrar cannot start or reconcile.

/// Why the registrar failed.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    /// No Kubernetes configuration (in-cluster or kubeconfig) was found.
    #[error("Kubernetes configuration: {0}")]
    Config(#[source] kube::config::InferConfigError),
    /// The Kubernetes client cannot be built from its configuration.
    #[error("Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// Roster could not be read (a full reconcile needs what it holds).
    #[error(transparent)]
    Roster(#[from] roster_client::Error),
}

/// A `--naming` value that is neither `name` nor `name-namespace`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("naming mode {0:?}: expected `name` or `name-namespace`")]
pub struct ParseNamingModeError(pub String);
