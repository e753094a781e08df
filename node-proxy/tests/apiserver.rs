//! The API server source against an in-process server replaying real API JSON (lists, watch
//! streams, bookmarks, 410 Gone, dropped connections, an unreachable server): the state the
//! proxy builds, and its recovery.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_mesh::apiserver::KubeSource;
use marrow_mesh::state::{Snapshot, StateStore};
use replay_apiserver::{ApiServer, objects};

#[path = "apiserver/traffic.rs"]
mod traffic;

/// Bound on the source reaching an expected state (not a timing assertion: it polls).
const WITHIN: Duration = Duration::from_secs(20);
const NODE: &str = "node-a";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

/// Polls the store until `check` holds, or fails with what it last said.
async fn eventually(
    store: &StateStore,
    what: &str,
    check: impl Fn(&Snapshot) -> Result<(), String>,
) -> Arc<Snapshot> {
    let started = Instant::now();
    loop {
        let snapshot = store.snapshot();
        match check(&snapshot) {
            Ok(()) => return snapshot,
            Err(last) if started.elapsed() > WITHIN => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn has_pod(snapshot: &Snapshot, address: &str) -> Result<(), String> {
    snapshot
        .workload_by_ip(ip(address))
        .map(|_| ())
        .ok_or_else(|| {
            format!(
                "no workload at {address} (generation {})",
                snapshot.generation()
            )
        })
}

fn lacks_pod(snapshot: &Snapshot, address: &str) -> Result<(), String> {
    match snapshot.workload_by_ip(ip(address)) {
        None => Ok(()),
        Some(w) => Err(format!("{}/{} still at {address}", w.namespace, w.name)),
    }
}

/// A cluster: two ambient namespaces' worth of pods on two nodes, a policy, a service.
fn seed(server: &ApiServer) {
    server.apply(objects::namespace("shop", true));
    server.apply(objects::namespace("legacy", false));
    server.apply(objects::pod("shop", "web", NODE, "10.244.1.10", "web"));
    server.apply(objects::pod(
        "shop",
        "client",
        "node-b",
        "10.244.2.10",
        "client",
    ));
    server.apply(objects::pod(
        "legacy",
        "old",
        "node-b",
        "10.244.2.11",
        "default",
    ));
    server.apply(objects::deny_port("shop", "no-9090", "9090"));
    server.apply(objects::strict("istio-system"));
    server.apply(objects::service("shop", "web", "10.96.0.10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_then_follows_watches_through_drops_and_410() {
    let server = ApiServer::start().await;
    seed(&server);
    let store = Arc::new(StateStore::new());
    let watch = KubeSource::new(server.client(), Some(NODE.into()), "istio-system")
        .with_debounce(Duration::from_millis(20))
        .start(store.clone());

    // The first version: every kind listed.
    let first = eventually(&store, "the first cluster state", |s| {
        has_pod(s, "10.244.1.10")?;
        has_pod(s, "10.244.2.10")
    })
    .await;
    assert!(watch.status().synced());
    let web = first.workload_by_ip(ip("10.244.1.10")).expect("web");
    assert_eq!(
        (web.namespace.as_str(), web.service_account.as_str()),
        ("shop", "web")
    );
    assert_eq!(web.node_name.as_deref(), Some(NODE));
    assert_eq!(
        web.workload_name, "web",
        "the Deployment behind the ReplicaSet"
    );
    assert!(first.in_mesh(web), "shop is ambient");
    let old = first.workload_by_ip(ip("10.244.2.11")).expect("old");
    assert!(!first.in_mesh(old), "legacy is not");
    assert_eq!(first.policies().warnings().len(), 0);
    let kinds: Vec<String> = first.raw_objects().map(|d| d.object.kind.clone()).collect();
    for kind in ["AuthorizationPolicy", "PeerAuthentication", "Service"] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} kept: {kinds:?}");
    }
    // Local pods are listed with the node's field selector, the others with its negation.
    let requests = server.requests();
    for selector in ["spec.nodeName%3Dnode-a", "spec.nodeName%21%3Dnode-a"] {
        assert!(
            requests
                .iter()
                .any(|r| r.starts_with("GET /api/v1/pods?") && r.contains(selector)),
            "a pod list with fieldSelector {selector}: {requests:#?}"
        );
    }
    assert!(
        requests
            .iter()
            .any(|r| r.contains("watch=true") && r.contains("allowWatchBookmarks=true")),
        "watches ask for bookmarks: {requests:#?}"
    );

    // A watch event: a new pod, then it goes.
    server.apply(objects::pod("shop", "api", "node-b", "10.244.2.20", "api"));
    eventually(&store, "a pod added by a watch event", |s| {
        has_pod(s, "10.244.2.20")
    })
    .await;
    server.delete(&objects::pod("shop", "api", "node-b", "10.244.2.20", "api"));
    eventually(&store, "a pod deleted by a watch event", |s| {
        lacks_pod(s, "10.244.2.20")
    })
    .await;

    // A dropped watch: what happens while it is down arrives after the re-watch.
    server.drop_watches();
    server.apply(objects::pod(
        "shop",
        "late",
        "node-b",
        "10.244.2.30",
        "late",
    ));
    eventually(&store, "an event across a dropped watch", |s| {
        has_pod(s, "10.244.2.30")
    })
    .await;

    // 410 Gone: every version expired; a deletion made meanwhile must show after the re-list.
    server.compact();
    server.delete(&objects::pod(
        "shop",
        "late",
        "node-b",
        "10.244.2.30",
        "late",
    ));
    server.apply(objects::pod("shop", "newer", NODE, "10.244.1.40", "newer"));
    let after = eventually(&store, "the state after a 410 and a re-list", |s| {
        lacks_pod(s, "10.244.2.30")?;
        has_pod(s, "10.244.1.40")
    })
    .await;
    assert!(
        after.workload_by_ip(ip("10.244.1.10")).is_some(),
        "the rest stays"
    );
    drop(watch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_keeps_the_last_state_and_says_so() {
    let server = ApiServer::start().await;
    seed(&server);
    let store = Arc::new(StateStore::new());
    let watch = KubeSource::new(server.client(), Some(NODE.into()), "istio-system")
        .with_debounce(Duration::from_millis(20))
        .start(store.clone());
    eventually(&store, "the first state", |s| has_pod(s, "10.244.1.10")).await;
    let generation = store.snapshot().generation();

    server.set_down(true);
    let started = Instant::now();
    while watch.status().detail().is_none() {
        assert!(
            started.elapsed() < WITHIN,
            "the outage never shows in the status; requests: {:#?}",
            server.requests().iter().rev().take(12).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let detail = watch.status().detail().expect("detail");
    assert!(detail.contains("last state keeps serving"), "{detail}");
    let during = store.snapshot();
    assert_eq!(
        during.generation(),
        generation,
        "no version built from nothing"
    );
    assert!(
        during.workload_by_ip(ip("10.244.1.10")).is_some(),
        "the last state serves"
    );

    // Back: changes made while it was down arrive, and the status clears.
    server.apply(objects::pod("shop", "back", NODE, "10.244.1.50", "back"));
    server.set_down(false);
    eventually(&store, "the change made during the outage", |s| {
        has_pod(s, "10.244.1.50")
    })
    .await;
    let started = Instant::now();
    while let Some(detail) = watch.status().detail() {
        assert!(
            started.elapsed() < WITHIN,
            "the status still says: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_object_is_left_out_and_missing_crds_count_as_empty() {
    let server = ApiServer::start().await;
    // No Istio objects at all: the server has no security.istio.io resources (404).
    server.apply(objects::namespace("shop", true));
    server.apply(objects::pod("shop", "good", NODE, "10.244.1.60", "good"));
    let mut bad = objects::pod("shop", "bad", NODE, "10.244.1.61", "bad");
    bad["status"]["podIP"] = serde_json::json!("not-an-ip");
    server.apply(bad);
    let mut sneaky = objects::pod("shop", "sneaky", NODE, "10.244.1.62", "x");
    sneaky["spec"]["serviceAccountName"] = serde_json::json!("../../etc");
    server.apply(sneaky);
    let store = Arc::new(StateStore::new());
    let _watch = KubeSource::new(server.client(), Some(NODE.into()), "istio-system")
        .with_debounce(Duration::from_millis(20))
        .start(store.clone());
    let snapshot = eventually(&store, "a state without Istio's CRDs", |s| {
        has_pod(s, "10.244.1.60")
    })
    .await;
    assert!(
        snapshot.workload_by_name("shop", "bad").is_none(),
        "a bad IP is left out"
    );
    assert!(
        snapshot.workload_by_name("shop", "sneaky").is_none(),
        "a service account that would forge a SPIFFE ID is left out"
    );
    assert_eq!(snapshot.policies().warnings().len(), 0);
}

/// Valid Istio marrow does not enforce as written, as the API server serves it: a bare
/// service-account name, AUDIT, CUSTOM, a field of a newer Istio, dry-run, a
/// RequestAuthentication, and a malformed policy (admission webhook off).
fn unsupported_policies() -> Vec<serde_json::Value> {
    use serde_json::json;
    let policy = |name: &str, annotations: serde_json::Value, spec: serde_json::Value| {
        json!({"apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "spec": spec})
    };
    vec![
        policy(
            "web-from-client",
            json!({}),
            json!({"selector": {"matchLabels": {"app": "web"}},
                "rules": [{"from": [{"source": {"serviceAccounts": ["client"]}}]}]}),
        ),
        policy(
            "audit",
            json!({}),
            json!({"action": "AUDIT", "rules": [{}]}),
        ),
        policy(
            "ext-authz",
            json!({}),
            json!({"action": "CUSTOM", "provider": {"name": "opa"},
                "rules": [{"to": [{"operation": {"ports": ["9090"]}}]}]}),
        ),
        policy(
            "newer",
            json!({}),
            json!({"action": "DENY", "futureScope": "x",
                "rules": [{"from": [{"source": {"namespaces": ["attic"]}}]}]}),
        ),
        policy(
            "try-deny",
            json!({"istio.io/dry-run": "true"}),
            json!({"action": "DENY", "rules": [{}]}),
        ),
        policy(
            "typo",
            json!({}),
            json!({"action": "DENY", "rules": [{"from": [{"source": {"namespaces": ["attic"]}}],
                "to": [{"operation": {"ports": ["htp"]}}]}]}),
        ),
        json!({"apiVersion": "security.istio.io/v1", "kind": "RequestAuthentication",
            "metadata": {"name": "jwt", "namespace": "shop"},
            "spec": {"jwtRules": [{"issuer": "https://issuer.example"}]}}),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_policies_never_freeze_the_cluster_state() {
    use marrow_mesh::policy::{ConnectionAttrs, Destination, Verdict, evaluate};
    let server = ApiServer::start().await;
    seed(&server);
    for object in unsupported_policies() {
        server.apply(object);
    }
    let store = Arc::new(StateStore::new());
    let watch = KubeSource::new(server.client(), Some(NODE.into()), "istio-system")
        .with_debounce(Duration::from_millis(20))
        .start(store.clone());
    let first = eventually(&store, "a state holding them", |s| {
        has_pod(s, "10.244.1.10")?;
        let n = s.policies().request_authentications().len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} RequestAuthentications"))
        }
    })
    .await;
    assert!(
        watch.status().detail().is_none(),
        "{:?}",
        watch.status().detail()
    );
    let reasons: Vec<String> = first
        .policies()
        .unsupported()
        .iter()
        .map(|u| format!("{} {}", u.policy, u.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            "shop/audit audit_action",
            "shop/ext-authz custom_action",
            "shop/newer unknown_field",
            "shop/typo invalid_field",
            "shop/jwt request_authentication",
        ]
    );

    // Later changes still apply: a pod, and the ordinary ALLOW with its bare name decides.
    server.apply(objects::pod(
        "shop",
        "client",
        NODE,
        "10.244.1.70",
        "client",
    ));
    server.apply(objects::pod(
        "legacy",
        "client",
        "node-b",
        "10.244.2.70",
        "client",
    ));
    let snapshot = eventually(&store, "pods added after them", |s| {
        has_pod(s, "10.244.1.70")?;
        has_pod(s, "10.244.2.70")
    })
    .await;
    let web = snapshot.workload_by_ip(ip("10.244.1.10")).expect("web");
    let view = Destination {
        namespace: &web.namespace,
        name: &web.name,
        labels: &web.labels,
    };
    let td = marrow_mesh::identity::TrustDomain::default();
    let from = |ns: &str, src: &str, port: u16| ConnectionAttrs {
        source_principal: Some(
            marrow_mesh::identity::SpiffeId::new(&td, ns, "client").expect("id"),
        ),
        source_ip: ip(src),
        destination_ip: ip("10.244.1.10"),
        destination_port: port,
    };
    let d = evaluate(
        snapshot.policies(),
        &view,
        &from("shop", "10.244.1.70", 8080),
    );
    assert_eq!(d.verdict, Verdict::Allow, "{}", d.reason);
    assert!(d.reason.contains("shop/web-from-client"), "{}", d.reason);
    assert!(
        d.reason.contains("dry-run: DENY policy shop/try-deny"),
        "{}",
        d.reason
    );
    let d = evaluate(
        snapshot.policies(),
        &view,
        &from("legacy", "10.244.2.70", 8080),
    );
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "another namespace's client: {}",
        d.reason
    );
    let d = evaluate(
        snapshot.policies(),
        &view,
        &from("shop", "10.244.1.70", 9090),
    );
    assert_eq!(
        d.policy.map(|p| p.to_string()).as_deref(),
        Some("shop/ext-authz"),
        "CUSTOM denies what it matches: {}",
        d.reason
    );
    drop(watch);
}

/// Gateway API objects and the waypoint labels, from the API server: a Service that uses a
/// waypoint is bound to it, its pod admits only the waypoint's pods, and a deleted Gateway (or
/// GatewayClass, cluster-scoped) leaves the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_and_waypoint_labels_bind_services_to_waypoints() {
    use serde_json::json;
    let server = ApiServer::start().await;
    server.apply(objects::namespace("shop", true));
    server.apply(objects::pod("shop", "web", NODE, "10.244.1.70", "web"));
    let mut waypoint_pod = objects::pod("shop", "wp-0", "node-b", "10.244.2.70", "wp");
    waypoint_pod["metadata"]["labels"] =
        json!({"gateway.networking.k8s.io/gateway-name": "wp", "istio.io/dataplane-mode": "none"});
    server.apply(waypoint_pod);
    let class = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": "istio-waypoint", "labels": {"istio.io/waypoint-for": "all"}},
        "spec": {"controllerName": "istio.io/mesh-controller"}});
    server.apply(class.clone());
    let gateway = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "shop"},
        "spec": {"gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}});
    server.apply(gateway.clone());
    let mut web = objects::service("shop", "web", "10.96.0.70");
    web["metadata"]["labels"] = json!({"istio.io/use-waypoint": "wp"});
    server.apply(web);
    server.apply(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": [{"addresses": ["10.244.1.70"]}]}),
    );
    let mut wp_service = objects::service("shop", "wp", "10.96.0.71");
    wp_service["spec"]["ports"] = json!([{"name": "mesh", "port": 15008, "protocol": "TCP"}]);
    server.apply(wp_service);
    server.apply(
        json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "wp-1", "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "wp"}},
        "addressType": "IPv4", "ports": [{"name": "mesh", "port": 15008}],
        "endpoints": [{"addresses": ["10.244.2.70"]}]}),
    );
    let store = Arc::new(StateStore::new());
    let _watch = KubeSource::new(server.client(), Some(NODE.into()), "istio-system")
        .with_debounce(Duration::from_millis(20))
        .start(store.clone());
    let bound = |s: &Snapshot| {
        s.waypoints()
            .for_service("shop", "web")
            .map(|w| {
                (
                    w.name.to_string(),
                    w.traffic.as_str(),
                    w.instances().count(),
                )
            })
            .map_err(|e| e.to_string())
    };
    let snapshot = eventually(&store, "web bound to shop/wp", |s| bound(s).map(|_| ())).await;
    assert_eq!(
        bound(&snapshot),
        Ok(("shop/wp".into(), "all", 1)),
        "the class's waypoint-for, one ready instance"
    );
    let web = snapshot.workload_by_name("shop", "web").expect("web");
    let guard = snapshot
        .waypoints()
        .guard(web)
        .expect("web is behind the waypoint");
    assert!(guard.admits("shop", "wp") && !guard.admits("shop", "web"));

    server.delete(&class);
    eventually(&store, "the class's label gone with it", |s| {
        match bound(s) {
            Ok((_, "service", _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    server.delete(&gateway);
    eventually(&store, "the waypoint gone", |s| {
        match s.waypoints().for_service("shop", "web") {
            Err(marrow_mesh::state::waypoints::Unbound::Missing(_)) => Ok(()),
            other => Err(format!("{:?}", other.map(|w| w.name.to_string()))),
        }
    })
    .await;
}

/// Istio's Telemetry API from the API server: without the CRD the source still syncs (empty);
/// the MeshConfig is only the ConfigMap `istio` in the root namespace, asked for by field
/// selector there; Telemetries come and go with the watch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetries_and_only_the_meshconfig_configmap_are_carried() {
    use marrow_mesh::objects::RawKind;
    use serde_json::json;
    let of_kind = |s: &Snapshot, kind: RawKind| -> Vec<String> {
        s.raw_objects()
            .filter(|o| o.kind == kind)
            .map(|o| o.object.to_string())
            .collect()
    };
    let server = ApiServer::start().await;
    server.apply(objects::namespace("shop", true));
    let config_map = |ns: &str, name: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
            "data": {"mesh": "extensionProviders:\n- name: otel\n  opentelemetry: {service: otel.observability, port: 4317}\n"}})
    };
    server.apply(config_map("istio-system", "istio"));
    server.apply(config_map("istio-system", "other"));
    server.apply(config_map("shop", "istio"));
    let store = Arc::new(StateStore::new());
    let _watch = KubeSource::new(server.client(), Some(NODE.into()), "istio-system")
        .with_debounce(Duration::from_millis(20))
        .start(store.clone());
    // No telemetry.istio.io objects: the CRD is absent (404), the kind counts as empty.
    let snapshot = eventually(&store, "the meshconfig", |s| {
        match of_kind(s, RawKind::MeshConfig).as_slice() {
            [_] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(
        of_kind(&snapshot, RawKind::MeshConfig),
        ["ConfigMap istio-system/istio"]
    );
    assert!(of_kind(&snapshot, RawKind::Telemetry).is_empty());
    let asked: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.contains("configmaps"))
        .collect();
    assert!(!asked.is_empty());
    assert!(
        asked.iter().all(|r| {
            r.contains("/api/v1/namespaces/istio-system/configmaps?")
                && r.contains("fieldSelector=metadata.name%3Distio")
        }),
        "{asked:?}"
    );

    let telemetry = json!({"apiVersion": "telemetry.istio.io/v1", "kind": "Telemetry",
        "metadata": {"name": "mesh-default", "namespace": "istio-system"},
        "spec": {"tracing": [{"providers": [{"name": "otel"}], "randomSamplingPercentage": 10}]}});
    server.apply(telemetry.clone());
    eventually(&store, "the telemetry", |s| {
        match of_kind(s, RawKind::Telemetry).as_slice() {
            [t] if t == "Telemetry istio-system/mesh-default" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    server.delete(&telemetry);
    eventually(&store, "the telemetry gone", |s| {
        match of_kind(s, RawKind::Telemetry).as_slice() {
            [] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}
