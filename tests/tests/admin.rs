//! The admin API (15000) and the access log on a running two-node mesh: a connection held open
//! shows in `/connections` (and `node-proxy admin connections`) with both identities and bytes;
//! `/workloads`, `/certificates` and `/explain` answer from what the proxy holds; `/logging`
//! changes the level at run time and refuses a bad directive; and the proxy's JSON log has one
//! `access` line per finished connection, refused ones included.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Output;
use std::time::Duration;

use marrow_tests::http::{HttpResponse, parse_response};
use marrow_tests::two_nodes::{APP_PORT, Mesh, eventually, namespaces, v4};
use marrow_tests::{Conversation, Node, Proxy, require_env, spiffe_id};
use serde_json::Value;

/// The admin port inside each node (the proxy's default `--admin-addr` 127.0.0.1:15000).
const ADMIN_PORT: u16 = 15000;
/// A port the policy below denies.
const DENIED_PORT: u16 = 9091;

const DENY_PORT: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-9091
  namespace: shop
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: [\"9091\"]
";

/// `GET path` on the node's admin API, as JSON (the status must be 200).
fn admin_get(proxy: &Proxy, path: &str) -> Value {
    let r = proxy.http_get(ADMIN_PORT, path).expect("admin API answers");
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {}", r.body))
}

/// `POST path` on the admin API inside `node`.
fn admin_post(node: &Node, path: &str) -> HttpResponse {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
    node.netns()
        .run(|| -> anyhow::Result<HttpResponse> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )?;
            let mut raw = Vec::new();
            s.read_to_end(&mut raw)?;
            parse_response(&raw)
        })
        .expect("POST to the admin API")
}

/// `node-proxy <args>` inside `node` (so its default `--addr` is that node's proxy).
fn cli(node: &Node, args: &[&str]) -> Output {
    node.command(marrow_tests::binaries::node_proxy())
        .args(args)
        .output()
        .expect("run node-proxy")
}

/// The connections of `/connections` to `port`.
fn connections_to(proxy: &Proxy, port: u16) -> Vec<Value> {
    admin_get(proxy, "/connections")["connections"]
        .as_array()
        .expect("connections is a list")
        .iter()
        .filter(|c| {
            c["dst"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{port}")))
        })
        .cloned()
        .collect()
}

/// The `access` lines of the proxy's JSON log (its `fields`) for connections to `port`.
fn access_lines(proxy: &Proxy, port: u16) -> Vec<Value> {
    proxy
        .log()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "access")
        .map(|line| line["fields"].clone())
        .filter(|f| {
            f["dst"]
                .as_str()
                .is_some_and(|d| d.ends_with(&format!(":{port}")))
        })
        .collect()
}

