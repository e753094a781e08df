//! One case per match field and form, each with a matching and a non-matching connection.

use super::*;

/// web in shop at 10.1.2.3 → :8080.
fn web() -> ConnectionAttrs {
    mtls("shop", "web", "10.1.2.3", 8080)
}

/// Whether the single rule `rule` (YAML under `rules:`) of an ALLOW policy matches `conn`.
fn rule_matches(rule: &str, conn: &ConnectionAttrs) -> bool {
    let policy = authz("shop", "t", &format!("  rules:\n{rule}"));
    assert_eq!(policy.rules.len(), 1, "{rule}");
    policy.rules[0].matches(Action::Allow, conn)
}

fn from(source: &str) -> String {
    format!("  - from:\n    - source: {source}\n")
}

fn to(operation: &str) -> String {
    format!("  - to:\n    - operation: {operation}\n")
}

fn when(condition: &str) -> String {
    format!("  - when:\n    - {condition}\n")
}

#[test]
fn source_fields() {
    let v6 = ConnectionAttrs {
        source_ip: ip("fd00::7"),
        ..web()
    };
    let cases: &[(&str, &str, ConnectionAttrs, bool)] = &[
        (
            "principal exact",
            r#"{principals: ["cluster.local/ns/shop/sa/web"]}"#,
            web(),
            true,
        ),
        (
            "principal exact other sa",
            r#"{principals: ["cluster.local/ns/shop/sa/web"]}"#,
            mtls("shop", "db", "10.1.2.3", 8080),
            false,
        ),
        (
            "principal needs a principal",
            r#"{principals: ["cluster.local/ns/shop/sa/web"]}"#,
            plain("10.1.2.3", 8080),
            false,
        ),
        (
            "principal with scheme",
            r#"{principals: ["spiffe://cluster.local/ns/shop/sa/web"]}"#,
            web(),
            true,
        ),
        (
            "principal prefix",
            r#"{principals: ["cluster.local/ns/shop/*"]}"#,
            web(),
            true,
        ),
        (
            "principal prefix other ns",
            r#"{principals: ["cluster.local/ns/shop/*"]}"#,
            mtls("legacy", "web", "10.1.2.3", 8080),
            false,
        ),
        (
            "principal suffix",
            r#"{principals: ["*/sa/web"]}"#,
            web(),
            true,
        ),
        (
            "principal suffix other",
            r#"{principals: ["*/sa/db"]}"#,
            web(),
            false,
        ),
        ("principal presence", r#"{principals: ["*"]}"#, web(), true),
        (
            "principal presence plaintext",
            r#"{principals: ["*"]}"#,
            plain("10.1.2.3", 8080),
            false,
        ),
        (
            "notPrincipals excluded",
            r#"{notPrincipals: ["cluster.local/ns/shop/sa/web"]}"#,
            web(),
            false,
        ),
        (
            "notPrincipals other",
            r#"{notPrincipals: ["cluster.local/ns/shop/sa/web"]}"#,
            mtls("shop", "db", "10.1.2.3", 8080),
            true,
        ),
        (
            "notPrincipals * plaintext",
            r#"{notPrincipals: ["*"]}"#,
            plain("10.1.2.3", 8080),
            true,
        ),
        (
            "notPrincipals * mtls",
            r#"{notPrincipals: ["*"]}"#,
            web(),
            false,
        ),
        ("namespace exact", "{namespaces: [shop]}", web(), true),
        ("namespace other", "{namespaces: [legacy]}", web(), false),
        (
            "namespace plaintext",
            "{namespaces: [shop]}",
            plain("10.1.2.3", 8080),
            false,
        ),
        ("namespace prefix", r#"{namespaces: ["sh*"]}"#, web(), true),
        ("namespace suffix", r#"{namespaces: ["*op"]}"#, web(), true),
        (
            "namespace suffix other",
            r#"{namespaces: ["*acy"]}"#,
            web(),
            false,
        ),
        (
            "notNamespaces other",
            "{notNamespaces: [legacy]}",
            web(),
            true,
        ),
        (
            "notNamespaces excluded",
            "{notNamespaces: [legacy]}",
            mtls("legacy", "web", "10.1.2.3", 8080),
            false,
        ),
        (
            "notNamespaces plaintext",
            "{notNamespaces: [legacy]}",
            plain("10.1.2.3", 8080),
            true,
        ),
        (
            "serviceAccount",
            "{serviceAccounts: [shop/web]}",
            web(),
            true,
        ),
        (
            "serviceAccount other",
            "{serviceAccounts: [shop/db]}",
            web(),
            false,
        ),
        (
            "serviceAccount other ns",
            "{serviceAccounts: [legacy/web]}",
            web(),
            false,
        ),
        (
            "serviceAccount plaintext",
            "{serviceAccounts: [shop/web]}",
            plain("10.1.2.3", 8080),
            false,
        ),
        (
            "bare serviceAccount is in the policy's namespace",
            "{serviceAccounts: [web]}",
            web(),
            true,
        ),
        (
            "bare serviceAccount, same name in another namespace",
            "{serviceAccounts: [web]}",
            mtls("legacy", "web", "10.1.2.3", 8080),
            false,
        ),
        (
            "bare notServiceAccounts excluded",
            "{notServiceAccounts: [web]}",
            web(),
            false,
        ),
        (
            "bare notServiceAccounts, another namespace's account",
            "{notServiceAccounts: [web]}",
            mtls("legacy", "web", "10.1.2.3", 8080),
            true,
        ),
        (
            "trustDomains exact",
            "{trustDomains: [cluster.local]}",
            web(),
            true,
        ),
        (
            "trustDomains other",
            "{trustDomains: [other.example]}",
            web(),
            false,
        ),
        (
            "trustDomains prefix",
            r#"{trustDomains: ["cluster*"]}"#,
            web(),
            true,
        ),
        (
            "trustDomains suffix other",
            r#"{trustDomains: ["*.example"]}"#,
            web(),
            false,
        ),
        (
            "trustDomains presence needs an identity",
            r#"{trustDomains: ["*"]}"#,
            plain("10.1.2.3", 8080),
            false,
        ),
        (
            "notTrustDomains excluded",
            "{notTrustDomains: [cluster.local]}",
            web(),
            false,
        ),
        (
            "notTrustDomains other",
            "{notTrustDomains: [other.example]}",
            web(),
            true,
        ),
        (
            "notServiceAccounts excluded",
            "{notServiceAccounts: [shop/web]}",
            web(),
            false,
        ),
        (
            "notServiceAccounts other",
            "{notServiceAccounts: [shop/db]}",
            web(),
            true,
        ),
        ("ipBlocks v4", r#"{ipBlocks: ["10.0.0.0/8"]}"#, web(), true),
        (
            "ipBlocks v4 other",
            r#"{ipBlocks: ["192.168.0.0/16"]}"#,
            web(),
            false,
        ),
        (
            "ipBlocks bare ip",
            r#"{ipBlocks: ["10.1.2.3"]}"#,
            web(),
            true,
        ),
        (
            "ipBlocks bare ip other",
            r#"{ipBlocks: ["10.1.2.4"]}"#,
            web(),
            false,
        ),
        (
            "ipBlocks host bits set",
            r#"{ipBlocks: ["10.1.2.200/24"]}"#,
            web(),
            true,
        ),
        ("ipBlocks /0", r#"{ipBlocks: ["0.0.0.0/0"]}"#, web(), true),
        (
            "ipBlocks v6",
            r#"{ipBlocks: ["fd00::/64"]}"#,
            v6.clone(),
            true,
        ),
        (
            "ipBlocks v6 other",
            r#"{ipBlocks: ["fd01::/64"]}"#,
            v6.clone(),
            false,
        ),
        (
            "ipBlocks v6 bare",
            r#"{ipBlocks: ["fd00::7"]}"#,
            v6.clone(),
            true,
        ),
        (
            "ipBlocks v4 block, v6 peer",
            r#"{ipBlocks: ["0.0.0.0/0"]}"#,
            v6,
            false,
        ),
        (
            "ipBlocks v4-mapped peer",
            r#"{ipBlocks: ["10.0.0.0/8"]}"#,
            ConnectionAttrs {
                source_ip: ip("::ffff:10.1.2.3"),
                ..web()
            },
            true,
        ),
        (
            "notIpBlocks excluded",
            r#"{notIpBlocks: ["10.1.0.0/16"]}"#,
            web(),
            false,
        ),
        (
            "notIpBlocks other",
            r#"{notIpBlocks: ["10.2.0.0/16"]}"#,
            web(),
            true,
        ),
        (
            "all fields must match",
            r#"{namespaces: [shop], ipBlocks: ["192.168.0.0/16"]}"#,
            web(),
            false,
        ),
        (
            "all fields match",
            r#"{namespaces: [shop], ipBlocks: ["10.0.0.0/8"], notPrincipals: ["*/sa/db"]}"#,
            web(),
            true,
        ),
        (
            "positive and negative",
            r#"{namespaces: ["*"], notNamespaces: [shop]}"#,
            web(),
            false,
        ),
    ];
    for (name, source, conn, want) in cases {
        assert_eq!(rule_matches(&from(source), conn), *want, "{name}: {source}");
    }
}

#[test]
fn from_list_is_any_of() {
    let rule =
        "  - from:\n    - source: {namespaces: [legacy]}\n    - source: {namespaces: [shop]}\n";
    assert!(rule_matches(rule, &web()));
    assert!(!rule_matches(rule, &mtls("other", "web", "10.1.2.3", 8080)));
}

#[test]
fn operation_ports() {
    let cases: &[(&str, &str, u16, bool)] = &[
        ("port", r#"{ports: ["8080"]}"#, 8080, true),
        ("port other", r#"{ports: ["8080"]}"#, 9090, false),
        ("port as number", "{ports: [8080, 9090]}", 9090, true),
        ("notPorts excluded", r#"{notPorts: ["8080"]}"#, 8080, false),
        ("notPorts other", r#"{notPorts: ["8080"]}"#, 9090, true),
    ];
    for (name, operation, port, want) in cases {
        let conn = mtls("shop", "web", "10.1.2.3", *port);
        assert_eq!(rule_matches(&to(operation), &conn), *want, "{name}");
    }
}

#[test]
fn when_conditions() {
    let cases: &[(&str, &str, ConnectionAttrs, bool)] = &[
        (
            "source.ip",
            r#"{key: source.ip, values: ["10.0.0.0/8"]}"#,
            web(),
            true,
        ),
        (
            "source.ip other",
            r#"{key: source.ip, values: ["10.2.0.0/16"]}"#,
            web(),
            false,
        ),
        (
            "source.ip notValues",
            r#"{key: source.ip, notValues: ["10.0.0.0/8"]}"#,
            web(),
            false,
        ),
        (
            "source.ip notValues other",
            r#"{key: source.ip, notValues: ["fd00::/8"]}"#,
            web(),
            true,
        ),
        (
            "source.serviceAccount bare",
            "{key: source.serviceAccount, values: [web]}",
            web(),
            true,
        ),
        (
            "source.serviceAccount bare, another namespace",
            "{key: source.serviceAccount, values: [web]}",
            mtls("legacy", "web", "10.1.2.3", 8080),
            false,
        ),
        (
            "source.serviceAccount notValues",
            "{key: source.serviceAccount, notValues: [shop/web]}",
            web(),
            false,
        ),
        (
            "source.trustDomain",
            "{key: source.trustDomain, values: [cluster.local]}",
            web(),
            true,
        ),
        (
            "source.trustDomain other",
            "{key: source.trustDomain, values: [other.example]}",
            web(),
            false,
        ),
        (
            "source.namespace",
            "{key: source.namespace, values: [shop]}",
            web(),
            true,
        ),
        (
            "source.namespace other",
            "{key: source.namespace, values: [legacy]}",
            web(),
            false,
        ),
        (
            "source.namespace plaintext",
            "{key: source.namespace, values: [shop]}",
            plain("10.1.2.3", 8080),
            false,
        ),
        (
            "source.namespace notValues",
            "{key: source.namespace, notValues: [shop]}",
            web(),
            false,
        ),
        (
            "source.namespace notValues plaintext",
            "{key: source.namespace, notValues: [shop]}",
            plain("10.1.2.3", 8080),
            true,
        ),
        (
            "source.principal suffix",
            r#"{key: source.principal, values: ["*/sa/web"]}"#,
            web(),
            true,
        ),
        (
            "source.principal other",
            r#"{key: source.principal, values: ["cluster.local/ns/shop/sa/db"]}"#,
            web(),
            false,
        ),
        (
            "source.principal notValues",
            r#"{key: source.principal, notValues: ["cluster.local/*"]}"#,
            web(),
            false,
        ),
        (
            "destination.ip",
            r#"{key: destination.ip, values: ["10.9.0.0/16"]}"#,
            web(),
            true,
        ),
        (
            "destination.ip other",
            r#"{key: destination.ip, values: ["10.8.0.0/16"]}"#,
            web(),
            false,
        ),
        (
            "destination.ip notValues",
            r#"{key: destination.ip, notValues: ["10.9.0.5"]}"#,
            web(),
            false,
        ),
        (
            "destination.port",
            r#"{key: destination.port, values: ["8080"]}"#,
            web(),
            true,
        ),
        (
            "destination.port other",
            r#"{key: destination.port, values: ["9090"]}"#,
            web(),
            false,
        ),
        (
            "destination.port notValues",
            r#"{key: destination.port, notValues: ["8080"]}"#,
            web(),
            false,
        ),
        (
            "destination.port notValues other",
            r#"{key: destination.port, notValues: ["9090"]}"#,
            web(),
            true,
        ),
        (
            "values and notValues",
            r#"{key: destination.port, values: ["8080"], notValues: ["8080"]}"#,
            web(),
            false,
        ),
    ];
    for (name, condition, conn, want) in cases {
        assert_eq!(rule_matches(&when(condition), conn), *want, "{name}");
    }
}

#[test]
fn within_a_rule_everything_must_match() {
    let rule = "  - from:\n    - source: {namespaces: [shop]}\n    to:\n    - operation: {ports: [\"8080\"]}\n    when:\n    - {key: source.ip, values: [\"10.0.0.0/8\"]}\n";
    assert!(rule_matches(rule, &web()));
    assert!(!rule_matches(rule, &mtls("shop", "web", "10.1.2.3", 9090)));
    assert!(!rule_matches(
        rule,
        &mtls("legacy", "web", "10.1.2.3", 8080)
    ));
    assert!(!rule_matches(
        rule,
        &mtls("shop", "web", "192.168.1.1", 8080)
    ));
}
