//! The Telemetry API's precedence for a waypoint's tracing, each rule with a case where it
//! applies and one where it does not.

use serde_json::json;

use super::*;

const ROOT: &str = "istio-system";
const MESH: &str = "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel-collector.observability.svc.cluster.local, port: 4317}\n- name: zipkin\n  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}\n";
const COLLECTOR: &str = "10.96.0.50:4317";

fn raw(kind: RawKind, kind_name: &str, body: serde_json::Value) -> RawObject {
    crate::state::k8s::raw_object(kind, kind_name, body).unwrap()
}

fn telemetry(
    version: &str,
    ns: &str,
    name: &str,
    created: &str,
    spec: serde_json::Value,
) -> RawObject {
    raw(
        RawKind::Telemetry,
        "Telemetry",
        json!({"apiVersion": format!("telemetry.istio.io/{version}"), "kind": "Telemetry",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": created},
            "spec": spec}),
    )
}

fn mesh_config(ns: &str, mesh: &str) -> RawObject {
    raw(
        RawKind::MeshConfig,
        "ConfigMap",
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "istio", "namespace": ns}, "data": {"mesh": mesh}}),
    )
}

fn collector_service() -> RawObject {
    raw(
        RawKind::Service,
        "Service",
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "otel-collector", "namespace": "observability"},
            "spec": {"clusterIP": "10.96.0.50", "ports": [{"name": "grpc", "port": 4317}]}}),
    )
}

fn tracing(percent: f64) -> serde_json::Value {
    json!({"tracing": [{"providers": [{"name": "otel"}], "randomSamplingPercentage": percent}]})
}

/// The answer for the waypoint `shop/waypoint` (pod label `app: waypoint`).
fn answer(objects: &[RawObject]) -> Option<TelemetryTracing> {
    let refs: Vec<&RawObject> = objects.iter().collect();
    let labels = BTreeMap::from([
        ("app".to_owned(), "waypoint".to_owned()),
        (
            "gateway.networking.k8s.io/gateway-name".to_owned(),
            "waypoint".to_owned(),
        ),
    ]);
    let waypoint = TracedWaypoint {
        namespace: "shop",
        gateway: "waypoint",
        labels: &labels,
    };
    tracing_from(&refs, ROOT, &waypoint, |h, p| resolve(&refs, h, p))
}

fn with_mesh(mut objects: Vec<RawObject>) -> Vec<RawObject> {
    objects.push(mesh_config(ROOT, MESH));
    objects.push(collector_service());
    objects
}

fn exported(answer: &Option<TelemetryTracing>) -> Option<f64> {
    match answer.as_ref().map(|a| &a.outcome) {
        Some(Outcome::Export {
            collector,
            sampling_percent,
        }) => {
            assert_eq!(collector.to_string(), COLLECTOR);
            Some(*sampling_percent)
        }
        _ => None,
    }
}

#[test]
fn nothing_applies_without_telemetry_or_default_provider() {
    assert_eq!(answer(&with_mesh(vec![])), None);
    // A Telemetry elsewhere, or one with no tracing entry, says nothing either.
    let other_ns = telemetry("v1", "other", "t", "", tracing(10.0));
    let metrics_only = telemetry("v1", "shop", "m", "", json!({"metrics": []}));
    assert_eq!(answer(&with_mesh(vec![other_ns, metrics_only])), None);
}

#[test]
fn root_namespace_telemetry_applies_mesh_wide() {
    let root = telemetry("v1", ROOT, "mesh-default", "", tracing(10.0));
    let got = answer(&with_mesh(vec![root]));
    assert_eq!(exported(&got), Some(10.0));
    assert_eq!(
        got.unwrap().telemetries[0].to_string(),
        "Telemetry istio-system/mesh-default"
    );
    // The same object in a namespace that is neither root nor the waypoint's: no.
    let elsewhere = telemetry("v1", "billing", "mesh-default", "", tracing(10.0));
    assert_eq!(answer(&with_mesh(vec![elsewhere])), None);
}

