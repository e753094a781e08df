//! Malformed and unknown fields of an AuthorizationPolicy: each is a finding naming the field
//! and the reason, and costs only its own rule, fail-safe as istiod's builder (`checkError`):
//! an ALLOW rule with it never matches, a DENY rule is checked without it, so it denies more.

use super::*;

/// web in shop at 10.1.2.3 → :8080.
fn web() -> ConnectionAttrs {
    mtls("shop", "web", "10.1.2.3", 8080)
}

/// One malformed rule under `ALLOW` and under `DENY`: the finding is reported, the ALLOW
/// never admits `web()`, the DENY refuses it (the malformed part is the only constraint).
#[test]
fn a_malformed_rule_never_allows_and_still_denies() {
    let cases: &[(&str, &str)] = &[
        ("{from: {}}", "rules[0].from must be a list"),
        ("{from: []}", "rules[0].from must not be empty"),
        (
            "{from: [{source: {}}]}",
            "rules[0].from[0].source must not be empty",
        ),
        ("{from: [{}]}", "rules[0].from[0].source must not be empty"),
        (
            r#"{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}"#,
            "rules[0].from[0].source.ipBlocks: invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            r#"{from: [{source: {notIpBlocks: ["10.1.2.256"]}}]}"#,
            "rules[0].from[0].source.notIpBlocks: invalid CIDR",
        ),
        (
            r#"{from: [{source: {ipBlocks: ["fd00::/200"]}}]}"#,
            "exceeds 128",
        ),
        (
            "{from: [{source: {principals: x}}]}",
            "rules[0].from[0].source.principals must be a list",
        ),
        (
            "{from: [{source: {namespaces: [[x]]}}]}",
            "rules[0].from[0].source.namespaces[0] must be a string",
        ),
        (
            r#"{from: [{source: {namespaces: [""]}}]}"#,
            "rules[0].from[0].source.namespaces[0] must not be empty",
        ),
        (
            "{from: [{source: {serviceAccounts: [a/b/c]}}]}",
            "rules[0].from[0].source.serviceAccounts: \"a/b/c\" must be <service-account> or <namespace>/<service-account>",
        ),
        (
            r#"{from: [{source: {serviceAccounts: ["*"]}}]}"#,
            "without wildcards",
        ),
        (
            "{from: [{source: {serviceAccounts: [shop/]}}]}",
            "\"shop/\" must be",
        ),
        (
            "{from: [{source: {notServiceAccounts: [/web]}}]}",
            "rules[0].from[0].source.notServiceAccounts: \"/web\"",
        ),
        (
            "{from: [{source: {trustDomains: [a/b]}}]}",
            "rules[0].from[0].source.trustDomains: \"a/b\" must be a trust domain",
        ),
        (
            r#"{from: [{source: {trustDomains: ["a*b"]}}]}"#,
            "\"a*b\" must be a trust domain",
        ),
        (
            "{from: [{source: {serviceAccounts: [web], namespaces: [shop]}}]}",
            "serviceAccounts: cannot be set with principals or namespaces",
        ),
        (
            "{from: [{source: {color: [red]}}]}",
            "rules[0].from[0].source.color (a field marrow does not know)",
        ),
        (
            r#"{to: [{operation: {ports: ["http"]}}]}"#,
            "rules[0].to[0].operation.ports: invalid port \"http\"",
        ),
        (
            r#"{to: [{operation: {notPorts: ["70000"]}}]}"#,
            "rules[0].to[0].operation.notPorts: invalid port \"70000\"",
        ),
        (
            "{to: [{operation: {}}]}",
            "rules[0].to[0].operation must not be empty",
        ),
        ("{to: []}", "rules[0].to must not be empty"),
        (
            "{to: [{operation: {verbs: [GET]}}]}",
            "rules[0].to[0].operation.verbs (a field marrow does not know)",
        ),
        (
            "{when: [{key: source.ip}]}",
            "rules[0].when[0].values must not be empty",
        ),
        (
            "{when: [{values: [x]}]}",
            "rules[0].when[0].key must not be empty",
        ),
        (
            "{when: [{key: source.color, values: [x]}]}",
            "when.source.color (a field marrow does not know)",
        ),
        (
            "{when: [{key: \"destination.labels[app]\", values: [web]}]}",
            "when.destination.labels[app] (a field marrow does not know)",
        ),
        (
            r#"{when: [{key: destination.port, values: ["-1"]}]}"#,
            "rules[0].when[0].values: invalid port \"-1\"",
        ),
        (
            r#"{when: [{key: source.ip, notValues: ["10.0.0.0/99"]}]}"#,
            "rules[0].when[0].notValues: invalid CIDR",
        ),
        (
            "{when: [{key: destination.ip, values: [shop]}]}",
            "rules[0].when[0].values: invalid CIDR \"shop\"",
        ),
        (
            "{when: [{key: source.serviceAccount, values: [a/b/c]}]}",
            "rules[0].when[0].values: \"a/b/c\" must be",
        ),
        (
            "{from: [{source: {namespaces: [shop]}}], unless: [x]}",
            "rules[0].unless (a field marrow does not know)",
        ),
        ("[]", "rules[0] must be an object"),
    ];
    for (rule, finding) in cases {
        for action in ["ALLOW", "DENY"] {
            let spec = format!("  action: {action}\n  rules:\n  - {rule}\n");
            let policy = authz("shop", "bad", &spec);
            let found = texts(&policy.rules[0].unchecked).join("; ");
            assert!(
                found.contains(finding),
                "{action} {rule}: wants {finding}: {found}"
            );
            let report: Vec<String> = authz_set(&[("shop", "bad", &spec)])
                .unsupported()
                .iter()
                .map(ToString::to_string)
                .collect();
            assert!(
                report
                    .iter()
                    .any(|r| r.contains("AuthorizationPolicy shop/bad") && r.contains(finding)),
                "{action} {rule}: {report:?}"
            );
            let d = decide(&authz_set(&[("shop", "bad", &spec)]), "shop", &[], &web());
            match action {
                "ALLOW" => assert_eq!(
                    (d.verdict, d.policy),
                    (Verdict::Deny, None),
                    "{rule}: an ALLOW rule with a malformed part never matches"
                ),
                _ => assert_eq!(
                    (d.verdict, d.rule),
                    (Verdict::Deny, Some(0)),
                    "{rule}: a DENY rule is checked without it: {}",
                    d.reason
                ),
            }
        }
    }
}

