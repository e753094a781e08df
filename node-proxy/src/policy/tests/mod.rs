//! Tests of the policy engine: matching per field, parsing and its refusals, evaluation order
//! and scopes, PeerAuthentication precedence. Tables follow STYLE habit 6: every field has a
//! matching and a non-matching case.

mod eval;
mod matching;
mod parse;
mod patterns;
mod peer_auth;

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
fn mtls(ns: &str, sa: &str, src: &str, port: u16) -> ConnectionView {
    ConnectionView {
        source_principal: Some(id(ns, sa)),
        source_ip: ip(src),
        destination_ip: ip("10.9.0.5"),
        destination_port: port,
    }
}

/// A plaintext connection from `src` to 10.9.0.5:`port`.
fn plain(src: &str, port: u16) -> ConnectionView {
    ConnectionView {
        source_principal: None,
        source_ip: ip(src),
        destination_ip: ip("10.9.0.5"),
        destination_port: port,
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}
