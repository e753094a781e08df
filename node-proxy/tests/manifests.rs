//! `manifests/` against the code it deploys: every document is a valid Kubernetes object with no
//! field lost to a typo, the ClusterRole grants exactly `NODE_PROXY_ACCESS`, the workloads'
//! flags and variables are node-proxy's, and the DaemonSet's probe, paths and upgrade settings
//! match what the proxy and the installer do. The CA (ca.yaml): its RBAC is exactly TokenReview
//! and pod reads, its key is mounted into it alone, and the proxies' address, token audience,
//! roots and account are the ones it serves and accepts. No API server here: the types are
//! k8s-openapi's (v1_33).
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed set-up step must fail the test loudly"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    Container, Namespace, PodSpec, Service, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use node_proxy::apiserver::access::NODE_PROXY_ACCESS;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

const NODE_PROXY: &str = env!("CARGO_BIN_EXE_node-proxy");
/// Where the image puts the binary (Dockerfile ENTRYPOINT).
const ENTRYPOINT: &str = "/usr/bin/node-proxy";
/// Variables read by node-proxy that are not flags.
const NOT_FLAGS: [&str; 1] = ["RUST_LOG"]; // tracing's EnvFilter, in main's init_tracing

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every YAML file under manifests/ except the kustomization, with its documents.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    let mut dirs = vec![manifests_dir()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "kustomization.yaml")
            {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display()));
            if !value.is_null() {
                docs.push((path.clone(), value));
            }
        }
    }
    assert!(docs.len() >= 6, "found {} documents", docs.len());
    docs
}

fn kind(doc: &Value) -> (&str, &str) {
    (
        doc["apiVersion"].as_str().unwrap_or(""),
        doc["kind"].as_str().unwrap_or(""),
    )
}

/// The document as `T` and back: what Kubernetes would keep of it.
fn typed<T: DeserializeOwned + serde::Serialize>(doc: &Value) -> Result<Value, String> {
    let object: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    serde_json::to_value(object).map_err(|e| e.to_string())
}

fn round_trip(doc: &Value) -> Result<Value, String> {
    match kind(doc) {
        ("v1", "Namespace") => typed::<Namespace>(doc),
        ("v1", "ServiceAccount") => typed::<ServiceAccount>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => typed::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => typed::<ClusterRoleBinding>(doc),
        ("apps/v1", "DaemonSet") => typed::<DaemonSet>(doc),
        ("apps/v1", "Deployment") => typed::<Deployment>(doc),
        ("v1", "Service") => typed::<Service>(doc),
        ("policy/v1", "PodDisruptionBudget") => typed::<PodDisruptionBudget>(doc),
        (api, kind) => Err(format!("no typed check for {api} {kind}; add it here")),
    }
}

/// Where `typed` differs from `yaml`, as a path: a key the type does not know is dropped.
fn first_difference(path: &str, yaml: &Value, typed: &Value) -> Option<String> {
    match (yaml, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let here = format!("{path}.{key}");
                match b.get(key) {
                    None => return Some(format!("{here}: dropped (misspelled or unknown field)")),
                    Some(other) => {
                        if let Some(diff) = first_difference(&here, value, other) {
                            return Some(diff);
                        }
                    }
                }
            }
            b.keys()
                .find(|key| !a.contains_key(*key))
                .map(|key| format!("{path}.{key}: added by the type"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (x, y))| first_difference(&format!("{path}[{i}]"), x, y)),
        _ => (yaml != typed).then(|| format!("{path}: {yaml} became {typed}")),
    }
}

fn only<T: DeserializeOwned>(api_kind: (&str, &str), name: &str) -> T {
    let found: Vec<Value> = documents()
        .into_iter()
        .map(|(_, doc)| doc)
        .filter(|doc| kind(doc) == api_kind && doc["metadata"]["name"] == name)
        .collect();
    assert_eq!(found.len(), 1, "{api_kind:?} {name}");
    serde_json::from_value(found[0].clone()).unwrap()
}

