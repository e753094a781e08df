//! What the HBONE headers say about the two ends: the baggage written, and what the destination
//! makes of a peer's baggage and `forwarded: host=`.

use std::path::Path;

use super::*;
use marrow_mesh::hbone::Forwarded;
use marrow_mesh::objects::WorkloadType;
use marrow_mesh::state::StateStore;
use marrow_mesh::state::file::parse;

/// Two pods and three Services: `web` (80 → 8080) and `web-admin` (9090 → 9090) both back
/// web-0; `api` (80 → 8080) backs api-0 only.
const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  labels: {app: web, version: v2}
  ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: web, uid: u1, controller: true}]
spec: {serviceAccountName: web, nodeName: node-1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.5}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: shop}
spec: {nodeName: node-1, containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.6}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5]}]
ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-admin, namespace: shop}
spec: {clusterIP: 10.96.0.11, ports: [{name: admin, port: 9090, targetPort: 9090}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-admin-1, namespace: shop, labels: {kubernetes.io/service-name: web-admin}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5]}]
ports: [{name: admin, port: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {clusterIP: 10.96.0.12, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-1, namespace: shop, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
endpoints: [{addresses: [10.244.1.6]}]
ports: [{name: http, port: 8080}]
"#;

fn snapshot() -> Arc<Snapshot> {
    StateStore::new().apply(parse(Path::new("cluster.yaml"), CLUSTER.as_bytes()).unwrap())
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[test]
fn a_pods_baggage_names_its_workload_as_ztunnel_does() {
    let snap = snapshot();
    let web = snap.workload_by_name("shop", "web-0").unwrap();
    let baggage = baggage_of(web, &LabelValue::new("east"));
    assert_eq!(
        baggage.encode(),
        "k8s.cluster.name=east,k8s.namespace.name=shop,k8s.pod.name=web,service.name=web,\
         service.version=v2",
        "a StatefulSet's pod is typed pod, named by its workload"
    );
    let deployment = Workload {
        workload_type: WorkloadType::Deployment,
        ..(**web).clone()
    };
    assert!(
        baggage_of(&deployment, &LabelValue::new("east"))
            .encode()
            .contains(",k8s.deployment.name=web,")
    );
}

#[test]
fn a_client_the_state_does_not_know_is_labelled_from_its_baggage() {
    let client: SpiffeId = "spiffe://cluster.local/ns/front/sa/shopper"
        .parse()
        .unwrap();
    let baggage = Baggage::parse([
        "k8s.cluster.name=west,k8s.namespace.name=front,k8s.deployment.name=shopper,\
         service.name=shopper-svc,service.version=v7",
    ]);
    let labels = derived_source(&baggage, &client);
    let got = [
        &labels.workload,
        &labels.namespace,
        &labels.app,
        &labels.version,
        &labels.canonical_service,
        &labels.canonical_revision,
        &labels.cluster,
    ]
    .map(LabelValue::as_str);
    assert_eq!(
        got,
        [
            "shopper",
            "front",
            "shopper",
            "v7",
            "shopper-svc",
            "v7",
            "west"
        ]
    );
    // The namespace is the certificate's, whatever the baggage claims.
    let lying = Baggage::parse(["k8s.namespace.name=kube-system,k8s.pod.name=x"]);
    assert_eq!(derived_source(&lying, &client).namespace.as_str(), "front");
    // No baggage: known by the certificate's namespace only.
    assert_eq!(
        derived_source(&Baggage::default(), &client),
        PeerLabels::namespace_only(&client)
    );
}

#[test]
fn the_destination_service_is_the_claimed_one_if_this_pod_backs_it() {
    let snap = snapshot();
    let service = |host: Option<&str>, target: &str| {
        inbound_service(&snap, host, addr(target)).map(|s| s.host.as_str().to_owned())
    };
    let web = Some("web.shop.svc.cluster.local".to_owned());
    let admin = Some("web-admin.shop.svc.cluster.local".to_owned());
    // Named and backed: taken, even on a port the name does not say (ztunnel matches the
    // host among the pod's Services, whatever the port).
    assert_eq!(service(web.as_deref(), "10.244.1.5:8080"), web);
    assert_eq!(service(admin.as_deref(), "10.244.1.5:8080"), admin);
    // Named but not backed by this pod: not believed; guessed from the port instead.
    assert_eq!(
        service(Some("api.shop.svc.cluster.local"), "10.244.1.5:8080"),
        web
    );
    assert_eq!(service(Some("made-up.svc"), "10.244.1.5:9090"), admin);
    // Not named: guessed from the port; none when no Service has that port.
    assert_eq!(service(None, "10.244.1.5:8080"), web);
    assert_eq!(service(None, "10.244.1.5:7777"), None);
    assert_eq!(
        service(None, "10.244.1.6:8080"),
        Some("api.shop.svc.cluster.local".into())
    );
    // A pod no Service backs.
    assert_eq!(service(web.as_deref(), "10.244.1.9:8080"), None);
    let labels = inbound_service(&snap, None, addr("10.244.1.6:8080")).unwrap();
    assert_eq!(
        (labels.name.as_str(), labels.namespace.as_str()),
        ("api", "shop")
    );
}

#[test]
fn forwarded_host_round_trips_into_the_destination_service() {
    let snap = snapshot();
    let vip = snap.services().at(addr("10.96.0.11:9090")).unwrap();
    let sent = Forwarded {
        for_addr: Some(addr("10.244.2.7:40000")),
        host: Some(service_labels(vip).host.as_str().to_owned()),
    };
    let read = Forwarded::parse(&sent.encode());
    let labels = inbound_service(&snap, read.host.as_deref(), addr("10.244.1.5:9090")).unwrap();
    assert_eq!(labels.host.as_str(), "web-admin.shop.svc.cluster.local");
}

/// A workload's labels are built once and shared while the state keeps that workload; a new
/// state's object (even with the same content) gets its own.
#[test]
fn labels_are_shared_per_state_object() {
    let cache = LabelCache::<String, String>::default();
    let first = Arc::new("web-0".to_owned());
    let made = cache.get(&first, |w| format!("labels of {w}"));
    let again = cache.get(&first, |_| unreachable!("built once"));
    assert!(Arc::ptr_eq(&made, &again));
    let replaced = Arc::new("web-0".to_owned());
    let fresh = cache.get(&replaced, |w| format!("labels of {w}"));
    assert!(!Arc::ptr_eq(&made, &fresh));
    assert_eq!(made, fresh);
}

/// The cache stays bounded however many objects pass through it.
#[test]
fn label_cache_is_bounded() {
    let cache = LabelCache::<usize, usize>::default();
    let kept: Vec<Arc<usize>> = (0..200).map(Arc::new).collect();
    for object in &kept {
        cache.get(object, |n| *n);
    }
    assert!(cache.entries.lock().unwrap().len() <= CACHED);
}
