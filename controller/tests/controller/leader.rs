//! Two controllers against one replay API server, as two CA replicas: one takes the Lease and
//! applies, the other writes nothing; the leader stopped, the other takes over within the lease
//! duration; a renewal that conflicts is retried and the holder keeps the Lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_controller::{ControllerSettings, ControllerTelemetry, ElectionSettings};
use replay_apiserver::ApiServer;
use serde_json::Value;

use super::{eventually_within, waypoint};

const NAMESPACE: &str = "marrow-system";

/// A replica's controller: its own field manager, so the server's log tells who wrote.
fn replica(server: &ApiServer, identity: &str) -> tokio::task::JoinHandle<()> {
    let settings = ControllerSettings {
        field_manager: format!("manager-{identity}"),
        election: Some(ElectionSettings {
            lease_duration: Duration::from_millis(1500),
            renew_deadline: Duration::from_millis(1000),
            retry_period: Duration::from_millis(200),
            ..ElectionSettings::new(NAMESPACE, identity)
        }),
        ..ControllerSettings::default()
    };
    let client = server.client();
    tokio::spawn(async move {
        let telemetry = Arc::new(ControllerTelemetry::default());
        let _ = marrow_controller::run(client, settings, telemetry).await;
    })
}

/// The election's Lease as stored.
fn lease(server: &ApiServer) -> Option<Value> {
    server.get(
        "coordination.k8s.io/v1",
        "Lease",
        NAMESPACE,
        "istio-gateway-deployment-default",
    )
}

fn holder(server: &ApiServer) -> Option<String> {
    lease(server)?["spec"]["holderIdentity"]
        .as_str()
        .map(str::to_owned)
}

/// The replicas whose field manager sent an apply so far.
fn writers(server: &ApiServer) -> Vec<String> {
    let mut found: Vec<String> = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("PATCH "))
        .filter_map(|r| r.split("fieldManager=manager-").nth(1))
        .map(|rest| rest.split('&').next().unwrap_or_default().to_owned())
        .collect();
    found.sort();
    found.dedup();
    found
}

#[tokio::test]
async fn one_replica_leads_and_applies_and_the_other_takes_over_when_it_stops() {
    let server = ApiServer::start().await;
    server.apply(waypoint("shop", "shop-waypoint"));
    let a = replica(&server, "ca-a");
    let first = eventually_within("a holder", Duration::from_secs(5), || holder(&server)).await;
    let b = replica(&server, "ca-b");
    eventually_within("the waypoint's deployment", Duration::from_secs(5), || {
        server.get("apps/v1", "Deployment", "shop", "shop-waypoint")
    })
    .await;
    // Both replicas watch and see the Gateway; only the holder writes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(first, "ca-a", "the first replica takes the free lease");
    assert_eq!(writers(&server), vec!["ca-a".to_owned()]);
    assert_eq!(holder(&server).as_deref(), Some("ca-a"));

    // The leader goes away without releasing: the other takes over within the lease duration
    // (plus a retry period) and applies what appears next.
    a.abort();
    let stopped = Instant::now();
    eventually_within("a new holder", Duration::from_secs(4), || {
        holder(&server).filter(|h| h == "ca-b")
    })
    .await;
    assert!(
        stopped.elapsed() < Duration::from_millis(1500 + 200 + 1000),
        "took over after {:?}",
        stopped.elapsed()
    );
    server.apply(waypoint("shop", "second-waypoint"));
    eventually_within("the second deployment", Duration::from_secs(5), || {
        server.get("apps/v1", "Deployment", "shop", "second-waypoint")
    })
    .await;
    assert!(writers(&server).contains(&"ca-b".to_owned()));
    b.abort();
}

#[tokio::test]
async fn a_renewal_that_conflicts_is_retried_and_the_holder_keeps_the_lease() {
    let server = ApiServer::start().await;
    let a = replica(&server, "ca-a");
    eventually_within("a holder", Duration::from_secs(5), || holder(&server)).await;
    // Two renewals answered 409 (another writer came first), 400 ms in all, inside the renew
    // deadline: the holder reads again, renews, and keeps the Lease.
    let puts = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("PUT "))
            .count()
    };
    let before = puts(&server);
    server.conflict_lease_updates(2);
    let renewed = eventually_within(
        "a renewal after the conflicts",
        Duration::from_secs(3),
        || {
            let lease = server.get(
                "coordination.k8s.io/v1",
                "Lease",
                NAMESPACE,
                "istio-gateway-deployment-default",
            )?;
            (puts(&server) >= before + 3).then_some(lease)
        },
    )
    .await;
    assert_eq!(renewed["spec"]["holderIdentity"], "ca-a");
    assert_eq!(holder(&server).as_deref(), Some("ca-a"));
    // A second replica never gets the lease while the holder renews.
    let b = replica(&server, "ca-b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(holder(&server).as_deref(), Some("ca-a"));
    a.abort();
    b.abort();
}
