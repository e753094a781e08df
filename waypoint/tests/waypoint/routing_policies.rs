//! A route's policies at the waypoint: retries (to another endpoint, counted, URX when they run
//! out), per-try and route timeouts (504 UT), injected faults at their percentages, mirrors.
//! Statistical checks use fixed counts and bounds of five standard deviations.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use marrow_mesh::traffic::{
    AbortStatus, Fault, Forward, Mirror, PathMatch, Percent, RetryOn, RetryPolicy,
};

use crate::harness::{TestMesh, vip};
use crate::routing::{
    app, backend, forward, get, get_with, metric, metrics, path, rule, send, served_by, set,
    settle, to,
};

fn retrying(attempts: u32, on: RetryOn, per_try: Option<Duration>) -> Forward {
    Forward {
        retries: Some(RetryPolicy {
            attempts,
            per_try_timeout: per_try,
            retry_on: on,
            status_codes: Vec::new(),
        }),
        ..to(vec![backend(None, 1)])
    }
}

const FIVE_XX: RetryOn = RetryOn {
    five_xx: true,
    gateway_error: false,
    connect_failure: false,
    refused_stream: false,
    reset: false,
    retriable_4xx: false,
    retriable_status_codes: false,
    grpc_cancelled: false,
    grpc_deadline_exceeded: false,
    grpc_resource_exhausted: false,
    grpc_unavailable: false,
};

