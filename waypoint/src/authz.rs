//! L7 authorization at the waypoint: [`decide`] asks the policy engine
//! ([`marrow_mesh::policy::evaluate_request`], the function `explain` calls too) about a
//! request, with the policies bound to this waypoint's Gateway or to the destination Service;
//! [`denied`] turns a denial into Istio's response — HTTP 403 with body `RBAC: access denied`
//! (Envoy's RBAC filter), or for gRPC a trailers-only 200 with `grpc-status: 7`
//! (PERMISSION_DENIED).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use marrow_mesh::path::NormalizedPath;
use marrow_mesh::policy::{
    ConnectionAttrs, Decision, PolicySet, RequestAttrs, WaypointScope, evaluate_request,
    request_host,
};

use crate::body::{Body, full};
use crate::client::OriginalClient;
use crate::context::Gateway;
use crate::target::Destination;

/// What the policy engine sees of a request.
#[derive(Debug)]
pub struct AuthzRequest<'a> {
    /// The original client (identity, address).
    pub client: &'a OriginalClient,
    /// What the client dialled: a Service port or a workload.
    pub destination: &'a Destination,
    /// The request method.
    pub method: &'a http::Method,
    /// The normalized path (and query).
    pub path: &'a NormalizedPath,
    /// `:authority` / `Host`.
    pub host: &'a str,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
}

/// The decision for `request` under `policies`, at the waypoint of `gateway`: as Istio's
/// waypoint, the client is the ORIGINAL one (the identity in the tunnel, the address in
/// `forwarded`), the destination what it dialled (the CONNECT target).
pub fn decide(policies: &PolicySet, gateway: &Gateway, request: &AuthzRequest<'_>) -> Decision {
    let destination: SocketAddr = request.destination.authority();
    let conn = ConnectionAttrs {
        source_principal: Some(request.client.identity.clone()),
        source_ip: request.client.addr.ip(),
        destination_ip: destination.ip(),
        destination_port: destination.port(),
    };
    let host = request_host(request.host);
    let scope = WaypointScope {
        gateway_namespace: &gateway.namespace,
        gateway_name: &gateway.name,
        service: request.destination.service_ref(),
    };
    let attrs = RequestAttrs {
        conn: &conn,
        host: &host,
        method: request.method,
        path: request.path,
        headers: request.headers,
        sni: None,
    };
    evaluate_request(policies, &scope, &attrs)
}

/// Whether a request is gRPC (`content-type: application/grpc*`).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The response to a denied request: gRPC gets a trailers-only `grpc-status: 7`, anything else
/// a 403 `RBAC: access denied`, as Envoy's RBAC filter answers.
pub fn denied(grpc: bool) -> Response<Body> {
    if grpc {
        let mut r = Response::new(full(Bytes::new()));
        let headers = r.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from_static("7"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("RBAC: access denied"),
        );
        r
    } else {
        let mut r = Response::new(full(Bytes::from_static(b"RBAC: access denied")));
        *r.status_mut() = StatusCode::FORBIDDEN;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn denials_answer_as_envoys_rbac_filter() {
        let http = denied(false);
        assert_eq!(http.status(), StatusCode::FORBIDDEN);
        let body = http.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"RBAC: access denied");

        let grpc = denied(true);
        assert_eq!(grpc.status(), StatusCode::OK, "gRPC: trailers-only 200");
        assert_eq!(grpc.headers()["grpc-status"], "7");
    }

    #[test]
    fn grpc_is_told_by_its_content_type() {
        let mut headers = http::HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        assert!(is_grpc(&headers));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert!(!is_grpc(&headers));
    }
}
