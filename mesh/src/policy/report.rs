//! What marrow does not enforce as written, object by object: the one report behind the log
//! lines, the `marrow_config_unsupported{kind,reason}` gauge and `/config_dump`.
//!
//! Invariant: the report is a pure function of the [`PolicySet`]; an object appears once per
//! reason, with every finding of that reason and what marrow does instead.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::PolicySet;
use super::model::{Action, AuthorizationPolicy, Finding, PolicyRef};
use super::parse::PolicyKind;
use super::peer_auth::PeerAuthentication;

/// Why (part of) an object is not enforced as written: the `reason` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnsupportedReason {
    /// An AUDIT AuthorizationPolicy: marrow does not audit-log; no decision changes.
    AuditAction,
    /// A CUSTOM AuthorizationPolicy: marrow cannot consult its provider, and denies what its
    /// rules match.
    CustomAction,
    /// An action marrow does not know: the policy denies what it selects.
    UnrecognizedAction,
    /// Fields only an L7 proxy checks.
    L7OnlyField,
    /// Fields marrow does not know (a newer Istio's).
    UnknownField,
    /// Malformed fields Istio's validation would refuse.
    InvalidField,
    /// A RequestAuthentication: JWTs are checked only at L7.
    RequestAuthentication,
    /// Fields of a waypoint's policy the waypoint does not check (JWT, experimental keys) or
    /// target references it cannot bind.
    NotAtWaypoint,
}

impl UnsupportedReason {
    /// Every (kind, reason) pair that can be reported.
    pub const BY_KIND: &'static [(PolicyKind, UnsupportedReason)] = &[
        (PolicyKind::AuthorizationPolicy, Self::AuditAction),
        (PolicyKind::AuthorizationPolicy, Self::CustomAction),
        (PolicyKind::AuthorizationPolicy, Self::UnrecognizedAction),
        (PolicyKind::AuthorizationPolicy, Self::L7OnlyField),
        (PolicyKind::AuthorizationPolicy, Self::UnknownField),
        (PolicyKind::AuthorizationPolicy, Self::InvalidField),
        (PolicyKind::AuthorizationPolicy, Self::NotAtWaypoint),
        (PolicyKind::PeerAuthentication, Self::UnknownField),
        (PolicyKind::PeerAuthentication, Self::InvalidField),
        (
            PolicyKind::RequestAuthentication,
            Self::RequestAuthentication,
        ),
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuditAction => "audit_action",
            Self::CustomAction => "custom_action",
            Self::UnrecognizedAction => "unrecognized_action",
            Self::L7OnlyField => "l7_only_field",
            Self::UnknownField => "unknown_field",
            Self::InvalidField => "invalid_field",
            Self::RequestAuthentication => "request_authentication",
            Self::NotAtWaypoint => "not_at_waypoint",
        }
    }
}

impl fmt::Display for UnsupportedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object and one reason it is not enforced as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unsupported {
    /// The object's kind.
    pub kind: PolicyKind,
    /// The object, `ns/name`.
    pub policy: PolicyRef,
    /// Why.
    pub reason: UnsupportedReason,
    /// What it says that is not enforced, and what marrow does instead.
    pub detail: String,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} not enforced as written ({}): {}",
            self.kind, self.policy, self.reason, self.detail
        )
    }
}

/// The report's JSON shape in `/config_dump`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnsupportedView {
    /// The Kubernetes kind.
    pub kind: &'static str,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The metric's reason label.
    pub reason: &'static str,
    /// What and why.
    pub detail: String,
}

impl Unsupported {
    /// The JSON shape.
    pub fn view(&self) -> UnsupportedView {
        UnsupportedView {
            kind: self.kind.as_str(),
            namespace: self.policy.namespace.clone(),
            name: self.policy.name.clone(),
            reason: self.reason.as_str(),
            detail: self.detail.clone(),
        }
    }
}

impl PolicySet {
    /// Every object not enforced as written, by kind, `ns/name` and reason.
    pub fn unsupported(&self) -> Vec<Unsupported> {
        let mut out = Vec::new();
        for policy in self.authorization_policies() {
            authorization(policy, &mut out);
        }
        for policy in self.peer_authentications() {
            peer(policy, &mut out);
        }
        for policy in self.request_authentications() {
            let mut detail = "JWT validation needs an L7 proxy (a waypoint); the node proxy does \
                              not apply it, and it changes no L4 decision"
                .to_owned();
            if !policy.findings.is_empty() {
                detail.push_str(&format!("; malformed: {}", join(&policy.findings)));
            }
            out.push(Unsupported {
                kind: PolicyKind::RequestAuthentication,
                policy: policy.reference(),
                reason: UnsupportedReason::RequestAuthentication,
                detail,
            });
        }
        out
    }

    /// How many objects each (kind, reason) has, for the gauge.
    pub fn unsupported_counts(&self) -> BTreeMap<(PolicyKind, UnsupportedReason), i64> {
        let mut counts = BTreeMap::new();
        for entry in self.unsupported() {
            *counts.entry((entry.kind, entry.reason)).or_insert(0) += 1;
        }
        counts
    }
}

