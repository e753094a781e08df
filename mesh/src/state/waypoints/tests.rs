//! The binding table (each rule with a case it applies to and one it does not), the route
//! through a waypoint, and the guard a destination checks. The state is built by the file
//! source from YAML, so parsing a Gateway is exercised too.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::state::{EndpointPicker, Route, StateStore, file::parse, route};

fn namespace(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels_yaml = String::from("    istio.io/dataplane-mode: ambient\n");
    for (k, v) in labels {
        let _ = writeln!(labels_yaml, "    {k}: {v}");
    }
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n{labels_yaml}---\n"
    )
}

fn gateway(ns: &str, name: &str, class: &str, labels: &[(&str, &str)], extra: &str) -> String {
    let mut labels_yaml = String::from("    app: gw\n");
    for (k, v) in labels {
        let _ = writeln!(labels_yaml, "    {k}: {v}");
    }
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\n  \
         namespace: {ns}\n  labels:\n{labels_yaml}spec:\n  gatewayClassName: {class}\n{extra}---\n"
    )
}

const HBONE_LISTENER: &str = "  listeners:\n  - name: mesh\n    port: 15008\n    protocol: HBONE\n";

fn listener_allowing(namespaces: &str) -> String {
    format!("{HBONE_LISTENER}    allowedRoutes:\n      namespaces:\n{namespaces}")
}

fn service(ns: &str, name: &str, vip: &str, port: u16, labels: &[(&str, &str)]) -> String {
    let mut labels_yaml = String::from("    app: x\n");
    for (k, v) in labels {
        let _ = writeln!(labels_yaml, "    {k}: {v}");
    }
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n\
         {labels_yaml}spec:\n  clusterIP: {vip}\n  ports:\n  - name: p\n    port: {port}\n---\n"
    )
}

fn slice(ns: &str, service: &str, port: u16, endpoints: &[(&str, bool)]) -> String {
    let mut eps = String::new();
    for (ip, ready) in endpoints {
        let _ = writeln!(eps, "- addresses: [{ip}]\n  conditions: {{ready: {ready}}}");
    }
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  \
         namespace: {ns}\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\n\
         ports:\n- name: p\n  port: {port}\nendpoints:\n{eps}---\n"
    )
}

fn pod(ns: &str, name: &str, ip: &str, sa: &str, labels: &[(&str, &str)]) -> String {
    let mut labels_yaml = String::from("    app: x\n");
    for (k, v) in labels {
        let _ = writeln!(labels_yaml, "    {k}: {v}");
    }
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n\
         {labels_yaml}spec:\n  serviceAccountName: {sa}\n  nodeName: node-1\n  containers: []\n\
         status:\n  podIP: {ip}\n---\n"
    )
}

const MANAGED: (&str, &str) = (MANAGED_LABEL, "istio.io-mesh-controller");
const NO_CAPTURE: (&str, &str) = ("istio.io/dataplane-mode", "none");

fn use_wp(name: &str) -> (&str, &str) {
    (USE_WAYPOINT_LABEL, name)
}

