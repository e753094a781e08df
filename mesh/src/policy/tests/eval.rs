//! Evaluation order, scopes, L7-only fields and the explanations.

use super::*;

/// A set from `(namespace, name, spec)` policies, root namespace `istio-system`.
fn set(policies: &[(&str, &str, &str)]) -> PolicySet {
    let mut set = PolicySet::default();
    for (ns, name, spec) in policies {
        set.insert_authorization(authz(ns, name, spec));
    }
    set
}

fn check(
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

/// A workload's labels in a table.
type Labels<'a> = &'a [(&'a str, &'a str)];

const DENY_LEGACY: &str =
    "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [legacy]}\n";
const ALLOW_FRONTEND: &str = "  selector: {matchLabels: {app: web}}\n  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/shop/sa/frontend\"]}\n";

#[test]
fn no_policy_allows() {
    let d = check(&set(&[]), "shop", &[], &plain("10.1.2.3", 80));
    assert_eq!(
        d,
        Decision {
            verdict: Verdict::Allow,
            policy: None,
            rule: None,
            reason: "allowed: no policy applies".to_owned()
        }
    );
}

#[test]
fn deny_is_checked_before_allow() {
    let both_match = "  rules:\n  - from:\n    - source: {namespaces: [legacy]}\n";
    let s = set(&[
        ("shop", "allow-legacy", both_match),
        ("shop", "no-legacy", DENY_LEGACY),
    ]);
    let d = check(&s, "shop", &[], &mtls("legacy", "old", "10.1.2.3", 80));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.policy.unwrap().to_string(), "shop/no-legacy");
    assert_eq!(d.rule, Some(0));
    assert_eq!(
        d.reason,
        "denied by DENY policy shop/no-legacy rule 0: source.namespace legacy matched"
    );
    let d = check(&s, "shop", &[], &mtls("shop", "web", "10.1.2.3", 80));
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "an ALLOW selects the workload and does not match"
    );
}

#[test]
fn allow_policies_admit_only_what_they_match() {
    let s = set(&[
        ("shop", "frontend", ALLOW_FRONTEND),
        (
            "shop",
            "ops",
            "  rules:\n  - from:\n    - source: {namespaces: [ops]}\n",
        ),
    ]);
    let d = check(
        &s,
        "shop",
        &[("app", "web")],
        &mtls("shop", "frontend", "10.1.2.3", 80),
    );
    assert!(d.is_allowed());
    assert_eq!(
        (d.policy.unwrap().to_string(), d.rule),
        ("shop/frontend".to_owned(), Some(0))
    );
    assert_eq!(
        d.reason,
        "allowed by ALLOW policy shop/frontend rule 0: source.principal cluster.local/ns/shop/sa/frontend matched"
    );
    let d = check(
        &s,
        "shop",
        &[("app", "web")],
        &mtls("shop", "other", "10.1.2.3", 80),
    );
    assert!(!d.is_allowed());
    assert_eq!(d.policy, None);
    assert_eq!(
        d.reason,
        "no ALLOW policy selecting shop/web matched (2 policies checked: shop/frontend, shop/ops)"
    );
    // The selector does not pick a workload without app=web; only the namespace-wide one does.
    let d = check(
        &s,
        "shop",
        &[("app", "db")],
        &mtls("shop", "frontend", "10.1.2.3", 80),
    );
    assert_eq!(
        d.reason,
        "no ALLOW policy selecting shop/web matched (1 policy checked: shop/ops)"
    );
}

#[test]
fn empty_spec_denies_all_and_empty_rule_allows_all() {
    let deny_all = set(&[("shop", "deny-all", "  {}\n")]);
    for conn in [mtls("shop", "web", "10.1.2.3", 80), plain("10.1.2.3", 80)] {
        assert!(!check(&deny_all, "shop", &[], &conn).is_allowed());
        assert!(
            check(&deny_all, "other", &[], &conn).is_allowed(),
            "other namespaces unaffected"
        );
    }
    let allow_all = set(&[
        ("shop", "deny-all", "  {}\n"),
        ("shop", "allow-all", "  rules: [{}]\n"),
    ]);
    let d = check(&allow_all, "shop", &[], &plain("10.1.2.3", 80));
    assert!(d.is_allowed());
    assert_eq!(
        d.reason,
        "allowed by ALLOW policy shop/allow-all rule 0: the rule matches every connection"
    );
    // DENY with no rules matches nothing.
    let deny_nothing = set(&[("shop", "d", "  action: DENY\n")]);
    assert!(check(&deny_nothing, "shop", &[], &plain("10.1.2.3", 80)).is_allowed());
}

