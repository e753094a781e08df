//! The Kubernetes API server as a state source: what the node proxy may call on it
//! ([`access`]), the watchers that feed the state ([`watch`]), what they have seen
//! ([`caches`]) and how they are doing ([`status`]).

pub mod access;
mod caches;
mod status;
pub mod watch;

pub use status::SourceStatus;
pub use watch::{KubeSource, KubeWatch};
