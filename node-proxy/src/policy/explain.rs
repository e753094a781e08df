//! "Why can A talk to B?": the decision the destination's proxy would take for a connection,
//! computed from a state snapshot exactly as the data path computes it (same functions), with
//! the deciding policy, rule and reason. Used by `node-proxy explain` and the admin endpoint.

use std::net::IpAddr;

use serde::Serialize;

use super::{ConnectionView, MtlsError, Verdict, WorkloadView, evaluate, plaintext_allowed};
use crate::identity::{SpiffeId, TrustDomain};
use crate::state::{Snapshot, Workload};

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
    let (source_principal, source_ip) = match from {
        ExplainSource::Ip(ip) => (None, *ip),
        ExplainSource::Workload { namespace, name } => {
            let src = find(snap, "source", namespace, name)?;
            let principal = snap
                .in_mesh(&src)
                .then(|| SpiffeId::new(trust_domain, &src.namespace, &src.service_account).ok())
                .flatten();
            (principal, first_ip(&src)?)
        }
    };
    let view = WorkloadView {
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
        });
    }
    let conn = ConnectionView {
        source_principal,
        source_ip,
        destination_ip,
        destination_port: port,
    };
    let decision = evaluate(policies, &view, &conn);
    Ok(Explanation {
        decision: match decision.verdict {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        },
        policy: decision.policy.map(|p| p.to_string()),
        rule: decision.rule,
        reason: decision.reason,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateStore;

    const STATE: &str = concat!(
        include_str!("../../testdata/two-pods.yaml"),
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {ports: ["8080"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#
    );

    fn snapshot() -> std::sync::Arc<Snapshot> {
        let update =
            crate::state::file::parse(std::path::Path::new("test.yaml"), STATE.as_bytes()).unwrap();
        let store = StateStore::new();
        store.apply(update);
        store.snapshot()
    }

    fn run(from: &str, to: &str, port: u16) -> Result<Explanation, ExplainError> {
        let (ns, name) = workload_ref(to, "destination")?;
        explain(
            &snapshot(),
            &TrustDomain::default(),
            &from.parse()?,
            (&ns, &name),
            port,
        )
    }

    #[test]
    fn the_allowed_identity_names_the_policy_and_rule() {
        let e = run("shop/client", "shop/web", 8080).unwrap();
        assert_eq!(
            (e.decision, e.policy.as_deref(), e.rule),
            ("allow", Some("shop/web-from-client"), Some(0))
        );
    }

    #[test]
    fn another_port_is_denied_with_the_reason() {
        let e = run("shop/client", "shop/web", 9090).unwrap();
        assert_eq!(e.decision, "deny");
        assert!(e.reason.contains("no ALLOW policy"), "{}", e.reason);
    }

    #[test]
    fn plaintext_meets_strict_first() {
        let e = run("ip:192.0.2.7", "shop/web", 8080).unwrap();
        assert_eq!(
            (e.decision, e.policy.as_deref()),
            ("deny", Some("istio-system/default"))
        );
        assert!(e.reason.contains("STRICT"), "{}", e.reason);
    }

    #[test]
    fn bad_arguments_and_unknown_pods_are_named() {
        assert!(
            run("shop", "shop/web", 80)
                .unwrap_err()
                .to_string()
                .contains("ns/pod")
        );
        assert!(
            run("ip:nope", "shop/web", 80)
                .unwrap_err()
                .to_string()
                .contains("ip:ADDRESS")
        );
        assert!(
            run("shop/ghost", "shop/web", 80)
                .unwrap_err()
                .to_string()
                .contains("shop/ghost is not a pod")
        );
    }

    #[test]
    fn json_has_the_documented_shape() {
        let e = run("shop/client", "shop/web", 8080).unwrap();
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["decision"], "allow");
        assert_eq!(json["policy"], "shop/web-from-client");
        assert_eq!(json["rule"], 0);
        assert!(json["reason"].is_string());
    }
}
