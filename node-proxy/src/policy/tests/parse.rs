//! Parsing real YAML, and every refusal naming the policy and the field.

use super::*;

#[test]
fn a_realistic_policy_parses() {
    let doc = yaml(
        r#"
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: web-ingress
  namespace: shop
  annotations: {owner: platform}
spec:
  selector:
    matchLabels:
      app: web
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/frontend"]
    - source:
        namespaces: ["ops"]
        ipBlocks: ["10.0.0.0/8", "fd00::/64"]
    to:
    - operation:
        ports: ["8080"]
    when:
    - key: destination.port
      values: ["8080"]
  someFutureField: ignored
"#,
    );
    let policy = authorization_policy(&doc).unwrap();
    assert_eq!(policy.reference().to_string(), "shop/web-ingress");
    assert_eq!(policy.action, Action::Allow);
    assert_eq!(policy.selector, Some(labels(&[("app", "web")])));
    assert_eq!(policy.rules.len(), 1);
    let rule = &policy.rules[0];
    assert_eq!((rule.from.len(), rule.to.len(), rule.when.len()), (2, 1, 1));
    assert!(rule.l7_only_fields.is_empty());
    assert!(policy.warnings().is_empty());
}

#[test]
fn empty_spec_and_empty_rule() {
    let deny_all = authorization_policy(&yaml(&authz_doc("shop", "deny-all", "  {}\n"))).unwrap();
    assert_eq!((deny_all.action, deny_all.rules.len()), (Action::Allow, 0));
    let no_spec = yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, namespace: shop}\n",
    );
    assert_eq!(authorization_policy(&no_spec).unwrap().rules.len(), 0);
    let allow_all = authz("shop", "allow-all", "  rules: [{}]\n");
    assert_eq!(allow_all.rules, vec![Rule::default()]);
    let empty_selector = authz("shop", "ns-wide", "  selector: {matchLabels: {}}\n");
    assert_eq!(empty_selector.selector, None);
}

#[test]
fn l7_fields_are_recorded_and_warned() {
    let policy = authz(
        "shop",
        "l7",
        r#"  action: DENY
  rules:
  - from:
    - source: {requestPrincipals: ["*"], namespaces: [legacy]}
    to:
    - operation: {methods: [GET], paths: ["/admin*"], ports: ["8080"]}
    - operation: {hosts: [example.com]}
    when:
    - {key: "request.headers[x-user]", values: [bob]}
    - {key: "request.auth.claims[iss]", values: [x]}
    - {key: remote.ip, values: ["10.0.0.1"]}
    - {key: source.ip, values: ["10.0.0.0/8"]}
"#,
    );
    let rule = &policy.rules[0];
    assert_eq!(
        rule.l7_only_fields,
        [
            "from.source.requestPrincipals",
            "to.operation.methods",
            "to.operation.paths",
            "to.operation.hosts",
            "when.request.headers[x-user]",
            "when.request.auth.claims[iss]",
            "when.remote.ip",
        ]
    );
    // The L4 parts stay: the namespace, one port-constrained operation and an empty one.
    assert_eq!(rule.from.len(), 1);
    assert_eq!(rule.to.len(), 2);
    assert_eq!(rule.when.len(), 1);
    let warnings = policy.warnings();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("shop/l7"), "{}", warnings[0]);
    assert!(warnings[0].contains("DENY"), "{}", warnings[0]);
}

