//! Integration tests of the harness itself, with the real CNI plugins and no proxy: pods wired
//! by bridge + host-local talk over IPv4 and IPv6, across linked nodes, and every fixture
//! leaves nothing behind (also when a test panics); the proxy helper drives a stand-in proxy.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use marrow_tests::cni::CniCommand;
use marrow_tests::names::NETNS_PREFIX;
use marrow_tests::{
    BpffsDir, Cgroup, CniArgs, ConnectErrorKind, Netns, Node, NodeOptions, ProxyOptions,
    link_nodes, require_env,
};

#[test]
fn two_pods_on_one_node_talk_over_ipv4() {
    require_env!();
    let node = Node::new("h-two-pods");
    let a = node.add_pod("a", "default", false);
    let b = node.add_pod("b", "default", false);
    assert_ne!(a.ipv4(), b.ipv4());
    let _server = b.serve(8080);
    let dst = SocketAddr::from((b.ipv4(), 8080));

    let outcome = a.connect(dst, "hello from a");
    let c = outcome.connected();
    assert_eq!(c.echo, "hello from a");
    assert_eq!(c.peername, dst);
    assert_eq!(
        c.greeting.peer.ip(),
        IpAddr::V4(a.ipv4()),
        "b sees a's address"
    );
    assert_eq!(c.greeting.peer, c.sockname);
    assert_eq!(c.greeting.local, dst);

    let from_node = node.connect(dst, "from the node");
    assert_eq!(
        from_node.connected().greeting.peer.ip(),
        IpAddr::V4(node.gateway_v4()),
        "the node reaches pods from its bridge address"
    );
    let outside = a.connect_outside_cgroup(dst, "outside");
    assert_eq!(outside.connected().echo, "outside");

    let refused = a.connect(SocketAddr::from((b.ipv4(), 8081)), "x");
    assert_eq!(refused.error_kind(), Some(ConnectErrorKind::Refused));

    let bulk = a.bulk(dst, 8 << 20).expect("bulk transfer");
    assert_eq!(bulk.bytes, 8 << 20);

    a.cni_check().expect("CNI CHECK of a healthy pod");
}

#[test]
fn dual_stack_pods_talk_over_ipv6() {
    require_env!();
    let node = Node::with_options(
        "h-dual-stack",
        NodeOptions {
            dual_stack: true,
            index: None,
        },
    );
    let a = node.add_pod("a", "default", false);
    let b = node.add_pod("b", "default", false);
    let _server = b.serve_v6(8080);

    let dst6 = SocketAddr::from((b.ipv6(), 8080));
    let outcome = a.connect(dst6, "hello over v6");
    let c = outcome.connected();
    assert_eq!(c.echo, "hello over v6");
    assert_eq!(c.greeting.peer.ip(), IpAddr::V6(a.ipv6()));
    assert_eq!(c.greeting.local, dst6);

    // [::] takes IPv4 too; the server reports the canonical IPv4 peer.
    let outcome = a.connect(SocketAddr::from((b.ipv4(), 8080)), "and v4");
    assert_eq!(outcome.connected().greeting.peer.ip(), IpAddr::V4(a.ipv4()));
}

#[test]
fn pods_on_linked_nodes_talk() {
    require_env!();
    let options = NodeOptions {
        dual_stack: true,
        index: None,
    };
    let n1 = Node::with_options("h-link-1", options.clone());
    let n2 = Node::with_options("h-link-2", options);
    assert_ne!(n1.ipv4_subnet(), n2.ipv4_subnet());
    link_nodes(&n1, &n2);
    let a = n1.add_pod("a", "default", false);
    let b = n2.add_pod("b", "default", false);
    let _server = b.serve_v6(9000);
    for dst in [
        SocketAddr::from((b.ipv4(), 9000)),
        SocketAddr::from((b.ipv6(), 9000)),
    ] {
        let outcome = a.connect(dst, "across nodes");
        let c = outcome.connected();
        assert_eq!(c.echo, "across nodes");
        assert_eq!(
            c.greeting.peer.ip(),
            c.sockname.ip(),
            "no NAT between nodes"
        );
    }
}

/// What a node and a pod left on the machine, by name.
struct Footprint {
    netns: Vec<String>,
    cgroups: Vec<PathBuf>,
    bpffs: PathBuf,
    temp: PathBuf,
}