/// Namespaces `shop`, `labelled` (uses `ns-wp`), `other` (team=blue), `infra`; waypoints
/// `shop/wp` (service, one ready instance), `shop/wl` (workload, one), `shop/both` (all, none
/// ready), `labelled/ns-wp` (service, none ready), `infra/shared` (All namespaces),
/// `infra/picky` (team=blue only), `shop/renamed` (its Service is `wp-svc`); `shop/foreign`
/// is a Gateway of another class.
fn fixture() -> Arc<Snapshot> {
    let mut y = String::new();
    y += &namespace("shop", &[]);
    y += &namespace("labelled", &[use_wp("ns-wp")]);
    y += &namespace("other", &[("team", "blue")]);
    y += &namespace("infra", &[]);
    y += &gateway("shop", "wp", WAYPOINT_CLASS, &[], HBONE_LISTENER);
    y += &gateway(
        "shop",
        "wl",
        WAYPOINT_CLASS,
        &[(WAYPOINT_FOR_LABEL, "workload")],
        HBONE_LISTENER,
    );
    y += &gateway(
        "shop",
        "both",
        WAYPOINT_CLASS,
        &[(WAYPOINT_FOR_LABEL, "all")],
        HBONE_LISTENER,
    );
    y += &gateway("shop", "foreign", "istio", &[], HBONE_LISTENER);
    y += &gateway("labelled", "ns-wp", WAYPOINT_CLASS, &[], HBONE_LISTENER);
    y += &gateway(
        "infra",
        "shared",
        WAYPOINT_CLASS,
        &[],
        &listener_allowing("        from: All\n"),
    );
    y += &gateway(
        "infra",
        "picky",
        WAYPOINT_CLASS,
        &[],
        &listener_allowing(
            "        from: Selector\n        selector:\n          matchLabels: {team: blue}\n",
        ),
    );
    let renamed = format!(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: Gateway\nmetadata:\n  name: renamed\n  \
         namespace: shop\n  annotations:\n    {NAME_OVERRIDE_ANNOTATION}: wp-svc\n    \
         {SERVICE_ACCOUNT_ANNOTATION}: wp-sa\nspec:\n  gatewayClassName: {WAYPOINT_CLASS}\n{HBONE_LISTENER}---\n"
    );
    y += &renamed;
    // The waypoints' Services and pods.
    for (name, vip, endpoint, ready) in [
        ("wp", "10.96.9.1", "10.0.9.1", true),
        ("wl", "10.96.9.3", "10.0.9.3", true),
        ("both", "10.96.9.2", "10.0.9.2", false),
        ("wp-svc", "10.96.9.4", "10.0.9.4", true),
    ] {
        y += &service("shop", name, vip, 15008, &[MANAGED]);
        y += &slice("shop", name, 15008, &[(endpoint, ready)]);
    }
    y += &pod(
        "shop",
        "wp-0",
        "10.0.9.1",
        "wp",
        &[(GATEWAY_NAME_LABEL, "wp"), NO_CAPTURE],
    );
    y += &pod(
        "shop",
        "wp-1",
        "10.0.9.5",
        "wp",
        &[(GATEWAY_NAME_LABEL, "wp"), NO_CAPTURE],
    );
    y += &pod(
        "shop",
        "wl-0",
        "10.0.9.3",
        "wl",
        &[(GATEWAY_NAME_LABEL, "wl"), NO_CAPTURE],
    );
    y += &pod(
        "shop",
        "both-0",
        "10.0.9.2",
        "both",
        &[(GATEWAY_NAME_LABEL, "both"), NO_CAPTURE],
    );
    y += &pod(
        "shop",
        "renamed-0",
        "10.0.9.4",
        "wp-sa",
        &[(GATEWAY_NAME_LABEL, "renamed"), NO_CAPTURE],
    );
    y += &service("labelled", "ns-wp", "10.96.9.6", 15008, &[MANAGED]);
    // Services that use (or not) a waypoint, each with one endpoint.
    for (ns, name, vip, endpoint, labels) in [
        ("shop", "web", "10.96.0.1", "10.0.1.1", vec![use_wp("wp")]),
        ("shop", "plain", "10.96.0.2", "10.0.1.2", vec![]),
        ("shop", "to-wl", "10.96.0.3", "10.0.1.3", vec![use_wp("wl")]),
        (
            "shop",
            "ghost-user",
            "10.96.0.4",
            "10.0.1.4",
            vec![use_wp("ghost")],
        ),
        (
            "shop",
            "foreign-user",
            "10.96.0.5",
            "10.0.1.5",
            vec![use_wp("foreign")],
        ),
        (
            "shop",
            "to-both",
            "10.96.0.6",
            "10.0.1.6",
            vec![use_wp("both")],
        ),
        (
            "shop",
            "to-renamed",
            "10.96.0.7",
            "10.0.1.7",
            vec![use_wp("renamed")],
        ),
        ("labelled", "api", "10.96.0.8", "10.0.1.8", vec![]),
        (
            "labelled",
            "opt-out",
            "10.96.0.9",
            "10.0.1.9",
            vec![use_wp("none")],
        ),
        (
            "other",
            "cross",
            "10.96.0.10",
            "10.0.1.10",
            vec![use_wp("shared"), (USE_WAYPOINT_NAMESPACE_LABEL, "infra")],
        ),
        (
            "other",
            "cross-same",
            "10.96.0.11",
            "10.0.1.11",
            vec![use_wp("wp"), (USE_WAYPOINT_NAMESPACE_LABEL, "shop")],
        ),
        (
            "other",
            "picky-ok",
            "10.96.0.12",
            "10.0.1.12",
            vec![use_wp("picky"), (USE_WAYPOINT_NAMESPACE_LABEL, "infra")],
        ),
        (
            "shop",
            "picky-no",
            "10.96.0.13",
            "10.0.1.13",
            vec![use_wp("picky"), (USE_WAYPOINT_NAMESPACE_LABEL, "infra")],
        ),
        (
            "shop",
            "eastwest",
            "10.96.0.14",
            "10.0.1.14",
            vec![
                use_wp("wp"),
                (MANAGED_LABEL, "istio.io-eastwest-controller"),
            ],
        ),
    ] {
        y += &service(ns, name, vip, 80, &labels);
        y += &slice(ns, name, 8080, &[(endpoint, true)]);
        y += &pod(ns, &format!("{name}-0"), endpoint, "default", &[]);
    }
    // Pods that use (or not) a waypoint themselves.
    y += &pod("shop", "a", "10.0.2.1", "default", &[use_wp("wl")]);
    y += &pod("shop", "b", "10.0.2.2", "default", &[use_wp("wp")]);
    y += &pod("labelled", "c", "10.0.2.3", "default", &[]);
    y += &pod("shop", "e", "10.0.2.5", "default", &[use_wp("ghost")]);
    y += &pod("shop", "f", "10.0.2.6", "default", &[use_wp("both")]);
    y += &pod("labelled", "g", "10.0.2.7", "default", &[use_wp("none")]);
    let update = parse(Path::new("waypoints.yaml"), y.as_bytes()).expect("the fixture parses");
    StateStore::new().apply(update)
}

