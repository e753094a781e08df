//! What marrow does not enforce as written: AUDIT changes no decision, CUSTOM denies what its
//! rules match and says why, an unknown action denies what the policy selects, dry-run
//! policies never decide but are logged, and the report names each object and reason.

use super::*;

fn web() -> ConnectionAttrs {
    mtls("shop", "web", "10.1.2.3", 8080)
}

fn legacy() -> ConnectionAttrs {
    mtls("legacy", "old", "10.1.2.3", 8080)
}

const FROM_LEGACY: &str = "  rules:\n  - from:\n    - source: {namespaces: [legacy]}\n";

#[test]
fn audit_changes_no_decision() {
    let audit = format!("  action: AUDIT\n{FROM_LEGACY}");
    // Alone: no policy decides.
    let s = authz_set(&[("shop", "audit-legacy", &audit)]);
    for conn in [legacy(), web()] {
        let d = decide(&s, "shop", &[], &conn);
        assert_eq!(d.reason, "allowed: no policy applies");
    }
    // Beside an ALLOW: the same decisions as without it, matching or not.
    let allow_shop = "  rules:\n  - from:\n    - source: {namespaces: [shop]}\n";
    let with = authz_set(&[
        ("shop", "allow-shop", allow_shop),
        ("shop", "audit", &audit),
    ]);
    let without = authz_set(&[("shop", "allow-shop", allow_shop)]);
    for conn in [legacy(), web()] {
        assert_eq!(
            decide(&with, "shop", &[], &conn),
            decide(&without, "shop", &[], &conn)
        );
    }
}

#[test]
fn custom_denies_what_its_rules_match_and_says_why() {
    let custom = format!("  action: CUSTOM\n  provider: {{name: opa}}\n{FROM_LEGACY}");
    let allow_all = "  rules: [{}]\n";
    let s = authz_set(&[
        ("shop", "allow-all", allow_all),
        ("shop", "ext-authz", &custom),
    ]);
    let d = decide(&s, "shop", &[], &legacy());
    assert_eq!(d.verdict, Verdict::Deny, "CUSTOM comes before ALLOW");
    assert_eq!(d.policy.unwrap().to_string(), "shop/ext-authz");
    assert_eq!(d.rule, Some(0));
    assert!(
        d.reason.contains("CUSTOM policy shop/ext-authz rule 0"),
        "{}",
        d.reason
    );
    assert!(
        d.reason
            .contains("cannot consult its external authorizer \"opa\""),
        "{}",
        d.reason
    );
    assert!(
        d.reason.contains("source.namespace legacy matched"),
        "{}",
        d.reason
    );
    // What its rules do not match goes on to the other policies.
    let d = decide(&s, "shop", &[], &web());
    assert_eq!(d.policy.unwrap().to_string(), "shop/allow-all");
    // L7-only parts are dropped, as in a DENY: it denies more.
    let by_path = "  action: CUSTOM\n  provider: {name: opa}\n  rules:\n  - to:\n    - operation: {paths: [\"/admin\"]}\n";
    let s = authz_set(&[("shop", "ext-admin", by_path)]);
    assert!(!decide(&s, "shop", &[], &web()).is_allowed());
    // Out of its selector, nothing.
    let selected = format!("  selector: {{matchLabels: {{app: web}}}}\n{custom}");
    let s = authz_set(&[("shop", "ext-authz", &selected)]);
    assert!(!decide(&s, "shop", &[("app", "web")], &legacy()).is_allowed());
    assert!(decide(&s, "shop", &[("app", "db")], &legacy()).is_allowed());
}

#[test]
fn an_unknown_action_denies_what_the_policy_selects() {
    for action in ["MAYBE", "[ALLOW]"] {
        let spec =
            format!("  selector: {{matchLabels: {{app: web}}}}\n  action: {action}\n{FROM_LEGACY}");
        let s = authz_set(&[("shop", "future", &spec)]);
        let d = decide(&s, "shop", &[("app", "web")], &web());
        assert_eq!(
            d.verdict,
            Verdict::Deny,
            "{action}: even what its rules do not match"
        );
        assert_eq!(d.policy.unwrap().to_string(), "shop/future");
        assert!(d.reason.contains("cannot read its action"), "{}", d.reason);
        assert!(
            decide(&s, "shop", &[("app", "db")], &web()).is_allowed(),
            "{action}"
        );
    }
    // A spec that is not an object: nothing can be read, the namespace is denied.
    let doc = yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: [x]\n",
    );
    let mut s = PolicySet::default();
    s.insert_authorization(authorization_policy(&doc).unwrap());
    assert!(!decide(&s, "shop", &[("app", "db")], &web()).is_allowed());
    assert!(decide(&s, "other", &[], &web()).is_allowed());
}

/// A policy with the `istio.io/dry-run` annotation set to `value`.
fn annotated(name: &str, value: &str, spec: &str) -> AuthorizationPolicy {
    let doc = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: shop\n  annotations: {{istio.io/dry-run: {value}}}\nspec:\n{spec}"
    );
    authorization_policy(&yaml(&doc)).unwrap()
}

