//! The span exporter: a bounded queue between the requests and one task that sends batches to
//! the collector over OTLP/gRPC (`TraceService/Export`).
//!
//! Invariants: a request never waits for the exporter — a full queue drops the span and counts
//! it (`marrow_spans_dropped_total{reason="queue_full"}`); a batch the collector does not take
//! (unreachable, timed out, refused) is dropped and counted (`reason="export_failed"`), never
//! retried, so a dead collector costs one bounded export per batch and nothing else. Batches go
//! out when full, on the timer and on shutdown (the queue is drained first). The defaults are
//! OpenTelemetry's batch span processor's (queue 2048, batch 512, every 5 s).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::otlp::collector::ExportTraceServiceRequest;
use super::otlp::collector::trace_service_client::TraceServiceClient;
use super::otlp::common::{InstrumentationScope, KeyValue};
use super::otlp::resource::Resource;
use super::otlp::trace::{ResourceSpans, ScopeSpans, Span};

/// Why spans were dropped (the `reason` label).
pub(super) type DropReason = [(&'static str, &'static str); 1];

/// The queue was full: the exporter is behind (a slow or dead collector).
pub(super) const QUEUE_FULL: DropReason = [("reason", "queue_full")];
/// The collector did not take the batch.
pub(super) const EXPORT_FAILED: DropReason = [("reason", "export_failed")];
/// The collector took the batch but rejected these spans (OTLP partial success).
pub(super) const REJECTED: DropReason = [("reason", "rejected")];
/// The tracer had shut down.
pub(super) const SHUT_DOWN: DropReason = [("reason", "shutdown")];

/// The exporter's counters.
#[derive(Clone, Debug, Default)]
pub(super) struct ExportMetrics {
    pub(super) exported: Counter,
    pub(super) dropped: Family<DropReason, Counter>,
}

impl ExportMetrics {
    pub(super) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "marrow_spans_exported",
            "Spans the trace collector accepted",
            metrics.exported.clone(),
        );
        registry.register(
            "marrow_spans_dropped",
            "Spans dropped before the collector accepted them, by reason",
            metrics.dropped.clone(),
        );
        metrics
    }

    fn drop_spans(&self, reason: &DropReason, count: usize) {
        if count == 0 {
            return;
        }
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.dropped.get_or_create(reason).inc_by(count);
    }
}

/// The exporting task's settings.
pub(super) struct Worker {
    pub(super) client: TraceServiceClient<tonic::transport::Channel>,
    pub(super) resource: Vec<KeyValue>,
    pub(super) max_batch: usize,
    pub(super) flush_interval: Duration,
    pub(super) export_timeout: Duration,
    pub(super) metrics: ExportMetrics,
}

impl Worker {
    /// Sends batches until `stop` is cancelled, then drains the queue and sends the rest.
    pub(super) async fn run(mut self, mut queue: mpsc::Receiver<Span>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(self.max_batch);
        // The first tick a full interval from now (`interval` would tick at once and send a
        // batch of one).
        let first = tokio::time::Instant::now() + self.flush_interval;
        let mut timer = tokio::time::interval_at(first, self.flush_interval);
        timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                span = queue.recv() => match span {
                    Some(span) => {
                        batch.push(span);
                        if batch.len() >= self.max_batch {
                            self.export(&mut batch).await;
                        }
                    }
                    None => break,
                },
                _ = timer.tick() => {
                    self.export(&mut batch).await;
                }
            }
        }
        // Shutting down: send what is queued, but after one failed export count the rest as
        // failed instead of waiting out a timeout per batch on a dead collector.
        queue.close();
        let mut alive = true;
        while let Ok(span) = queue.try_recv() {
            batch.push(span);
            if batch.len() >= self.max_batch {
                alive = self.flush_or_drop(&mut batch, alive).await;
            }
        }
        self.flush_or_drop(&mut batch, alive).await;
    }

    /// Exports `batch` while the collector has been answering; else drops and counts it.
    async fn flush_or_drop(&mut self, batch: &mut Vec<Span>, alive: bool) -> bool {
        if alive {
            return self.export(batch).await;
        }
        self.metrics.drop_spans(&EXPORT_FAILED, batch.len());
        batch.clear();
        false
    }

    /// Sends `batch` (emptying it); counts what the collector took and what it did not.
    /// Whether the collector answered.
    async fn export(&mut self, batch: &mut Vec<Span>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let spans = std::mem::replace(batch, Vec::with_capacity(self.max_batch));
        let count = spans.len();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: self.resource.clone(),
                    ..Resource::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "marrow".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let sent = tokio::time::timeout(self.export_timeout, self.client.export(request)).await;
        match sent {
            Ok(Ok(response)) => {
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| usize::try_from(p.rejected_spans).unwrap_or(count))
                    .min(count);
                self.metrics.drop_spans(&REJECTED, rejected);
                let taken = u64::try_from(count - rejected).unwrap_or(u64::MAX);
                self.metrics.exported.inc_by(taken);
                true
            }
            Ok(Err(status)) => {
                tracing::debug!(spans = count, error = %status, "trace export failed");
                self.metrics.drop_spans(&EXPORT_FAILED, count);
                false
            }
            Err(_) => {
                tracing::debug!(spans = count, "trace export timed out");
                self.metrics.drop_spans(&EXPORT_FAILED, count);
                false
            }
        }
    }
}

/// Counts a span the queue would not take.
pub(super) fn refused(metrics: &ExportMetrics, error: &mpsc::error::TrySendError<Span>) {
    let reason = match error {
        mpsc::error::TrySendError::Full(_) => &QUEUE_FULL,
        mpsc::error::TrySendError::Closed(_) => &SHUT_DOWN,
    };
    metrics.drop_spans(reason, 1);
}
