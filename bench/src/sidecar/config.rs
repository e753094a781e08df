//! The pieces every Envoy bootstrap of the bench shares: addresses, static clusters, mutual TLS
//! on each side (TLS 1.3 only, the pod's certificate, the mesh CA as the only trust anchor,
//! SPIFFE URI SANs checked), and the admin/overload envelope.

use std::path::Path;

use marrow_tests::workload_cert::CertFiles;
use serde_json::{Value, json};

use super::ADMIN_PORT;

pub(super) const UPSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
pub(super) const DOWNSTREAM_TLS: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
const DOWNSTREAM_CONNECTIONS: &str = "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";
/// The bound on each Envoy's downstream connections: far above what the bench opens (Istio
/// sets one too; without it Envoy warns at start).
const MAX_DOWNSTREAM_CONNECTIONS: u64 = 1_000_000;

/// A `socket_address`.
pub fn address(ip: &str, port: u16) -> Value {
    json!({ "socket_address": { "address": ip, "port_value": port } })
}

/// Istio's circuit-breaker thresholds on every cluster it generates: `math.MaxUint32` for
/// connections, pending requests, requests and retries (istio/istio,
/// pilot/pkg/networking/core/cluster_builder.go, `getDefaultCircuitBreakerThresholds`).
/// Envoy's own defaults (1,024 connections) would refuse the memory figures' 10,000 held
/// connections, which Istio's sidecars carry.
const ISTIO_THRESHOLD: u64 = u32::MAX as u64;

/// A `STATIC` cluster of one endpoint, with Istio's circuit-breaker thresholds.
pub fn static_cluster(name: &str, ip: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "circuit_breakers": { "thresholds": [{
            "max_connections": ISTIO_THRESHOLD,
            "max_pending_requests": ISTIO_THRESHOLD,
            "max_requests": ISTIO_THRESHOLD,
            "max_retries": ISTIO_THRESHOLD,
        }]},
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{ "lb_endpoints": [{ "endpoint": { "address": address(ip, port) } }] }],
        },
    })
}

/// The client side of mutual TLS: present `identity`, require the peer's SPIFFE ID `peer_id`.
pub fn upstream_mtls(identity: &CertFiles, ca_cert: &Path, peer_id: &str) -> Value {
    tls_socket(
        UPSTREAM_TLS,
        json!({ "common_tls_context": common(identity, ca_cert, json!({ "exact": peer_id })) }),
    )
}

/// The server side of mutual TLS: present `identity`, require a client certificate with any
/// SPIFFE ID of `trust_domain` (as Istio's inbound does).
pub fn downstream_mtls(identity: &CertFiles, ca_cert: &Path, trust_domain: &str) -> Value {
    let prefix = format!("spiffe://{trust_domain}/");
    tls_socket(
        DOWNSTREAM_TLS,
        json!({
            "require_client_certificate": true,
            "common_tls_context": common(identity, ca_cert, json!({ "prefix": prefix })),
        }),
    )
}

/// A static bootstrap of `listeners` and `clusters`, admin on 127.0.0.1, and the downstream
/// connection bound.
pub fn bootstrap(listeners: Vec<Value>, clusters: Vec<Value>) -> Value {
    json!({
        "admin": { "address": address("127.0.0.1", ADMIN_PORT) },
        "static_resources": { "listeners": listeners, "clusters": clusters },
        "overload_manager": { "resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": DOWNSTREAM_CONNECTIONS,
                "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
            },
        }]},
    })
}

fn common(identity: &CertFiles, ca_cert: &Path, san_matcher: Value) -> Value {
    let file = |path: &Path| json!({ "filename": path.display().to_string() });
    json!({
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [{
            "certificate_chain": file(&identity.cert),
            "private_key": file(&identity.key),
        }],
        "validation_context": {
            "trusted_ca": file(ca_cert),
            "match_typed_subject_alt_names": [
                { "san_type": "URI", "matcher": san_matcher }
            ],
        },
    })
}

fn tls_socket(kind: &str, mut context: Value) -> Value {
    context["@type"] = json!(kind);
    json!({ "name": "envoy.transport_sockets.tls", "typed_config": context })
}
