//! Operating the proxy: replacing it under load (hitless upgrade) and stopping it (drain).
//!
//! - Upgrade: a second `node-proxy` started on a node takes the running one's in-pod listeners
//!   and CNI socket over its hand-off socket; the old one stops accepting, sends GOAWAY on its
//!   inbound HBONE connections and exits once its connections are done. Both nodes of a mesh
//!   are upgraded, one after the other, while a client opens new connections without pause
//!   and holds long-lived ones: none of either may fail.
//! - Drain: on SIGTERM readiness goes false, new connections are refused (fail closed), open
//!   ones go on until they finish or the deadline passes; then the process exits.

use std::time::{Duration, Instant};

use marrow_tests::proxy::READINESS_PORT;
use marrow_tests::two_nodes::{APP_PORT, Mesh, namespaces, v4};
use marrow_tests::{Conversation, Node, Proxy, binaries::testpod, require_env};

/// Bound on the successor taking over (it loads the capture and issues certificates first).
const TAKE_OVER: Duration = Duration::from_secs(30);
/// Bound on an old proxy exiting once its last connection closed.
const EXIT: Duration = Duration::from_secs(15);
/// How long the client opens connections without pause, spanning both upgrades.
const LOAD_SECS: u64 = 6;
/// Long-lived connections held across the upgrades.
const HELD: usize = 3;

#[test]
fn upgrading_both_nodes_under_load_fails_no_connection() {
    require_env!();
    let mut mesh = Mesh::start_with("upgrade", &["--drain-timeout-secs", "60"]);
    let client = mesh.n1.add_pod("client", "shop", true);
    let server = mesh.n2.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    mesh.apply(&namespaces().pod(&client, "client").pod(&server, "web"));
    let addr = v4(&server, APP_PORT);

    let mut held: Vec<Conversation> = (0..HELD)
        .map(|i| {
            let mut c = Conversation::open(&client, addr)
                .unwrap_or_else(|f| panic!("opening long-lived connection {i}: {f:?}"));
            assert_eq!(c.say("before").expect("echo before the upgrade"), "before");
            c
        })
        .collect();
    let seconds = LOAD_SECS.to_string();
    let target = addr.to_string();
    let load = client.spawn(
        testpod(),
        &[
            "connect-rate",
            &target,
            "--seconds",
            &seconds,
            "--threads",
            "2",
        ],
    );

    std::thread::sleep(Duration::from_millis(1500));
    let upgraded1 = take_over(&mut mesh.p1, "node 1 (client side: outbound 15001)");
    std::thread::sleep(Duration::from_millis(1000));
    let upgraded2 = take_over(&mut mesh.p2, "node 2 (server side: HBONE 15008)");

    let line = load.wait_for_line("{", Duration::from_secs(LOAD_SECS + 30));
    let result: serde_json::Value = serde_json::from_str(&line).expect("connect-rate JSON");
    let opened = result["connections"].as_u64().unwrap_or_default();
    let failed = result["errors"].as_u64().unwrap_or(u64::MAX);
    println!("new connections during the upgrades: {opened} opened, {failed} failed; {result}");
    assert_eq!(
        failed, 0,
        "new connections failed during the upgrades: {result}"
    );
    assert!(opened > 0, "the client opened no connection: {result}");

    for (i, c) in held.iter_mut().enumerate() {
        assert_eq!(
            c.say("after").unwrap_or_else(|f| panic!(
                "long-lived connection {i} broke in the upgrade: {f:?}"
            )),
            "after"
        );
    }
    for (i, c) in held.into_iter().enumerate() {
        c.close()
            .unwrap_or_else(|f| panic!("long-lived connection {i} did not close cleanly: {f:?}"));
    }
    for (proxy, which) in [(&mut mesh.p1, "node 1"), (&mut mesh.p2, "node 2")] {
        let status = proxy
            .wait_exit(EXIT)
            .unwrap_or_else(|| panic!("the old proxy of {which} did not exit once drained"));
        assert!(status.success(), "the old proxy of {which} exited {status}");
        assert!(
            proxy.log().contains("every connection finished"),
            "the old proxy of {which} did not drain cleanly:\n{}",
            proxy.log()
        );
    }
    // The new proxies alone now: a new connection works, and they serve the pods.
    let after = client.connect(addr, "hello");
    assert!(
        after.is_ok(),
        "a connection after both upgrades failed: {after:?}"
    );
    drop((upgraded1, upgraded2));
}

/// Starts `old`'s successor and waits until both say the hand-off happened.
fn take_over(old: &mut Proxy, which: &str) -> Proxy {
    let started = Instant::now();
    let mut new = old.start_successor();
    new.wait_for_log("took over from the previous node proxy", TAKE_OVER)
        .unwrap_or_else(|e| panic!("{which}: the new proxy did not take over: {e:#}"));
    old.wait_for_log("a new node proxy took over", TAKE_OVER)
        .unwrap_or_else(|e| panic!("{which}: the old proxy did not hand over: {e:#}"));
    println!("{which}: taken over in {:?}", started.elapsed());
    new
}