fn node_proxy_ds() -> DaemonSet {
    only(("apps/v1", "DaemonSet"), "node-proxy")
}

fn ca_deployment() -> Deployment {
    only(("apps/v1", "Deployment"), "marrow-ca")
}

fn pod_spec(ds: &DaemonSet) -> PodSpec {
    ds.spec.clone().unwrap().template.spec.unwrap()
}

/// Every pod template (DaemonSets, Deployments): file, `Kind/name`, pod spec.
fn workloads() -> Vec<(PathBuf, String, PodSpec)> {
    documents()
        .into_iter()
        .filter(|(_, doc)| ["DaemonSet", "Deployment"].contains(&kind(doc).1))
        .map(|(path, doc)| {
            let name = format!(
                "{}/{}",
                kind(&doc).1,
                doc["metadata"]["name"].as_str().unwrap()
            );
            let spec = serde_json::from_value(doc["spec"]["template"]["spec"].clone())
                .unwrap_or_else(|e| panic!("{} {name}: {e}", path.display()));
            (path, name, spec)
        })
        .collect()
}

/// The (group, resource, verb) triples a ClusterRole grants; no wildcards, names or URLs.
fn granted(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in role.rules.clone().unwrap() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for group in rule.api_groups.unwrap() {
            for resource in rule.resources.clone().unwrap() {
                for verb in &rule.verbs {
                    assert!(![&group, &resource, verb].contains(&&"*".to_owned()));
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    granted
}

fn triples(list: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    list.iter()
        .map(|(g, r, v)| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        .collect()
}

/// The mount of `c` at exactly `dir`, and the volume it mounts.
fn mount_at<'a>(spec: &'a PodSpec, c: &'a Container, dir: &Path) -> (&'a VolumeMount, &'a Volume) {
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(&m.mount_path) == dir)
        .unwrap_or_else(|| panic!("{}: nothing mounted at {}", c.name, dir.display()));
    let volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    (mount, volume)
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers.iter().find(|c| c.name == name).unwrap()
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_ref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

/// The value after `--flag` in `args`.
fn arg<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| a == flag)?;
    args.get(at + 1).map(String::as_str)
}

/// `node-proxy <words…> --help`: the flags (`--x`) and variables (`[env: X=]`) it lists.
fn help(words: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(NODE_PROXY)
        .args(words)
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "node-proxy {words:?} --help: {out:?}");
    // Clap wraps long lines, also inside `[env: …]`.
    let text = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let flags = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| format!("--{}", w.trim_end_matches(',')))
        .collect();
    let envs = text
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next())
        .map(str::to_owned)
        .collect();
    (flags, envs)
}

/// The host path behind `path` in `c`: the volume mounted at its longest mounted prefix.
fn host_path(spec: &PodSpec, c: &Container, path: &str) -> Option<PathBuf> {
    let path = Path::new(path);
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| path.starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())?;
    let volume: &Volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)?;
    let host = Path::new(&volume.host_path.as_ref()?.path);
    Some(host.join(path.strip_prefix(&mount.mount_path).ok()?))
}

#[test]
fn every_document_is_its_kubernetes_type_with_no_field_lost() {
    for (path, doc) in documents() {
        let typed = round_trip(&doc).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Some(diff) = first_difference("", &doc, &typed) {
            panic!("{} {:?}: {diff}", path.display(), kind(&doc));
        }
    }
}