fn name(ns: &str, name: &str) -> WaypointName {
    WaypointName {
        namespace: ns.into(),
        name: name.into(),
    }
}

/// `Ok(ns/name)` or the reason, for a table.
fn outcome(result: Result<&Arc<Waypoint>, Unbound>) -> Result<String, Unbound> {
    result.map(|w| w.name.to_string())
}

#[test]
fn gateways_of_the_waypoint_class_are_waypoints_with_their_traffic_type() {
    let snap = fixture();
    let index = snap.waypoints();
    let traffic = |ns: &str, n: &str| index.waypoint(ns, n).map(|w| w.traffic);
    assert_eq!(
        traffic("shop", "wp"),
        Some(TrafficType::Service),
        "default: service"
    );
    assert_eq!(
        traffic("shop", "wl"),
        Some(TrafficType::Workload),
        "the Gateway's label"
    );
    assert_eq!(traffic("shop", "both"), Some(TrafficType::All));
    assert_eq!(
        traffic("shop", "foreign"),
        None,
        "another class is no waypoint"
    );
    assert_eq!(traffic("shop", "ghost"), None);
    let renamed = index.waypoint("shop", "renamed").expect("v1beta1 Gateway");
    assert_eq!(
        renamed.service_name, "wp-svc",
        "name-override renames its Service"
    );
    assert_eq!(renamed.identity_parts(), ("shop", "wp-sa"));
    assert_eq!(
        index.waypoint("shop", "wp").unwrap().identity_parts(),
        ("shop", "wp")
    );
}

#[test]
fn services_bind_by_their_label_then_their_namespace() {
    let snap = fixture();
    let index = snap.waypoints();
    let cases: &[(&str, &str, Result<&str, Unbound>)] = &[
        ("shop", "web", Ok("shop/wp")),
        ("shop", "plain", Err(Unbound::NoLabel)),
        ("labelled", "api", Ok("labelled/ns-wp")),
        ("labelled", "opt-out", Err(Unbound::OptedOut)),
        (
            "shop",
            "to-wl",
            Err(Unbound::UnsupportedTrafficType {
                waypoint: name("shop", "wl"),
                traffic: TrafficType::Workload,
                wanted: "service",
            }),
        ),
        ("shop", "to-both", Ok("shop/both")),
        (
            "shop",
            "ghost-user",
            Err(Unbound::Missing(name("shop", "ghost"))),
        ),
        (
            "shop",
            "foreign-user",
            Err(Unbound::Missing(name("shop", "foreign"))),
        ),
        ("shop", "to-renamed", Ok("shop/renamed")),
        ("other", "cross", Ok("infra/shared")),
        (
            "other",
            "cross-same",
            Err(Unbound::AttachmentDenied {
                waypoint: name("shop", "wp"),
                namespace: "other".into(),
            }),
        ),
        ("other", "picky-ok", Ok("infra/picky")),
        (
            "shop",
            "picky-no",
            Err(Unbound::AttachmentDenied {
                waypoint: name("infra", "picky"),
                namespace: "shop".into(),
            }),
        ),
        ("shop", "wp", Err(Unbound::IsWaypoint(name("shop", "wp")))),
        (
            "labelled",
            "ns-wp",
            Err(Unbound::IsWaypoint(name("labelled", "ns-wp"))),
        ),
        ("shop", "eastwest", Err(Unbound::NoLabel)),
    ];
    for (ns, svc, expected) in cases {
        let expected = expected.clone().map(str::to_owned);
        assert_eq!(
            outcome(index.for_service(ns, svc)),
            expected,
            "Service {ns}/{svc}"
        );
    }
}

