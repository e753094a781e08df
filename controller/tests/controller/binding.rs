//! Each waypoint's ClusterRoleBinding to `marrow-waypoint`, against the replay API server: made
//! with the Gateway and left alone while nothing changes; deleted with the Gateway (or when it
//! stops being a waypoint), and at start when its Gateway went while no controller ran; one of
//! that name not managed by marrow is left alone and reported; a replica that does not lead
//! writes none, and sweeps once it leads.

use std::time::Duration;

use marrow_controller::{ControllerSettings, ElectionSettings};
use replay_apiserver::ApiServer;
use serde_json::{Value, json};

use super::{eventually, start, start_with, waypoint};

const RBAC: &str = "rbac.authorization.k8s.io/v1";

/// A binding as the controller makes one, for the Gateway `namespace/name` (or hand-made).
fn managed_binding(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": RBAC, "kind": "ClusterRoleBinding",
        "metadata": {"name": format!("marrow-waypoint.{namespace}.{name}"),
            "labels": {"gateway.istio.io/managed": "istio.io-mesh-controller",
                "gateway.networking.k8s.io/gateway-name": name,
                "gateway.networking.k8s.io/gateway-class-name": "istio-waypoint",
                "marrow.io/gateway-namespace": namespace,
                "istio.io/waypoint-for": "service"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "marrow-waypoint"},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
}

fn binding(server: &ApiServer, namespace: &str, name: &str) -> Option<Value> {
    server.get(
        RBAC,
        "ClusterRoleBinding",
        "",
        &format!("marrow-waypoint.{namespace}.{name}"),
    )
}

/// The writes (PATCH, DELETE) sent to ClusterRoleBindings so far.
fn binding_writes(server: &ApiServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("PATCH ") || r.starts_with("DELETE "))
        .filter(|r| r.contains("/clusterrolebindings/"))
        .collect()
}

