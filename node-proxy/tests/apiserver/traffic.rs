//! Traffic management from the API server: VirtualServices (written at v1beta1, read at v1 as
//! a real server converts) and HTTPRoutes arrive through the watchers into
//! `Snapshot::traffic()`, edits apply, a deletion takes the rules away; without the
//! networking.istio.io CRDs the source still syncs.

use std::sync::Arc;
use std::time::Duration;

use marrow_mesh::apiserver::KubeSource;
use marrow_mesh::state::{Snapshot, StateStore};
use marrow_mesh::traffic::{HttpAction, RouteRequest, ServiceName};
use replay_apiserver::{ApiServer, objects};
use serde_json::json;

use super::{NODE, eventually};

/// What `service` does with a GET of `path` (`none`, `no match`, or the rule).
fn route_of(snapshot: &Snapshot, service: &str, path: &str) -> String {
    let headers = http::HeaderMap::new();
    let request = RouteRequest {
        port: 9080,
        method: "GET",
        path_and_query: path,
        authority: service,
        headers: &headers,
        source_namespace: None,
        source_labels: None,
    };
    match snapshot
        .traffic()
        .select_http(&ServiceName::new("shop", service), &request)
    {
        marrow_mesh::traffic::HttpSelection::NoRoutes => "none".into(),
        marrow_mesh::traffic::HttpSelection::NoMatch => "no match".into(),
        marrow_mesh::traffic::HttpSelection::Matched(rule) => match &rule.action {
            HttpAction::Forward(f) => format!(
                "{} -> {}",
                rule.route,
                f.backends
                    .iter()
                    .map(|b| format!("{}:{}", b.service.name, b.weight))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => rule.route.to_string(),
        },
    }
}

fn expect(
    service: &'static str,
    path: &'static str,
    want: &'static str,
) -> impl Fn(&Snapshot) -> Result<(), String> {
    move |s| {
        let got = route_of(s, service, path);
        if got == want { Ok(()) } else { Err(got) }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_services_and_http_routes_arrive_in_the_traffic_set() {
    let server = ApiServer::start().await;
    server.apply(objects::namespace("shop", true));
    server.apply(objects::service("shop", "reviews", "10.96.0.80"));
    server.apply(objects::service("shop", "ratings", "10.96.0.81"));
    let store = Arc::new(StateStore::new());
    let _watch = KubeSource::new(server.client(), Some(NODE.into()), "istio-system")
        .with_debounce(Duration::from_millis(20))
        .start(store.clone());
    // No networking.istio.io or Gateway API objects: their CRDs are absent (404), empty.
    eventually(&store, "synced without the CRDs", |s| {
        (s.generation() > 0)
            .then_some(())
            .ok_or_else(|| "not yet".into())
    })
    .await;

    let mut vs = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "VirtualService",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"hosts": ["reviews"], "http": [{"route": [
            {"destination": {"host": "reviews"}, "weight": 90},
            {"destination": {"host": "ratings"}, "weight": 10}]}]}});
    server.apply(vs.clone());
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "ratings", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "ratings"}],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                "backendRefs": [{"name": "ratings", "port": 9080}]}]}});
    server.apply(route.clone());
    eventually(
        &store,
        "the VirtualService",
        expect(
            "reviews",
            "/",
            "VirtualService shop/reviews rule 0 -> reviews:90,ratings:10",
        ),
    )
    .await;
    let snapshot = eventually(
        &store,
        "the HTTPRoute",
        expect(
            "ratings",
            "/v2/x",
            "HTTPRoute shop/ratings rule 0 -> ratings:1",
        ),
    )
    .await;
    assert_eq!(route_of(&snapshot, "ratings", "/v1"), "no match");
    assert!(
        snapshot.traffic().refusals().is_empty(),
        "{:?}",
        snapshot.traffic().refusals()
    );

    // A weight edit takes effect with the next version; a deletion removes the rules.
    vs["spec"]["http"][0]["route"][0]["weight"] = json!(50);
    vs["spec"]["http"][0]["route"][1]["weight"] = json!(50);
    server.apply(vs.clone());
    eventually(
        &store,
        "the edit",
        expect(
            "reviews",
            "/",
            "VirtualService shop/reviews rule 0 -> reviews:50,ratings:50",
        ),
    )
    .await;
    server.delete(&route);
    eventually(
        &store,
        "the HTTPRoute gone",
        expect("ratings", "/v2/x", "none"),
    )
    .await;
    let asked = server.requests();
    for path in [
        "/apis/networking.istio.io/v1/virtualservices",
        "/apis/networking.istio.io/v1/destinationrules",
        "/apis/gateway.networking.k8s.io/v1/httproutes",
        "/apis/gateway.networking.k8s.io/v1/grpcroutes",
        "/apis/gateway.networking.k8s.io/v1alpha2/tcproutes",
    ] {
        assert!(
            asked.iter().any(|r| r.contains(path)),
            "{path} never asked: {asked:?}"
        );
    }
}
