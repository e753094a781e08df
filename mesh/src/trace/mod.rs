//! Distributed tracing for the L7 programs (the waypoint, later the ingress gateway): the trace
//! context a request carries ([`context`]: W3C and B3, read and written), one span per request
//! ([`ActiveSpan`], Envoy's attributes), and their export to a collector over OTLP/gRPC.
//!
//! A program builds one [`Tracer`] from a [`TracerConfig`] and, per request, calls
//! [`Tracer::start`] with the request's headers, [`ActiveSpan::inject`] on the request it sends
//! upstream, and [`ActiveSpan::finish`] when the response is done. Without a collector the
//! tracer is off: headers pass untouched and nothing is recorded, as Envoy without a tracing
//! provider.
//!
//! ```ignore
//! let tracer = Tracer::new(&config, &mut registry)?;        // once, inside the runtime
//! let span = tracer.start(request.headers(), &RequestAttrs { method: "GET", .. });
//! span.inject(upstream_request.headers_mut());              // before sending upstream
//! span.finish(&SpanEnd { status: Some(response.status()), .. }); // after the last byte
//! tracer.shutdown().await;                                  // on drain: flushes the queue
//! ```
//!
//! Sampling as Envoy's (`source/extensions/tracers/opentelemetry/tracer.cc`): a caller's
//! decision (the W3C sampled flag, B3's `sampled`/`d`/`x-b3-flags: 1`) is honoured either way;
//! without one the tracer samples [`TracerConfig::sampling_percent`] of requests. An unsampled
//! request still gets a span id and passes the decision on, so the services after it agree.
//!
//! Where the configuration comes from: Istio's Telemetry API ([`provider`]: `telemetry.istio.io`
//! `Telemetry` `spec.tracing[].providers` and `randomSamplingPercentage`, the provider's
//! `service:port` from MeshConfig `extensionProviders[].opentelemetry`) where a Telemetry or
//! default provider applies, else the program's flags ([`TracerConfig`]). A program that
//! follows the state keeps a [`SwappableTracer`] and replaces its configuration when the
//! answer changes; the old exporter is flushed, requests never wait.

pub mod context;
mod export;
pub mod otlp;
pub mod provider;
mod span;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;

use http::HeaderMap;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use context::{Formats, Incoming, SpanContext, SpanId, TraceId, extract, inject};
pub use span::{MAX_PATH_TAG_LENGTH, RequestAttrs, SpanEnd};

use export::{ExportMetrics, Worker};
use otlp::common::KeyValue;
use otlp::trace::Span;
use span::{Recording, attr};

