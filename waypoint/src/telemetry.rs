//! The waypoint's request telemetry, from one [`RequestOutcome`] per request: Istio's request
//! metrics with reporter `waypoint` (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`), one access-log line, and the request's span
//! finished and exported (its start and header propagation are in `forward`).
//!
//! Labels as Istio's waypoint (Envoy's stats filter there) sets them: the source is the ORIGINAL
//! client (its workload from the state, its principal from the tunnel), the destination is the
//! endpoint the request went to (its workload, and the identity its node proxy proved), the
//! service the one the client addressed; `connection_security_policy` is `mutual_tls`.

use std::sync::Arc;

use marrow_mesh::identity::SpiffeId;
use marrow_mesh::state::Snapshot;
use marrow_mesh::telemetry::{
    ConnectionLabels, LabelValue, PeerLabels, Reporter, RequestLabels, RequestLog, RequestMetrics,
    RequestSample, Security, ServiceLabels,
};
use marrow_mesh::trace::{SpanEnd, TraceError, Tracer, TracerConfig};
use prometheus_client::registry::Registry;

use crate::outcome::RequestOutcome;

/// Metrics, access log and tracer of one waypoint.
#[derive(Debug)]
pub struct Telemetry {
    metrics: RequestMetrics,
    tracer: Tracer,
    cluster_id: String,
    cluster: LabelValue,
}

impl Telemetry {
    /// Registers the request metrics (and the tracer's counters) on `registry`; the tracer
    /// exports to `tracing`'s collector, or is off without one. Call inside the runtime.
    pub fn new(
        registry: &mut Registry,
        tracing: &TracerConfig,
        cluster_id: &str,
    ) -> Result<Self, TraceError> {
        Ok(Self {
            metrics: RequestMetrics::register(registry),
            tracer: Tracer::new(tracing, registry)?,
            cluster_id: cluster_id.to_owned(),
            cluster: LabelValue::new(cluster_id),
        })
    }

    /// The tracer requests start their spans with.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The cluster the workloads are in (Istio's CLUSTER_ID).
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// Records a finished request (or L4 tunnel): metrics for HTTP requests, the access log for
    /// both, and the span's end.
    pub fn record(&self, snap: &Snapshot, mut outcome: RequestOutcome) {
        if outcome.duration.is_zero() {
            outcome.duration = outcome.start.elapsed();
        }
        let status = (outcome.status != 0)
            .then(|| http::StatusCode::from_u16(outcome.status).ok())
            .flatten();
        let destination = outcome
            .upstream
            .and_then(|endpoint| snap.workload_by_ip(endpoint.ip()));
        let destination_id = destination.and_then(|w| {
            SpiffeId::new(&outcome.trust_domain, &w.namespace, &w.service_account).ok()
        });
        if outcome.protocol != "tcp" {
            let source = outcome
                .client_addr
                .and_then(|addr| snap.workload_by_ip(addr.ip()))
                .map(|w| PeerLabels::of(w, &self.cluster))
                .or_else(|| outcome.source.as_ref().map(PeerLabels::namespace_only));
            let mut connection = ConnectionLabels::between(
                Reporter::Waypoint,
                source,
                destination.map(|w| PeerLabels::of(w, &self.cluster)),
            );
            if let Some(source) = &outcome.source {
                connection.source_principal = source.into();
            }
            if let Some(id) = &destination_id {
                connection.destination_principal = id.into();
            }
            connection.connection_security_policy = Security::MutualTls;
            connection.destination_service = outcome.service.as_ref().map(|s| {
                Arc::new(ServiceLabels {
                    host: LabelValue::new(&s.host()),
                    name: LabelValue::new(&s.name),
                    namespace: LabelValue::new(&s.namespace),
                })
            });
            connection.response_flags = outcome.flag;
            let mut labels = RequestLabels::new(connection, outcome.request_protocol);
            labels.response_code = status;
            labels.grpc_response_status = outcome.grpc_status;
            self.metrics.record(
                &labels,
                &RequestSample {
                    duration: outcome.duration,
                    request_bytes: outcome.bytes_in,
                    response_bytes: outcome.bytes_out,
                },
            );
        }
        let trace_id = outcome
            .span
            .as_ref()
            .and_then(|s| s.trace_id())
            .map(|t| t.to_string());
        let source = outcome.source.as_ref().map(ToString::to_string);
        let destination = destination_id.as_ref().map(ToString::to_string);
        let upstream_cluster = outcome.upstream_cluster();
        RequestLog {
            method: &outcome.method,
            path: &outcome.path,
            protocol: outcome.protocol,
            status,
            response_flags: outcome.flag,
            bytes_received: outcome.bytes_in,
            bytes_sent: outcome.bytes_out,
            duration: outcome.duration,
            user_agent: outcome.user_agent.as_deref(),
            request_id: outcome.request_id.as_deref(),
            authority: &outcome.authority,
            upstream: outcome.upstream,
            upstream_cluster: upstream_cluster.as_deref(),
            downstream: outcome.client_addr,
            trace_id: trace_id.as_deref(),
            src_identity: source.as_deref(),
            dst_identity: destination.as_deref(),
        }
        .emit();
        if let Some(span) = outcome.span.take() {
            span.finish(&SpanEnd {
                status,
                grpc_status: outcome.grpc_status,
                request_size: outcome.bytes_in,
                response_size: outcome.bytes_out,
                response_flags: outcome.flag,
                upstream: outcome.upstream,
            });
        }
    }
}