#[test]
fn dry_run_policies_are_logged_never_enforced() {
    let deny = format!("  action: DENY\n{FROM_LEGACY}");
    let mut s = PolicySet::default();
    s.insert_authorization(annotated("no-legacy", "\"true\"", &deny));
    let d = decide(&s, "shop", &[], &legacy());
    assert!(d.is_allowed(), "a dry-run DENY decides nothing");
    assert_eq!(
        d.reason,
        "allowed: no policy applies; dry-run: DENY policy shop/no-legacy rule 0 would deny"
    );
    let d = decide(&s, "shop", &[], &web());
    assert_eq!(d.reason, "allowed: no policy applies", "it does not match");

    // A dry-run ALLOW alone: nothing is enforced, the log says what it would do.
    let allow = "  rules:\n  - from:\n    - source: {namespaces: [shop]}\n";
    let mut s = PolicySet::default();
    s.insert_authorization(annotated("only-shop", "\"True\"", allow));
    let d = decide(&s, "shop", &[], &legacy());
    assert!(d.is_allowed());
    assert!(
        d.reason
            .ends_with("dry-run: no dry-run ALLOW policy matches: they would deny"),
        "{}",
        d.reason
    );
    let d = decide(&s, "shop", &[], &web());
    assert!(
        d.reason
            .ends_with("dry-run: ALLOW policy shop/only-shop rule 0 would allow"),
        "{}",
        d.reason
    );

    // "false", and a value that is not a boolean (istiod then enforces it), are enforced.
    for value in ["\"false\"", "\"maybe\""] {
        let mut s = PolicySet::default();
        let policy = annotated("no-legacy", value, &deny);
        assert!(!policy.dry_run, "{value}");
        s.insert_authorization(policy);
        assert!(!decide(&s, "shop", &[], &legacy()).is_allowed(), "{value}");
    }
    // Replaced by an enforced version, nothing is dry-run any more.
    let mut s = PolicySet::default();
    s.insert_authorization(annotated("no-legacy", "\"true\"", &deny));
    assert!(s.has_dry_run());
    s.insert_authorization(annotated("no-legacy", "\"false\"", &deny));
    assert!(!s.has_dry_run());
    let policy = annotated("no-legacy", "\"maybe\"", &deny);
    assert_eq!(
        texts(&policy.findings),
        ["metadata.annotations[istio.io/dry-run]: \"maybe\" is not a boolean"]
    );
}

#[test]
fn the_report_names_each_object_and_reason() {
    let mut s = authz_set(&[
        ("shop", "audit", &format!("  action: AUDIT\n{FROM_LEGACY}")),
        (
            "shop",
            "custom",
            &format!("  action: CUSTOM\n  provider: {{name: opa}}\n{FROM_LEGACY}"),
        ),
        ("shop", "future", "  action: MAYBE\n"),
        (
            "shop",
            "get-only",
            "  rules:\n  - to:\n    - operation: {methods: [GET], ports: [\"80\"]}\n",
        ),
        ("shop", "newer", "  rules: [{}]\n  tier: gold\n"),
        (
            "shop",
            "typo",
            "  rules:\n  - to:\n    - operation: {ports: [htp]}\n",
        ),
        ("shop", "fine", "  rules: [{}]\n"),
        (
            "shop",
            "waypoint",
            "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]\n  rules:\n  - to:\n    - operation: {methods: [GET]}\n",
        ),
    ]);
    s.insert_peer_authentication(
        peer_authentication(&yaml(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: shop}\nspec: {mtls: {mode: STRICTER}}\n",
        ))
        .unwrap(),
    );
    s.insert_request_authentication(
        request_authentication(&yaml(
            "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: shop}\nspec: {}\n",
        ))
        .unwrap(),
    );
    let report: Vec<(String, &str, &str)> = s
        .unsupported()
        .iter()
        .map(|u| (u.policy.to_string(), u.kind.as_str(), u.reason.as_str()))
        .collect();
    let want: Vec<(String, &str, &str)> = [
        ("shop/audit", "AuthorizationPolicy", "audit_action"),
        ("shop/custom", "AuthorizationPolicy", "custom_action"),
        ("shop/future", "AuthorizationPolicy", "unrecognized_action"),
        ("shop/get-only", "AuthorizationPolicy", "l7_only_field"),
        ("shop/newer", "AuthorizationPolicy", "unknown_field"),
        ("shop/typo", "AuthorizationPolicy", "invalid_field"),
        ("shop/pa", "PeerAuthentication", "invalid_field"),
        (
            "shop/jwt",
            "RequestAuthentication",
            "request_authentication",
        ),
    ]
    .iter()
    .map(|(p, k, r)| ((*p).to_owned(), *k, *r))
    .collect();
    assert_eq!(report, want);
    let counts = s.unsupported_counts();
    assert_eq!(
        counts.get(&(
            PolicyKind::AuthorizationPolicy,
            UnsupportedReason::CustomAction
        )),
        Some(&1)
    );
    assert_eq!(counts.values().sum::<i64>(), 8);
    for pair in counts.keys() {
        assert!(
            UnsupportedReason::BY_KIND.contains(pair),
            "{pair:?} has no series"
        );
    }
    // Each log line names the object, the reason, the field and what marrow does.
    let lines = s.warnings();
    let typo = lines.iter().find(|l| l.contains("shop/typo")).unwrap();
    assert_eq!(
        typo,
        "AuthorizationPolicy shop/typo not enforced as written (invalid_field): \
         rules[0].to[0].operation.ports: invalid port \"htp\", expected 0-65535: \
         an ALLOW rule with them never matches at L4"
    );
    let custom = lines.iter().find(|l| l.contains("shop/custom")).unwrap();
    assert!(custom.contains("\"opa\""), "{custom}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("shop/waypoint") && l.contains("targetRefs"))
    );
}
