//! Node proxies and waypoints, on two nodes: a Service that uses a waypoint (label
//! `istio.io/use-waypoint` and a Gateway of class `istio-waypoint`) is reached only through
//! it — with no ready waypoint instance the client's connection fails instead of going around
//! it — and the node proxy of a pod behind the waypoint refuses every other client, counted as
//! `marrow_policy_denials_total{reason="not_from_waypoint"}` and logged naming the waypoint. A
//! pod that is not behind a waypoint is reached as before.

use std::net::SocketAddr;
use std::time::Duration;

use marrow_tests::metrics::count;
use marrow_tests::require_env;
use marrow_tests::state_file::PodRecord;
use marrow_tests::two_nodes::{APP_PORT, Mesh, eventually, namespaces, v4};

const VIP: &str = "10.96.0.20";
const WAYPOINT_VIP: &str = "10.96.0.21";
const DENIALS: &str = "marrow_policy_denials_total";

/// The Gateway `shop/wp`, its Service with no ready endpoint (the waypoint is down), and the
/// Service `web` that uses it, backed by the pod at `web_ip`.
fn waypoint_objects(web_ip: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: wp, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata:
  name: wp
  namespace: shop
  labels: {{gateway.istio.io/managed: istio.io-mesh-controller}}
spec:
  clusterIP: {WAYPOINT_VIP}
  ports: [{{name: mesh, port: 15008, protocol: TCP}}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {{istio.io/use-waypoint: wp}}
spec:
  clusterIP: {VIP}
  ports: [{{name: http, port: 80, targetPort: {APP_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: shop
  labels: {{kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{{name: http, port: {APP_PORT}, protocol: TCP}}]
endpoints:
- addresses: [{web_ip}]
"
    )
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
    mesh.apply_with(&state, &waypoint_objects(&web.ipv4().to_string()));

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

/// With a ready instance — a pod outside the mesh labelled as the Gateway's, here a plain echo
/// server on 15008 standing in for the waypoint — the VIP's connection goes to that pod's
/// 15008 (and fails there: it speaks no TLS), never to web: labelled with the waypoint's pod as
/// the destination workload and `web` as the destination service.
#[test]
fn a_service_with_a_ready_waypoint_is_sent_to_the_waypoints_pod() {
    require_env!();
    let mesh = Mesh::start("wpready");
    let client = mesh.n1.add_pod("client", "shop", true);
    let web = mesh.n2.add_pod("web", "shop", true);
    let waypoint = mesh.n2.add_pod("wp-0", "shop", false);
    let _apps = [web.serve(APP_PORT), waypoint.serve(15008)];
    let state = namespaces()
        .pod(&client, "client")
        .pod(&web, "web")
        .with_pod(
            PodRecord::of(&waypoint, "wp")
                .with_label("gateway.networking.k8s.io/gateway-name", "wp")
                .with_label("istio.io/dataplane-mode", "none"),
        );
    let ready_instance = format!(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: wp-1
  namespace: shop
  labels: {{kubernetes.io/service-name: wp}}
addressType: IPv4
ports: [{{name: mesh, port: 15008, protocol: TCP}}]
endpoints:
- addresses: [{}]
",
        waypoint.ipv4()
    );
    let objects = waypoint_objects(&web.ipv4().to_string()) + &ready_instance;
    mesh.apply_with(&state, &objects);

    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    let outcome = client.connect(vip, "via-waypoint");
    assert!(
        !outcome.is_ok(),
        "the stand-in speaks no TLS, so the tunnel fails: {outcome:?}"
    );
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
}
