//! Authorization policy types, apart from the Kubernetes wire format, and rule matching.
//!
//! Invariant: a parsed [`Rule`] holds only what can be checked at L4; whatever else it had
//! (L7-only fields, fields marrow does not know, malformed values) is named in
//! [`Rule::unchecked`] and decides how the rule behaves (see [`Rule::matches`]): the way
//! istiod builds rules it cannot translate (`pilot/pkg/security/authz/model/model.go`,
//! `checkError`), an ALLOW rule never matches and a DENY or CUSTOM rule is checked without
//! them, so it denies more.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use super::matcher::{IpBlock, Match, PathPattern, ServiceAccount, StringMatch};
use super::parse::ParseError;
use super::request::RequestCondition;
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

/// What a matching policy does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Admit matching connections; deny the rest of the selected workloads' traffic.
    Allow,
    /// Refuse matching connections.
    Deny,
    /// Istio marks matching requests for audit logging; it changes no decision, and marrow
    /// does not audit-log.
    Audit,
    /// Istio asks an external authorizer (`provider`) about matching requests. marrow cannot
    /// consult one, so it denies what the rules match (fail-safe, as istiod does when the
    /// provider is missing: `getBadCustomDenyRules` in `pilot/pkg/security/authz/builder`).
    Custom,
    /// An action marrow does not know (a malformed policy, or a newer Istio's): it denies every
    /// connection to what the policy selects, since it cannot tell what the policy allows.
    Unrecognized,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Allow => "ALLOW",
            Self::Deny => "DENY",
            Self::Audit => "AUDIT",
            Self::Custom => "CUSTOM",
            Self::Unrecognized => "unrecognized-action",
        })
    }
}

/// Something a policy says that marrow does not check as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A field only an L7 proxy can check, e.g. `to.operation.methods`.
    L7Only {
        /// Where, e.g. `to.operation.methods` or `when.request.headers[x]`.
        field: String,
    },
    /// A field marrow does not know, e.g. one of a newer Istio release.
    Unknown {
        /// Where, e.g. `rules[0].from[0].source.color`.
        field: String,
    },
    /// A malformed value or shape, which Istio's validation would have refused.
    Invalid(ParseError),
    /// A field the waypoint does not check yet: JWT claims and request principals (issue 19)
    /// and Envoy's experimental filter metadata.
    NotAtWaypoint {
        /// Where, e.g. `from.source.requestPrincipals`.
        field: String,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::L7Only { field } => write!(f, "{field} (L7-only)"),
            Self::Unknown { field } => write!(f, "{field} (a field marrow does not know)"),
            Self::Invalid(error) => write!(f, "{error}"),
            Self::NotAtWaypoint { field } => write!(f, "{field} (not checked by the waypoint)"),
        }
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
    /// `spec.targetRefs` (or the older `spec.targetRef`): what the policy binds to at a
    /// waypoint; malformed entries and kinds marrow does not bind are in
    /// [`AuthorizationPolicy::waypoint_findings`].
    pub target_refs: Vec<TargetRef>,
    /// Problems only the waypoint cares about (its target references); they bar the policy's
    /// ALLOW rules there, as [`Rule::unchecked_at_waypoint`] does.
    pub waypoint_findings: Vec<Finding>,
    /// `spec.provider.name`, for a CUSTOM policy.
    pub provider: Option<String>,
    /// The `istio.io/dry-run` annotation is true: evaluated for the log and `explain`, never
    /// for a decision (as ztunnel's `assert_rbac` and Envoy's shadow rules).
    pub dry_run: bool,
    /// Problems of the policy as a whole (action, selector, annotations); a problem that
    /// changes how the rules behave is also in each rule's [`Rule::unchecked`].
    pub findings: Vec<Finding>,
}

