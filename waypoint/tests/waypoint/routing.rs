//! Routes at the waypoint: weighted backends and subsets, header routing, no match, redirects,
//! direct responses, header edits and rewrites, retries, timeouts, faults, mirrors, and a
//! route edit taking effect on the next request (retries, timeouts, faults and mirrors are in
//! `routing_policies.rs`). Sets are built with the model's insert
//! methods and put in the waypoint's state as a state source would.
//!
//! Statistical checks use fixed counts and bounds of five standard deviations.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use marrow_mesh::traffic::{
    Backend, DestinationPolicy, DirectResponse, Forward, HeaderMatch, HeaderOps, HttpAction,
    HttpRule, PathMatch, PathRewrite, Redirect, RequestMatch, Rewrite, RouteKind, RouteRef,
    ServiceName, Subset, TrafficPolicy, TrafficSet, ValueMatch,
};

use crate::harness::{HOST_LABEL, HTTP_PORT, TestMesh, body_of, pod_ip, vip};

pub(crate) fn web() -> ServiceName {
    ServiceName::new("shop", "web")
}

/// The web Service's backend, subset `h<host>` (or the whole Service).
pub(crate) fn backend(subset: Option<&str>, weight: u32) -> Backend {
    Backend {
        service: web(),
        port: None,
        subset: subset.map(str::to_owned),
        weight,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    }
}

pub(crate) fn rule(index: usize, matches: Vec<RequestMatch>, action: HttpAction) -> HttpRule {
    HttpRule {
        route: RouteRef {
            kind: RouteKind::VirtualService,
            namespace: "shop".into(),
            name: "web".into(),
            rule: index,
        },
        matches,
        action,
    }
}

pub(crate) fn forward(forward: Forward) -> HttpAction {
    HttpAction::Forward(Box::new(forward))
}

pub(crate) fn to(backends: Vec<Backend>) -> Forward {
    Forward {
        backends,
        ..Forward::default()
    }
}

pub(crate) fn path(path: PathMatch) -> RequestMatch {
    RequestMatch {
        path: Some(path),
        ..RequestMatch::default()
    }
}

/// A set with `rules` for the web Service and a DestinationRule with subsets `h1`…`h3`.
pub(crate) fn set(rules: Vec<HttpRule>) -> TrafficSet {
    let mut set = TrafficSet::new();
    set.insert_http(web(), rules);
    let subsets = (1..=3)
        .map(|h| Subset {
            name: format!("h{h}"),
            labels: BTreeMap::from([(HOST_LABEL.to_owned(), format!("h{h}"))]),
            policy: TrafficPolicy::default(),
            port_policies: Vec::new(),
        })
        .collect();
    set.insert_destination(DestinationPolicy {
        namespace: "shop".into(),
        name: "web".into(),
        service: web(),
        policy: TrafficPolicy::default(),
        port_policies: Vec::new(),
        subsets,
    });
    set
}

pub(crate) fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "web.shop")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub(crate) fn get_with(path: &str, headers: &[(&'static str, &str)]) -> Request<Full<Bytes>> {
    let mut req = get(path);
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, http::HeaderValue::from_str(value).unwrap());
    }
    req
}

/// The app address of pod `host`.
pub(crate) fn app(net: u8, host: u8) -> String {
    SocketAddr::new(pod_ip(net, host), HTTP_PORT).to_string()
}

