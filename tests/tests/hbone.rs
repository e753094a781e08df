//! HBONE between node proxies: two nodes (network namespaces, each running its own
//! `node-proxy` with the same mesh CA and a state file listing both nodes' pods) linked by an
//! underlay veth that a packet sniffer watches. Traffic between pods in the mesh must cross the
//! underlay as TLS to port 15008 only; traffic to pods outside the mesh passes through as plain
//! TCP; a server with the wrong identity, and anything that is not a mesh peer speaking TLS 1.3
//! with a mesh certificate, is refused.

use std::net::SocketAddr;
use std::time::Duration;

use marrow_tests::mesh::{HBONE_PORT, apply_state};
use marrow_tests::metrics::count;
use marrow_tests::probe::{
    H2Request, ProbeIdentity, TlsOutcome, TlsProbe, send_raw, tls12_client_hello,
};
use marrow_tests::sniff::{Capture, TCP_ACK, TCP_SYN, find};
use marrow_tests::state_file::{DATAPLANE_MODE_LABEL, PodRecord};
use marrow_tests::testpod::{Held, parse_load_output};
use marrow_tests::two_nodes::{
    APP_PORT, BULK_BYTES, CLOSED, Mesh, OPENED, READY, SENT, assert_refusal_logged, assert_tls,
    cleartext_to_apps, eventually, ip, labels, marker, namespaces, principals, v4,
};
use marrow_tests::{
    ConnectErrorKind, Conversation, Node, NodeLink, NodeOptions, Sniffer, require_env, spiffe_id,
};

/// No proxies: the sniffer on the underlay sees a plaintext marker sent between pods on two
/// nodes, in the flow to the server's port (the control every other test relies on).
#[test]
fn the_underlay_sniffer_sees_plaintext_between_nodes() {
    require_env!();
    let n1 = Node::with_options("hbone-sniff-1", NodeOptions::default());
    let n2 = Node::with_options("hbone-sniff-2", NodeOptions::default());
    let link = NodeLink::between(&n1, &n2);
    let a = n1.add_pod("a", "legacy", false);
    let b = n2.add_pod("b", "legacy", false);
    let _app = b.serve(APP_PORT);
    let sniffer = Sniffer::start(n1.netns(), &link.a_ifname);
    let text = marker("sniffer");
    assert_eq!(a.connect(v4(&b, APP_PORT), &text).connected().echo, text);
    let capture = sniffer.stop();
    let to_app = *capture
        .flows_to_port(APP_PORT)
        .first()
        .unwrap_or_else(|| panic!("no flow to the app:\n{}", capture.summary()));
    assert_eq!(
        (to_app.src.ip(), to_app.dst),
        (ip(&a), v4(&b, APP_PORT)),
        "{}",
        capture.summary()
    );
    assert!(
        find(&capture.stream(to_app).bytes, text.as_bytes()),
        "{}",
        capture.summary()
    );
    assert!(
        find(&capture.stream(Capture::reverse(to_app)).bytes, b"peer="),
        "the greeting on the way back: {}",
        capture.summary()
    );
}