#[test]
fn the_admin_api_shows_live_state_and_each_connection_is_logged_once() {
    require_env!();
    let mesh = Mesh::start_with("admin", &["--log-json"]);
    let client = mesh.n1.add_pod("client", "shop", true);
    let web = mesh.n2.add_pod("web", "shop", true);
    let _app = web.serve(APP_PORT);
    let state = namespaces().pod(&client, "client").pod(&web, "web");
    mesh.apply_with(&state, DENY_PORT);
    let (client_id, web_id) = (spiffe_id("shop", "client"), spiffe_id("shop", "web"));

    // A connection held open: both proxies list it with both identities and its bytes.
    let mut held = Conversation::open(&client, v4(&web, APP_PORT)).expect("connect to web");
    assert_eq!(held.say("hello-admin").expect("echo"), "hello-admin");
    for (proxy, direction) in [(&mesh.p1, "outbound"), (&mesh.p2, "inbound")] {
        eventually(
            &format!("{direction} /connections to list the held connection"),
            || {
                let found = connections_to(proxy, APP_PORT);
                let [c] = found.as_slice() else {
                    return Err(format!(
                        "{} connections to {APP_PORT}: {found:?}",
                        found.len()
                    ));
                };
                let sent = c["bytes_sent"].as_u64().unwrap_or(0);
                let received = c["bytes_received"].as_u64().unwrap_or(0);
                if c["direction"] == direction
                    && c["src_identity"] == client_id.as_str()
                    && c["dst_identity"] == web_id.as_str()
                    && c["dst"] == v4(&web, APP_PORT).to_string()
                    && sent >= "hello-admin\n".len() as u64
                    && received > 0
                {
                    Ok(())
                } else {
                    Err(format!("{c}"))
                }
            },
        );
    }
    let table = cli(&mesh.n2, &["admin", "connections"]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&table.stderr)
    );
    println!("node-proxy admin connections:\n{text}");
    assert!(text.starts_with("DIR"), "{text}");
    assert!(
        text.contains(&client_id) && text.contains(&web_id),
        "{text}"
    );

    // What the proxy holds: the workloads of the state, this node's pod, its certificate.
    let workloads = admin_get(&mesh.p2, "/workloads");
    let by_name = |name: &str| {
        workloads["workloads"]
            .as_array()
            .and_then(|ws| ws.iter().find(|w| w["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("no {name} in {workloads}"))
    };
    let (w_client, w_web) = (by_name("client"), by_name("web"));
    assert_eq!(w_web["ips"][0], web.ipv4().to_string(), "{w_web}");
    assert_eq!(w_web["spiffe_id"], web_id.as_str(), "{w_web}");
    assert_eq!(w_client["service_account"], "client", "{w_client}");
    assert_eq!(
        (&w_web["enrolled_here"], &w_client["enrolled_here"]),
        (&Value::Bool(true), &Value::Bool(false)),
        "web is enrolled on node 2, client on node 1"
    );
    let certificates = admin_get(&mesh.p2, "/certificates");
    let certs = certificates["certificates"].as_array().expect("a list");
    let cert = certs
        .iter()
        .find(|c| c["identity"] == web_id.as_str())
        .unwrap_or_else(|| panic!("no certificate for {web_id}: {certificates}"));
    assert_eq!(cert["state"], "valid", "{cert}");
    assert!(cert["seconds_left"].as_i64().unwrap_or(0) > 0, "{cert}");
    let policies = admin_get(&mesh.p2, "/policies");
    assert_eq!(
        policies["authorization_policies"][0]["name"], "no-9091",
        "{policies}"
    );
    let config = admin_get(&mesh.p2, "/config_dump");
    assert_eq!(config["trust_domain"], "cluster.local", "{config}");
    assert!(
        config["state_generation"].as_u64().unwrap_or(0) >= 2,
        "{config}"
    );
    let missing = mesh
        .p2
        .http_get(ADMIN_PORT, "/nope")
        .expect("admin API answers");
    assert_eq!(missing.status, 404);
    assert!(
        missing.body.contains("/connections"),
        "404 lists the endpoints: {}",
        missing.body
    );

    // /explain answers as `node-proxy explain --json` does from the same state file.
    let served = admin_get(
        &mesh.p2,
        &format!("/explain?from=shop/client&to=shop/web&port={DENIED_PORT}"),
    );
    let port = DENIED_PORT.to_string();
    let config_file = mesh.state2.display().to_string();
    let printed = cli(
        &mesh.n2,
        &[
            "explain",
            "--config",
            &config_file,
            "--from",
            "shop/client",
            "--to",
            "shop/web",
            "--port",
            &port,
            "--json",
        ],
    );
    let printed: Value =
        serde_json::from_slice(&printed.stdout).expect("explain --json prints JSON");
    assert_eq!(served, printed);
    assert_eq!(served["decision"], "deny");

    // The log level, changed at run time; a bad directive is refused and changes nothing.
    assert_eq!(admin_get(&mesh.p2, "/logging")["level"], "info");
    let changed = admin_post(&mesh.n2, "/logging?level=debug");
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(admin_get(&mesh.p2, "/logging")["level"], "debug");
    let refused = admin_post(&mesh.n2, "/logging?level=node_proxy%3Dloud");
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(refused.body.contains("node_proxy=loud"), "{}", refused.body);
    let by_cli = cli(&mesh.n2, &["admin", "logging", "--level", "info"]);
    assert!(
        by_cli.status.success(),
        "{}",
        String::from_utf8_lossy(&by_cli.stderr)
    );
    assert_eq!(admin_get(&mesh.p2, "/logging")["level"], "info");

    // Each finished connection, allowed or denied, is one JSON access line at the destination.
    held.close().expect("close");
    assert!(
        !client.connect(v4(&web, DENIED_PORT), "denied").is_ok(),
        "the DENY policy refuses {DENIED_PORT}"
    );
    eventually("one access line per finished connection", || {
        let (allowed, denied) = (
            access_lines(&mesh.p2, APP_PORT),
            access_lines(&mesh.p2, DENIED_PORT),
        );
        let source = access_lines(&mesh.p1, APP_PORT);
        match (allowed.as_slice(), denied.as_slice(), source.as_slice()) {
            ([_], [_], [_]) => Ok(()),
            _ => Err(format!(
                "allowed {allowed:?}, denied {denied:?}, at the source {source:?}"
            )),
        }
    });
    let raw = mesh.p2.log();
    let line = raw
        .lines()
        .find(|l| l.contains("\"target\":\"access\"") && l.contains(&format!(":{APP_PORT}\"")))
        .expect("the access line, as written");
    println!("access line at the destination, as written:\n{line}");
    let allowed = &access_lines(&mesh.p2, APP_PORT)[0];
    assert_eq!(allowed["message"], "connection");
    for (field, want) in [
        ("direction", "inbound"),
        ("src_identity", client_id.as_str()),
        ("dst_identity", web_id.as_str()),
        ("src_workload", "shop/client"),
        ("dst_workload", "shop/web"),
        ("security", "mutual_tls"),
        ("decision", "allow"),
        ("response_flags", "-"),
    ] {
        assert_eq!(allowed[field], want, "{field} in {allowed}");
    }
    assert_eq!(allowed["dst"], v4(&web, APP_PORT).to_string(), "{allowed}");
    assert!(
        allowed["src"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{}:", client.ipv4()))),
        "{allowed}"
    );
    assert!(
        allowed["bytes_sent"].as_u64().unwrap_or(0) >= "hello-admin\n".len() as u64,
        "{allowed}"
    );
    assert!(
        allowed["bytes_received"].as_u64().unwrap_or(0) > 0,
        "{allowed}"
    );
    assert!(allowed["duration_ms"].is_u64(), "{allowed}");
    assert!(
        allowed["reason"].is_string(),
        "which policy (or none) allowed it: {allowed}"
    );
    let denied = &access_lines(&mesh.p2, DENIED_PORT)[0];
    assert_eq!(
        (&denied["decision"], &denied["response_flags"]),
        (&"deny".into(), &"DENY".into()),
        "{denied}"
    );
    assert!(
        denied["reason"]
            .as_str()
            .is_some_and(|r| r.contains("shop/no-9091")),
        "{denied}"
    );
    assert_eq!(access_lines(&mesh.p1, APP_PORT)[0]["direction"], "outbound");
    assert!(
        !mesh.p2.log().contains("connection closed"),
        "the access line replaces it"
    );
    eventually("the table to empty", || {
        let left = connections_to(&mesh.p2, APP_PORT);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}
