//! How the label values are derived (a peer's labels from its workload, app and version
//! precedence, the owner's name, an enrolled pod without state, label value equality), the
//! request metrics' exposition (names, label names, buckets) and the access log's lines.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::*;
use crate::objects::{PodUid, WorkloadType};
use crate::state::Workload;

fn workload(name: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        uid: PodUid::new(format!("uid-{name}")),
        name: format!("{name}-7d9f8-x2x4l"),
        namespace: "shop".into(),
        service_account: name.into(),
        node_name: None,
        ips: vec![],
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        workload_name: name.into(),
        workload_type: WorkloadType::Deployment,
        canonical_service: name.into(),
        canonical_revision: "latest".into(),
        host_network: false,
        sidecar: false,
    }
}

#[test]
fn app_and_version_prefer_the_kubernetes_labels_then_the_bare_ones() {
    let cluster = LabelValue::fixed("east");
    let qualified = workload(
        "web",
        &[
            ("app", "bare"),
            ("app.kubernetes.io/name", "qualified"),
            ("version", "v1"),
            ("app.kubernetes.io/version", "1.2.3"),
        ],
    );
    let peer = PeerLabels::of(&qualified, &cluster);
    assert_eq!(
        (peer.app.as_str(), peer.version.as_str()),
        ("qualified", "1.2.3")
    );
    let bare = PeerLabels::of(
        &workload("web", &[("app", "bare"), ("version", "v1")]),
        &cluster,
    );
    assert_eq!((bare.app.as_str(), bare.version.as_str()), ("bare", "v1"));
    let none = PeerLabels::of(&workload("web", &[]), &cluster);
    assert_eq!(
        (none.app.as_str(), none.version.as_str()),
        ("unknown", "unknown")
    );
    assert_eq!(
        none.workload.as_str(),
        "web",
        "the owner's name, not the pod's"
    );
    assert_eq!(none.cluster.as_str(), "east");
}

#[test]
fn an_enrolled_pod_without_state_is_its_own_canonical_service() {
    let peer = PeerLabels::pod("client", "shop", &LabelValue::fixed("east"));
    assert_eq!(peer.workload.as_str(), "client");
    assert_eq!(peer.canonical_service.as_str(), "client");
    assert_eq!(peer.canonical_revision.as_str(), "latest");
    assert_eq!(peer.app, LabelValue::UNKNOWN);
}

#[test]
fn label_values_compare_by_text() {
    assert_eq!(LabelValue::new("unknown"), LabelValue::UNKNOWN);
    let labels = ConnectionLabels::unknown(Reporter::Source);
    let mut shared = labels.clone();
    shared.destination_principal = LabelValue::new("unknown");
    let family: Family<ConnectionLabels, Counter> = Family::default();
    family.get_or_create(&labels).inc();
    family.get_or_create(&shared).inc();
    assert_eq!(family.get_or_create(&labels).get(), 2, "one series");
    let unknown_peer = ConnectionLabels::between(Reporter::Source, Some(PeerLabels::UNKNOWN), None);
    family.get_or_create(&unknown_peer).inc();
    assert_eq!(family.get_or_create(&labels).get(), 3, "still one series");
}

/// Labels of one request through a waypoint, between two known workloads, to `web`.
fn request_labels(protocol: RequestProtocol, code: u16, grpc: Option<u32>) -> RequestLabels {
    let cluster = LabelValue::fixed("Kubernetes");
    let source = PeerLabels::of(&workload("client", &[("app", "client")]), &cluster);
    let destination = PeerLabels::of(&workload("web", &[("version", "v1")]), &cluster);
    let connection = ConnectionLabels::between(Reporter::Waypoint, Some(source), Some(destination))
        .with_mutual_tls(
            &crate::identity::SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/client").unwrap(),
            &crate::identity::SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/web").unwrap(),
        );
    let connection = ConnectionLabels {
        destination_service: Some(std::sync::Arc::new(ServiceLabels {
            host: LabelValue::fixed("web.shop.svc.cluster.local"),
            name: LabelValue::fixed("web"),
            namespace: LabelValue::fixed("shop"),
        })),
        ..connection
    };
    RequestLabels {
        response_code: Some(http::StatusCode::from_u16(code).unwrap()),
        grpc_response_status: grpc,
        ..RequestLabels::new(connection, protocol)
    }
}

