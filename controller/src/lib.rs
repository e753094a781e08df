//! marrow's waypoint controller: every `gateway.networking.k8s.io/v1` Gateway of class
//! `istio-waypoint` gets a ServiceAccount, a Deployment running marrow's waypoint, and a
//! Service, created and kept up to date with server-side apply and owned by the Gateway; the
//! Gateway's status says whether it is accepted and, once a waypoint pod is ready, where it is.
//! Each waypoint's ServiceAccount is bound to the ClusterRole `marrow-waypoint` (its reads of the
//! state), and the binding deleted with the Gateway.
//! It does what istiod's deployment controller does for waypoints, so a cluster moves between
//! Istio ambient and marrow with the same Gateways. `node-proxy ca serve` runs it.
//!
//! Parts: which Gateways are waypoints and what they ask ([`gateway`]), the objects rendered
//! from one ([`render`]), its ClusterRoleBinding ([`binding`]), its status ([`status`]), the
//! loop that watches and applies ([`reconcile`]), which replica writes ([`leader`]), the API calls it makes ([`access`]).

pub mod access;
pub mod binding;
mod config;
mod error;
pub mod gateway;
pub mod leader;
pub mod reconcile;
pub mod render;
pub mod status;
mod telemetry;
#[cfg(test)]
mod tests;

pub use config::{ControllerSettings, DEFAULT_IMAGE, FIELD_MANAGER};
pub use error::ControllerError;
pub use gateway::{GatewayError, Waypoint};
pub use leader::ElectionSettings;
pub use reconcile::run;
pub use telemetry::{ControllerTelemetry, KindLabels, ReasonLabels};