#[test]
fn a_misspelled_field_is_caught() {
    let (_, mut ds) = documents()
        .into_iter()
        .find(|(_, d)| kind(d) == ("apps/v1", "DaemonSet"))
        .unwrap();
    ds["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let typed = round_trip(&ds).unwrap();
    let diff = first_difference("", &ds, &typed).unwrap();
    assert!(
        diff.contains(".spec.template.spec.hostNetwrok: dropped"),
        "{diff}"
    );
}

#[test]
fn the_cluster_role_grants_exactly_node_proxy_access() {
    let role: ClusterRole = only(
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        "marrow-node-proxy",
    );
    let granted = granted(&role);
    let used: BTreeSet<_> = NODE_PROXY_ACCESS
        .iter()
        .flat_map(|a| {
            a.verbs
                .iter()
                .map(|v| (a.group.to_owned(), a.resource.to_owned(), (*v).to_owned()))
        })
        .collect();
    assert_eq!(
        granted.difference(&used).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "granted but never called"
    );
    assert_eq!(
        used.difference(&granted).collect::<Vec<_>>(),
        Vec::<&(String, String, String)>::new(),
        "called but not granted"
    );
}

#[test]
fn the_binding_gives_the_role_to_the_daemonsets_service_account() {
    let binding: ClusterRoleBinding = only(
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        "marrow-node-proxy",
    );
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(binding.role_ref.name, "marrow-node-proxy");
    let ds = node_proxy_ds();
    let namespace = ds.metadata.namespace.clone().unwrap();
    let account = pod_spec(&ds).service_account_name.unwrap();
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, account);
    assert_eq!(subjects[0].namespace.as_deref(), Some(namespace.as_str()));
    let _: ServiceAccount = only(("v1", "ServiceAccount"), &account);
    let _: Namespace = only(("v1", "Namespace"), &namespace);
}

#[test]
fn every_flag_and_variable_is_node_proxys() {
    let mut checked = 0;
    for (path, _, spec) in workloads() {
        let all = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten());
        for c in all.filter(|c| c.image.as_deref().unwrap_or("").contains("node-proxy")) {
            let mut commands = vec![c.args.clone().unwrap()];
            if let Some(exec) = c.readiness_probe.as_ref().and_then(|p| p.exec.as_ref()) {
                let command = exec.command.clone().unwrap();
                assert_eq!(command[0], ENTRYPOINT, "{}: {command:?}", c.name);
                commands.push(command[1..].to_vec());
            }
            for args in commands {
                let words: Vec<&str> = args
                    .iter()
                    .map(String::as_str)
                    .take_while(|a| !a.starts_with('-'))
                    .collect();
                let (flags, envs) = help(&words);
                checked += 1;
                for flag in args.iter().filter(|a| a.starts_with("--")) {
                    assert!(
                        flags.contains(flag),
                        "{} {}: {flag} is not a flag of node-proxy {words:?}",
                        path.display(),
                        c.name
                    );
                }
                for var in c.env.iter().flatten() {
                    assert!(
                        envs.contains(&var.name) || NOT_FLAGS.contains(&var.name.as_str()),
                        "{} {}: {} is not read by node-proxy {words:?}",
                        path.display(),
                        c.name,
                        var.name
                    );
                }
            }
        }
    }
    // node-proxy run, cni install, cni check, cni uninstall, cleanup, ca serve.
    assert!(checked >= 6, "{checked} commands checked");
}

#[tokio::test]
async fn the_readiness_probe_asks_what_the_proxy_answers() {
    let ds = node_proxy_ds();
    let spec = pod_spec(&ds);
    let proxy = container(&spec, "node-proxy");
    let probe = proxy.readiness_probe.clone().unwrap().http_get.unwrap();
    let default = node_proxy::config::Config::default().readiness_addr;
    let addr: std::net::SocketAddr =
        env(proxy, "MARROW_READINESS_ADDR").map_or(default, |a| a.parse().unwrap());
    assert_eq!(probe.port, IntOrString::Int(i32::from(addr.port())));
    assert!(
        addr.ip().is_unspecified(),
        "the kubelet probes the node's address"
    );
    let path = probe.path.unwrap();

    // The proxy's own readiness server answers that path: 503 starting, 200 when ready.
    let readiness = std::sync::Arc::new(node_proxy::http::Readiness::default());
    let listener = node_proxy::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let local = listener.local_addr().unwrap();
    let server = tokio::spawn(node_proxy::http::serve_readiness(
        listener,
        readiness.clone(),
    ));
    assert_eq!(get(local, &path).await, 503);
    readiness.set(true);
    assert_eq!(get(local, &path).await, 200);
    assert_eq!(
        get(local, "/healthz/nope").await,
        404,
        "a wrong path would fail"
    );
    server.abort();
}

