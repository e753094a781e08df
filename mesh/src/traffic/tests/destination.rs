//! DestinationRule: policies read with istiod's defaults, subsets, the layers `resolve` merges
//! (istiod's `MergeSubsetTrafficPolicy`), one rule per Service, and bad input.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{build, object, only_refusal, reviews};
use crate::objects::RawObject;
use crate::traffic::{ConnectionPool, HashKey, LoadBalancer, OutlierDetection};

fn dr(name: &str, created: u64, spec: Value) -> RawObject {
    object(
        "networking.istio.io/v1beta1",
        "DestinationRule",
        name,
        created,
        spec,
    )
}

#[test]
fn policies_are_read_with_istiods_defaults() {
    let set = build(vec![dr(
        "reviews",
        0,
        json!({"host": "reviews.shop.svc.cluster.local",
        "trafficPolicy": {
            "loadBalancer": {"consistentHash": {"httpCookie": {"name": "session", "ttl": "0s", "path": "/"}}},
            "connectionPool": {"tcp": {"maxConnections": 10, "connectTimeout": "250ms"},
                "http": {"http1MaxPendingRequests": 5, "http2MaxRequests": 100, "maxRequestsPerConnection": 1, "maxRetries": 0}},
            "outlierDetection": {"consecutive5xxErrors": 3}},
        "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
    )]);
    assert!(set.refusals().is_empty(), "{:?}", set.refusals());
    let policy = set
        .destination_policy(&reviews())
        .expect("the rule")
        .resolve(9080, None);
    assert_eq!(
        policy.load_balancer,
        Some(LoadBalancer::ConsistentHash(HashKey::Cookie {
            name: "session".into(),
            ttl: Some(Duration::ZERO),
            path: Some("/".into())
        }))
    );
    assert_eq!(
        policy.connection_pool,
        Some(ConnectionPool {
            max_connections: Some(10),
            connect_timeout: Some(Duration::from_millis(250)),
            http1_max_pending_requests: Some(5),
            http2_max_requests: Some(100),
            max_requests_per_connection: Some(1),
            max_retries: None
        }),
        "0 is unset, as istiod reads it"
    );
    assert_eq!(
        policy.outlier_detection,
        Some(OutlierDetection {
            consecutive_5xx: Some(3),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0
        }),
        "istiod's defaults"
    );
    let subset = set
        .destination_policy(&reviews())
        .and_then(|d| d.subset("v1"))
        .expect("v1");
    assert_eq!(
        subset.labels,
        BTreeMap::from([("version".to_owned(), "v1".to_owned())])
    );
}

#[test]
fn load_balancers_and_hash_keys() {
    let cases: Vec<(Value, LoadBalancer)> = vec![
        (json!({"simple": "ROUND_ROBIN"}), LoadBalancer::RoundRobin),
        (
            json!({"simple": "LEAST_REQUEST"}),
            LoadBalancer::LeastRequest,
        ),
        (json!({"simple": "LEAST_CONN"}), LoadBalancer::LeastRequest),
        (json!({"simple": "RANDOM"}), LoadBalancer::Random),
        (
            json!({"consistentHash": {"httpHeaderName": "X-User"}}),
            LoadBalancer::ConsistentHash(HashKey::Header("x-user".into())),
        ),
        (
            json!({"consistentHash": {"useSourceIp": true}}),
            LoadBalancer::ConsistentHash(HashKey::SourceIp),
        ),
        (
            json!({"consistentHash": {"httpQueryParameterName": "u"}}),
            LoadBalancer::ConsistentHash(HashKey::QueryParameter("u".into())),
        ),
    ];
    for (lb, want) in cases {
        let set = build(vec![dr(
            "r",
            0,
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": lb}}),
        )]);
        assert!(set.refusals().is_empty(), "{lb}: {:?}", set.refusals());
        let got = set
            .destination_policy(&reviews())
            .expect("rule")
            .resolve(9080, None)
            .load_balancer;
        assert_eq!(got, Some(want), "{lb}");
    }
}

#[test]
fn resolve_layers_ports_and_subsets_as_istiod_merges_them() {
    let set = build(vec![dr(
        "r",
        0,
        json!({"host": "reviews",
        "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"},
            "outlierDetection": {"consecutiveGatewayErrors": 2},
            "portLevelSettings": [{"port": {"number": 9080}, "connectionPool": {"tcp": {"maxConnections": 7}}}]},
        "subsets": [
            {"name": "v1", "labels": {"version": "v1"},
             "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 9},
                "portLevelSettings": [{"port": {"number": 9443}, "loadBalancer": {"simple": "RANDOM"}}]}},
            {"name": "v2", "labels": {"version": "v2"}}]}),
    )]);
    assert!(set.refusals().is_empty(), "{:?}", set.refusals());
    let dr = set.destination_policy(&reviews()).expect("rule");
    let lb = |port, subset| dr.resolve(port, subset).load_balancer;
    let pool = |port, subset| {
        dr.resolve(port, subset)
            .connection_pool
            .and_then(|c| c.max_connections)
    };
    let ejects_5xx = |port, subset| {
        dr.resolve(port, subset)
            .outlier_detection
            .and_then(|o| o.consecutive_5xx)
    };
    let ejects_gw = |port, subset| {
        dr.resolve(port, subset)
            .outlier_detection
            .and_then(|o| o.consecutive_gateway_errors)
    };
    // The top level, on a port without settings.
    assert_eq!(
        (lb(80, None), pool(80, None), ejects_gw(80, None)),
        (Some(LoadBalancer::RoundRobin), None, Some(2))
    );
    // A port-level setting replaces the top level whole: no load balancer, no outlier detection.
    assert_eq!(
        (lb(9080, None), pool(9080, None), ejects_gw(9080, None)),
        (None, Some(7), None)
    );
    // A subset's fields override the (port-resolved) top level's, field by field.
    assert_eq!(
        (
            lb(80, Some("v1")),
            ejects_5xx(80, Some("v1")),
            ejects_gw(80, Some("v1"))
        ),
        (Some(LoadBalancer::RoundRobin), Some(9), None)
    );
    assert_eq!(
        (pool(9080, Some("v1")), ejects_5xx(9080, Some("v1"))),
        (Some(7), Some(9))
    );
    // A subset's port-level setting replaces everything.
    assert_eq!(
        (
            lb(9443, Some("v1")),
            pool(9443, Some("v1")),
            ejects_5xx(9443, Some("v1"))
        ),
        (Some(LoadBalancer::Random), None, None)
    );
    // A subset without a policy, or one the rule lacks, takes the top level.
    assert_eq!(dr.resolve(9080, Some("v2")), dr.resolve(9080, None));
    assert_eq!(dr.resolve(80, Some("nope")), dr.resolve(80, None));
}

