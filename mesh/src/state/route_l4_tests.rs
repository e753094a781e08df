//! The L4 traffic decisions of [`route_attempt`]: a TCPRoute's weighted choice of a backend
//! Service (and a port it does not cover), a backend the state lacks, an endpoint avoided
//! on a retry, and a Service with a waypoint leaving its TCPRoute to the waypoint.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::state::file::parse;
use crate::state::{EndpointPicker, StateStore};
use crate::traffic::{Backend, HeaderOps, RouteKind, RouteRef, ServiceName, TcpRule, TrafficSet};

fn service(name: &str, vip: &str, labels: &str) -> String {
    service_at(name, vip, labels, 80)
}

fn service_at(name: &str, vip: &str, labels: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\n{labels}spec:\n  \
         clusterIP: {vip}\n  ports:\n  - name: p\n    port: {port}\n---\n"
    )
}

fn slice(service: &str, port: u16, ips: &[&str]) -> String {
    let mut eps = String::new();
    for ip in ips {
        let _ = writeln!(eps, "- addresses: [{ip}]");
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  \
         namespace: shop\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\n\
         ports:\n- name: p\n  port: {port}\nendpoints:\n{eps}---\n"
    )
}

fn pod(name: &str, ip: &str, labels: &str) -> String {
    // A waypoint's pods run as its service account.
    let sa = if name.starts_with("wp-") {
        "wp"
    } else {
        "default"
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    \
         app: x\n{labels}spec:\n  serviceAccountName: {sa}\n  nodeName: node-1\n  containers: []\nstatus:\n  podIP: {ip}\n---\n"
    )
}

