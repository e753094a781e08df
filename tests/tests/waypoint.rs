//! The waypoint end to end on namespaced nodes, through the real CNI chain: a client pod on
//! node 1 calls the Service `web` (label `istio.io/use-waypoint: wp`); its node proxy carries the
//! connection in HBONE to the real `waypoint` binary running in the unenrolled pod `wp-0` on
//! node 2 (`CONNECT <VIP:port>`); the waypoint applies the L7 AuthorizationPolicies bound to its
//! Gateway and sends each allowed request on, least-request, in HBONE to a server pod on node 1
//! or 2, whose node proxy admits only the waypoint. curl speaks HTTP/1.1 and HTTP/2, a Python
//! grpcio client gRPC; the waypoint reports Istio's request metrics as `waypoint`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use marrow_tests::metrics::count;
use marrow_tests::peers::{self, curl, grpc_call};
use marrow_tests::require_env;
use marrow_tests::state_file::PodRecord;
use marrow_tests::two_nodes::{Mesh, eventually, namespaces};
use marrow_tests::waypoint::{Waypoint, bound_service, gateway_objects};

const VIP: &str = "10.96.0.30";
const WAYPOINT_VIP: &str = "10.96.0.31";
const HTTP_PORT: u16 = 8080;
const GRPC_PORT: u16 = 9090;

