//! The admin API in process: routing, each view's JSON, the log level, and the CLI's rendering.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode, Uri};
use marrow_wire::enrollment::{Attachment, PodIdentity};
use serde_json::Value;
use tracing_subscriber::layer::SubscriberExt;

use marrow_mesh::http::{percent_decode, query_param as param};

use super::client::{self, Table};
use super::*;
use crate::proxy::connections::ConnectionFacts;
use crate::proxy::record::ConnectionRecord;
use marrow_mesh::identity::{CaFiles, LocalCa, LocalCaOptions, ManagerConfig, SpiffeId};
use marrow_mesh::telemetry::ConnectionLabels;
use marrow_mesh::telemetry::Reporter;

const STATE: &str = concat!(
    include_str!("../../../mesh/testdata/two-pods.yaml"),
    r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {methods: ["GET"]}}]
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"#
);

fn admin() -> AdminState {
    let update =
        marrow_mesh::state::file::parse(std::path::Path::new("test.yaml"), STATE.as_bytes())
            .unwrap();
    let state = Arc::new(StateStore::new());
    state.apply(update);
    AdminState {
        state: Some(state),
        trust_domain: TrustDomain::default(),
        certs: None,
        connections: Arc::default(),
        enrolled: Some(Arc::new(vec![record("shop", "client", "u1")])),
        config: Config::default(),
        logging: None,
    }
}

fn record(namespace: &str, name: &str, uid: &str) -> PodRecord {
    PodRecord {
        pod: PodIdentity {
            uid: uid.into(),
            namespace: namespace.into(),
            name: name.into(),
            service_account: None,
        },
        attachment: Attachment {
            container_id: "c".into(),
            ifname: "eth0".into(),
        },
        netns_path: "/var/run/netns/x".into(),
        netns_cookie: 7,
        ips: vec!["10.0.1.2".parse().unwrap()],
    }
}

async fn get(admin: &AdminState, path: &str) -> Reply {
    handle(admin, &Method::GET, &path.parse::<Uri>().unwrap()).await
}

async fn ok(admin: &AdminState, path: &str) -> Value {
    let reply = get(admin, path).await;
    assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
    json(&reply)
}

fn json(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap()
}

#[tokio::test]
async fn unknown_paths_get_404_listing_the_endpoints() {
    let reply = get(&admin(), "/nope").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(json(&reply)["error"], "no endpoint /nope");
    let body = json(&reply);
    let endpoints = body["endpoints"].as_array().unwrap();
    assert!(endpoints.iter().any(|e| e == "GET /connections"));
    assert_eq!(
        ok(&admin(), "/").await["endpoints"],
        json(&reply)["endpoints"]
    );
}

#[tokio::test]
async fn only_logging_takes_post() {
    let uri: Uri = "/workloads".parse().unwrap();
    let reply = handle(&admin(), &Method::POST, &uri).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(json(&reply)["error"].as_str().unwrap().contains("use GET"));
}

#[tokio::test]
async fn replies_are_json_with_the_json_content_type() {
    let response = encode(get(&admin(), "/nope").await);
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json: Value = serde_json::from_slice(&body).unwrap();
    assert!(json["error"].is_string());
}

