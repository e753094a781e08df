//! The per-destination registry: a destination kept across snapshots while its policy is the
//! same (its ejections with it), rebuilt when the policy changes; the pick skipping ejected
//! and avoided endpoints; the metric families.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::time::Instant;

use super::*;
use crate::traffic::{ConnectionPool, OutlierDetection};

fn outlier(consecutive: u32) -> TrafficPolicy {
    TrafficPolicy {
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(consecutive),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(2),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }),
        ..TrafficPolicy::default()
    }
}

fn eps() -> Vec<SocketAddr> {
    vec![
        "10.0.0.1:80".parse().unwrap(),
        "10.0.0.2:80".parse().unwrap(),
    ]
}

fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text
}

#[test]
fn a_destination_outlives_snapshots_with_the_same_policy() {
    let metrics = ResilienceMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let destinations: Destinations<&str> = Destinations::new(metrics);
    let host = || "api.shop.svc.cluster.local".to_owned();
    let all = eps();
    let now = Instant::now();

    let first = destinations.get(&"api", 1, || (outlier(1), host()));
    assert!(
        first
            .report(&all, all[1], Outcome::ConnectFailure, now)
            .is_some()
    );
    let text = encode(&registry);
    assert!(text.contains(
        "marrow_endpoint_ejected{destination_service=\"api.shop.svc.cluster.local\",endpoint=\"10.0.0.2:80\"} 1"
    ), "{text}");
    assert!(text.contains(
        "marrow_outlier_ejections_total{destination_service=\"api.shop.svc.cluster.local\",reason=\"consecutive_5xx\"} 1"
    ), "{text}");
    // Ejected: the pick skips it; the other, avoided, leaves none.
    for _ in 0..4 {
        assert_eq!(first.pick(&all, None, None, now), Some(all[0]));
    }
    assert_eq!(first.pick(&all, None, Some(all[0]), now), None);

    // The same generation: not resolved again.
    let same = destinations.get(&"api", 1, || panic!("resolved twice"));
    assert!(Arc::ptr_eq(&first, &same));
    // A new generation with the same policy: the same destination, still ejecting.
    let kept = destinations.get(&"api", 2, || (outlier(1), host()));
    assert!(Arc::ptr_eq(&first, &kept));
    assert!(kept.outlier.as_ref().unwrap().is_ejected(all[1], now));
    // Another policy: a new destination; the old one's gauge drops.
    let changed = destinations.get(&"api", 3, || (outlier(5), host()));
    assert!(!Arc::ptr_eq(&first, &changed));
    assert!(!changed.outlier.as_ref().unwrap().is_ejected(all[1], now));
    assert!(encode(&registry).contains("endpoint=\"10.0.0.2:80\"} 0"));
}

#[test]
fn the_sweep_returns_endpoints_and_lowers_their_gauge() {
    let metrics = ResilienceMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let destinations: Destinations<u8> = Destinations::new(metrics);
    let all = eps();
    let now = Instant::now();
    let d = destinations.get(&1, 1, || (outlier(1), "api".to_owned()));
    d.report(&all, all[0], Outcome::ConnectFailure, now);
    destinations.sweep(now + Duration::from_millis(1999));
    assert!(encode(&registry).contains("endpoint=\"10.0.0.1:80\"} 1"));
    destinations.sweep(now + Duration::from_secs(2));
    assert!(encode(&registry).contains("endpoint=\"10.0.0.1:80\"} 0"));
    assert_eq!(
        d.pick(&all, None, Some(all[1]), now + Duration::from_secs(2)),
        Some(all[0])
    );
}

#[test]
fn without_outlier_detection_nothing_is_ejected_and_limits_apply() {
    let destinations: Destinations<u8> = Destinations::new(ResilienceMetrics::default());
    let policy = TrafficPolicy {
        connection_pool: Some(ConnectionPool {
            max_connections: Some(1),
            ..ConnectionPool::default()
        }),
        ..TrafficPolicy::default()
    };
    let d = destinations.get(&1, 1, || (policy, "api".to_owned()));
    let all = eps();
    let now = Instant::now();
    for _ in 0..10 {
        assert_eq!(d.report(&all, all[0], Outcome::ConnectFailure, now), None);
    }
    assert!(d.usable(&all, all[0], now));
    let held = d.limits.try_acquire(Resource::Connections).unwrap();
    assert!(d.limits.try_acquire(Resource::Connections).is_err());
    drop(held);
    assert!(d.limits.try_acquire(Resource::Connections).is_ok());
}