fn backend(name: &str, weight: u32) -> Backend {
    Backend {
        service: ServiceName::new("shop", name),
        port: Some(80),
        subset: None,
        weight,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

fn tcp_rule(port: Option<u16>, backends: Vec<Backend>) -> TcpRule {
    TcpRule {
        route: RouteRef {
            kind: RouteKind::TcpRoute,
            namespace: "shop".into(),
            name: "canary".into(),
            rule: 0,
        },
        port,
        backends,
    }
}

/// `front` (10.96.1.1, endpoint 10.0.1.1), `v1` (10.96.1.2: 10.0.2.1, 10.0.2.2), `v2`
/// (10.96.1.3: 10.0.3.1), `waypointed` (10.96.1.4 → waypoint `wp`, endpoint 10.0.4.1), the
/// waypoint `wp` (pod 10.0.9.1); `traffic` on top.
fn state(traffic: TrafficSet) -> Arc<Snapshot> {
    let mut y = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    \
         istio.io/dataplane-mode: ambient\n---\n",
    );
    for (name, vip, ips) in [
        ("front", "10.96.1.1", vec!["10.0.1.1"]),
        ("v1", "10.96.1.2", vec!["10.0.2.1", "10.0.2.2"]),
        ("v2", "10.96.1.3", vec!["10.0.3.1"]),
    ] {
        y += &service(name, vip, "");
        y += &slice(name, 8080, &ips);
        for (i, ip) in ips.iter().enumerate() {
            y += &pod(&format!("{name}-{i}"), ip, "");
        }
    }
    y += &service(
        "waypointed",
        "10.96.1.4",
        "  labels:\n    istio.io/use-waypoint: wp\n",
    );
    y += &slice("waypointed", 8080, &["10.0.4.1"]);
    y += &pod("waypointed-0", "10.0.4.1", "");
    y += "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: wp\n  \
          namespace: shop\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - name: mesh\n    \
          port: 15008\n    protocol: HBONE\n---\n";
    y += &service_at(
        "wp",
        "10.96.9.1",
        "  labels:\n    gateway.istio.io/managed: istio.io-mesh-controller\n",
        15008,
    );
    y += &slice("wp", 15008, &["10.0.9.1"]);
    y += &pod(
        "wp-0",
        "10.0.9.1",
        "    gateway.networking.k8s.io/gateway-name: wp\n    istio.io/dataplane-mode: none\n",
    );
    let mut update = parse(Path::new("l4.yaml"), y.as_bytes()).unwrap();
    update.set_traffic(traffic);
    StateStore::new().apply(update)
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn attempt(picker: &EndpointPicker, draw: u64, avoid: Option<SocketAddr>) -> Attempt<'_> {
    Attempt {
        chooser: picker,
        draw,
        avoid,
    }
}

/// The pod address a route tunnels to, or a word for the other routes.
fn authority(route: &Route) -> String {
    match route {
        Route::Tunnel { authority, .. } => authority.to_string(),
        Route::Waypoint { waypoint, .. } => format!("waypoint {waypoint}"),
        Route::NoEndpoint { service } => format!("no endpoint {service}"),
        other => format!("{other:?}"),
    }
}

#[test]
fn tcp_route_splits_by_weight_and_labels_the_chosen_service() {
    let mut traffic = TrafficSet::new();
    traffic.insert_tcp(
        ServiceName::new("shop", "front"),
        vec![tcp_rule(None, vec![backend("v1", 80), backend("v2", 20)])],
    );
    let snap = state(traffic);
    let picker = EndpointPicker::default();
    let mut v1 = 0;
    for draw in 0..100 {
        let routed = route_attempt(
            &snap,
            None,
            addr("10.96.1.1:80"),
            &picker,
            &attempt(&picker, draw, None),
        );
        let service = routed.service.unwrap();
        assert_eq!(routed.addressed.unwrap().name, "front");
        assert_eq!(routed.tcp_route.unwrap().name, "canary");
        let to = authority(&routed.route);
        match service.name.as_str() {
            "v1" => {
                v1 += 1;
                assert!(to == "10.0.2.1:8080" || to == "10.0.2.2:8080", "{to}");
            }
            "v2" => assert_eq!(to, "10.0.3.1:8080"),
            other => panic!("routed to {other}"),
        }
    }
    assert_eq!(v1, 80);
}

#[test]
fn tcp_route_for_another_port_leaves_the_service_alone() {
    let mut traffic = TrafficSet::new();
    traffic.insert_tcp(
        ServiceName::new("shop", "front"),
        vec![tcp_rule(Some(81), vec![backend("v2", 1)])],
    );
    let snap = state(traffic);
    let picker = EndpointPicker::default();
    let routed = route_attempt(
        &snap,
        None,
        addr("10.96.1.1:80"),
        &picker,
        &attempt(&picker, 0, None),
    );
    assert_eq!(authority(&routed.route), "10.0.1.1:8080");
    assert_eq!(routed.service.unwrap().name, "front");
    assert!(routed.tcp_route.is_none());
    // And a Service without routes is untouched by another's.
    let routed = route(&snap, None, addr("10.96.1.3:80"), &picker);
    assert_eq!(authority(&routed.route), "10.0.3.1:8080");
}

#[test]
fn a_backend_the_state_lacks_has_no_endpoint() {
    let mut traffic = TrafficSet::new();
    traffic.insert_tcp(
        ServiceName::new("shop", "front"),
        vec![tcp_rule(None, vec![backend("gone", 1)])],
    );
    let snap = state(traffic);
    let picker = EndpointPicker::default();
    let routed = route_attempt(
        &snap,
        None,
        addr("10.96.1.1:80"),
        &picker,
        &attempt(&picker, 0, None),
    );
    assert_eq!(
        authority(&routed.route),
        "no endpoint gone.shop.svc.cluster.local"
    );
}

#[test]
fn a_retry_avoids_the_endpoint_that_failed() {
    let snap = state(TrafficSet::new());
    let picker = EndpointPicker::default();
    for _ in 0..4 {
        let routed = route_attempt(
            &snap,
            None,
            addr("10.96.1.2:80"),
            &picker,
            &attempt(&picker, 0, Some(addr("10.0.2.1:8080"))),
        );
        assert_eq!(authority(&routed.route), "10.0.2.2:8080");
    }
    // Without it, both take turns.
    let a = authority(&route(&snap, None, addr("10.96.1.2:80"), &picker).route);
    let b = authority(&route(&snap, None, addr("10.96.1.2:80"), &picker).route);
    assert_ne!(a, b);
    // The only endpoint avoided: none left.
    let routed = route_attempt(
        &snap,
        None,
        addr("10.96.1.3:80"),
        &picker,
        &attempt(&picker, 0, Some(addr("10.0.3.1:8080"))),
    );
    assert_eq!(
        authority(&routed.route),
        "no endpoint v2.shop.svc.cluster.local"
    );
}

#[test]
fn a_service_with_a_waypoint_leaves_its_tcp_route_to_the_waypoint() {
    let mut traffic = TrafficSet::new();
    traffic.insert_tcp(
        ServiceName::new("shop", "waypointed"),
        vec![tcp_rule(None, vec![backend("v2", 1)])],
    );
    // A route to a backend that uses a waypoint goes through it too.
    traffic.insert_tcp(
        ServiceName::new("shop", "front"),
        vec![tcp_rule(None, vec![backend("waypointed", 1)])],
    );
    let snap = state(traffic);
    let picker = EndpointPicker::default();
    let routed = route_attempt(
        &snap,
        None,
        addr("10.96.1.4:80"),
        &picker,
        &attempt(&picker, 0, None),
    );
    assert_eq!(authority(&routed.route), "waypoint shop/wp");
    assert!(routed.tcp_route.is_none());
    let routed = route_attempt(
        &snap,
        None,
        addr("10.96.1.1:80"),
        &picker,
        &attempt(&picker, 0, None),
    );
    match routed.route {
        Route::Waypoint { authority, .. } => assert_eq!(authority, addr("10.96.1.4:80")),
        other => panic!("{other:?}"),
    }
}
