//! Envoy as the L7 hop of the waypoint bench: what marrow's waypoint is measured against. One
//! listener on `0.0.0.0:<port>` that requires mutual TLS (as the sidecars' inbound), parses HTTP
//! with the HTTP connection manager (HTTP/1.1 or HTTP/2 by what the client speaks) and routes
//! every request with the router filter to one upstream — the server pod's sidecar — over mutual
//! TLS, HTTP/1.1 with keep-alive (Envoy's default upstream protocol). No access log, Envoy's
//! default stats, the sidecars' worker count: the same L7 work as the waypoint's on the same
//! request, minus policy and telemetry.

use std::net::Ipv4Addr;
use std::path::Path;

use marrow_tests::workload_cert::CertFiles;
use serde_json::{Value, json};

use super::config;

const HTTP_CONNECTION_MANAGER: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
/// The one cluster every request goes to.
const UPSTREAM: &str = "upstream";

/// What the L7 Envoy is configured with.
pub struct L7Hop<'a> {
    /// Its mutual-TLS listener's port, on every address of its pod.
    pub port: u16,
    /// Its certificate and key.
    pub identity: &'a CertFiles,
    /// The mesh CA certificate, the only trust anchor.
    pub ca_cert: &'a Path,
    /// Clients must present a SPIFFE ID of this trust domain.
    pub trust_domain: &'a str,
    /// Where requests go: the server pod's sidecar inbound listener.
    pub upstream: (Ipv4Addr, u16),
    /// The SPIFFE ID the upstream must present.
    pub upstream_id: &'a str,
}

impl L7Hop<'_> {
    /// The static bootstrap, as JSON.
    pub fn json(&self) -> Value {
        let mut chain = json!({ "filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": HTTP_CONNECTION_MANAGER,
                "stat_prefix": "l7_hop",
                "codec_type": "AUTO",
                "route_config": {
                    "name": "all",
                    "virtual_hosts": [{
                        "name": "all",
                        "domains": ["*"],
                        "routes": [{
                            "match": { "prefix": "/" },
                            "route": { "cluster": UPSTREAM, "timeout": "0s" },
                        }],
                    }],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": { "@type": ROUTER },
                }],
            },
        }]});
        chain["transport_socket"] =
            config::downstream_mtls(self.identity, self.ca_cert, self.trust_domain);
        let listener = json!({
            "name": "l7_hop",
            "address": config::address("0.0.0.0", self.port),
            "filter_chains": [chain],
        });
        let (ip, port) = self.upstream;
        let mut cluster = config::static_cluster(UPSTREAM, &ip.to_string(), port);
        cluster["transport_socket"] =
            config::upstream_mtls(self.identity, self.ca_cert, self.upstream_id);
        config::bootstrap(vec![listener], vec![cluster])
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use marrow_mesh::identity::{TrustDomain, create_ca};
    use marrow_tests::workload_cert::WorkloadCert;

    use super::*;

    fn hop(identity: &CertFiles, ca: &Path) -> Value {
        L7Hop {
            port: 15443,
            identity,
            ca_cert: ca,
            trust_domain: "cluster.local",
            upstream: (Ipv4Addr::new(10, 0, 0, 9), 15006),
            upstream_id: "spiffe://cluster.local/ns/bench/sa/bench-server",
        }
        .json()
    }

    #[test]
    fn routes_every_request_over_mutual_tls_both_sides() {
        let identity = CertFiles {
            cert: "/c.pem".into(),
            key: "/k.pem".into(),
        };
        let config = hop(&identity, Path::new("/ca.pem"));
        let listener = &config["static_resources"]["listeners"][0];
        assert_eq!(listener["address"]["socket_address"]["port_value"], 15443);
        let chain = &listener["filter_chains"][0];
        assert_eq!(
            chain["transport_socket"]["typed_config"]["require_client_certificate"],
            true
        );
        let hcm = &chain["filters"][0]["typed_config"];
        assert_eq!(hcm["codec_type"], "AUTO");
        assert_eq!(
            hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"],
            UPSTREAM
        );
        let cluster = &config["static_resources"]["clusters"][0];
        let san = &cluster["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
            ["match_typed_subject_alt_names"][0];
        assert_eq!(
            san["matcher"]["exact"],
            "spiffe://cluster.local/ns/bench/sa/bench-server"
        );
        let endpoint = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(
            (&endpoint["address"], &endpoint["port_value"]),
            (&json!("10.0.0.9"), &json!(15006))
        );
    }

    /// Envoy's own `--mode validate` accepts it (skipped, saying so, without Envoy).
    #[test]
    fn envoy_accepts_the_l7_hop() {
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
        let cert =
            WorkloadCert::issue_with(&ca.cert, &ca.key, "spiffe://cluster.local/ns/bench/sa/wp")
                .unwrap();
        let identity = cert.write(dir.path()).unwrap();
        let path = dir.path().join("envoy.json");
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&hop(&identity, &ca.cert)).unwrap(),
        )
        .unwrap();
        let out = std::process::Command::new(&envoy)
            .args(["--mode", "validate", "-c"])
            .arg(&path)
            .args(super::super::flags())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "envoy --mode validate: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
