//! Authorization at a waypoint: which policies bind to it, and the decision for one request,
//! in the same order and with the same [`Decision`] as the node proxy's (CUSTOM, then DENY,
//! then ALLOW; no ALLOW bound → allow; dry-run policies only add to the reason).
//!
//! Binding follows istiod's `ShouldAttachPolicy` (`pilot/pkg/model/policyattachment.go`) for
//! a waypoint: a policy binds only through `targetRefs` — a Gateway
//! (`gateway.networking.k8s.io`) naming the waypoint, or a Service naming the request's
//! destination Service, in the policy's own namespace; or the GatewayClass `istio-waypoint`
//! from the root namespace (every waypoint). A policy without `targetRefs` never binds to a
//! waypoint, namespace-wide and root-namespace ones included ("waypoints never use selector"):
//! those are the node proxies'. A reference marrow cannot bind is reported, and bars the
//! policy's ALLOW rules where it does bind (fail-safe).

use super::PolicySet;
use super::eval::{Decision, Subject, evaluate_subject};
use super::model::{Action, AuthorizationPolicy, Rule, TargetRef};
use super::request::RequestAttrs;

/// Where a request is decided: the waypoint and, when the request is for a Service, that
/// Service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaypointScope<'a> {
    /// The waypoint Gateway's namespace.
    pub gateway_namespace: &'a str,
    /// The waypoint Gateway's name.
    pub gateway_name: &'a str,
    /// The destination Service, `(namespace, name)`, if the request is for one.
    pub service: Option<(&'a str, &'a str)>,
}

/// Whether `policy` binds to the waypoint in `scope` (see the module's notes).
pub fn binds(
    policy: &AuthorizationPolicy,
    root_namespace: &str,
    scope: &WaypointScope<'_>,
) -> bool {
    policy.target_refs.iter().any(|target| match target {
        TargetRef::Gateway { name } => {
            policy.namespace == scope.gateway_namespace && name == scope.gateway_name
        }
        TargetRef::Service { name } => scope
            .service
            .is_some_and(|(ns, svc)| policy.namespace == ns && name == svc),
        TargetRef::WaypointClass => policy.namespace == root_namespace,
        TargetRef::Other { .. } => false,
    })
}

/// Decides whether `req` may pass the waypoint in `at`. The one function the waypoint and
/// `explain` call.
pub fn evaluate_request(
    set: &PolicySet,
    at: &WaypointScope<'_>,
    req: &RequestAttrs<'_>,
) -> Decision {
    evaluate_subject(set, &Request { at, req })
}

/// A request through a waypoint, as [`Subject`] sees it.
struct Request<'a> {
    /// The waypoint and Service.
    at: &'a WaypointScope<'a>,
    /// The request.
    req: &'a RequestAttrs<'a>,
}

impl Subject for Request<'_> {
    fn applies(&self, policy: &AuthorizationPolicy, root_namespace: &str) -> bool {
        binds(policy, root_namespace, self.at)
    }
    fn rule_matches(&self, rule: &Rule, action: Action) -> bool {
        rule.matches_request(action, self.req)
    }
    fn explain(&self, rule: &Rule) -> String {
        rule.explain_request(self.req)
    }
    fn scope(&self) -> String {
        let mut text = format!(
            "bound to waypoint {}/{}",
            self.at.gateway_namespace, self.at.gateway_name
        );
        if let Some((ns, name)) = self.at.service {
            text.push_str(&format!(" or Service {ns}/{name}"));
        }
        text
    }
}
