//! Authorization decisions: Istio's order (any matching DENY denies; otherwise, if any ALLOW
//! policy selects the workload, one of its rules must match; otherwise allow), with the deciding
//! policy, rule and a reason an operator can act on.
//!
//! Policies are visited in `namespace/name` order, so the same state always gives the same
//! decision and the same explanation.

use std::collections::BTreeMap;
use std::fmt;

use super::PolicySet;
use super::model::{Action, AuthorizationPolicy, ConnectionView, PolicyRef};

/// The destination workload as policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct WorkloadView<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name (for explanations).
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl WorkloadView<'_> {
    /// Whether `match_labels` is a subset of the workload's labels.
    pub fn selected_by(&self, match_labels: &BTreeMap<String, String>) -> bool {
        match_labels
            .iter()
            .all(|(k, v)| self.labels.get(k).is_some_and(|l| l == v))
    }
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The connection may proceed.
    Allow,
    /// The connection is refused.
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        })
    }
}

/// An explained authorization decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub verdict: Verdict,
    /// The policy that decided, if one did.
    pub policy: Option<PolicyRef>,
    /// The index of the deciding rule in that policy.
    pub rule: Option<usize>,
    /// Why, in words.
    pub reason: String,
}

impl Decision {
    /// Whether the connection may proceed.
    pub fn is_allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// Whether `policy` applies to `dst` under `root_namespace`.
pub fn selects(policy: &AuthorizationPolicy, root_namespace: &str, dst: &WorkloadView<'_>) -> bool {
    let in_scope = policy.namespace == root_namespace || policy.namespace == dst.namespace;
    in_scope
        && !policy.targets_waypoint
        && policy.selector.as_ref().is_none_or(|s| dst.selected_by(s))
}

/// The first rule of `policy` that matches `conn`.
fn matching_rule(policy: &AuthorizationPolicy, conn: &ConnectionView) -> Option<usize> {
    policy
        .rules
        .iter()
        .position(|r| r.matches(policy.action, conn))
}

/// Decides whether `conn` may reach `dst`.
pub fn evaluate(policies: &PolicySet, dst: &WorkloadView<'_>, conn: &ConnectionView) -> Decision {
    let root = policies.root_namespace();
    let applicable = || {
        policies
            .authorization_policies()
            .iter()
            .filter(|p| selects(p, root, dst))
    };
    for policy in applicable().filter(|p| p.action == Action::Deny) {
        if let Some(index) = matching_rule(policy, conn) {
            return decided(Verdict::Deny, policy, index, conn);
        }
    }
    let allows = || applicable().filter(|p| p.action == Action::Allow);
    let mut checked = 0_usize;
    for policy in allows() {
        if let Some(index) = matching_rule(policy, conn) {
            return decided(Verdict::Allow, policy, index, conn);
        }
        checked += 1;
    }
    if checked == 0 {
        return Decision {
            verdict: Verdict::Allow,
            policy: None,
            rule: None,
            reason: "allowed: no policy applies".to_owned(),
        };
    }
    let names: Vec<String> = allows().map(|p| p.reference().to_string()).collect();
    let noun = if checked == 1 { "policy" } else { "policies" };
    Decision {
        verdict: Verdict::Deny,
        policy: None,
        rule: None,
        reason: format!(
            "no ALLOW policy selecting {}/{} matched ({checked} {noun} checked: {})",
            dst.namespace,
            dst.name,
            names.join(", ")
        ),
    }
}

fn decided(
    verdict: Verdict,
    policy: &AuthorizationPolicy,
    index: usize,
    conn: &ConnectionView,
) -> Decision {
    let why = policy
        .rules
        .get(index)
        .map(|r| r.explain(conn))
        .unwrap_or_default();
    let verb = match verdict {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
    };
    Decision {
        verdict,
        policy: Some(policy.reference()),
        rule: Some(index),
        reason: format!(
            "{verb} by {} policy {}/{} rule {index}: {why}",
            policy.action, policy.namespace, policy.name
        ),
    }
}
