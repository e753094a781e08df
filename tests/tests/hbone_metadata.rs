//! What the HBONE headers carry between two nodes, as ztunnel's: the Service a client addressed
//! (`forwarded: host=`) labels `destination_service` at both ends; a client the destination's
//! state does not know is labelled from its `baggage`; a tunnel the destination refuses is
//! `response_flags="CONNECT"` at the source, ztunnel's flag there.

use std::net::SocketAddr;

use marrow_tests::mesh::{config_generation, wait_config_generation};
use marrow_tests::metrics::count;
use marrow_tests::require_env;
use marrow_tests::state_file::{PodRecord, write_atomic};
use marrow_tests::two_nodes::{self, APP_PORT, OPENED, READY, eventually, namespaces, v4};

const VIP: &str = "10.96.0.20";
const HOST: &str = "api.shop.svc.cluster.local";

/// The Service `api` on `VIP:80`, its one endpoint `endpoint`.
fn api_service(endpoint: std::net::Ipv4Addr) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: api, namespace: shop}}
spec:
  clusterIP: {VIP}
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
- addresses: [{endpoint}]
"
    )
}

#[test]
fn the_service_a_client_addressed_labels_both_ends() {
    require_env!();
    let mesh = two_nodes::Mesh::start("meta-svc");
    let client = mesh.n1.add_pod("client", "shop", true);
    let api = mesh.n2.add_pod("api", "shop", true);
    let _app = api.serve(APP_PORT);
    let state = namespaces().pod(&client, "client").pod(&api, "api");
    mesh.apply_with(&state, &api_service(api.ipv4()));

    let vip: SocketAddr = format!("{VIP}:80").parse().expect("vip");
    assert!(client.connect(vip, "by-service").is_ok());
    let service = [
        ("destination_service", HOST),
        ("destination_service_name", "api"),
        ("destination_service_namespace", "shop"),
    ];
    eventually("both ends name the Service", || {
        let (m1, m2) = (mesh.p1.metrics(), mesh.p2.metrics());
        let at = |m: &str, reporter| {
            let mut want = vec![("reporter", reporter), ("response_flags", "-")];
            want.extend(service);
            count(m, OPENED, &want)
        };
        match (at(&m1, "source"), at(&m2, "destination")) {
            (1, 1) => Ok(()),
            other => Err(format!("{other:?}\n{m1}\n{m2}")),
        }
    });

    // To the pod's address: the source names no Service; the destination guesses it from the
    // port (as ztunnel), so both of its connections now carry it.
    assert!(client.connect(v4(&api, APP_PORT), "by-address").is_ok());
    eventually("only the destination names the Service", || {
        let (m1, m2) = (mesh.p1.metrics(), mesh.p2.metrics());
        let unnamed = count(
            &m1,
            OPENED,
            &[("reporter", "source"), ("destination_service", "unknown")],
        );
        let guessed = count(
            &m2,
            OPENED,
            &[("reporter", "destination"), ("destination_service", HOST)],
        );
        match (unnamed, guessed) {
            (1, 2) => Ok(()),
            other => Err(format!("{other:?}\n{m1}\n{m2}")),
        }
    });
}

#[test]
fn a_client_the_destination_does_not_know_is_labelled_from_its_baggage() {
    require_env!();
    let mesh = two_nodes::Mesh::start("meta-bag");
    let client = mesh.n1.add_pod("client", "shop", true);
    let web = mesh.n2.add_pod("web", "shop", true);
    let _app = web.serve(APP_PORT);
    let known = namespaces()
        .with_pod(PodRecord::of(&client, "client").with_label("app", "shopper"))
        .pod(&web, "web");
    // Node 2's state lacks the client (another cluster, or a lagging view).
    let unknown = namespaces().pod(&web, "web");
    for (proxy, path, state) in [
        (&mesh.p1, &mesh.state1, &known),
        (&mesh.p2, &mesh.state2, &unknown),
    ] {
        let before = config_generation(proxy).expect("config generation");
        write_atomic(path, state.to_yaml().as_bytes()).expect("write state");
        wait_config_generation(proxy, before + 1, READY);
    }

    assert!(client.connect(v4(&web, APP_PORT), "from afar").is_ok());
    eventually("the destination labels the client from its baggage", || {
        let m2 = mesh.p2.metrics();
        let labelled = count(
            &m2,
            OPENED,
            &[
                ("reporter", "destination"),
                ("source_workload", "client"),
                ("source_workload_namespace", "shop"),
                ("source_canonical_service", "shopper"),
                ("source_canonical_revision", "latest"),
                ("source_cluster", "Kubernetes"),
                ("response_flags", "-"),
            ],
        );
        if labelled == 1 { Ok(()) } else { Err(m2) }
    });
}

#[test]
fn a_tunnel_the_destination_refuses_is_connect_at_the_source() {
    require_env!();
    let mesh = two_nodes::Mesh::start("meta-flag");
    let client = mesh.n1.add_pod("client", "shop", true);
    let web = mesh.n2.add_pod("web", "shop", true);
    let _app = web.serve(APP_PORT);
    let deny_all = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: shop}
spec:
  action: DENY
  rules: [{}]
";
    mesh.apply_with(
        &namespaces().pod(&client, "client").pod(&web, "web"),
        deny_all,
    );

    assert!(!client.connect(v4(&web, APP_PORT), "refused").is_ok());
    eventually("401 at the destination, CONNECT at the source", || {
        let (m1, m2) = (mesh.p1.metrics(), mesh.p2.metrics());
        let source = count(
            &m1,
            OPENED,
            &[("reporter", "source"), ("response_flags", "CONNECT")],
        );
        let uf = count(
            &m1,
            OPENED,
            &[("reporter", "source"), ("response_flags", "UF")],
        );
        let destination = count(
            &m2,
            OPENED,
            &[("reporter", "destination"), ("response_flags", "DENY")],
        );
        match (source, uf, destination) {
            (1, 0, 1) => Ok(()),
            other => Err(format!("{other:?}\n{m1}")),
        }
    });
    let log = two_nodes::plain_log(&mesh.p1);
    assert!(
        log.lines().any(|l| l.contains("reporter=\"source\"")
            && l.contains("response_flags=\"CONNECT\"")
            && l.contains("401")),
        "the access log carries the flag and the status:\n{log}"
    );
}