#[test]
fn workloads_bind_by_their_own_label_or_their_namespace_never_their_services() {
    let snap = fixture();
    let index = snap.waypoints();
    let pod = |ns: &str, n: &str| snap.workload_by_name(ns, n).unwrap().clone();
    let cases: &[(&str, &str, Result<&str, Unbound>)] = &[
        ("shop", "a", Ok("shop/wl")),
        ("shop", "f", Ok("shop/both")),
        (
            "shop",
            "b",
            Err(Unbound::UnsupportedTrafficType {
                waypoint: name("shop", "wp"),
                traffic: TrafficType::Service,
                wanted: "workload",
            }),
        ),
        // The namespace's waypoint serves services: silently none for its pods.
        ("labelled", "c", Err(Unbound::NoLabel)),
        ("labelled", "g", Err(Unbound::OptedOut)),
        ("shop", "e", Err(Unbound::Missing(name("shop", "ghost")))),
        // Behind Service web, which uses shop/wp: pods never inherit from Services.
        ("shop", "web-0", Err(Unbound::NoLabel)),
        ("shop", "wp-0", Err(Unbound::IsWaypoint(name("shop", "wp")))),
    ];
    for (ns, n, expected) in cases {
        let expected = expected.clone().map(str::to_owned);
        assert_eq!(
            outcome(index.for_workload(&pod(ns, n))),
            expected,
            "Pod {ns}/{n}"
        );
    }
    assert_eq!(
        index
            .instance_of(&pod("shop", "wp-1"))
            .map(|w| w.name.to_string()),
        Some("shop/wp".into()),
        "a pod labelled with the Gateway's name is an instance, ready or not"
    );
    assert!(index.instance_of(&pod("shop", "a")).is_none());
}

#[test]
fn the_waypoint_for_label_of_the_class_applies_unless_the_gateway_has_its_own() {
    let mut y = String::new();
    y += "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata:\n  name: istio-waypoint\n  \
          labels:\n    istio.io/waypoint-for: workload\nspec:\n  controllerName: istio.io/mesh-controller\n---\n";
    y += &gateway("shop", "by-class", WAYPOINT_CLASS, &[], HBONE_LISTENER);
    y += &gateway(
        "shop",
        "own",
        WAYPOINT_CLASS,
        &[(WAYPOINT_FOR_LABEL, "service")],
        HBONE_LISTENER,
    );
    y += &gateway(
        "shop",
        "typo",
        WAYPOINT_CLASS,
        &[(WAYPOINT_FOR_LABEL, "services")],
        HBONE_LISTENER,
    );
    let update = parse(Path::new("classes.yaml"), y.as_bytes()).expect("parses");
    let snap = StateStore::new().apply(update);
    let traffic = |n: &str| snap.waypoints().waypoint("shop", n).map(|w| w.traffic);
    assert_eq!(traffic("by-class"), Some(TrafficType::Workload));
    assert_eq!(traffic("own"), Some(TrafficType::Service));
    assert_eq!(
        traffic("typo"),
        Some(TrafficType::None),
        "an unknown value serves nothing"
    );
    let class = snap
        .raw_objects()
        .find(|o| o.kind == RawKind::GatewayClass)
        .expect("kept");
    assert_eq!(
        class.object.namespace, None,
        "GatewayClass is cluster-scoped"
    );
}

