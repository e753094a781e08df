//! Service VIPs: a pod connecting to a ClusterIP reaches one of the Service's ready endpoints
//! (from its EndpointSlices), round-robin, carried in HBONE to the chosen pod; a Service with
//! no ready endpoint refuses the connection. There is no kube-proxy here: the VIP is not
//! routable anywhere, so a connection that works went through the proxy's resolution.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use marrow_tests::require_env;
use marrow_tests::two_nodes::{APP_PORT, Mesh, namespaces};

const VIP: &str = "10.96.0.10";
const EMPTY_VIP: &str = "10.96.0.11";

#[test]
fn a_cluster_ip_reaches_ready_endpoints_round_robin_over_hbone() {
    require_env!();
    let mut mesh = Mesh::start("svc");
    let client = mesh.n1.add_pod("client", "shop", true);
    let api1 = mesh.n2.add_pod("api1", "shop", true);
    let api2 = mesh.n2.add_pod("api2", "shop", true);
    let not_ready = mesh.n2.add_pod("api3", "shop", true);
    let _apps = [
        api1.serve(APP_PORT),
        api2.serve(APP_PORT),
        not_ready.serve(APP_PORT),
    ];
    let state = namespaces()
        .pod(&client, "client")
        .pod(&api1, "api")
        .pod(&api2, "api")
        .pod(&not_ready, "api");
    let services = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: api, namespace: shop}}
spec:
  clusterIP: {VIP}
  clusterIPs: [{VIP}]
  ports: [{{name: http, port: 80, targetPort: {APP_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: api-x1
  namespace: shop
  labels: {{kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{{name: http, port: {APP_PORT}, protocol: TCP}}]
endpoints:
- addresses: [{}]
  conditions: {{ready: true}}
- addresses: [{}]
- addresses: [{}]
  conditions: {{ready: false}}
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: shop}}
spec:
  clusterIP: {EMPTY_VIP}
  ports: [{{name: http, port: 80, targetPort: {APP_PORT}}}]
",
        api1.ipv4(),
        api2.ipv4(),
        not_ready.ipv4()
    );
    mesh.apply_with(&state, &services);

    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    let mut reached = BTreeSet::new();
    for i in 0..4 {
        let outcome = client.connect(vip, &format!("hello-{i}"));
        let connected = outcome.connected();
        assert_eq!(connected.echo, format!("hello-{i}"));
        // The app says which of its addresses the connection arrived on.
        reached.insert(connected.greeting.local.to_string());
    }
    let expected: BTreeSet<String> = [&api1, &api2]
        .iter()
        .map(|p| format!("{}:{APP_PORT}", p.ipv4()))
        .collect();
    assert_eq!(
        reached, expected,
        "both ready endpoints, and only they, served the VIP"
    );
    let m2 = mesh.p2.metrics();
    assert!(
        m2.lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total")
                && l.contains("connection_security_policy=\"mutual_tls\"")
                && l.contains("source_workload=\"client\"")),
        "the VIP's connections arrived over mTLS:\n{m2}"
    );

    let empty: SocketAddr = format!("{EMPTY_VIP}:80").parse().expect("vip");
    let refused = client.connect(empty, "nobody");
    assert!(!refused.is_ok(), "a service without endpoints: {refused:?}");
    // The proxy logs after resetting the client: wait for the line.
    mesh.p1
        .wait_for_log("has no ready endpoint", Duration::from_secs(10))
        .expect("the refusal names the reason");
}
