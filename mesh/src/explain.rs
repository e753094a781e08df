//! "Why can A talk to B?": the decision the destination's proxy would take for a connection,
//! computed from a state snapshot exactly as the data path computes it (same functions), with
//! the deciding policy, rule and reason. Used by `node-proxy explain` and the admin endpoint.
//!
//! Beside the decision, notes name what marrow does not enforce as written when it would have
//! mattered for this connection: an AUDIT policy that matches, an ALLOW rule left out for
//! fields it cannot check whose L4 part matches, a RequestAuthentication selecting the
//! destination, a PeerAuthentication read as STRICT because it is malformed.
//!
//! With an HTTP request ([`RequestQuery`]: method, path, host, headers) it answers for the
//! destination's waypoint instead, through [`evaluate_request`], the function the waypoint
//! calls, after the same path normalization ([`crate::path::normalize`]).

mod query;
mod routes;

use std::net::IpAddr;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::Serialize;

use crate::identity::{SpiffeId, TrustDomain};
use crate::path;
use crate::policy::{
    Action, ConnectionAttrs, Decision, Destination, Finding, MtlsError, PolicySet, RequestAttrs,
    Verdict, WaypointScope, evaluate, evaluate_request, plaintext_allowed, request_host,
    resolve_mtls, selects,
};
use crate::state::{Snapshot, Workload};

pub use query::ExplainQuery;
pub use routes::{
    BackendView, FaultView, RetriesView, RouteView, RoutesAnswer, RoutesQuery, explain_routes,
};

/// Who connects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExplainSource {
    /// A workload of the state, `namespace/name`: it connects over HBONE with its identity
    /// when it is in the mesh, else in plaintext.
    Workload {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// A plaintext client at this address (outside the mesh).
    Ip(IpAddr),
}

impl std::str::FromStr for ExplainSource {
    type Err = ExplainError;

    /// `ns/pod`, or `ip:A.B.C.D` (or `ip:<ipv6>`).
    fn from_str(text: &str) -> Result<Self, ExplainError> {
        if let Some(ip) = text.strip_prefix("ip:") {
            return ip
                .parse()
                .map(ExplainSource::Ip)
                .map_err(|_| ExplainError::BadArgument {
                    what: "source",
                    value: text.to_owned(),
                    expected: "ns/pod or ip:ADDRESS",
                });
        }
        let (namespace, name) = workload_ref(text, "source")?;
        Ok(ExplainSource::Workload { namespace, name })
    }
}

/// Splits `ns/pod`.
pub fn workload_ref(text: &str, what: &'static str) -> Result<(String, String), ExplainError> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_owned(), name.to_owned()))
        }
        _ => Err(ExplainError::BadArgument {
            what,
            value: text.to_owned(),
            expected: "ns/pod",
        }),
    }
}

/// Errors of an explanation request.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// An argument does not parse.
    #[error("{what} {value:?}: expected {expected}")]
    BadArgument {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: String,
        /// The expected form.
        expected: &'static str,
    },
    /// A named workload is not in the state.
    #[error("{what} {namespace}/{name} is not a pod in the state")]
    UnknownWorkload {
        /// Which argument.
        what: &'static str,
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// A workload has no address to connect to or from.
    #[error("{namespace}/{name} has no IP in the state")]
    NoAddress {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
    /// An HTTP request was asked about, but no waypoint is known for the destination.
    #[error(
        "{namespace}/{name} has no waypoint in the state: name one with --waypoint ns/name \
         (waypoint=ns/name on /explain)"
    )]
    NoWaypoint {
        /// The destination's namespace.
        namespace: String,
        /// The destination's name.
        name: String,
    },
}

/// An HTTP request to explain at the destination's waypoint. Unset fields take defaults:
/// `GET`, `/`, and the host of the destination's Service (else the pod's name).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestQuery {
    /// `--method`.
    pub method: Option<String>,
    /// `--path`, as the client sends it (normalized here, as the waypoint does).
    pub path: Option<String>,
    /// `--host`: the authority (a port is ignored).
    pub host: Option<String>,
    /// `--header K=V`, repeatable.
    pub headers: Vec<String>,
    /// `--waypoint ns/name`: the waypoint to decide at.
    pub waypoint: Option<String>,
}

