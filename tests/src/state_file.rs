//! The cluster state a node proxy reads from `--state-file`: Namespaces and Pods as
//! multi-document Kubernetes YAML in the shapes `kubectl get -o yaml` prints (keys sorted,
//! `status.podIP` and `status.podIPs`, `spec.nodeName`, `spec.serviceAccountName`), written
//! atomically (a temporary file in the same directory, then `rename`), so a polling reader sees
//! either the old or the new version, never half of one.
//!
//! Pods are recorded from the harness's [`Pod`] fixtures, with the addresses their CNI ADD
//! assigned: build the state after creating the pods.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use serde_json::{Value, json};

use crate::pod::Pod;

/// The label that puts a namespace (or a pod) in the ambient mesh.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Its value for the ambient mesh.
pub const AMBIENT: &str = "ambient";
/// The image recorded for test pods' containers (never pulled: it only makes the shape real).
const TESTPOD_IMAGE: &str = "ghcr.io/marrow/testpod:dev";

/// A Namespace object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceRecord {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels` (besides `kubernetes.io/metadata.name`, which is always added).
    pub labels: BTreeMap<String, String>,
}

/// A Pod object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodRecord {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.uid` (the pod's `K8S_POD_UID`).
    pub uid: String,
    /// `spec.nodeName`.
    pub node_name: String,
    /// `spec.serviceAccountName`.
    pub service_account: String,
    /// `status.podIPs` (the first is also `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `status.phase`.
    pub phase: String,
    /// Container ports, for the shape only.
    pub ports: Vec<u16>,
}

impl PodRecord {
    /// The record of a harness pod running as `service_account`: its name, namespace, uid,
    /// node and CNI-assigned addresses, phase `Running`, label `app: <name>`.
    pub fn of(pod: &Pod, service_account: &str) -> PodRecord {
        PodRecord {
            name: pod.name().to_owned(),
            namespace: pod.namespace().to_owned(),
            uid: pod.uid().to_owned(),
            node_name: pod.node().name().to_owned(),
            service_account: service_account.to_owned(),
            ips: pod.ips().to_vec(),
            labels: BTreeMap::from([("app".to_owned(), pod.name().to_owned())]),
            phase: "Running".to_owned(),
            ports: Vec::new(),
        }
    }

    /// Adds (or replaces) a label.
    pub fn with_label(mut self, key: &str, value: &str) -> PodRecord {
        self.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Records a container port.
    pub fn with_port(mut self, port: u16) -> PodRecord {
        self.ports.push(port);
        self
    }

    /// The object as `kubectl get pod -o yaml` would show it (the fields the mesh reads, and a
    /// few it does not).
    pub fn to_value(&self) -> Value {
        let ips: Vec<String> = self.ips.iter().map(IpAddr::to_string).collect();
        let ports: Vec<Value> = self
            .ports
            .iter()
            .map(|p| json!({"containerPort": p, "protocol": "TCP"}))
            .collect();
        let mut container = json!({
            "image": TESTPOD_IMAGE,
            "imagePullPolicy": "IfNotPresent",
            "name": "app",
        });
        if !ports.is_empty() {
            container["ports"] = Value::Array(ports);
        }
        let mut status = json!({
            "conditions": [
                {"status": "True", "type": "PodScheduled"},
                {"status": "True", "type": "Ready"},
            ],
            "phase": self.phase,
            "qosClass": "BestEffort",
        });
        if let Some(first) = ips.first() {
            status["podIP"] = json!(first);
            status["podIPs"] = Value::Array(ips.iter().map(|ip| json!({"ip": ip})).collect());
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "labels": self.labels,
                "name": self.name,
                "namespace": self.namespace,
                "uid": self.uid,
            },
            "spec": {
                "containers": [container],
                "nodeName": self.node_name,
                "restartPolicy": "Always",
                "serviceAccount": self.service_account,
                "serviceAccountName": self.service_account,
            },
            "status": status,
        })
    }
}

impl NamespaceRecord {
    /// The object as `kubectl get ns -o yaml` would show it.
    pub fn to_value(&self) -> Value {
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/metadata.name".to_owned(), self.name.clone());
        json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"labels": labels, "name": self.name},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        })
    }
}

/// Namespaces and pods, rendered as one state file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterState {
    namespaces: Vec<NamespaceRecord>,
    pods: Vec<PodRecord>,
}