#[test]
fn cross_node_traffic_is_carried_in_mutual_tls() {
    require_env!();
    let mesh = Mesh::start("hbone-mtls");
    let client = mesh.n1.add_pod("client", "shop", true);
    let server = mesh.n2.add_pod("server", "shop", true);
    let legacy = mesh.n2.add_pod("legacy-db", "legacy", false);
    let (_app, _legacy_app) = (server.serve(APP_PORT), legacy.serve(APP_PORT));
    mesh.apply(
        &namespaces()
            .pod(&client, "client")
            .pod(&server, "web")
            .pod(&legacy, "default"),
    );
    let dst = v4(&server, APP_PORT);
    let (secret, control) = (marker("mesh"), marker("control"));

    let sniffer = mesh.sniff();
    let bulk = client
        .bulk(dst, BULK_BYTES)
        .unwrap_or_else(|f| panic!("bulk through HBONE failed: {f:?}"));
    assert_eq!(bulk.bytes, BULK_BYTES, "every byte echoed intact");
    let outcome = client.connect(dst, &secret);
    let conn = outcome.connected();
    assert_eq!(conn.echo, secret);
    assert_eq!(
        conn.greeting.peer.ip(),
        ip(&client),
        "the app sees the client pod's IP"
    );
    assert_eq!(conn.greeting.local, dst);
    assert_eq!(
        conn.peername, dst,
        "the client sees the original destination"
    );
    let plain = client.connect(v4(&legacy, APP_PORT), &control);
    assert_eq!(plain.connected().echo, control);
    let capture = sniffer.stop();

    // The sniffer works: the plaintext control is on the wire, to the legacy pod's port.
    assert_eq!(
        cleartext_to_apps(&capture, &control),
        vec![(ip(&client), v4(&legacy, APP_PORT))],
        "the control's plaintext, client pod to legacy pod:\n{}",
        capture.summary()
    );
    // The meshed bytes are not: no plaintext, no flow to the app port, only TLS to 15008.
    assert!(
        !capture.contains(secret.as_bytes()),
        "the plaintext crossed the underlay:\n{}",
        capture.summary()
    );
    assert!(
        capture
            .flows_with_port(APP_PORT)
            .iter()
            .all(|f| f.src.ip() == ip(&legacy) || f.dst.ip() == ip(&legacy)),
        "a plaintext flow to the meshed app:\n{}",
        capture.summary()
    );
    let hbone = capture.flows_to_port(HBONE_PORT);
    assert!(!hbone.is_empty(), "no HBONE flow:\n{}", capture.summary());
    let (mut up, mut down) = (0, 0);
    for flow in hbone {
        assert_eq!(
            (flow.src.ip(), flow.dst),
            (ip(&client), SocketAddr::new(ip(&server), HBONE_PORT)),
            "HBONE goes from the client pod's address to the server pod's 15008"
        );
        assert_tls(&capture, flow, &[0x0301, 0x0303]);
        assert_tls(&capture, Capture::reverse(flow), &[0x0303]);
        up += capture.payload_len(flow);
        down += capture.payload_len(Capture::reverse(flow));
    }
    let bulk_len = usize::try_from(BULK_BYTES).expect("fits");
    assert!(
        up > bulk_len && down > bulk_len,
        "the bulk transfer went through 15008 ({up} bytes up, {down} down):\n{}",
        capture.summary()
    );

    let ids = principals("client", "web");
    let secret_len = u64::try_from(secret.len()).expect("fits");
    eventually("both reporters count two mutual-TLS connections", || {
        let (m1, m2) = (mesh.p1.metrics(), mesh.p2.metrics());
        let src = labels("source", "mutual_tls", &ids);
        let dst = labels("destination", "mutual_tls", &ids);
        let seen = [
            count(&m1, OPENED, &src),
            count(&m1, CLOSED, &src),
            count(&m2, OPENED, &dst),
            count(&m2, CLOSED, &dst),
        ];
        let sent = count(&m1, SENT, &src);
        if seen == [2; 4] && sent == BULK_BYTES + secret_len {
            Ok(())
        } else {
            Err(format!(
                "opened/closed (source, destination) {seen:?}, sent {sent}\n--- node 1:\n{m1}\n--- node 2:\n{m2}"
            ))
        }
    });
}

#[test]
fn a_destination_outside_the_mesh_gets_plain_passthrough() {
    require_env!();
    let mesh = Mesh::start("hbone-passthrough");
    let client = mesh.n1.add_pod("client", "shop", true);
    let legacy = mesh.n2.add_pod("legacy-db", "legacy", false);
    let opted_out = mesh.n2.add_pod("batch", "shop", false);
    let unlisted = mesh.n2.add_pod("unlisted", "legacy", false);
    let _apps = [&legacy, &opted_out, &unlisted].map(|p| p.serve(APP_PORT));
    mesh.apply(
        &namespaces()
            .pod(&client, "client")
            .pod(&legacy, "default")
            .with_pod(PodRecord::of(&opted_out, "batch").with_label(DATAPLANE_MODE_LABEL, "none")),
    );

    let sniffer = mesh.sniff();
    for (pod, what) in [
        (&legacy, "legacy"),
        (&opted_out, "opted-out"),
        (&unlisted, "unlisted"),
    ] {
        let text = marker(what);
        let outcome = client.connect(v4(pod, APP_PORT), &text);
        let conn = outcome.connected();
        assert_eq!(conn.echo, text, "{what}");
        assert_eq!(
            conn.greeting.peer.ip(),
            ip(&client),
            "{what}: the source IP is kept"
        );
    }
    let capture = sniffer.stop();
    for (pod, what) in [
        (&legacy, "legacy"),
        (&opted_out, "opted-out"),
        (&unlisted, "unlisted"),
    ] {
        assert_eq!(
            cleartext_to_apps(&capture, &marker(what)),
            vec![(ip(&client), v4(pod, APP_PORT))],
            "{what}: the bytes go as they are, straight to the pod:\n{}",
            capture.summary()
        );
    }
    assert!(
        capture.flows_with_port(HBONE_PORT).is_empty(),
        "nothing outside the mesh goes through HBONE:\n{}",
        capture.summary()
    );
    eventually("three plaintext connections counted by the source", || {
        let m = mesh.p1.metrics();
        let plain = [
            ("reporter", "source"),
            ("connection_security_policy", "none"),
            ("destination_principal", "unknown"),
        ];
        let mtls = [("connection_security_policy", "mutual_tls")];
        let (opened, closed) = (count(&m, OPENED, &plain), count(&m, CLOSED, &plain));
        let meshed = count(&m, OPENED, &mtls);
        if (opened, closed, meshed) == (3, 3, 0) {
            Ok(())
        } else {
            Err(format!(
                "opened {opened}, closed {closed}, mutual_tls {meshed}\n{m}"
            ))
        }
    });
}

