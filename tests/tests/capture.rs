//! Capture end to end on one node: real eBPF programs on this kernel, pods made by a real CNI
//! chain (bridge + host-local, then redirect-cni), and the node-proxy binary.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use marrow_tests::{CniCommand, ConnectErrorKind, Node, NodeOptions, Pod, Proxy, require_env};
use marrow_wire::enrollment::{self, ErrorKind, Response};
use marrow_wire::seqpacket;

const READY: Duration = Duration::from_secs(30);

/// Sums the samples of `name` whose labels include every pair of `want`.
fn counter(metrics: &str, name: &str, want: &[(&str, &str)]) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            want.iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Polls `f` until it holds, for at most five seconds (the proxy counts a close after the
/// client has already seen it).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ready_proxy(node: &Node) -> Proxy {
    let mut proxy = node.start_proxy();
    proxy.wait_ready(READY).expect("proxy ready");
    proxy
}

fn v4(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.ipv4()), port)
}

#[test]
fn enrolled_pods_talk_through_the_proxy_and_keep_the_source_ip() {
    require_env!();
    let node = Node::new("cap-basic");
    let proxy = ready_proxy(&node);
    let a = node.add_pod("client", "shop", true);
    let b = node.add_pod("server", "shop", true);
    let _app = b.serve(8080);
    let dst = v4(&b, 8080);

    let outcome = a.connect(dst, "hello");
    let conn = outcome.connected();
    assert_eq!(conn.echo, "hello");
    assert_eq!(
        conn.greeting.peer.ip(),
        IpAddr::V4(a.ipv4()),
        "the app sees the client pod's IP"
    );
    assert_eq!(
        conn.greeting.local, dst,
        "the app's socket is on its own address"
    );
    assert_eq!(
        conn.peername, dst,
        "getpeername() in the client shows the original destination"
    );

    eventually("both sides counted opened and closed", || {
        let m = proxy.metrics();
        let src = [
            ("reporter", "source"),
            ("source_workload", "client"),
            ("source_workload_namespace", "shop"),
        ];
        let dst = [
            ("reporter", "destination"),
            ("destination_workload", "server"),
            ("destination_workload_namespace", "shop"),
        ];
        counter(&m, "istio_tcp_connections_opened_total", &src) == 1
            && counter(&m, "istio_tcp_connections_closed_total", &src) == 1
            && counter(&m, "istio_tcp_connections_opened_total", &dst) == 1
            && counter(&m, "istio_tcp_connections_closed_total", &dst) == 1
            && counter(&m, "istio_tcp_sent_bytes_total", &src) == 5
    });
    assert!(proxy.metrics().contains("marrow_enrolled_pods 2"));
}

#[test]
fn enrolled_pods_talk_over_ipv6_through_the_proxy() {
    require_env!();
    let node = Node::with_options(
        "cap-v6",
        NodeOptions {
            dual_stack: true,
            index: None,
        },
    );
    let proxy = ready_proxy(&node);
    let a = node.add_pod("client", "shop", true);
    let b = node.add_pod("server", "shop", true);
    let _app = b.serve_v6(8080);
    let dst = SocketAddr::new(IpAddr::V6(b.ipv6()), 8080);

    let outcome = a.connect(dst, "over-v6");
    let conn = outcome.connected();
    assert_eq!(conn.echo, "over-v6");
    assert_eq!(
        conn.greeting.peer.ip(),
        IpAddr::V6(a.ipv6()),
        "the app sees the client's IPv6"
    );
    assert_eq!(
        conn.peername, dst,
        "getpeername6 shows the original destination"
    );
    eventually("v6 connections counted on both sides", || {
        let m = proxy.metrics();
        counter(
            &m,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")],
        ) == 1
            && counter(
                &m,
                "istio_tcp_connections_opened_total",
                &[("reporter", "destination")],
            ) == 1
    });
}

#[test]
fn pods_without_redirect_cni_are_not_captured() {
    require_env!();
    let node = Node::new("cap-plain");
    let proxy = ready_proxy(&node);
    let c = node.add_pod("plain-client", "shop", false);
    let d = node.add_pod("plain-server", "shop", false);
    let _app = d.serve(8080);

    let outcome = c.connect(v4(&d, 8080), "direct");
    assert_eq!(outcome.connected().greeting.peer.ip(), IpAddr::V4(c.ipv4()));
    // Give a (wrongly) capturing proxy time to count, then check it counted nothing.
    std::thread::sleep(Duration::from_millis(300));
    let m = proxy.metrics();
    assert_eq!(
        counter(&m, "istio_tcp_connections_opened_total", &[]),
        0,
        "{m}"
    );
    assert!(m.contains("marrow_enrolled_pods 0"), "{m}");
}