async fn get(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).await.unwrap();
    reply.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn paths_land_on_the_host_where_the_other_side_looks() {
    let ds = node_proxy_ds();
    let spec = pod_spec(&ds);
    let proxy = container(&spec, "node-proxy");
    let installer = container(&spec, "cni-installer");
    let args = installer.args.clone().unwrap();
    let on_host = |c: &Container, path: &str| {
        host_path(&spec, c, path)
            .unwrap_or_else(|| panic!("{}: {path} is not on a host path", c.name))
    };
    // redirect-cni runs on the host and dials proxySocket as written: the installer's --socket
    // must be the host path of the socket the proxy binds.
    let socket = env(proxy, "MARROW_CNI_SOCKET").unwrap();
    assert_eq!(
        on_host(proxy, socket),
        Path::new(arg(&args, "--socket").unwrap())
    );
    assert_eq!(
        on_host(proxy, env(proxy, "MARROW_STATE_DIR").unwrap()),
        Path::new("/var/run/marrow")
    );
    assert!(on_host(proxy, env(proxy, "MARROW_BPFFS_DIR").unwrap()).starts_with("/sys/fs/bpf"));
    assert_eq!(
        on_host(proxy, env(proxy, "MARROW_CGROUP").unwrap()),
        Path::new("/sys/fs/cgroup")
    );
    assert_eq!(
        on_host(installer, arg(&args, "--bin-dir").unwrap()),
        Path::new("/opt/cni/bin")
    );
    assert_eq!(
        on_host(installer, arg(&args, "--conf-dir").unwrap()),
        Path::new("/etc/cni/net.d")
    );
    // What the image holds (Dockerfile, `cargo xtask image`).
    assert_eq!(
        Path::new(env(proxy, "MARROW_EBPF_OBJECT").unwrap()),
        node_proxy::config::Config::default().ebpf_object
    );
    assert_eq!(
        arg(&args, "--plugin-binary"),
        Some("/usr/lib/marrow/redirect-cni")
    );
    // The readiness check looks where the installer writes.
    let check = installer
        .readiness_probe
        .clone()
        .unwrap()
        .exec
        .unwrap()
        .command
        .unwrap();
    for flag in ["--bin-dir", "--conf-dir", "--socket"] {
        assert_eq!(arg(&check, flag), arg(&args, flag), "{flag}");
    }
    assert!(args.contains(&"--watch".to_owned()));
    // Every mount names a volume and every volume is mounted.
    let volumes: BTreeSet<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let mounted: BTreeSet<&str> = spec
        .containers
        .iter()
        .flat_map(|c| c.volume_mounts.iter().flatten())
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(volumes, mounted);
}

#[test]
fn upgrade_drain_and_placement_settings() {
    let ds = node_proxy_ds();
    let strategy = ds.spec.clone().unwrap().update_strategy.unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.unwrap();
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    let spec = pod_spec(&ds);
    let proxy = container(&spec, "node-proxy");
    let drain: i64 = env(proxy, "MARROW_DRAIN_TIMEOUT_SECS")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(drain, 30);
    assert!(spec.termination_grace_period_seconds.unwrap() > drain);
    assert_eq!(
        spec.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    let tolerations = spec.tolerations.clone().unwrap();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none())
    );
    // With hostNetwork every declared port is a hostPort: the surge pod could not schedule.
    assert_eq!(spec.host_network, Some(true));
    for c in &spec.containers {
        assert!(c.ports.is_none(), "{} declares ports", c.name);
    }
    assert!(
        env(proxy, "MARROW_NODE_NAME").is_none(),
        "from the downward API, not a value"
    );
    let node_name = proxy
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "MARROW_NODE_NAME")
        .unwrap();
    let field = node_name.value_from.clone().unwrap().field_ref.unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
}

