//! Authorization decisions: Istio's order (CUSTOM first, then any matching DENY denies;
//! otherwise, if any ALLOW policy selects the workload, one of its rules must match; otherwise
//! allow), with the deciding policy, rule and a reason an operator can act on.
//!
//! What marrow cannot enforce is handled fail-safe: a CUSTOM policy denies what its rules match
//! (marrow cannot ask its external authorizer), a policy whose action marrow does not know
//! denies everything it selects, AUDIT changes nothing. Dry-run policies (`istio.io/dry-run`)
//! never decide; what they would have done is added to the reason, for the access log, as
//! ztunnel logs them (`assert_rbac` in `src/state.rs`).
//!
//! Policies are visited in `namespace/name` order, so the same state always gives the same
//! decision and the same explanation.

use std::collections::BTreeMap;
use std::fmt;

use super::PolicySet;
use super::model::{Action, AuthorizationPolicy, ConnectionAttrs, PolicyRef, Rule};

/// The destination workload as policy sees it.
#[derive(Clone, Copy, Debug)]
pub struct Destination<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name (for explanations).
    pub name: &'a str,
    /// Its labels.
    pub labels: &'a BTreeMap<String, String>,
}

impl Destination<'_> {
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
pub fn selects(policy: &AuthorizationPolicy, root_namespace: &str, dst: &Destination<'_>) -> bool {
    let in_scope = policy.namespace == root_namespace || policy.namespace == dst.namespace;
    in_scope
        && !policy.targets_waypoint
        && policy.selector.as_ref().is_none_or(|s| dst.selected_by(s))
}

/// What one evaluation is about: which policies apply, and how a rule matches and is
/// explained. The node proxy asks about a connection to a workload; the waypoint about a
/// request through it (`super::waypoint`). The order and the wording are shared.
pub(super) trait Subject {
    /// Whether `policy` (dry-run or not) applies here.
    fn applies(&self, policy: &AuthorizationPolicy, root_namespace: &str) -> bool;
    /// Whether `rule` of a policy with `action` matches.
    fn rule_matches(&self, rule: &Rule, action: Action) -> bool;
    /// What made a matching rule match.
    fn explain(&self, rule: &Rule) -> String;
    /// How the reason names the policies' scope, e.g. `selecting shop/web`.
    fn scope(&self) -> String;
}

/// A connection to a workload, as the node proxy sees it.
struct Connection<'a> {
    /// The destination workload.
    dst: &'a Destination<'a>,
    /// The connection.
    conn: &'a ConnectionAttrs,
}

impl Subject for Connection<'_> {
    fn applies(&self, policy: &AuthorizationPolicy, root_namespace: &str) -> bool {
        selects(policy, root_namespace, self.dst)
    }
    fn rule_matches(&self, rule: &Rule, action: Action) -> bool {
        rule.matches(action, self.conn)
    }
    fn explain(&self, rule: &Rule) -> String {
        rule.explain(self.conn)
    }
    fn scope(&self) -> String {
        format!("selecting {}/{}", self.dst.namespace, self.dst.name)
    }
}

/// The first rule of `policy` that matches.
fn matching_rule(policy: &AuthorizationPolicy, subject: &impl Subject) -> Option<usize> {
    policy
        .rules
        .iter()
        .position(|r| subject.rule_matches(r, policy.action))
}

/// Decides whether `conn` may reach `dst`.
pub fn evaluate(policies: &PolicySet, dst: &Destination<'_>, conn: &ConnectionAttrs) -> Decision {
    evaluate_subject(policies, &Connection { dst, conn })
}

/// The decision, with what dry-run policies would have done added to the reason.
pub(super) fn evaluate_subject(policies: &PolicySet, subject: &impl Subject) -> Decision {
    let mut decision = decide(policies, subject);
    if policies.has_dry_run() {
        let shadow = dry_run(policies, subject);
        if !shadow.is_empty() {
            decision.reason = format!("{}; dry-run: {}", decision.reason, shadow.join("; "));
        }
    }
    decision
}

