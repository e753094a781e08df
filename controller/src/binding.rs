//! A waypoint's right to read the state: a ClusterRoleBinding of the ClusterRole
//! `marrow-waypoint` (manifests/rbac.yaml) to the waypoint's ServiceAccount. istiod's waypoints
//! need none (istiod pushes them xDS); marrow's waypoint lists and watches the API server itself
//! (`MARROW_KUBE=true`), cluster-wide, so without this binding it gets 403 and never gets ready.
//!
//! Invariants: the binding's name is a pure function of the Gateway's namespace and name (so a
//! deleted Gateway's binding can be found without the Gateway), different for any two Gateways,
//! and a valid object name; it carries the labels of the other rendered objects plus the
//! Gateway's namespace, but no owner reference: a cluster-scoped object cannot be owned by a
//! namespaced one (the garbage collector refuses it), so the controller deletes it itself.

use serde_json::{Value, json};

use crate::gateway::Waypoint;
use crate::render::{MANAGED_LABEL, MANAGED_VALUE, labels};

/// The ClusterRole every waypoint is bound to (manifests/rbac.yaml).
pub const WAYPOINT_ROLE: &str = "marrow-waypoint";
/// Label naming the namespace of a binding's Gateway (a cluster-scoped object has none).
pub const GATEWAY_NAMESPACE_LABEL: &str = "marrow.io/gateway-namespace";
/// The RBAC API group.
const RBAC_GROUP: &str = "rbac.authorization.k8s.io";
/// What every binding's name starts with.
const PREFIX: &str = "marrow-waypoint";
/// The longest object name (a DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// Whether `s` is a DNS-1123 subdomain: dot-separated labels of lowercase letters, digits and
/// `-`, each starting and ending with a letter or digit, 253 characters at most.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= MAX_NAME
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b.first() != Some(&b'-')
                && b.last() != Some(&b'-')
        })
}

/// 64-bit FNV-1a: stable across builds and platforms (std's hasher is not promised to be).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The binding's name for the Gateway `namespace/name`: `marrow-waypoint.<namespace>.<name>`
/// (a namespace has no dot, so no two Gateways share one), or, when that is too long or not a
/// valid name, `marrow-waypoint-<16 hex digits>` of a hash of `namespace/name`.
pub fn name(namespace: &str, gateway: &str) -> String {
    let readable = format!("{PREFIX}.{namespace}.{gateway}");
    if dns_subdomain(&readable) && !namespace.contains('.') {
        return readable;
    }
    format!(
        "{PREFIX}-{:016x}",
        fnv1a(format!("{namespace}/{gateway}").as_bytes())
    )
}

/// The waypoint's ClusterRoleBinding, as applied.
pub fn render(w: &Waypoint) -> Value {
    let mut labels = labels(w, true);
    labels[GATEWAY_NAMESPACE_LABEL] = json!(w.namespace);
    json!({
        "apiVersion": format!("{RBAC_GROUP}/v1"),
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name(&w.namespace, &w.name), "labels": labels},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": WAYPOINT_ROLE},
        "subjects": [{"kind": "ServiceAccount", "name": w.service_account,
            "namespace": w.namespace}],
    })
}

/// Whether a stored binding is one this controller made: managed, and bound to
/// [`WAYPOINT_ROLE`] (a binding labelled managed by someone else for another role is not ours
/// to delete).
pub fn ours(binding: &Value) -> bool {
    binding["metadata"]["labels"][MANAGED_LABEL] == MANAGED_VALUE
        && binding["roleRef"]["name"] == WAYPOINT_ROLE
        && binding["roleRef"]["kind"] == "ClusterRole"
}

/// The Gateway (`namespace/name`) a managed binding's labels name, if they name one.
pub fn gateway_of(binding: &Value) -> Option<String> {
    let labels = &binding["metadata"]["labels"];
    let namespace = labels[GATEWAY_NAMESPACE_LABEL].as_str()?;
    let name = labels[crate::render::GATEWAY_NAME_LABEL].as_str()?;
    Some(format!("{namespace}/{name}"))
}