impl ClusterState {
    /// An empty cluster.
    pub fn new() -> ClusterState {
        ClusterState::default()
    }

    /// Adds namespace `name` labelled `istio.io/dataplane-mode: ambient`: its pods are in the
    /// mesh.
    pub fn ambient_namespace(self, name: &str) -> ClusterState {
        self.namespace(name, &[(DATAPLANE_MODE_LABEL, AMBIENT)])
    }

    /// Adds (or replaces) namespace `name` with `labels`.
    pub fn namespace(mut self, name: &str, labels: &[(&str, &str)]) -> ClusterState {
        self.namespaces.retain(|ns| ns.name != name);
        self.namespaces.push(NamespaceRecord {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        });
        self
    }

    /// Adds the pod `pod` running as `service_account` (see [`PodRecord::of`]).
    pub fn pod(self, pod: &Pod, service_account: &str) -> ClusterState {
        self.with_pod(PodRecord::of(pod, service_account))
    }

    /// Adds `record`, replacing a pod of the same namespace and name.
    pub fn with_pod(mut self, record: PodRecord) -> ClusterState {
        self.pods
            .retain(|p| (&p.namespace, &p.name) != (&record.namespace, &record.name));
        self.pods.push(record);
        self
    }

    /// The same state with pod `namespace/name` running as `service_account` instead.
    ///
    /// # Panics
    /// When there is no such pod.
    pub fn with_service_account(
        mut self,
        namespace: &str,
        name: &str,
        service_account: &str,
    ) -> ClusterState {
        let pod = self
            .pods
            .iter_mut()
            .find(|p| p.namespace == namespace && p.name == name)
            .unwrap_or_else(|| panic!("the state has no pod {namespace}/{name}"));
        service_account.clone_into(&mut pod.service_account);
        self
    }

    /// The namespaces.
    pub fn namespaces(&self) -> &[NamespaceRecord] {
        &self.namespaces
    }

    /// The pods.
    pub fn pods(&self) -> &[PodRecord] {
        &self.pods
    }

    /// Every object, namespaces first.
    pub fn documents(&self) -> Vec<Value> {
        self.namespaces
            .iter()
            .map(NamespaceRecord::to_value)
            .chain(self.pods.iter().map(PodRecord::to_value))
            .collect()
    }

    /// The state file's text: one YAML document per object, each starting with `---`.
    pub fn to_yaml(&self) -> String {
        let mut out = String::from("# marrow test cluster state (written by marrow-tests)\n");
        for doc in self.documents() {
            out.push_str("---\n");
            out.push_str(&to_yaml(&doc));
        }
        out
    }

    /// Writes [`ClusterState::to_yaml`] to `path` atomically.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write(&self, path: &Path) {
        write_atomic(path, self.to_yaml().as_bytes())
            .unwrap_or_else(|e| panic!("cannot write the state file {}: {e}", path.display()));
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a `rename`, so
/// readers see the old content or the new, never a mix.
///
/// # Errors
/// When the directory is not writable or the rename fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".marrow-state-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// `value` as a block-style YAML document (mappings and sequences as `kubectl` prints them;
/// strings plain when unambiguous, else double-quoted).
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => emit_map(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => emit_seq(&mut out, items, 0),
        other => {
            out.push_str(&scalar(other));
            out.push('\n');
        }
    }
    out
}

