//! `node-proxy ca serve`: a CA speaking Istio's protocol (gRPC
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS) for clusters without
//! istiod. Node proxies ask it for the certificates of the pods on their node.
//!
//! This module owns who may obtain which identity, and what a certificate it signs says.
//! Invariants:
//! - a caller is who a Kubernetes TokenReview says (audience checked); a workload may obtain
//!   only its own identity; a configured node-proxy account may obtain another identity only
//!   when a pod with that ServiceAccount is scheduled on the node of the pod its token is bound
//!   to ([`authorize`]);
//! - a certificate is built from scratch, never from the CSR's extensions: the CSR's public key
//!   (ECDSA P-256/P-384 or RSA of 2048 bits or more, self-signature verified) and exactly one
//!   URI SAN, the granted SPIFFE ID; not a CA; bounded in time by `--max-cert-ttl-secs` and the
//!   CA's own notAfter ([`csr`]);
//! - the signing key is reloaded when its files change; a broken new pair never replaces a
//!   working one;
//! - the bearer token is never logged nor put in an error.

mod app;
pub mod authorize;
mod config;
pub mod csr;
mod error;
mod server;
mod signer;
mod telemetry;
#[cfg(test)]
mod tests;

pub use app::run;
pub use authorize::{Grant, ServiceAccount};
pub use config::{
    CaSettings, DEFAULT_AUDIENCE, DEFAULT_LISTEN, DEFAULT_NODE_PROXY_ACCOUNTS,
    DEFAULT_SERVING_NAMES, ServeConfig,
};
pub use error::CaError;
pub use server::serve;
pub use telemetry::{CaTelemetry, RefusalLabels};
