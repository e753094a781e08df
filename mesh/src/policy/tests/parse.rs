//! Parsing real YAML; the one refusal (no name); PeerAuthentication's fail-safe readings.
//! Malformed AuthorizationPolicy fields are in `findings.rs`.

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
"#,
    );
    let policy = authorization_policy(&doc).unwrap();
    assert_eq!(policy.reference().to_string(), "shop/web-ingress");
    assert_eq!(policy.action, Action::Allow);
    assert_eq!(policy.selector, Some(labels(&[("app", "web")])));
    assert_eq!(policy.rules.len(), 1);
    let rule = &policy.rules[0];
    assert_eq!((rule.from.len(), rule.to.len(), rule.when.len()), (2, 1, 1));
    assert!(rule.unchecked.is_empty());
    assert!(policy.all_findings().is_empty());
    assert!(!policy.dry_run);
    assert!(policy.is_enforced());
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
        texts(&rule.unchecked),
        [
            "from.source.requestPrincipals (L7-only)",
            "to.operation.methods (L7-only)",
            "to.operation.paths (L7-only)",
            "to.operation.hosts (L7-only)",
            "when.request.headers[x-user] (L7-only)",
            "when.request.auth.claims[iss] (L7-only)",
            "when.remote.ip (L7-only)",
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
fn peer_authentication_parses() {
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
    assert!(pa.findings.is_empty());
}

/// A PeerAuthentication spec, the words of its finding, and what it reads as: mode, selector,
/// the ports of its port-level entries.
type PaCase<'a> = (
    &'a str,
    &'a str,
    ModeSetting,
    &'a Option<BTreeMap<String, String>>,
    &'a [u16],
);

/// A malformed PeerAuthentication is read as STRICT where it could apply: (spec, finding
/// words, the mode it gets, whether it keeps its selector, its port-level entries).
#[test]
fn malformed_peer_authentication_reads_as_strict() {
    let web = Some(labels(&[("app", "web")]));
    let everyone = Some(BTreeMap::new());
    let cases: &[PaCase<'_>] = &[
        (
            "selector: {matchLabels: {app: web}}, mtls: {mode: STRICTEST}",
            "mtls.mode: unknown mode \"STRICTEST\"",
            ModeSetting::Strict,
            &web,
            &[],
        ),
        (
            "selector: {matchLabels: {app: web}}, mtls: {mode: 1}",
            "mtls.mode must be a string",
            ModeSetting::Strict,
            &web,
            &[],
        ),
        (
            "mtls: STRICT",
            "mtls must be an object",
            ModeSetting::Strict,
            &None,
            &[],
        ),
        (
            // The lost entry was STRICT: the whole workload becomes STRICT.
            "selector: {matchLabels: {app: web}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {http: {mode: STRICT}, \"80\": {mode: PERMISSIVE}}",
            "portLevelMtls.http: invalid port \"http\"",
            ModeSetting::Strict,
            &web,
            &[80],
        ),
        (
            // The lost entry was PERMISSIVE: dropping it only tightens.
            "selector: {matchLabels: {app: web}}, mtls: {mode: UNSET}, portLevelMtls: {http: {mode: PERMISSIVE}}",
            "portLevelMtls.http: invalid port",
            ModeSetting::Unset,
            &web,
            &[],
        ),
        (
            "selector: {matchLabels: {app: web}}, portLevelMtls: {\"80\": {mode: NOPE}}",
            "portLevelMtls.80.mode: unknown mode",
            ModeSetting::Unset,
            &web,
            &[80],
        ),
        (
            "selector: {matchLabels: {app: web}}, portLevelMtls: [80]",
            "portLevelMtls must be an object",
            ModeSetting::Strict,
            &web,
            &[],
        ),
        (
            // Whom it selects is unknown: every workload of the namespace, STRICT.
            "selector: {matchLabels: 3}, mtls: {mode: PERMISSIVE}, portLevelMtls: {\"80\": {mode: DISABLE}}",
            "selector.matchLabels must be an object",
            ModeSetting::Strict,
            &everyone,
            &[],
        ),
    ];
    for (spec, finding, mode, selector, ports) in cases {
        let doc = format!(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: pa, namespace: shop}}\nspec: {{{spec}}}\n"
        );
        let pa = peer_authentication(&yaml(&doc)).unwrap();
        let found = texts(&pa.findings).join("; ");
        assert!(found.contains(finding), "{spec}: wants {finding}: {found}");
        assert_eq!(pa.mode, *mode, "{spec}");
        assert_eq!(&pa.selector, *selector, "{spec}");
        assert_eq!(
            pa.port_level.keys().copied().collect::<Vec<_>>(),
            *ports,
            "{spec}"
        );
    }
    let spec_not_object = yaml(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: shop}\nspec: STRICT\n",
    );
    let pa = peer_authentication(&spec_not_object).unwrap();
    assert_eq!((pa.mode, pa.selector), (ModeSetting::Strict, None));
    // A field marrow does not know is reported and changes nothing.
    let newer = yaml(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: pa, namespace: shop}\nspec: {mtls: {mode: PERMISSIVE, quantum: true}}\n",
    );
    let pa = peer_authentication(&newer).unwrap();
    assert_eq!(pa.mode, ModeSetting::Permissive);
    assert_eq!(
        texts(&pa.findings),
        ["mtls.quantum (a field marrow does not know)"]
    );
}

#[test]
fn request_authentication_keeps_whom_it_selects() {
    let doc = yaml(
        r#"
apiVersion: security.istio.io/v1beta1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks
"#,
    );
    let ra = request_authentication(&doc).unwrap();
    assert_eq!(ra.reference().to_string(), "shop/jwt");
    assert_eq!(ra.selector, Some(labels(&[("app", "web")])));
    assert!(ra.findings.is_empty());
    let bad = yaml(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {name: jwt, namespace: shop}\nspec: {selector: [x]}\n",
    );
    let ra = request_authentication(&bad).unwrap();
    assert_eq!(ra.selector, None);
    assert_eq!(texts(&ra.findings), ["selector must be an object"]);
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
    // Both: as istiod's ambient conversion, targetRefs wins (the node proxy leaves it to the
    // waypoint), and the conflict is reported.
    let both = authz_doc(
        "shop",
        "both",
        "  selector: {matchLabels: {app: web}}\n  targetRef: {kind: Gateway, name: gw}\n",
    );
    let policy = authorization_policy(&yaml(&both)).unwrap();
    assert!(policy.targets_waypoint);
    assert_eq!(
        texts(&policy.findings),
        ["selector and targetRefs cannot both be set"]
    );
}