#[tokio::test]
async fn workloads_show_identity_and_enrollment() {
    let body = ok(&admin(), "/workloads").await;
    assert_eq!(body["generation"], 1);
    let workloads = body["workloads"].as_array().unwrap();
    let names: Vec<&str> = workloads
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["client", "web"], "sorted");
    let client = &workloads[0];
    assert_eq!(client["namespace"], "shop");
    assert_eq!(client["ips"], serde_json::json!(["10.0.1.2"]));
    assert_eq!(client["service_account"], "client");
    assert_eq!(client["node"], "n1");
    assert_eq!(
        client["spiffe_id"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(client["in_mesh"], true);
    assert_eq!(client["enrolled_here"], true);
    assert_eq!(workloads[1]["enrolled_here"], false);
    assert_eq!(workloads[1]["labels"]["app"], "web");
    assert_eq!(body["enrolled"][0]["name"], "client");
    assert_eq!(body["enrolled"][0]["in_state"], true);
}

#[tokio::test]
async fn without_a_state_the_views_are_empty_not_errors() {
    let bare = AdminState {
        state: None,
        enrolled: None,
        ..admin()
    };
    assert_eq!(
        ok(&bare, "/workloads").await["workloads"],
        serde_json::json!([])
    );
    assert_eq!(
        ok(&bare, "/services").await["services"],
        serde_json::json!([])
    );
    assert_eq!(
        ok(&bare, "/policies").await["authorization_policies"],
        serde_json::json!([])
    );
    assert_eq!(
        ok(&bare, "/certificates").await["certificates"],
        serde_json::json!([])
    );
    let explain = get(&bare, "/explain?from=shop/client&to=shop/web&port=80").await;
    assert_eq!(explain.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(json(&explain)["error"].is_string());
}

#[tokio::test]
async fn policies_show_what_is_in_force_with_warnings() {
    let body = ok(&admin(), "/policies").await;
    assert_eq!(body["root_namespace"], "istio-system");
    let authz = &body["authorization_policies"][0];
    assert_eq!(
        (
            &authz["namespace"],
            &authz["name"],
            &authz["action"],
            &authz["rules"]
        ),
        (
            &"shop".into(),
            &"web-from-client".into(),
            &"ALLOW".into(),
            &2.into()
        )
    );
    assert_eq!(authz["selector"]["app"], "web");
    assert_eq!(authz["spec"]["action"], "ALLOW", "the spec as written");
    let peer = &body["peer_authentications"][0];
    assert_eq!(
        (&peer["name"], &peer["mode"]),
        (&"default".into(), &"STRICT".into())
    );
    let warnings = body["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("L7-only")),
        "{warnings:?}"
    );
    assert_eq!(
        ok(&admin(), "/services").await["endpoint_slices"],
        serde_json::json!([])
    );
}

#[tokio::test]
async fn explain_answers_as_the_cli_and_names_bad_arguments() {
    let body = ok(
        &admin(),
        "/explain?from=shop%2Fclient&to=shop/web&port=8080",
    )
    .await;
    let snap = admin().state.unwrap().snapshot();
    let cli = marrow_mesh::explain::explain(
        &snap,
        &TrustDomain::default(),
        &"shop/client".parse().unwrap(),
        ("shop", "web"),
        8080,
    )
    .unwrap();
    assert_eq!(body, serde_json::to_value(&cli).unwrap());
    assert_eq!(body["policy"], "shop/web-from-client");
    let bad = get(&admin(), "/explain?from=shop&to=shop/web&port=8080").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(json(&bad)["error"].as_str().unwrap().contains("ns/pod"));
}

#[tokio::test]
async fn explain_takes_a_request_for_the_waypoint() {
    // No policy is bound to the waypoint shop/wp in this state: the request is allowed there,
    // and the answer is the same function's as the CLI's.
    let body = ok(
        &admin(),
        "/explain?from=shop%2Fclient&to=shop/web&port=9090&method=DELETE&path=%2F%2Fapi\
         &header=x-user%3Dalice&header=x-role%3Dguest&waypoint=shop%2Fwp",
    )
    .await;
    let snap = admin().state.unwrap().snapshot();
    let request = marrow_mesh::explain::RequestQuery {
        method: Some("DELETE".to_owned()),
        path: Some("//api".to_owned()),
        host: None,
        headers: vec!["x-user=alice".to_owned(), "x-role=guest".to_owned()],
        waypoint: Some("shop/wp".to_owned()),
    };
    let cli = marrow_mesh::explain::explain_request(
        &snap,
        &TrustDomain::default(),
        &"shop/client".parse().unwrap(),
        ("shop", "web"),
        9090,
        &request,
    )
    .unwrap();
    assert_eq!(body, serde_json::to_value(&cli).unwrap());
    assert_eq!(body["decision"], "allow", "{body}");
    let bad = get(
        &admin(),
        "/explain?from=shop%2Fclient&to=shop/web&port=80&method=GET",
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(json(&bad)["error"].as_str().unwrap().contains("waypoint"));
}

#[tokio::test]
async fn connections_list_both_ends_and_bytes() {
    let admin = admin();
    let td = TrustDomain::default();
    let pod = record("shop", "client", "u1").pod;
    let peers = ConnectionLabels::unknown(Reporter::Source).with_mutual_tls(
        &SpiffeId::new(&td, "shop", "client").unwrap(),
        &SpiffeId::new(&td, "shop", "web").unwrap(),
    );
    let facts = ConnectionFacts::new(
        peers,
        &pod,
        "10.0.1.2:41000".parse().unwrap(),
        "10.0.2.2:8080".parse().unwrap(),
    );
    let guard = ConnectionRecord::open(&admin.connections, &Arc::default(), facts);
    guard
        .bytes()
        .to_upstream
        .fetch_add(42, std::sync::atomic::Ordering::Relaxed);
    let body = ok(&admin, "/connections").await;
    assert_eq!(body["count"], 1);
    let c = &body["connections"][0];
    assert_eq!(c["src"], "10.0.1.2:41000");
    assert_eq!(c["dst"], "10.0.2.2:8080");
    assert_eq!(
        c["src_identity"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert_eq!(c["dst_identity"], "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(
        (&c["bytes_sent"], &c["bytes_received"]),
        (&42.into(), &0.into())
    );
    assert!(c["age_ms"].is_u64());
    assert_eq!(c["security"], "mutual_tls");
    assert_eq!(c["dst_workload"], Value::Null);

    let text = client::render(Endpoint::Connections, &body);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(header.starts_with("DIR"), "{text}");
    let row = lines.next().unwrap();
    assert!(
        row.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{text}"
    );
    assert_eq!(
        header.find("SRC-ID"),
        row.find("spiffe://cluster.local/ns/shop/sa/client"),
        "aligned columns:\n{text}"
    );
    drop(guard);
    assert_eq!(ok(&admin, "/connections").await["count"], 0);
}

#[tokio::test]
async fn certificates_show_validity_and_serial() {
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::default();
    marrow_mesh::identity::create_ca(dir.path(), &td, Duration::from_secs(86_400)).unwrap();
    let ca = LocalCa::load(
        &CaFiles::in_dir(dir.path()),
        td.clone(),
        LocalCaOptions::default(),
    )
    .unwrap();
    let certs = Arc::new(CertificateManager::new(
        Arc::new(ca),
        ManagerConfig::default(),
    ));
    let id = SpiffeId::new(&td, "shop", "client").unwrap();
    certs.allow(id.clone());
    certs.get(&id).await.unwrap();
    let admin = AdminState {
        certs: Some(certs),
        ..admin()
    };
    let body = ok(&admin, "/certificates").await;
    let c = &body["certificates"][0];
    assert_eq!(c["identity"], id.to_string());
    assert_eq!(c["state"], "valid");
    assert!(c["seconds_left"].as_i64().unwrap() > 3600, "{c}");
    assert!(c["not_after"].as_str().unwrap().ends_with('Z'), "{c}");
    assert!(c["serial"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
    let text = client::render(Endpoint::Certificates, &body);
    assert!(
        text.contains("spiffe://cluster.local/ns/shop/sa/client"),
        "{text}"
    );
}

#[tokio::test]
async fn config_dump_has_the_settings_generation_and_trust_domain() {
    let body = ok(&admin(), "/config_dump").await;
    assert_eq!(body["config"]["admin_addr"], "127.0.0.1:15000");
    assert_eq!(body["config"]["connect_timeout_ms"], 10_000);
    assert_eq!(body["state_generation"], 1);
    assert_eq!(body["trust_domain"], "cluster.local");
}

#[tokio::test]
async fn the_log_level_changes_at_run_time_and_a_bad_directive_is_refused() {
    let (layer, reload) = tracing_subscriber::reload::Layer::new(EnvFilter::new("info"));
    let _subscriber = tracing_subscriber::registry().with(layer);
    let admin = AdminState {
        logging: Some(Arc::new(ReloadableFilter::new(reload))),
        ..admin()
    };
    assert_eq!(ok(&admin, "/logging").await["level"], "info");
    let post = |query: &str| {
        let uri: Uri = format!("/logging?{query}").parse().unwrap();
        let admin = &admin;
        async move { handle(admin, &Method::POST, &uri).await }
    };
    let changed = post("level=debug").await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(
        (&json(&changed)["level"], &json(&changed)["previous"]),
        (&"debug".into(), &"info".into())
    );
    let refused = post("level=node_proxy%3Dloud").await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let body = json(&refused);
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("node_proxy=loud"), "{error}");
    assert_eq!(
        ok(&admin, "/logging").await["level"],
        "debug",
        "the old level stays"
    );
    assert_eq!(post("").await.status, StatusCode::BAD_REQUEST, "no level=");
    assert_eq!(
        post("level=").await.status,
        StatusCode::BAD_REQUEST,
        "empty"
    );
}

#[test]
fn query_values_are_percent_decoded() {
    assert_eq!(percent_decode("shop%2Fweb"), "shop/web");
    assert_eq!(percent_decode("ip%3A10.0.0.1"), "ip:10.0.0.1");
    assert_eq!(percent_decode("a+b"), "a b");
    assert_eq!(percent_decode("bad%zz"), "bad%zz");
    assert_eq!(percent_decode("end%4"), "end%4");
    assert_eq!(percent_decode("plain/shop"), "plain/shop");
}

#[test]
fn tables_align_their_columns() {
    let mut table = Table::new(&["A", "LONGER", "C"]);
    table.row(vec!["wide-value".into(), "x".into(), "last".into()]);
    table.row(vec!["y".into()]);
    assert_eq!(
        table.to_string(),
        "A           LONGER  C\nwide-value  x       last\ny\n"
    );
}

#[tokio::test]
async fn the_client_reads_replies_and_names_the_address_it_cannot_reach() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(serve(listener, Arc::new(admin())));
    let reply = tokio::task::spawn_blocking(move || client::request(addr, "GET", "/workloads"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply["workloads"][0]["name"], "client");
    let missing = tokio::task::spawn_blocking(move || client::request(addr, "GET", "/x"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(missing.to_string().contains("404"), "{missing}");
    server.abort();

    // A port nobody listens on: the error names it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = closed.local_addr().unwrap();
    drop(closed);
    let error = client::request(gone, "GET", "/workloads").unwrap_err();
    assert!(error.to_string().contains(&gone.to_string()), "{error}");
    assert!(error.to_string().contains("cannot reach"), "{error}");
}

#[test]
fn query_values_round_trip_through_escaping() {
    for value in ["shop/web", "ip:10.0.0.1", "info,access=off", "a b&c"] {
        assert_eq!(percent_decode(&client::query_escape(value)), value);
    }
}

/// Istio objects marrow does not enforce as written, each reported by kind and reason in
/// `marrow_config_unsupported` and listed in `/config_dump` (with the dry-run policy).
#[tokio::test]
async fn unsupported_objects_are_reported_by_the_metric_and_config_dump() {
    let yaml = concat!(
        include_str!("../../../mesh/testdata/two-pods.yaml"),
        include_str!("../../../mesh/testdata/unsupported-policies.yaml")
    );
    let update =
        marrow_mesh::state::file::parse(std::path::Path::new("test.yaml"), yaml.as_bytes())
            .unwrap();
    let store = Arc::new(StateStore::new());
    let snap = store.apply(update);

    // The metric reports each set-aside object by kind and reason.
    let metrics = crate::metrics::Metrics::default();
    metrics.record_unsupported(snap.policies());
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for (kind, reason, count) in [
        ("AuthorizationPolicy", "audit_action", 1),
        ("AuthorizationPolicy", "custom_action", 1),
        ("AuthorizationPolicy", "unknown_field", 1),
        ("AuthorizationPolicy", "invalid_field", 1),
        ("AuthorizationPolicy", "unrecognized_action", 0),
        ("RequestAuthentication", "request_authentication", 1),
    ] {
        let line =
            format!("marrow_config_unsupported{{kind=\"{kind}\",reason=\"{reason}\"}} {count}\n");
        assert!(text.contains(&line), "wants {line}in\n{text}");
    }

    // So does /config_dump, with the dry-run policy.
    let admin = AdminState {
        state: Some(store.clone()),
        trust_domain: TrustDomain::default(),
        certs: None,
        connections: Arc::default(),
        enrolled: None,
        config: Config::default(),
        logging: None,
    };
    let uri = "/config_dump".parse::<hyper::Uri>().unwrap();
    let reply = handle(&admin, &hyper::Method::GET, &uri).await;
    let dump: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    let listed: Vec<String> = dump["unsupported"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            format!(
                "{} {}/{} {}",
                u["kind"].as_str().unwrap(),
                u["namespace"].as_str().unwrap(),
                u["name"].as_str().unwrap(),
                u["reason"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        listed,
        [
            "AuthorizationPolicy shop/audit-everything audit_action",
            "AuthorizationPolicy shop/ext-authz custom_action",
            "AuthorizationPolicy shop/newer-istio unknown_field",
            "AuthorizationPolicy shop/typo invalid_field",
            "RequestAuthentication shop/jwt request_authentication",
        ]
    );
    assert!(
        dump["unsupported"][3]["detail"]
            .as_str()
            .unwrap()
            .contains("rules[0].from[0].source.ipBlocks: invalid CIDR \"10.0.0.0/33\""),
        "{}",
        dump["unsupported"][3]
    );
    assert_eq!(
        dump["dry_run_policies"],
        serde_json::json!(["shop/try-deny-client"])
    );
}

#[test]
fn the_client_asks_the_paths_the_server_routes() {
    for endpoint in Endpoint::ALL {
        assert_eq!(Endpoint::at(endpoint.path()), Some(endpoint));
        let uri: Uri = client::target(endpoint, &[("level", "info,access=off")])
            .parse()
            .unwrap();
        assert_eq!(Endpoint::at(uri.path()), Some(endpoint), "{uri}");
        assert_eq!(
            param(uri.query().unwrap(), "level").unwrap(),
            "info,access=off"
        );
    }
    assert_eq!(Endpoint::at("/config"), None);
    assert_eq!(
        client::target(Endpoint::Explain, &[("from", "shop/a"), ("port", "80")]),
        "/explain?from=shop%2Fa&port=80"
    );
    assert_eq!(endpoints().len(), 11, "{:?}", endpoints());
}

#[tokio::test]
async fn routes_answers_as_the_cli_and_renders_the_rule_and_backends() {
    use marrow_mesh::traffic::{Backend, RouteKind, RouteRef, ServiceName, TcpRule, TrafficSet};
    let yaml = concat!(
        include_str!("../../../mesh/testdata/two-pods.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\n",
        "spec: {clusterIP: 10.96.0.11, ports: [{name: tcp, port: 80}]}\n"
    );
    let mut update =
        marrow_mesh::state::file::parse(std::path::Path::new("test.yaml"), yaml.as_bytes())
            .unwrap();
    let backend = |name: &str, weight| Backend {
        service: ServiceName::new("shop", name),
        port: None,
        subset: None,
        weight,
        request_headers: Default::default(),
        response_headers: Default::default(),
    };
    let mut traffic = TrafficSet::new();
    traffic.insert_tcp(
        ServiceName::new("shop", "api"),
        vec![TcpRule {
            route: RouteRef {
                kind: RouteKind::TcpRoute,
                namespace: "shop".into(),
                name: "api-canary".into(),
                rule: 0,
            },
            port: None,
            backends: vec![backend("api", 90), backend("api-v2", 10)],
        }],
    );
    update.set_traffic(traffic);
    let store = Arc::new(StateStore::new());
    store.apply(update);
    let state = AdminState {
        state: Some(store.clone()),
        ..admin()
    };
    let body = ok(&state, "/routes?to=api.shop%3A80&from=shop%2Fclient").await;
    let query =
        marrow_mesh::explain::RoutesQuery::parse("to=api.shop:80&from=shop/client").unwrap();
    let cli = marrow_mesh::explain::explain_routes(&store.snapshot(), &query).unwrap();
    assert_eq!(body, serde_json::to_value(&cli).unwrap());
    assert_eq!(body["route"]["kind"], "TCPRoute");
    let text = client::render(Endpoint::Routes, &body);
    assert!(
        text.contains("route:    TCPRoute shop/api-canary rule 0"),
        "{text}"
    );
    assert!(
        text.contains("backend:  shop/api-v2 subset - port 80 weight 10"),
        "{text}"
    );
    assert!(text.contains("layer:    node proxy"), "{text}");
    let bad = get(&state, "/routes?from=shop%2Fclient").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(
        json(&bad)["error"]
            .as_str()
            .unwrap()
            .contains("to=HOST:PORT")
    );
}
