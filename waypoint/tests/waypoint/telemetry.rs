//! The waypoint's request telemetry: Istio's request metrics with reporter `waypoint` and the
//! original client as source, and one span per request exported over OTLP, its ids those the
//! waypoint propagated.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use marrow_mesh::trace::otlp::collector::trace_service_server::{TraceService, TraceServiceServer};
use marrow_mesh::trace::otlp::collector::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use marrow_waypoint::config::Percent;
use tokio_util::sync::CancellationToken;

use crate::harness::{TestMesh, body_of, request, vip};

const DENY_DELETE: &str = r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-deletes, namespace: shop}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {methods: [DELETE]}}]
"#;

/// The `istio_requests_total` sample whose labels include every one of `labels`.
fn requests_total(metrics: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test]
async fn requests_are_counted_with_istios_labels_as_the_waypoint() {
    let mesh = TestMesh::start_with_state(40, &[1], DENY_DELETE).await;
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(40), 80)).await;
    for _ in 0..3 {
        let response = http.send_request(request(Method::GET, "/")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        response.into_body().collect().await.unwrap();
    }
    let response = http
        .send_request(request(Method::DELETE, "/x"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    response.into_body().collect().await.unwrap();

    // A client that goes away before its answer: recorded as DC, no response code.
    {
        let (client, mut slow) = mesh.http1(SocketAddr::new(vip(40), 80)).await;
        let pending =
            tokio::spawn(async move { slow.send_request(request(Method::GET, "/slow")).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        pending.abort();
        drop(client);
    }
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = body_of(mesh.waypoint.metrics_addr, "/metrics").await;
        if metrics.contains("response_flags=\"DC\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let common = [
        "reporter=\"waypoint\"",
        "source_workload=\"client\"",
        "source_workload_namespace=\"shop\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
        "destination_service=\"web.shop.svc.cluster.local\"",
        "destination_service_name=\"web\"",
        "destination_service_namespace=\"shop\"",
        "request_protocol=\"http\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let mut ok = common.to_vec();
    ok.extend([
        "response_code=\"200\"",
        "response_flags=\"-\"",
        "destination_workload=\"web-1\"",
        "destination_principal=\"spiffe://cluster.local/ns/shop/sa/web\"",
    ]);
    assert_eq!(requests_total(&metrics, &ok), Some(3.0), "{metrics}");
    let mut denied = common.to_vec();
    denied.extend(["response_code=\"403\"", "response_flags=\"DENY\""]);
    assert_eq!(requests_total(&metrics, &denied), Some(1.0), "{metrics}");
    let mut gone = common.to_vec();
    gone.extend(["response_code=\"0\"", "response_flags=\"DC\""]);
    assert_eq!(requests_total(&metrics, &gone), Some(1.0), "{metrics}");
    assert!(
        metrics.contains("istio_request_duration_milliseconds_bucket{")
            && metrics.contains("istio_request_bytes_bucket{")
            && metrics.contains("istio_response_bytes_bucket{"),
        "{metrics}"
    );
}

/// What the OTLP receiver got.
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn each_request_is_a_span_child_of_the_callers_and_parent_of_the_upstreams() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = listener.local_addr().unwrap();
    let received = Received::default();
    let stop = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let mesh = TestMesh::start_with(41, &[1], |config| {
        config.tracing_collector = Some(collector.to_string());
        config.tracing_sampling = Percent::from_hundredths(0);
    })
    .await;
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(41), 80)).await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traced = Request::get("/traced")
        .header("host", "web.shop")
        .header("traceparent", format!("00-{trace}-{caller_span}-01"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = http.send_request(traced).await.unwrap();
    let upstream = response.headers()["x-echo-traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    let request_id = response.headers()["x-echo-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    response.into_body().collect().await.unwrap();
    // Sampling 0 and no caller decision: a new trace, passed on as not sampled (as Envoy does,
    // so the services after it agree), and no span exported.
    let response = http
        .send_request(request(Method::GET, "/untraced"))
        .await
        .unwrap();
    let unsampled = response.headers()["x-echo-traceparent"].to_str().unwrap();
    assert!(
        unsampled.ends_with("-00") && !unsampled.contains(trace),
        "{unsampled}"
    );
    response.into_body().collect().await.unwrap();

    let parts: Vec<&str> = upstream.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", trace, "01"),
        "{upstream}"
    );
    let span_id = parts[2];
    assert_ne!(
        span_id, caller_span,
        "the waypoint's own span goes upstream"
    );
    assert_eq!(
        request_id.len(),
        36,
        "a generated x-request-id: {request_id}"
    );

    // Draining flushes the queue.
    mesh.waypoint.stop(Duration::from_secs(1)).await;
    let spans: Vec<_> = received
        .0
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .flat_map(|r| r.scope_spans.iter())
        .flat_map(|s| s.spans.iter().cloned())
        .collect();
    stop.cancel();
    assert_eq!(spans.len(), 1, "only the sampled request: {spans:?}");
    let span = &spans[0];
    assert_eq!(hex(&span.trace_id), trace);
    assert_eq!(hex(&span.parent_span_id), caller_span);
    assert_eq!(hex(&span.span_id), span_id);
    assert_eq!(span.name, "web.shop.svc.cluster.local:80/*");
    let attribute = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| format!("{:?}", kv.value))
    };
    assert!(attribute("http.status_code").is_some_and(|v| v.contains("200")));
    assert!(attribute("guid:x-request-id").is_some_and(|v| v.contains(&request_id)));
}

/// Istio's MeshConfig naming the receiver as the `otel` provider, its Service (the VIP is the
/// receiver's loopback address: the exporter dials what the state resolves, with no map), and a
/// mesh-wide Telemetry sampling `percent` with `provider`.
fn telemetry_api(receiver: SocketAddr, provider: &str, percent: u32) -> String {
    format!(
        r#"
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: istio, namespace: istio-system}}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {{service: otel-collector.observability.svc.cluster.local, port: {port}}}
    - name: zipkin
      zipkin: {{service: otel-collector.observability.svc.cluster.local, port: {port}}}
---
apiVersion: v1
kind: Service
metadata: {{name: otel-collector, namespace: observability}}
spec: {{clusterIP: {ip}, ports: [{{name: grpc-otlp, port: {port}}}]}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  tracing:
  - providers: [{{name: {provider}}}]
    randomSamplingPercentage: {percent}
"#,
        ip = receiver.ip(),
        port = receiver.port(),
    )
}

/// Polls until `check` holds (the state file is re-read every 50 ms here).
async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

fn span_count(received: &Received) -> usize {
    received
        .0
        .lock()
        .unwrap()
        .iter()
        .flat_map(|r| r.resource_spans.iter())
        .flat_map(|r| r.scope_spans.iter())
        .map(|s| s.spans.len())
        .sum()
}

/// No tracing flag: the Telemetry API in the state names the collector. At 100% a request's
/// span arrives (flushed when the configuration changes); at 0%, and with the Telemetry
/// removed (back to the flags: none), no more spans; a zipkin provider is set aside and counted.
#[tokio::test]
async fn the_telemetry_api_names_the_collector_and_its_changes_take_effect() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver = listener.local_addr().unwrap();
    let received = Received::default();
    let stop = CancellationToken::new();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(received.clone()))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let state = Arc::new(Mutex::new(None));
    let keep = state.clone();
    let mesh = TestMesh::start_with(42, &[1], move |config| {
        assert_eq!(config.tracing_collector, None);
        config.state_poll = Duration::from_millis(50);
        let path = config.state_file.clone().unwrap();
        let original = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            format!("{original}{}", telemetry_api(receiver, "otel", 100)),
        )
        .unwrap();
        *keep.lock().unwrap() = Some((path, original));
    })
    .await;
    let (path, original) = state.lock().unwrap().clone().unwrap();
    let telemetry = &mesh.waypoint.context.telemetry;
    until("the telemetry api's collector", || {
        telemetry.tracer_config().collector == Some(receiver.to_string())
    })
    .await;
    assert_eq!(telemetry.tracer_config().sampling_percent, 100.0);
    let source = telemetry.tracing_source();
    assert!(
        source.contains("Telemetry istio-system/mesh-default") && source.contains("provider otel"),
        "{source}"
    );
    let admin: serde_json::Value =
        serde_json::from_str(&body_of(mesh.waypoint.admin_addr, "/").await).unwrap();
    assert_eq!(admin["tracing"], serde_json::json!(source), "{admin}");

    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(42), 80)).await;
    let response = http
        .send_request(request(Method::GET, "/one"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body().collect().await.unwrap();

    // 0%: the change flushes the old exporter (the first span arrives), then nothing more.
    std::fs::write(
        &path,
        format!("{original}{}", telemetry_api(receiver, "otel", 0)),
    )
    .unwrap();
    until("sampling 0", || {
        telemetry.tracer_config().sampling_percent == 0.0
    })
    .await;
    until("the first span", || span_count(&received) == 1).await;
    let response = http
        .send_request(request(Method::GET, "/two"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();

    // Removed: the flags again (no collector): tracing off; the 0% exporter had nothing.
    std::fs::write(&path, &original).unwrap();
    until("back to the flags", || {
        telemetry.tracer_config().collector.is_none()
    })
    .await;
    let response = http
        .send_request(request(Method::GET, "/three"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();
    assert!(telemetry.tracing_source().starts_with("flags"));

    // A zipkin provider: set aside, tracing stays off, counted.
    std::fs::write(
        &path,
        format!("{original}{}", telemetry_api(receiver, "zipkin", 100)),
    )
    .unwrap();
    until("the zipkin provider reported", || {
        telemetry.tracing_source().contains("zipkin")
    })
    .await;
    assert!(telemetry.tracer_config().collector.is_none());
    let metrics = body_of(mesh.waypoint.metrics_addr, "/metrics").await;
    assert!(
        metrics
            .contains("marrow_tracing_provider_rejected_total{reason=\"unsupported_provider\"} 1"),
        "{metrics}"
    );
    let response = http
        .send_request(request(Method::GET, "/four"))
        .await
        .unwrap();
    response.into_body().collect().await.unwrap();

    mesh.waypoint.stop(Duration::from_secs(1)).await;
    stop.cancel();
    assert_eq!(span_count(&received), 1, "only the request at 100%");
}

/// Where a Telemetry applies it wins over the flags, as in Istio, whose only knob it is; a
/// Telemetry for another waypoint leaves the flags in force.
#[tokio::test]
async fn a_telemetry_that_applies_wins_over_the_flags() {
    let receiver: SocketAddr = "127.0.0.1:4317".parse().unwrap();
    let flag = "127.0.0.1:9".to_owned();
    let flagged = flag.clone();
    let mesh = TestMesh::start_with(43, &[1], move |config| {
        config.tracing_collector = Some(flagged);
        config.state_poll = Duration::from_millis(50);
        let path = config.state_file.clone().unwrap();
        let original = std::fs::read_to_string(&path).unwrap();
        // The namespace `shop`'s Telemetry targets another Gateway: only the root's applies.
        let other = "\n---\napiVersion: telemetry.istio.io/v1alpha1\nkind: Telemetry\nmetadata: {name: other, namespace: shop}\nspec:\n  targetRefs: [{kind: Gateway, name: other}]\n  tracing: [{randomSamplingPercentage: 77}]\n";
        std::fs::write(
            &path,
            format!("{original}{}{other}", telemetry_api(receiver, "otel", 30)),
        )
        .unwrap();
    })
    .await;
    let telemetry = &mesh.waypoint.context.telemetry;
    until("the telemetry api's collector", || {
        telemetry.tracer_config().collector == Some(receiver.to_string())
    })
    .await;
    assert_eq!(telemetry.tracer_config().sampling_percent, 30.0);
    mesh.waypoint.stop(Duration::from_secs(1)).await;
}
