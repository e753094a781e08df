//! Objects as the API server returns them.

use serde_json::{Value, json};

/// A Namespace, labelled `istio.io/dataplane-mode=ambient` when `ambient`.
pub fn namespace(name: &str, ambient: bool) -> Value {
    let labels = if ambient {
        json!({"kubernetes.io/metadata.name": name, "istio.io/dataplane-mode": "ambient"})
    } else {
        json!({"kubernetes.io/metadata.name": name})
    };
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "uid": format!("ns-{name}"),
            "creationTimestamp": "2026-11-01T10:00:00Z",
            "managedFields": [{"manager": "kubectl", "operation": "Update", "apiVersion": "v1"}]},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})
}

/// A running Pod on `node` with one address `ip`, labelled `app=<name>`, as its ReplicaSet made it.
pub fn pod(namespace: &str, name: &str, node: &str, ip: &str, sa: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace,
            "labels": {"app": name, "pod-template-hash": "5d9c7b8f6d"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": format!("{name}-5d9c7b8f6d"), "uid": "rs-1", "controller": true,
                "blockOwnerDeletion": true}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                "apiVersion": "v1", "time": "2026-11-01T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {}}}}]},
        "spec": {"nodeName": node, "serviceAccountName": sa,
            "containers": [{"name": "app", "image": "registry.example/app:1.0",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {}, "terminationMessagePath": "/dev/termination-log"}],
            "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "hostIP": "192.168.0.10", "qosClass": "BestEffort",
            "conditions": [{"type": "Ready", "status": "True"}]}})
}

/// `status.user` of a ServiceAccount token, as a TokenReview reports it; with `pod` (name,
/// uid, node), a token bound to that pod (what a projected token carries).
pub fn service_account_user(namespace: &str, sa: &str, pod: Option<(&str, &str, &str)>) -> Value {
    let mut user = json!({"username": format!("system:serviceaccount:{namespace}:{sa}"),
        "uid": format!("sa-uid-{namespace}-{sa}"),
        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{namespace}"),
            "system:authenticated"]});
    if let Some((name, uid, node)) = pod {
        user["extra"] = json!({
            "authentication.kubernetes.io/credential-id": [format!("JTI=jti-{name}")],
            "authentication.kubernetes.io/node-name": [node],
            "authentication.kubernetes.io/node-uid": [format!("node-uid-{node}")],
            "authentication.kubernetes.io/pod-name": [name],
            "authentication.kubernetes.io/pod-uid": [uid]});
    }
    user
}

/// An AuthorizationPolicy that DENYs every connection to `port` in `namespace`.
pub fn deny_port(namespace: &str, name: &str, port: &str) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"ports": [port]}}]}]}})
}

/// The namespace's default PeerAuthentication, STRICT (plaintext refused).
pub fn strict(namespace: &str) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": "default", "namespace": namespace},
        "spec": {"mtls": {"mode": "STRICT"}}})
}

/// A ClusterIP Service `name` with the virtual IP `vip`, selecting `app=<name>`, port 80 to 8080.
pub fn service(namespace: &str, name: &str, vip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterIP": vip, "clusterIPs": [vip], "type": "ClusterIP",
            "selector": {"app": name},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
}