#[test]
fn del_uncaptures_and_check_then_reports_the_missing_enrollment() {
    require_env!();
    let node = Node::new("cap-del");
    let proxy = ready_proxy(&node);
    let a = node.add_pod("client", "shop", true);
    let d = node.add_pod("plain-server", "shop", false);
    let _app = d.serve(8080);
    let src = [("reporter", "source")];

    a.connect(v4(&d, 8080), "one").connected();
    eventually("first connection counted", || {
        counter(&proxy.metrics(), "istio_tcp_connections_closed_total", &src) == 1
    });
    a.cni_check().expect("CHECK passes while enrolled");

    // DEL of redirect-cni alone: the pod keeps its interface, so capture is all that changes.
    let chain = a.chain();
    let del = chain.exec_plugin(
        "redirect-cni",
        redirect_config(&node, "1.0.0").as_bytes(),
        &a.cni_args().env(CniCommand::Del, chain.cni_path()),
    );
    assert_eq!(
        del.exit_code,
        Some(0),
        "DEL failed: {} {}",
        del.stdout,
        del.stderr
    );

    a.connect(v4(&d, 8080), "two").connected();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        counter(&proxy.metrics(), "istio_tcp_connections_opened_total", &src),
        1,
        "not captured after DEL"
    );

    let err = a.cni_check().expect_err("CHECK must fail after DEL");
    assert_eq!(err.plugin, "redirect-cni", "{err}");
    let body = err.error.as_ref().expect("CNI error JSON");
    assert!(body.msg.contains("not enrolled"), "{body:?}");
}

#[test]
fn proxy_down_fails_closed_and_a_restart_recovers_without_the_cni() {
    require_env!();
    let node = Node::new("cap-restart");
    let mut proxy = ready_proxy(&node);
    let a = node.add_pod("client", "shop", true);
    let b = node.add_pod("server", "shop", true);
    let _app = b.serve(8080);
    let dst = v4(&b, 8080);
    a.connect(dst, "before").connected();

    proxy.kill();
    let out = a.connect_timeout(dst, "while-down", Duration::from_secs(2));
    assert_eq!(
        out.error_kind(),
        Some(ConnectErrorKind::Refused),
        "outbound must not bypass: {out:?}"
    );
    let from_node = node.connect(dst, "inbound-while-down");
    assert!(
        !from_node.is_ok(),
        "inbound must fail closed: {from_node:?}"
    );
    let uncaptured_process = a.connect_outside_cgroup(dst, "outside-cgroup");
    assert!(
        !uncaptured_process.is_ok(),
        "inbound from any source fails closed: {uncaptured_process:?}"
    );

    proxy.restart();
    proxy.wait_ready(READY).expect("restarted proxy ready");
    let conn = a.connect(dst, "after").connected().clone();
    assert_eq!(conn.greeting.peer.ip(), IpAddr::V4(a.ipv4()));
    assert!(
        proxy.log().contains("pod re-adopted"),
        "restart re-adopts from its records"
    );
    eventually("restarted proxy counts", || {
        counter(
            &proxy.metrics(),
            "istio_tcp_connections_opened_total",
            &[("reporter", "destination")],
        ) >= 1
    });
}

#[test]
fn malformed_enrollment_requests_are_refused_and_the_proxy_keeps_serving() {
    require_env!();
    let node = Node::new("cap-bad");
    let proxy = ready_proxy(&node);
    let a = node.add_pod("client", "shop", true);
    let b = node.add_pod("server", "shop", true);
    let _app = b.serve(8080);

    // Garbage bytes on the enrollment socket.
    let reply = raw_request(&node, b"\x00\xffnot json", None);
    assert!(
        matches!(
            reply,
            Response::Error {
                kind: ErrorKind::Malformed,
                ..
            }
        ),
        "{reply:?}"
    );

    // A well-formed ADD with a hostile uid and a real netns descriptor.
    let netns = b.netns().open();
    let add = enrollment::Request::Add {
        version: enrollment::PROTOCOL_VERSION,
        add: enrollment::AddPod {
            pod: enrollment::PodIdentity {
                uid: "../../etc/x".into(),
                namespace: "shop".into(),
                name: "evil".into(),
                service_account: None,
            },
            attachment: enrollment::Attachment {
                container_id: "x".into(),
                ifname: "eth0".into(),
            },
            netns_path: "/proc/1/ns/net".into(),
            ips: vec!["10.244.0.250".parse().unwrap()],
        },
    };
    let bytes = serde_json::to_vec(&add).unwrap();
    let reply = raw_request(&node, &bytes, Some(netns.as_fd()));
    let Response::Error {
        kind: ErrorKind::InvalidPod,
        message,
    } = reply
    else {
        panic!("expected InvalidPod, got {reply:?}");
    };
    assert!(message.contains("uid"), "{message}");

    // An ADD without its descriptor.
    let reply = raw_request(&node, &bytes, None);
    assert!(
        matches!(
            reply,
            Response::Error {
                kind: ErrorKind::Malformed,
                ..
            }
        ),
        "{reply:?}"
    );

    // Everything already enrolled still works.
    a.connect(v4(&b, 8080), "still-fine").connected();
    assert!(proxy.metrics().contains("marrow_enrolled_pods 2"));
}