#[test]
fn namespace_overrides_root_and_workload_overrides_namespace() {
    let root = telemetry("v1", ROOT, "root", "", tracing(10.0));
    let ns = telemetry("v1", "shop", "ns", "", tracing(20.0));
    assert_eq!(exported(&answer(&with_mesh(vec![root, ns]))), Some(20.0));
    let root = telemetry("v1", ROOT, "root", "", tracing(10.0));
    let ns = telemetry("v1", "shop", "ns", "", tracing(20.0));
    let by_selector = telemetry(
        "v1",
        "shop",
        "wl",
        "",
        json!({"selector": {"matchLabels": {"app": "waypoint"}},
            "tracing": [{"randomSamplingPercentage": 30.0}]}),
    );
    assert_eq!(
        exported(&answer(&with_mesh(vec![root, ns, by_selector]))),
        Some(30.0)
    );
}

#[test]
fn selector_must_match_the_waypoints_labels() {
    let root = telemetry("v1", ROOT, "root", "", tracing(10.0));
    let other = telemetry(
        "v1",
        "shop",
        "wl",
        "",
        json!({"selector": {"matchLabels": {"app": "reviews"}},
            "tracing": [{"randomSamplingPercentage": 30.0}]}),
    );
    // A selector is not namespace-wide either: the root's 10% stays.
    assert_eq!(exported(&answer(&with_mesh(vec![root, other]))), Some(10.0));
}

#[test]
fn target_refs_to_the_gateway_apply_and_to_another_do_not() {
    let root = telemetry("v1", ROOT, "root", "", tracing(10.0));
    let ours = telemetry(
        "v1",
        "shop",
        "ours",
        "",
        json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "waypoint"}],
            "tracing": [{"randomSamplingPercentage": 50.0}]}),
    );
    assert_eq!(exported(&answer(&with_mesh(vec![root, ours]))), Some(50.0));
    let root = telemetry("v1", ROOT, "root", "", tracing(10.0));
    let theirs = telemetry(
        "v1",
        "shop",
        "theirs",
        "",
        json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "other"}],
            "tracing": [{"randomSamplingPercentage": 50.0}]}),
    );
    assert_eq!(
        exported(&answer(&with_mesh(vec![root, theirs]))),
        Some(10.0)
    );
}

#[test]
fn providers_and_sampling_come_from_different_levels() {
    // The root names the provider, the namespace only the sampling.
    let root = telemetry(
        "v1",
        ROOT,
        "root",
        "",
        json!({"tracing": [{"providers": [{"name": "otel"}]}]}),
    );
    let ns = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"randomSamplingPercentage": 42.0}]}),
    );
    let got = answer(&with_mesh(vec![root, ns]));
    assert_eq!(exported(&got), Some(42.0));
    assert_eq!(got.unwrap().provider.as_deref(), Some("otel"));
    // The namespace names another provider: it wins over the root's.
    let root = telemetry("v1", ROOT, "root", "", tracing(10.0));
    let ns = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"providers": [{"name": "zipkin"}]}]}),
    );
    let got = answer(&with_mesh(vec![root, ns])).unwrap();
    assert_eq!(got.provider.as_deref(), Some("zipkin"));
}

#[test]
fn sampling_falls_back_to_meshconfig_then_one_percent() {
    let ns = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"providers": [{"name": "otel"}]}]}),
    );
    assert_eq!(
        exported(&answer(&with_mesh(vec![ns]))),
        Some(ISTIO_DEFAULT_SAMPLING)
    );
    let ns = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"providers": [{"name": "otel"}]}]}),
    );
    let mesh = format!("{MESH}defaultConfig:\n  tracing:\n    sampling: 25\n");
    let got = answer(&[ns, mesh_config(ROOT, &mesh), collector_service()]);
    assert_eq!(exported(&got), Some(25.0));
}