#[test]
fn a_server_with_the_wrong_identity_is_refused() {
    require_env!();
    let mesh = Mesh::start("hbone-wrong-id");
    let client = mesh.n1.add_pod("client", "shop", true);
    let server = mesh.n2.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    let state = namespaces().pod(&client, "client").pod(&server, "web");
    // Node 1 expects .../sa/web; node 2 believes the server runs as "other" and presents that.
    apply_state(&mesh.p1, &mesh.state1, &state);
    let other = state
        .clone()
        .with_service_account("shop", "server", "other");
    apply_state(&mesh.p2, &mesh.state2, &other);
    let dst = v4(&server, APP_PORT);
    let text = marker("wrong-identity");

    let sniffer = mesh.sniff();
    let outcome = client.connect_timeout(dst, &text, Duration::from_secs(10));
    let capture = sniffer.stop();
    assert!(
        matches!(
            outcome.error_kind(),
            Some(ConnectErrorKind::Reset | ConnectErrorKind::Refused)
        ),
        "the connection must fail (reset or refused), not fall back: {outcome:?}"
    );
    assert!(
        !capture.contains(text.as_bytes()),
        "the plaintext crossed the underlay:\n{}",
        capture.summary()
    );
    assert!(
        capture.flows_with_port(APP_PORT).is_empty(),
        "no plaintext fallback to the app port:\n{}",
        capture.summary()
    );
    let presented = spiffe_id("shop", "other");
    eventually("node 1 logs the identity it refused", || {
        if mesh.p1.log().contains(&presented) {
            Ok(())
        } else {
            Err(format!(
                "no mention of {presented} in {}",
                mesh.p1.log_path().display()
            ))
        }
    });
    let m2 = mesh.p2.metrics();
    assert_eq!(
        count(&m2, OPENED, &[("reporter", "destination")]),
        0,
        "nothing reached the app:\n{m2}"
    );

    // The same client and server, once both sides agree on the identity: it works.
    apply_state(&mesh.p2, &mesh.state2, &state);
    let outcome = client.connect(dst, "agreed");
    assert_eq!(outcome.connected().greeting.peer.ip(), ip(&client));
    let ids = principals("client", "web");
    eventually("the agreed connection counted as mutual TLS", || {
        let m = mesh.p2.metrics();
        match count(&m, OPENED, &labels("destination", "mutual_tls", &ids)) {
            1 => Ok(()),
            n => Err(format!("{n} opened\n{m}")),
        }
    });
}