/// The Gateway `shop/wp` and its Service (ready at `wp_ip`), the Service `web` (HTTP on 80,
/// gRPC on 9090) that uses it, backed by `servers`, and the L7 policies at the waypoint: no
/// DELETE on `/api*`, nothing under `/admin`, no `Count` calls, nothing with `x-block: yes`;
/// and only the service account `client` may call at all (an ALLOW on the source identity).
fn objects(wp_ip: &str, servers: &[String]) -> String {
    let gateway = gateway_objects("shop", "wp", WAYPOINT_VIP, &[wp_ip.to_owned()]);
    let ports = [("http", 80, HTTP_PORT), ("grpc", GRPC_PORT, GRPC_PORT)];
    let web = bound_service(("shop", "web"), VIP, "wp", &ports, servers);
    format!(
        "{gateway}---
{web}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: guard-web, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: wp}}]
  action: DENY
  rules:
  - to: [{{operation: {{methods: [DELETE], paths: [\"/api*\"]}}}}]
  - to: [{{operation: {{paths: [\"/admin\", \"/admin/*\"]}}}}]
  - to: [{{operation: {{paths: [\"/marrow.test.Echo/Count\"]}}}}]
  - when: [{{key: \"request.headers[x-block]\", values: [\"yes\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: only-client, namespace: shop}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: wp}}]
  action: ALLOW
  rules:
  - from: [{{source: {{principals: [\"cluster.local/ns/shop/sa/client\"]}}}}]
"
    )
}

#[test]
fn requests_through_the_waypoint_are_authorized_balanced_and_counted() {
    require_env!();
    if let Some(tool) = peers::missing_tool() {
        println!("SKIPPED: {tool} is not installed; run `cargo xtask setup`");
        return;
    }
    let mesh = Mesh::start("wpl7");
    let client = mesh.n1.add_pod("client", "shop", true);
    let intruder = mesh.n1.add_pod("intruder", "shop", true);
    let web_a = mesh.n1.add_pod("web-a", "shop", true);
    let web_b = mesh.n2.add_pod("web-b", "shop", true);
    let wp_pod = mesh.n2.add_pod("wp-0", "shop", false);
    let _apps = [
        peers::http_echo(&web_a, HTTP_PORT, "web-a"),
        peers::http_echo(&web_b, HTTP_PORT, "web-b"),
        peers::grpc_server(&web_a, GRPC_PORT, "web-a"),
        peers::grpc_server(&web_b, GRPC_PORT, "web-b"),
    ];
    let state = namespaces()
        .pod(&client, "client")
        .pod(&intruder, "intruder")
        .pod(&web_a, "web")
        .pod(&web_b, "web")
        .with_pod(
            PodRecord::of(&wp_pod, "wp")
                .with_label("gateway.networking.k8s.io/gateway-name", "wp")
                .with_label("istio.io/dataplane-mode", "none"),
        );
    let servers = [web_a.ipv4().to_string(), web_b.ipv4().to_string()];
    mesh.apply_with(&state, &objects(&wp_pod.ipv4().to_string(), &servers));
    let mut waypoint = Waypoint::start(&wp_pod, &mesh.ca, &mesh.state2, ("shop", "wp"), &[]);
    waypoint.wait_ready();

    // HTTP/1.1 with curl, keep-alive over one connection: allowed, spread over both nodes'
    // servers, with the client named in x-forwarded-for.
    let url = format!("http://{VIP}/api");
    let mut args = vec!["-sS", "--max-time", "10", "-w", "\\n"];
    args.extend(std::iter::repeat_n(url.as_str(), 8));
    let many = client.output("curl", &args);
    let body = String::from_utf8_lossy(&many.stdout);
    assert!(
        many.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&many.stderr)
    );
    let replies: Vec<serde_json::Value> = body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(replies.len(), 8, "{body}");
    let served: BTreeSet<&str> = replies
        .iter()
        .filter_map(|r| r["server"].as_str())
        .collect();
    assert_eq!(
        served,
        BTreeSet::from(["web-a", "web-b"]),
        "least-request spreads"
    );
    let xff = replies[0]["headers"]["x-forwarded-for"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xff.contains(&client.ipv4().to_string()),
        "the original client in x-forwarded-for: {xff}"
    );

    // Denied by method and path, with Envoy's RBAC answer; path tricks normalized first.
    let delete = curl(&client, &["-X", "DELETE", &url]);
    assert_eq!(
        (delete.status, delete.body.as_str()),
        (403, "RBAC: access denied")
    );
    for path in [
        "/admin",
        "//admin",
        "/./admin",
        "/%61dmin",
        "/x/../admin/users",
    ] {
        let tricked = curl(&client, &["--path-as-is", &format!("http://{VIP}{path}")]);
        assert_eq!(tricked.status, 403, "{path}: {tricked:?}");
    }
    // Denied by a header; allowed without it.
    let blocked = curl(&client, &["-H", "x-block: yes", &url]);
    assert_eq!(blocked.status, 403, "{blocked:?}");
    // Another identity is not in the ALLOW's principals: denied, whatever it asks.
    let stranger = curl(&intruder, &[&url]);
    assert_eq!(
        (stranger.status, stranger.body.as_str()),
        (403, "RBAC: access denied"),
        "{stranger:?}"
    );
    // HTTP/2 (prior knowledge) from the client: allowed (the port is http: HTTP/1.1 upstream).
    let h2 = curl(&client, &["--http2-prior-knowledge", &url]);
    assert_eq!(h2.status, 200, "{h2:?}");

    // gRPC with a real client: a unary call passes (trailers included), a denied method gets
    // PERMISSION_DENIED from the waypoint.
    let grpc_addr: SocketAddr = format!("{VIP}:{GRPC_PORT}").parse().expect("addr");
    let said = grpc_call(&client, grpc_addr, "Say", "hi", &[("x-echo", "1")]);
    assert_eq!(said.code, "OK", "{:?}", said.json);
    assert!(said.messages[0].ends_with(":hi"), "{:?}", said.messages);
    assert_eq!(said.json["trailers"]["x-echo"], "1", "trailers pass");
    let counted = grpc_call(&client, grpc_addr, "Count", "3", &[]);
    assert_eq!(counted.code, "PERMISSION_DENIED", "{:?}", counted.json);

    // The waypoint's metrics: Istio's request series as reporter waypoint, the client as
    // source, the Service as destination_service.
    let base = [
        ("reporter", "waypoint"),
        ("source_workload", "client"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
        ("destination_service_name", "web"),
        ("connection_security_policy", "mutual_tls"),
    ];
    eventually("the waypoint to count the requests", || {
        let metrics = waypoint.metrics();
        let ok = count(
            &metrics,
            "istio_requests_total",
            &[
                &base[..],
                &[("response_code", "200"), ("request_protocol", "http")],
            ]
            .concat(),
        );
        let denied = count(
            &metrics,
            "istio_requests_total",
            &[
                &base[..],
                &[("response_code", "403"), ("response_flags", "DENY")],
            ]
            .concat(),
        );
        let grpc_denied = count(
            &metrics,
            "istio_requests_total",
            &[
                &base[..],
                &[("request_protocol", "grpc"), ("grpc_response_status", "7")],
            ]
            .concat(),
        );
        if ok >= 9 && denied >= 7 && grpc_denied == 1 {
            Ok(())
        } else {
            Err(format!(
                "ok {ok}, denied {denied}, grpc denied {grpc_denied}:\n{metrics}"
            ))
        }
    });
    // Its admin explains the denial with the same engine.
    let explained = waypoint
        .get(
            marrow_tests::waypoint::ADMIN_PORT,
            &format!("/explain?from=shop%2Fclient&to=shop%2Fweb-a&port={HTTP_PORT}&method=DELETE&path=%2Fapi"),
        )
        .expect("explain");
    assert!(
        explained.body.contains("\"decision\":\"deny\"")
            && explained.body.contains("shop/guard-web"),
        "{}",
        explained.body
    );
    drop(waypoint);
}
