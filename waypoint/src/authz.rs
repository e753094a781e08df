//! L7 authorization's seam: one [`decide`] that returns the [`Decision`] for a request, and
//! [`denied`] that turns a denial into Istio's response — HTTP 403 with body
//! `RBAC: access denied` (Envoy's RBAC filter), or for gRPC a trailers-only 200 with
//! `grpc-status: 7` (PERMISSION_DENIED).

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};

use crate::body::{Body, full};
use crate::client::OriginalClient;

/// What the policy engine sees of a request.
#[derive(Debug)]
pub struct AuthzRequest<'a> {
    /// The original client (identity, address).
    pub client: &'a OriginalClient,
    /// The destination the client dialled (VIP:port or pod ip:port).
    pub destination: SocketAddr,
    /// The request method.
    pub method: &'a http::Method,
    /// The normalized path.
    pub path: &'a str,
    /// `:authority` / `Host`.
    pub host: &'a str,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
}

/// The policy decision for one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Forward it.
    Allow,
    /// Refuse it; `reason` names the policy and rule, for the log.
    Deny {
        /// Which policy and rule denied it.
        reason: String,
    },
}

/// The decision for `request`.
// TODO(lead): evaluate the L7 AuthorizationPolicies (targetRefs to this Gateway or the
// Service, namespace and root scopes) here; everything is allowed until then.
pub fn decide(_request: &AuthzRequest<'_>) -> Decision {
    Decision::Allow
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
