//! A waypoint Gateway's objects: its ServiceAccount, Deployment and Service, as istiod's
//! `waypoint` template renders them (manifests/charts/istio-control/istio-discovery/files/
//! waypoint.yaml and pilot/pkg/config/kube/gatewaycommon/deploymentcontroller.go), running
//! marrow's waypoint instead of Envoy.
//!
//! Invariants: every object is in the Gateway's namespace, named after it (or its naming
//! annotations), labelled `gateway.istio.io/managed=istio.io-mesh-controller` (so a later
//! apply may manage it) and owned by the Gateway (so the API server's garbage collector
//! removes it with the Gateway). Rendering is pure: the same Gateway and settings give the same
//! objects, which is what makes a re-apply a no-op.

use serde_json::{Map, Value, json};

use crate::config::ControllerSettings;
use crate::gateway::Waypoint;

/// Label naming the Gateway of an object (and selecting its pods).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Label naming the Gateway's class.
pub const GATEWAY_CLASS_LABEL: &str = "gateway.networking.k8s.io/gateway-class-name";
/// Label that says a controller manages an object (istiod's `canManage` looks for it).
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// Its value: the controller `istio.io/mesh-controller` with `/` replaced by `-`.
pub const MANAGED_VALUE: &str = "istio.io-mesh-controller";
/// The waypoint's readiness port (`/healthz/ready`), and the Service's `status-port`.
pub const STATUS_PORT: u16 = 15021;
/// The waypoint's Prometheus port (`/metrics`).
pub const METRICS_PORT: u16 = 15020;
/// The uid and gid the waypoint runs as (Istio's proxy uid).
pub const PROXY_UID: i64 = 1337;

/// Annotations istiod does not copy from the Gateway onto its objects.
const NOT_COPIED: [&str; 4] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    "gateway.istio.io/name-override",
    "gateway.istio.io/service-account",
    "gateway.istio.io/controller-version",
];
/// Where the projected token and the roots are mounted in the waypoint container.
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const ROOTS_DIR: &str = "/var/run/secrets/istio";

/// The three objects of a waypoint, in the order they are applied.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// v1 ServiceAccount.
    pub service_account: Value,
    /// apps/v1 Deployment.
    pub deployment: Value,
    /// v1 Service.
    pub service: Value,
}

impl Rendered {
    /// The objects, ServiceAccount first (the Deployment's pods need it).
    pub fn objects(&self) -> [&Value; 3] {
        [&self.service_account, &self.deployment, &self.service]
    }
}

/// A string map as JSON.
fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    Value::Object(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_owned(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

/// The Gateway's labels with the two naming the Gateway on top: every object's labels
/// (istiod copies the Gateway's labels, `EnableGatewayAPICopyLabelsAnnotations`).
pub(crate) fn labels(w: &Waypoint, managed: bool) -> Value {
    let mut labels: Vec<(&str, &str)> = w
        .labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    labels.push((GATEWAY_NAME_LABEL, &w.name));
    labels.push((GATEWAY_CLASS_LABEL, &w.class));
    if managed {
        labels.push((MANAGED_LABEL, MANAGED_VALUE));
    }
    map(labels)
}

/// The Gateway's annotations but the naming ones.
fn annotations(w: &Waypoint) -> Vec<(&str, &str)> {
    w.annotations
        .iter()
        .filter(|(k, _)| !NOT_COPIED.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// `metadata` of one object: name, namespace, labels (all managed: istiod's `apply` stamps the
/// label onto every object), annotations, and the owner reference to the Gateway exactly as
/// istiod's template writes it (no `controller`, no `blockOwnerDeletion`).
fn metadata(w: &Waypoint, name: &str, extra_annotations: &[(&str, &str)]) -> Value {
    let mut notes = annotations(w);
    notes.extend_from_slice(extra_annotations);
    json!({
        "name": name,
        "namespace": w.namespace,
        "labels": labels(w, true),
        "annotations": map(notes),
        "ownerReferences": [{
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "name": w.name,
            "uid": w.uid,
        }],
    })
}

/// Renders a waypoint's objects.
pub fn render(w: &Waypoint, settings: &ControllerSettings) -> Rendered {
    Rendered {
        service_account: json!({
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": metadata(w, &w.service_account, &[]),
        }),
        deployment: deployment(w, settings),
        service: service(w),
    }
}

fn deployment(w: &Waypoint, settings: &ControllerSettings) -> Value {
    let mut pod_labels = map([
        ("sidecar.istio.io/inject", "false"),
        ("istio.io/dataplane-mode", "none"),
        (
            "service.istio.io/canonical-name",
            w.deployment_name.as_str(),
        ),
        ("service.istio.io/canonical-revision", "latest"),
    ]);
    // The Gateway's labels override the defaults above, as in istiod's template.
    if let (Some(pod), Value::Object(gateway)) = (pod_labels.as_object_mut(), labels(w, true)) {
        pod.extend(gateway);
    }
    let metrics_port = METRICS_PORT.to_string();
    let mut pod_annotations = annotations(w);
    pod_annotations.extend([
        ("istio.io/rev", "default"),
        ("prometheus.io/path", "/metrics"),
        ("prometheus.io/port", metrics_port.as_str()),
        ("prometheus.io/scrape", "true"),
    ]);
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(w, &w.deployment_name, &[]),
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME_LABEL: w.name}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": map(pod_annotations)},
                "spec": {
                    "serviceAccountName": w.service_account,
                    "containers": [waypoint_container(w, settings)],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{
                            "serviceAccountToken": {"audience": settings.ca_audience,
                                "expirationSeconds": 43200, "path": "istio-token"}}]}},
                        {"name": "istiod-ca-cert",
                            "configMap": {"name": settings.roots_config_map}},
                    ],
                },
            },
        },
    })
}

