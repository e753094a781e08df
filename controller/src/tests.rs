//! The pure parts: which Gateways are waypoints and which are refused, port names, the "already
//! applied" check, and status times that do not move when nothing changed.

use serde_json::{Value, json};

use crate::ControllerSettings;
use crate::gateway::{GatewayError, parse};
use crate::render::{contains, render};
use crate::status::{Observed, desired};

fn gateway() -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "shop", "uid": "u1", "generation": 2},
        "spec": {"gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
}

#[test]
fn only_the_waypoint_class_is_read() {
    assert!(parse(&gateway()).unwrap().is_some());
    let mut other = gateway();
    other["spec"]["gatewayClassName"] = json!("istio");
    assert_eq!(parse(&other), Ok(None));
}

#[test]
fn each_malformed_field_is_refused_by_name() {
    let cases: [(&str, Value, &str); 6] = [
        ("/metadata/name", Value::Null, "no_name"),
        ("/metadata/uid", Value::Null, "no_uid"),
        ("/spec/listeners", json!({"name": "mesh"}), "listeners"),
        ("/spec/listeners", json!([]), "listeners"),
        ("/spec/listeners/0/port", json!(70000), "listeners"),
        (
            "/metadata/annotations",
            json!({"gateway.istio.io/name-override": "-bad"}),
            "annotation",
        ),
    ];
    for (path, value, reason) in cases {
        let mut g = gateway();
        g["metadata"]["annotations"] = json!({});
        *g.pointer_mut(path).unwrap() = value;
        let error = parse(&g).unwrap_err();
        assert_eq!(error.reason(), reason, "{path}: {error}");
    }
    let mut g = gateway();
    g["spec"]["listeners"][0]["protocol"] = json!(7);
    assert_eq!(
        parse(&g).unwrap_err(),
        GatewayError::Listeners {
            gateway: "shop/waypoint".to_owned(),
            field: "[0].protocol".to_owned(),
            detail: "expected a non-empty string",
        }
    );
}

#[test]
fn a_long_gateway_name_needs_an_override() {
    let mut g = gateway();
    g["metadata"]["name"] = json!("a".repeat(64));
    assert_eq!(parse(&g).unwrap_err().reason(), "annotation");
    g["metadata"]["annotations"] = json!({"gateway.istio.io/name-override": "short"});
    assert_eq!(parse(&g).unwrap().unwrap().deployment_name, "short");
}

#[test]
fn listener_names_become_unique_service_port_names() {
    let mut g = gateway();
    g["spec"]["listeners"] = json!([
        {"name": "mesh", "port": 15008, "protocol": "HBONE"},
        {"name": "mesh", "port": 15009, "protocol": "HBONE"},
        {"name": "again", "port": 15008, "protocol": "HBONE"},
        {"name": "status-port", "port": 80, "protocol": "HTTP"}]);
    let w = parse(&g).unwrap().unwrap();
    let service = render(&w, &ControllerSettings::default()).service;
    let names: Vec<&str> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    // The same port once; a repeated name gets the port number.
    assert_eq!(
        names,
        ["status-port", "mesh", "mesh-15009", "status-port-80"]
    );
}

#[test]
fn contains_sees_server_defaults_as_no_change_and_edits_as_change() {
    let want = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 1}]}]}});
    let defaulted = json!({"spec": {"containers": [{"name": "a", "terminationMessagePath": "/x",
        "ports": [{"containerPort": 1, "protocol": "TCP"}]}], "dnsPolicy": "ClusterFirst"}});
    assert!(contains(&defaulted, &want));
    let edited = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 2}]}]}});
    assert!(!contains(&edited, &want));
    let extra = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 1}]},
        {"name": "b"}]}});
    assert!(
        !contains(&extra, &want),
        "a list with an extra element is not ours"
    );
}