impl AuthorizationPolicy {
    /// The policy's `ns/name`.
    pub fn reference(&self) -> PolicyRef {
        PolicyRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Whether the policy takes part in decisions here: not a waypoint's, not dry-run, and
    /// not AUDIT (which changes no decision).
    pub fn is_enforced(&self) -> bool {
        !self.targets_waypoint && !self.dry_run && self.action != Action::Audit
    }

    /// Everything marrow does not enforce as written, policy-wide and per rule, each once.
    pub fn all_findings(&self) -> Vec<&Finding> {
        let mut out: Vec<&Finding> = Vec::new();
        for finding in self
            .findings
            .iter()
            .chain(self.rules.iter().flat_map(|r| r.unchecked.iter()))
        {
            if !out.contains(&finding) {
                out.push(finding);
            }
        }
        out
    }

    /// One warning per rule with unchecked fields, naming the policy and what happens.
    pub fn warnings(&self) -> Vec<String> {
        if self.targets_waypoint {
            return vec![format!(
                "{} policy {}/{} uses targetRefs: enforced by a waypoint, not by the node proxy",
                self.action, self.namespace, self.name
            )];
        }
        let effect = match self.action {
            Action::Allow => "the rule never matches at L4",
            Action::Deny | Action::Custom | Action::Unrecognized => {
                "those fields are ignored and the rest of the rule still denies"
            }
            Action::Audit => "AUDIT changes no decision",
        };
        self.rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.unchecked.is_empty())
            .map(|(i, r)| {
                format!(
                    "{} policy {}/{} rule {i} has fields not checked at L4 ({}): {effect}",
                    self.action,
                    self.namespace,
                    self.name,
                    join(&r.unchecked)
                )
            })
            .collect()
    }
}

/// Findings as a comma-separated list.
pub(super) fn join(findings: &[Finding]) -> String {
    let texts: Vec<String> = findings.iter().map(ToString::to_string).collect();
    texts.join(", ")
}

/// A `security.istio.io` RequestAuthentication: JWT rules that only an L7 proxy applies.
/// marrow keeps it to report it; at L4 it changes no decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAuthentication {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.selector.matchLabels`; `None` (or empty) selects the whole namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.targetRef(s)` is set: it binds to a waypoint or gateway.
    pub targets_waypoint: bool,
    /// What could not be read.
    pub findings: Vec<Finding>,
}

impl RequestAuthentication {
    /// The policy's `ns/name`.
    pub fn reference(&self) -> PolicyRef {
        PolicyRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// What a `targetRefs` entry names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetRef {
    /// A `gateway.networking.k8s.io` Gateway: the waypoint, by name, in the policy's namespace.
    Gateway {
        /// `name`.
        name: String,
    },
    /// A core Service, by name, in the policy's namespace: its waypoint applies the policy to
    /// requests for it.
    Service {
        /// `name`.
        name: String,
    },
    /// The GatewayClass `istio-waypoint`: every waypoint, when the policy is in the root
    /// namespace.
    WaypointClass,
    /// Anything else (another kind or group, another namespace): binds to nothing.
    Other {
        /// `group/kind/name` as written.
        text: String,
    },
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
    /// What the rule had that is not checked here (L7-only, unknown or malformed fields, and
    /// policy-wide problems that bar an ALLOW); dropped from the above.
    pub unchecked: Vec<Finding>,
    /// The `when` conditions only a waypoint reads (`request.headers[…]`, `remote.ip`,
    /// `connection.sni`); at L4 they are in [`Rule::unchecked`].
    pub request_when: Vec<RequestCondition>,
    /// What the waypoint does not check as written (the JWT fields, unknown and malformed
    /// fields, policy-wide problems): at the waypoint an ALLOW rule with any never matches and
    /// a DENY rule is checked without them.
    pub unchecked_at_waypoint: Vec<Finding>,
}

/// `from.source`: all set fields must match.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Source {
    /// `principals` / `notPrincipals`, matched against the SPIFFE ID without `spiffe://`.
    pub principals: Match<StringMatch>,
    /// `namespaces` / `notNamespaces`, the namespace in the peer's SPIFFE ID.
    pub namespaces: Match<StringMatch>,
    /// `serviceAccounts` / `notServiceAccounts`, `ns/sa` from the peer's SPIFFE ID (a bare
    /// name was resolved to the policy's namespace when parsed).
    pub service_accounts: Match<ServiceAccount>,
    /// `trustDomains` / `notTrustDomains`, the trust domain of the peer's SPIFFE ID.
    pub trust_domains: Match<StringMatch>,
    /// `ipBlocks` / `notIpBlocks`, the peer's address.
    pub ip_blocks: Match<IpBlock>,
    /// `remoteIpBlocks` / `notRemoteIpBlocks`, checked only by a waypoint: the original
    /// client's address (from the tunnel's `forwarded` header).
    pub remote_ip_blocks: Match<IpBlock>,
}

