//! The state file delivers the five kinds into `Snapshot::traffic()`; a bad route costs only
//! itself. (The API server source: `node-proxy/tests/apiserver/traffic.rs`.)

use std::path::Path;

use super::{Req, reviews, select};
use crate::state::StateStore;
use crate::state::file::parse;
use crate::traffic::ServiceName;

const STATE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec: {clusterIP: 10.96.0.11, ports: [{name: http, port: 9080}, {name: tcp, port: 9000}]}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-canary: {exact: "true"}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 95}
    - {destination: {host: reviews, subset: v2}, weight: 5}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ratings, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: ratings, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: ratings-tcp, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings, port: 9000}]
  rules: [{backendRefs: [{name: ratings, port: 9000, weight: 1}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: broken, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: ratings}]
  rules: [{matches: [{method: {type: RegularExpression, service: "("}}]}]
"#;

#[test]
fn the_state_file_delivers_routes_and_destination_rules() {
    let store = StateStore::new();
    let snapshot = store.apply(parse(Path::new("state.yaml"), STATE.as_bytes()).expect("parses"));
    let traffic = snapshot.traffic();
    assert_eq!(
        select(
            traffic,
            &reviews(),
            &Req::get("/").header("x-canary", "true")
        ),
        "VirtualService shop/reviews rule 0"
    );
    assert_eq!(
        select(traffic, &reviews(), &Req::get("/")),
        "VirtualService shop/reviews rule 1"
    );
    let ratings = ServiceName::new("shop", "ratings");
    assert_eq!(
        select(traffic, &ratings, &Req::get("/v2/x")),
        "HTTPRoute shop/ratings rule 0"
    );
    assert_eq!(select(traffic, &ratings, &Req::get("/v1")), "no match");
    assert!(traffic.tcp_rule(&ratings, 9000).is_some());
    assert_eq!(
        traffic
            .destination_policy(&reviews())
            .map(|d| d.subsets.len()),
        Some(2)
    );
    let refused: Vec<String> = traffic.refusals().iter().map(ToString::to_string).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]
            .starts_with("GRPCRoute shop/broken refused: spec.rules[0].matches[0].method.service:"),
        "{refused:?}"
    );
    assert_eq!(
        snapshot
            .raw_objects()
            .filter(|o| o.object.kind != "Service")
            .count(),
        5,
        "every route object is kept whole too"
    );
}