#[test]
fn sigterm_drains_open_connections_then_exits() {
    require_env!();
    let node = Node::new("drain");
    let mut proxy = node.start_proxy_with(marrow_tests::ProxyOptions {
        extra_args: vec!["--drain-timeout-secs".into(), "3".into()],
        ..marrow_tests::ProxyOptions::default()
    });
    proxy.wait_ready(Duration::from_secs(30)).expect("ready");
    let client = node.add_pod("client", "shop", true);
    let server = node.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    let addr = v4(&server, APP_PORT);
    let mut finishing = Conversation::open(&client, addr).expect("first connection");
    let mut lingering = Conversation::open(&client, addr).expect("second connection");

    proxy.signal_terminate();
    proxy
        .wait_for_log("stopped accepting; draining", Duration::from_secs(10))
        .expect("the proxy starts draining on SIGTERM");
    let ready = node.http_get(READINESS_PORT, "/healthz/ready");
    assert!(
        ready.as_ref().is_ok_and(|r| r.status == 503),
        "readiness while draining: {ready:?}"
    );
    let refused = client.connect(addr, "new");
    assert!(
        !refused.is_ok(),
        "a new connection was accepted while draining: {refused:?}"
    );
    assert_eq!(
        finishing
            .say("during the drain")
            .expect("an open connection works while draining"),
        "during the drain"
    );
    finishing
        .close()
        .expect("an open connection finishes cleanly");
    assert_eq!(lingering.say("still").expect("the other one too"), "still");
    let status = proxy
        .wait_exit(Duration::from_secs(15))
        .expect("the proxy exits at the drain deadline");
    assert!(status.success(), "exit status {status}");
    assert!(
        proxy.log().contains("drain deadline passed"),
        "the log says why it closed connections:\n{}",
        proxy.log()
    );
    assert!(
        lingering.say("after the deadline").is_err(),
        "the connection left at the deadline was closed"
    );
}

#[test]
fn a_failed_hand_off_leaves_the_old_proxy_serving() {
    use marrow_wire::seqpacket::{recv_datagram, send_datagram};
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::os::fd::AsFd;

    require_env!();
    let node = Node::new("handoff-fail");
    let mut proxy = node.start_proxy();
    proxy.wait_ready(Duration::from_secs(30)).expect("ready");
    let client = node.add_pod("client", "shop", true);
    let server = node.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    let addr = v4(&server, APP_PORT);
    let path = node.state_dir().join("handoff.sock");
    let connect = || {
        let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).expect("socket");
        sock.connect(&SockAddr::unix(&path).expect("address"))
            .expect("the running proxy listens on its hand-off socket");
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        sock
    };
    let reply = |sock: &Socket| {
        let datagram = recv_datagram(sock.as_fd())
            .expect("a reply")
            .expect("not closed");
        String::from_utf8(datagram.bytes).expect("UTF-8")
    };

    // Another protocol version: refused with a reason.
    let asker = connect();
    send_datagram(asker.as_fd(), br#"{"type":"take_over","version":99}"#, None).expect("send");
    let refused = reply(&asker);
    assert!(
        refused.contains(r#""type":"refused""#) && refused.contains("version"),
        "answer to another version: {refused}"
    );
    drop(asker);
    // Garbage.
    let asker = connect();
    send_datagram(asker.as_fd(), b"\x00\xffnot json", None).expect("send");
    assert!(reply(&asker).contains("refused"));
    drop(asker);
    // The right request, then the asker goes away half-way (a new proxy that crashed).
    let asker = connect();
    send_datagram(asker.as_fd(), br#"{"type":"take_over","version":1}"#, None).expect("send");
    let first = reply(&asker);
    assert!(first.contains(r#""type":"pod""#), "first message: {first}");
    drop(asker);
    proxy
        .wait_for_log("still serving", Duration::from_secs(10))
        .expect("the old proxy notices the failed hand-off");
    proxy
        .wait_for_log("enrollment resumed", Duration::from_secs(10))
        .expect("and serves CNI calls again");

    // Still serving: traffic, and a new pod enrolls through the resumed enrollment socket.
    let outcome = client.connect(addr, "still here");
    assert!(outcome.is_ok(), "after failed hand-offs: {outcome:?}");
    let late = node.add_pod("late", "shop", true);
    let outcome = late.connect(addr, "late");
    assert!(
        outcome.is_ok(),
        "a pod enrolled after the failed hand-off: {outcome:?}"
    );
    let log = proxy.log();
    for reason in ["expected take_over version 1", "malformed message"] {
        assert!(
            log.contains(reason),
            "the failed hand-off is logged with its reason ({reason:?}):\n{log}"
        );
    }
    assert_eq!(
        log.matches("hand-off to a new proxy failed; still serving")
            .count(),
        3,
        "each of the three failed hand-offs is logged:\n{log}"
    );
}