#[test]
fn images_are_the_workspace_version() {
    let want = format!("marrow/node-proxy:{}", env!("CARGO_PKG_VERSION"));
    let mut seen = 0;
    for (path, _, spec) in workloads() {
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let image = c.image.clone().unwrap();
            if image.starts_with("marrow/") {
                assert_eq!(image, want, "{} {}", path.display(), c.name);
                seen += 1;
            }
        }
    }
    assert!(seen >= 5);
    let kustomization =
        std::fs::read_to_string(manifests_dir().join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains(&format!("newTag: {}", env!("CARGO_PKG_VERSION"))));
}

#[test]
fn the_kustomization_lists_every_install_manifest() {
    let text = std::fs::read_to_string(manifests_dir().join("kustomization.yaml")).unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).unwrap();
    let listed: BTreeSet<String> = doc["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present);
}

#[test]
fn the_image_runs_node_proxy_from_where_the_manifests_call_it() {
    let dockerfile = std::fs::read_to_string(manifests_dir().join("../Dockerfile")).unwrap();
    let lines: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    assert!(
        lines.contains(&format!("ENTRYPOINT [\"{ENTRYPOINT}\"]").as_str()),
        "{lines:?}"
    );
    // `cargo xtask image` lays out usr/bin/node-proxy and usr/lib/marrow/ under target/image.
    assert!(lines.contains(&"COPY target/image/ /"), "{lines:?}");
}

/// Whether a pod spec gets Secret `name`: as a volume, a projected source, env or envFrom.
fn names_secret(spec: &PodSpec, name: &str) -> bool {
    let volumes = spec.volumes.iter().flatten().any(|v| {
        v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some(name)
            || v.projected
                .iter()
                .flat_map(|p| p.sources.iter().flatten())
                .any(|s| s.secret.as_ref().is_some_and(|s| s.name == name))
    });
    let mut containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    volumes
        || containers.any(|c| {
            let env = c.env.iter().flatten().any(|e| {
                let from = e
                    .value_from
                    .as_ref()
                    .and_then(|f| f.secret_key_ref.as_ref());
                from.is_some_and(|r| r.name == name)
            });
            let env_from = c
                .env_from
                .iter()
                .flatten()
                .any(|e| e.secret_ref.as_ref().is_some_and(|r| r.name == name));
            env || env_from
        })
}

#[test]
fn a_secret_given_to_the_node_proxy_is_caught() {
    let clean = pod_spec(&node_proxy_ds());
    assert!(!names_secret(&clean, "marrow-ca-key"));
    let add = |path: &str, value: serde_json::Value| {
        let mut spec = serde_json::to_value(&clean).unwrap();
        spec.pointer_mut(path)
            .unwrap()
            .as_array_mut()
            .unwrap()
            .push(value);
        serde_json::from_value::<PodSpec>(spec).unwrap()
    };
    let ways = [
        add(
            "/volumes",
            serde_json::json!({"name": "k", "secret": {"secretName": "marrow-ca-key"}}),
        ),
        add(
            "/volumes",
            serde_json::json!({"name": "k", "projected": {"sources": [
            {"secret": {"name": "marrow-ca-key"}}]}}),
        ),
        add(
            "/containers/0/env",
            serde_json::json!({"name": "K", "valueFrom": {
            "secretKeyRef": {"name": "marrow-ca-key", "key": "ca-key.pem"}}}),
        ),
        add(
            "/containers/1/env",
            serde_json::json!({"name": "K", "valueFrom": {
            "secretKeyRef": {"name": "marrow-ca-key", "key": "ca-key.pem"}}}),
        ),
    ];
    for (i, spec) in ways.iter().enumerate() {
        assert!(names_secret(spec, "marrow-ca-key"), "way {i}");
        assert!(!names_secret(spec, "another"), "way {i}");
    }
}

