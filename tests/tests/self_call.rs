//! The node proxy never relays into itself, and answers at once for an app port that is
//! closed — on two nodes, with real peers: an HBONE CONNECT from a mesh peer (the TLS probe, as
//! ztunnel would send it) and from marrow's own outbound side, and plaintext from a pod outside
//! the mesh.
//!
//! Before the fix, `<pod-ip>:15006` (or `:15001`) looped through `sk_lookup` back into the
//! proxy ~10,000 times until the fd limit, cutting every pod of the node off; `CONNECT
//! <pod-ip>:15008` hung 10 s in the proxy's own TLS listener; a closed app port answered 503
//! only after the 10 s connect timeout, because the kernel's RST left by eth0.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use marrow_tests::mesh::HBONE_PORT;
use marrow_tests::metrics::count;
use marrow_tests::probe::{H2Request, ProbeIdentity, TlsOutcome, TlsProbe};
use marrow_tests::two_nodes::{APP_PORT, Cast, eventually, ip, v4};
use marrow_tests::{require_env, spiffe_id};

/// The proxy's in-pod ports.
const OWN_PORTS: [u16; 3] = [15001, 15006, 15008];
/// Far below the 10 s connect timeout that a lost RST or a loop ran into.
const AT_ONCE: Duration = Duration::from_secs(2);
const REFUSED: &str = "marrow_connections_refused_total";

/// Open file descriptors of a process: a relay loop shows as thousands.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| dir.count())
        .unwrap_or(0)
}

#[test]
fn the_proxy_refuses_calls_to_its_own_ports_and_keeps_serving() {
    require_env!();
    let cast = Cast::start("self-call", &[APP_PORT]);
    let (mesh, client, outsider, web) = (&cast.mesh, &cast.client, &cast.outsider, &cast.web);
    let pid = mesh.p2.pid().expect("node 2's proxy runs");
    let fds_before = open_fds(pid);

    // An HBONE peer (a mesh identity, as ztunnel would be) asking for the proxy's own ports.
    let (ca_cert, ca_key) = (mesh.ca.cert_path(), mesh.ca.key_path());
    let client_id = spiffe_id("shop", "client");
    let hbone = SocketAddr::new(ip(web), HBONE_PORT);
    mesh.n1.netns().run(|| {
        for port in OWN_PORTS {
            let started = Instant::now();
            let report = TlsProbe {
                identity: Some(ProbeIdentity::signed_by(&ca_cert, &ca_key, &client_id)),
                request: H2Request::connect(v4(web, port)),
                timeout: Duration::from_secs(20),
            }
            .run(hbone);
            let took = started.elapsed();
            println!("CONNECT to own port {port}: answered after {took:?}");
            assert!(
                matches!(
                    report.outcome,
                    TlsOutcome::Answered {
                        status: Some(503),
                        ..
                    }
                ),
                "CONNECT to the proxy's own port {port}: {:?}",
                report.outcome
            );
            assert!(took < AT_ONCE, "CONNECT to {port} answered after {took:?}");
        }
    });

    // marrow's own outbound side: the client pod's connection to web's 15006 goes out in HBONE
    // and is refused at the destination.
    for port in [15001, 15006] {
        let outcome = client.connect(v4(web, port), "loop?");
        assert!(!outcome.is_ok(), "HBONE to {port}: {outcome:?}");
    }
    // Plaintext from outside the mesh, captured by sk_lookup onto 15006.
    for port in [15001, 15006] {
        let started = Instant::now();
        let outcome = outsider.connect(v4(web, port), "loop?");
        assert!(!outcome.is_ok(), "plaintext to {port}: {outcome:?}");
        let took = started.elapsed();
        println!("plaintext to own port {port}: {took:?}");
        assert!(took < AT_ONCE, "plaintext to {port} refused after {took:?}");
    }

    eventually("each self-call counted and logged", || {
        let m = mesh.p2.metrics();
        let refused = count(
            &m,
            REFUSED,
            &[("reporter", "destination"), ("reason", "self_call")],
        );
        let logged = mesh.p2.log().matches("recursive call to the proxy").count();
        if refused >= 7 && logged >= 7 {
            Ok(())
        } else {
            Err(format!("{refused} counted, {logged} logged"))
        }
    });

    // The node still serves: no loop ate its descriptors, and a real call works.
    let fds_after = open_fds(pid);
    assert!(
        fds_after < fds_before + 50,
        "the proxy holds {fds_after} fds (was {fds_before}): a relay loop?"
    );
    let ok = client.connect(v4(web, APP_PORT), "still-serving");
    assert_eq!(ok.connected().echo, "still-serving");
    let plain = outsider.connect(v4(web, APP_PORT), "plain-still-serving");
    assert_eq!(plain.connected().echo, "plain-still-serving");
    let ready = mesh
        .p2
        .http_get(15021, "/healthz/ready")
        .expect("readiness");
    assert_eq!(ready.status, 200, "{}", ready.body);
}

#[test]
fn a_closed_app_port_is_refused_at_once() {
    require_env!();
    let cast = Cast::start("closed-port", &[APP_PORT]);
    let (mesh, client, outsider, web) = (&cast.mesh, &cast.client, &cast.outsider, &cast.web);
    let closed = v4(web, 8081);

    let (ca_cert, ca_key) = (mesh.ca.cert_path(), mesh.ca.key_path());
    let client_id = spiffe_id("shop", "client");
    mesh.n1.netns().run(|| {
        let started = Instant::now();
        let report = TlsProbe {
            identity: Some(ProbeIdentity::signed_by(&ca_cert, &ca_key, &client_id)),
            request: H2Request::connect(closed),
            timeout: Duration::from_secs(20),
        }
        .run(SocketAddr::new(ip(web), HBONE_PORT));
        let took = started.elapsed();
        println!("CONNECT to a closed port: answered after {took:?}");
        assert!(
            matches!(
                report.outcome,
                TlsOutcome::Answered {
                    status: Some(503),
                    ..
                }
            ),
            "{:?}",
            report.outcome
        );
        assert!(took < AT_ONCE, "503 after {took:?}");
    });
    for (who, pod) in [("in HBONE", client), ("in plaintext", outsider)] {
        let started = Instant::now();
        let outcome = pod.connect(closed, "anyone?");
        let took = started.elapsed();
        println!("closed port {who}: refused after {took:?}");
        assert!(!outcome.is_ok(), "{who}: {outcome:?}");
        assert!(took < AT_ONCE, "{who}: refused after {took:?}");
    }
    // The control: the open port answers.
    assert_eq!(
        client.connect(v4(web, APP_PORT), "open").connected().echo,
        "open"
    );
}