impl RequestQuery {
    /// Whether nothing of a request is given: the question is then the L4 one.
    pub fn is_empty(&self) -> bool {
        self.method.is_none()
            && self.path.is_none()
            && self.host.is_none()
            && self.headers.is_empty()
            && self.waypoint.is_none()
    }

    /// The headers as a map; `K=V` with a valid name and value, or an error naming it.
    fn header_map(&self) -> Result<HeaderMap, ExplainError> {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for text in &self.headers {
            let bad = || ExplainError::BadArgument {
                what: "header",
                value: text.clone(),
                expected: "NAME=VALUE with a valid header name and value",
            };
            let (name, value) = text.split_once('=').ok_or_else(bad)?;
            let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
            let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
            map.append(name, value);
        }
        Ok(map)
    }
}

/// The answer, in the shape `--json` prints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// The deciding policy, `ns/name`.
    pub policy: Option<String>,
    /// The deciding rule's index in that policy.
    pub rule: Option<usize>,
    /// Why.
    pub reason: String,
    /// What marrow does not enforce as written that bears on this connection.
    pub notes: Vec<String>,
}

/// Explains a connection from `from` to `to` (`ns/pod`) on `port`.
pub fn explain(
    snap: &Snapshot,
    trust_domain: &TrustDomain,
    from: &ExplainSource,
    to: (&str, &str),
    port: u16,
) -> Result<Explanation, ExplainError> {
    let dst = find(snap, "destination", to.0, to.1)?;
    let destination_ip = first_ip(&dst)?;
    let (source_principal, source_ip) = client(snap, trust_domain, from)?;
    // A workload behind a waypoint admits only the waypoint, before any policy (as the node
    // proxy's decision, with the same words).
    let identity = source_principal
        .as_ref()
        .map(|p| (p.namespace(), p.service_account()));
    if let Some(reason) = snap.waypoints().refusal(&dst, identity) {
        return Ok(Explanation {
            decision: "deny",
            policy: None,
            rule: None,
            reason,
            notes: Vec::new(),
        });
    }
    let view = Destination {
        namespace: &dst.namespace,
        name: &dst.name,
        labels: &dst.labels,
    };
    let policies = snap.policies();
    // Plaintext (no identity) meets PeerAuthentication first, as on 15006.
    if source_principal.is_none()
        && let Err(refusal) = plaintext_allowed(policies, &view, port)
    {
        let MtlsError::StrictRefusesPlaintext { by, .. } = &refusal;
        let policy = by.as_ref().map(ToString::to_string);
        return Ok(Explanation {
            decision: "deny",
            policy,
            rule: None,
            reason: refusal.to_string(),
            notes: mtls_notes(policies, &view, port),
        });
    }
    let conn = ConnectionAttrs {
        source_principal,
        source_ip,
        destination_ip,
        destination_port: port,
    };
    let decision = evaluate(policies, &view, &conn);
    let notes = notes(policies, &view, &conn, &decision);
    Ok(Explanation {
        decision: match decision.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        },
        policy: decision.policy.map(|p| p.to_string()),
        rule: decision.rule,
        reason: decision.reason,
        notes,
    })
}