#[test]
fn a_deny_rule_keeps_its_readable_parts() {
    // The bad address is dropped; the namespace still decides.
    let spec = "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [legacy], ipBlocks: [\"10.0.0.0/33\"]}\n";
    let s = authz_set(&[("shop", "no-legacy", spec)]);
    let denied = decide(&s, "shop", &[], &mtls("legacy", "old", "10.1.2.3", 80));
    assert_eq!(denied.verdict, Verdict::Deny);
    assert!(
        denied
            .reason
            .contains("not checked: rules[0].from[0].source.ipBlocks: invalid CIDR"),
        "{}",
        denied.reason
    );
    assert!(decide(&s, "shop", &[], &web()).is_allowed(), "not legacy");
    // An ALLOW with one malformed rule: its other rules still allow.
    let spec = "  rules:\n  - to:\n    - operation: {ports: [http]}\n  - from:\n    - source: {namespaces: [shop]}\n";
    let s = authz_set(&[("shop", "mixed", spec)]);
    let d = decide(&s, "shop", &[], &web());
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(1)));
    assert!(!decide(&s, "shop", &[], &mtls("legacy", "old", "10.1.2.3", 80)).is_allowed());
}

/// Problems of the policy as a whole: (spec, finding). Under ALLOW the policy still selects
/// but none of its rules matches; under DENY its rules apply over the widest scope.
#[test]
fn a_malformed_policy_denies_more_never_allows_more() {
    let cases: &[(&str, &str)] = &[
        (
            "  selector: [app]\n  rules: [{}]\n",
            "selector must be an object",
        ),
        (
            "  selector: {matchLabels: {app: {x: y}}}\n  rules: [{}]\n",
            "selector.matchLabels.app must be a string",
        ),
        (
            "  selector: {matchExpressions: []}\n  rules: [{}]\n",
            "selector.matchExpressions (a field marrow does not know)",
        ),
        ("  rules: {from: []}\n", "rules must be a list"),
        (
            "  rules: [{}]\n  tier: gold\n",
            "spec.tier (a field marrow does not know)",
        ),
    ];
    for (spec, finding) in cases {
        let allow = authz_set(&[("shop", "bad", spec)]);
        let policy = &allow.authorization_policies()[0];
        let found: Vec<String> = policy
            .all_findings()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            found.iter().any(|f| f.contains(finding)),
            "{spec}: {found:?}"
        );
        let d = decide(&allow, "shop", &[("app", "db")], &web());
        assert_eq!((d.verdict, d.policy), (Verdict::Deny, None), "{spec}");
        let deny = authz_set(&[("shop", "bad", &format!("  action: DENY\n{spec}"))]);
        let d = decide(&deny, "shop", &[("app", "db")], &web());
        assert_eq!(d.verdict, Verdict::Deny, "{spec}: {}", d.reason);
        // Another namespace is out of its scope.
        assert!(decide(&deny, "other", &[], &web()).is_allowed(), "{spec}");
    }
}
