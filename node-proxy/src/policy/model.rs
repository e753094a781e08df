//! Authorization policy types, apart from the Kubernetes wire format, and rule matching.
//!
//! Invariant: a parsed [`Rule`] holds only what can be checked at L4; the L7-only fields it
//! had are named in [`Rule::l7_only_fields`] and decide how the rule behaves (see
//! [`Rule::matches`]).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::matcher::{IpBlock, Match, ServiceAccount, StringMatch};
use crate::identity::SpiffeId;

/// A policy's namespace and name, shown as `ns/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a matching policy does; AUDIT and CUSTOM are refused by the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Admit matching connections; deny the rest of the selected workloads' traffic.
    Allow,
    /// Refuse matching connections.
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
        })
    }
}

/// An `security.istio.io` AuthorizationPolicy, as enforced at L4.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthorizationPolicy {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.selector.matchLabels`; `None` (or empty) selects the whole namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.action`.
    pub action: Action,
    /// `spec.rules`; none at all matches nothing (ALLOW with no rules is Istio's deny-all).
    pub rules: Vec<Rule>,
    /// `spec.targetRef(s)` is set: the policy binds to a waypoint or gateway, so the node
    /// proxy does not enforce it (Istio's ztunnel ignores it too).
    pub targets_waypoint: bool,
}

impl AuthorizationPolicy {
    /// The policy's `ns/name`.
    pub fn reference(&self) -> PolicyRef {
        PolicyRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// One warning per rule that had L7-only fields, naming the policy and what happens.
    pub fn warnings(&self) -> Vec<String> {
        if self.targets_waypoint {
            return vec![format!(
                "{} policy {}/{} uses targetRefs: enforced by a waypoint, not by the node proxy",
                self.action, self.namespace, self.name
            )];
        }
        let effect = match self.action {
            Action::Allow => "the rule never matches at L4",
            Action::Deny => "those fields are ignored and the rest of the rule still denies",
        };
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.l7_only_fields.is_empty())
            .map(|(i, r)| {
                format!(
                    "{} policy {}/{} rule {i} uses L7-only fields ({}): {effect}",
                    self.action,
                    self.namespace,
                    self.name,
                    r.l7_only_fields.join(", ")
                )
            })
            .collect()
    }
}

/// One rule: every non-empty list must have an element that matches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rule {
    /// `from[].source`: any may match.
    pub from: Vec<Source>,
    /// `to[].operation`: any may match.
    pub to: Vec<Operation>,
    /// `when`: all must match.
    pub when: Vec<Condition>,
    /// The L7-only fields the rule had, e.g. `to.operation.methods`; dropped from the above.
    pub l7_only_fields: Vec<String>,
}

/// `from.source`: all set fields must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Source {
    /// `principals` / `notPrincipals`, matched against the SPIFFE ID without `spiffe://`.
    pub principals: Match<StringMatch>,
    /// `namespaces` / `notNamespaces`, the namespace in the peer's SPIFFE ID.
    pub namespaces: Match<StringMatch>,
    /// `serviceAccounts` / `notServiceAccounts`, `ns/sa` from the peer's SPIFFE ID.
    pub service_accounts: Match<ServiceAccount>,
    /// `ipBlocks` / `notIpBlocks`, the peer's address.
    pub ip_blocks: Match<IpBlock>,
}

/// `to.operation` at L4: ports only.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Operation {
    /// `ports` / `notPorts`, the destination port.
    pub ports: Match<u16>,
}

/// A `when` condition on one of the L4 keys.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// `source.ip`.
    SourceIp(Match<IpBlock>),
    /// `source.namespace`.
    SourceNamespace(Match<StringMatch>),
    /// `source.principal`.
    SourcePrincipal(Match<StringMatch>),
    /// `destination.ip`.
    DestinationIp(Match<IpBlock>),
    /// `destination.port`.
    DestinationPort(Match<u16>),
}

/// The connection as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionView {
    /// The peer's verified identity; `None` for plaintext.
    pub source_principal: Option<SpiffeId>,
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The address connected to.
    pub destination_ip: IpAddr,
    /// The port connected to.
    pub destination_port: u16,
}

