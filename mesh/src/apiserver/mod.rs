//! The node proxy and the Kubernetes API server: what it may call on the API server ([`access`]).
//! [`watch`] feeds the state from the API server with kube-rs watchers.

pub mod access;
pub mod watch;

pub use watch::{KubeSource, KubeWatch, SourceStatus};