/// The CA's container and its args.
fn ca_container() -> (PodSpec, Container, Vec<String>) {
    let spec = ca_deployment().spec.unwrap().template.spec.unwrap();
    let ca = container(&spec, "ca").clone();
    let args = ca.args.clone().unwrap();
    (spec, ca, args)
}

#[test]
fn the_ca_role_grants_exactly_token_reviews_and_pod_reads() {
    let role: ClusterRole = only(("rbac.authorization.k8s.io/v1", "ClusterRole"), "marrow-ca");
    assert_eq!(
        granted(&role),
        triples(&[
            ("authentication.k8s.io", "tokenreviews", "create"),
            ("", "pods", "get"),
            ("", "pods", "list"),
        ])
    );
    let binding: ClusterRoleBinding = only(
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        "marrow-ca",
    );
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("ClusterRole", "marrow-ca")
    );
    let deployment = ca_deployment();
    let namespace = deployment.metadata.namespace.clone().unwrap();
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    let account = spec.service_account_name.unwrap();
    assert_eq!(account, "marrow-ca", "not the node proxy's account");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(subjects[0].name, account);
    assert_eq!(subjects[0].namespace.as_deref(), Some(namespace.as_str()));
    let _: ServiceAccount = only(("v1", "ServiceAccount"), &account);
    assert_eq!(
        spec.automount_service_account_token,
        Some(true),
        "the CA calls the API server"
    );
}

#[test]
fn no_node_side_role_touches_secrets_or_token_reviews() {
    let node_proxy: ClusterRole = only(
        ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        "marrow-node-proxy",
    );
    for (group, resource, verb) in granted(&node_proxy) {
        assert!(
            ![
                "secrets",
                "tokenreviews",
                "serviceaccounts",
                "certificatesigningrequests"
            ]
            .contains(&resource.as_str()),
            "marrow-node-proxy grants {verb} on {group}/{resource}"
        );
    }
    // And no role in manifests/ reads Secrets: the CA's key is a volume.
    for (path, doc) in documents() {
        if kind(&doc) == ("rbac.authorization.k8s.io/v1", "ClusterRole") {
            let role: ClusterRole = serde_json::from_value(doc).unwrap();
            assert!(
                granted(&role).iter().all(|(_, r, _)| r != "secrets"),
                "{}: {:?} grants Secrets",
                path.display(),
                role.metadata.name
            );
        }
    }
}

#[test]
fn the_ca_key_is_mounted_only_into_the_ca() {
    let (spec, ca, args) = ca_container();
    let (mount, volume) = mount_at(&spec, &ca, Path::new(arg(&args, "--ca-dir").unwrap()));
    let secret = volume.secret.clone().unwrap();
    let key = secret.secret_name.unwrap();
    assert_eq!(key, "marrow-ca-key");
    assert_eq!(secret.default_mode, Some(0o400));
    assert_eq!(mount.read_only, Some(true));
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount never sees the Secret replaced (root rotation)"
    );
    // No workload but the CA names the Secret: volume, projected source, env or envFrom.
    let holders: Vec<String> = workloads()
        .into_iter()
        .filter(|(_, _, spec)| names_secret(spec, &key))
        .map(|(_, name, _)| name)
        .collect();
    assert_eq!(holders, ["Deployment/marrow-ca"]);
    // The operator creates the Secret; its contents are never in the repo.
    for (path, doc) in documents() {
        assert_ne!(kind(&doc).1, "Secret", "{}", path.display());
    }
    // The node proxy mounts no Secret at all.
    let proxy_spec = pod_spec(&node_proxy_ds());
    for v in proxy_spec.volumes.iter().flatten() {
        assert!(
            v.secret.is_none(),
            "node proxy mounts Secret volume {}",
            v.name
        );
    }
}