impl Footprint {
    fn of(node: &Node, pods: &[&marrow_tests::Pod]) -> Footprint {
        let mut netns = vec![node.netns().name().to_owned()];
        let mut cgroups = vec![node.cgroup().path().to_path_buf()];
        for pod in pods {
            netns.push(pod.netns().name().to_owned());
            cgroups.push(pod.cgroup().path().to_path_buf());
        }
        Footprint {
            netns,
            cgroups,
            bpffs: node.bpffs_dir().to_path_buf(),
            temp: node.temp_dir().to_path_buf(),
        }
    }

    fn assert_gone(&self) {
        for ns in &self.netns {
            assert!(!Netns::exists(ns), "network namespace {ns} is left");
        }
        for cg in &self.cgroups {
            assert!(!cg.exists(), "cgroup {} is left", cg.display());
        }
        assert!(!self.bpffs.exists(), "{} is left", self.bpffs.display());
        assert!(!self.temp.exists(), "{} is left", self.temp.display());
    }
}

#[test]
fn fixtures_leave_nothing_behind() {
    require_env!();
    let node = Node::new("h-cleanup");
    let pod = node.add_pod("p", "default", false);
    let mut server = pod.serve(8080);
    // What the proxy would do: pins in its bpffs directory, a process in the node cgroup.
    std::fs::create_dir_all(node.bpffs_dir().join("links")).expect("mkdir in bpffs");
    let mut sleeper = node
        .command("sleep")
        .arg("600")
        .spawn()
        .expect("sleep in the node");
    assert!(node.cgroup().procs().contains(&sleeper.id()));
    assert!(pod.cgroup().procs().contains(&server.pid()));
    let footprint = Footprint::of(&node, &[&pod]);
    let (pod_ns, pod_cg) = (footprint.netns[1].clone(), footprint.cgroups[1].clone());

    drop(pod);
    assert!(server.try_wait().is_some(), "the pod's process was killed");
    assert!(!Netns::exists(&pod_ns), "pod netns {pod_ns} is left");
    assert!(!pod_cg.exists(), "pod cgroup {} is left", pod_cg.display());
    assert!(
        node.netns()
            .ip(&["-o", "link", "show", "master", node.bridge_name()])
            .is_empty()
    );

    drop(node);
    let status = sleeper.wait().expect("reap sleep");
    assert!(!status.success(), "the node's process was killed");
    footprint.assert_gone();
    assert!(!Cgroup::exists("h-cleanup"));
    assert!(!BpffsDir::path_for("h-cleanup").exists());
}

#[test]
fn a_panicking_test_still_cleans_up() {
    require_env!();
    let footprint = std::panic::catch_unwind(|| {
        let node = Node::new("h-panic");
        let pod = node.add_pod("p", "default", false);
        let _server = pod.serve(8080);
        std::fs::create_dir_all(node.bpffs_dir()).expect("mkdir in bpffs");
        let footprint = Footprint::of(&node, &[&pod]);
        std::panic::panic_any(footprint);
    })
    .expect_err("the closure panics");
    let footprint = footprint
        .downcast::<Footprint>()
        .expect("the panic carries the footprint");
    footprint.assert_gone();
}

#[test]
fn bad_plugin_input_comes_back_as_a_cni_error() {
    require_env!();
    let node = Node::new("h-bad-input");
    let chain = node.chain(false);
    let pod_ns = Netns::new(&format!("{}.raw", node.name()));
    let args = CniArgs {
        container_id: "raw-1".to_owned(),
        netns: pod_ns.path(),
        ifname: "eth0".to_owned(),
        pod_namespace: "default".to_owned(),
        pod_name: "raw".to_owned(),
        pod_uid: "00000000-0000-4000-8000-000000000000".to_owned(),
    };
    let env = args.env(CniCommand::Add, chain.cni_path());
    let out = chain.exec_plugin("bridge", b"{not json", &env);
    assert!(!out.success(), "bridge accepted garbage: {out:?}");
    let body = out.error_body().expect("a CNI error object on stdout");
    assert!(body.code > 0, "{body:?}");
}