fn emit_map(out: &mut String, map: &serde_json::Map<String, Value>, indent: usize) {
    for (key, value) in map {
        out.push_str(&" ".repeat(indent));
        out.push_str(&string(key));
        out.push(':');
        match value {
            Value::Object(inner) if !inner.is_empty() => {
                out.push('\n');
                emit_map(out, inner, indent + 2);
            }
            Value::Array(items) if !items.is_empty() => {
                out.push('\n');
                emit_seq(out, items, indent);
            }
            other => {
                out.push(' ');
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

fn emit_seq(out: &mut String, items: &[Value], indent: usize) {
    for item in items {
        match item {
            Value::Object(inner) if !inner.is_empty() => {
                // The first key goes on the dash's line; the rest line up under it.
                let mut block = String::new();
                emit_map(&mut block, inner, indent + 2);
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                out.push_str(&block[indent + 2..]);
            }
            other => {
                out.push_str(&" ".repeat(indent));
                out.push_str("- ");
                out.push_str(&scalar(other));
                out.push('\n');
            }
        }
    }
}

/// A scalar, or an empty or nested-in-sequence container in flow (JSON) style, which YAML reads
/// the same.
fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => string(s),
        other => other.to_string(),
    }
}

/// `s` plain when YAML reads it back as the same string, else JSON-quoted (valid YAML).
fn string(s: &str) -> String {
    const RESERVED: &[&str] = &[
        "true", "false", "yes", "no", "on", "off", "y", "n", "null", "~",
    ];
    let plain = s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        && !RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s));
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn record(name: &str, ns: &str, ip: &str) -> PodRecord {
        PodRecord {
            name: name.to_owned(),
            namespace: ns.to_owned(),
            uid: "0b5f4c1e-8d52-4f6a-9d7e-1f2e3d4c5b6a".to_owned(),
            node_name: "node-1".to_owned(),
            service_account: "web".to_owned(),
            ips: vec![ip.parse().unwrap(), "fd00:1::5".parse().unwrap()],
            labels: BTreeMap::from([("app".to_owned(), name.to_owned())]),
            phase: "Running".to_owned(),
            ports: vec![8080],
        }
    }

    fn state() -> ClusterState {
        ClusterState::new()
            .ambient_namespace("shop")
            .namespace("legacy", &[])
            .with_pod(record("web", "shop", "10.244.1.5"))
            .with_pod(record("db", "legacy", "10.244.2.7").with_label("version", "true"))
    }

    /// Every document read back by a real YAML parser equals the object it came from.
    #[test]
    fn yaml_reads_back_as_the_objects() {
        let state = state();
        let text = state.to_yaml();
        let parsed: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .filter(|v| !v.is_null())
            .collect();
        assert_eq!(parsed, state.documents(), "{text}");
    }

    #[test]
    fn pods_have_the_fields_the_mesh_reads() {
        let doc = record("web", "shop", "10.244.1.5").to_value();
        assert_eq!(doc["metadata"]["namespace"], "shop");
        assert_eq!(
            doc["metadata"]["uid"],
            "0b5f4c1e-8d52-4f6a-9d7e-1f2e3d4c5b6a"
        );
        assert_eq!(doc["spec"]["nodeName"], "node-1");
        assert_eq!(doc["spec"]["serviceAccountName"], "web");
        assert_eq!(doc["status"]["phase"], "Running");
        assert_eq!(doc["status"]["podIP"], "10.244.1.5");
        assert_eq!(doc["status"]["podIPs"][1]["ip"], "fd00:1::5");
        let ns = state().documents()[0].clone();
        assert_eq!(ns["metadata"]["labels"][DATAPLANE_MODE_LABEL], AMBIENT);
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "shop"
        );
    }

    #[test]
    fn ambiguous_strings_are_quoted() {
        let text = to_yaml(&json!({
            "a": "true", "b": "10.244.1.5", "c": "x: y", "d": "", "e": "plain-text",
            "f": "0b5f", "g": "spiffe://cluster.local/ns/a/sa/b", "h": [], "i": {},
        }));
        for quoted in [
            "a: \"true\"",
            "b: \"10.244.1.5\"",
            "c: \"x: y\"",
            "d: \"\"",
            "f: \"0b5f\"",
            "g: \"spiffe://",
        ] {
            assert!(text.contains(quoted), "{quoted} in {text}");
        }
        assert!(text.contains("e: plain-text\n"), "{text}");
        assert!(
            text.contains("h: []\n") && text.contains("i: {}\n"),
            "{text}"
        );
    }

    #[test]
    fn replacing_and_renaming_keeps_one_record() {
        let state = state()
            .with_pod(record("web", "shop", "10.244.1.9"))
            .with_service_account("shop", "web", "other");
        let webs: Vec<&PodRecord> = state.pods().iter().filter(|p| p.name == "web").collect();
        assert_eq!(webs.len(), 1);
        assert_eq!(webs[0].service_account, "other");
        assert_eq!(webs[0].ips[0].to_string(), "10.244.1.9");
    }

    #[test]
    #[should_panic(expected = "no pod shop/nope")]
    fn renaming_a_missing_pod_panics() {
        let _ = state().with_service_account("shop", "nope", "x");
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.yaml");
        write_atomic(&path, b"one").unwrap();
        let first = std::fs::metadata(&path).unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        use std::os::unix::fs::MetadataExt;
        assert_ne!(
            first.ino(),
            std::fs::metadata(&path).unwrap().ino(),
            "a new inode"
        );
        let leftovers = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file left behind");
    }
}