fn authorization(policy: &AuthorizationPolicy, out: &mut Vec<Unsupported>) {
    let mut push = |reason, detail: String| {
        out.push(Unsupported {
            kind: PolicyKind::AuthorizationPolicy,
            policy: policy.reference(),
            reason,
            detail,
        });
    };
    if policy.targets_waypoint {
        // The waypoint's business: only a problem of the policy as a whole is ours to say.
        if !policy.findings.is_empty() {
            push(
                UnsupportedReason::InvalidField,
                format!(
                    "{}: bound to a waypoint by targetRefs, so the node proxy does not apply it",
                    join(&policy.findings)
                ),
            );
        }
        at_waypoint(policy, push);
        return;
    }
    match policy.action {
        Action::Audit => push(
            UnsupportedReason::AuditAction,
            "AUDIT marks requests for audit logging; marrow does not audit-log, and the policy \
             changes no decision"
                .to_owned(),
        ),
        Action::Custom => push(
            UnsupportedReason::CustomAction,
            format!(
                "marrow cannot consult the external authorizer {}; it denies the connections \
                 the policy's rules match (fail-safe)",
                policy
                    .provider
                    .as_deref()
                    .map_or_else(|| "(no provider named)".to_owned(), |p| format!("{p:?}"))
            ),
        ),
        Action::Unrecognized => {
            push(
                UnsupportedReason::UnrecognizedAction,
                format!(
                    "{}: marrow cannot tell what the policy allows; it denies every connection to \
                     the workloads it selects (fail-safe)",
                    join(&policy.findings)
                ),
            );
            return;
        }
        Action::Allow | Action::Deny => {}
    }
    let effect = match policy.action {
        Action::Allow => "an ALLOW rule with them never matches at L4",
        Action::Deny | Action::Custom | Action::Unrecognized => {
            "a rule with them is checked without them, so it denies more"
        }
        Action::Audit => "no decision changes",
    };
    let mut by_reason: BTreeMap<UnsupportedReason, Vec<String>> = BTreeMap::new();
    let mut add = |finding: &Finding, at: Option<usize>| {
        let reason = match finding {
            Finding::L7Only { .. } => UnsupportedReason::L7OnlyField,
            Finding::Unknown { .. } => UnsupportedReason::UnknownField,
            Finding::Invalid(_) => UnsupportedReason::InvalidField,
            Finding::NotAtWaypoint { .. } => UnsupportedReason::NotAtWaypoint,
        };
        let text = match at {
            Some(i) if matches!(finding, Finding::L7Only { .. }) => format!("rule {i}: {finding}"),
            _ => finding.to_string(),
        };
        let list = by_reason.entry(reason).or_default();
        if !list.contains(&text) {
            list.push(text);
        }
    };
    for finding in &policy.findings {
        add(finding, None);
    }
    for (i, rule) in policy.rules.iter().enumerate() {
        for finding in &rule.unchecked {
            add(finding, Some(i));
        }
    }
    for (reason, texts) in by_reason {
        push(reason, format!("{}: {effect}", texts.join(", ")));
    }
}

/// What the waypoint does not check as written in a policy bound to it by `targetRefs`, one
/// entry for all of it (the policy-wide problems are reported above).
fn at_waypoint(policy: &AuthorizationPolicy, mut push: impl FnMut(UnsupportedReason, String)) {
    let mut texts: Vec<String> = Vec::new();
    let rules = policy.rules.iter().enumerate();
    let per_rule = rules.flat_map(|(i, r)| r.unchecked_at_waypoint.iter().map(move |f| (i, f)));
    let elsewhere =
        |f: &Finding| policy.findings.contains(f) || policy.waypoint_findings.contains(f);
    for (i, finding) in per_rule.filter(|(_, f)| !elsewhere(f)) {
        let text = format!("rule {i}: {finding}");
        if !texts.contains(&text) {
            texts.push(text);
        }
    }
    texts.extend(policy.waypoint_findings.iter().map(ToString::to_string));
    if !texts.is_empty() {
        push(
            UnsupportedReason::NotAtWaypoint,
            format!(
                "{}: at the waypoint an ALLOW rule with them never matches and a DENY rule is \
                 checked without them",
                texts.join(", ")
            ),
        );
    }
}

fn peer(policy: &PeerAuthentication, out: &mut Vec<Unsupported>) {
    let (unknown, invalid): (Vec<&Finding>, Vec<&Finding>) = policy
        .findings
        .iter()
        .partition(|f| matches!(f, Finding::Unknown { .. }));
    let texts = |findings: &[&Finding]| {
        findings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !invalid.is_empty() {
        out.push(Unsupported {
            kind: PolicyKind::PeerAuthentication,
            policy: policy.reference(),
            reason: UnsupportedReason::InvalidField,
            detail: format!(
                "{}: read as STRICT where it could apply (plaintext refused; fail-safe)",
                texts(&invalid)
            ),
        });
    }
    if !unknown.is_empty() {
        out.push(Unsupported {
            kind: PolicyKind::PeerAuthentication,
            policy: policy.reference(),
            reason: UnsupportedReason::UnknownField,
            detail: format!(
                "{}: ignored; the rest of the policy applies",
                texts(&unknown)
            ),
        });
    }
}

/// Findings, comma separated.
fn join(findings: &[Finding]) -> String {
    super::model::join(findings)
}
