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
