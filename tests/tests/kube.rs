//! `node-proxy run --kube` end to end: two nodes, each proxy watching an API server (the
//! in-process replay of the replay-apiserver crate, one per node, serving the same objects inside
//! that node's network namespace, found through `KUBECONFIG`), pods enrolled by the real CNI
//! chain. The pods, their namespace's ambient label and an AuthorizationPolicy come from the
//! API server only: no state file. There is no real API server on these machines.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use marrow_tests::proxy::READINESS_PORT;
use marrow_tests::{MeshCa, Node, NodeLink, NodeOptions, Pod, Proxy, ProxyOptions, require_env};
use replay_apiserver::{ApiServer, objects};
use serde_json::Value;

const APP_PORT: u16 = 8080;
const WITHIN: Duration = Duration::from_secs(30);

/// A node with its own replay API server and a `--kube` proxy.
struct KubeNode {
    proxy: Proxy,
    api: ApiServer,
    node: Node,
}

fn start_node(runtime: &tokio::runtime::Runtime, name: &str, index: u8, ca: &MeshCa) -> KubeNode {
    let node = Node::with_options(
        name,
        NodeOptions {
            dual_stack: false,
            index: Some(index),
        },
    );
    let listener = node
        .netns()
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind in the node's netns");
    let api = {
        let _entered = runtime.enter();
        ApiServer::start_on(listener)
    };
    api.seed([
        objects::namespace("shop", true),
        objects::namespace("legacy", false),
    ]);
    let kubeconfig = node.temp_dir().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig()).expect("write kubeconfig");
    let ca_dir = ca.dir().display().to_string();
    let mut proxy = node.start_proxy_with(ProxyOptions {
        extra_args: vec![
            "--kube".into(),
            "--ca-dir".into(),
            ca_dir,
            "--node-name".into(),
            node.name().to_owned(),
        ],
        env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
        ..ProxyOptions::default()
    });
    proxy
        .wait_ready(WITHIN)
        .expect("a --kube proxy gets ready once it listed everything");
    KubeNode { proxy, api, node }
}

/// The Pod object of a pod the CNI chain created, on `node`.
fn pod_object(pod: &Pod, node: &Node, service_account: &str) -> Value {
    let mut object = objects::pod(
        pod.namespace(),
        pod.name(),
        node.name(),
        &pod.ipv4().to_string(),
        service_account,
    );
    object["metadata"]["uid"] = Value::String(pod.uid().to_owned());
    object
}

