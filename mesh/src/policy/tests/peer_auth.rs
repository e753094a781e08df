//! PeerAuthentication precedence and port-level overrides.

use super::*;

fn pa(ns: &str, name: &str, spec: &str) -> PeerAuthentication {
    let doc = format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n"
    );
    peer_authentication(&yaml(&doc)).unwrap()
}

/// `(namespace, name, spec)` policies in a table.
type Docs<'a> = &'a [(&'a str, &'a str, &'a str)];

/// The expected mode and the policy that sets it.
type Want<'a> = (MtlsMode, Option<&'a str>);

fn set(policies: &[(&str, &str, &str)]) -> PolicySet {
    let mut set = PolicySet::default();
    for (ns, name, spec) in policies {
        set.insert_peer_authentication(pa(ns, name, spec));
    }
    set
}

fn mode(set: &PolicySet, ns: &str, app: &str, port: u16) -> (MtlsMode, Option<String>) {
    let labels = labels(&[("app", app)]);
    let dst = Destination {
        namespace: ns,
        name: app,
        labels: &labels,
    };
    let (mode, by) = resolve_mtls(set, &dst, port);
    assert_eq!(mtls_mode(set, &dst, port), mode);
    assert_eq!(
        plaintext_allowed(set, &dst, port).is_ok(),
        mode == MtlsMode::Permissive
    );
    (mode, by.map(|p| p.to_string()))
}

#[test]
fn precedence() {
    use MtlsMode::{Permissive, Strict};
    let mesh_strict = ("istio-system", "mesh", "{mtls: {mode: STRICT}}");
    let ns_permissive = ("shop", "ns", "{mtls: {mode: PERMISSIVE}}");
    let ns_unset = ("shop", "ns", "{mtls: {mode: UNSET}}");
    let web_strict = (
        "shop",
        "web",
        "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}",
    );
    let web_disable = (
        "shop",
        "web",
        "{selector: {matchLabels: {app: web}}, mtls: {mode: DISABLE}}",
    );
    let root_selector = (
        "istio-system",
        "web",
        "{selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}",
    );
    let cases: &[(&str, Docs<'_>, &str, Want<'_>)] = &[
        ("nothing set: permissive", &[], "web", (Permissive, None)),
        (
            "mesh-wide strict",
            &[mesh_strict],
            "web",
            (Strict, Some("istio-system/mesh")),
        ),
        (
            "namespace over mesh",
            &[mesh_strict, ns_permissive],
            "web",
            (Permissive, Some("shop/ns")),
        ),
        (
            "namespace unset inherits mesh",
            &[mesh_strict, ns_unset],
            "web",
            (Strict, Some("istio-system/mesh")),
        ),
        (
            "workload over namespace",
            &[ns_permissive, web_strict],
            "web",
            (Strict, Some("shop/web")),
        ),
        (
            "selector not matching",
            &[ns_permissive, web_strict],
            "db",
            (Permissive, Some("shop/ns")),
        ),
        (
            "disable is permissive",
            &[mesh_strict, web_disable],
            "web",
            (Permissive, Some("shop/web")),
        ),
        (
            "root-namespace selector ignored",
            &[root_selector],
            "web",
            (Permissive, None),
        ),
    ];
    for (name, policies, app, (want, by)) in cases {
        let got = mode(&set(policies), "shop", app, 8080);
        assert_eq!((got.0, got.1.as_deref()), (*want, *by), "{name}");
    }
    // Another namespace's policy does not apply.
    assert_eq!(
        mode(&set(&[web_strict]), "billing", "web", 8080),
        (Permissive, None)
    );
}

#[test]
fn port_level_overrides() {
    use MtlsMode::{Permissive, Strict};
    let s = set(&[
        ("shop", "ns", "{mtls: {mode: STRICT}}"),
        (
            "shop",
            "web",
            r#"{selector: {matchLabels: {app: web}}, portLevelMtls: {"8080": {mode: PERMISSIVE}, "9090": {mode: UNSET}}}"#,
        ),
        (
            "shop",
            "db",
            r#"{selector: {matchLabels: {app: db}}, mtls: {mode: PERMISSIVE}, portLevelMtls: {"5432": {mode: STRICT}}}"#,
        ),
    ]);
    let cases = [
        ("web", 8080, Permissive, "shop/web"),
        ("web", 9090, Strict, "shop/ns"),
        ("web", 80, Strict, "shop/ns"),
        ("db", 5432, Strict, "shop/db"),
        ("db", 80, Permissive, "shop/db"),
    ];
    for (app, port, want, by) in cases {
        assert_eq!(
            mode(&s, "shop", app, port),
            (want, Some(by.to_owned())),
            "{app}:{port}"
        );
    }
    let labels = labels(&[("app", "db")]);
    let dst = Destination {
        namespace: "shop",
        name: "db",
        labels: &labels,
    };
    let err = plaintext_allowed(&s, &dst, 5432).unwrap_err();
    assert_eq!(
        err.to_string(),
        "plaintext refused: shop/db port 5432 is STRICT (set by PeerAuthentication shop/db)"
    );
    // Port-level settings in a namespace-wide policy are ignored, with a warning.
    let s = set(&[(
        "shop",
        "ns",
        r#"{mtls: {mode: PERMISSIVE}, portLevelMtls: {"80": {mode: STRICT}}}"#,
    )]);
    assert_eq!(
        mode(&s, "shop", "web", 80),
        (Permissive, Some("shop/ns".to_owned()))
    );
    assert_eq!(s.warnings().len(), 1, "{:?}", s.warnings());
}

#[test]
fn from_snapshot_objects() {
    use crate::objects::{ObjectRef, RawKind, RawObject};
    let object = |kind, kind_name: &str, body: serde_json::Value| RawObject {
        kind,
        object: ObjectRef {
            kind: kind_name.to_owned(),
            namespace: Some("shop".to_owned()),
            name: "x".to_owned(),
        },
        body,
    };
    let objects = [
        object(
            RawKind::AuthorizationPolicy,
            "AuthorizationPolicy",
            yaml(&authz_doc("shop", "x", "  action: DENY\n  rules: [{}]\n")),
        ),
        object(
            RawKind::PeerAuthentication,
            "PeerAuthentication",
            yaml(
                "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
            ),
        ),
        object(RawKind::Service, "Service", serde_json::json!({})),
    ];
    let s = PolicySet::from_objects("istio-system", &objects);
    assert_eq!(
        (
            s.authorization_policies().len(),
            s.peer_authentications().len()
        ),
        (1, 1)
    );
    // Valid Istio that marrow does not enforce as written is kept and reported, never a
    // reason to refuse the set.
    let audit = [object(
        RawKind::AuthorizationPolicy,
        "AuthorizationPolicy",
        yaml(&authz_doc("shop", "x", "  action: AUDIT\n")),
    )];
    let s = PolicySet::from_objects("istio-system", &audit);
    assert_eq!(s.authorization_policies().len(), 1);
    assert_eq!(s.unsupported()[0].reason, UnsupportedReason::AuditAction);
}
