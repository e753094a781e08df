//! The waypoint's request telemetry, from one [`RequestOutcome`] per request: Istio's request
//! metrics with reporter `waypoint` (`istio_requests_total`, `istio_request_duration_milliseconds`,
//! `istio_request_bytes`, `istio_response_bytes`), one access-log line, and the request's span
//! finished and exported (its start and header propagation are in `forward`).
//!
//! Labels as Istio's waypoint (Envoy's stats filter there) sets them: the source is the ORIGINAL
//! client (its workload from the state, its principal from the tunnel), the destination is the
//! endpoint the request went to (its workload, and the identity its node proxy proved), the
//! service the one the client addressed; `connection_security_policy` is `mutual_tls`.
//!
//! The tracer's configuration follows the state ([`crate::context::Context::follow_telemetry_api`]): Istio's Telemetry
//! API where a Telemetry (or MeshConfig `defaultProviders.tracing`) applies to this waypoint,
//! else the `--tracing-*` flags. A provider that cannot be used (not `opentelemetry`, not in
//! MeshConfig, a collector that is no Service) turns tracing off, logged and counted
//! (`marrow_tracing_provider_rejected_total{reason}`), and is looked at again on the next state
//! change.

pub mod routing;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use marrow_mesh::identity::SpiffeId;
use marrow_mesh::state::Snapshot;
use marrow_mesh::telemetry::{
    ConnectionLabels, LabelValue, PeerLabels, Reporter, RequestLabels, RequestLog, RequestMetrics,
    RequestSample, Security, ServiceLabels,
};
use marrow_mesh::trace::provider::{Outcome, TelemetryTracing, TracedWaypoint, tracing_for};
use marrow_mesh::trace::{SpanEnd, SwappableTracer, TraceError, Tracer, TracerConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::gateway::Gateway;
use crate::outcome::RequestOutcome;

/// The label Istio's waypoint pods carry with their Gateway's name (what a Telemetry's
/// `selector` usually matches).
const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Why a Telemetry API provider was set aside (the `reason` label).
type RejectReason = [(&'static str, &'static str); 1];

/// Metrics, access log and tracer of one waypoint.
#[derive(Debug)]
pub struct Telemetry {
    metrics: RequestMetrics,
    tracer: SwappableTracer,
    /// The `--tracing-*` flags: in force when no Telemetry applies, and the base of what one sets.
    flags: TracerConfig,
    /// The Telemetry API's last answer (`None` inside: none applied); `None` before the first.
    telemetry_api: Mutex<Option<Option<TelemetryTracing>>>,
    rejected: Family<RejectReason, Counter>,
    cluster_id: String,
    cluster: LabelValue,
    /// Retries, tries and mirrors of routed requests.
    pub routing: routing::RouteMetrics,
    /// Outlier ejections (`marrow_outlier_ejections_total`, `marrow_endpoint_ejected`).
    pub resilience: marrow_mesh::resilience::ResilienceMetrics,
    /// `marrow_config_refused`: route objects and DestinationRules refused, by kind.
    pub refused: marrow_mesh::traffic::RefusalMetrics,
}

impl Telemetry {
    /// Registers the request metrics (and the tracer's counters) on `registry`; the tracer
    /// exports to `tracing`'s collector, or is off without one, until the Telemetry API says
    /// otherwise ([`crate::context::Context::follow_telemetry_api`]). Call inside the runtime.
    pub fn new(
        registry: &mut Registry,
        tracing: &TracerConfig,
        cluster_id: &str,
    ) -> Result<Self, TraceError> {
        let rejected = Family::<RejectReason, Counter>::default();
        registry.register(
            "marrow_tracing_provider_rejected",
            "Tracing providers from the Telemetry API set aside (tracing off), by reason",
            rejected.clone(),
        );
        Ok(Self {
            metrics: RequestMetrics::register(registry),
            tracer: SwappableTracer::new(tracing, registry)?,
            flags: tracing.clone(),
            telemetry_api: Mutex::new(None),
            rejected,
            cluster_id: cluster_id.to_owned(),
            cluster: LabelValue::new(cluster_id),
            routing: routing::RouteMetrics::register(registry),
            resilience: {
                let metrics = marrow_mesh::resilience::ResilienceMetrics::default();
                metrics.register(registry);
                metrics
            },
            refused: {
                let metrics = marrow_mesh::traffic::RefusalMetrics::default();
                metrics.register(registry);
                metrics
            },
        })
    }

    /// The tracer in force, which requests start their spans with.
    pub fn tracer(&self) -> Tracer {
        self.tracer.current()
    }

    /// The tracer's configuration in force.
    pub fn tracer_config(&self) -> TracerConfig {
        self.tracer.config()
    }

    /// Where the tracing configuration in force comes from, for the admin API and logs.
    pub fn tracing_source(&self) -> String {
        match &*self
            .telemetry_api
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
        {
            Some(Some(answer)) => format!("telemetry api: {answer}"),
            Some(None) | None => "flags (no Telemetry applies)".to_owned(),
        }
    }

    /// Puts in force what the Telemetry API in `snap` says for `gateway` (the flags when it
    /// says nothing); does nothing when the answer did not change.
    pub async fn apply_telemetry_api(&self, snap: &Snapshot, gateway: &Gateway) {
        let labels = waypoint_labels(snap, gateway);
        let answer = tracing_for(
            snap,
            &TracedWaypoint {
                namespace: &gateway.namespace,
                gateway: &gateway.name,
                labels: &labels,
            },
        );
        {
            let mut last = self
                .telemetry_api
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.as_ref() == Some(&answer) {
                return;
            }
            *last = Some(answer.clone());
        }
        let config = match answer.as_ref().map(|a| &a.outcome) {
            None => self.flags.clone(),
            Some(Outcome::Export {
                collector,
                sampling_percent,
            }) => TracerConfig {
                collector: Some(collector.to_string()),
                sampling_percent: *sampling_percent,
                ..self.flags.clone()
            },
            Some(_) => TracerConfig {
                collector: None,
                ..self.flags.clone()
            },
        };
        match &answer {
            None => tracing::info!(
                collector = config.collector.as_deref().unwrap_or("none"),
                sampling = config.sampling_percent,
                "tracing from the flags: no telemetry applies"
            ),
            Some(answer) if answer.outcome.reason() == "none" => {
                tracing::info!(%answer, "tracing from the telemetry api")
            }
            Some(answer) => {
                self.rejected
                    .get_or_create(&[("reason", answer.outcome.reason())])
                    .inc();
                tracing::warn!(%answer, reason = answer.outcome.reason(), "telemetry api tracing provider set aside; tracing off");
            }
        }
        if let Err(error) = self.tracer.replace(config).await {
            tracing::warn!(%error, "tracing configuration refused; the previous one stays");
        }
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

/// The waypoint pods' labels: those of one of its pods in the state, else the label every
/// waypoint pod carries.
fn waypoint_labels(snap: &Snapshot, gateway: &Gateway) -> BTreeMap<String, String> {
    snap.workloads()
        .find(|w| {
            w.namespace == gateway.namespace
                && w.labels.get(GATEWAY_NAME_LABEL) == Some(&gateway.name)
        })
        .map(|w| w.labels.clone())
        .unwrap_or_else(|| BTreeMap::from([(GATEWAY_NAME_LABEL.to_owned(), gateway.name.clone())]))
}
