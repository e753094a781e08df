//! The authorization decisions, each rule with a case it lets through and one it refuses.

use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};

use crate::authorize::{
    Caller, Grant, Plan, PodBinding, ServiceAccount, authenticate, caller_node, check_on_node,
    plan, requested_identity,
};
use crate::{CaError, CaSettings};
use marrow_mesh::identity::SpiffeId;

const NODE: &str = "node-a";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

fn settings() -> CaSettings {
    CaSettings::default()
}

/// A TokenReview status as the API server returns it for a token bound to a pod.
fn review(username: &str, audiences: Value, extra: Value) -> TokenReviewStatus {
    serde_json::from_value(json!({
        "authenticated": true,
        "audiences": audiences,
        "user": {"username": username, "uid": "u-1",
            "groups": ["system:serviceaccounts", "system:authenticated"], "extra": extra},
    }))
    .unwrap()
}

fn bound(pod: &str, uid: &str, node: Option<&str>) -> Value {
    let mut extra = json!({
        "authentication.kubernetes.io/pod-name": [pod],
        "authentication.kubernetes.io/pod-uid": [uid],
        "authentication.kubernetes.io/credential-id": ["JTI=1"],
    });
    if let Some(node) = node {
        extra["authentication.kubernetes.io/node-name"] = json!([node]);
    }
    extra
}

fn node_proxy_review() -> TokenReviewStatus {
    review(
        "system:serviceaccount:marrow-system:node-proxy",
        json!(["istio-ca"]),
        bound("node-proxy-x1", "uid-np", Some(NODE)),
    )
}

fn pod(
    namespace: &str,
    name: &str,
    uid: &str,
    node: Option<&str>,
    sa: Option<&str>,
    phase: &str,
) -> Pod {
    let mut spec = json!({"containers": [{"name": "app", "image": "app:1"}]});
    if let Some(node) = node {
        spec["nodeName"] = json!(node);
    }
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "uid": uid},
        "spec": spec, "status": {"phase": phase},
    }))
    .unwrap()
}

fn reason<T: std::fmt::Debug>(result: Result<T, CaError>) -> String {
    match result {
        Ok(value) => format!("ok {value:?}"),
        Err(e) => e.reason().to_owned(),
    }
}

#[test]
fn authenticate_table() {
    let s = settings();
    let refused: TokenReviewStatus =
        serde_json::from_value(json!({"user": {}, "error": "[invalid bearer token]"})).unwrap();
    let cases: Vec<(&str, TokenReviewStatus, &str)> = vec![
        ("bound node proxy token", node_proxy_review(), "ok"),
        ("not authenticated", refused, "token_rejected"),
        (
            "authenticated missing",
            TokenReviewStatus::default(),
            "token_rejected",
        ),
        (
            "other audience",
            review("system:serviceaccount:shop:cart", json!(["api"]), json!({})),
            "wrong_audience",
        ),
        (
            "no audiences",
            review("system:serviceaccount:shop:cart", Value::Null, json!({})),
            "wrong_audience",
        ),
        (
            "a user",
            review("kubernetes-admin", json!(["istio-ca"]), json!({})),
            "not_service_account",
        ),
        (
            "a node",
            review("system:node:node-a", json!(["istio-ca"]), json!({})),
            "not_service_account",
        ),
        (
            "no account name",
            review("system:serviceaccount:shop", json!(["istio-ca"]), json!({})),
            "not_service_account",
        ),
        (
            "invalid namespace",
            review(
                "system:serviceaccount:Shop!:cart",
                json!(["istio-ca"]),
                json!({}),
            ),
            "not_service_account",
        ),
    ];
    for (name, status, expected) in cases {
        let got = reason(authenticate(&status, &s));
        assert!(got.starts_with(expected), "{name}: {got}");
    }
    let caller = authenticate(&node_proxy_review(), &s).unwrap();
    assert_eq!(
        caller.account,
        ServiceAccount::parse("marrow-system/node-proxy").unwrap()
    );
    assert_eq!(
        caller.identity,
        id("spiffe://cluster.local/ns/marrow-system/sa/node-proxy")
    );
    assert_eq!(
        caller.pod,
        Some(PodBinding {
            name: "node-proxy-x1".into(),
            uid: "uid-np".into(),
            node: Some(NODE.into())
        })
    );
    // A token without pod binding, or with an ambiguous one, has no pod.
    for extra in [
        json!({}),
        json!({"authentication.kubernetes.io/pod-name": ["a", "b"],
        "authentication.kubernetes.io/pod-uid": ["u"]}),
    ] {
        let status = review(
            "system:serviceaccount:shop:cart",
            json!(["istio-ca"]),
            extra,
        );
        assert_eq!(authenticate(&status, &s).unwrap().pod, None);
    }
}