/// Explains an HTTP request from `from` to `to` (`ns/pod`) on `port` at the destination's
/// waypoint: the decision the waypoint takes, with [`evaluate_request`]. The destination the
/// waypoint sees is the Service's VIP and port when a Service of the state sends `port` to the
/// pod (as a node proxy's CONNECT names it), else the pod's address.
pub fn explain_request(
    snap: &Snapshot,
    trust_domain: &TrustDomain,
    from: &ExplainSource,
    to: (&str, &str),
    port: u16,
    request: &RequestQuery,
) -> Result<Explanation, ExplainError> {
    let dst = find(snap, "destination", to.0, to.1)?;
    let pod_ip = first_ip(&dst)?;
    let (source_principal, source_ip) = client(snap, trust_domain, from)?;
    // `--waypoint` names one; else the one the state puts in front of the destination.
    let (gateway_namespace, gateway_name) = match &request.waypoint {
        Some(waypoint) => workload_ref(waypoint, "waypoint")?,
        None => match snap.waypoints().in_front_of(snap, &dst, port) {
            Some(waypoint) => (waypoint.name.namespace.clone(), waypoint.name.name.clone()),
            None => {
                return Err(ExplainError::NoWaypoint {
                    namespace: dst.namespace.clone(),
                    name: dst.name.clone(),
                });
            }
        },
    };
    // The Service the request is for: of those sending `port` to the pod, the first by
    // namespace/name that uses this waypoint, else the first (a pod behind several Services on
    // one port is ambiguous; the answer names the one it took).
    let mut services: Vec<_> = snap
        .services()
        .serving(pod_ip)
        .filter(|s| {
            s.endpoints
                .iter()
                .any(|e| e.ip() == pod_ip && e.port() == port)
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let uses_this = |s: &&&std::sync::Arc<crate::state::services::ServiceTarget>| {
        snap.waypoints()
            .for_service(&s.namespace, &s.name)
            .is_ok_and(|w| w.name.namespace == gateway_namespace && w.name.name == gateway_name)
    };
    let service = services
        .iter()
        .find(uses_this)
        .or(services.first())
        .copied();
    let at = WaypointScope {
        gateway_namespace: &gateway_namespace,
        gateway_name: &gateway_name,
        service: service.map(|s| (s.namespace.as_str(), s.name.as_str())),
    };
    let method_text = request.method.as_deref().unwrap_or("GET");
    let method =
        Method::from_bytes(method_text.as_bytes()).map_err(|_| ExplainError::BadArgument {
            what: "method",
            value: method_text.to_owned(),
            expected: "an HTTP method token",
        })?;
    let headers = request.header_map()?;
    let authority = match (&request.host, service) {
        (Some(host), _) => host.clone(),
        (None, Some(s)) => s.host(),
        (None, None) => dst.name.clone(),
    };
    let host = request_host(&authority);
    let normalized = match path::normalize(request.path.as_deref().unwrap_or("/")) {
        Ok(p) => p,
        Err(refused) => {
            return Ok(Explanation {
                decision: "deny",
                policy: None,
                rule: None,
                reason: format!("refused before policy (the waypoint answers 400): {refused}"),
                notes: Vec::new(),
            });
        }
    };
    let (destination_ip, destination_port) =
        service.map_or((pod_ip, port), |s| (s.vip.ip(), s.vip.port()));
    let conn = ConnectionAttrs {
        source_principal,
        source_ip,
        destination_ip,
        destination_port,
    };
    let req = RequestAttrs {
        conn: &conn,
        host: &host,
        method: &method,
        path: &normalized,
        headers: &headers,
        sni: None,
    };
    let decision = evaluate_request(snap.policies(), &at, &req);
    let mut notes = Vec::new();
    if normalized.as_str() != request.path.as_deref().unwrap_or("/") {
        notes.push(format!(
            "the waypoint normalizes the path to {} before matching and forwarding",
            normalized.path()
        ));
    }
    Ok(Explanation {
        decision: match decision.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        },
        policy: decision.policy.map(|p| p.to_string()),
        rule: decision.rule,
        reason: decision.reason,
        notes,
    })
}

/// The client's identity (when it is a workload in the mesh) and address.
fn client(
    snap: &Snapshot,
    trust_domain: &TrustDomain,
    from: &ExplainSource,
) -> Result<(Option<SpiffeId>, IpAddr), ExplainError> {
    match from {
        ExplainSource::Ip(ip) => Ok((None, *ip)),
        ExplainSource::Workload { namespace, name } => {
            let src = find(snap, "source", namespace, name)?;
            // A waypoint's pod is not captured but speaks HBONE with its own identity.
            let has_identity = snap.in_mesh(&src) || snap.waypoints().instance_of(&src).is_some();
            let principal = has_identity
                .then(|| SpiffeId::new(trust_domain, &src.namespace, &src.service_account).ok())
                .flatten();
            Ok((principal, first_ip(&src)?))
        }
    }
}

/// What the objects marrow does not enforce as written would have done for `conn` to `dst`.
pub fn notes(
    policies: &PolicySet,
    dst: &Destination<'_>,
    conn: &ConnectionAttrs,
    decision: &Decision,
) -> Vec<String> {
    let root = policies.root_namespace();
    let selecting = || {
        policies
            .authorization_policies()
            .iter()
            .filter(move |p| !p.dry_run && selects(p, root, dst))
    };
    let mut out = Vec::new();
    for policy in selecting().filter(|p| p.action == Action::Audit) {
        if let Some(index) = policy
            .rules
            .iter()
            .position(|r| r.matches(Action::Audit, conn))
        {
            out.push(format!(
                "AUDIT policy {} rule {index} matches: Istio would audit-log this connection; \
                 marrow does not, and AUDIT changes no decision",
                policy.reference()
            ));
        }
    }
    // An ALLOW rule left out mattered only if no other ALLOW rule admitted the connection.
    if decision.verdict == Verdict::Deny && decision.policy.is_none() {
        for policy in selecting().filter(|p| p.action == Action::Allow) {
            for (index, rule) in policy.rules.iter().enumerate() {
                if !rule.unchecked.is_empty() && rule.matches_at_l4(conn) {
                    out.push(format!(
                        "ALLOW policy {} rule {index} matches on the fields checked at L4 but \
                         never applies here: {}",
                        policy.reference(),
                        join(&rule.unchecked)
                    ));
                }
            }
        }
    }
    for request in policies.request_authentications() {
        let in_scope = request.namespace == root || request.namespace == dst.namespace;
        let selected = request.selector.as_ref().is_none_or(|s| dst.selected_by(s));
        if in_scope && selected && !request.targets_waypoint {
            out.push(format!(
                "RequestAuthentication {} selects {}/{}: JWTs are checked only by an L7 proxy \
                 (a waypoint); it changes no L4 decision",
                request.reference(),
                dst.namespace,
                dst.name
            ));
        }
    }
    out
}

/// A note when the PeerAuthentication that decided `port` was malformed (read as STRICT).
fn mtls_notes(policies: &PolicySet, dst: &Destination<'_>, port: u16) -> Vec<String> {
    let (_, by) = resolve_mtls(policies, dst, port);
    policies
        .peer_authentications()
        .iter()
        .filter(|pa| by.as_ref() == Some(&pa.reference()) && !pa.findings.is_empty())
        .map(|pa| {
            format!(
                "PeerAuthentication {} is malformed ({}): marrow reads it as STRICT",
                pa.reference(),
                join(&pa.findings)
            )
        })
        .collect()
}

fn find(
    snap: &Snapshot,
    what: &'static str,
    namespace: &str,
    name: &str,
) -> Result<std::sync::Arc<Workload>, ExplainError> {
    snap.workload_by_name(namespace, name)
        .cloned()
        .ok_or_else(|| ExplainError::UnknownWorkload {
            what,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
}

fn first_ip(workload: &Workload) -> Result<IpAddr, ExplainError> {
    workload
        .ips
        .first()
        .copied()
        .ok_or_else(|| ExplainError::NoAddress {
            namespace: workload.namespace.clone(),
            name: workload.name.clone(),
        })
}

/// `a, b, c`: findings as one line of a note.
fn join(findings: &[Finding]) -> String {
    let texts: Vec<String> = findings.iter().map(ToString::to_string).collect();
    texts.join(", ")
}

#[cfg(test)]
#[path = "explain/routes_tests.rs"]
mod routes_tests;
#[cfg(test)]
mod tests;