#[tokio::test]
async fn retries_hide_a_failing_endpoint_and_are_counted_then_run_out_as_urx() {
    let net = 104;
    let mesh = TestMesh::start(net, &[1, 2]).await;
    let service = "destination_service=\"web.shop.svc.cluster.local\"";
    // Without retries, the failing pod's share fails.
    mesh.set_traffic(set(vec![rule(
        0,
        vec![],
        forward(to(vec![backend(None, 1)])),
    )]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    let fail_one = [("x-fail-on", app(net, 1))];
    let fail_one: Vec<(&str, &str)> = fail_one.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut failed = 0;
    for _ in 0..200 {
        let (status, _, _) = send(&mut http, get_with("/", &fail_one)).await;
        failed += usize::from(status == StatusCode::SERVICE_UNAVAILABLE);
    }
    assert!(
        (50..=150).contains(&failed),
        "{failed} of 200 failed without retries"
    );
    // With 3 retries on 5xx, each retry to another endpoint: every request succeeds.
    mesh.set_traffic(set(vec![rule(
        0,
        vec![],
        forward(retrying(3, FIVE_XX, None)),
    )]));
    let mut ok = 0;
    for _ in 0..200 {
        let (status, headers, _) = send(&mut http, get_with("/", &fail_one)).await;
        if status == StatusCode::OK {
            assert_eq!(served_by(&headers), app(net, 2));
            ok += 1;
        }
    }
    assert!(ok >= 198, "{ok} of 200 succeeded with retries");
    // Every endpoint failing: 1 + 3 tries, then the last answer with URX.
    for _ in 0..5 {
        let (status, _, body) = send(&mut http, get_with("/", &[("x-fail-on", "all")])).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "failing on demand", "the last try's answer");
    }
    settle().await;
    let metrics = metrics(&mesh).await;
    let retries = metric(
        &metrics,
        "marrow_retries_total",
        &[service, "reason=\"503\""],
    );
    assert!(retries >= 15.0 + 50.0, "{retries} retries\n{metrics}");
    assert_eq!(
        metric(
            &metrics,
            "istio_requests_total",
            &["response_flags=\"URX\""]
        ),
        5.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "marrow_upstream_attempts_total",
            &[service, "outcome=\"503\""]
        ) >= retries + 5.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn per_try_and_route_timeouts_answer_504_ut() {
    let net = 105;
    let mesh = TestMesh::start(net, &[1, 2]).await;
    let reset = RetryOn {
        reset: true,
        ..RetryOn::default()
    };
    mesh.set_traffic(set(vec![
        rule(
            0,
            vec![path(PathMatch::Exact("/per-try".into()))],
            forward(retrying(2, reset, Some(Duration::from_millis(100)))),
        ),
        rule(
            1,
            vec![path(PathMatch::Exact("/route".into()))],
            forward(Forward {
                timeout: Some(Duration::from_millis(100)),
                ..to(vec![backend(None, 1)])
            }),
        ),
        rule(2, vec![], forward(to(vec![backend(None, 1)]))),
    ]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    let slow_one = app(net, 1);
    for _ in 0..20 {
        let (status, headers, _) =
            send(&mut http, get_with("/per-try", &[("x-slow-on", &slow_one)])).await;
        assert_eq!(status, StatusCode::OK, "a slow try is retried elsewhere");
        assert_eq!(served_by(&headers), app(net, 2));
    }
    let (status, _, body) = send(&mut http, get_with("/per-try", &[("x-slow-on", "all")])).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
    );
    let (_, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    let (status, _, body) = send(&mut http, get_with("/route", &[("x-slow-on", "all")])).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::GATEWAY_TIMEOUT, "upstream request timeout")
    );
    let (_, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    let (status, _, _) = send(&mut http, get_with("/none", &[("x-slow-on", "all")])).await;
    assert_eq!(status, StatusCode::OK, "no timeout on the catch-all");
    settle().await;
    let metrics = metrics(&mesh).await;
    assert_eq!(
        metric(
            &metrics,
            "istio_requests_total",
            &["response_code=\"504\"", "response_flags=\"UT\""]
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn faults_abort_and_delay_at_their_percentages() {
    let net = 106;
    let mesh = TestMesh::start(net, &[1]).await;
    mesh.set_traffic(set(vec![
        rule(
            0,
            vec![path(PathMatch::Exact("/abort".into()))],
            forward(Forward {
                fault: Some(Fault {
                    delay: None,
                    abort: Some((AbortStatus::Http(555), Percent(50.0))),
                }),
                ..to(vec![backend(None, 1)])
            }),
        ),
        rule(
            1,
            vec![path(PathMatch::Exact("/delay".into()))],
            forward(Forward {
                fault: Some(Fault {
                    delay: Some((Duration::from_millis(1), Percent(50.0))),
                    abort: None,
                }),
                ..to(vec![backend(None, 1)])
            }),
        ),
        rule(2, vec![], forward(to(vec![backend(None, 1)]))),
    ]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    // 400 draws at 50 %: σ = 10, so 200 ± 50 is five σ.
    let mut aborted = 0;
    for _ in 0..400 {
        let (status, headers, body) = send(&mut http, get("/abort")).await;
        if status.as_u16() == 555 {
            assert_eq!(body, "fault filter abort");
            assert!(served_by(&headers).is_empty());
            aborted += 1;
        } else {
            assert_eq!(status, StatusCode::OK);
        }
    }
    assert!((150..=250).contains(&aborted), "{aborted} of 400 aborted");
    for _ in 0..400 {
        let (status, _, _) = send(&mut http, get("/delay")).await;
        assert_eq!(status, StatusCode::OK, "a delayed request is answered");
    }
    for _ in 0..50 {
        let (status, _, _) = send(&mut http, get("/fine")).await;
        assert_eq!(status, StatusCode::OK, "no fault on the catch-all");
    }
    settle().await;
    let metrics = metrics(&mesh).await;
    let delayed = metric(&metrics, "istio_requests_total", &["response_flags=\"DI\""]);
    assert!(
        (150.0..=250.0).contains(&delayed),
        "{delayed} delayed\n{metrics}"
    );
    let flagged = metric(&metrics, "istio_requests_total", &["response_flags=\"FI\""]);
    assert_eq!(flagged, f64::from(aborted), "{metrics}");
}

#[tokio::test]
async fn mirrors_get_copies_whose_answers_are_dropped() {
    let net = 107;
    let mesh = TestMesh::start(net, &[1, 2]).await;
    let mirrored = Forward {
        mirrors: vec![Mirror {
            backend: backend(Some("h2"), 0),
            percent: Percent(100.0),
        }],
        ..to(vec![backend(Some("h1"), 1)])
    };
    mesh.set_traffic(set(vec![
        rule(
            0,
            vec![path(PathMatch::SegmentPrefix("/m".into()))],
            forward(mirrored),
        ),
        rule(1, vec![], forward(to(vec![backend(Some("h1"), 1)]))),
    ]));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    // The mirror fails every copy; the client never sees it.
    let fail_mirror = app(net, 2);
    for i in 0..20 {
        let mut req = get_with(&format!("/m/{i}"), &[("x-fail-on", &fail_mirror)]);
        *req.method_mut() = http::Method::POST;
        *req.body_mut() = Full::new(Bytes::from(format!("body {i}")));
        let (status, headers, body) = send(&mut http, req).await;
        assert_eq!((status, served_by(&headers)), (StatusCode::OK, app(net, 1)));
        assert_eq!(body, format!("body {i}"));
    }
    for _ in 0..5 {
        let (_, headers, _) = send(&mut http, get("/other")).await;
        assert_eq!(served_by(&headers), app(net, 1));
    }
    let shadowed = || {
        mesh.served()
            .into_iter()
            .filter(|s| s.app.to_string() == fail_mirror)
            .collect::<Vec<_>>()
    };
    for _ in 0..50 {
        if shadowed().len() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copies = shadowed();
    assert_eq!(copies.len(), 20, "{copies:?}");
    assert!(
        copies
            .iter()
            .all(|s| s.authority == "web.shop-shadow" && s.path.starts_with("/m/")),
        "{copies:?}"
    );
}

#[tokio::test]
async fn request_bodies_are_replayed_to_the_retry_over_http1_and_http2() {
    let net = 109;
    let mesh = TestMesh::start(net, &[1, 2]).await;
    let unavailable = RetryOn {
        grpc_unavailable: true,
        ..FIVE_XX
    };
    mesh.set_traffic(set(vec![rule(
        0,
        vec![],
        forward(retrying(2, unavailable, None)),
    )]));
    let post = |path: &str, body: String, fail_on: &str, grpc: bool| {
        let mut req = get_with(path, &[("x-fail-on", fail_on)]);
        if grpc {
            req.headers_mut()
                .insert("x-fail-grpc", http::HeaderValue::from_static("14"));
        }
        *req.method_mut() = http::Method::POST;
        *req.body_mut() = Full::new(Bytes::from(body));
        req
    };
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    for i in 0..20 {
        let body = format!("payload {i}");
        let (status, headers, echoed) =
            send(&mut http, post("/", body.clone(), &app(net, 1), false)).await;
        assert_eq!((status, served_by(&headers)), (StatusCode::OK, app(net, 2)));
        assert_eq!(echoed, body, "the same body on every try");
    }
    // gRPC over HTTP/2 to the grpc port: `unavailable` in a trailers-only answer is retried.
    let grpc_app = |host| {
        SocketAddr::new(crate::harness::pod_ip(net, host), crate::harness::GRPC_PORT).to_string()
    };
    let (_client, mut h2) = mesh.http2(SocketAddr::new(vip(net), 9090)).await;
    for i in 0..20 {
        let body = format!("message {i}");
        let response = h2
            .send_request(post("/", body.clone(), &grpc_app(1), true))
            .await
            .unwrap();
        assert_eq!(served_by(response.headers()), grpc_app(2));
        assert!(!response.headers().contains_key("grpc-status"));
        let echoed = http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(echoed, body.as_bytes());
    }
    // Not retried: a gRPC status the policy does not name.
    let mut req = post("/", String::new(), "all", true);
    req.headers_mut()
        .insert("x-fail-grpc", http::HeaderValue::from_static("2"));
    let response = h2.send_request(req).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "2");
    settle().await;
    let metrics = metrics(&mesh).await;
    assert_eq!(
        metric(
            &metrics,
            "marrow_upstream_attempts_total",
            &["outcome=\"grpc-2\""]
        ),
        1.0,
        "{metrics}"
    );
}