/// Retries `connect` until `want(outcome)` holds (the proxies pick changes up asynchronously).
fn until(what: &str, mut attempt: impl FnMut() -> bool) {
    let started = Instant::now();
    while !attempt() {
        assert!(started.elapsed() < WITHIN, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pods_identities_and_policies_come_from_the_api_server() {
    require_env!();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ca = MeshCa::create("kube-e2e");
    let one = start_node(&runtime, "kube-e2e-1", 1, &ca);
    let two = start_node(&runtime, "kube-e2e-2", 2, &ca);
    let _link = NodeLink::between(&one.node, &two.node);
    let client = one.node.add_pod("client", "shop", true);
    let server = two.node.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    for api in [&one.api, &two.api] {
        api.apply(pod_object(&client, &one.node, "client"));
        api.apply(pod_object(&server, &two.node, "server"));
    }
    let addr = SocketAddr::new(server.ipv4().into(), APP_PORT);

    // Identities from the API server's pods: the connection is mTLS, labelled with both.
    until(
        "an mTLS connection between pods the API server knows",
        || {
            client.connect(addr, "hello").is_ok()
                && two.proxy.metrics().lines().any(|l| {
                    l.starts_with("istio_tcp_connections_opened_total")
                        && l.contains("connection_security_policy=\"mutual_tls\"")
                        && l.contains(
                            "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
                        )
                })
        },
    );

    // A policy from the API server applies, and its removal too.
    let deny = objects::deny_port("shop", "no-8080", &APP_PORT.to_string());
    two.api.apply(deny.clone());
    until("the DENY policy from the API server", || {
        !client.connect(addr, "denied?").is_ok()
    });
    two.api.delete(&deny);
    until("the policy's deletion", || {
        client.connect(addr, "again").is_ok()
    });

    // The API server goes away: readiness stays 200 and says so; traffic keeps flowing.
    two.api.set_down(true);
    until("readiness reporting the outage", || {
        two.node
            .http_get(READINESS_PORT, "/healthz/ready")
            .is_ok_and(|r| r.status == 200 && r.body.contains("API server"))
    });
    assert!(
        client.connect(addr, "during the outage").is_ok(),
        "the last state keeps serving"
    );
    two.api.set_down(false);
    until("readiness clearing after the outage", || {
        two.node
            .http_get(READINESS_PORT, "/healthz/ready")
            .is_ok_and(|r| r.status == 200 && r.body.trim() == "ready")
    });

    // Enrollment follows istio.io/dataplane-mode: a pod in a namespace without the label,
    // and a pod of an ambient namespace that opts out, go through redirect-cni but are not
    // captured; their connections reach the server directly, in plaintext.
    let mut opted_out = objects::pod("shop", "opted-out", one.node.name(), "", "opted-out");
    opted_out["metadata"]["labels"]["istio.io/dataplane-mode"] = Value::from("none");
    opted_out["status"] = serde_json::json!({"phase": "Pending"});
    one.api.apply(opted_out);
    let outsider = one.node.add_pod("outsider", "legacy", true);
    let opted_out = one.node.add_pod("opted-out", "shop", true);
    let mut log = String::new();
    until("both ADDs logged as not captured", || {
        log = std::fs::read_to_string(one.proxy.log_path()).unwrap_or_default();
        log.matches("pod not captured").count() == 2
    });
    assert!(log.contains("namespace legacy is not labelled"), "{log}");
    assert!(
        log.contains("pod shop/opted-out is not in the ambient mesh"),
        "{log}"
    );
    let enrolled = one
        .proxy
        .metrics()
        .lines()
        .find(|l| l.starts_with("marrow_enrolled_pods"))
        .map(str::to_owned);
    assert_eq!(
        enrolled.as_deref(),
        Some("marrow_enrolled_pods 1"),
        "only the client is captured"
    );
    for pod in [&outsider, &opted_out] {
        let outcome = pod.connect(addr, "direct");
        assert!(outcome.is_ok(), "{}: {outcome:?}", pod.name());
        assert_eq!(
            outcome.connected().greeting.peer.ip(),
            std::net::IpAddr::from(pod.ipv4())
        );
    }

    // A pod that was running before marrow (no redirect-cni in its chain) is enrolled by the
    // node-side reconcile once the API server shows it on this node, in the mesh: found
    // through its processes' cgroup (`pod<uid>`) and checked by its address.
    let early = one.node.add_pod("early", "shop", false);
    let _early_app = early.serve(9090);
    one.api.apply(pod_object(&early, &one.node, "early"));
    until("the running pod enrolled by the reconcile", || {
        one.proxy
            .metrics()
            .lines()
            .any(|l| l == "marrow_enrolled_pods 2")
    });
    assert!(
        std::fs::read_to_string(one.proxy.log_path())
            .unwrap_or_default()
            .contains("running pod enrolled by the node-side reconcile"),
        "the reconcile says what it did"
    );
    until(
        "the reconciled pod's connections in mTLS with its identity",
        || {
            early.connect(addr, "early").is_ok()
                && two.proxy.metrics().lines().any(|l| {
                    l.starts_with("istio_tcp_connections_opened_total")
                        && l.contains(
                            "source_principal=\"spiffe://cluster.local/ns/shop/sa/early\"",
                        )
                })
        },
    );
    drop((one, two));
}