#[test]
fn bad_gateways_and_refused_bindings_are_warnings_not_refusals() {
    let mut y = String::new();
    y += &namespace("shop", &[]);
    y += &gateway("shop", "no-class", "", &[], "");
    y = y.replace("gatewayClassName: \n", "gatewayClassName: [1]\n");
    y += &gateway(
        "shop",
        "bad-from",
        WAYPOINT_CLASS,
        &[],
        &listener_allowing("        from: Nowhere\n"),
    );
    y += &gateway(
        "shop",
        "http",
        WAYPOINT_CLASS,
        &[],
        "  listeners:\n  - name: h\n    port: 80\n    protocol: HTTP\n",
    );
    y += &service("shop", "lost", "10.96.0.1", 80, &[use_wp("gone")]);
    let update = parse(Path::new("bad.yaml"), y.as_bytes()).expect("never refused");
    let snap = StateStore::new().apply(update);
    let (_, warnings) = WaypointIndex::build(&snap);
    let has = |needle: &str| warnings.iter().any(|w| w.contains(needle));
    assert!(
        has("Gateway shop/no-class is not used as a waypoint: spec.gatewayClassName"),
        "{warnings:?}"
    );
    assert!(
        has("Gateway shop/bad-from is not used as a waypoint: allowedRoutes"),
        "{warnings:?}"
    );
    assert!(
        has("Gateway shop/http: expected a single listener on port 15008"),
        "{warnings:?}"
    );
    assert!(
        has("Service shop/lost: waypoint shop/gone does not exist"),
        "{warnings:?}"
    );
    assert!(
        snap.waypoints().waypoint("shop", "http").is_some(),
        "an odd listener is reported, the Gateway still a waypoint (as istiod)"
    );
    assert_eq!(warnings.len(), 4, "{warnings:?}");
}