fn exposition(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

/// The label names of the first sample line of `metric`.
fn label_names(text: &str, metric: &str) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{metric}{{")))
        .unwrap_or_else(|| panic!("no {metric} sample in\n{text}"));
    let labels = &line[metric.len() + 1..line.rfind('}').unwrap()];
    labels
        .split("\",")
        .map(|pair| pair.split('=').next().unwrap().to_owned())
        .collect()
}

#[test]
fn request_metrics_have_istios_names_labels_and_buckets() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = RequestMetrics::register(&mut registry);
    let sample = RequestSample {
        duration: std::time::Duration::from_millis(7),
        request_bytes: 120,
        response_bytes: 2048,
    };
    metrics.record(&request_labels(RequestProtocol::Http, 200, None), &sample);
    let text = exposition(&registry);

    assert!(text.contains("# TYPE istio_requests counter"), "{text}");
    for histogram in [
        "istio_request_duration_milliseconds",
        "istio_request_bytes",
        "istio_response_bytes",
    ] {
        assert!(
            text.contains(&format!("# TYPE {histogram} histogram")),
            "{text}"
        );
        let buckets = text
            .lines()
            .filter(|l| l.starts_with(&format!("{histogram}_bucket{{")))
            .count();
        assert_eq!(
            buckets,
            ISTIO_BUCKETS.len() + 1,
            "{histogram}: 19 bounds and +Inf"
        );
    }
    // Envoy's bounds, in order, 0.5 ms to an hour.
    for bound in [
        "le=\"0.5\"",
        "le=\"1.0\"",
        "le=\"30000.0\"",
        "le=\"3600000.0\"",
        "le=\"+Inf\"",
    ] {
        assert!(text.contains(bound), "{bound} missing in\n{text}");
    }
    // 7 ms lands in the 10 ms bucket, not the 5 ms one.
    let bucket = |le: &str| {
        text.lines()
            .find(|l| {
                l.starts_with("istio_request_duration_milliseconds_bucket{")
                    && l.contains(&format!("le=\"{le}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        (bucket("5.0").as_str(), bucket("10.0").as_str()),
        ("0", "1")
    );

    // Every label Kiali's graph groups by and Istio's dashboards filter on, with Istio's names.
    let names = label_names(&text, "istio_requests_total");
    for expected in [
        "reporter",
        "source_cluster",
        "source_workload_namespace",
        "source_workload",
        "source_canonical_service",
        "source_canonical_revision",
        "source_principal",
        "source_app",
        "source_version",
        "destination_cluster",
        "destination_service_namespace",
        "destination_service",
        "destination_service_name",
        "destination_workload_namespace",
        "destination_workload",
        "destination_canonical_service",
        "destination_canonical_revision",
        "destination_principal",
        "destination_app",
        "destination_version",
        "request_protocol",
        "response_code",
        "grpc_response_status",
        "response_flags",
        "connection_security_policy",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    assert_eq!(names.len(), 25, "no label beyond Istio's: {names:?}");
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"))
        .unwrap();
    for value in [
        "reporter=\"waypoint\"",
        "request_protocol=\"http\"",
        "response_code=\"200\"",
        "grpc_response_status=\"\"",
        "response_flags=\"-\"",
        "connection_security_policy=\"mutual_tls\"",
        "destination_service=\"web.shop.svc.cluster.local\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
    ] {
        assert!(line.contains(value), "{value} missing in {line}");
    }
    assert!(line.ends_with(" 1"), "{line}");
}

#[test]
fn a_grpc_request_is_its_own_series_with_its_status() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = RequestMetrics::register(&mut registry);
    let sample = RequestSample::default();
    metrics.record(&request_labels(RequestProtocol::Http, 200, None), &sample);
    metrics.record(
        &request_labels(RequestProtocol::Grpc, 200, Some(7)),
        &sample,
    );
    metrics.record(
        &request_labels(RequestProtocol::Grpc, 200, Some(7)),
        &sample,
    );
    let mut denied = request_labels(RequestProtocol::Http, 403, None);
    denied.connection.response_flags = Some(ResponseFlag::Deny);
    metrics.record(&denied, &sample);
    let text = exposition(&registry);
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("istio_requests_total{"))
        .collect();
    assert_eq!(series.len(), 3, "{series:?}");
    let grpc = series
        .iter()
        .find(|l| l.contains("request_protocol=\"grpc\""))
        .unwrap();
    assert!(
        grpc.contains("grpc_response_status=\"7\"") && grpc.ends_with(" 2"),
        "{grpc}"
    );
    let http = series
        .iter()
        .find(|l| l.contains("response_code=\"200\"") && l.contains("\"http\""))
        .unwrap();
    assert!(
        http.contains("grpc_response_status=\"\"") && http.ends_with(" 1"),
        "{http}"
    );
    let deny = series
        .iter()
        .find(|l| l.contains("response_code=\"403\""))
        .unwrap();
    assert!(deny.contains("response_flags=\"DENY\""), "{deny}");
    // No response at all is Envoy's code 0.
    let none = RequestLabels {
        response_code: None,
        ..request_labels(RequestProtocol::Http, 200, None)
    };
    metrics.record(&none, &sample);
    assert!(exposition(&registry).contains("response_code=\"0\""));
}

/// A writer the test reads back.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

fn logged(json: bool, run: impl FnOnce()) -> String {
    let out = Captured::default();
    let builder = tracing_subscriber::fmt()
        .with_writer(out.clone())
        .with_ansi(false);
    if json {
        tracing::subscriber::with_default(builder.json().finish(), run);
    } else {
        tracing::subscriber::with_default(builder.finish(), run);
    }
    String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
}

fn a_request() -> RequestLog<'static> {
    RequestLog {
        method: "GET",
        path: "/api?q=1",
        protocol: "HTTP/1.1",
        status: Some(http::StatusCode::OK),
        response_flags: None,
        bytes_received: 12,
        bytes_sent: 345,
        duration: std::time::Duration::from_millis(42),
        user_agent: Some("curl/8.5"),
        request_id: None,
        authority: "web.shop:80",
        upstream: Some("10.1.0.9:8080".parse().unwrap()),
        upstream_cluster: Some("outbound|80||web.shop.svc.cluster.local"),
        downstream: Some("10.1.0.3:51234".parse().unwrap()),
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        src_identity: Some("spiffe://cluster.local/ns/shop/sa/client"),
        dst_identity: Some("spiffe://cluster.local/ns/shop/sa/web"),
    }
}

#[test]
fn the_access_log_writes_one_json_object_per_request() {
    let text = logged(true, || {
        a_request().emit();
        RequestLog {
            status: None,
            response_flags: Some(ResponseFlag::DownstreamTermination),
            upstream: None,
            ..a_request()
        }
        .emit();
    });
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let ok = &lines[0];
    assert_eq!(ok["target"], ACCESS_LOG_TARGET);
    let fields = &ok["fields"];
    assert_eq!(fields["message"], "request");
    assert_eq!(fields["method"], "GET");
    assert_eq!(fields["path"], "/api?q=1");
    assert_eq!(fields["authority"], "web.shop:80");
    assert_eq!(fields["response_code"], "200");
    assert_eq!(fields["response_flags"], "-");
    assert_eq!(fields["duration_ms"], 42);
    assert_eq!(fields["bytes_received"], 12);
    assert_eq!(fields["bytes_sent"], 345);
    assert_eq!(fields["upstream_host"], "10.1.0.9:8080");
    assert_eq!(fields["request_id"], "-");
    assert_eq!(fields["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(
        fields["src_identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(
        fields["dst_identity"],
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    let cut = &lines[1]["fields"];
    assert_eq!(cut["response_code"], "0");
    assert_eq!(cut["response_flags"], "DC");
    assert_eq!(cut["upstream_host"], "-");
}

#[test]
fn the_access_log_text_keeps_envoys_order_and_quotes_hostile_values() {
    let text = logged(false, || {
        RequestLog {
            path: "/a b\n\"forged\" line",
            ..a_request()
        }
        .emit();
    });
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    let order = [
        "request",
        "method=",
        "path=",
        "protocol=",
        "response_code=",
        "response_flags=",
        "bytes_received=",
        "bytes_sent=",
        "duration_ms=",
        "user_agent=",
        "request_id=",
        "authority=",
        "upstream_host=",
        "upstream_cluster=",
        "downstream_remote_address=",
        "trace_id=",
        "src_identity=",
        "dst_identity=",
    ];
    let positions: Vec<usize> = order
        .iter()
        .map(|f| {
            text.find(f)
                .unwrap_or_else(|| panic!("{f} missing in {text}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert!(text.contains(r#"path="/a b\n\"forged\" line""#), "{text}");
    assert!(text.contains(" access: "), "the target: {text}");
}

#[test]
fn grpc_is_told_by_the_content_type_and_its_status_by_grpc_status() {
    let with = |content_type: &'static str| {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        RequestProtocol::of(&headers)
    };
    assert_eq!(with("application/grpc"), RequestProtocol::Grpc);
    assert_eq!(with("application/grpc+proto"), RequestProtocol::Grpc);
    assert_eq!(with("application/grpc-web"), RequestProtocol::Http);
    assert_eq!(with("application/json"), RequestProtocol::Http);
    assert_eq!(
        RequestProtocol::of(&http::HeaderMap::new()),
        RequestProtocol::Http
    );

    let mut trailers = http::HeaderMap::new();
    assert_eq!(grpc_status(&trailers), None);
    trailers.insert("grpc-status", http::HeaderValue::from_static("14"));
    assert_eq!(grpc_status(&trailers), Some(14));
    trailers.insert("grpc-status", http::HeaderValue::from_static("unavailable"));
    assert_eq!(grpc_status(&trailers), None);
}