#[test]
fn l7_fields_never_match_in_allow() {
    let s = set(&[(
        "shop",
        "get-only",
        "  rules:\n  - from:\n    - source: {namespaces: [shop]}\n    to:\n    - operation: {methods: [GET]}\n",
    )]);
    let d = check(&s, "shop", &[], &mtls("shop", "web", "10.1.2.3", 80));
    assert!(!d.is_allowed(), "{d:?}");
    assert_eq!(s.warnings().len(), 1);
    assert!(s.warnings()[0].contains("shop/get-only"));
    // A second, L4-only rule of the same policy still allows.
    let s = set(&[(
        "shop",
        "mixed",
        "  rules:\n  - to:\n    - operation: {paths: [\"/x\"]}\n  - from:\n    - source: {namespaces: [shop]}\n",
    )]);
    let d = check(&s, "shop", &[], &mtls("shop", "web", "10.1.2.3", 80));
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(1)));
}

#[test]
fn l7_fields_are_dropped_in_deny() {
    let s = set(&[(
        "shop",
        "no-admin",
        "  action: DENY\n  rules:\n  - from:\n    - source: {namespaces: [legacy]}\n    to:\n    - operation: {paths: [\"/admin*\"]}\n",
    )]);
    let d = check(&s, "shop", &[], &mtls("legacy", "old", "10.1.2.3", 80));
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "the L4 part still denies, on any path"
    );
    assert_eq!(
        d.reason,
        "denied by DENY policy shop/no-admin rule 0: source.namespace legacy matched (not checked: to.operation.paths (L7-only))"
    );
    assert!(
        check(&s, "shop", &[], &mtls("shop", "web", "10.1.2.3", 80)).is_allowed(),
        "the L4 part does not match"
    );
    // Only L7 parts: the whole rule denies everything.
    let s = set(&[(
        "shop",
        "no-get",
        "  action: DENY\n  rules:\n  - to:\n    - operation: {methods: [GET]}\n",
    )]);
    assert!(!check(&s, "shop", &[], &plain("10.1.2.3", 80)).is_allowed());
}