#[test]
fn default_providers_apply_without_any_telemetry() {
    let mesh = format!("{MESH}defaultProviders:\n  tracing: [otel]\n");
    let got = answer(&[mesh_config(ROOT, &mesh), collector_service()]);
    assert_eq!(exported(&got), Some(ISTIO_DEFAULT_SAMPLING));
    assert!(got.unwrap().telemetries.is_empty());
    // A MeshConfig ConfigMap outside the root namespace is not the mesh's.
    let got = answer(&[mesh_config("shop", &mesh), collector_service()]);
    assert_eq!(got, None);
}

#[test]
fn disable_span_reporting_turns_it_off_and_a_lower_level_back_on() {
    let root = telemetry(
        "v1",
        ROOT,
        "root",
        "",
        json!({"tracing": [{"providers": [{"name": "otel"}], "disableSpanReporting": true}]}),
    );
    let got = answer(&with_mesh(vec![root]));
    assert_eq!(got.unwrap().outcome, Outcome::Disabled);
    let root = telemetry(
        "v1",
        ROOT,
        "root",
        "",
        json!({"tracing": [{"providers": [{"name": "otel"}], "disableSpanReporting": true}]}),
    );
    let ns = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"disableSpanReporting": false}]}),
    );
    assert_eq!(
        exported(&answer(&with_mesh(vec![root, ns]))),
        Some(ISTIO_DEFAULT_SAMPLING)
    );
}

#[test]
fn a_provider_meshconfig_does_not_define_is_reported() {
    let ns = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"providers": [{"name": "jaeger"}]}]}),
    );
    let got = answer(&with_mesh(vec![ns])).unwrap();
    assert_eq!(got.outcome, Outcome::UnknownProvider);
    assert_eq!(got.outcome.reason(), "unknown_provider");
    // Names match case-insensitively, as istiod's fetchProvider.
    let ns = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"providers": [{"name": "OTel"}]}]}),
    );
    assert_eq!(
        exported(&answer(&with_mesh(vec![ns]))),
        Some(ISTIO_DEFAULT_SAMPLING)
    );
}

#[test]
fn a_provider_that_is_not_opentelemetry_is_set_aside() {
    let ns = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"providers": [{"name": "zipkin"}]}]}),
    );
    let got = answer(&with_mesh(vec![ns])).unwrap();
    assert_eq!(
        got.outcome,
        Outcome::Unsupported {
            kind: "zipkin".to_owned()
        }
    );
    assert!(got.to_string().contains("not supported"), "{got}");
}

#[test]
fn an_unresolvable_collector_is_reported_and_resolves_later() {
    let ns = || telemetry("v1", "shop", "ns", "", tracing(5.0));
    let got = answer(&[ns(), mesh_config(ROOT, MESH)]).unwrap();
    assert_eq!(
        got.outcome,
        Outcome::Unresolved {
            service: "otel-collector.observability.svc.cluster.local:4317".to_owned()
        }
    );
    // The Service appears (the next state change): resolved.
    assert_eq!(exported(&answer(&with_mesh(vec![ns()]))), Some(5.0));
    // The Service without that port does not resolve.
    let wrong_port = "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel-collector.observability, port: 4318}\n";
    let got = answer(&[ns(), mesh_config(ROOT, wrong_port), collector_service()]).unwrap();
    assert!(matches!(got.outcome, Outcome::Unresolved { .. }));
}

#[test]
fn the_collector_host_forms() {
    let objects = [collector_service()];
    let refs: Vec<&RawObject> = objects.iter().collect();
    for host in [
        "otel-collector.observability",
        "otel-collector.observability.svc",
        "otel-collector.observability.svc.cluster.local",
        "observability/otel-collector.observability.svc.cluster.local",
    ] {
        assert_eq!(
            resolve(&refs, host, 4317).map(|a| a.to_string()).as_deref(),
            Some(COLLECTOR),
            "{host}"
        );
    }
    for host in [
        "otel-collector",
        "otel-collector.other",
        "otel-collector.observability.com",
    ] {
        assert_eq!(resolve(&refs, host, 4317), None, "{host}");
    }
    assert_eq!(
        resolve(&refs, "192.0.2.7", 4317)
            .map(|a| a.to_string())
            .as_deref(),
        Some("192.0.2.7:4317")
    );
}