#[test]
fn a_workload_behind_a_waypoint_admits_only_the_waypoints_pods() {
    let snap = fixture();
    let index = snap.waypoints();
    let pod = |ns: &str, n: &str| snap.workload_by_name(ns, n).unwrap().clone();
    let guard = index
        .guard(&pod("shop", "web-0"))
        .expect("its Service uses shop/wp");
    assert_eq!(guard.names(), "shop/wp");
    assert!(guard.admits("shop", "wp"), "the waypoint's identity");
    assert!(!guard.admits("shop", "default"), "a client");
    assert!(
        !guard.admits("other", "wp"),
        "same account name, other namespace"
    );
    let own = index
        .guard(&pod("shop", "a"))
        .expect("its own label: shop/wl");
    assert!(own.admits("shop", "wl") && !own.admits("shop", "wp"));
    let ghost = index
        .guard(&pod("shop", "e"))
        .expect("a missing waypoint still guards");
    assert!(ghost.identities.is_empty(), "and admits nobody");
    assert!(
        index.guard(&pod("shop", "plain-0")).is_none(),
        "not behind a waypoint"
    );
    assert!(
        index.guard(&pod("shop", "to-wl-0")).is_none(),
        "binding refused: not behind"
    );
    assert!(
        index.guard(&pod("shop", "wp-0")).is_none(),
        "the waypoint itself"
    );
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Where a route goes, for a table: `waypoint <name> <target> <authority> <instance>`,
/// `tunnel <pod> <authority>`, `down <name>`, …
fn describe(route: Route) -> String {
    match route {
        Route::Waypoint {
            waypoint,
            instance,
            target,
            authority,
        } => format!("waypoint {waypoint} {target} {authority} {}", instance.name),
        Route::Tunnel {
            workload,
            authority,
            ..
        } => format!("tunnel {} {authority}", workload.name),
        Route::Passthrough(to) => format!("passthrough {to}"),
        Route::NoEndpoint { service } => format!("no endpoint {service}"),
        Route::WaypointDown { waypoint } => format!("down {waypoint}"),
    }
}

#[test]
fn routes_go_through_the_waypoint_the_destination_uses() {
    let snap = fixture();
    let client = snap.workload_by_name("shop", "plain-0").unwrap().clone();
    let waypoint_pod = snap.workload_by_name("shop", "wp-0").unwrap().clone();
    let cases = [
        (
            "VIP of a service waypoint's Service",
            "10.96.0.1:80",
            &client,
            "waypoint shop/wp 10.0.9.1:15008 10.96.0.1:80 wp-0",
        ),
        (
            "pod behind it, addressed directly: service waypoints do not apply",
            "10.0.1.1:8080",
            &client,
            "tunnel web-0 10.0.1.1:8080",
        ),
        (
            "pod with a workload waypoint",
            "10.0.2.1:9000",
            &client,
            "waypoint shop/wl 10.0.9.3:15008 10.0.2.1:9000 wl-0",
        ),
        (
            "renamed waypoint Service",
            "10.96.0.7:80",
            &client,
            "waypoint shop/renamed 10.0.9.4:15008 10.96.0.7:80 renamed-0",
        ),
        (
            "opted out with none",
            "10.96.0.9:80",
            &client,
            "tunnel opt-out-0 10.0.1.9:8080",
        ),
        (
            "namespace label, waypoint has no ready instance",
            "10.96.0.8:80",
            &client,
            "down labelled/ns-wp",
        ),
        (
            "waypoint-for mismatch: direct",
            "10.96.0.3:80",
            &client,
            "tunnel to-wl-0 10.0.1.3:8080",
        ),
        (
            "bound waypoint down",
            "10.96.0.6:80",
            &client,
            "down shop/both",
        ),
        (
            "pod of a waypoint that is down",
            "10.0.2.6:80",
            &client,
            "down shop/both",
        ),
        (
            "missing waypoint: refused, no bypass",
            "10.96.0.4:80",
            &client,
            "down shop/ghost",
        ),
        (
            "pod naming a missing waypoint",
            "10.0.2.5:80",
            &client,
            "down shop/ghost",
        ),
        (
            "from the waypoint itself: direct",
            "10.96.0.1:80",
            &waypoint_pod,
            "tunnel web-0 10.0.1.1:8080",
        ),
        (
            "from a workload waypoint to its pod: direct",
            "10.0.2.1:9000",
            &snap.workload_by_name("shop", "wl-0").unwrap().clone(),
            "tunnel a 10.0.2.1:9000",
        ),
        (
            "no waypoint",
            "10.96.0.2:80",
            &client,
            "tunnel plain-0 10.0.1.2:8080",
        ),
    ];
    for (what, dst, src, expected) in cases {
        let got = route(&snap, Some(src), addr(dst), &EndpointPicker::default()).route;
        assert_eq!(describe(got), expected, "{what}");
    }
    let routed = route(
        &snap,
        None,
        addr("10.96.0.1:80"),
        &EndpointPicker::default(),
    );
    assert_eq!(
        routed.service.map(|s| s.name.as_str()),
        Some("web"),
        "the Service addressed stays the Service"
    );
}

#[test]
fn a_waypoints_instances_are_balanced() {
    let mut y = String::new();
    y += &namespace("shop", &[]);
    y += &gateway("shop", "wp", WAYPOINT_CLASS, &[], HBONE_LISTENER);
    y += &service("shop", "wp", "10.96.9.1", 15008, &[MANAGED]);
    y += &slice(
        "shop",
        "wp",
        15008,
        &[("10.0.9.1", true), ("10.0.9.2", true), ("10.0.9.3", true)],
    );
    y += &pod(
        "shop",
        "wp-0",
        "10.0.9.1",
        "wp",
        &[(GATEWAY_NAME_LABEL, "wp"), NO_CAPTURE],
    );
    y += &pod(
        "shop",
        "wp-1",
        "10.0.9.2",
        "wp",
        &[(GATEWAY_NAME_LABEL, "wp"), NO_CAPTURE],
    );
    // 10.0.9.3's pod is unknown: no identity to expect, never chosen.
    let update = parse(Path::new("balance.yaml"), y.as_bytes()).expect("parses");
    let snap = StateStore::new().apply(update);
    let waypoint = snap.waypoints().waypoint("shop", "wp").unwrap();
    let picker = EndpointPicker::default();
    let picks: Vec<String> = (0..4)
        .map(|_| {
            waypoint
                .pick(&picker)
                .map(|(_, pod)| pod.name.clone())
                .unwrap()
        })
        .collect();
    assert!(
        picks.contains(&"wp-0".to_owned()) && picks.contains(&"wp-1".to_owned()),
        "{picks:?}"
    );
}
