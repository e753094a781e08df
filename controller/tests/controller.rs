//! The waypoint controller against the replay API server: what a Gateway of class
//! `istio-waypoint` gets (names, labels, owner references, ports, the waypoint container), what
//! a change, a second namespace, a deletion, a malformed Gateway, an object it does not manage,
//! readiness and another class do; each waypoint's ClusterRoleBinding ([`binding`]) and leader
//! election between replicas ([`leader`]).
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests: a failed step must fail the test loudly"
)]

#[path = "controller/binding.rs"]
mod binding;
#[path = "controller/leader.rs"]
mod leader;

use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_controller::{ControllerSettings, ControllerTelemetry};
use replay_apiserver::ApiServer;
use serde_json::{Value, json};

/// The controller running against a fresh replay server; dropped, it stops.
struct Running {
    server: ApiServer,
    telemetry: Arc<ControllerTelemetry>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn settings() -> ControllerSettings {
    ControllerSettings {
        image: "registry.example/marrow/node-proxy:9.9.9".to_owned(),
        ..ControllerSettings::default()
    }
}

/// Starts the server with `objects` already there, then the controller with [`settings`].
async fn start(objects: Vec<Value>) -> Running {
    start_with(objects, settings()).await
}

/// Starts the server with `objects` already there, then the controller with `settings`.
async fn start_with(objects: Vec<Value>, settings: ControllerSettings) -> Running {
    let server = ApiServer::start().await;
    for object in objects {
        server.apply(object);
    }
    let telemetry = Arc::new(ControllerTelemetry::default());
    let task = tokio::spawn({
        let (client, telemetry) = (server.client(), telemetry.clone());
        async move {
            let _ = marrow_controller::run(client, settings, telemetry).await;
        }
    });
    Running {
        server,
        telemetry,
        task,
    }
}

/// A Gateway as `istioctl waypoint generate` writes it (listener `mesh`, 15008, HBONE).
fn waypoint(namespace: &str, name: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace, "generation": 1,
            "labels": {"istio.io/waypoint-for": "service"}},
        "spec": {"gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}})
}

fn get(server: &ApiServer, kind: &str, namespace: &str, name: &str) -> Option<Value> {
    let api_version = match kind {
        "Deployment" => "apps/v1",
        "Gateway" => "gateway.networking.k8s.io/v1",
        _ => "v1",
    };
    server.get(api_version, kind, namespace, name)
}

/// Waits up to 10 s for `check` to give something.
async fn eventually<T>(what: &str, check: impl FnMut() -> Option<T>) -> T {
    eventually_within(what, Duration::from_secs(10), check).await
}

/// Waits up to `within` for `check` to give something.
async fn eventually_within<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            start.elapsed() < within,
            "timed out: {what} not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The three objects of a waypoint, once all exist.
async fn objects(server: &ApiServer, namespace: &str, name: &str, sa: &str) -> [Value; 3] {
    eventually("the waypoint's objects", || {
        Some([
            get(server, "ServiceAccount", namespace, sa)?,
            get(server, "Deployment", namespace, name)?,
            get(server, "Service", namespace, name)?,
        ])
    })
    .await
}

/// Names of a Service's ports with their numbers and appProtocols.
fn ports(service: &Value) -> Vec<(String, u64, String)> {
    service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_u64().unwrap(),
                p["appProtocol"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn condition<'a>(conditions: &'a Value, kind: &str) -> &'a Value {
    conditions
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no condition {kind} in {conditions}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

#[tokio::test]
async fn a_gateway_gets_its_service_account_deployment_and_service() {
    let run = start(vec![waypoint("shop", "waypoint")]).await;
    let gateway = get(&run.server, "Gateway", "shop", "waypoint").unwrap();
    let uid = gateway["metadata"]["uid"].as_str().unwrap();
    let [sa, deployment, service] = objects(&run.server, "shop", "waypoint", "waypoint").await;
    for object in [&sa, &deployment, &service] {
        let meta = &object["metadata"];
        assert_eq!(meta["name"], "waypoint", "{object}");
        assert_eq!(meta["namespace"], "shop");
        let labels = &meta["labels"];
        assert_eq!(labels["gateway.networking.k8s.io/gateway-name"], "waypoint");
        assert_eq!(
            labels["gateway.networking.k8s.io/gateway-class-name"],
            "istio-waypoint"
        );
        assert_eq!(
            labels["gateway.istio.io/managed"],
            "istio.io-mesh-controller"
        );
        // The Gateway's own labels are copied, as istiod copies them.
        assert_eq!(labels["istio.io/waypoint-for"], "service");
        // Owned by the Gateway exactly as istiod's template writes it.
        assert_eq!(
            meta["ownerReferences"],
            json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
                "name": "waypoint", "uid": uid}])
        );
    }
    let spec = &deployment["spec"];
    assert_eq!(
        spec["selector"],
        json!({"matchLabels": {"gateway.networking.k8s.io/gateway-name": "waypoint"}})
    );
    let pod = &spec["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert_eq!(pod_labels["istio.io/dataplane-mode"], "none");
    assert_eq!(pod_labels["sidecar.istio.io/inject"], "false");
    assert_eq!(pod_labels["service.istio.io/canonical-name"], "waypoint");
    assert_eq!(
        pod_labels["gateway.networking.k8s.io/gateway-name"],
        "waypoint"
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "waypoint");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example/marrow/node-proxy:9.9.9"
    );
    assert_eq!(container["command"], json!(["/usr/bin/waypoint"]));
    assert_eq!(env(container, "MARROW_GATEWAY_NAME")["value"], "waypoint");
    assert_eq!(
        env(container, "MARROW_GATEWAY_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env(container, "MARROW_SERVICE_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.serviceAccountName"
    );
    assert_eq!(
        env(container, "MARROW_TRUST_DOMAIN")["value"],
        "cluster.local"
    );
    assert_eq!(env(container, "MARROW_KUBE")["value"], "true");
    let container_ports: Vec<u64> = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(container_ports, [15008, 15020, 15021]);
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"})
    );
    assert_eq!(container["securityContext"]["runAsUser"], 1337);
    assert_eq!(
        ports(&service),
        [
            ("status-port".to_owned(), 15021, "tcp".to_owned()),
            ("mesh".to_owned(), 15008, "hbone".to_owned()),
        ]
    );
    assert_eq!(
        service["spec"]["selector"],
        json!({"gateway.networking.k8s.io/gateway-name": "waypoint"})
    );
    // Accepted, not yet programmed: no ready replica, no address.
    let status = eventually("status written", || {
        let gateway = get(&run.server, "Gateway", "shop", "waypoint")?;
        (!gateway["status"].is_null()).then(|| gateway["status"].clone())
    })
    .await;
    assert_eq!(
        condition(&status["conditions"], "Accepted")["status"],
        "True"
    );
    let programmed = condition(&status["conditions"], "Programmed");
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "AddressNotAssigned");
    assert!(status["addresses"].is_null(), "{status}");
    let listener = &status["listeners"][0];
    assert_eq!(listener["name"], "mesh");
    assert_eq!(
        condition(&listener["conditions"], "Accepted")["status"],
        "True"
    );
    assert_eq!(run.telemetry.applied_count("Deployment"), 1);
}

