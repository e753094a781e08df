//! `node-proxy routes` as a person or a script runs it: a state file with Istio's and the
//! Gateway API's route objects in, the rule that applies out.
#![expect(
    clippy::expect_used,
    reason = "test helper: a failed set-up step must fail the test loudly"
)]

use std::process::Command;

const STATE: &str = concat!(
    include_str!("../../mesh/testdata/two-pods.yaml"),
    r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: db-next, namespace: shop}
spec:
  clusterIP: 10.96.0.22
  ports: [{name: tcp, port: 5432}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - match: [{headers: {x-canary: {exact: "true"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 95}
    - {destination: {host: reviews, subset: v2}, weight: 5}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,connect-failure"}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: "(unclosed"}}]
    route: [{destination: {host: reviews}}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db-canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: db, port: 5432}]
  rules:
  - backendRefs:
    - {name: db, port: 5432, weight: 9}
    - {name: db-next, port: 5432, weight: 1}
"#
);

fn routes(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("cluster.yaml");
    std::fs::write(&path, STATE).expect("write state");
    Command::new(env!("CARGO_BIN_EXE_node-proxy"))
        .arg("routes")
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .expect("run node-proxy routes")
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[test]
fn the_weighted_rule_with_its_timeout_and_retries() {
    let v = json(&routes(&[
        "--from",
        "shop/client",
        "--to",
        "reviews.shop.svc.cluster.local:80",
        "--path",
        "/reviews/1",
        "--json",
    ]));
    assert_eq!(v["route"]["kind"], "VirtualService", "{v}");
    assert_eq!(v["route"]["name"], "shop/reviews", "{v}");
    assert_eq!(v["route"]["rule"], 1, "{v}");
    let backends: Vec<(String, String, u64)> = v["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| {
            (
                b["service"].as_str().unwrap_or_default().to_owned(),
                b["subset"].as_str().unwrap_or_default().to_owned(),
                b["weight"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        backends,
        [
            ("shop/reviews".to_owned(), "v1".to_owned(), 95),
            ("shop/reviews".to_owned(), "v2".to_owned(), 5)
        ]
    );
    assert_eq!(v["timeout_ms"], 2000, "{v}");
    assert_eq!(v["retries"]["attempts"], 3, "{v}");
    assert_eq!(v["retries"]["per_try_timeout_ms"], 500, "{v}");
    assert_eq!(v["retries"]["retry_on"], "5xx,connect-failure", "{v}");
    assert_eq!(v["fault"], serde_json::Value::Null, "{v}");
    let notes = v["notes"].to_string();
    assert!(
        notes.contains("VirtualService shop/broken") && notes.contains("regex"),
        "the refused object is named with its field: {notes}"
    );
}

#[test]
fn a_header_pins_the_canary_and_text_output_names_the_rule() {
    let out = routes(&[
        "--from",
        "shop/client",
        "--to",
        "reviews:80",
        "--header",
        "x-canary=true",
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("route:    VirtualService shop/reviews rule 0"),
        "{text}"
    );
    assert!(
        text.contains("backend:  shop/reviews subset v2 port 80 weight 100"),
        "{text}"
    );
    assert!(text.contains("layer:    waypoint shop/wp"), "{text}");
}

#[test]
fn a_tcp_route_is_the_node_proxys() {
    let v = json(&routes(&["--to", "10.96.0.21:5432", "--json"]));
    assert_eq!(v["layer"], "node proxy", "{v}");
    assert_eq!(v["route"]["kind"], "TCPRoute", "{v}");
    assert_eq!(v["backends"][1]["service"], "shop/db-next", "{v}");
    assert_eq!(v["backends"][1]["weight"], 1, "{v}");
}

#[test]
fn a_bad_destination_is_refused_with_the_reason() {
    let out = routes(&["--to", "reviews.shop"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HOST:PORT"), "{stderr}");
}