#[test]
fn scopes() {
    let root_wide = ("istio-system", "mesh-deny", DENY_LEGACY);
    let root_selector = (
        "istio-system",
        "db-deny",
        "  selector: {matchLabels: {app: db}}\n  action: DENY\n  rules: [{}]\n",
    );
    let other_ns = ("billing", "billing-deny", "  action: DENY\n  rules: [{}]\n");
    let s = set(&[root_wide, root_selector, other_ns]);
    let legacy = mtls("legacy", "old", "10.1.2.3", 80);
    let shop = mtls("shop", "web", "10.1.2.3", 80);
    let cases: &[(&str, Labels<'_>, &ConnectionAttrs, Option<&str>)] = &[
        (
            "mesh-wide applies everywhere",
            &[],
            &legacy,
            Some("istio-system/mesh-deny"),
        ),
        ("mesh-wide, not matching", &[], &shop, None),
        (
            "root selector in any namespace",
            &[("app", "db")],
            &shop,
            Some("istio-system/db-deny"),
        ),
        (
            "root selector, labels differ",
            &[("app", "web")],
            &shop,
            None,
        ),
    ];
    for (name, workload_labels, conn, denied_by) in cases {
        let d = check(&s, "shop", workload_labels, conn);
        assert_eq!(
            d.policy.map(|p| p.to_string()).as_deref(),
            *denied_by,
            "{name}"
        );
    }
    let d = check(&s, "billing", &[], &shop);
    assert_eq!(d.policy.unwrap().to_string(), "billing/billing-deny");
    // A custom root namespace.
    let mut custom = PolicySet::new("mesh-root");
    custom.insert_authorization(authz(
        "mesh-root",
        "deny",
        "  action: DENY\n  rules: [{}]\n",
    ));
    custom.insert_authorization(authz(
        "istio-system",
        "deny",
        "  action: DENY\n  rules: [{}]\n",
    ));
    let d = check(&custom, "shop", &[], &shop);
    assert_eq!(d.policy.unwrap().to_string(), "mesh-root/deny");
}

#[test]
fn order_is_by_namespace_then_name_and_replacement_keeps_one() {
    let deny = "  action: DENY\n  rules: [{}]\n";
    let s = set(&[
        ("shop", "z", deny),
        ("shop", "a", deny),
        ("istio-system", "m", DENY_LEGACY),
    ]);
    let names: Vec<String> = s
        .authorization_policies()
        .iter()
        .map(|p| p.reference().to_string())
        .collect();
    assert_eq!(names, ["istio-system/m", "shop/a", "shop/z"]);
    let d = check(&s, "shop", &[], &plain("10.1.2.3", 80));
    assert_eq!(d.policy.unwrap().to_string(), "shop/a");
    let mut s = s;
    s.insert_authorization(authz("shop", "a", "  action: DENY\n"));
    assert_eq!(s.authorization_policies().len(), 3);
    let d = check(&s, "shop", &[], &plain("10.1.2.3", 80));
    assert_eq!(d.policy.unwrap().to_string(), "shop/z");
}

#[test]
fn waypoint_policies_are_not_enforced_here() {
    let s = set(&[(
        "shop",
        "wp",
        "  targetRefs: [{kind: Service, group: \"\", name: web}]\n  rules:\n  - from:\n    - source: {namespaces: [ops]}\n",
    )]);
    let d = check(&s, "shop", &[], &mtls("shop", "web", "10.1.2.3", 80));
    assert_eq!(d.reason, "allowed: no policy applies");
}

#[test]
fn mesh_deny_and_namespace_allow_combine() {
    let s = set(&[
        (
            "istio-system",
            "no-plaintext",
            "  action: DENY\n  rules:\n  - from:\n    - source: {notPrincipals: [\"*\"]}\n",
        ),
        (
            "shop",
            "office",
            "  rules:\n  - from:\n    - source: {ipBlocks: [\"192.168.0.0/16\"]}\n",
        ),
    ]);
    let d = check(&s, "shop", &[], &plain("192.168.1.1", 80));
    assert_eq!(
        d.policy.unwrap().to_string(),
        "istio-system/no-plaintext",
        "DENY first"
    );
    let d = check(&s, "shop", &[], &mtls("ops", "bot", "192.168.1.1", 80));
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, Some(0)));
    assert_eq!(
        d.reason,
        "allowed by ALLOW policy shop/office rule 0: source.ip 192.168.1.1 matched 192.168.0.0/16"
    );
    let d = check(&s, "shop", &[], &mtls("ops", "bot", "10.0.0.1", 80));
    assert_eq!(d.verdict, Verdict::Deny);
    let d = check(&s, "billing", &[], &mtls("ops", "bot", "10.0.0.1", 80));
    assert_eq!(d.verdict, Verdict::Allow, "the ALLOW is only for shop");
}

#[test]
fn principals_are_trust_domain_qualified() {
    let s = set(&[(
        "shop",
        "a",
        "  rules:\n  - from:\n    - source: {principals: [\"cluster.local/ns/shop/sa/web\"]}\n",
    )]);
    let other_td = ConnectionAttrs {
        source_principal: Some(SpiffeId::parse("spiffe://other.example/ns/shop/sa/web").unwrap()),
        ..mtls("shop", "web", "10.1.2.3", 80)
    };
    assert!(!check(&s, "shop", &[], &other_td).is_allowed());
    assert!(check(&s, "shop", &[], &mtls("shop", "web", "10.1.2.3", 80)).is_allowed());
}
