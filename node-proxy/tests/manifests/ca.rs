//! ca.yaml: the CA's RBAC is exactly TokenReview and pod reads, its key is mounted into it
//! alone, it runs unprivileged, and the proxies' address, token audience, roots and account are
//! the ones it serves and accepts.

use super::*;

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
    let liveness = ca.liveness_probe.clone().unwrap().tcp_socket.unwrap();
    assert_eq!(liveness.port, IntOrString::Int(container_port));
    // Readiness and metrics on the ports the CA serves them on.
    let readiness = ca.readiness_probe.clone().unwrap().http_get.unwrap();
    let readiness_addr: std::net::SocketAddr =
        arg(&ca_args, "--readiness-addr").unwrap().parse().unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/healthz/ready"));
    assert_eq!(
        readiness.port,
        IntOrString::Int(i32::from(readiness_addr.port()))
    );
    let metrics_addr: std::net::SocketAddr =
        arg(&ca_args, "--metrics-addr").unwrap().parse().unwrap();
    let annotations = ca_deployment()
        .spec
        .unwrap()
        .template
        .metadata
        .unwrap()
        .annotations
        .unwrap();
    assert_eq!(
        annotations.get("prometheus.io/port"),
        Some(&metrics_addr.port().to_string())
    );
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

#[test]
fn the_waypoints_run_the_cas_image_and_ask_the_proxies_ca() {
    let (_, ca, ca_args) = ca_container();
    // The controller deploys waypoints from the image the CA runs (the `waypoint` command is
    // in it), so both move together on an upgrade.
    assert_eq!(arg(&ca_args, "--waypoint-image"), ca.image.as_deref());
    // And they ask for certificates where the node proxies do.
    let ds = node_proxy_ds();
    let args = container(&pod_spec(&ds), "node-proxy")
        .args
        .clone()
        .unwrap();
    assert_eq!(
        arg(&ca_args, "--waypoint-ca-address"),
        arg(&args, "--ca-address")
    );
    // The controller's role is the CA account's second role, apart from the signing one.
    let binding: ClusterRoleBinding = only(
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        "marrow-waypoint-controller",
    );
    assert_eq!(binding.role_ref.name, "marrow-waypoint-controller");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].name, "marrow-ca");
}
