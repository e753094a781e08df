//! A DestinationRule's per-endpoint policy at the waypoint: outlier detection ejects an endpoint
//! that keeps failing and returns it after `baseEjectionTime`; connection-pool limits answer
//! 503 `UO` past them; a consistent hash keeps a key on one endpoint.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use marrow_mesh::traffic::{
    ConnectionPool, DestinationPolicy, HashKey, LoadBalancer, OutlierDetection, TrafficPolicy,
    TrafficSet,
};

use crate::harness::{TestMesh, vip};
use crate::routing::{app, get, get_with, metric, metrics, send, served_by, settle, web};

/// A set with only a DestinationRule for web (no route: requests go to the Service as
/// addressed, under its policy).
fn policy(policy: TrafficPolicy) -> TrafficSet {
    let mut set = TrafficSet::new();
    set.insert_destination(DestinationPolicy {
        namespace: "shop".into(),
        name: "web".into(),
        service: web(),
        policy,
        port_policies: Vec::new(),
        subsets: Vec::new(),
    });
    set
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_then_returns_after_the_base_time() {
    let net = 120;
    let mesh = TestMesh::start(net, &[1, 2]).await;
    mesh.set_traffic(policy(TrafficPolicy {
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(1),
            max_ejection_percent: 50,
            min_health_percent: 0,
        }),
        ..TrafficPolicy::default()
    }));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    let failing = app(net, 1);
    let fail = [("x-fail-on", failing.as_str())];
    // App 1 answers 503 to everything: Istio's default retries (no route applies) send each
    // failed try to app 2, and after app 1's third straight 503 it is ejected.
    for _ in 0..40 {
        let (status, headers, _) = send(&mut http, get_with("/", &fail)).await;
        assert_eq!(status, StatusCode::OK, "retried to app 2");
        assert_ne!(served_by(&headers), failing);
    }
    settle().await;
    let text = metrics(&mesh).await;
    let ejected = format!("endpoint=\"{failing}\"");
    assert_eq!(
        metric(&text, "marrow_endpoint_ejected", &[&ejected]),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "marrow_outlier_ejections_total",
            &["reason=\"consecutive_5xx\""]
        ),
        1.0,
        "{text}"
    );
    // Exactly three tries reached app 1: once out, it got none.
    assert_eq!(
        metric(&text, "marrow_retries_total", &["reason=\"503\""]),
        3.0,
        "{text}"
    );
    // Back after baseEjectionTime (× 1, its first ejection); the sweep lowers the gauge.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let text = metrics(&mesh).await;
    assert_eq!(
        metric(&text, "marrow_endpoint_ejected", &[&ejected]),
        0.0,
        "{text}"
    );
    let mut served = BTreeSet::new();
    for _ in 0..20 {
        let (status, headers, _) = send(&mut http, get("/")).await;
        assert_eq!(status, StatusCode::OK);
        served.insert(served_by(&headers));
    }
    assert!(served.contains(&failing), "app 1 serves again: {served:?}");
}

#[tokio::test]
async fn past_the_pool_limits_requests_get_503_uo() {
    let net = 121;
    let mesh = TestMesh::start(net, &[1]).await;
    mesh.set_traffic(policy(TrafficPolicy {
        connection_pool: Some(ConnectionPool {
            http2_max_requests: Some(1),
            ..ConnectionPool::default()
        }),
        ..TrafficPolicy::default()
    }));
    let target = SocketAddr::new(vip(net), 80);
    let (_c1, mut slow) = mesh.http1(target).await;
    let (_c2, mut other) = mesh.http1(target).await;
    // One request in flight (the app answers it after 300 ms); the second overflows.
    let in_flight =
        tokio::spawn(async move { send(&mut slow, get_with("/", &[("x-slow-on", "all")])).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _, body) = send(&mut other, get("/")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("overflow"), "{body}");
    let (status, _, _) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "the request in flight is unharmed");
    // The slot is free again.
    let (status, _, _) = send(&mut other, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    settle().await;
    let text = metrics(&mesh).await;
    assert_eq!(
        metric(&text, "istio_requests_total", &["response_flags=\"UO\""]),
        1.0,
        "{text}"
    );
}

#[tokio::test]
async fn a_consistent_hash_keeps_each_key_on_one_endpoint() {
    let net = 122;
    let mesh = TestMesh::start(net, &[1, 2, 3]).await;
    mesh.set_traffic(policy(TrafficPolicy {
        load_balancer: Some(LoadBalancer::ConsistentHash(HashKey::Header(
            "x-user".into(),
        ))),
        ..TrafficPolicy::default()
    }));
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(net), 80)).await;
    let mut by_user = Vec::new();
    for user in ["alice", "bob", "carol", "dave", "erin", "frank"] {
        let mut served = BTreeSet::new();
        for _ in 0..10 {
            let (status, headers, _) = send(&mut http, get_with("/", &[("x-user", user)])).await;
            assert_eq!(status, StatusCode::OK);
            served.insert(served_by(&headers));
        }
        assert_eq!(served.len(), 1, "{user} sticks to one endpoint: {served:?}");
        by_user.extend(served);
    }
    let spread: BTreeSet<_> = by_user.into_iter().collect();
    assert!(
        spread.len() >= 2,
        "the keys spread over the endpoints: {spread:?}"
    );
}