#[test]
fn garbage_on_15008_does_not_hurt_the_proxy() {
    require_env!();
    // A short handshake timeout, so a stalled client is dropped well within the test's bound.
    let mut mesh = Mesh::start_with("hbone-garbage", &["--handshake-timeout-ms", "2000"]);
    let client = mesh.n1.add_pod("client", "shop", true);
    let server = mesh.n2.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    mesh.apply(&namespaces().pod(&client, "client").pod(&server, "web"));
    let hbone = SocketAddr::new(ip(&server), HBONE_PORT);
    let dst = v4(&server, APP_PORT);
    let timeout = Duration::from_secs(20);
    let noise: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let raw: [(&str, Vec<u8>); 5] = [
        ("random bytes", noise),
        (
            "an HTTP/1 request",
            format!("GET / HTTP/1.1\r\nHost: {dst}\r\n\r\n").into_bytes(),
        ),
        (
            "cleartext HTTP/2",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec(),
        ),
        ("a TLS 1.2 ClientHello", tls12_client_hello()),
        ("a client that stalls before its ClientHello", Vec::new()),
    ];
    let (ca_cert, ca_key) = (mesh.ca.cert_path(), mesh.ca.key_path());
    let client_id = spiffe_id("shop", "client");
    let mesh_peer = || Some(ProbeIdentity::signed_by(&ca_cert, &ca_key, &client_id));
    let tls = |identity: Option<ProbeIdentity>, request: H2Request| TlsProbe {
        identity,
        request,
        timeout,
    };
    let p2 = &mesh.p2;

    // From node 1's netns, outside any pod: nothing here is captured by node 1's proxy.
    mesh.n1.netns().run(|| {
        for (what, bytes) in &raw {
            let reply = send_raw(hbone, bytes, timeout)
                .unwrap_or_else(|e| panic!("{what}: cannot reach {hbone}: {e}"));
            assert!(
                reply.closed_without_answer(),
                "{what}: the server must close without answering: {reply:?}"
            );
            assert_refusal_logged(p2, what, reply.local);
        }
        for (what, identity) in [
            ("no client certificate", None),
            (
                "a client certificate from another CA",
                Some(ProbeIdentity::from_foreign_ca(&client_id)),
            ),
        ] {
            let report = tls(identity, H2Request::connect(dst)).run(hbone);
            assert!(
                matches!(
                    report.outcome,
                    TlsOutcome::HandshakeFailed(_) | TlsOutcome::RefusedAfterHandshake(_)
                ),
                "{what}: must be refused before any HTTP/2: {:?}",
                report.outcome
            );
            let cert = report
                .server_cert
                .expect("the server presented a certificate");
            assert!(
                find(&cert, spiffe_id("shop", "web").as_bytes()),
                "{what}: the server presents the destination pod's identity"
            );
            assert_refusal_logged(p2, what, report.local);
        }
        // A mesh peer asking for what HBONE does not serve: an answer, never a tunnel.
        let elsewhere = v4(&client, APP_PORT);
        let requests = [
            (
                "a CONNECT to a pod that is not this one",
                H2Request::connect(elsewhere),
                Some(400),
            ),
            (
                "a CONNECT to a closed port",
                H2Request::connect(v4(&server, 8081)),
                Some(503),
            ),
            ("a GET", H2Request::Get { authority: dst }, Some(400)),
            (
                "a CONNECT with 40 KB of headers",
                H2Request::Connect {
                    target: dst,
                    padding: 40_000,
                },
                None,
            ),
        ];
        for (what, request, expected) in requests {
            let report = tls(mesh_peer(), request).run(hbone);
            assert!(
                !report.outcome.tunnel_opened(),
                "{what}: {:?}",
                report.outcome
            );
            match (&report.outcome, expected) {
                (TlsOutcome::Answered { status, .. }, Some(_)) => {
                    assert_eq!(*status, expected, "{what}: {:?}", report.outcome);
                }
                (TlsOutcome::Answered { .. } | TlsOutcome::RefusedAfterHandshake(_), None) => {}
                (other, _) => panic!("{what}: {other:?}"),
            }
        }
        // The control: a mesh peer's CONNECT to the pod gets its tunnel and the app's greeting,
        // so the refusals above are the proxy's doing, not the probe's.
        let report = tls(mesh_peer(), H2Request::connect(dst)).run(hbone);
        match &report.outcome {
            TlsOutcome::Answered {
                status: Some(200),
                data,
                reset: false,
            } if data.starts_with(b"peer=") => {}
            other => panic!("a mesh peer must get its tunnel: {other:?}"),
        }
    });

    assert_eq!(mesh.p2.try_wait(), None, "node 2's proxy is still running");
    let outcome = client.connect(dst, "still-fine");
    let conn = outcome.connected();
    assert_eq!(conn.echo, "still-fine");
    assert_eq!(conn.greeting.peer.ip(), ip(&client));
    let ids = principals("client", "web");
    eventually(
        "the meshed connection after the garbage is mutual TLS",
        || {
            let m = mesh.p1.metrics();
            match count(&m, OPENED, &labels("source", "mutual_tls", &ids)) {
                1 => Ok(()),
                n => Err(format!("{n} opened\n{m}")),
            }
        },
    );
}

