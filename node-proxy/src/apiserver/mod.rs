//! The node proxy and the Kubernetes API server: what it may call on the API server ([`access`]).
//! The watchers that feed the state from the API server come with the kube-rs source.

pub mod access;
