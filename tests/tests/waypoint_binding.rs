//! Node proxies and waypoints, on two nodes: a Service that uses a waypoint (label
//! `istio.io/use-waypoint` and a Gateway of class `istio-waypoint`) is reached only through
//! it — with no ready waypoint instance the client's connection fails instead of going around
//! it — and the node proxy of a pod behind the waypoint refuses every other client, counted as
//! `marrow_policy_denials_total{reason="not_from_waypoint"}` and logged naming the waypoint. A
//! pod that is not behind a waypoint is reached as before. With a ready instance (a stand-in
//! HBONE server), the connection arrives there as `CONNECT <VIP:port>`.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marrow_mesh::hbone::{self, IncomingConnect, Refusal};
use marrow_mesh::identity::{CaFiles, LocalCa, LocalCaOptions, SpiffeId, TrustDomain};
use marrow_mesh::tls;

use marrow_tests::metrics::count;
use marrow_tests::require_env;
use marrow_tests::state_file::PodRecord;
use marrow_tests::two_nodes::{APP_PORT, Mesh, eventually, namespaces, v4};
use marrow_tests::waypoint::{bound_service, gateway_objects};
use marrow_tests::{MeshCa, Pod};

const VIP: &str = "10.96.0.20";
const WAYPOINT_VIP: &str = "10.96.0.21";
const DENIALS: &str = "marrow_policy_denials_total";

/// The Gateway `shop/wp` and its Service with `instances` as its ready pods (none: the waypoint
/// is down), and the Service `web` that uses it, backed by the pod at `web_ip`.
fn waypoint_objects(web_ip: &str, instances: &[String]) -> String {
    let gateway = gateway_objects("shop", "wp", WAYPOINT_VIP, instances);
    let ports = [("http", 80, APP_PORT)];
    let web = bound_service(("shop", "web"), VIP, "wp", &ports, &[web_ip.to_owned()]);
    format!("{gateway}---\n{web}")
}

#[test]
fn a_service_behind_a_down_waypoint_fails_and_its_pods_admit_only_the_waypoint() {
    require_env!();
    let mut mesh = Mesh::start("wpbind");
    let client = mesh.n1.add_pod("client", "shop", true);
    let web = mesh.n2.add_pod("web", "shop", true);
    let other = mesh.n2.add_pod("other", "shop", true);
    let _apps = [web.serve(APP_PORT), other.serve(APP_PORT)];
    let state = namespaces()
        .pod(&client, "client")
        .pod(&web, "web")
        .pod(&other, "other");
    mesh.apply_with(&state, &waypoint_objects(&web.ipv4().to_string(), &[]));

    // The VIP: the waypoint has no ready instance, so the connection fails, never reaching web
    // directly.
    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    let through_vip = client.connect(vip, "via-vip");
    assert!(
        !through_vip.is_ok(),
        "a down waypoint must not be bypassed: {through_vip:?}"
    );
    mesh.p1
        .wait_for_log(
            "waypoint shop/wp has no ready instance",
            Duration::from_secs(10),
        )
        .expect("node 1 names the waypoint it could not reach");
    let m1 = mesh.p1.metrics();
    assert!(
        m1.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("response_flags=\"UH\"")
                && l.contains("destination_service_name=\"web\"")),
        "counted with UH for the Service:\n{m1}"
    );

    // The pod behind the waypoint, dialled directly: pod-addressed, so the Service's waypoint
    // does not route it, and web's node proxy refuses it for not coming from the waypoint.
    let direct = client.connect(v4(&web, APP_PORT), "direct");
    assert!(
        !direct.is_ok(),
        "only the waypoint may reach web: {direct:?}"
    );
    eventually("node 2 to count the refusal", || {
        let m2 = mesh.p2.metrics();
        match count(&m2, DENIALS, &[("reason", "not_from_waypoint")]) {
            0 => Err(m2),
            _ => Ok(()),
        }
    });
    mesh.p2
        .wait_for_log("is behind waypoint shop/wp", Duration::from_secs(10))
        .expect("node 2 logs the refusal naming the waypoint");

    // A pod not behind a waypoint still echoes.
    let fine = client.connect(v4(&other, APP_PORT), "other");
    assert_eq!(fine.connected().echo, "other");
}