/// Sequential connections from one pod to one destination ride one pooled HBONE connection (or
/// a few): fewer TLS handshakes (TCP connections to 15008) than application connections.
#[test]
fn connections_share_pooled_hbone_connections() {
    require_env!();
    let mesh = Mesh::start("hbone-pool");
    let client = mesh.n1.add_pod("client", "shop", true);
    let server = mesh.n2.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    mesh.apply(&namespaces().pod(&client, "client").pod(&server, "web"));
    let connections = 20;

    let sniffer = mesh.sniff();
    let testpod = marrow_tests::binaries::testpod();
    let dst = v4(&server, APP_PORT).to_string();
    let n = connections.to_string();
    let hold = client.spawn(&testpod, &["hold", &dst, "--connections", &n]);
    let line = hold.wait_for_line("{", READY);
    let held: Held = parse_load_output(&line)
        .expect("hold output")
        .unwrap_or_else(|f| panic!("holding {connections} connections failed: {f:?}"));
    assert_eq!(held.held, connections);
    let ids = principals("client", "web");
    eventually("every held connection is a tunnel at the server", || {
        let m = mesh.p2.metrics();
        match count(&m, OPENED, &labels("destination", "mutual_tls", &ids)) {
            n if n == connections => Ok(()),
            n => Err(format!("{n} opened\n{m}")),
        }
    });
    let capture = sniffer.stop();
    let handshakes = capture
        .segments
        .iter()
        .filter(|s| s.dst.port() == HBONE_PORT && s.flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
        .count();
    assert!(
        (1..usize::try_from(connections).expect("fits")).contains(&handshakes),
        "{handshakes} HBONE connections for {connections} streams:\n{}",
        capture.summary()
    );
}

#[test]
fn hbone_survives_a_state_reload() {
    require_env!();
    let mesh = Mesh::start("hbone-reload");
    let client = mesh.n1.add_pod("client", "shop", true);
    let server = mesh.n2.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    let state = namespaces().pod(&client, "client").pod(&server, "web");
    mesh.apply(&state);

    let mut held = Conversation::open(&client, v4(&server, APP_PORT))
        .unwrap_or_else(|f| panic!("opening the long connection: {f:?}"));
    assert_eq!(held.greeting().peer.ip(), ip(&client));
    assert_eq!(held.say("before-reload").expect("echo"), "before-reload");
    let ids = principals("client", "web");
    eventually("the long connection is counted as mutual TLS", || {
        let m = mesh.p1.metrics();
        match count(&m, OPENED, &labels("source", "mutual_tls", &ids)) {
            1 => Ok(()),
            n => Err(format!("{n} opened\n{m}")),
        }
    });

    // A new pod with a new identity appears; both proxies reload.
    let api = mesh.n2.add_pod("api", "shop", true);
    let _api_app = api.serve(APP_PORT);
    mesh.apply(&state.clone().pod(&api, "api"));

    assert_eq!(
        held.say("after-reload")
            .expect("the long connection survives the reload"),
        "after-reload"
    );
    let outcome = client.connect(v4(&api, APP_PORT), "to-the-new-pod");
    assert_eq!(outcome.connected().greeting.peer.ip(), ip(&client));
    let outcome = client.connect(v4(&server, APP_PORT), "to-the-old-pod");
    assert_eq!(outcome.connected().echo, "to-the-old-pod");
    assert_eq!(held.say("still-there").expect("echo"), "still-there");
    held.close().expect("a clean close");

    let to_api = principals("client", "api");
    eventually(
        "new and old connections are mutual TLS on both sides",
        || {
            let (m1, m2) = (mesh.p1.metrics(), mesh.p2.metrics());
            let seen = [
                count(&m1, CLOSED, &labels("source", "mutual_tls", &ids)),
                count(&m2, CLOSED, &labels("destination", "mutual_tls", &ids)),
                count(&m1, CLOSED, &labels("source", "mutual_tls", &to_api)),
                count(&m2, CLOSED, &labels("destination", "mutual_tls", &to_api)),
            ];
            if seen == [2, 2, 1, 1] {
                Ok(())
            } else {
                Err(format!(
                    "closed (web src, web dst, api src, api dst) {seen:?}\n{m1}\n{m2}"
                ))
            }
        },
    );
}
