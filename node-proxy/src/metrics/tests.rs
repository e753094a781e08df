//! The exposition: Istio's label names and values, and the health metrics. How each label
//! value is derived is tested in `marrow_mesh::telemetry`.

use super::*;
use marrow_mesh::identity::SpiffeId;
use marrow_mesh::objects::PodUid;
use marrow_mesh::state::Workload;
use marrow_mesh::telemetry::*;

/// Istio's standard TCP label set (istio/proxy `istio_stats.cc`, ztunnel
/// `proxy/metrics.rs`).
const ISTIO_TCP_LABELS: [&str; 23] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

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
        workload_type: marrow_mesh::objects::WorkloadType::Deployment,
        canonical_service: name.into(),
        canonical_revision: "latest".into(),
        host_network: false,
        sidecar: false,
    }
}

fn exposition(metrics: &Metrics) -> String {
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text
}

/// The labels of the one sample line of `metric` in `text`, in order.
fn label_pairs(text: &str, metric: &str) -> Vec<(String, String)> {
    let prefix = format!("{metric}{{");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {metric} sample in:\n{text}"));
    let body = &line[prefix.len()..line.rfind('}').unwrap()];
    body.split("\",")
        .map(|pair| {
            let (k, v) = pair.split_once("=\"").unwrap();
            (k.to_owned(), v.trim_end_matches('"').to_owned())
        })
        .collect()
}

#[test]
fn exposition_has_every_istio_tcp_label() {
    let metrics = Metrics::default();
    let cluster = metrics.cluster_id.label();
    let src = workload("client", &[("app", "client")]);
    let dst = workload("web", &[("app", "web"), ("version", "v2")]);
    let td = marrow_mesh::identity::TrustDomain::new("cluster.local").unwrap();
    let ids = [
        SpiffeId::new(&td, "shop", "client").unwrap(),
        SpiffeId::new(&td, "shop", "web").unwrap(),
    ];
    let labels = ConnectionLabels::between(
        Reporter::Destination,
        Some(PeerLabels::of(&src, cluster)),
        Some(PeerLabels::of(&dst, cluster)),
    )
    .with_mutual_tls(&ids[0], &ids[1]);
    for family in [
        &metrics.opened,
        &metrics.closed,
        &metrics.sent_bytes,
        &metrics.received_bytes,
    ] {
        family.get_or_create(&labels).inc();
    }
    let text = exposition(&metrics);
    for metric in [
        "istio_tcp_connections_opened_total",
        "istio_tcp_connections_closed_total",
        "istio_tcp_sent_bytes_total",
        "istio_tcp_received_bytes_total",
    ] {
        let pairs = label_pairs(&text, metric);
        let mut names: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        names.sort_unstable();
        let mut want = ISTIO_TCP_LABELS.to_vec();
        want.sort_unstable();
        assert_eq!(names, want, "{metric}");
    }
    let pairs = label_pairs(&text, "istio_tcp_connections_opened_total");
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).unwrap().1.as_str();
    assert_eq!(pairs[0], ("reporter".into(), "destination".into()));
    assert_eq!(get("source_workload"), "client");
    assert_eq!(
        get("source_principal"),
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(get("destination_workload"), "web");
    assert_eq!(get("destination_workload_namespace"), "shop");
    assert_eq!(get("destination_app"), "web");
    assert_eq!(get("destination_version"), "v2");
    assert_eq!(get("destination_canonical_service"), "web");
    assert_eq!(get("destination_cluster"), DEFAULT_CLUSTER_ID);
    assert_eq!(get("destination_service"), "unknown");
    assert_eq!(get("request_protocol"), "tcp");
    assert_eq!(get("response_flags"), "-");
    assert_eq!(get("connection_security_policy"), "mutual_tls");
    assert!(
        text.contains("# TYPE istio_tcp_connections_closed counter"),
        "{text}"
    );
}

#[test]
fn unknown_peers_are_unknown_everywhere() {
    let metrics = Metrics::new("east");
    metrics
        .opened
        .get_or_create(&ConnectionLabels::unknown(Reporter::Source))
        .inc();
    let pairs = label_pairs(&exposition(&metrics), "istio_tcp_connections_opened_total");
    for (name, value) in &pairs {
        let want = match name.as_str() {
            "reporter" => "source",
            "request_protocol" => "tcp",
            "response_flags" => "-",
            "connection_security_policy" => "none",
            _ => "unknown",
        };
        assert_eq!(value, want, "{name}");
    }
}

#[test]
fn denials_are_counted_by_a_fixed_reason() {
    let decision = |verdict, policy: Option<&str>| Decision {
        verdict,
        policy: policy.map(|name| marrow_mesh::policy::PolicyRef {
            namespace: "shop".into(),
            name: name.into(),
        }),
        rule: policy.map(|_| 0),
        reason: String::new(),
    };
    assert_eq!(DenialReason::of(&decision(Verdict::Allow, Some("p"))), None);
    assert_eq!(DenialReason::of(&decision(Verdict::Allow, None)), None);
    assert_eq!(
        DenialReason::of(&decision(Verdict::Deny, Some("p"))),
        Some(DenialReason::DenyPolicy)
    );
    assert_eq!(
        DenialReason::of(&decision(Verdict::Deny, None)),
        Some(DenialReason::NoAllowMatch)
    );
    let metrics = Metrics::default();
    metrics.policy_denied(DenialReason::MtlsRequired);
    metrics.policy_denied(DenialReason::MtlsRequired);
    metrics.policy_denied(DenialReason::NoAllowMatch);
    let text = exposition(&metrics);
    assert!(
        text.contains("# TYPE marrow_policy_denials counter"),
        "{text}"
    );
    assert!(
        text.contains("marrow_policy_denials_total{reason=\"mtls_required\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("marrow_policy_denials_total{reason=\"no_allow_match\"} 1"),
        "{text}"
    );
}