#[test]
fn two_rules_for_one_service_the_oldest_applies() {
    let set = build(vec![
        dr(
            "newer",
            5,
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}}}),
        ),
        dr(
            "older",
            1,
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}}}),
        ),
    ]);
    assert_eq!(
        set.destination_policy(&reviews()).map(|d| d.name.as_str()),
        Some("older")
    );
    let (kind, name, field, reason) = only_refusal(&set);
    assert_eq!(
        (kind.as_str(), name.as_str(), field.as_str()),
        ("DestinationRule", "shop/newer", "spec.host")
    );
    assert!(reason.contains("shop/older"), "{reason}");
}

#[test]
fn every_bad_destination_rule_is_refused_with_its_field_and_reason() {
    let cases: Vec<(Value, &str, &str)> = vec![
        (json!({}), "spec.host", "needs a host"),
        (
            json!({"host": "*.shop.svc.cluster.local"}),
            "spec.host",
            "wildcard",
        ),
        (
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "PASSTHROUGH"}}}),
            "spec.trafficPolicy.loadBalancer.simple",
            "PASSTHROUGH",
        ),
        (
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "FASTEST"}}}),
            "spec.trafficPolicy.loadBalancer.simple",
            "not a load balancer",
        ),
        (
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"consistentHash": {}}}}),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "needs one of",
        ),
        (
            json!({"host": "reviews", "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "a", "useSourceIp": true}}}}),
            "spec.trafficPolicy.loadBalancer.consistentHash",
            "more than one hash key",
        ),
        (
            json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {"interval": "often"}}}),
            "spec.trafficPolicy.outlierDetection.interval",
            "not a duration",
        ),
        (
            json!({"host": "reviews", "trafficPolicy": {"outlierDetection": {"maxEjectionPercent": 101}}}),
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
            "from 0 to 100",
        ),
        (
            json!({"host": "reviews", "trafficPolicy": {"connectionPool": {"tcp": {"maxConnections": -1}}}}),
            "spec.trafficPolicy.connectionPool.tcp.maxConnections",
            "not a whole number",
        ),
        (
            json!({"host": "reviews", "trafficPolicy": {"portLevelSettings": [{"loadBalancer": {"simple": "RANDOM"}}]}}),
            "spec.trafficPolicy.portLevelSettings[0].port",
            "needs port.number",
        ),
        (
            json!({"host": "reviews", "subsets": [{"labels": {"v": "1"}}]}),
            "spec.subsets[0].name",
            "needs a name",
        ),
        (
            json!({"host": "reviews", "subsets": [{"name": "a"}, {"name": "a"}]}),
            "spec.subsets[1].name",
            "duplicate subset name",
        ),
        (
            json!({"host": "reviews", "subsets": [{"name": "a", "labels": {"v": 1}}]}),
            "spec.subsets[0].labels.v",
            "not a string",
        ),
    ];
    for (spec, field, reason) in cases {
        let set = build(vec![dr("bad", 0, spec.clone())]);
        let (kind, name, got_field, got_reason) = only_refusal(&set);
        assert_eq!(
            (kind.as_str(), name.as_str()),
            ("DestinationRule", "shop/bad"),
            "{spec}"
        );
        assert_eq!(got_field, field, "{spec}");
        assert!(got_reason.contains(reason), "{spec}: {got_reason}");
        assert!(
            set.destination_policy(&reviews()).is_none(),
            "{spec}: refused whole"
        );
    }
}
