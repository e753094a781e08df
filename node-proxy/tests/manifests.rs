//! `manifests/` against the code it deploys: every document is a valid Kubernetes object with no
//! field lost to a typo, the ClusterRole grants exactly `NODE_PROXY_ACCESS` (and by name
//! `NODE_PROXY_NAMED_ACCESS`), the workloads'
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
use marrow_mesh::apiserver::access::{NODE_PROXY_ACCESS, NODE_PROXY_NAMED_ACCESS};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The built-in CA (ca.yaml) and how the proxies reach and trust it.
#[path = "manifests/ca.rs"]
mod ca;

const NODE_PROXY: &str = env!("CARGO_BIN_EXE_node-proxy");
/// Where the image puts the binary (Dockerfile ENTRYPOINT).
const ENTRYPOINT: &str = "/usr/bin/node-proxy";
/// Variables read by node-proxy that are not flags.
const NOT_FLAGS: [&str; 1] = ["RUST_LOG"]; // tracing's EnvFilter, in app::logging::init

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

/// The (group, resource, verb) triples a ClusterRole grants on whole resources; no wildcards or
/// URLs. Rules with `resourceNames` are [`granted_by_name`]'s.
fn granted(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    granted_rules(role, false)
        .into_iter()
        .map(|(g, r, v, _)| (g, r, v))
        .collect()
}

/// The (group, resource, verb, name) a ClusterRole grants on named objects only.
fn granted_by_name(role: &ClusterRole) -> BTreeSet<(String, String, String, String)> {
    granted_rules(role, true)
}

fn granted_rules(role: &ClusterRole, named: bool) -> BTreeSet<(String, String, String, String)> {
    let mut granted = BTreeSet::new();
    for rule in role.rules.clone().unwrap() {
        assert!(rule.non_resource_urls.is_none());
        let names = match rule.resource_names.clone() {
            Some(names) if named => names,
            None if !named => vec![String::new()],
            _ => continue,
        };
        for group in rule.api_groups.unwrap() {
            for resource in rule.resources.clone().unwrap() {
                for verb in &rule.verbs {
                    for name in &names {
                        assert!(![&group, &resource, verb, name].contains(&&"*".to_owned()));
                        granted.insert((
                            group.clone(),
                            resource.clone(),
                            verb.clone(),
                            name.clone(),
                        ));
                    }
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
    grants_exactly_node_proxy_access("marrow-node-proxy");
}

/// A waypoint runs the same API server source (`--kube`), so its role is the node proxy's.
#[test]
fn the_waypoint_cluster_role_grants_exactly_what_its_source_calls() {
    grants_exactly_node_proxy_access("marrow-waypoint");
}

fn grants_exactly_node_proxy_access(name: &str) {
    let role: ClusterRole = only(("rbac.authorization.k8s.io/v1", "ClusterRole"), name);
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
    let named: BTreeSet<_> = NODE_PROXY_NAMED_ACCESS
        .iter()
        .flat_map(|n| {
            n.access.verbs.iter().map(|v| {
                (
                    n.access.group.to_owned(),
                    n.access.resource.to_owned(),
                    (*v).to_owned(),
                    n.name.to_owned(),
                )
            })
        })
        .collect();
    assert_eq!(granted_by_name(&role), named, "objects read by name");
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
    let readiness = std::sync::Arc::new(marrow_mesh::http::Readiness::default());
    let listener = marrow_mesh::http::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let local = listener.local_addr().unwrap();
    let server = tokio::spawn(marrow_mesh::http::serve_readiness(
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
