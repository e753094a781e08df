//! `routes`: which rule applies, at which layer, with which backends and policies — from a
//! snapshot whose traffic set is built here (the parsers have their own tests).

use std::time::Duration;

use crate::explain::*;
use crate::state::{Snapshot, StateStore};
use crate::traffic::*;

/// Two Services in `shop`: `web` uses the waypoint `wp` (port 80 `http`, port 9000 `tcp`),
/// `api` uses none.
const STATE: &str = concat!(
    include_str!("../../testdata/two-pods.yaml"),
    r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}, {name: tcp-raw, port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80}]
"#
);

fn backend(name: &str, subset: Option<&str>, weight: u32) -> Backend {
    Backend {
        service: ServiceName::new("shop", name),
        port: None,
        subset: subset.map(str::to_owned),
        weight,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

fn rule(
    kind: RouteKind,
    name: &str,
    index: usize,
    matches: Vec<RequestMatch>,
    forward: Forward,
) -> HttpRule {
    HttpRule {
        route: RouteRef {
            kind,
            namespace: "shop".into(),
            name: name.into(),
            rule: index,
        },
        matches,
        action: HttpAction::Forward(Box::new(forward)),
    }
}

fn traffic() -> TrafficSet {
    let mut set = TrafficSet::new();
    let canary = RequestMatch {
        headers: vec![HeaderMatch {
            name: "x-canary".into(),
            value: Some(ValueMatch::Exact("true".into())),
            invert: false,
        }],
        ..RequestMatch::default()
    };
    let pinned = Forward {
        backends: vec![backend("web", Some("v2"), 100)],
        ..Forward::default()
    };
    let split = Forward {
        backends: vec![
            backend("web", Some("v1"), 95),
            backend("web", Some("v2"), 5),
        ],
        timeout: Some(Duration::from_millis(1500)),
        retries: Some(RetryPolicy {
            attempts: 3,
            per_try_timeout: Some(Duration::from_millis(500)),
            retry_on: RetryOn {
                five_xx: true,
                connect_failure: true,
                ..RetryOn::default()
            },
            status_codes: Vec::new(),
        }),
        fault: Some(Fault {
            delay: None,
            abort: Some((AbortStatus::Http(503), Percent(10.0))),
        }),
        ..Forward::default()
    };
    let only_api = RequestMatch {
        path: Some(PathMatch::SegmentPrefix("/api".into())),
        ..RequestMatch::default()
    };
    set.insert_http(
        ServiceName::new("shop", "web"),
        vec![
            rule(RouteKind::VirtualService, "web", 0, vec![canary], pinned),
            rule(RouteKind::VirtualService, "web", 1, vec![only_api], split),
        ],
    );
    set.insert_http(
        ServiceName::new("shop", "api"),
        vec![rule(
            RouteKind::HttpRoute,
            "api",
            0,
            Vec::new(),
            Forward::default(),
        )],
    );
    set.insert_tcp(
        ServiceName::new("shop", "api"),
        vec![TcpRule {
            route: RouteRef {
                kind: RouteKind::TcpRoute,
                namespace: "shop".into(),
                name: "api-canary".into(),
                rule: 0,
            },
            port: Some(80),
            backends: vec![backend("api", None, 80), backend("web", None, 20)],
        }],
    );
    set.refuse(Refusal {
        kind: "VirtualService".into(),
        namespace: "shop".into(),
        name: "broken".into(),
        field: "spec.http[0].match[0].uri.regex".into(),
        reason: "regex parse error".into(),
    });
    set
}

fn snapshot() -> std::sync::Arc<Snapshot> {
    let mut update =
        crate::state::file::parse(std::path::Path::new("test.yaml"), STATE.as_bytes()).unwrap();
    update.set_traffic(traffic());
    let store = StateStore::new();
    store.apply(update);
    store.snapshot()
}

fn ask(to: &str, method: Option<&str>, path: Option<&str>, headers: &[&str]) -> RoutesAnswer {
    let query = RoutesQuery {
        from: Some("shop/client".parse().unwrap()),
        to: to.into(),
        request: RequestQuery {
            method: method.map(str::to_owned),
            path: path.map(str::to_owned),
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            ..RequestQuery::default()
        },
    };
    explain_routes(&snapshot(), &query).unwrap()
}

#[test]
fn the_first_matching_rule_at_the_waypoint_with_its_backends_and_policies() {
    let a = ask(
        "web.shop.svc.cluster.local:80",
        Some("GET"),
        Some("/api/orders"),
        &[],
    );
    assert_eq!(a.layer, "waypoint shop/wp");
    assert_eq!(
        a.route,
        Some(RouteView {
            kind: "VirtualService",
            name: "shop/web".into(),
            rule: 1
        })
    );
    assert_eq!(a.action, "forward");
    let weights: Vec<_> = a
        .backends
        .iter()
        .map(|b| (b.service.as_str(), b.subset.as_deref(), b.port, b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("shop/web", Some("v1"), 80, 95),
            ("shop/web", Some("v2"), 80, 5)
        ]
    );
    assert_eq!(a.timeout_ms, Some(1500));
    let retries = a.retries.as_ref().unwrap();
    assert_eq!(
        (
            retries.attempts,
            retries.per_try_timeout_ms,
            retries.retry_on.as_str()
        ),
        (3, Some(500), "5xx,connect-failure")
    );
    let fault = a.fault.as_ref().unwrap();
    assert_eq!(
        (fault.abort_http_status, fault.abort_percent),
        (Some(503), Some(10.0))
    );
    assert!(
        a.notes
            .iter()
            .any(|n| n.contains("VirtualService shop/broken refused")
                && n.contains("spec.http[0].match[0].uri.regex")),
        "the refusal shows: {:?}",
        a.notes
    );
}

#[test]
fn a_header_picks_the_earlier_rule_and_no_match_is_a_404() {
    let pinned = ask("web.shop:80", None, Some("/api"), &["x-canary=true"]);
    assert_eq!(pinned.route.as_ref().map(|r| r.rule), Some(0));
    assert_eq!(pinned.backends[0].subset.as_deref(), Some("v2"));
    assert_eq!(pinned.timeout_ms, None);
    let none = ask("web.shop:80", None, Some("/apix"), &["x-canary=false"]);
    assert_eq!(
        (none.route.as_ref(), none.action),
        (None, "no route (404 NR)")
    );
    assert!(none.backends.is_empty());
    // The path is normalized as the waypoint does: `/x/../api` is `/api`.
    let normalized = ask("10.96.0.10:80", None, Some("/x/../api"), &[]);
    assert_eq!(normalized.route.map(|r| r.rule), Some(1));
}

#[test]
fn without_a_waypoint_only_tcp_routes_apply_and_http_ones_are_noted() {
    let a = ask("api:80", None, None, &[]);
    assert_eq!(a.layer, "node proxy");
    assert_eq!(
        a.route.as_ref().map(|r| (r.kind, r.name.as_str())),
        Some(("TCPRoute", "shop/api-canary"))
    );
    assert_eq!(
        a.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [80, 20]
    );
    assert!(
        a.notes.iter().any(|n| n.contains("only at a waypoint")),
        "{:?}",
        a.notes
    );
}

#[test]
fn an_opaque_port_is_relayed_and_an_unrouted_service_goes_to_itself() {
    let opaque = ask("web.shop:9000", None, None, &[]);
    assert_eq!(
        (opaque.layer.as_str(), opaque.action),
        ("node proxy", "default")
    );
    assert!(
        opaque.notes.iter().any(|n| n.contains("opaque TCP")),
        "{:?}",
        opaque.notes
    );
    assert_eq!(opaque.backends[0].service, "shop/web");
    assert_eq!(opaque.backends[0].weight, 100);
}

#[test]
fn bad_destinations_say_what_is_expected() {
    let snap = snapshot();
    for (to, expected) in [
        ("web.shop", "HOST:PORT"),
        ("web.shop:http", "port number"),
        ("10.9.9.9:80", "VIP"),
        ("a.b.c:80", "name.ns"),
    ] {
        let query = RoutesQuery {
            from: None,
            to: to.into(),
            request: RequestQuery::default(),
        };
        let error = explain_routes(&snap, &query).unwrap_err().to_string();
        assert!(error.contains(expected), "{to}: {error}");
    }
    let bare = RoutesQuery {
        from: None,
        to: "web:80".into(),
        request: RequestQuery::default(),
    };
    assert!(
        explain_routes(&snap, &bare)
            .unwrap_err()
            .to_string()
            .contains("--from")
    );
}
