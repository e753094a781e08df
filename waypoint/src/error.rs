//! Why the waypoint could not start; each names the step (and setting) that failed. Errors of
//! the data path live with their modules ([`crate::target::TargetError`],
//! [`crate::upstream::UpstreamError`]) and end as a status and a response flag, never here.

use std::net::SocketAddr;

use marrow_mesh::identity::IdentityError;
use marrow_mesh::state::SourceError;

/// A failed start of the waypoint.
#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    /// A setting has a value that cannot work.
    #[error("setting {setting} = {value:?}: expected {expected}")]
    Setting {
        /// The flag.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// The async runtime could not be built.
    #[error("building the runtime")]
    Runtime(#[source] std::io::Error),
    /// A listener cannot be bound.
    #[error("binding {setting} {addr}")]
    Bind {
        /// The flag that names the address.
        setting: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The certificate source named by `setting` cannot be set up.
    #[error("{setting}")]
    CertificateSource {
        /// The flag (`--ca-dir`, `--ca-roots`, `--ca-address`).
        setting: &'static str,
        /// Cause.
        source: IdentityError,
    },
    /// The state source (named by its setting) cannot publish a first version.
    #[error("{setting}")]
    StateSource {
        /// The setting that chose it: `--state-file PATH`, `--kube`.
        setting: String,
        /// Cause.
        source: SourceError,
    },
    /// No Kubernetes configuration was found for `--kube`.
    #[error("--kube: no in-cluster service account and no usable KUBECONFIG")]
    KubeConfig(#[source] kube::config::InferConfigError),
    /// The Kubernetes client cannot be built.
    #[error("--kube: building the client")]
    KubeClient(#[source] kube::Error),
}