#[test]
fn an_unchanged_status_keeps_its_times_and_a_change_moves_them() {
    let w = parse(&gateway()).unwrap().unwrap();
    let first = desired(
        &w,
        &Observed::default(),
        "cluster.local",
        "2026-01-01T00:00:00Z",
    );
    let mut again = w.clone();
    again.status = first.clone();
    let second = desired(
        &again,
        &Observed::default(),
        "cluster.local",
        "2026-01-02T00:00:00Z",
    );
    assert_eq!(first, second);
    let ready = Observed {
        ready: true,
        cluster_ips: vec!["10.96.0.1".to_owned()],
    };
    let third = desired(&again, &ready, "cluster.local", "2026-01-03T00:00:00Z");
    let time = |s: &Value, kind: &str| {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == kind)
            .unwrap()["lastTransitionTime"]
            .clone()
    };
    assert_eq!(time(&third, "Programmed"), "2026-01-03T00:00:00Z");
    assert_eq!(time(&third, "Accepted"), "2026-01-01T00:00:00Z");
    assert_eq!(third["conditions"][0]["observedGeneration"], 2);
    // Once there, addresses stay even if readiness goes.
    let mut after = again;
    after.status = third;
    let fourth = desired(
        &after,
        &Observed::default(),
        "cluster.local",
        "2026-01-04T00:00:00Z",
    );
    assert_eq!(fourth["addresses"][0]["value"], "10.96.0.1");
}

#[test]
fn a_binding_is_named_after_its_gateway_and_binds_its_service_account() {
    let mut g = gateway();
    g["metadata"]["annotations"] = json!({"gateway.istio.io/service-account": "shop-proxy"});
    let w = parse(&g).unwrap().unwrap();
    let b = crate::binding::render(&w);
    assert_eq!(b["metadata"]["name"], "marrow-waypoint.shop.waypoint");
    assert_eq!(
        b["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
            "name": "marrow-waypoint"})
    );
    assert_eq!(
        b["subjects"],
        json!([{"kind": "ServiceAccount", "name": "shop-proxy", "namespace": "shop"}])
    );
    let labels = &b["metadata"]["labels"];
    assert_eq!(
        labels["gateway.istio.io/managed"],
        "istio.io-mesh-controller"
    );
    assert_eq!(labels["gateway.networking.k8s.io/gateway-name"], "waypoint");
    assert_eq!(labels["marrow.io/gateway-namespace"], "shop");
    // No owner: a cluster-scoped object cannot be owned by a namespaced one.
    assert!(b["metadata"]["ownerReferences"].is_null());
    assert!(crate::binding::ours(&b));
    assert_eq!(
        crate::binding::gateway_of(&b).as_deref(),
        Some("shop/waypoint")
    );
}

#[test]
fn binding_names_differ_per_gateway_and_are_always_valid() {
    use crate::binding::name;
    // The separators cannot be confused: `a-b/c` and `a/b-c` get different names.
    assert_ne!(name("a-b", "c"), name("a", "b-c"));
    assert_eq!(name("a", "b.c"), "marrow-waypoint.a.b.c");
    // Too long for a name (253): a hash instead, stable and distinct.
    let long = "w".repeat(240);
    let hashed = name("shop", &long);
    assert!(hashed.starts_with("marrow-waypoint-"), "{hashed}");
    assert_eq!(hashed.len(), "marrow-waypoint-".len() + 16);
    assert_eq!(hashed, name("shop", &long));
    assert_ne!(hashed, name("bank", &long));
    // Not a valid name (upper case): a hash too.
    assert!(name("shop", "Way").starts_with("marrow-waypoint-"));
    assert_eq!(
        name("shop", "w".repeat(200).as_str()).len(),
        "marrow-waypoint.shop.".len() + 200
    );
}

#[test]
fn a_binding_of_another_role_or_unmanaged_is_not_ours() {
    let w = parse(&gateway()).unwrap().unwrap();
    let mut b = crate::binding::render(&w);
    b["roleRef"]["name"] = json!("cluster-admin");
    assert!(!crate::binding::ours(&b));
    let mut b = crate::binding::render(&w);
    b["metadata"]["labels"] = json!({});
    assert!(!crate::binding::ours(&b));
}
