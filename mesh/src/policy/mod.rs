//! Authorization with Istio's semantics: `security.istio.io` AuthorizationPolicy and
//! PeerAuthentication (RequestAuthentication is kept to be reported), parsed from Kubernetes
//! JSON into a [`PolicySet`] and evaluated as pure functions of that set: at L4 for the node
//! proxy ([`evaluate`]: the destination workload and the connection), and at L7 for a waypoint
//! ([`evaluate_request`]: the policies bound to it by `targetRefs`, and the request).
//!
//! Invariants: every valid Istio object is accepted, and a malformed one costs only itself —
//! nothing here refuses a state. A [`PolicySet`] is sorted by `namespace/name` (so decisions
//! are deterministic). What is not enforced as written (AUDIT, CUSTOM, L7-only, unknown and
//! malformed fields, RequestAuthentication) is in [`PolicySet::unsupported`] and handled
//! fail-safe: it never allows what Istio would deny.

mod eval;
mod matcher;
mod model;
mod parse;
mod peer_auth;
mod report;
mod request;
mod waypoint;

#[cfg(test)]
mod tests;

pub use eval::{Decision, Destination, Verdict, evaluate, selects};
pub use matcher::{
    CidrError, IpBlock, Match, PathPattern, Pattern, ServiceAccount, StringMatch, TemplateSegment,
};
pub use model::{
    Action, AuthorizationPolicy, Condition, ConnectionAttrs, Finding, Operation, PolicyRef,
    RequestAuthentication, Rule, Source, TargetRef,
};
pub use parse::{
    ParseError, PolicyKind, authorization_policy, peer_authentication, request_authentication,
};
pub use peer_auth::{
    ModeSetting, MtlsError, MtlsMode, PeerAuthentication, mtls_mode, plaintext_allowed,
    resolve_mtls,
};
pub use report::{Unsupported, UnsupportedReason, UnsupportedView};
pub use request::{RequestAttrs, RequestCondition, request_host};
pub use waypoint::{WaypointScope, binds, evaluate_request};

use crate::objects::{RawKind, RawObject};

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
    /// RequestAuthentications, sorted: reported, never enforced.
    request_authentication: Vec<RequestAuthentication>,
    /// Whether an AuthorizationPolicy is dry-run: the data path evaluates them only then.
    any_dry_run: bool,
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
            request_authentication: Vec::new(),
            any_dry_run: false,
        }
    }

    /// Parses the snapshot's `security.istio.io` objects. None refuses the set: what cannot be
    /// enforced as written is in [`PolicySet::unsupported`]. (A source never keeps an object
    /// without a name, the one thing a parser refuses; one would be logged and left out.)
    pub fn from_objects<'a>(
        root_namespace: &str,
        objects: impl IntoIterator<Item = &'a RawObject>,
    ) -> Self {
        let mut set = Self::new(root_namespace);
        for object in objects {
            let parsed = match object.kind {
                RawKind::AuthorizationPolicy => {
                    authorization_policy(&object.body).map(|p| set.insert_authorization(p))
                }
                RawKind::PeerAuthentication => {
                    peer_authentication(&object.body).map(|p| set.insert_peer_authentication(p))
                }
                RawKind::RequestAuthentication => request_authentication(&object.body)
                    .map(|p| set.insert_request_authentication(p)),
                RawKind::Service
                | RawKind::EndpointSlice
                | RawKind::Gateway
                | RawKind::GatewayClass
                | RawKind::Telemetry
                | RawKind::VirtualService
                | RawKind::DestinationRule
                | RawKind::HttpRoute
                | RawKind::GrpcRoute
                | RawKind::TcpRoute
                | RawKind::MeshConfig => Ok(()),
            };
            if let Err(error) = parsed {
                tracing::warn!(object = %object.object, %error, "policy left out");
            }
        }
        set
    }

    /// Adds or replaces (same `ns/name`) an authorization policy.
    pub fn insert_authorization(&mut self, policy: AuthorizationPolicy) {
        let key = |p: &AuthorizationPolicy| (p.namespace.clone(), p.name.clone());
        let dry_run = policy.dry_run;
        match self.authorization.binary_search_by_key(&key(&policy), key) {
            Ok(i) => {
                self.authorization[i] = policy;
                self.any_dry_run = self.authorization.iter().any(|p| p.dry_run);
            }
            Err(i) => {
                self.authorization.insert(i, policy);
                self.any_dry_run |= dry_run;
            }
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

    /// Adds or replaces (same `ns/name`) a request authentication policy.
    pub fn insert_request_authentication(&mut self, policy: RequestAuthentication) {
        let key = |p: &RequestAuthentication| (p.namespace.clone(), p.name.clone());
        match self
            .request_authentication
            .binary_search_by_key(&key(&policy), key)
        {
            Ok(i) => self.request_authentication[i] = policy,
            Err(i) => self.request_authentication.insert(i, policy),
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

    /// RequestAuthentications, sorted by `namespace/name`.
    pub fn request_authentications(&self) -> &[RequestAuthentication] {
        &self.request_authentication
    }

    /// Whether any policy is in dry-run mode (evaluated only for the log and `explain`).
    pub fn has_dry_run(&self) -> bool {
        self.any_dry_run
    }

    /// Warnings to log, one line per object and reason: what is not enforced as written, and
    /// policies the node proxy leaves to others or Istio ignores.
    pub fn warnings(&self) -> Vec<String> {
        let mut out: Vec<String> = self.unsupported().iter().map(ToString::to_string).collect();
        for policy in self.authorization.iter().filter(|p| p.targets_waypoint) {
            out.extend(policy.warnings());
        }
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