/// The decision of the enforced policies (not dry-run, not AUDIT), in one pass in name
/// order. A rule is evaluated only while no stronger match is known (Istio's order: CUSTOM,
/// then DENY, then ALLOW), so the work is what a pass per action would do, without the passes.
fn decide(policies: &PolicySet, subject: &impl Subject) -> Decision {
    let root = policies.root_namespace();
    let applicable = || {
        policies
            .authorization_policies()
            .iter()
            .filter(move |p| !p.dry_run && subject.applies(p, root))
    };
    let (mut custom, mut deny, mut allow) = (None, None, None);
    let mut allows = 0_usize;
    for policy in applicable() {
        let first = |policy| matching_rule(policy, subject).map(|index| (policy, index));
        match policy.action {
            Action::Unrecognized => return unreadable(policy),
            Action::Custom if custom.is_none() => custom = first(policy),
            Action::Deny if custom.is_none() && deny.is_none() => deny = first(policy),
            Action::Allow => {
                allows += 1;
                if custom.is_none() && deny.is_none() && allow.is_none() {
                    allow = first(policy);
                }
            }
            Action::Custom | Action::Deny | Action::Audit => {}
        }
    }
    if let Some((policy, index)) = custom.or(deny) {
        return decided(Verdict::Deny, policy, index, subject);
    }
    if let Some((policy, index)) = allow {
        return decided(Verdict::Allow, policy, index, subject);
    }
    if allows == 0 {
        return Decision {
            verdict: Verdict::Allow,
            policy: None,
            rule: None,
            reason: "allowed: no policy applies".to_owned(),
        };
    }
    let checked = allows;
    let names: Vec<String> = applicable()
        .filter(|p| p.action == Action::Allow)
        .map(|p| p.reference().to_string())
        .collect();
    let noun = if checked == 1 { "policy" } else { "policies" };
    Decision {
        verdict: Verdict::Deny,
        policy: None,
        rule: None,
        reason: format!(
            "no ALLOW policy {} matched ({checked} {noun} checked: {})",
            subject.scope(),
            names.join(", ")
        ),
    }
}

/// What the dry-run policies that apply would have decided, one line each (empty when none
/// applies): matching DENY and CUSTOM policies, matching ALLOW policies, and, when only dry-run
/// ALLOW policies apply and none matches, that they would deny.
fn dry_run(policies: &PolicySet, subject: &impl Subject) -> Vec<String> {
    let root = policies.root_namespace();
    let shadow: Vec<&AuthorizationPolicy> = policies
        .authorization_policies()
        .iter()
        .filter(|p| p.dry_run && subject.applies(p, root))
        .collect();
    let mut out = Vec::new();
    for policy in &shadow {
        let verdict = match policy.action {
            Action::Deny | Action::Custom => "deny",
            Action::Allow => "allow",
            Action::Unrecognized => {
                out.push(format!(
                    "policy {} would deny (its action cannot be read)",
                    policy.reference()
                ));
                continue;
            }
            Action::Audit => continue,
        };
        if let Some(index) = matching_rule(policy, subject) {
            out.push(format!(
                "{} policy {} rule {index} would {verdict}",
                policy.action,
                policy.reference()
            ));
        }
    }
    let enforced_allow = policies
        .authorization_policies()
        .iter()
        .any(|p| !p.dry_run && p.action == Action::Allow && subject.applies(p, root));
    let shadow_allow: Vec<&&AuthorizationPolicy> = shadow
        .iter()
        .filter(|p| p.action == Action::Allow)
        .collect();
    if !enforced_allow
        && !shadow_allow.is_empty()
        && !shadow_allow
            .iter()
            .any(|p| matching_rule(p, subject).is_some())
    {
        out.push("no dry-run ALLOW policy matches: they would deny".to_owned());
    }
    out
}

/// A policy whose action cannot be read denies every connection to what it selects.
fn unreadable(policy: &AuthorizationPolicy) -> Decision {
    Decision {
        verdict: Verdict::Deny,
        policy: Some(policy.reference()),
        rule: None,
        reason: format!(
            "denied by policy {}/{}: marrow cannot read its action ({}), so it denies every \
             connection to what the policy selects",
            policy.namespace,
            policy.name,
            super::model::join(&policy.findings)
        ),
    }
}

fn decided(
    verdict: Verdict,
    policy: &AuthorizationPolicy,
    index: usize,
    subject: &impl Subject,
) -> Decision {
    let why = policy
        .rules
        .get(index)
        .map(|r| subject.explain(r))
        .unwrap_or_default();
    let verb = match verdict {
        Verdict::Allow => "allowed",
        Verdict::Deny => "denied",
    };
    let custom = if policy.action == Action::Custom {
        format!(
            " (a CUSTOM policy: marrow cannot consult its external authorizer {}, so it denies \
             what the policy's rules match)",
            policy
                .provider
                .as_deref()
                .map_or_else(|| "(none named)".to_owned(), |p| format!("{p:?}"))
        )
    } else {
        String::new()
    };
    Decision {
        verdict,
        policy: Some(policy.reference()),
        rule: Some(index),
        reason: format!(
            "{verb} by {} policy {}/{} rule {index}{custom}: {why}",
            policy.action, policy.namespace, policy.name
        ),
    }
}
