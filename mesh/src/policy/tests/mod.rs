//! Tests of the policy engine: matching per field, parsing, malformed and unsupported policies
//! (fail-safe, reported), evaluation order and scopes, PeerAuthentication precedence. Tables follow STYLE habit 6: every field has a
//! matching and a non-matching case.

mod eval;
mod findings;
mod l7;
mod matching;
mod parse;
mod patterns;
mod peer_auth;
mod unsupported;

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::identity::{SpiffeId, TrustDomain};

/// YAML as the state file holds it, converted to the JSON the parser takes.
fn yaml(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap()
}

/// An AuthorizationPolicy document `ns/name` with `spec` (YAML, indented by two spaces).
fn authz_doc(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{spec}"
    )
}

/// Parses an AuthorizationPolicy `ns/name` with `spec`.
fn authz(ns: &str, name: &str, spec: &str) -> AuthorizationPolicy {
    authorization_policy(&yaml(&authz_doc(ns, name, spec))).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(&TrustDomain::default(), ns, sa).unwrap()
}

/// An mTLS connection from `ns/sa` at `src` to 10.9.0.5:`port`.
fn mtls(ns: &str, sa: &str, src: &str, port: u16) -> ConnectionAttrs {
    ConnectionAttrs {
        source_principal: Some(id(ns, sa)),
        source_ip: ip(src),
        destination_ip: ip("10.9.0.5"),
        destination_port: port,
    }
}

/// A plaintext connection from `src` to 10.9.0.5:`port`.
fn plain(src: &str, port: u16) -> ConnectionAttrs {
    ConnectionAttrs {
        source_principal: None,
        source_ip: ip(src),
        destination_ip: ip("10.9.0.5"),
        destination_port: port,
    }
}

/// Findings as they are shown.
fn texts(findings: &[Finding]) -> Vec<String> {
    findings.iter().map(ToString::to_string).collect()
}

/// `dst` in `ns` with `workload_labels`, named web.
fn decide(
    set: &PolicySet,
    ns: &str,
    workload_labels: &[(&str, &str)],
    conn: &ConnectionAttrs,
) -> Decision {
    let labels = labels(workload_labels);
    let dst = Destination {
        namespace: ns,
        name: "web",
        labels: &labels,
    };
    evaluate(set, &dst, conn)
}

/// A set of `(namespace, name, spec)` AuthorizationPolicies, root namespace `istio-system`.
fn authz_set(policies: &[(&str, &str, &str)]) -> PolicySet {
    let mut set = PolicySet::default();
    for (ns, name, spec) in policies {
        set.insert_authorization(authz(ns, name, spec));
    }
    set
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
