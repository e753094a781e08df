//! L4 authorization with Istio's semantics: `security.istio.io` AuthorizationPolicy (ALLOW and
//! DENY) and PeerAuthentication, parsed from Kubernetes JSON into a [`PolicySet`] and evaluated
//! as pure functions of that set, the destination workload and the connection.
//!
//! Invariants: a [`PolicySet`] holds only documents that parsed, sorted by `namespace/name` (so
//! decisions are deterministic), and every L7-only field a policy used is reported by
//! [`PolicySet::warnings`]. AUDIT and CUSTOM policies are refused at parse time.

mod eval;
pub mod explain;
mod matcher;
mod model;
mod parse;
mod peer_auth;

#[cfg(test)]
mod tests;

pub use eval::{Decision, Verdict, WorkloadView, evaluate, selects};
pub use matcher::{CidrError, IpBlock, Match, Pattern, ServiceAccount, StringMatch};
pub use model::{
    Action, AuthorizationPolicy, Condition, ConnectionView, Operation, PolicyRef, Rule, Source,
};
pub use parse::{ParseError, PolicyKind, authorization_policy, peer_authentication};
pub use peer_auth::{
    ModeSetting, MtlsError, MtlsMode, PeerAuthentication, mtls_mode, plaintext_allowed,
    resolve_mtls,
};

use crate::state::{DeferredKind, DeferredObject};

/// Istio's default root namespace: policies there without a selector are mesh-wide.
pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";

/// All policies in force, sorted by `namespace/name`.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicySet {
    /// The mesh's root namespace.
    root_namespace: String,
    /// AuthorizationPolicies, sorted.
    authorization: Vec<AuthorizationPolicy>,
    /// PeerAuthentications, sorted.
    peer_authentication: Vec<PeerAuthentication>,
}

impl Default for PolicySet {
    fn default() -> Self {
        Self::new(DEFAULT_ROOT_NAMESPACE)
    }
}

impl PolicySet {
    /// An empty set with `root_namespace` as the mesh-wide scope.
    pub fn new(root_namespace: &str) -> Self {
        Self {
            root_namespace: root_namespace.to_owned(),
            authorization: Vec::new(),
            peer_authentication: Vec::new(),
        }
    }

    /// Parses the snapshot's AuthorizationPolicy and PeerAuthentication objects; the first
    /// refused document fails the whole set, as a bad update should.
    pub fn from_deferred<'a>(
        root_namespace: &str,
        objects: impl IntoIterator<Item = &'a DeferredObject>,
    ) -> Result<Self, ParseError> {
        let mut set = Self::new(root_namespace);
        for object in objects {
            match object.kind {
                DeferredKind::AuthorizationPolicy => {
                    set.insert_authorization(authorization_policy(&object.body)?);
                }
                DeferredKind::PeerAuthentication => {
                    set.insert_peer_authentication(peer_authentication(&object.body)?);
                }
                DeferredKind::Service | DeferredKind::EndpointSlice => {}
            }
        }
        Ok(set)
    }

    /// Adds or replaces (same `ns/name`) an authorization policy.
    pub fn insert_authorization(&mut self, policy: AuthorizationPolicy) {
        let key = |p: &AuthorizationPolicy| (p.namespace.clone(), p.name.clone());
        match self.authorization.binary_search_by_key(&key(&policy), key) {
            Ok(i) => self.authorization[i] = policy,
            Err(i) => self.authorization.insert(i, policy),
        }
    }

    /// Adds or replaces (same `ns/name`) a peer authentication policy.
    pub fn insert_peer_authentication(&mut self, policy: PeerAuthentication) {
        let key = |p: &PeerAuthentication| (p.namespace.clone(), p.name.clone());
        match self
            .peer_authentication
            .binary_search_by_key(&key(&policy), key)
        {
            Ok(i) => self.peer_authentication[i] = policy,
            Err(i) => self.peer_authentication.insert(i, policy),
        }
    }

    /// The mesh's root namespace.
    pub fn root_namespace(&self) -> &str {
        &self.root_namespace
    }

    /// Authorization policies, sorted by `namespace/name`.
    pub fn authorization_policies(&self) -> &[AuthorizationPolicy] {
        &self.authorization
    }

    /// Peer authentication policies, sorted by `namespace/name`.
    pub fn peer_authentications(&self) -> &[PeerAuthentication] {
        &self.peer_authentication
    }

    /// Warnings to log: L7-only fields, and PeerAuthentication settings Istio ignores.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .authorization
            .iter()
            .flat_map(AuthorizationPolicy::warnings)
            .collect();
        for pa in &self.peer_authentication {
            if pa.selector.is_some() && pa.namespace == self.root_namespace {
                out.push(format!(
                    "PeerAuthentication {}/{} has a selector in the root namespace: ignored, as in Istio",
                    pa.namespace, pa.name
                ));
            } else if pa.selector.is_none() && !pa.port_level.is_empty() {
                out.push(format!(
                    "PeerAuthentication {}/{} sets portLevelMtls without a selector: ignored, as in Istio",
                    pa.namespace, pa.name
                ));
            }
        }
        out
    }
}