/// `to.operation`: ports at L4; a waypoint checks hosts, methods and paths too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Operation {
    /// `ports` / `notPorts`, the destination port.
    pub ports: Match<u16>,
    /// `hosts` / `notHosts`, the request's host without port; patterns are lowercased, as
    /// Istio matches hosts without case.
    pub hosts: Match<StringMatch>,
    /// `methods` / `notMethods`, the request method (case-sensitive, as in Istio).
    pub methods: Match<StringMatch>,
    /// `paths` / `notPaths`, the normalized path without its query.
    pub paths: Match<PathPattern>,
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
    /// `source.serviceAccount` (a bare name is in the policy's namespace).
    SourceServiceAccount(Match<ServiceAccount>),
    /// `source.trustDomain`.
    SourceTrustDomain(Match<StringMatch>),
}

/// The connection as policy sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionAttrs {
    /// The peer's verified identity; `None` for plaintext.
    pub source_principal: Option<SpiffeId>,
    /// The peer's address.
    pub source_ip: IpAddr,
    /// The address connected to.
    pub destination_ip: IpAddr,
    /// The port connected to.
    pub destination_port: u16,
}

impl ConnectionAttrs {
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

    /// The peer's trust domain, from its principal.
    pub fn source_trust_domain(&self) -> Option<&str> {
        self.source_principal.as_ref().map(SpiffeId::trust_domain)
    }
}

impl Rule {
    /// Istio's rule semantics under `action`: an ALLOW rule with unchecked fields never
    /// matches; a DENY or CUSTOM rule is checked without them.
    pub fn matches(&self, action: Action, conn: &ConnectionAttrs) -> bool {
        if action == Action::Allow && !self.unchecked.is_empty() {
            return false;
        }
        self.matches_at_l4(conn)
    }

    /// Whether the fields checked at L4 match, whatever the action.
    pub fn matches_at_l4(&self, conn: &ConnectionAttrs) -> bool {
        (self.from.is_empty() || self.from.iter().any(|s| s.matches(conn)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches(conn)))
            && self.when.iter().all(|c| c.matches(conn))
    }

    /// What made a matching rule match, for the decision's reason.
    pub fn explain(&self, conn: &ConnectionAttrs) -> String {
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
        if !self.unchecked.is_empty() {
            text.push_str(&format!(" (not checked: {})", join(&self.unchecked)));
        }
        text
    }
}

impl Source {
    /// Whether every set field matches.
    pub fn matches(&self, conn: &ConnectionAttrs) -> bool {
        self.principals.matches(conn.principal())
            && self.namespaces.matches(conn.source_namespace())
            && self
                .service_accounts
                .matches(conn.source_principal.as_ref())
            && self.ip_blocks.matches(Some(&conn.source_ip))
            && self.trust_domains.matches(conn.source_trust_domain())
    }

    pub(super) fn explain(&self, conn: &ConnectionAttrs, out: &mut Vec<String>) {
        let principal = conn.principal();
        let id = conn.source_principal.as_ref();
        self.principals.explain("source.principal", principal, out);
        self.namespaces
            .explain("source.namespace", conn.source_namespace(), out);
        self.service_accounts
            .explain("source.serviceAccount", id, out);
        self.ip_blocks
            .explain("source.ip", Some(&conn.source_ip), out);
        self.trust_domains
            .explain("source.trustDomain", conn.source_trust_domain(), out);
    }
}

impl Operation {
    /// Whether the destination port matches.
    pub fn matches(&self, conn: &ConnectionAttrs) -> bool {
        self.ports.matches(Some(&conn.destination_port))
    }
}

impl Condition {
    /// Whether the condition holds for `conn`.
    pub fn matches(&self, conn: &ConnectionAttrs) -> bool {
        match self {
            Self::SourceIp(m) => m.matches(Some(&conn.source_ip)),
            Self::SourceNamespace(m) => m.matches(conn.source_namespace()),
            Self::SourcePrincipal(m) => m.matches(conn.principal()),
            Self::DestinationIp(m) => m.matches(Some(&conn.destination_ip)),
            Self::DestinationPort(m) => m.matches(Some(&conn.destination_port)),
            Self::SourceServiceAccount(m) => m.matches(conn.source_principal.as_ref()),
            Self::SourceTrustDomain(m) => m.matches(conn.source_trust_domain()),
        }
    }

    pub(super) fn explain(&self, conn: &ConnectionAttrs, out: &mut Vec<String>) {
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
            Self::SourceServiceAccount(m) => {
                m.explain(
                    "when source.serviceAccount",
                    conn.source_principal.as_ref(),
                    out,
                );
            }
            Self::SourceTrustDomain(m) => {
                m.explain("when source.trustDomain", conn.source_trust_domain(), out);
            }
        }
    }
}
