//! L7 AuthorizationPolicy at the waypoint: policies bound with `targetRefs` to the waypoint's
//! Gateway or to the destination Service, matched on the original client and the request, with
//! the path normalized before matching and forwarding.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::harness::{TestMesh, body_of, request, solo_vip, vip};

/// DENY `DELETE /api*` and `/admin`, `/admin/*` at the waypoint `shop/waypoint`; ALLOW only
/// `shop/other` to the Service `solo`; a policy bound to another waypoint, which must not apply.
const POLICIES: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-deletes, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE], paths: ["/api*"]}}]
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: solo-only-other, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: solo}]
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/other"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: elsewhere, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: another-waypoint}]
  action: DENY
  rules:
  - to: [{operation: {methods: [GET]}}]
"#;

#[tokio::test]
async fn requests_are_allowed_and_denied_by_method_path_and_source() {
    let mesh = TestMesh::start_with_state(30, &[1], POLICIES).await;
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(30), 80)).await;

    // Allowed: GET /api (the other waypoint's DENY on GET does not bind here).
    let response = http
        .send_request(request(Method::GET, "/api"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();

    // Denied: DELETE /api, with Envoy's RBAC answer; the app never sees it.
    let before = mesh.connects().len();
    let response = http
        .send_request(request(Method::DELETE, "/api/items/7"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"RBAC: access denied");
    // POST /api is not DELETE: allowed.
    let response = http
        .send_request(request(Method::POST, "/api"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();
    assert_eq!(mesh.connects().len(), before, "one upstream tunnel, reused");

    // Path tricks against the DENY on /admin: each is normalized first, so each is denied.
    for path in [
        "/admin",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/x/../admin",
        "/admin/",
        "/admin//users",
    ] {
        let response = http.send_request(request(Method::GET, path)).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{path}");
        response.into_body().collect().await.unwrap();
    }
    // ...and what is allowed is forwarded normalized.
    let response = http
        .send_request(request(Method::GET, "/x/./y/..//%7Eapi?q=%2e"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-echo-path"], "/x/~api?q=%2e");
    response.into_body().collect().await.unwrap();
    // A path that cannot be normalized is refused before policy.
    let response = http
        .send_request(request(Method::GET, "/a%zz"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // The Service `solo` allows only shop/other: this client (shop/client) is denied there.
    let (_client, mut solo) = mesh.http1(SocketAddr::new(solo_vip(30), 80)).await;
    let response = solo.send_request(request(Method::GET, "/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_denied_grpc_call_gets_permission_denied() {
    let mesh = TestMesh::start_with_state(31, &[1], POLICIES).await;
    let (_client, mut grpc) = mesh.http2(SocketAddr::new(vip(31), 9090)).await;
    let call = Request::post("http://web.shop:9090/admin/Method")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 1, 42])))
        .unwrap();
    let response = grpc.send_request(call).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "gRPC: trailers-only");
    assert_eq!(response.headers()["grpc-status"], "7");
    assert_eq!(response.headers()["grpc-message"], "RBAC: access denied");
    // An allowed call on the same connection goes through.
    let call = Request::post("http://web.shop:9090/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 1, 42])))
        .unwrap();
    let response = grpc.send_request(call).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get("grpc-status").is_none());
}

#[tokio::test]
async fn the_admin_explains_a_request_at_this_waypoint() {
    // web-2 backs only `web` (pod 1 also backs `solo`, whose ALLOW would decide instead).
    let mesh = TestMesh::start_with_state(32, &[1, 2], POLICIES).await;
    let port = crate::harness::HTTP_PORT;
    let ask = |query: String| async move {
        let body = body_of(mesh.waypoint.admin_addr, &format!("/explain?{query}")).await;
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let from = "from=shop%2Fclient&to=shop%2Fweb-2";
    let denied = ask(format!("{from}&port={port}&method=DELETE&path=%2Fapi%2F1")).await;
    assert_eq!(denied["decision"], "deny", "{denied}");
    assert_eq!(denied["policy"], "shop/no-deletes", "{denied}");
    assert_eq!(denied["rule"], 0, "{denied}");
    let bypass = ask(format!("{from}&port={port}&path=%2F%2Fadmin")).await;
    assert_eq!(bypass["decision"], "deny", "{bypass}");
    assert_eq!(bypass["rule"], 1, "{bypass}");
    let allowed = ask(format!("{from}&port={port}&method=GET&path=%2Fapi")).await;
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    let bad = ask(format!("{from}&method=GET")).await;
    assert!(bad["error"].as_str().unwrap().contains("port="), "{bad}");
}

#[tokio::test]
async fn the_admin_answers_which_route_applies() {
    let mesh = TestMesh::start_with_state(61, &[1, 2], POLICIES).await;
    let body = body_of(
        mesh.waypoint.admin_addr,
        "/routes?to=web.shop%3A80&path=%2Fapi",
    )
    .await;
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    // No route object for web: the Service itself, at this waypoint.
    assert_eq!(answer["action"], "default", "{answer}");
    assert_eq!(answer["backends"][0]["service"], "shop/web", "{answer}");
    assert!(
        answer["layer"].as_str().unwrap().starts_with("waypoint "),
        "{answer}"
    );
    let bad = body_of(mesh.waypoint.admin_addr, "/routes?path=%2F").await;
    assert!(bad.contains("to=HOST:PORT"), "{bad}");
}
