//! L4 policy at the destination's node proxy, on two nodes: an AuthorizationPolicy decides
//! which identities may reach a workload over HBONE (denied tunnels get 401 and the client's
//! connection is closed), and a STRICT PeerAuthentication refuses plaintext. Each denial is
//! counted with `response_flags="DENY"` and logged with the deciding reason.

use marrow_tests::mesh::{STRICT_MESH_WIDE, config_generation};
use marrow_tests::metrics::count;
use marrow_tests::require_env;
use marrow_tests::state_file::{PodRecord, write_atomic};
use marrow_tests::two_nodes::{
    APP_PORT, DENY_PORT_8080, Mesh, OPENED, eventually, ip, namespaces, v4,
};

const ALLOW_CLIENT_ONLY: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web-from-client
  namespace: shop
spec:
  selector:
    matchLabels:
      app: web
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/shop/sa/client\"]
";

#[test]
fn an_allow_policy_admits_the_named_identity_and_denies_others_with_401() {
    require_env!();
    let mesh = Mesh::start("policy-allow");
    let client = mesh.n1.add_pod("client", "shop", true);
    let intruder = mesh.n1.add_pod("intruder", "shop", true);
    let web = mesh.n2.add_pod("web", "shop", true);
    let _app = web.serve(APP_PORT);
    let state = namespaces()
        .pod(&client, "client")
        .pod(&intruder, "intruder")
        .with_pod(PodRecord::of(&web, "web").with_label("app", "web"));
    mesh.apply_with(&state, ALLOW_CLIENT_ONLY);

    let allowed = client.connect(v4(&web, APP_PORT), "allowed");
    assert_eq!(allowed.connected().greeting.peer.ip(), ip(&client));
    let denied = intruder.connect(v4(&web, APP_PORT), "denied");
    assert!(
        !denied.is_ok(),
        "the intruder must not get through: {denied:?}"
    );

    // The running proxy explains it, exactly as the CLI does from the same state file.
    let admin = mesh
        .p2
        .http_get(15000, "/explain?from=shop/intruder&to=shop/web&port=8080")
        .expect("GET /explain");
    assert_eq!(admin.status, 200, "{}", admin.body);
    let served: serde_json::Value = serde_json::from_str(&admin.body).expect("JSON");
    assert_eq!(served["decision"], "deny", "{served}");
    let cli = std::process::Command::new(marrow_tests::binaries::node_proxy())
        .arg("explain")
        .arg("--config")
        .arg(&mesh.state2)
        .args([
            "--from",
            "shop/intruder",
            "--to",
            "shop/web",
            "--port",
            "8080",
            "--json",
        ])
        .output()
        .expect("run node-proxy explain");
    let printed: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("CLI JSON");
    assert_eq!(served, printed, "/explain and node-proxy explain agree");
    let allowed = mesh
        .p2
        .http_get(15000, "/explain?from=shop%2Fclient&to=shop%2Fweb&port=8080")
        .expect("GET /explain");
    let allowed: serde_json::Value = serde_json::from_str(&allowed.body).expect("JSON");
    assert_eq!(allowed["decision"], "allow", "{allowed}");
    assert_eq!(allowed["policy"], "shop/web-from-client", "{allowed}");
    assert_eq!(allowed["rule"], 0, "{allowed}");

    eventually(
        "the denial is counted and explained at the destination",
        || {
            let m = mesh.p2.metrics();
            let flagged = count(
                &m,
                OPENED,
                &[("reporter", "destination"), ("response_flags", "DENY")],
            );
            let log = mesh.p2.log();
            let explained = log.contains("no ALLOW policy") && log.contains("shop/web-from-client");
            if flagged == 1 && explained {
                Ok(())
            } else {
                Err(format!("DENY count {flagged}, explained {explained}\n{m}"))
            }
        },
    );
}

#[test]
fn strict_peer_authentication_refuses_plaintext_but_not_hbone() {
    require_env!();
    let mesh = Mesh::start("policy-strict");
    let client = mesh.n1.add_pod("client", "shop", true);
    let outsider = mesh.n1.add_pod("outsider", "legacy", false);
    let web = mesh.n2.add_pod("web", "shop", true);
    let _app = web.serve(APP_PORT);
    let state = namespaces()
        .namespace("legacy", &[])
        .pod(&client, "client")
        .pod(&outsider, "default")
        .pod(&web, "web");

    // PERMISSIVE (nothing set): the outsider's plaintext is accepted.
    mesh.apply_with(&state, "");
    assert!(outsider.connect(v4(&web, APP_PORT), "plaintext-ok").is_ok());

    mesh.apply_with(&state, STRICT_MESH_WIDE);
    let refused = outsider.connect(v4(&web, APP_PORT), "plaintext-refused");
    assert!(
        !refused.is_ok(),
        "STRICT must refuse plaintext: {refused:?}"
    );
    let meshed = client.connect(v4(&web, APP_PORT), "mtls-ok");
    assert_eq!(meshed.connected().echo, "mtls-ok");
    eventually("the refusal names STRICT", || {
        let log = mesh.p2.log();
        if log.contains("STRICT") && log.contains("connection denied") {
            Ok(())
        } else {
            Err("no refusal logged".into())
        }
    });
}

const BROKEN: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: broken
  namespace: shop
spec:
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: [\"10.0.0.0/33\"]
";

#[test]
fn policy_edits_apply_without_restart_and_a_malformed_policy_costs_only_itself() {
    require_env!();
    let mesh = Mesh::start("policy-edit");
    let client = mesh.n1.add_pod("client", "shop", true);
    let web = mesh.n2.add_pod("web", "shop", true);
    let _app = web.serve(APP_PORT);
    let _other = web.serve(9090);
    let state = namespaces().pod(&client, "client").pod(&web, "web");
    mesh.apply_with(&state, "");
    assert!(client.connect(v4(&web, APP_PORT), "open").is_ok());

    // A DENY on one port, added while the proxies run.
    mesh.apply_with(&state, DENY_PORT_8080);
    assert!(
        !client.connect(v4(&web, APP_PORT), "denied").is_ok(),
        "8080 is denied"
    );
    assert!(
        client.connect(v4(&web, 9090), "other-port").is_ok(),
        "9090 is not"
    );

    // A malformed edit costs only itself: the version applies, the proxy names the policy and
    // the field, and the malformed DENY, read without its bad address, denies more (9090 too).
    let generation = config_generation(&mesh.p2).expect("generation");
    let yaml = format!("{}\n---\n{DENY_PORT_8080}---\n{BROKEN}", state.to_yaml());
    write_atomic(&mesh.state2, yaml.as_bytes()).expect("write state");
    eventually("the malformed policy is applied and named", || {
        let log = mesh.p2.log();
        let applied = config_generation(&mesh.p2).is_some_and(|g| g > generation);
        if applied && log.contains("shop/broken") && log.contains("10.0.0.0/33") {
            Ok(())
        } else {
            Err(format!("applied: {applied}; not named in the log yet"))
        }
    });
    assert!(
        !client.connect(v4(&web, APP_PORT), "still-denied").is_ok(),
        "the DENY on 8080 still holds"
    );
    assert!(
        !client.connect(v4(&web, 9090), "fail-safe").is_ok(),
        "the malformed DENY denies more, never less"
    );

    // Removing the policy opens the port again, still without a restart.
    mesh.apply_with(&state, "");
    assert_eq!(
        client
            .connect(v4(&web, APP_PORT), "open-again")
            .connected()
            .echo,
        "open-again"
    );
}
