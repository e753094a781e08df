//! The sidecar bootstrap, checked field by field and by Envoy itself, and the stats parser.

use std::path::PathBuf;
use std::time::Duration;

use marrow_mesh::identity::{TrustDomain, create_ca};
use marrow_tests::workload_cert::WorkloadCert;

use super::config::{DOWNSTREAM_TLS, UPSTREAM_TLS};
use super::*;

const ROUTES: [Route; 2] = [
    Route {
        app: 8080,
        outbound: 15001,
        inbound: 15443,
    },
    Route {
        app: 8081,
        outbound: 15002,
        inbound: 15444,
    },
];

fn files() -> CertFiles {
    CertFiles {
        cert: PathBuf::from("/pod/cert.pem"),
        key: PathBuf::from("/pod/key.pem"),
    }
}

fn bootstrap(identity: &CertFiles, ca_cert: &Path) -> Value {
    Bootstrap {
        routes: &ROUTES,
        identity,
        ca_cert,
        peer: Ipv4Addr::new(10, 244, 2, 3),
        peer_id: "spiffe://cluster.local/ns/bench/sa/bench-server",
        trust_domain: "cluster.local",
    }
    .json()
}

#[test]
fn every_route_has_an_mtls_outbound_and_inbound_hop() {
    let identity = files();
    let v = bootstrap(&identity, Path::new("/ca/ca-cert.pem"));
    assert_eq!(v["admin"]["address"]["socket_address"]["port_value"], 15000);
    let listeners = v["static_resources"]["listeners"].as_array().unwrap();
    let clusters = v["static_resources"]["clusters"].as_array().unwrap();
    assert_eq!((listeners.len(), clusters.len()), (4, 4));
    let find = |list: &[Value], name: &str| -> Value {
        list.iter().find(|l| l["name"] == name).unwrap().clone()
    };

    let out = find(listeners, "outbound_8080");
    assert_eq!(out["address"]["socket_address"]["address"], "127.0.0.1");
    assert_eq!(out["address"]["socket_address"]["port_value"], 15001);
    assert!(
        out["filter_chains"][0].get("transport_socket").is_none(),
        "the app speaks plaintext to its own sidecar"
    );
    let upstream = find(clusters, "outbound_8080");
    let socket = &upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(socket["address"], "10.244.2.3");
    assert_eq!(socket["port_value"], 15443);
    let tls = &upstream["transport_socket"]["typed_config"];
    assert_eq!(tls["@type"], UPSTREAM_TLS);
    let common = &tls["common_tls_context"];
    assert_eq!(
        common["tls_params"]["tls_minimum_protocol_version"],
        "TLSv1_3"
    );
    assert_eq!(
        common["tls_certificates"][0]["private_key"]["filename"],
        "/pod/key.pem"
    );
    assert_eq!(
        common["validation_context"]["trusted_ca"]["filename"],
        "/ca/ca-cert.pem"
    );
    let san = &common["validation_context"]["match_typed_subject_alt_names"][0];
    assert_eq!(san["san_type"], "URI");
    assert_eq!(
        san["matcher"]["exact"],
        "spiffe://cluster.local/ns/bench/sa/bench-server"
    );

    let inbound = find(listeners, "inbound_8081");
    assert_eq!(inbound["address"]["socket_address"]["address"], "0.0.0.0");
    assert_eq!(inbound["address"]["socket_address"]["port_value"], 15444);
    let tls = &inbound["filter_chains"][0]["transport_socket"]["typed_config"];
    assert_eq!(tls["@type"], DOWNSTREAM_TLS);
    assert_eq!(tls["require_client_certificate"], true);
    let san = &tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0];
    assert_eq!(san["matcher"]["prefix"], "spiffe://cluster.local/");
    let local = find(clusters, "inbound_8081");
    let socket = &local["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(
        (&socket["address"], &socket["port_value"]),
        (&json!("127.0.0.1"), &json!(8081))
    );
    assert!(local.get("transport_socket").is_none());
}

/// Envoy's own `--mode validate` accepts the bootstrap with real certificate files (skipped,
/// saying so, when `cargo xtask setup` has not installed Envoy).
#[test]
fn envoy_accepts_the_bootstrap() {
    let root = crate::workspace_root().unwrap();
    let envoy = match marrow_tests::envoy::envoy_binary(&root) {
        Ok(envoy) => envoy,
        Err(why) => {
            println!("SKIPPED: Envoy is not installed ({why:#}); run `cargo xtask setup`");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("cluster.local").unwrap();
    let ca = create_ca(&dir.path().join("ca"), &td, Duration::from_secs(3600)).unwrap();
    let cert = WorkloadCert::issue_with(
        &ca.cert,
        &ca.key,
        "spiffe://cluster.local/ns/bench/sa/bench-client",
    )
    .unwrap();
    let identity = cert.write(dir.path()).unwrap();
    let config = dir.path().join("envoy.json");
    let text = serde_json::to_string_pretty(&bootstrap(&identity, &ca.cert)).unwrap();
    std::fs::write(&config, text).unwrap();
    let out = std::process::Command::new(&envoy)
        .args(["--mode", "validate", "-c"])
        .arg(&config)
        .args(flags())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy --mode validate: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn stats_keep_counters_and_gauges_and_skip_histograms() {
    let text = "cluster.outbound_8080.ssl.handshake: 12\n\
                cluster.outbound_8081.ssl.handshake: 1\n\
                cluster.outbound_8080.ssl.session_reused: 10\n\
                listener.0.0.0.0_15443.ssl.handshake: 3\n\
                listener.0.0.0.0_15443.downstream_cx_active: 0\n\
                cluster.outbound_8080.upstream_cx_length_ms: P0(nan,1) P25(nan,1.025) P50(nan,1.05)\n\
                listener.admin.downstream_cx_length_ms: No recorded values\n\n";
    let stats = parse_stats(text).unwrap();
    assert_eq!(
        stats.tls(),
        TlsCounts {
            as_client: 13,
            as_server: 3,
            resumed: 10
        }
    );
    assert_eq!(stats.sum("listener.", "downstream_cx_active"), 0);
    assert_eq!(stats.sum("cluster.", "upstream_cx_length_ms"), 0);
}

#[test]
fn stats_reject_what_is_not_envoy_text() {
    for bad in [
        "",
        "<html>not stats</html>",
        "a.b: 1\nno separator here\n",
        "a.b: twelve\n",
        "a b: 1\n",
        ": 1\n",
    ] {
        assert!(parse_stats(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn admin_answers_plain_and_chunked() {
    let plain = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nLIVE\n";
    assert_eq!(parse_http11(plain).unwrap(), (200, "LIVE\n".to_owned()));
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                    5\r\na.b: \r\n3;ext=1\r\n12\n\r\n0\r\n\r\n";
    assert_eq!(
        parse_http11(chunked).unwrap(),
        (200, "a.b: 12\n".to_owned())
    );
    let refused = b"HTTP/1.1 426 Upgrade Required\r\n\r\n";
    assert_eq!(parse_http11(refused).unwrap().0, 426);
    for bad in [
        &b""[..],
        b"HTTP/1.1 200 OK\r\n",
        b"SSH-2.0\r\n\r\n",
        b"HTTP/1.1 abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nshort\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde",
    ] {
        assert!(
            parse_http11(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
