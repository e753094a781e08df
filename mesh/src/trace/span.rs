//! One request's span: what the proxy knows when the request starts ([`RequestAttrs`]) and
//! ends ([`SpanEnd`]), turned into an OTLP span with Envoy's attribute names for a proxy's
//! downstream span (`source/common/tracing/http_tracer_impl.cc`, `finalizeDownstreamSpan` and
//! `setCommonTags`; `source/common/tracing/tracer_impl.cc`, `startSpan` for `node_id` and
//! `zone`): `guid:x-request-id`, `http.url`, `http.method`, `downstream_cluster`, `user_agent`,
//! `http.protocol`, `peer.address`, `request_size`, `response_size`, `component: proxy`,
//! `upstream_cluster`, `http.status_code`, `response_flags`, `error: true` on a 5xx or no
//! response, plus `grpc.status_code` on gRPC and the tags Istio adds to every span
//! (`istio.canonical_service`, `istio.namespace`, … — [`super::TracerConfig::tags`]).
//!
//! Kind SERVER: the span Envoy's OpenTelemetry tracer reports for a request a proxy received
//! when upstream spans are spawned (Istio's gateways and waypoints); the upstream CLIENT
//! spans Envoy can add are not produced.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use super::otlp::common::{AnyValue, KeyValue, any_value};
use super::otlp::trace::{Span, Status, span, status};
use crate::telemetry::ResponseFlag;

/// Envoy's default `max_path_tag_length`: longer paths are cut in `http.url`.
pub const MAX_PATH_TAG_LENGTH: usize = 256;

/// What the proxy knows of a request when it starts; borrowed, read only when the request is
/// sampled.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestAttrs<'a> {
    /// The span's name: Istio's route decorator, `<service host>:<port>/*`.
    pub name: &'a str,
    /// `:method`.
    pub method: &'a str,
    /// `http` or `https` (Envoy takes `x-forwarded-proto`).
    pub scheme: &'a str,
    /// `:authority`.
    pub authority: &'a str,
    /// `:path` (cut at [`MAX_PATH_TAG_LENGTH`] bytes).
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'a str,
    /// `user-agent`.
    pub user_agent: Option<&'a str>,
    /// `x-request-id`.
    pub request_id: Option<&'a str>,
    /// `x-envoy-downstream-service-cluster`.
    pub downstream_cluster: Option<&'a str>,
    /// The client's address (the original client).
    pub peer: Option<IpAddr>,
    /// The upstream cluster, Envoy-style (`outbound|80||web.shop.svc.cluster.local`).
    pub upstream_cluster: Option<&'a str>,
}

/// How a request ended, for its span.
#[derive(Clone, Copy, Debug, Default)]
pub struct SpanEnd {
    /// The status sent to the client; none when none was sent (the span is an error).
    pub status: Option<http::StatusCode>,
    /// `grpc-status` of a gRPC response.
    pub grpc_status: Option<u32>,
    /// Request body bytes received.
    pub request_size: u64,
    /// Response body bytes sent.
    pub response_size: u64,
    /// Why the request did not end normally.
    pub response_flags: Option<ResponseFlag>,
    /// The endpoint the request went to.
    pub upstream: Option<SocketAddr>,
}

/// A started, sampled span, waiting for its end.
#[derive(Debug)]
pub(super) struct Recording {
    pub(super) start: SystemTime,
    pub(super) name: String,
    pub(super) attributes: Vec<KeyValue>,
}

pub(super) fn attr(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

impl Recording {
    /// The start-of-request attributes, in Envoy's order.
    pub(super) fn start(request: &RequestAttrs<'_>, node_id: &str, tags: &[KeyValue]) -> Self {
        let path = cut(request.path, MAX_PATH_TAG_LENGTH);
        let mut attributes = Vec::with_capacity(16 + tags.len());
        attributes.push(attr("node_id", node_id));
        if let Some(id) = request.request_id {
            attributes.push(attr("guid:x-request-id", id));
        }
        let scheme = if request.scheme.is_empty() {
            "http"
        } else {
            request.scheme
        };
        attributes.push(attr(
            "http.url",
            format!("{scheme}://{}{path}", request.authority),
        ));
        attributes.push(attr("http.method", request.method));
        attributes.push(attr(
            "downstream_cluster",
            request.downstream_cluster.unwrap_or("-"),
        ));
        attributes.push(attr("user_agent", request.user_agent.unwrap_or("-")));
        attributes.push(attr("http.protocol", request.protocol));
        if let Some(peer) = request.peer {
            attributes.push(attr("peer.address", peer.to_string()));
        }
        attributes.push(attr("component", "proxy"));
        if let Some(cluster) = request.upstream_cluster {
            attributes.push(attr("upstream_cluster", cluster));
        }
        attributes.extend_from_slice(tags);
        Self {
            start: SystemTime::now(),
            name: request.name.to_owned(),
            attributes,
        }
    }

    /// The OTLP span, ended now.
    pub(super) fn finish(self, context: &super::SpanContext, end: &SpanEnd) -> Span {
        let mut attributes = self.attributes;
        attributes.push(attr("request_size", end.request_size.to_string()));
        attributes.push(attr("response_size", end.response_size.to_string()));
        let code = end.status.as_ref().map_or("0", http::StatusCode::as_str);
        attributes.push(attr("http.status_code", code));
        attributes.push(attr(
            "response_flags",
            ResponseFlag::label(end.response_flags),
        ));
        if let Some(upstream) = end.upstream {
            attributes.push(attr("upstream_address", upstream.to_string()));
        }
        let mut error = end.status.is_none_or(|s| s.is_server_error());
        if let Some(grpc) = end.grpc_status {
            attributes.push(attr("grpc.status_code", grpc.to_string()));
            // Envoy marks a gRPC call that did not end OK as an error.
            error |= grpc != 0;
        }
        if error {
            attributes.push(attr("error", "true"));
        }
        Span {
            trace_id: context.trace_id.0.to_vec(),
            span_id: context.span_id.0.to_vec(),
            trace_state: context
                .trace_state
                .as_ref()
                .and_then(|s| s.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            parent_span_id: context
                .parent_span_id
                .map(|p| p.0.to_vec())
                .unwrap_or_default(),
            // W3C flags: sampled (bit 0); OTLP's "has is_remote" (0x100) and, with a
            // caller, "is remote" (0x200) — the parent came over the wire.
            flags: 0x1
                | 0x100
                | if context.parent_span_id.is_some() {
                    0x200
                } else {
                    0
                },
            name: self.name,
            kind: span::SpanKind::Server.into(),
            start_time_unix_nano: unix_nanos(self.start),
            end_time_unix_nano: unix_nanos(SystemTime::now()),
            attributes,
            status: Some(Status {
                message: String::new(),
                code: if error {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Unset
                }
                .into(),
            }),
            ..Span::default()
        }
    }
}

fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