/// Sends `req`; the status, the `x-served-by` and the body.
pub(crate) async fn send(
    http: &mut SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, String) {
    let response = http.send_request(req).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

pub(crate) fn served_by(headers: &http::HeaderMap) -> String {
    headers
        .get("x-served-by")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The sum of the samples of `name` whose labels include every one of `labels`.
pub(crate) fn metric(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub(crate) async fn metrics(mesh: &TestMesh) -> String {
    body_of(mesh.waypoint.metrics_addr, "/metrics").await
}

/// Waits (a little) for the last requests' records: a response's outcome is recorded as its
/// body ends, just after the client has it.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn weights_split_traffic_between_subsets() {
    let net = 100;
    let mesh = TestMesh::start(net, &[1, 2]).await;
    mesh.set_traffic(set(vec![rule(
        0,
        vec![],
        forward(to(vec![backend(Some("h1"), 90), backend(Some("h2"), 10)])),
    )]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    // 2,500 draws at 90 %: σ = 15, so ±75 (±3 %) is five σ.
    let total = 2_500;
    let mut first = 0;
    for _ in 0..total {
        let (status, headers, _) = send(&mut http, get("/")).await;
        assert_eq!(status, StatusCode::OK);
        let by = served_by(&headers);
        if by == app(net, 1) {
            first += 1;
        } else {
            assert_eq!(by, app(net, 2), "only the two subsets' pods serve");
        }
    }
    assert!((2_175..=2_325).contains(&first), "{first} of {total} to h1");
}

#[tokio::test]
async fn headers_route_and_a_request_no_rule_matches_gets_404_nr() {
    let net = 101;
    let mesh = TestMesh::start(net, &[1, 2]).await;
    let canary = RequestMatch {
        headers: vec![HeaderMatch {
            name: "x-canary".into(),
            value: Some(ValueMatch::Exact("true".into())),
            invert: false,
        }],
        ..RequestMatch::default()
    };
    mesh.set_traffic(set(vec![
        rule(0, vec![canary], forward(to(vec![backend(Some("h2"), 1)]))),
        rule(
            1,
            vec![path(PathMatch::SegmentPrefix("/app".into()))],
            forward(to(vec![backend(Some("h1"), 1)])),
        ),
    ]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    for _ in 0..10 {
        let (status, headers, _) = send(&mut http, get_with("/app", &[("x-canary", "true")])).await;
        assert_eq!((status, served_by(&headers)), (StatusCode::OK, app(net, 2)));
        let (status, headers, _) =
            send(&mut http, get_with("/app", &[("x-canary", "false")])).await;
        assert_eq!(
            (status, served_by(&headers)),
            (StatusCode::OK, app(net, 1)),
            "another value does not match"
        );
    }
    let (status, headers, body) = send(&mut http, get("/other")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(served_by(&headers).is_empty() && body.is_empty());
    settle().await;
    let metrics = metrics(&mesh).await;
    assert_eq!(
        metric(
            &metrics,
            "istio_requests_total",
            &["response_code=\"404\"", "response_flags=\"NR\""]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn redirects_and_direct_responses_are_answered_by_the_waypoint() {
    let net = 102;
    let mesh = TestMesh::start(net, &[1]).await;
    mesh.set_traffic(set(vec![
        rule(
            0,
            vec![path(PathMatch::Exact("/old".into()))],
            HttpAction::Redirect(Redirect {
                scheme: None,
                hostname: Some("new.shop".into()),
                port: None,
                path: Some(PathRewrite::Full("/new".into())),
                status: 301,
            }),
        ),
        rule(
            1,
            vec![path(PathMatch::Exact("/hello".into()))],
            HttpAction::Respond(DirectResponse {
                status: 418,
                body: Some("hi from the route".into()),
            }),
        ),
        rule(2, vec![], forward(to(vec![backend(None, 1)]))),
    ]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    let (status, headers, _) = send(&mut http, get("/old?x=1")).await;
    assert_eq!(status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(headers["location"], "http://new.shop/new?x=1");
    assert!(served_by(&headers).is_empty(), "never forwarded");
    let (status, headers, body) = send(&mut http, get("/hello")).await;
    assert_eq!((status.as_u16(), body.as_str()), (418, "hi from the route"));
    assert!(served_by(&headers).is_empty());
    let (status, headers, _) = send(&mut http, get("/older")).await;
    assert_eq!(status, StatusCode::OK, "no exact match: forwarded");
    assert_eq!(served_by(&headers), app(net, 1));
}

#[tokio::test]
async fn header_edits_and_rewrites_change_only_the_forwarded_request() {
    let net = 103;
    let mesh = TestMesh::start(net, &[1]).await;
    let edited = Forward {
        rewrite: Rewrite {
            path: Some(PathRewrite::Prefix("/v2".into())),
            authority: None,
        },
        request_headers: HeaderOps {
            set: vec![("x-t-set".into(), "yes".into())],
            add: vec![("x-t-add".into(), "2".into())],
            remove: vec!["x-t-gone".into()],
        },
        response_headers: HeaderOps {
            set: vec![("x-resp".into(), "added".into())],
            add: Vec::new(),
            remove: vec!["x-echo-version".into()],
        },
        ..to(vec![backend(None, 1)])
    };
    let full = Forward {
        rewrite: Rewrite {
            path: Some(PathRewrite::Full("/replaced".into())),
            authority: Some("other.shop".into()),
        },
        ..to(vec![backend(None, 1)])
    };
    mesh.set_traffic(set(vec![
        rule(
            0,
            vec![path(PathMatch::SegmentPrefix("/api".into()))],
            forward(edited),
        ),
        rule(
            1,
            vec![path(PathMatch::Exact("/full".into()))],
            forward(full),
        ),
        rule(2, vec![], forward(to(vec![backend(None, 1)]))),
    ]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    let (status, headers, _) = send(
        &mut http,
        get_with(
            "/api/items?q=1",
            &[("x-t-gone", "1"), ("x-t-add", "1"), ("x-t-set", "no")],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-echo-path"], "/v2/items?q=1", "prefix rewritten");
    assert_eq!(headers["x-echo-headers"], "x-t-add=1;x-t-add=2;x-t-set=yes");
    assert_eq!(headers["x-resp"], "added");
    assert!(
        !headers.contains_key("x-echo-version"),
        "removed from the response"
    );
    let (_, headers, _) = send(&mut http, get("/full")).await;
    assert_eq!(headers["x-echo-path"], "/replaced", "full rewrite");
    let served = mesh.served();
    assert_eq!(
        served.last().unwrap().authority,
        "other.shop",
        "authority rewritten"
    );
    // Not matching: `/apix` is no segment of `/api`; the catch-all edits nothing.
    let (_, headers, _) = send(&mut http, get_with("/apix", &[("x-t-gone", "1")])).await;
    assert_eq!(headers["x-echo-path"], "/apix");
    assert_eq!(headers["x-echo-headers"], "x-t-gone=1");
    assert!(headers.contains_key("x-echo-version") && !headers.contains_key("x-resp"));
}

#[tokio::test]
async fn a_route_edit_applies_on_the_next_request() {
    let net = 108;
    let mesh = TestMesh::start(net, &[1]).await;
    let respond = |body: &str| {
        set(vec![rule(
            0,
            vec![],
            HttpAction::Respond(DirectResponse {
                status: 200,
                body: Some(body.into()),
            }),
        )])
    };
    mesh.set_traffic(respond("one"));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    assert_eq!(send(&mut http, get("/")).await.2, "one");
    // A pod addressed directly is never routed (Istio routes by host; a pod IP is none).
    let (_pod_client, mut pod) = mesh.http1(SocketAddr::new(pod_ip(net, 1), HTTP_PORT)).await;
    let (status, headers, _) = send(&mut pod, get("/")).await;
    assert_eq!((status, served_by(&headers)), (StatusCode::OK, app(net, 1)));
    mesh.set_traffic(respond("two"));
    assert_eq!(send(&mut http, get("/")).await.2, "two", "same connection");
    mesh.set_traffic(TrafficSet::new());
    let (status, headers, _) = send(&mut http, get("/")).await;
    assert_eq!(
        (status, served_by(&headers)),
        (StatusCode::OK, app(net, 1)),
        "no routes: the Service as addressed"
    );
}

#[tokio::test]
async fn backends_that_do_not_resolve_answer_503_uh_or_500() {
    let net = 110;
    let mesh = TestMesh::start(net, &[1]).await;
    let exact = |p: &str| vec![path(PathMatch::Exact(p.into()))];
    let other = |name: &str| Backend {
        service: ServiceName::new("shop", name),
        ..backend(None, 1)
    };
    mesh.set_traffic(set(vec![
        rule(0, exact("/ghost"), forward(to(vec![other("ghost")]))),
        rule(1, exact("/empty"), forward(to(vec![other("empty")]))),
        rule(
            2,
            exact("/no-subset"),
            forward(to(vec![backend(Some("h9"), 1)])),
        ),
        rule(3, exact("/weightless"), forward(to(vec![backend(None, 0)]))),
        rule(4, exact("/solo"), forward(to(vec![other("solo")]))),
        // A backendRef the parser could not resolve keeps its weight: its share is 500.
        rule(
            5,
            exact("/unresolved"),
            forward(Forward {
                invalid_backends: vec![0],
                ..to(vec![other("elsewhere")])
            }),
        ),
        rule(6, vec![], forward(to(vec![backend(None, 1)]))),
    ]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    for unavailable in ["/ghost", "/empty", "/no-subset"] {
        let (status, _, body) = send(&mut http, get(unavailable)).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
            "{unavailable}"
        );
    }
    for failing in ["/weightless", "/unresolved"] {
        let (status, _, _) = send(&mut http, get(failing)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{failing}");
    }
    // Another Service as the backend: its endpoints, and the metrics name it.
    let (status, headers, _) = send(&mut http, get("/solo")).await;
    assert_eq!((status, served_by(&headers)), (StatusCode::OK, app(net, 1)));
    settle().await;
    let metrics = metrics(&mesh).await;
    assert_eq!(
        metric(&metrics, "istio_requests_total", &["response_flags=\"UH\""]),
        3.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "istio_requests_total",
            &[
                "destination_service=\"solo.shop.svc.cluster.local\"",
                "response_code=\"200\""
            ]
        ),
        1.0,
        "{metrics}"
    );
}