/// A stand-in waypoint on a pod's 15008: HBONE as the mesh's own (mTLS as `shop/wp`, from the
/// test's mesh CA; HTTP/2 CONNECT), recording each CONNECT's authority and answering 503.
/// Stops, and closes its socket, when dropped.
struct FakeWaypoint {
    authorities: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeWaypoint {
    fn start(pod: &Pod, ca: &MeshCa) -> FakeWaypoint {
        let trust_domain = TrustDomain::new(ca.trust_domain()).expect("trust domain");
        let files = CaFiles {
            cert: ca.cert_path(),
            key: ca.key_path(),
        };
        let local_ca = LocalCa::load(&files, trust_domain.clone(), LocalCaOptions::default())
            .expect("the mesh CA");
        let id = SpiffeId::new(&trust_domain, "shop", "wp").expect("id");
        let cert = local_ca.issue(&id).expect("the waypoint's certificate");
        let config = tls::server_config(&cert, tls::KeyExchange::default()).expect("TLS config");
        let listener = pod
            .netns()
            .run(|| std::net::TcpListener::bind(("0.0.0.0", 15008)))
            .expect("bind 15008 in the waypoint's pod");
        listener.set_nonblocking(true).expect("nonblocking");
        let authorities = Arc::new(Mutex::new(Vec::new()));
        let seen = authorities.clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    while let Ok((tcp, _)) = listener.accept().await {
                        let (config, seen) = (config.clone(), seen.clone());
                        tokio::spawn(async move {
                            let Ok(tls) = tls::accept(config, tcp).await else {
                                return;
                            };
                            let _ = hbone::serve(
                                tls,
                                Duration::from_secs(5),
                                std::future::pending::<()>(),
                                move |incoming: IncomingConnect| {
                                    seen.lock().expect("lock").push(incoming.target.authority);
                                    incoming.refuse(Refusal::Unavailable);
                                    async {}
                                },
                            )
                            .await;
                        });
                    }
                };
                tokio::select! {
                    () = accept => {}
                    _ = stopped => {}
                }
            });
        });
        FakeWaypoint {
            authorities,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn authorities(&self) -> Vec<SocketAddr> {
        self.authorities.lock().expect("lock").clone()
    }
}

impl Drop for FakeWaypoint {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// With a ready instance — a pod outside the mesh labelled as the Gateway's, running a
/// stand-in waypoint — the VIP's connection goes to that pod in HBONE with `CONNECT <VIP:port>`
/// (the original destination), never to web: labelled with the waypoint's pod as the
/// destination workload and `web` as the destination service.
#[test]
fn a_service_with_a_ready_waypoint_is_sent_to_the_waypoint_with_the_vip() {
    require_env!();
    let mesh = Mesh::start("wpready");
    let client = mesh.n1.add_pod("client", "shop", true);
    let web = mesh.n2.add_pod("web", "shop", true);
    let waypoint = mesh.n2.add_pod("wp-0", "shop", false);
    let _app = web.serve(APP_PORT);
    let fake = FakeWaypoint::start(&waypoint, &mesh.ca);
    let state = namespaces()
        .pod(&client, "client")
        .pod(&web, "web")
        .with_pod(
            PodRecord::of(&waypoint, "wp")
                .with_label("gateway.networking.k8s.io/gateway-name", "wp")
                .with_label("istio.io/dataplane-mode", "none"),
        );
    let objects = waypoint_objects(&web.ipv4().to_string(), &[waypoint.ipv4().to_string()]);
    mesh.apply_with(&state, &objects);

    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    let outcome = client.connect(vip, "via-waypoint");
    assert!(
        !outcome.is_ok(),
        "the stand-in answers 503, so the connection fails: {outcome:?}"
    );
    eventually("the stand-in waypoint to see the CONNECT", || {
        match fake.authorities().as_slice() {
            [only] if *only == vip => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    eventually(
        "node 1 to count the connection to the waypoint's pod",
        || {
            let m1 = mesh.p1.metrics();
            let to_waypoint = m1.lines().any(|l| {
                l.starts_with("istio_tcp_connections_opened_total")
                    && l.contains("destination_workload=\"wp-0\"")
                    && l.contains("destination_service_name=\"web\"")
                    && l.contains("destination_principal=\"spiffe://cluster.local/ns/shop/sa/wp\"")
            });
            if to_waypoint { Ok(()) } else { Err(m1) }
        },
    );
    let m1 = mesh.p1.metrics();
    assert!(
        !m1.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("destination_workload=\"web\"")),
        "nothing went to web directly:\n{m1}"
    );
    drop(fake);
}