/// What can go wrong reading trace headers or setting up the exporter.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// A `traceparent` header that W3C's rules refuse.
    #[error("traceparent is invalid: {reason}")]
    Traceparent {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A B3 header (`b3` or `x-b3-*`) that B3's rules refuse.
    #[error("b3 trace context is invalid: {reason}")]
    B3 {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A setting out of its range.
    #[error("tracing setting {setting} = {value:?} is invalid: expected {expected}")]
    Setting {
        /// The setting's name.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
}

/// How a program traces.
#[derive(Clone, Debug, PartialEq)]
pub struct TracerConfig {
    /// The OTLP/gRPC collector, `host:port` (plaintext, as Istio's `opentelemetry` provider);
    /// none turns tracing off.
    pub collector: Option<String>,
    /// Percentage (0–100) of requests without a caller's decision that are sampled. Istio's
    /// default `randomSamplingPercentage` is 1.
    pub sampling_percent: f64,
    /// The resource's `service.name` (Istio: the proxy's canonical service and namespace,
    /// `waypoint.shop`).
    pub service_name: String,
    /// The `node_id` attribute (Envoy's node name; Istio's `waypoint~10.0.0.5~pod.ns~ns.svc…`).
    pub node_id: String,
    /// Attributes on every span: Istio's `istio.canonical_service`,
    /// `istio.canonical_revision`, `istio.namespace`, `istio.mesh_id`, `istio.cluster_id`.
    pub tags: Vec<(String, String)>,
    /// Spans waiting for export at most; more are dropped and counted.
    pub queue_capacity: usize,
    /// Spans per export at most.
    pub max_batch: usize,
    /// How often a partial batch is sent.
    pub flush_interval: Duration,
    /// How long one export may take (connecting included).
    pub export_timeout: Duration,
}

impl Default for TracerConfig {
    fn default() -> Self {
        Self {
            collector: None,
            sampling_percent: 1.0,
            service_name: "marrow".to_owned(),
            node_id: String::new(),
            tags: Vec::new(),
            queue_capacity: 2048,
            max_batch: 512,
            flush_interval: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl TracerConfig {
    /// Checks each setting's range; the error names the setting, the value and what is
    /// expected.
    pub fn validate(&self) -> Result<(), TraceError> {
        let bad = |setting, value: String, expected| {
            Err(TraceError::Setting {
                setting,
                value,
                expected,
            })
        };
        if !(0.0..=100.0).contains(&self.sampling_percent) {
            return bad(
                "sampling_percent",
                self.sampling_percent.to_string(),
                "a percentage from 0 to 100",
            );
        }
        if let Some(collector) = &self.collector {
            let port = collector
                .rsplit_once(':')
                .map(|(_, port)| port.parse::<u16>());
            if !matches!(port, Some(Ok(p)) if p != 0) || collector.contains('/') {
                return bad("collector", collector.clone(), "host:port");
            }
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity", "0".to_owned(), "at least 1");
        }
        if self.max_batch == 0 {
            return bad("max_batch", "0".to_owned(), "at least 1");
        }
        if self.flush_interval.is_zero() || self.export_timeout.is_zero() {
            return bad(
                "flush_interval/export_timeout",
                format!("{:?}/{:?}", self.flush_interval, self.export_timeout),
                "more than zero",
            );
        }
        Ok(())
    }
}

/// The sampling decision for requests that bring none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sampler {
    /// Sampled requests per million.
    per_million: u32,
}

impl Sampler {
    /// Samples `percent` (0–100, clamped) of requests.
    pub fn new(percent: f64) -> Self {
        let per_million = (percent.clamp(0.0, 100.0) * 10_000.0).round();
        // In 0..=1_000_000 after the clamp: the cast cannot truncate.
        Self {
            per_million: per_million as u32,
        }
    }

    /// The caller's decision when it sent one, else a random one.
    pub fn decide(self, caller: Option<bool>) -> bool {
        caller.unwrap_or_else(|| fastrand::u32(0..1_000_000) < self.per_million)
    }
}

/// A program's tracer: cheap to clone, shared by every request.
#[derive(Clone, Debug, Default)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

#[derive(Debug)]
struct Inner {
    sampler: Sampler,
    node_id: String,
    tags: Vec<KeyValue>,
    queue: mpsc::Sender<Span>,
    metrics: ExportMetrics,
    stop: CancellationToken,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Tracer {
    /// A tracer that records nothing and leaves headers alone.
    pub fn off() -> Self {
        Self::default()
    }

    /// The tracer `config` describes; with a collector, registers the exporter's counters on
    /// `registry` and starts the exporting task (call inside a Tokio runtime). The collector is
    /// connected lazily: one that is down does not stop the program.
    pub fn new(config: &TracerConfig, registry: &mut Registry) -> Result<Self, TraceError> {
        config.validate()?;
        if config.collector.is_none() {
            return Ok(Self::off());
        }
        Self::with_metrics(config, ExportMetrics::register(registry))
    }

    /// As [`Tracer::new`], counting on `metrics` registered before.
    fn with_metrics(config: &TracerConfig, metrics: ExportMetrics) -> Result<Self, TraceError> {
        config.validate()?;
        let Some(collector) = &config.collector else {
            return Ok(Self::off());
        };
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{collector}"))
            .map_err(|_| TraceError::Setting {
                setting: "collector",
                value: collector.clone(),
                expected: "host:port",
            })?
            .connect_timeout(config.export_timeout)
            .timeout(config.export_timeout);
        let client =
            otlp::collector::trace_service_client::TraceServiceClient::new(endpoint.connect_lazy());
        let (queue, receiver) = mpsc::channel(config.queue_capacity);
        let stop = CancellationToken::new();
        let worker = Worker {
            client,
            resource: vec![attr("service.name", config.service_name.as_str())],
            max_batch: config.max_batch,
            flush_interval: config.flush_interval,
            export_timeout: config.export_timeout,
            metrics: metrics.clone(),
        };
        let task = tokio::spawn(worker.run(receiver, stop.clone()));
        Ok(Self {
            inner: Some(Arc::new(Inner {
                sampler: Sampler::new(config.sampling_percent),
                node_id: config.node_id.clone(),
                tags: config
                    .tags
                    .iter()
                    .map(|(k, v)| attr(k, v.as_str()))
                    .collect(),
                queue,
                metrics,
                stop,
                worker: Mutex::new(Some(task)),
            })),
        })
    }

    /// Whether spans are recorded at all.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts the span of a request that arrived with `headers`: a child of the caller's span,
    /// or a new trace.
    pub fn start(&self, headers: &HeaderMap, request: &RequestAttrs<'_>) -> ActiveSpan {
        let Some(inner) = &self.inner else {
            return ActiveSpan::default();
        };
        let incoming = extract(headers);
        let sampled = inner.sampler.decide(incoming.sampled);
        let context = SpanContext::child_of(&incoming, sampled);
        let recording = sampled.then(|| Recording::start(request, &inner.node_id, &inner.tags));
        ActiveSpan {
            state: Some(Box::new(Started {
                context,
                recording,
                tracer: Arc::clone(inner),
            })),
        }
    }

    /// Stops the exporter after sending what is queued (bounded by the export timeout). Spans
    /// finished afterwards are dropped and counted.
    pub async fn shutdown(&self) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.stop.cancel();
        let task = inner
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // A panicked exporter has nothing left to flush.
            let _ = task.await;
        }
    }
}

/// A [`Tracer`] whose configuration can change while the program runs (the Telemetry API
/// changed): requests take the one in force ([`SwappableTracer::current`]); a replacement
/// starts a new exporter and flushes the old one. The exporter's counters are registered once.
#[derive(Debug)]
pub struct SwappableTracer {
    current: ArcSwap<Tracer>,
    config: Mutex<TracerConfig>,
    metrics: ExportMetrics,
}

impl SwappableTracer {
    /// Starts with `config`; registers the exporter's counters on `registry` whether or not
    /// tracing is on yet. Call inside a Tokio runtime.
    pub fn new(config: &TracerConfig, registry: &mut Registry) -> Result<Self, TraceError> {
        config.validate()?;
        let metrics = ExportMetrics::register(registry);
        Ok(Self {
            current: ArcSwap::from_pointee(Tracer::with_metrics(config, metrics.clone())?),
            config: Mutex::new(config.clone()),
            metrics,
        })
    }

    /// The tracer in force (a cheap clone); a request keeps the one it started with.
    pub fn current(&self) -> Tracer {
        Tracer::clone(&self.current.load())
    }

    /// The configuration in force.
    pub fn config(&self) -> TracerConfig {
        self.config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `config` in force unless it already is (then `Ok(false)`); the old exporter sends
    /// what it has queued before this returns. Spans of requests still running on the old
    /// tracer are dropped and counted (`reason="shutdown"`). An invalid `config` changes
    /// nothing.
    pub async fn replace(&self, config: TracerConfig) -> Result<bool, TraceError> {
        let old = {
            let mut in_force = self.config.lock().unwrap_or_else(PoisonError::into_inner);
            if *in_force == config {
                return Ok(false);
            }
            let tracer = Tracer::with_metrics(&config, self.metrics.clone())?;
            *in_force = config;
            self.current.swap(Arc::new(tracer))
        };
        old.shutdown().await;
        Ok(true)
    }

    /// Stops the tracer in force after sending what is queued (see [`Tracer::shutdown`]).
    pub async fn shutdown(&self) {
        self.current().shutdown().await;
    }
}

/// One request's span, from [`Tracer::start`] to [`ActiveSpan::finish`]. Inert when the
/// tracer is off. Dropped without `finish`, it is not exported.
#[derive(Debug, Default)]
pub struct ActiveSpan {
    state: Option<Box<Started>>,
}

#[derive(Debug)]
struct Started {
    context: SpanContext,
    recording: Option<Recording>,
    tracer: Arc<Inner>,
}

impl ActiveSpan {
    /// This span's context (none when the tracer is off).
    pub fn context(&self) -> Option<&SpanContext> {
        self.state.as_ref().map(|s| &s.context)
    }

    /// The trace id, for the access log (none when the tracer is off).
    pub fn trace_id(&self) -> Option<TraceId> {
        self.context().map(|c| c.trace_id)
    }

    /// Writes this span's context onto the request sent upstream, in the formats the request
    /// arrived with (W3C when none); nothing when the tracer is off.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(context) = self.context() {
            inject(context, headers);
        }
    }

    /// Ends the span and queues it for export (when sampled); never waits.
    pub fn finish(self, end: &SpanEnd) {
        let Some(state) = self.state else {
            return;
        };
        let Started {
            context,
            recording,
            tracer,
        } = *state;
        if let Some(recording) = recording {
            let span = recording.finish(&context, end);
            if let Err(error) = tracer.queue.try_send(span) {
                export::refused(&tracer.metrics, &error);
            }
        }
    }
}