#[tokio::test]
async fn the_naming_annotations_name_the_objects() {
    let mut gateway = waypoint("shop", "waypoint");
    gateway["metadata"]["annotations"] = json!({
        "gateway.istio.io/name-override": "shop-waypoint",
        "gateway.istio.io/service-account": "shop-proxy",
        "team": "payments"});
    let run = start(vec![gateway]).await;
    let [sa, deployment, service] =
        objects(&run.server, "shop", "shop-waypoint", "shop-proxy").await;
    assert_eq!(
        deployment["spec"]["template"]["spec"]["serviceAccountName"],
        "shop-proxy"
    );
    // The naming annotations are not copied; the others are.
    for object in [&sa, &deployment, &service] {
        let annotations = &object["metadata"]["annotations"];
        assert!(
            annotations["gateway.istio.io/name-override"].is_null(),
            "{object}"
        );
        assert_eq!(annotations["team"], "payments");
    }
    // Selected by the Gateway's name, not the override.
    assert_eq!(
        service["spec"]["selector"],
        json!({"gateway.networking.k8s.io/gateway-name": "waypoint"})
    );
    assert!(get(&run.server, "Deployment", "shop", "waypoint").is_none());
}

#[tokio::test]
async fn a_change_to_the_gateway_updates_its_objects_and_no_change_sends_nothing() {
    let run = start(vec![waypoint("shop", "waypoint")]).await;
    objects(&run.server, "shop", "waypoint", "waypoint").await;
    eventually("status written", || {
        get(&run.server, "Gateway", "shop", "waypoint").filter(|g| !g["status"].is_null())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let patches = |server: &ApiServer| {
        server
            .requests()
            .iter()
            .filter(|r| r.starts_with("PATCH"))
            .count()
    };
    // The same Gateway again (a MODIFIED event, nothing changed): nothing is sent.
    let before = patches(&run.server);
    let current = get(&run.server, "Gateway", "shop", "waypoint").unwrap();
    run.server.apply(current.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(patches(&run.server), before, "{:?}", run.server.requests());
    // A new label and a new ServiceAccount: applied to every object.
    let mut changed = current;
    changed["metadata"]["labels"]["team"] = json!("payments");
    changed["metadata"]["annotations"] = json!({"gateway.istio.io/service-account": "shop-proxy"});
    run.server.apply(changed);
    let deployment = eventually("the deployment updated", || {
        get(&run.server, "Deployment", "shop", "waypoint")
            .filter(|d| d["spec"]["template"]["spec"]["serviceAccountName"] == "shop-proxy")
    })
    .await;
    assert_eq!(deployment["metadata"]["labels"]["team"], "payments");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["labels"]["team"],
        "payments"
    );
    let service = eventually("the service relabelled", || {
        get(&run.server, "Service", "shop", "waypoint")
            .filter(|s| s["metadata"]["labels"]["team"] == "payments")
    })
    .await;
    assert_eq!(service["metadata"]["name"], "waypoint");
    let sa = get(&run.server, "ServiceAccount", "shop", "shop-proxy").unwrap();
    assert_eq!(sa["metadata"]["labels"]["team"], "payments");
}

#[tokio::test]
async fn a_deleted_object_is_put_back() {
    let run = start(vec![waypoint("shop", "waypoint")]).await;
    let [_, _, service] = objects(&run.server, "shop", "waypoint", "waypoint").await;
    run.server.delete(&service);
    eventually("the service back", || {
        get(&run.server, "Service", "shop", "waypoint")
    })
    .await;
}

#[tokio::test]
async fn gateways_in_two_namespaces_get_their_own_objects() {
    let run = start(vec![
        waypoint("shop", "waypoint"),
        waypoint("bank", "waypoint"),
    ])
    .await;
    let [_, shop, _] = objects(&run.server, "shop", "waypoint", "waypoint").await;
    let [_, bank, _] = objects(&run.server, "bank", "waypoint", "waypoint").await;
    let owner = |d: &Value| d["metadata"]["ownerReferences"][0]["uid"].clone();
    assert_ne!(owner(&shop), owner(&bank));
    assert_eq!(
        owner(&bank),
        get(&run.server, "Gateway", "bank", "waypoint").unwrap()["metadata"]["uid"]
    );
}

#[tokio::test]
async fn deleting_the_gateway_removes_its_objects() {
    let run = start(vec![
        waypoint("shop", "waypoint"),
        waypoint("bank", "waypoint"),
    ])
    .await;
    objects(&run.server, "shop", "waypoint", "waypoint").await;
    objects(&run.server, "bank", "waypoint", "waypoint").await;
    let gateway = get(&run.server, "Gateway", "shop", "waypoint").unwrap();
    run.server.delete(&gateway);
    eventually("the objects gone", || {
        let gone = ["ServiceAccount", "Deployment", "Service"]
            .iter()
            .all(|kind| get(&run.server, kind, "shop", "waypoint").is_none());
        gone.then_some(())
    })
    .await;
    // And nothing brings them back, nor touches the other namespace's.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(get(&run.server, "Deployment", "shop", "waypoint").is_none());
    assert!(get(&run.server, "Deployment", "bank", "waypoint").is_some());
}

#[tokio::test]
async fn a_malformed_gateway_is_refused_and_a_good_one_beside_it_reconciled() {
    let mut listeners = waypoint("shop", "bad-listeners");
    listeners["spec"]["listeners"] = json!("mesh");
    let mut port = waypoint("shop", "bad-port");
    port["spec"]["listeners"][0]["port"] = json!("15008");
    let mut annotation = waypoint("shop", "bad-annotation");
    annotation["metadata"]["annotations"] =
        json!({"gateway.istio.io/service-account": "Not_A_Name"});
    let mut nameless = waypoint("shop", "");
    nameless["metadata"].as_object_mut().unwrap().remove("name");
    let run = start(vec![
        listeners,
        port,
        annotation,
        nameless,
        waypoint("shop", "good"),
    ])
    .await;
    objects(&run.server, "shop", "good", "good").await;
    eventually("both refusals counted", || {
        (run.telemetry.refused_count("listeners") >= 2
            && run.telemetry.refused_count("annotation") >= 1
            && run.telemetry.refused_count("no_name") >= 1)
            .then_some(())
    })
    .await;
    for name in ["bad-listeners", "bad-port", "bad-annotation"] {
        assert!(
            get(&run.server, "Deployment", "shop", name).is_none(),
            "{name}"
        );
        assert!(
            get(&run.server, "ServiceAccount", "shop", name).is_none(),
            "{name}"
        );
    }
    assert_eq!(run.telemetry.refused_count("no_uid"), 0);
}

#[tokio::test]
async fn an_unmanaged_service_of_the_same_name_is_left_alone_and_reported() {
    let theirs = json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "waypoint", "namespace": "shop", "labels": {"app": "theirs"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.9.9", "selector": {"app": "theirs"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}});
    let run = start(vec![theirs.clone(), waypoint("shop", "waypoint")]).await;
    // The ServiceAccount and Deployment are made; the Service is not touched.
    eventually("the deployment", || {
        get(&run.server, "Deployment", "shop", "waypoint")
    })
    .await;
    eventually("reported", || {
        (run.telemetry.not_managed_count("Service") >= 1).then_some(())
    })
    .await;
    let service = get(&run.server, "Service", "shop", "waypoint").unwrap();
    assert_eq!(service["spec"], theirs["spec"]);
    assert_eq!(service["metadata"]["labels"], json!({"app": "theirs"}));
    assert!(
        !run.server
            .requests()
            .iter()
            .any(|r| r.starts_with("PATCH /api/v1/namespaces/shop/services/waypoint")),
        "{:?}",
        run.server.requests()
    );
    // With the label, it is ours to manage: taken over on the next change.
    let mut labelled = service;
    labelled["metadata"]["labels"]["gateway.istio.io/managed"] = json!("istio.io-mesh-controller");
    run.server.apply(labelled);
    let mut gateway = get(&run.server, "Gateway", "shop", "waypoint").unwrap();
    gateway["metadata"]["labels"]["team"] = json!("payments");
    run.server.apply(gateway);
    eventually("taken over", || {
        get(&run.server, "Service", "shop", "waypoint").filter(|s| {
            s["spec"]["selector"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
        })
    })
    .await;
    assert_eq!(run.telemetry.not_managed_count("Deployment"), 0);
}

#[tokio::test]
async fn addresses_appear_only_once_the_deployment_is_ready() {
    let run = start(vec![waypoint("shop", "waypoint")]).await;
    let [_, deployment, service] = objects(&run.server, "shop", "waypoint", "waypoint").await;
    let cluster_ip = service["spec"]["clusterIP"].as_str().unwrap().to_owned();
    eventually("status written", || {
        get(&run.server, "Gateway", "shop", "waypoint").filter(|g| !g["status"].is_null())
    })
    .await;
    // Rolled out but no replica ready: still no address.
    let mut rolling = deployment.clone();
    rolling["status"] = json!({"replicas": 1, "readyReplicas": 0, "updatedReplicas": 1});
    run.server.apply(rolling);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = get(&run.server, "Gateway", "shop", "waypoint").unwrap()["status"].clone();
    assert!(status["addresses"].is_null(), "{status}");
    assert_eq!(
        condition(&status["conditions"], "Programmed")["status"],
        "False"
    );
    // One ready replica: the ClusterIP and the host name, programmed.
    let mut ready = deployment;
    ready["status"] = json!({"replicas": 1, "readyReplicas": 1, "availableReplicas": 1});
    run.server.apply(ready);
    let status = eventually("addresses", || {
        let gateway = get(&run.server, "Gateway", "shop", "waypoint")?;
        (!gateway["status"]["addresses"].is_null()).then(|| gateway["status"].clone())
    })
    .await;
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": cluster_ip},
            {"type": "Hostname", "value": "waypoint.shop.svc.cluster.local"}])
    );
    let programmed = condition(&status["conditions"], "Programmed");
    assert_eq!(programmed["status"], "True");
    assert_eq!(programmed["reason"], "Programmed");
}

#[tokio::test]
async fn a_listener_other_than_hbone_is_flagged_not_refused() {
    let mut gateway = waypoint("shop", "waypoint");
    gateway["spec"]["listeners"] = json!([
        {"name": "mesh", "port": 15008, "protocol": "HBONE"},
        {"name": "web.http", "port": 8080, "protocol": "HTTP"}]);
    let run = start(vec![gateway]).await;
    let [_, _, service] = objects(&run.server, "shop", "waypoint", "waypoint").await;
    assert_eq!(
        ports(&service),
        [
            ("status-port".to_owned(), 15021, "tcp".to_owned()),
            ("mesh".to_owned(), 15008, "hbone".to_owned()),
            ("web-http".to_owned(), 8080, "http".to_owned()),
        ]
    );
    let status = eventually("status written", || {
        let gateway = get(&run.server, "Gateway", "shop", "waypoint")?;
        (!gateway["status"].is_null()).then(|| gateway["status"].clone())
    })
    .await;
    let listeners = status["listeners"].as_array().unwrap();
    let accepted = |i: usize| condition(&listeners[i]["conditions"], "Accepted").clone();
    assert_eq!(accepted(0)["status"], "True");
    assert_eq!(accepted(1)["status"], "False");
    assert_eq!(accepted(1)["reason"], "UnsupportedProtocol");
    assert_eq!(
        accepted(1)["message"],
        r#"Expected a single listener on port 15008 with protocol "HBONE""#
    );
    assert_eq!(
        condition(&status["conditions"], "Accepted")["status"],
        "True"
    );
}

#[tokio::test]
async fn a_gateway_of_another_class_is_ignored() {
    let mut ingress = waypoint("shop", "ingress");
    ingress["spec"]["gatewayClassName"] = json!("istio");
    let run = start(vec![ingress, waypoint("shop", "waypoint")]).await;
    objects(&run.server, "shop", "waypoint", "waypoint").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(get(&run.server, "Deployment", "shop", "ingress").is_none());
    assert!(get(&run.server, "ServiceAccount", "shop", "ingress").is_none());
    let ingress = get(&run.server, "Gateway", "shop", "ingress").unwrap();
    assert!(ingress["status"].is_null(), "{ingress}");
}