fn caller(account: &str, pod: Option<PodBinding>) -> Caller {
    let account = ServiceAccount::parse(account).unwrap();
    Caller {
        identity: SpiffeId::new(&Default::default(), &account.namespace, &account.name).unwrap(),
        account,
        pod,
    }
}

fn binding(node: Option<&str>) -> PodBinding {
    PodBinding {
        name: "node-proxy-x1".into(),
        uid: "uid-np".into(),
        node: node.map(str::to_owned),
    }
}

#[test]
fn requested_identity_table() {
    let s = settings();
    let cart = caller("shop/cart", None);
    let cases: Vec<(&str, Option<&str>, &str)> = vec![
        (
            "none: its own",
            None,
            "ok spiffe://cluster.local/ns/shop/sa/cart",
        ),
        (
            "empty: its own",
            Some(""),
            "ok spiffe://cluster.local/ns/shop/sa/cart",
        ),
        (
            "another",
            Some("spiffe://cluster.local/ns/db/sa/pg"),
            "ok spiffe://cluster.local/ns/db/sa/pg",
        ),
        ("not a SPIFFE ID", Some("cart"), "bad_identity"),
        (
            "not a workload path",
            Some("spiffe://cluster.local/admin"),
            "bad_identity",
        ),
        (
            "another trust domain",
            Some("spiffe://evil.example/ns/shop/sa/cart"),
            "wrong_trust_domain",
        ),
    ];
    for (name, impersonated, expected) in cases {
        let got = match requested_identity(&cart, impersonated, &s) {
            Ok(id) => format!("ok {id}"),
            Err(e) => e.reason().to_owned(),
        };
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn plan_table() {
    let s = settings();
    let np = "marrow-system/node-proxy";
    let cases: Vec<(&str, Caller, &str, &str)> = vec![
        (
            "a workload asking for itself",
            caller("shop/cart", None),
            CART,
            "ok Own",
        ),
        (
            "a node proxy asking for itself",
            caller(np, None),
            "spiffe://cluster.local/ns/marrow-system/sa/node-proxy",
            "ok Own",
        ),
        (
            "a workload impersonating",
            caller("shop/cart", Some(binding(None))),
            "spiffe://cluster.local/ns/db/sa/pg",
            "not_node_proxy",
        ),
        (
            "a node proxy of another namespace",
            caller("shop/node-proxy", Some(binding(None))),
            "spiffe://cluster.local/ns/db/sa/pg",
            "not_node_proxy",
        ),
        (
            "a node proxy without pod binding",
            caller(np, None),
            CART,
            "not_pod_bound",
        ),
        (
            "a bound node proxy",
            caller(np, Some(binding(None))),
            CART,
            "ok OnNode",
        ),
    ];
    for (name, caller, requested, expected) in cases {
        let got = reason(plan(&caller, &id(requested), &s));
        assert!(got.starts_with(expected), "{name}: {got}");
    }
    let e = plan(
        &caller("shop/cart", None),
        &id("spiffe://cluster.local/ns/db/sa/pg"),
        &s,
    )
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    let e = plan(&caller(np, None), &id(CART), &s).unwrap_err();
    assert_eq!(
        e.to_string(),
        "token is not bound to a pod, cannot tell the caller's node"
    );
}

#[test]
fn caller_node_table() {
    let np = caller("marrow-system/node-proxy", None);
    let own = |node: Option<&str>| {
        pod(
            "marrow-system",
            "node-proxy-x1",
            "uid-np",
            node,
            Some("node-proxy"),
            "Running",
        )
    };
    let cases: Vec<(&str, PodBinding, Option<Pod>, &str)> = vec![
        (
            "the pod, on its node",
            binding(Some(NODE)),
            Some(own(Some(NODE))),
            "ok \"node-a\"",
        ),
        (
            "older token without node claim",
            binding(None),
            Some(own(Some(NODE))),
            "ok \"node-a\"",
        ),
        (
            "the pod is gone",
            binding(Some(NODE)),
            None,
            "caller_pod_gone",
        ),
        (
            "replaced by a pod of the same name",
            binding(Some(NODE)),
            Some(pod(
                "marrow-system",
                "node-proxy-x1",
                "uid-new",
                Some(NODE),
                Some("node-proxy"),
                "Running",
            )),
            "caller_pod_gone",
        ),
        (
            "running as another account",
            binding(Some(NODE)),
            Some(pod(
                "marrow-system",
                "node-proxy-x1",
                "uid-np",
                Some(NODE),
                Some("other"),
                "Running",
            )),
            "caller_pod_gone",
        ),
        (
            "not scheduled",
            binding(None),
            Some(own(None)),
            "caller_pod_gone",
        ),
        (
            "the token names another node",
            binding(Some("node-b")),
            Some(own(Some(NODE))),
            "node_mismatch",
        ),
    ];
    for (name, binding, pod, expected) in cases {
        let got = reason(caller_node(&np, &binding, pod.as_ref()));
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn check_on_node_table() {
    let cart = id(CART);
    let run = |ns: &str, node: &str, sa: Option<&str>, phase: &str| {
        pod(ns, "p", "u", Some(node), sa, phase)
    };
    let mut deleting = serde_json::to_value(run("shop", NODE, Some("cart"), "Running")).unwrap();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-01T10:00:00Z");
    let deleting: Pod = serde_json::from_value(deleting).unwrap();
    assert!(deleting.metadata.deletion_timestamp.is_some());
    let cases: Vec<(&str, &str, Vec<Pod>, bool)> = vec![
        (
            "a running pod of it",
            CART,
            vec![run("shop", NODE, Some("cart"), "Running")],
            true,
        ),
        (
            "a pending pod of it",
            CART,
            vec![run("shop", NODE, Some("cart"), "Pending")],
            true,
        ),
        ("a pod being deleted still runs", CART, vec![deleting], true),
        (
            "among others",
            CART,
            vec![
                run("shop", NODE, Some("web"), "Running"),
                run("shop", NODE, Some("cart"), "Running"),
            ],
            true,
        ),
        ("no pods", CART, vec![], false),
        (
            "another account",
            CART,
            vec![run("shop", NODE, Some("web"), "Running")],
            false,
        ),
        (
            "on another node",
            CART,
            vec![run("shop", "node-b", Some("cart"), "Running")],
            false,
        ),
        (
            "in another namespace",
            CART,
            vec![run("db", NODE, Some("cart"), "Running")],
            false,
        ),
        (
            "succeeded",
            CART,
            vec![run("shop", NODE, Some("cart"), "Succeeded")],
            false,
        ),
        (
            "failed",
            CART,
            vec![run("shop", NODE, Some("cart"), "Failed")],
            false,
        ),
        (
            "no account: default",
            "spiffe://cluster.local/ns/shop/sa/default",
            vec![run("shop", NODE, None, "Running")],
            true,
        ),
        (
            "no account is not cart",
            CART,
            vec![run("shop", NODE, None, "Running")],
            false,
        ),
    ];
    for (name, requested, pods, allowed) in cases {
        let result = check_on_node(&id(requested), NODE, &pods);
        assert_eq!(result.is_ok(), allowed, "{name}: {result:?}");
    }
    let e = check_on_node(&cart, NODE, &[]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    assert!(
        e.to_string().contains(CART) && e.to_string().contains(NODE),
        "{e}"
    );
}

/// The decisions composed as `authorize::authorize` composes them, over fixed answers.
fn decide(
    status: &TokenReviewStatus,
    impersonated: Option<&str>,
    caller_pod: Option<&Pod>,
    pods_on_node: &[Pod],
) -> Result<Grant, CaError> {
    let s = settings();
    let caller = authenticate(status, &s)?;
    let requested = requested_identity(&caller, impersonated, &s)?;
    match plan(&caller, &requested, &s)? {
        Plan::Own => Ok(Grant {
            caller: caller.account,
            identity: requested,
            node: None,
        }),
        Plan::OnNode(binding) => {
            let node = caller_node(&caller, &binding, caller_pod)?;
            check_on_node(&requested, &node, pods_on_node)?;
            Ok(Grant {
                caller: caller.account,
                identity: requested,
                node: Some(node),
            })
        }
    }
}

#[test]
fn decision_table() {
    let np_pod = pod(
        "marrow-system",
        "node-proxy-x1",
        "uid-np",
        Some(NODE),
        Some("node-proxy"),
        "Running",
    );
    let cart_here = pod(
        "shop",
        "cart-1",
        "uid-c",
        Some(NODE),
        Some("cart"),
        "Running",
    );
    let workload = review(
        "system:serviceaccount:shop:cart",
        json!(["istio-ca"]),
        bound("cart-1", "uid-c", Some(NODE)),
    );
    /// (name, review, impersonated, the caller's pod, pods on its node, expected)
    type Case<'a> = (
        &'a str,
        TokenReviewStatus,
        Option<&'a str>,
        Option<Pod>,
        Vec<Pod>,
        &'a str,
    );
    let cases: Vec<Case<'_>> = vec![
        (
            "node proxy, pod on its node",
            node_proxy_review(),
            Some(CART),
            Some(np_pod.clone()),
            vec![cart_here.clone()],
            "ok",
        ),
        (
            "node proxy, no such pod on its node",
            node_proxy_review(),
            Some(CART),
            Some(np_pod.clone()),
            vec![],
            "not_on_node",
        ),
        (
            "node proxy whose pod is gone",
            node_proxy_review(),
            Some(CART),
            None,
            vec![cart_here.clone()],
            "caller_pod_gone",
        ),
        (
            "workload asking for itself",
            workload.clone(),
            None,
            None,
            vec![],
            "ok",
        ),
        (
            "workload asking for itself by name",
            workload.clone(),
            Some(CART),
            None,
            vec![],
            "ok",
        ),
        (
            "workload impersonating",
            workload,
            Some("spiffe://cluster.local/ns/db/sa/pg"),
            None,
            vec![],
            "not_node_proxy",
        ),
    ];
    for (name, status, impersonated, caller_pod, pods, expected) in cases {
        let got = reason(decide(&status, impersonated, caller_pod.as_ref(), &pods));
        assert!(got.starts_with(expected), "{name}: {got}");
    }
    let grant = decide(
        &node_proxy_review(),
        Some(CART),
        Some(&np_pod),
        &[cart_here],
    )
    .unwrap();
    assert_eq!(grant.node.as_deref(), Some(NODE));
    assert_eq!(grant.identity, id(CART));
}

#[test]
fn service_account_refs_parse() {
    assert_eq!(ServiceAccount::parse("a/b").unwrap().to_string(), "a/b");
    for bad in ["", "a", "a/", "/b", "a/b/c"] {
        assert_eq!(ServiceAccount::parse(bad), None, "{bad:?}");
    }
}