/// Every refusal: (spec, policy field named, words of the reason).
#[test]
fn refusals_name_policy_field_and_reason() {
    let cases: &[(&str, &str, &str)] = &[
        ("  action: AUDIT\n", "action", "AUDIT is not supported"),
        (
            "  action: CUSTOM\n  provider: {name: ext}\n",
            "action",
            "CUSTOM is not supported",
        ),
        ("  action: MAYBE\n", "action", "unknown action \"MAYBE\""),
        ("  action: [ALLOW]\n", "action", "must be a string"),
        ("  selector: [app]\n", "selector", "must be an object"),
        (
            "  selector: {matchLabels: [app]}\n",
            "selector.matchLabels",
            "must be an object",
        ),
        (
            "  selector: {matchLabels: {app: {x: y}}}\n",
            "selector.matchLabels.app",
            "must be a string",
        ),
        ("  rules: {from: []}\n", "rules", "must be a list"),
        ("  rules: [[]]\n", "rules[0]", "must be an object"),
        ("  rules: [{from: {}}]\n", "rules[0].from", "must be a list"),
        (
            "  rules: [{from: [{source: {}}]}]\n",
            "rules[0].from[0].source",
            "must not be empty",
        ),
        (
            "  rules: [{from: [{}]}]\n",
            "rules[0].from[0].source",
            "must not be empty",
        ),
        (
            "  rules: [{from: [{source: {ipBlocks: [\"10.0.0.0/33\"]}}]}]\n",
            "rules[0].from[0].source.ipBlocks",
            "invalid CIDR \"10.0.0.0/33\"",
        ),
        (
            "  rules: [{from: [{source: {notIpBlocks: [\"10.0.0.256\"]}}]}]\n",
            "rules[0].from[0].source.notIpBlocks",
            "invalid CIDR",
        ),
        (
            "  rules: [{from: [{source: {ipBlocks: [\"fd00::/200\"]}}]}]\n",
            "rules[0].from[0].source.ipBlocks",
            "exceeds 128",
        ),
        (
            "  rules: [{from: [{source: {principals: \"x\"}}]}]\n",
            "rules[0].from[0].source.principals",
            "must be a list",
        ),
        (
            "  rules: [{from: [{source: {namespaces: [[x]]}}]}]\n",
            "rules[0].from[0].source.namespaces[0]",
            "must be a string",
        ),
        (
            "  rules: [{from: [{source: {serviceAccounts: [web]}}]}]\n",
            "rules[0].from[0].source.serviceAccounts",
            "<namespace>/<service-account>",
        ),
        (
            "  rules: [{from: [{source: {notServiceAccounts: [a/b/c]}}]}]\n",
            "rules[0].from[0].source.notServiceAccounts",
            "<namespace>/<service-account>",
        ),
        (
            "  rules: [{to: [{operation: {ports: [\"http\"]}}]}]\n",
            "rules[0].to[0].operation.ports",
            "invalid port \"http\"",
        ),
        (
            "  rules: [{to: [{operation: {notPorts: [\"70000\"]}}]}]\n",
            "rules[0].to[0].operation.notPorts",
            "invalid port \"70000\"",
        ),
        (
            "  rules: [{to: [{operation: {}}]}]\n",
            "rules[0].to[0].operation",
            "must not be empty",
        ),
        (
            "  rules: [{when: [{key: source.ip}]}]\n",
            "rules[0].when[0].values",
            "must not be empty",
        ),
        (
            "  rules: [{when: [{values: [x]}]}]\n",
            "rules[0].when[0].key",
            "must not be empty",
        ),
        (
            "  rules: [{when: [{key: source.color, values: [x]}]}]\n",
            "rules[0].when[0].key",
            "unknown condition key \"source.color\"",
        ),
        (
            "  rules: [{when: [{key: destination.port, values: [\"-1\"]}]}]\n",
            "rules[0].when[0].values",
            "invalid port",
        ),
        (
            "  rules: [{when: [{key: source.ip, notValues: [\"10.0.0.0/99\"]}]}]\n",
            "rules[0].when[0].notValues",
            "invalid CIDR",
        ),
        (
            "  rules: [{when: [{key: destination.ip, values: [shop]}]}]\n",
            "rules[0].when[0].values",
            "invalid CIDR \"shop\"",
        ),
    ];
    for (spec, field, reason) in cases {
        let err = authorization_policy(&yaml(&authz_doc("shop", "bad", spec))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("AuthorizationPolicy shop/bad refused"),
            "{spec}: {text}"
        );
        assert!(
            text.contains(&format!("{field}:")) || text.contains(&format!("{field} ")),
            "{spec}: wants field {field}: {text}"
        );
        assert!(text.contains(reason), "{spec}: wants {reason}: {text}");
    }
}

#[test]
fn refusals_without_a_name() {
    let doc = yaml(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {namespace: shop}\nspec: {}\n",
    );
    assert_eq!(
        authorization_policy(&doc),
        Err(ParseError::MissingName {
            kind: PolicyKind::AuthorizationPolicy
        })
    );
    let doc = yaml(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: \"\"}\n",
    );
    assert_eq!(
        peer_authentication(&doc),
        Err(ParseError::MissingName {
            kind: PolicyKind::PeerAuthentication
        })
    );
}

#[test]
fn peer_authentication_parses_and_refuses() {
    let doc = yaml(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: web-strict, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  mtls: {mode: STRICT}
  portLevelMtls:
    "8080": {mode: PERMISSIVE}
    9090: {mode: DISABLE}
    "9091": {}
"#,
    );
    let pa = peer_authentication(&doc).unwrap();
    assert_eq!(pa.mode, ModeSetting::Strict);
    assert_eq!(
        pa.port_level.into_iter().collect::<Vec<_>>(),
        [
            (8080, ModeSetting::Permissive),
            (9090, ModeSetting::Disable),
            (9091, ModeSetting::Unset)
        ]
    );
    let cases: &[(&str, &str, &str)] = &[
        (
            "mtls: {mode: STRICTEST}",
            "mtls.mode",
            "unknown mode \"STRICTEST\"",
        ),
        ("mtls: {mode: 1}", "mtls.mode", "must be a string"),
        ("mtls: STRICT", "mtls", "must be an object"),
        (
            "portLevelMtls: {http: {mode: STRICT}}",
            "portLevelMtls.http",
            "invalid port",
        ),
        (
            "portLevelMtls: {\"80\": {mode: NOPE}}",
            "portLevelMtls.80.mode",
            "unknown mode",
        ),
        (
            "selector: {matchLabels: 3}",
            "selector.matchLabels",
            "must be an object",
        ),
    ];
    for (spec, field, reason) in cases {
        let doc = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa, namespace: shop}}\nspec: {{{spec}}}\n"
        );
        let text = peer_authentication(&yaml(&doc)).unwrap_err().to_string();
        assert!(
            text.contains("PeerAuthentication shop/pa refused"),
            "{spec}: {text}"
        );
        assert!(text.contains(field), "{spec}: wants {field}: {text}");
        assert!(text.contains(reason), "{spec}: wants {reason}: {text}");
    }
}

#[test]
fn target_refs_bind_to_a_waypoint() {
    let doc = yaml(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: via-waypoint, namespace: shop}
spec:
  targetRefs:
  - {kind: Service, group: "", name: web}
  action: ALLOW
  rules:
  - to:
    - operation: {methods: [GET]}
"#,
    );
    let policy = authorization_policy(&doc).unwrap();
    assert!(policy.targets_waypoint);
    assert!(policy.warnings()[0].contains("shop/via-waypoint"));
    let both = authz_doc(
        "shop",
        "both",
        "  selector: {matchLabels: {app: web}}\n  targetRef: {kind: Gateway, name: gw}\n",
    );
    let err = authorization_policy(&yaml(&both)).unwrap_err().to_string();
    assert_eq!(
        err,
        "AuthorizationPolicy shop/both refused: selector and targetRefs cannot both be set"
    );
}
