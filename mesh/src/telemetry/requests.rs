//! Istio's request metrics (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`), as an L7 proxy (the waypoint, later the
//! ingress gateway) reports them: one [`RequestMetrics::record`] per finished request.
//!
//! Names, label names and buckets are Istio's, so Kiali's graph and Istio's Grafana dashboards
//! query them unchanged. Istio's stats filter (istio/proxy
//! `source/extensions/filters/http/istio_stats/istio_stats.cc`) uses Envoy's histograms, and
//! Istio's bootstrap sets no `histogram_bucket_settings` unless a pod asks for it
//! (`sidecar.istio.io/statsHistogramBuckets`), so all three histograms have Envoy's default
//! buckets (`source/common/stats/histogram_impl.cc`, `supportedBuckets`), bytes included.
//!
//! Invariants: label values stay bounded — the connection labels' (workloads, identities,
//! services), a status code, a gRPC status, a flag; never a path, a host header or an id.

use std::fmt;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::{ConnectionLabels, LabelValue};

/// Envoy's default histogram buckets, which Istio's request histograms keep (milliseconds for
/// the duration, bytes for the sizes).
pub const ISTIO_BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Istio's `request_protocol` of a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RequestProtocol {
    /// HTTP/1.1 or HTTP/2 that is not gRPC.
    Http,
    /// gRPC (`content-type: application/grpc…`).
    Grpc,
}

impl RequestProtocol {
    /// The protocol of a request with `headers`: gRPC when its `content-type` is
    /// `application/grpc` or a subtype (`application/grpc+proto`, …), as Envoy's
    /// `Grpc::Common::isGrpcRequestHeaders`; HTTP otherwise (gRPC-Web included).
    pub fn of(headers: &http::HeaderMap) -> Self {
        let grpc = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("application/grpc"))
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'));
        if grpc { Self::Grpc } else { Self::Http }
    }

    /// `http` or `grpc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
        }
    }
}

/// The labels of one request's series: Istio's connection labels (`request_protocol` `http`
/// or `grpc`) plus `response_code` and `grpc_response_status`.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RequestLabels {
    /// The connection's labels: peers, principals, `destination_service*`, response flags,
    /// `connection_security_policy`; `request_protocol` is set by [`RequestLabels::new`].
    pub connection: ConnectionLabels,
    /// The status sent to the client; `None` (label `0`, as Envoy) when none was sent.
    pub response_code: Option<http::StatusCode>,
    /// The gRPC status of a gRPC response (`grpc-status`); `None` (empty label) otherwise.
    pub grpc_response_status: Option<u32>,
}

impl RequestLabels {
    /// Labels of a request on a connection with `connection`'s labels (its reporter:
    /// [`super::Reporter::Waypoint`] at the waypoint; Istio's gateways report `source`), with no
    /// response yet.
    pub fn new(connection: ConnectionLabels, protocol: RequestProtocol) -> Self {
        Self {
            connection: ConnectionLabels {
                request_protocol: LabelValue::fixed(protocol.as_str()),
                ..connection
            },
            response_code: None,
            grpc_response_status: None,
        }
    }
}

/// The `grpc-status` of a gRPC response's trailers (or headers, for a trailers-only
/// response); none when absent or not a number.
pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// gRPC's status codes (0 OK … 16 UNAUTHENTICATED) as label values, without formatting.
const GRPC_CODES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), fmt::Error> {
        self.connection.encode(encoder)?;
        let code = self
            .response_code
            .as_ref()
            .map_or("0", http::StatusCode::as_str);
        // A status outside gRPC's table is written as its number; only a broken peer sends one.
        let other;
        let grpc = match self.grpc_response_status {
            None => "",
            Some(status) => match usize::try_from(status).ok().and_then(|i| GRPC_CODES.get(i)) {
                Some(known) => known,
                None => {
                    other = status.to_string();
                    other.as_str()
                }
            },
        };
        [("response_code", code), ("grpc_response_status", grpc)].encode(encoder)
    }
}

/// What one finished request measured.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RequestSample {
    /// From the first byte of the request to the last of the response.
    pub duration: std::time::Duration,
    /// The request's body bytes, as received from the client.
    pub request_bytes: u64,
    /// The response's body bytes, as sent to the client.
    pub response_bytes: u64,
}

type HistogramFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

fn istio_histogram() -> Histogram {
    Histogram::new(ISTIO_BUCKETS)
}

/// Istio's four request metric families, registered once per program.
#[derive(Clone, Debug)]
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: HistogramFamily,
    request_bytes: HistogramFamily,
    response_bytes: HistogramFamily,
}

impl RequestMetrics {
    /// Registers the four families on `registry` (which must have no prefix: the names are
    /// Istio's) and returns the handle that records into them.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(istio_histogram),
            request_bytes: Family::new_with_constructor(istio_histogram),
            response_bytes: Family::new_with_constructor(istio_histogram),
        };
        registry.register(
            "istio_requests",
            "Requests the proxy handled",
            metrics.requests.clone(),
        );
        registry.register(
            "istio_request_duration_milliseconds",
            "Request durations, first request byte to last response byte",
            metrics.duration.clone(),
        );
        registry.register(
            "istio_request_bytes",
            "Request body sizes",
            metrics.request_bytes.clone(),
        );
        registry.register(
            "istio_response_bytes",
            "Response body sizes",
            metrics.response_bytes.clone(),
        );
        metrics
    }

    /// Counts one finished request in every family.
    pub fn record(&self, labels: &RequestLabels, sample: &RequestSample) {
        self.requests.get_or_create(labels).inc();
        self.duration
            .get_or_create(labels)
            .observe(sample.duration.as_secs_f64() * 1000.0);
        // Past 2^53 bytes the value rounds; it lands in the top bucket either way.
        let (request, response) = (sample.request_bytes as f64, sample.response_bytes as f64);
        self.request_bytes.get_or_create(labels).observe(request);
        self.response_bytes.get_or_create(labels).observe(response);
    }
}