impl ConnectionView {
    /// The principal as Istio writes it: the SPIFFE ID without `spiffe://`.
    pub fn principal(&self) -> Option<&str> {
        self.source_principal
            .as_ref()
            .map(|id| id.as_str().strip_prefix("spiffe://").unwrap_or(id.as_str()))
    }

    /// The peer's namespace, from its principal.
    pub fn source_namespace(&self) -> Option<&str> {
        self.source_principal.as_ref().map(SpiffeId::namespace)
    }
}

impl Rule {
    /// Istio's rule semantics under `action`: an ALLOW rule with L7-only fields never
    /// matches; a DENY rule is checked without them.
    pub fn matches(&self, action: Action, conn: &ConnectionView) -> bool {
        if action == Action::Allow && !self.l7_only_fields.is_empty() {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(conn)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(conn)))
            && self.when.iter().all(|c| c.matches(conn))
    }

    /// What made a matching rule match, for the decision's reason.
    pub fn explain(&self, conn: &ConnectionView) -> String {
        let mut parts = Vec::new();
        if let Some(source) = self.from.iter().find(|s| s.matches(conn)) {
            source.explain(conn, &mut parts);
        }
        if let Some(op) = self.to.iter().find(|o| o.matches(conn)) {
            op.ports
                .explain("destination.port", Some(&conn.destination_port), &mut parts);
        }
        for condition in &self.when {
            condition.explain(conn, &mut parts);
        }
        let mut text = if parts.is_empty() {
            "the rule matches every connection".to_owned()
        } else {
            parts.join(", ")
        };
        if !self.l7_only_fields.is_empty() {
            text.push_str(&format!(
                " (L7-only fields ignored: {})",
                self.l7_only_fields.join(", ")
            ));
        }
        text
    }
}

impl Source {
    /// Whether every set field matches.
    pub fn matches(&self, conn: &ConnectionView) -> bool {
        self.principals.matches(conn.principal())
            && self.namespaces.matches(conn.source_namespace())
            && self
                .service_accounts
                .matches(conn.source_principal.as_ref())
            && self.ip_blocks.matches(Some(&conn.source_ip))
    }

    fn explain(&self, conn: &ConnectionView, out: &mut Vec<String>) {
        let principal = conn.principal();
        let id = conn.source_principal.as_ref();
        self.principals.explain("source.principal", principal, out);
        self.namespaces
            .explain("source.namespace", conn.source_namespace(), out);
        self.service_accounts
            .explain("source.serviceAccount", id, out);
        self.ip_blocks
            .explain("source.ip", Some(&conn.source_ip), out);
    }
}

impl Operation {
    /// Whether the destination port matches.
    pub fn matches(&self, conn: &ConnectionView) -> bool {
        self.ports.matches(Some(&conn.destination_port))
    }
}

impl Condition {
    /// Whether the condition holds for `conn`.
    pub fn matches(&self, conn: &ConnectionView) -> bool {
        match self {
            Self::SourceIp(m) => m.matches(Some(&conn.source_ip)),
            Self::SourceNamespace(m) => m.matches(conn.source_namespace()),
            Self::SourcePrincipal(m) => m.matches(conn.principal()),
            Self::DestinationIp(m) => m.matches(Some(&conn.destination_ip)),
            Self::DestinationPort(m) => m.matches(Some(&conn.destination_port)),
        }
    }

    fn explain(&self, conn: &ConnectionView, out: &mut Vec<String>) {
        match self {
            Self::SourceIp(m) => m.explain("when source.ip", Some(&conn.source_ip), out),
            Self::SourceNamespace(m) => {
                m.explain("when source.namespace", conn.source_namespace(), out);
            }
            Self::SourcePrincipal(m) => m.explain("when source.principal", conn.principal(), out),
            Self::DestinationIp(m) => {
                m.explain("when destination.ip", Some(&conn.destination_ip), out);
            }
            Self::DestinationPort(m) => {
                m.explain("when destination.port", Some(&conn.destination_port), out);
            }
        }
    }
}