#[test]
fn redirect_cni_without_a_proxy_fails_add() {
    require_env!();
    let node = Node::new("h-no-proxy");
    let err = node
        .try_add_pod("p", "default", true)
        .expect_err("ADD must fail when no proxy listens on the socket");
    assert_eq!(err.plugin, "redirect-cni", "{err}");
    assert_eq!(err.command, CniCommand::Add);
    assert_eq!(err.code(), Some(11), "CNI code 11 (try again later): {err}");
    assert!(
        !Netns::exists(&format!("{NETNS_PREFIX}{}.p", node.name())),
        "the failed pod's netns was removed"
    );
    let leftover = node.cgroup().path().join("pod-p");
    assert!(!leftover.exists(), "no cgroup for a pod that never started");
    // DEL after the failed ADD released the address: host-local holds only the next pod's.
    let pod = node.add_pod("q", "default", false);
    let reserved: Vec<String> = std::fs::read_dir(node.ipam_dir().join(pod.chain().name()))
        .expect("host-local data dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.parse::<IpAddr>().is_ok())
        .collect();
    assert_eq!(reserved, [pod.ipv4().to_string()]);
}

/// Stands in for `node-proxy`: prints its arguments, answers `/healthz/ready` on 15021 and
/// `/metrics` on 15020 (127.0.0.1 of whatever namespace it runs in).
const FAKE_PROXY: &str = r#"#!/usr/bin/env python3
import http.server, sys, threading
print("fake-proxy args:", " ".join(sys.argv[1:]), flush=True)
BODIES = {"/healthz/ready": b"ready\n", "/metrics": b"fake_metric 1\n"}
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = BODIES.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body or b"")
    def log_message(self, *args):
        pass
servers = [http.server.ThreadingHTTPServer(("127.0.0.1", p), Handler) for p in (15020, 15021)]
threading.Thread(target=servers[0].serve_forever, daemon=True).start()
servers[1].serve_forever()
"#;

#[expect(
    clippy::expect_used,
    reason = "test set-up: a failed write must fail the test"
)]
fn fake_proxy_options(node: &Node, script: &str) -> ProxyOptions {
    use std::os::unix::fs::PermissionsExt;
    let path = node.temp_dir().join(format!("fake-proxy-{}", script.len()));
    std::fs::write(&path, script).expect("write the fake proxy");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let object = node.temp_dir().join("fake-ebpf.o");
    std::fs::write(&object, b"").expect("write the fake object");
    ProxyOptions {
        binary: Some(path),
        ebpf_object: Some(object),
        ..ProxyOptions::default()
    }
}

#[test]
fn proxy_helper_runs_restarts_and_kills_a_process_in_the_node() {
    require_env!();
    let node = Node::new("h-fake-proxy");
    let mut proxy = node.start_proxy_with(fake_proxy_options(&node, FAKE_PROXY));
    proxy
        .wait_ready(Duration::from_secs(20))
        .expect("the fake proxy gets ready");
    let first = proxy.pid().expect("running");
    assert!(
        node.cgroup().procs().contains(&first),
        "runs in the node cgroup"
    );
    assert_eq!(proxy.metrics(), "fake_metric 1\n");
    assert_eq!(proxy.http_get(15021, "/nope").expect("GET").status, 404);

    proxy.restart();
    proxy
        .wait_ready(Duration::from_secs(20))
        .expect("ready again after a restart");
    assert_ne!(proxy.pid(), Some(first));
    let log = proxy.log();
    assert!(log.contains("start #2"), "{log}");
    let cni_socket = node.cni_socket().display().to_string();
    assert!(log.contains(&format!("--cni-socket {cni_socket}")), "{log}");
    assert!(log.contains("--metrics-addr 127.0.0.1:15020 --readiness-addr 127.0.0.1:15021"));

    proxy.kill();
    assert_eq!(proxy.pid(), None);
    assert!(proxy.wait_ready(Duration::from_millis(300)).is_err());
}

#[test]
fn wait_ready_reports_a_proxy_that_exits() {
    require_env!();
    let node = Node::new("h-dead-proxy");
    let script = "#!/bin/sh\necho 'fatal: cannot load the eBPF object' >&2\nexit 3\n";
    let mut proxy = node.start_proxy_with(fake_proxy_options(&node, script));
    let err = proxy
        .wait_ready(Duration::from_secs(20))
        .expect_err("an exiting proxy is never ready");
    let msg = format!("{err:#}");
    assert!(msg.contains("exit status: 3"), "{msg}");
    assert!(msg.contains("cannot load the eBPF object"), "{msg}");
}