#[tokio::test]
async fn a_gateway_gets_a_binding_of_its_service_account_and_no_change_rewrites_it() {
    let mut gateway = waypoint("shop", "waypoint");
    gateway["metadata"]["annotations"] = json!({"gateway.istio.io/service-account": "shop-proxy"});
    let run = start(vec![gateway, waypoint("bank", "waypoint")]).await;
    let made = eventually("the binding", || binding(&run.server, "shop", "waypoint")).await;
    assert_eq!(
        made["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "marrow-waypoint"})
    );
    assert_eq!(
        made["subjects"],
        json!([{"kind": "ServiceAccount", "name": "shop-proxy", "namespace": "shop"}])
    );
    let labels = &made["metadata"]["labels"];
    assert_eq!(
        labels["gateway.istio.io/managed"],
        "istio.io-mesh-controller"
    );
    assert_eq!(labels["gateway.networking.k8s.io/gateway-name"], "waypoint");
    assert_eq!(
        labels["gateway.networking.k8s.io/gateway-class-name"],
        "istio-waypoint"
    );
    assert_eq!(labels["marrow.io/gateway-namespace"], "shop");
    assert!(made["metadata"]["ownerReferences"].is_null(), "{made}");
    // The other namespace's Gateway has its own, for its own account.
    let bank = eventually("bank's binding", || {
        binding(&run.server, "bank", "waypoint")
    })
    .await;
    assert_eq!(bank["subjects"][0]["namespace"], "bank");
    // The same Gateway again (a MODIFIED event, nothing changed): no write, the same version.
    eventually("status written", || {
        run.server
            .get(
                "gateway.networking.k8s.io/v1",
                "Gateway",
                "shop",
                "waypoint",
            )
            .filter(|g| !g["status"].is_null())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = binding_writes(&run.server);
    assert_eq!(writes.len(), 2, "{writes:?}");
    let version =
        binding(&run.server, "shop", "waypoint").unwrap()["metadata"]["resourceVersion"].clone();
    let current = run
        .server
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )
        .unwrap();
    run.server.apply(current.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(binding_writes(&run.server), writes);
    assert_eq!(
        binding(&run.server, "shop", "waypoint").unwrap()["metadata"]["resourceVersion"],
        version
    );
    // Another account: the subject follows.
    let mut changed = current;
    changed["metadata"]["annotations"] = json!({"gateway.istio.io/service-account": "other"});
    run.server.apply(changed);
    eventually("the subject changed", || {
        binding(&run.server, "shop", "waypoint").filter(|b| b["subjects"][0]["name"] == "other")
    })
    .await;
}

#[tokio::test]
async fn deleting_the_gateway_or_changing_its_class_deletes_its_binding_only() {
    let run = start(vec![
        waypoint("shop", "waypoint"),
        waypoint("shop", "second"),
        waypoint("bank", "waypoint"),
    ])
    .await;
    for (namespace, name) in [
        ("shop", "waypoint"),
        ("shop", "second"),
        ("bank", "waypoint"),
    ] {
        eventually("the bindings", || binding(&run.server, namespace, name)).await;
    }
    let gateway = run
        .server
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )
        .unwrap();
    run.server.delete(&gateway);
    eventually("the binding gone", || {
        binding(&run.server, "shop", "waypoint")
            .is_none()
            .then_some(())
    })
    .await;
    // No longer a waypoint: its binding goes too.
    let mut second = run
        .server
        .get("gateway.networking.k8s.io/v1", "Gateway", "shop", "second")
        .unwrap();
    second["spec"]["gatewayClassName"] = json!("istio");
    run.server.apply(second);
    eventually("the second binding gone", || {
        binding(&run.server, "shop", "second")
            .is_none()
            .then_some(())
    })
    .await;
    // Nothing brings them back, and the other namespace's stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(binding(&run.server, "shop", "waypoint").is_none());
    assert!(binding(&run.server, "shop", "second").is_none());
    assert!(binding(&run.server, "bank", "waypoint").is_some());
    assert_eq!(run.telemetry.deleted_count("ClusterRoleBinding"), 2);
}

#[tokio::test]
async fn at_start_a_managed_binding_whose_gateway_is_gone_is_deleted() {
    // Left by a Gateway deleted while no controller ran; one of a live Gateway; one labelled
    // managed but binding another role, which is not ours to delete.
    // A refused (malformed) waypoint Gateway keeps its binding, as it keeps its other objects.
    let mut other_role = managed_binding("shop", "old-admin");
    other_role["roleRef"]["name"] = json!("cluster-admin");
    let mut broken = waypoint("shop", "broken");
    broken["spec"]["listeners"] = json!("mesh");
    let run = start(vec![
        managed_binding("shop", "old"),
        managed_binding("shop", "waypoint"),
        managed_binding("shop", "broken"),
        other_role,
        waypoint("shop", "waypoint"),
        broken,
    ])
    .await;
    eventually("the stale binding gone", || {
        binding(&run.server, "shop", "old").is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(binding(&run.server, "shop", "waypoint").is_some());
    assert!(binding(&run.server, "shop", "old-admin").is_some());
    assert!(binding(&run.server, "shop", "broken").is_some());
    // The start-up sweep and the reconcile of the gone Gateway `shop/old` may both send the
    // DELETE before the watch reports it gone (the second gets 404: done); nothing else is
    // written.
    let mut writes = binding_writes(&run.server);
    writes.dedup();
    assert_eq!(
        writes,
        ["DELETE /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/marrow-waypoint.shop.old?"],
        "the live Gateway's binding was already as rendered"
    );
}

#[tokio::test]
async fn an_unmanaged_binding_of_that_name_is_left_alone_and_reported() {
    let mut theirs = managed_binding("shop", "waypoint");
    theirs["metadata"]["labels"] = json!({"team": "platform"});
    theirs["subjects"][0]["name"] = json!("someone-else");
    let run = start(vec![theirs.clone(), waypoint("shop", "waypoint")]).await;
    // The waypoint's other objects are made; the binding is not touched.
    eventually("the deployment", || {
        run.server.get("apps/v1", "Deployment", "shop", "waypoint")
    })
    .await;
    eventually("reported", || {
        (run.telemetry.not_managed_count("ClusterRoleBinding") >= 1).then_some(())
    })
    .await;
    // Nor deleted with the Gateway.
    let gateway = run
        .server
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            "shop",
            "waypoint",
        )
        .unwrap();
    run.server.delete(&gateway);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kept = binding(&run.server, "shop", "waypoint").unwrap();
    assert_eq!(kept["subjects"], theirs["subjects"]);
    assert_eq!(kept["metadata"]["labels"], json!({"team": "platform"}));
    assert!(
        binding_writes(&run.server).is_empty(),
        "{:?}",
        binding_writes(&run.server)
    );
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_no_binding_and_sweeps_once_it_leads() {
    // Another replica holds the Lease for an hour.
    let lease = |holder: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "istio-gateway-deployment-default",
                "namespace": "marrow-system"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3600,
                "acquireTime": "2026-12-07T19:00:00.000000Z",
                "renewTime": "2026-12-07T19:00:00.000000Z", "leaseTransitions": 0}})
    };
    let settings = ControllerSettings {
        election: Some(ElectionSettings {
            retry_period: Duration::from_millis(200),
            ..ElectionSettings::new("marrow-system", "ca-b")
        }),
        ..ControllerSettings::default()
    };
    let run = start_with(
        vec![
            lease("ca-a"),
            managed_binding("shop", "old"),
            waypoint("shop", "waypoint"),
        ],
        settings,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        binding_writes(&run.server).is_empty(),
        "{:?}",
        binding_writes(&run.server)
    );
    assert!(binding(&run.server, "shop", "waypoint").is_none());
    assert!(binding(&run.server, "shop", "old").is_some());
    // The holder lets go: this replica leads, binds the waypoint and deletes the stale one.
    run.server.apply(lease(""));
    eventually("the waypoint's binding", || {
        binding(&run.server, "shop", "waypoint")
    })
    .await;
    eventually("the stale binding gone", || {
        binding(&run.server, "shop", "old").is_none().then_some(())
    })
    .await;
}