#[test]
fn the_proxy_token_and_roots_are_what_the_ca_expects() {
    let (_, _, ca_args) = ca_container();
    let ds = node_proxy_ds();
    let spec = pod_spec(&ds);
    let proxy = container(&spec, "node-proxy");
    let args = proxy.args.clone().unwrap();
    // The token: projected, for the CA's audience, short-lived, and where --ca-token-file looks.
    let token_file = Path::new(arg(&args, "--ca-token-file").unwrap());
    let (mount, volume) = mount_at(&spec, proxy, token_file.parent().unwrap());
    assert_eq!(mount.read_only, Some(true));
    let sources = volume.projected.clone().unwrap().sources.unwrap();
    assert_eq!(sources.len(), 1, "{sources:?}");
    let token = sources[0].service_account_token.clone().unwrap();
    assert_eq!(token.audience.as_deref(), Some("istio-ca"));
    assert_eq!(token.audience.as_deref(), arg(&ca_args, "--audience"));
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(
        Path::new(&token.path),
        token_file.strip_prefix(&mount.mount_path).unwrap()
    );
    // The roots: the ConfigMap's root-cert.pem, a whole-volume mount so updates reach it.
    let roots = Path::new(arg(&args, "--ca-roots").unwrap());
    let (mount, volume) = mount_at(&spec, proxy, roots.parent().unwrap());
    assert_eq!(mount.read_only, Some(true));
    assert!(
        mount.sub_path.is_none(),
        "a subPath mount never sees a rotated root"
    );
    let config_map = volume.config_map.clone().unwrap();
    assert_eq!(config_map.name, "marrow-ca-root");
    assert!(
        config_map.items.is_none(),
        "every key, as named: {config_map:?}"
    );
    assert_eq!(roots.file_name().unwrap(), "root-cert.pem");
    // The CA accepts this DaemonSet's account as a node proxy, in the proxies' trust domain.
    let account = format!(
        "{}/{}",
        ds.metadata.namespace.clone().unwrap(),
        spec.service_account_name.clone().unwrap()
    );
    assert_eq!(
        arg(&ca_args, "--node-proxy-accounts"),
        Some(account.as_str())
    );
    assert_eq!(
        arg(&ca_args, "--trust-domain"),
        env(proxy, "MARROW_TRUST_DOMAIN")
    );
    // A proxy never asks for longer than the CA signs.
    let max_ttl: u64 = arg(&ca_args, "--max-cert-ttl-secs")
        .unwrap()
        .parse()
        .unwrap();
    let ttl = env(proxy, "MARROW_CERT_TTL_SECS").map_or(
        node_proxy::config::Config::default().cert_ttl.as_secs(),
        |t| t.parse().unwrap(),
    );
    assert!(
        ttl <= max_ttl,
        "proxy asks {ttl} s, CA signs up to {max_ttl} s"
    );
    // HBONE needs the workloads too: the proxy watches the API server.
    assert_eq!(env(proxy, "MARROW_KUBE"), Some("true"));
}

