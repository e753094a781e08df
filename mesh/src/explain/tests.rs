//! `explain`: the decision and the reason for a connection between two pods of a state file,
//! and the notes on what marrow does not enforce as written when it bears on the connection.

use crate::explain::*;
use crate::identity::TrustDomain;
use crate::state::{Snapshot, StateStore};

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

/// The same pods with what marrow does not enforce as written.
const UNSUPPORTED: &str = concat!(
    include_str!("../../testdata/two-pods.yaml"),
    r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: get-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - from: [{source: {serviceAccounts: [client]}}]
    to: [{operation: {methods: [GET], ports: ["8080"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-client, namespace: shop}
spec:
  action: AUDIT
  rules: [{from: [{source: {serviceAccounts: [client]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz, namespace: shop}
spec:
  action: CUSTOM
  provider: {name: opa}
  rules: [{to: [{operation: {ports: ["9090"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: try-deny
  namespace: shop
  annotations: {istio.io/dry-run: "true"}
spec:
  action: DENY
  rules: [{to: [{operation: {ports: ["8080"]}}]}]
---
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  jwtRules: [{issuer: "https://issuer.example"}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-mtls, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICTER}
"#
);

fn explain_unsupported(from: &str, port: u16) -> Explanation {
    let update =
        crate::state::file::parse(std::path::Path::new("t.yaml"), UNSUPPORTED.as_bytes()).unwrap();
    let store = StateStore::new();
    store.apply(update);
    explain(
        &store.snapshot(),
        &TrustDomain::default(),
        &from.parse().unwrap(),
        ("shop", "web"),
        port,
    )
    .unwrap()
}

#[test]
fn notes_say_what_was_not_enforced_when_it_mattered() {
    let e = explain_unsupported("shop/client", 8080);
    assert_eq!((e.decision, e.policy.as_deref()), ("deny", None));
    assert!(
        e.reason
            .ends_with("; dry-run: DENY policy shop/try-deny rule 0 would deny"),
        "{}",
        e.reason
    );
    assert_eq!(
        e.notes,
        [
            "AUDIT policy shop/audit-client rule 0 matches: Istio would audit-log this \
             connection; marrow does not, and AUDIT changes no decision",
            "ALLOW policy shop/get-only rule 0 matches on the fields checked at L4 but never \
             applies here: to.operation.methods (L7-only)",
            "RequestAuthentication shop/jwt selects shop/web: JWTs are checked only by an L7 \
             proxy (a waypoint); it changes no L4 decision",
        ]
    );
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["notes"].as_array().map(Vec::len), Some(3));
}

#[test]
fn a_custom_policy_decides_and_names_itself() {
    let e = explain_unsupported("shop/client", 9090);
    assert_eq!(
        (e.decision, e.policy.as_deref(), e.rule),
        ("deny", Some("shop/ext-authz"), Some(0))
    );
    assert!(
        e.reason
            .contains("a CUSTOM policy: marrow cannot consult its external authorizer \"opa\""),
        "{}",
        e.reason
    );
    // The dry-run DENY is on 8080 only; the ALLOW rule's port does not match: no such notes.
    assert!(!e.reason.contains("dry-run"), "{}", e.reason);
    assert!(
        !e.notes.iter().any(|n| n.contains("get-only")),
        "{:?}",
        e.notes
    );
}

#[test]
fn a_malformed_peer_authentication_is_named_for_plaintext() {
    let e = explain_unsupported("ip:192.0.2.7", 8080);
    assert_eq!(
        (e.decision, e.policy.as_deref()),
        ("deny", Some("shop/web-mtls"))
    );
    assert_eq!(
        e.notes,
        [
            "PeerAuthentication shop/web-mtls is malformed (mtls.mode: unknown mode \"STRICTER\", \
          expected STRICT, PERMISSIVE, DISABLE or UNSET): marrow reads it as STRICT"
        ]
    );
}

/// [`STATE`] with L7 policies bound to the waypoint `shop/wp`.
const WAYPOINT_STATE: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE], paths: ["/api", "/api/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: admins-only, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    when: [{key: "request.headers[x-role]", notValues: [guest]}]
"#;

fn run_request(from: &str, request: &RequestQuery) -> Result<Explanation, ExplainError> {
    let state = format!("{STATE}{WAYPOINT_STATE}");
    let update =
        crate::state::file::parse(std::path::Path::new("test.yaml"), state.as_bytes()).unwrap();
    let store = StateStore::new();
    store.apply(update);
    explain_request(
        &store.snapshot(),
        &TrustDomain::default(),
        &from.parse()?,
        ("shop", "web"),
        8080,
        request,
    )
}

fn request(method: &str, path: &str) -> RequestQuery {
    RequestQuery {
        method: Some(method.to_owned()),
        path: Some(path.to_owned()),
        waypoint: Some("shop/wp".to_owned()),
        ..RequestQuery::default()
    }
}

#[test]
fn a_request_is_decided_at_the_waypoint() {
    let e = run_request("shop/client", &request("DELETE", "/api")).unwrap();
    assert_eq!(
        (e.decision, e.policy.as_deref(), e.rule),
        ("deny", Some("shop/no-delete"), Some(0))
    );
    assert_eq!(
        e.reason,
        "denied by DENY policy shop/no-delete rule 0: request.method DELETE matched, \
         request.path /api matched"
    );
    let e = run_request("shop/client", &request("GET", "/api")).unwrap();
    assert_eq!(
        (e.decision, e.policy.as_deref()),
        ("allow", Some("shop/admins-only"))
    );
    // Another client: no ALLOW bound to the waypoint matches.
    let e = run_request("shop/web", &request("GET", "/api")).unwrap();
    assert_eq!((e.decision, e.policy), ("deny", None));
}

#[test]
fn headers_are_taken_as_name_value() {
    let mut guest = request("GET", "/api");
    guest.headers = vec!["X-Role=guest".to_owned()];
    assert_eq!(run_request("shop/client", &guest).unwrap().decision, "deny");
    guest.headers = vec!["x-role=admin".to_owned()];
    assert_eq!(
        run_request("shop/client", &guest).unwrap().decision,
        "allow"
    );
    guest.headers = vec!["no-equals-sign".to_owned()];
    let error = run_request("shop/client", &guest).unwrap_err().to_string();
    assert!(error.contains("NAME=VALUE"), "{error}");
}

#[test]
fn the_path_is_normalized_as_the_waypoint_does() {
    let e = run_request("shop/client", &request("DELETE", "//api/./x")).unwrap();
    assert_eq!(e.decision, "deny");
    assert_eq!(
        e.notes,
        ["the waypoint normalizes the path to /api/x before matching and forwarding"]
    );
    let e = run_request("shop/client", &request("GET", "/api%zz")).unwrap();
    assert_eq!((e.decision, e.policy), ("deny", None));
    assert!(e.reason.contains("answers 400"), "{}", e.reason);
}

#[test]
fn a_request_needs_a_waypoint() {
    let mut no_waypoint = request("GET", "/");
    no_waypoint.waypoint = None;
    assert!(!no_waypoint.is_empty());
    let error = run_request("shop/client", &no_waypoint).unwrap_err();
    assert!(matches!(error, ExplainError::NoWaypoint { .. }), "{error}");
    assert!(RequestQuery::default().is_empty());
}

/// `shop/web` behind the waypoint `shop/wp` (its Service `web` uses it); the waypoint's pod
/// `wp-0` runs as `shop/wp`.
const BOUND: &str = r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: wp-0
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}
spec: {nodeName: n1, serviceAccountName: wp}
status: {phase: Running, podIP: 10.0.9.1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.2.2]}]
"#;

fn bound_snapshot() -> std::sync::Arc<Snapshot> {
    let state = format!("{STATE}{WAYPOINT_STATE}{BOUND}");
    let update =
        crate::state::file::parse(std::path::Path::new("test.yaml"), state.as_bytes()).unwrap();
    StateStore::new().apply(update)
}

#[test]
fn a_workload_behind_a_waypoint_is_explained_as_refusing_other_clients() {
    let snap = bound_snapshot();
    let at_l4 = |from: &str| {
        explain(
            &snap,
            &TrustDomain::default(),
            &from.parse().unwrap(),
            ("shop", "web"),
            8080,
        )
        .unwrap()
    };
    let client = at_l4("shop/client");
    assert_eq!((client.decision, client.policy), ("deny", None));
    assert_eq!(
        client.reason,
        "shop/web is behind waypoint shop/wp and accepts only its identity; \
         ns/shop/sa/client is not it"
    );
    // The waypoint passes, and meets L4 policy as the client: web's ALLOW names only client.
    let waypoint = at_l4("shop/wp-0");
    assert_eq!(waypoint.decision, "deny");
    assert!(
        waypoint.reason.contains("no ALLOW policy"),
        "{}",
        waypoint.reason
    );
}

#[test]
fn a_request_is_decided_at_the_waypoint_the_state_puts_in_front() {
    let mut delete = request("DELETE", "/api");
    delete.waypoint = None;
    let e = explain_request(
        &bound_snapshot(),
        &TrustDomain::default(),
        &"shop/client".parse().unwrap(),
        ("shop", "web"),
        8080,
        &delete,
    )
    .unwrap();
    assert_eq!(
        (e.decision, e.policy.as_deref()),
        ("deny", Some("shop/no-delete")),
        "without --waypoint, the state's binding chose shop/wp"
    );
}
