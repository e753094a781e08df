//! The tracer against an OTLP/gRPC receiver built from the same official protos: the spans it
//! receives carry the ids the proxy propagated (the parent is the caller's span, the span is
//! the one written upstream) and Envoy's attributes; batches go out when full, on the timer
//! and on shutdown; a dead collector costs dropped, counted spans and never a blocked request.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test loudly"
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};
use marrow_mesh::trace::otlp::collector::trace_service_server::{TraceService, TraceServiceServer};
use marrow_mesh::trace::otlp::collector::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use marrow_mesh::trace::otlp::common::any_value::Value;
use marrow_mesh::trace::otlp::trace::Span;
use marrow_mesh::trace::{RequestAttrs, SpanEnd, Tracer, TracerConfig};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

/// What the receiver got: one entry per Export call.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

#[tonic::async_trait]
impl TraceService for Received {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Received {
    fn exports(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn spans(&self) -> Vec<Span> {
        let exports = self.0.lock().unwrap();
        exports
            .iter()
            .flat_map(|e| &e.resource_spans)
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| s.spans.clone())
            .collect()
    }
}

/// A receiver on a free local port; stops when the guard drops.
struct Receiver {
    addr: SocketAddr,
    received: Received,
    stop: CancellationToken,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn receiver() -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Received::default();
    let stop = CancellationToken::new();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(received.clone()))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            stop.clone().cancelled_owned(),
        );
    tokio::spawn(server);
    Receiver {
        addr,
        received,
        stop,
    }
}

fn config(collector: SocketAddr) -> TracerConfig {
    TracerConfig {
        collector: Some(collector.to_string()),
        // Only the callers' decisions sample, so each test says which requests are traced.
        sampling_percent: 0.0,
        service_name: "waypoint.shop".into(),
        node_id: "waypoint~10.1.0.5~waypoint-abc.shop~shop.svc.cluster.local".into(),
        tags: vec![("istio.canonical_service".into(), "waypoint".into())],
        flush_interval: Duration::from_secs(3600),
        export_timeout: Duration::from_secs(2),
        ..TracerConfig::default()
    }
}

