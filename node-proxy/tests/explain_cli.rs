//! `node-proxy explain` as a person or a script runs it: a state file in, a decision out.
#![expect(
    clippy::unwrap_used,
    reason = "test helper: a failed set-up step must fail the test loudly"
)]

use std::process::Command;

const STATE: &str = concat!(
    include_str!("../../mesh/testdata/two-pods.yaml"),
    r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-legacy, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["192.0.2.0/24"]}}]
"#
);

fn explain(state: &str, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, state).unwrap();
    Command::new(env!("CARGO_BIN_EXE_node-proxy"))
        .arg("explain")
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn json_output_for_an_allowed_connection() {
    let out = explain(
        STATE,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/web",
            "--port",
            "8080",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "allow");
    assert_eq!(v["policy"], serde_json::Value::Null);
    assert_eq!(v["rule"], serde_json::Value::Null);
    assert!(v["reason"].as_str().unwrap().contains("no policy"), "{v}");
}

#[test]
fn text_output_names_the_denying_policy_and_rule() {
    let out = explain(
        STATE,
        &[
            "--from",
            "ip:192.0.2.9",
            "--to",
            "shop/web",
            "--port",
            "8080",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("policy:   shop/no-legacy"), "{text}");
    assert!(text.contains("rule:     0"), "{text}");
}

#[test]
fn a_malformed_policy_costs_only_itself_and_is_named() {
    // The bad block is dropped from the DENY, which then denies more (fail-safe), saying why.
    let malformed = STATE.replace("192.0.2.0/24", "192.0.2.0/99");
    let args = [
        "--from",
        "shop/client",
        "--to",
        "shop/web",
        "--port",
        "8080",
    ];
    let out = explain(&malformed, &args);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision: deny"), "{text}");
    assert!(text.contains("policy:   shop/no-legacy"), "{text}");
    assert!(
        text.contains(
            "not checked: rules[0].from[0].source.ipBlocks: invalid CIDR \"192.0.2.0/99\""
        ),
        "{text}"
    );
    // Another kind's bad object still refuses the file, naming it.
    let broken = STATE.replace("podIP: 10.0.2.2", "podIP: ten");
    let out = explain(&broken, &args);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster.yaml") && err.contains("Pod shop/web"),
        "{err}"
    );
}

#[test]
fn notes_name_what_is_not_enforced() {
    let state = format!(
        "{STATE}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: audit-all, namespace: shop}}\n\
         spec:\n  action: AUDIT\n  rules: [{{}}]\n"
    );
    let out = explain(
        &state,
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/web",
            "--port",
            "8080",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("decision: allow"), "{text}");
    assert!(
        text.contains("note:     AUDIT policy shop/audit-all rule 0 matches"),
        "{text}"
    );
}

#[test]
fn policies_in_the_configured_root_namespace_apply_mesh_wide() {
    let state = format!(
        "{STATE}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
         metadata: {{name: deny-all-8080, namespace: mesh-root}}\n\
         spec:\n  action: DENY\n  rules:\n  - to: [{{operation: {{ports: [\"8080\"]}}}}]\n"
    );
    let args = [
        "--from",
        "shop/client",
        "--to",
        "shop/web",
        "--port",
        "8080",
        "--json",
    ];
    let default_root = explain(&state, &args);
    let v: serde_json::Value = serde_json::from_slice(&default_root.stdout).unwrap();
    assert_eq!(
        v["decision"], "allow",
        "mesh-root is just a namespace by default: {v}"
    );
    let mut with_root = args.to_vec();
    with_root.extend(["--root-namespace", "mesh-root"]);
    let out = explain(&state, &with_root);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "deny", "{v}");
    assert_eq!(v["policy"], "mesh-root/deny-all-8080", "{v}");
}

/// A DENY on DELETE /api bound to the waypoint `shop/wp`.
const NO_DELETE: &str = r#"---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE], paths: ["/api", "/api/*"]}}]
"#;

/// `explain` of `method path` at the waypoint `shop/wp`, from shop/client to shop/web:8080.
fn explain_request(method: &str, path: &str, extra: &[&str]) -> serde_json::Value {
    let state = format!("{STATE}{NO_DELETE}");
    let mut args = vec![
        "--from",
        "shop/client",
        "--to",
        "shop/web",
        "--port",
        "8080",
        "--waypoint",
        "shop/wp",
        "--method",
        method,
        "--path",
        path,
        "--json",
    ];
    args.extend(extra);
    let out = explain(&state, &args);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_request_is_explained_at_the_waypoint() {
    let v = explain_request("DELETE", "/api", &[]);
    assert_eq!(v["decision"], "deny", "{v}");
    assert_eq!(v["policy"], "shop/no-delete", "{v}");
    assert_eq!(v["rule"], 0, "{v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("request.method DELETE matched"),
        "{v}"
    );
    let v = explain_request("GET", "/api", &["--header", "x-user=alice"]);
    assert_eq!(v["decision"], "allow", "{v}");
    // A bypass form of the path is normalized first.
    let v = explain_request("DELETE", "//api/./v1", &[]);
    assert_eq!(v["decision"], "deny", "{v}");
    // The L4 question is unchanged: the node proxy does not apply the waypoint's policy.
    let out = explain(
        &format!("{STATE}{NO_DELETE}"),
        &[
            "--from",
            "shop/client",
            "--to",
            "shop/web",
            "--port",
            "8080",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"], "allow", "{v}");
}

#[test]
fn a_request_without_a_waypoint_is_refused_with_the_reason() {
    let state = format!("{STATE}{NO_DELETE}");
    let args = [
        "--from",
        "shop/client",
        "--to",
        "shop/web",
        "--port",
        "8080",
        "--method",
        "DELETE",
    ];
    let out = explain(&state, &args);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--waypoint"), "{stderr}");
}