/// The waypoint container: the one place its command, flags and environment are written, so
/// they follow the waypoint program's settings in one edit.
pub fn waypoint_container(w: &Waypoint, settings: &ControllerSettings) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    json!({
        // istiod's name for the proxy container: `kubectl logs -c istio-proxy` keeps working.
        "name": "istio-proxy",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        // The waypoint program of the marrow image (xtask/src/image.rs lays it out there).
        "command": ["/usr/bin/waypoint"],
        // The waypoint program's settings (waypoint/src/config.rs): which Gateway it serves and
        // its identity, from the downward API as istiod's template passes them; then Istio's
        // pod variables, for logs and baggage.
        "env": [
            {"name": "MARROW_GATEWAY_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "MARROW_GATEWAY_NAME", "value": w.name},
            {"name": "MARROW_SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "INSTANCE_IP", "valueFrom": field("status.podIP")},
            {"name": "NODE_NAME", "valueFrom": field("spec.nodeName")},
            {"name": "MARROW_TRUST_DOMAIN", "value": settings.trust_domain},
            {"name": "MARROW_CA_ADDRESS", "value": settings.ca_address},
            {"name": "MARROW_CA_TOKEN_FILE", "value": format!("{TOKEN_DIR}/istio-token")},
            {"name": "MARROW_CA_ROOTS", "value": format!("{ROOTS_DIR}/root-cert.pem")},
            {"name": "MARROW_KUBE", "value": "true"},
            {"name": "MARROW_LOG_JSON", "value": "true"},
        ],
        "ports": [
            {"containerPort": 15008, "name": "hbone", "protocol": "TCP"},
            {"containerPort": METRICS_PORT, "name": "metrics", "protocol": "TCP"},
            {"containerPort": STATUS_PORT, "name": "status-port", "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT, "scheme": "HTTP"},
            "failureThreshold": 4, "periodSeconds": 15, "timeoutSeconds": 1,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT, "scheme": "HTTP"},
            "failureThreshold": 30, "periodSeconds": 1, "timeoutSeconds": 1,
        },
        "securityContext": {
            "privileged": false,
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istio-token", "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": "istiod-ca-cert", "mountPath": ROOTS_DIR, "readOnly": true},
        ],
    })
}

/// The Service: `status-port` first, then one port per listener port, named after the
/// listener, `appProtocol` its protocol in lower case (deploymentcontroller.go
/// `extractServicePorts`), selecting the Gateway's pods.
fn service(w: &Waypoint) -> Value {
    let mut ports = vec![json!({"name": "status-port", "port": STATUS_PORT,
        "protocol": "TCP", "appProtocol": "tcp"})];
    let mut seen_ports = Vec::new();
    let mut used_names = vec!["status-port".to_owned()];
    for listener in &w.listeners {
        if seen_ports.contains(&listener.port) {
            continue;
        }
        seen_ports.push(listener.port);
        let name = port_name(&listener.name, listener.port, &used_names);
        used_names.push(name.clone());
        ports.push(
            json!({"name": name, "port": listener.port, "protocol": "TCP",
            "appProtocol": listener.protocol.to_lowercase()}),
        );
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(w, &w.deployment_name,
            &[("networking.istio.io/traffic-distribution", "PreferClose")]),
        "spec": {
            "type": "ClusterIP",
            "ipFamilyPolicy": "PreferDualStack",
            "ports": ports,
            "selector": {GATEWAY_NAME_LABEL: w.name},
        },
    })
}

/// A listener name as a Service port name: dots to dashes, at most 63 characters, made unique
/// with the port number (`sanitizeListenerNameForPort`, `uniquePortName`).
fn port_name(listener: &str, port: u16, used: &[String]) -> String {
    let mut name: String = listener.replace('.', "-").chars().take(63).collect();
    let mut suffix = format!("-{port}");
    let base = name.clone();
    while used.contains(&name) {
        let keep = 63usize.saturating_sub(suffix.len());
        name = format!("{}{suffix}", base.chars().take(keep).collect::<String>());
        suffix.push('x');
    }
    name
}

/// Whether `have` holds every field of `want` with the same value: maps key by key, lists
/// element by element (the API server adds defaults inside list elements, e.g. a container's
/// `terminationMessagePath`), anything else equal.
pub fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(k, w)| have.get(k).is_some_and(|h| contains(h, w)) || w.is_null()),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| contains(h, w))
        }
        (have, want) => have == want,
    }
}