fn request(pairs: &[(&'static str, String)]) -> HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| ((*k).try_into().unwrap(), HeaderValue::from_str(v).unwrap()))
        .collect()
}

const ATTRS: RequestAttrs<'static> = RequestAttrs {
    name: "web.shop.svc.cluster.local:80/*",
    method: "GET",
    scheme: "http",
    authority: "web.shop",
    path: "/api",
    protocol: "HTTP/1.1",
    user_agent: Some("curl/8"),
    request_id: Some("rid-7"),
    downstream_cluster: None,
    peer: None,
    upstream_cluster: Some("outbound|80||web.shop.svc.cluster.local"),
};

fn ok() -> SpanEnd {
    SpanEnd {
        status: Some(http::StatusCode::OK),
        request_size: 0,
        response_size: 17,
        ..SpanEnd::default()
    }
}

/// The value of a sample line starting with `prefix` in the registry's exposition.
fn sample(registry: &Registry, prefix: &str) -> u64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0, |v| v.parse().unwrap())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    let kv = span.attributes.iter().find(|kv| kv.key == key)?;
    match kv.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn exported_spans_carry_the_propagated_ids_and_envoys_attributes() {
    let receiver = receiver().await;
    let mut registry = Registry::default();
    let tracer = Tracer::new(&config(receiver.addr), &mut registry).unwrap();

    // A W3C caller that sampled, a B3 caller that sampled, one that did not, and none at all.
    let w3c = request(&[("traceparent", format!("00-{TRACE}-{SPAN}-01"))]);
    let b3 = request(&[("b3", format!("{TRACE}-{SPAN}-1"))]);
    let unsampled = request(&[("traceparent", format!("00-{TRACE}-{SPAN}-00"))]);
    let mut upstream = Vec::new();
    for headers in [&w3c, &b3, &unsampled, &HeaderMap::new()] {
        let span = tracer.start(headers, &ATTRS);
        let mut sent = headers.clone();
        span.inject(&mut sent);
        upstream.push(sent);
        span.finish(&ok());
    }
    tracer.shutdown().await;

    let spans = receiver.received.spans();
    assert_eq!(spans.len(), 2, "only the sampled requests");
    let written = upstream[0]["traceparent"].to_str().unwrap();
    let w3c_span = &spans[0];
    assert_eq!(hex(&w3c_span.trace_id), TRACE);
    assert_eq!(
        hex(&w3c_span.parent_span_id),
        SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(
        written,
        format!("00-{TRACE}-{}-01", hex(&w3c_span.span_id)),
        "the span written upstream is the exported one"
    );
    let b3_written = upstream[1]["b3"].to_str().unwrap();
    assert_eq!(
        b3_written,
        format!("{TRACE}-{}-1-{SPAN}", hex(&spans[1].span_id))
    );
    assert!(!upstream[1].contains_key("traceparent"), "B3 in, B3 out");
    // Not sampled: the decision goes on, nothing is exported.
    assert!(
        upstream[2]["traceparent"]
            .to_str()
            .unwrap()
            .ends_with("-00")
    );
    // No context: a new trace, written as W3C, not sampled at 0%.
    let fresh = upstream[3]["traceparent"].to_str().unwrap();
    assert!(fresh.starts_with("00-") && fresh.ends_with("-00") && !fresh.contains(TRACE));

    assert_eq!(w3c_span.name, "web.shop.svc.cluster.local:80/*");
    for (key, value) in [
        ("http.method", "GET"),
        ("http.url", "http://web.shop/api"),
        ("http.status_code", "200"),
        ("http.protocol", "HTTP/1.1"),
        ("component", "proxy"),
        ("guid:x-request-id", "rid-7"),
        (
            "upstream_cluster",
            "outbound|80||web.shop.svc.cluster.local",
        ),
        ("response_flags", "-"),
        ("response_size", "17"),
        ("istio.canonical_service", "waypoint"),
    ] {
        assert_eq!(attr(w3c_span, key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(attr(w3c_span, "error"), None);
    let exports = receiver.received.0.lock().unwrap().clone();
    let resource = exports[0].resource_spans[0].resource.as_ref().unwrap();
    assert_eq!(resource.attributes[0].key, "service.name");
    assert_eq!(sample(&registry, "marrow_spans_exported_total"), 2);
    assert_eq!(sample(&registry, "marrow_spans_dropped_total"), 0);
}

#[tokio::test]
async fn a_batch_goes_out_when_full_on_the_timer_and_on_shutdown() {
    let receiver = receiver().await;
    let sampled = request(&[("traceparent", format!("00-{TRACE}-{SPAN}-01"))]);

    // Full: batches of 2; 5 spans make 2 exports now and the last 1 at shutdown.
    let mut registry = Registry::default();
    let full = TracerConfig {
        max_batch: 2,
        ..config(receiver.addr)
    };
    let tracer = Tracer::new(&full, &mut registry).unwrap();
    for _ in 0..5 {
        tracer.start(&sampled, &ATTRS).finish(&ok());
    }
    wait_for(|| receiver.received.exports() == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        receiver.received.exports(),
        2,
        "the fifth waits for a full batch"
    );
    tracer.shutdown().await;
    assert_eq!(receiver.received.exports(), 3, "shutdown flushes the rest");
    assert_eq!(receiver.received.spans().len(), 5);

    // The timer: one span, no shutdown.
    let mut registry = Registry::default();
    let timed = TracerConfig {
        flush_interval: Duration::from_millis(100),
        ..config(receiver.addr)
    };
    let tracer = Tracer::new(&timed, &mut registry).unwrap();
    tracer.start(&sampled, &ATTRS).finish(&ok());
    wait_for(|| receiver.received.spans().len() == 6).await;
    tracer.shutdown().await;
    // Spans finished after shutdown are dropped and counted.
    tracer.start(&sampled, &ATTRS).finish(&ok());
    assert_eq!(
        sample(&registry, "marrow_spans_dropped_total{reason=\"shutdown\"}"),
        1
    );
}

#[tokio::test]
async fn a_dead_collector_drops_and_counts_without_blocking_requests() {
    // A port nothing listens on: bound, then released.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let mut registry = Registry::default();
    let config = TracerConfig {
        queue_capacity: 8,
        max_batch: 4,
        export_timeout: Duration::from_millis(500),
        ..config(addr)
    };
    let tracer = Tracer::new(&config, &mut registry).unwrap();
    let sampled = request(&[("traceparent", format!("00-{TRACE}-{SPAN}-01"))]);
    let started = Instant::now();
    for _ in 0..1000 {
        let span = tracer.start(&sampled, &ATTRS);
        let mut upstream = sampled.clone();
        span.inject(&mut upstream);
        span.finish(&ok());
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "1000 requests took {took:?}");
    tracer.shutdown().await;
    let full = sample(
        &registry,
        "marrow_spans_dropped_total{reason=\"queue_full\"}",
    );
    let failed = sample(
        &registry,
        "marrow_spans_dropped_total{reason=\"export_failed\"}",
    );
    assert!(full > 0, "the queue filled");
    assert!(failed > 0, "the exports failed");
    assert_eq!(full + failed, 1000, "every span is accounted for");
    assert_eq!(sample(&registry, "marrow_spans_exported_total"), 0);
}

async fn wait_for(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn shutdown_with_a_hanging_collector_is_bounded_by_one_export_timeout() {
    // Accepts connections (the kernel does) but never answers: every export times out.
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut registry = Registry::default();
    let config = TracerConfig {
        max_batch: 4,
        export_timeout: Duration::from_millis(300),
        ..config(hanging.local_addr().unwrap())
    };
    let tracer = Tracer::new(&config, &mut registry).unwrap();
    let sampled = request(&[("traceparent", format!("00-{TRACE}-{SPAN}-01"))]);
    for _ in 0..40 {
        tracer.start(&sampled, &ATTRS).finish(&ok());
    }
    let started = Instant::now();
    tracer.shutdown().await;
    let took = started.elapsed();
    // 10 batches at 300 ms each would be 3 s: after the first failure the rest is dropped.
    assert!(took < Duration::from_millis(1500), "shutdown took {took:?}");
    let failed = sample(
        &registry,
        "marrow_spans_dropped_total{reason=\"export_failed\"}",
    );
    assert_eq!(failed, 40, "every span counted");
    drop(hanging);
}