#[test]
fn cni_status_follows_the_proxy_and_version_answers() {
    require_env!();
    let node = Node::new("cap-status");
    let mut proxy = ready_proxy(&node);
    let chain = node.chain(true);
    let status = |chain: &marrow_tests::CniChain| {
        chain.exec_plugin(
            "redirect-cni",
            redirect_config(&node, "1.1.0").as_bytes(),
            &[("CNI_COMMAND".to_owned(), "STATUS".to_owned())],
        )
    };
    let up = status(&chain);
    assert_eq!(
        up.exit_code,
        Some(0),
        "STATUS with the proxy up: {} {}",
        up.stdout,
        up.stderr
    );

    let version = chain.exec_plugin(
        "redirect-cni",
        redirect_config(&node, "1.1.0").as_bytes(),
        &[("CNI_COMMAND".to_owned(), "VERSION".to_owned())],
    );
    let v: serde_json::Value = serde_json::from_str(&version.stdout).expect("VERSION prints JSON");
    let supported = v["supportedVersions"]
        .as_array()
        .expect("supportedVersions");
    assert!(
        supported.iter().any(|s| s == "1.1.0") && supported.iter().any(|s| s == "1.0.0"),
        "{v}"
    );

    proxy.kill();
    let down = status(&chain);
    assert_ne!(down.exit_code, Some(0));
    let err: serde_json::Value = serde_json::from_str(&down.stdout).expect("error JSON");
    assert_eq!(err["code"], 50, "{err}");
    assert!(
        err["msg"]
            .as_str()
            .unwrap_or("")
            .contains(&node.cni_socket().display().to_string())
            || err["details"]
                .as_str()
                .unwrap_or("")
                .contains(&node.cni_socket().display().to_string()),
        "{err}"
    );
}

fn redirect_config(node: &Node, version: &str) -> String {
    serde_json::json!({
        "cniVersion": version,
        "name": "marrow-test",
        "type": "redirect-cni",
        "proxySocket": node.cni_socket(),
        "proxyTimeoutMs": 3000,
    })
    .to_string()
}

/// Sends raw bytes (and an optional descriptor) to the enrollment socket; returns the reply.
fn raw_request(node: &Node, bytes: &[u8], fd: Option<std::os::fd::BorrowedFd<'_>>) -> Response {
    use socket2::{Domain, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).expect("socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    sock.connect(&SockAddr::unix(node.cni_socket()).expect("path"))
        .expect("connect to the enrollment socket");
    seqpacket::send_datagram(sock.as_fd(), bytes, fd).expect("send");
    let reply = seqpacket::recv_datagram(sock.as_fd())
        .expect("recv")
        .expect("a reply");
    serde_json::from_slice(&reply.bytes).expect("reply JSON")
}

/// Connection churn from parallel clients through the proxy: the proxy's source-preserving
/// connections to the app must never pick a port that collides with a live captured
/// connection from the same client (the two 4-tuples mirror each other in the server's netns,
/// so the kernel's own uniqueness check cannot see the clash and a SYN lands on the live
/// connection, resetting it).
#[test]
fn parallel_connection_churn_through_the_proxy_loses_nothing() {
    require_env!();
    let node = Node::new("cap-churn");
    let _proxy = ready_proxy(&node);
    let a = node.add_pod("client", "shop", true);
    let b = node.add_pod("server", "shop", true);
    let _app = b.serve(8080);
    let testpod = marrow_tests::binaries::testpod();
    let testpod = testpod.to_str().expect("utf-8 path");
    let dst = v4(&b, 8080).to_string();
    let out = a.output(
        testpod,
        &["connect-rate", &dst, "--seconds", "3", "--threads", "8"],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rate: marrow_tests::testpod::ConnectRate =
        marrow_tests::testpod::parse_load_output(&stdout)
            .expect("connect-rate output")
            .expect("connect-rate ran");
    assert!(
        rate.connections > 500,
        "too few connections to mean anything: {rate:?}"
    );
    assert_eq!(rate.errors, 0, "connections failed under churn: {rate:?}");
}
