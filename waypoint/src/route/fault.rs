//! Injected faults (VirtualService `fault`), as Envoy's fault filter
//! (envoy `source/extensions/filters/http/fault/fault_filter.cc`): each drawn per request at
//! its percentage, the delay first, then the abort — a delayed request may still be aborted.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode};
use marrow_mesh::traffic::{AbortStatus, Percent};

use crate::body::{Body, full};

/// The body of an injected abort, as Envoy's.
pub const ABORT_BODY: &str = "fault filter abort";

/// Whether a request falls in `percent` (a fresh draw each call).
pub fn hit(percent: Percent) -> bool {
    hit_with(percent, fastrand::f64())
}

/// Whether a draw in `[0, 1)` falls in `percent`.
pub fn hit_with(percent: Percent, draw: f64) -> bool {
    draw * 100.0 < percent.0
}

/// The answer of an injected abort: the HTTP status with Envoy's body, or for a gRPC status
/// an HTTP 200 trailers-only answer carrying it (Envoy's `grpc_status` abort).
pub fn abort_response(status: AbortStatus) -> (Response<Body>, u16, Option<u32>) {
    let mut response = Response::new(full(Bytes::from_static(ABORT_BODY.as_bytes())));
    match status {
        AbortStatus::Http(code) => {
            *response.status_mut() =
                StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
            let code = response.status().as_u16();
            (response, code, None)
        }
        AbortStatus::Grpc(code) => {
            *response.body_mut() = full(Bytes::new());
            let headers = response.headers_mut();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert("grpc-status", HeaderValue::from(code));
            headers.insert("grpc-message", HeaderValue::from_static(ABORT_BODY));
            (response, 200, Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_draw() {
        assert!(hit_with(Percent(50.0), 0.49));
        assert!(!hit_with(Percent(50.0), 0.5));
        assert!(!hit_with(Percent(0.0), 0.0), "0 % never");
        assert!(hit_with(Percent(100.0), 0.999_999), "100 % always");
        assert!(hit_with(Percent(0.5), 0.004));
    }

    #[test]
    fn aborts_answer_as_envoy() {
        let (response, status, grpc) = abort_response(AbortStatus::Http(503));
        assert_eq!((response.status().as_u16(), status, grpc), (503, 503, None));
        let (response, status, grpc) = abort_response(AbortStatus::Grpc(14));
        assert_eq!((status, grpc), (200, Some(14)));
        assert_eq!(response.headers()["grpc-status"], "14");
    }
}