#[test]
fn the_ca_address_is_the_ca_service() {
    let (_, ca, ca_args) = ca_container();
    let ds = node_proxy_ds();
    let args = container(&pod_spec(&ds), "node-proxy")
        .args
        .clone()
        .unwrap();
    let address: http::Uri = arg(&args, "--ca-address").unwrap().parse().unwrap();
    assert_eq!(address.scheme_str(), Some("https"));
    let service: Service = only(("v1", "Service"), "marrow-ca");
    let namespace = service.metadata.namespace.clone().unwrap();
    assert_eq!(
        address.host(),
        Some(format!("marrow-ca.{namespace}.svc").as_str())
    );
    // The CA's serving certificate names the host the proxy checks it for.
    assert!(
        arg(&ca_args, "--serving-names")
            .unwrap()
            .split(',')
            .any(|n| Some(n) == address.host()),
        "{ca_args:?}"
    );
    let service_spec = service.spec.unwrap();
    let ports = service_spec.ports.unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].name.as_deref(), Some("grpc-ca"));
    assert_eq!(ports[0].app_protocol.as_deref(), Some("grpc"));
    assert_eq!(address.port_u16(), u16::try_from(ports[0].port).ok());
    // Through the Service to the port the CA listens on, and the probes ask that port.
    let listen: std::net::SocketAddr = arg(&ca_args, "--listen").unwrap().parse().unwrap();
    let container_port = match ports[0].target_port.clone().unwrap() {
        IntOrString::Int(port) => port,
        IntOrString::String(name) => {
            let ports = ca.ports.iter().flatten();
            ports
                .filter(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .next()
                .unwrap()
        }
    };
    assert_eq!(container_port, i32::from(listen.port()));
    assert!(
        listen.ip().is_unspecified(),
        "the Service reaches the pod's IP"
    );
    for probe in [&ca.readiness_probe, &ca.liveness_probe] {
        let tcp = probe.clone().unwrap().tcp_socket.unwrap();
        assert_eq!(tcp.port, IntOrString::Int(container_port));
    }
    // The Service and the disruption budget select the CA's pods, and only them.
    let deployment = ca_deployment();
    let labels = deployment
        .spec
        .clone()
        .unwrap()
        .template
        .metadata
        .unwrap()
        .labels
        .unwrap();
    let selector = service_spec.selector.unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let budget: PodDisruptionBudget = only(("policy/v1", "PodDisruptionBudget"), "marrow-ca");
    let budget = budget.spec.unwrap();
    assert_eq!(budget.min_available, Some(IntOrString::Int(1)));
    assert_eq!(
        budget.selector.unwrap().match_labels,
        deployment.spec.unwrap().selector.match_labels
    );
}

#[test]
fn the_ca_runs_unprivileged_twice_on_different_nodes() {
    let deployment = ca_deployment();
    let (spec, ca, _) = ca_container();
    assert_eq!(deployment.spec.unwrap().replicas, Some(2));
    let pod = spec.security_context.clone().unwrap();
    let c = ca.security_context.clone().unwrap();
    assert_eq!(c.run_as_non_root.or(pod.run_as_non_root), Some(true));
    // The image runs as root by default: runAsNonRoot alone would stop the pod.
    assert!(c.run_as_user.or(pod.run_as_user).is_some_and(|u| u != 0));
    // The Secret's files are root's with mode 0400; fsGroup makes them readable to the CA.
    assert!(pod.fs_group.is_some_and(|g| g != 0));
    assert_eq!(c.read_only_root_filesystem, Some(true));
    assert_eq!(c.allow_privilege_escalation, Some(false));
    assert_eq!(c.privileged, None);
    assert_eq!(c.capabilities.unwrap().drop, Some(vec!["ALL".to_owned()]));
    let seccomp = c.seccomp_profile.or(pod.seccomp_profile).unwrap();
    assert_eq!(seccomp.type_, "RuntimeDefault");
    assert_eq!(spec.host_network, None);
    assert_eq!(spec.host_pid, None);
    assert!(spec.volumes.iter().flatten().all(|v| v.host_path.is_none()));
    let resources = ca.resources.clone().unwrap();
    assert!(
        resources
            .requests
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
    );
    assert!(resources.limits.is_some_and(|l| l.contains_key("memory")));
    let anti = spec.affinity.unwrap().pod_anti_affinity.unwrap();
    let preferred = anti
        .preferred_during_scheduling_ignored_during_execution
        .unwrap();
    assert_eq!(preferred.len(), 1);
    assert_eq!(
        preferred[0].pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
}