#[test]
fn v1alpha1_reads_as_v1() {
    let ns = telemetry("v1alpha1", "shop", "ns", "", tracing(7.0));
    assert_eq!(exported(&answer(&with_mesh(vec![ns]))), Some(7.0));
    assert_eq!(
        RawKind::of("telemetry.istio.io/v1alpha1", "Telemetry"),
        Some(RawKind::Telemetry)
    );
    assert_eq!(RawKind::of("telemetry.istio.io/v2", "Telemetry"), None);
    assert_eq!(RawKind::of("v1", "ConfigMap"), None);
}

#[test]
fn the_oldest_namespace_wide_telemetry_counts() {
    let older = telemetry("v1", "shop", "b", "2024-01-01T00:00:00Z", tracing(11.0));
    let newer = telemetry("v1", "shop", "a", "2025-01-01T00:00:00Z", tracing(22.0));
    assert_eq!(
        exported(&answer(&with_mesh(vec![newer, older]))),
        Some(11.0)
    );
}

#[test]
fn client_mode_entries_are_not_the_waypoints() {
    let root = telemetry("v1", ROOT, "root", "", tracing(10.0));
    let client = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"match": {"mode": "CLIENT"}, "randomSamplingPercentage": 90.0}]}),
    );
    assert_eq!(
        exported(&answer(&with_mesh(vec![root, client]))),
        Some(10.0)
    );
    let root = telemetry("v1", ROOT, "root", "", tracing(10.0));
    let server = telemetry(
        "v1",
        "shop",
        "ns",
        "",
        json!({"tracing": [{"match": {"mode": "SERVER"}, "randomSamplingPercentage": 90.0}]}),
    );
    assert_eq!(
        exported(&answer(&with_mesh(vec![root, server]))),
        Some(90.0)
    );
}

#[test]
fn a_malformed_meshconfig_turns_tracing_off_with_the_reason() {
    let ns = telemetry("v1", "shop", "ns", "", tracing(10.0));
    let got = answer(&[ns, mesh_config(ROOT, "extensionProviders: 7\n")]).unwrap();
    assert!(matches!(got.outcome, Outcome::Malformed { .. }), "{got}");
    assert_eq!(got.outcome.reason(), "malformed");
}

/// The state file carries both kinds (v1 and v1alpha1 Telemetries; the ConfigMap `istio` in the
/// root namespace and no other ConfigMap), and [`tracing_for`] answers from the snapshot.
#[test]
fn the_state_file_carries_telemetries_and_the_meshconfig() {
    let yaml = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel
      opentelemetry: {service: otel-collector.observability.svc.cluster.local, port: 4317}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: shop}
data: {mesh: "defaultProviders: {tracing: [zipkin]}"}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: istio-system}
data: {mesh: "defaultProviders: {tracing: [zipkin]}"}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: otel}]
    randomSamplingPercentage: 10
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: shop, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  tracing: [{randomSamplingPercentage: 100}]
---
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: observability}
spec: {clusterIP: 10.96.0.50, ports: [{name: grpc, port: 4317}]}
"#;
    let update =
        crate::state::file::parse(std::path::Path::new("state.yaml"), yaml.as_bytes()).unwrap();
    let snap = crate::state::StateStore::new().apply(update);
    let kinds = |kind| {
        snap.raw_objects()
            .filter(|o| o.kind == kind)
            .map(|o| o.object.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(RawKind::MeshConfig), ["ConfigMap istio-system/istio"]);
    assert_eq!(
        kinds(RawKind::Telemetry),
        ["Telemetry istio-system/mesh-default", "Telemetry shop/shop"]
    );
    let labels = BTreeMap::new();
    let ours = TracedWaypoint {
        namespace: "shop",
        gateway: "waypoint",
        labels: &labels,
    };
    assert_eq!(exported(&tracing_for(&snap, &ours)), Some(100.0));
    let other = TracedWaypoint {
        gateway: "other",
        ..ours
    };
    assert_eq!(exported(&tracing_for(&snap, &other)), Some(10.0));
}
