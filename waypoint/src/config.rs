//! The waypoint's settings: each declared once ([`Config`], read through `marrow_settings`'
//! layers: defaults, `--config-file`, `MARROW_*`, flags), then validated into what the program
//! runs with ([`Config::identity`], [`Limits`]).
//!
//! The Gateway's namespace and name and the pod's service account arrive as Istio's waypoint
//! pod gets them, from the downward API (`metadata.namespace`, the
//! `gateway.networking.k8s.io/gateway-name` label, `spec.serviceAccountName`), as the
//! `MARROW_GATEWAY_*` and `MARROW_SERVICE_ACCOUNT` variables of the Deployment.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use marrow_mesh::identity::{SpiffeId, TrustDomain};
use marrow_settings::parse;

use crate::WaypointError;

/// The HBONE listener: every address, port 15008 (Istio's waypoint listener `mesh`).
pub const DEFAULT_HBONE_ADDR: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    marrow_mesh::hbone::HBONE_PORT,
);

marrow_mesh::program_settings! {
    /// Everything `waypoint` needs (with the state and certificate source's rows every program
    /// shares, [`marrow_mesh::program_settings!`]).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Config {
        /// Address of the HBONE listener (mTLS, HTTP/2 CONNECT).
        hbone_addr: SocketAddr = DEFAULT_HBONE_ADDR,
            ("hbone-addr", "MARROW_HBONE_ADDR", parse::ADDR),
        /// `/healthz/ready`.
        readiness_addr: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15021),
            ("readiness-addr", "MARROW_READINESS_ADDR", parse::ADDR),
        /// `/metrics` (Prometheus).
        metrics_addr: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15020),
            ("metrics-addr", "MARROW_METRICS_ADDR", parse::ADDR),
        /// The admin API, on localhost only.
        admin_addr: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 15000),
            ("admin-addr", "MARROW_ADMIN_ADDR", parse::ADDR),
        /// Namespace of the Gateway this waypoint serves (the pod's namespace).
        gateway_namespace: String = "default".to_owned(),
            ("gateway-namespace", "MARROW_GATEWAY_NAMESPACE", parse::TEXT),
        /// Name of the Gateway this waypoint serves.
        gateway_name: String = "waypoint".to_owned(),
            ("gateway-name", "MARROW_GATEWAY_NAME", parse::TEXT),
        /// The pod's service account (its identity); the Gateway's name when unset, as
        /// istiod's deployment controller names it.
        service_account: Option<String> = None,
            ("service-account", "MARROW_SERVICE_ACCOUNT", parse::SOME_TEXT),
        /// The cluster the workloads are in, as Istio names it (CLUSTER_ID).
        cluster_id: String = marrow_mesh::telemetry::DEFAULT_CLUSTER_ID.to_owned(),
            ("cluster-id", "MARROW_CLUSTER_ID", parse::TEXT),
        /// The OpenTelemetry collector spans are exported to over OTLP/gRPC, `host:port`;
        /// none turns tracing off. Used only while no Istio Telemetry (nor MeshConfig
        /// `defaultProviders.tracing`) applies to this waypoint: where one does, its
        /// `opentelemetry` provider and sampling are in force, as in Istio, whose only knob it is.
        tracing_collector: Option<String> = None,
            ("tracing-collector", "MARROW_TRACING_COLLECTOR", parse::SOME_TEXT),
        /// Percentage of requests traced when the caller decided nothing (Istio's
        /// `randomSamplingPercentage`, default 1), 0 to 100 in steps of 0.01; with
        /// --tracing-collector, while no Istio Telemetry applies.
        tracing_sampling: Percent = Percent::from_hundredths(100),
            ("tracing-sampling", "MARROW_TRACING_SAMPLING", PERCENT),
        /// Bound on a TCP connect to an endpoint's node proxy, in milliseconds.
        connect_timeout: Duration = Duration::from_secs(10),
            ("connect-timeout-ms", "MARROW_CONNECT_TIMEOUT_MS", parse::MILLIS),
        /// Bound on a TLS and HTTP/2 handshake, either side, in milliseconds.
        handshake_timeout: Duration = Duration::from_secs(10),
            ("handshake-timeout-ms", "MARROW_HANDSHAKE_TIMEOUT_MS", parse::MILLIS),
        /// Bound on reading an HTTP/1 request's headers from their first byte, in milliseconds
        /// (slowloris); answered 408, then the connection closes.
        header_read_timeout: Duration = Duration::from_secs(10),
            ("header-read-timeout-ms", "MARROW_HEADER_READ_TIMEOUT_MS", parse::MILLIS),
        /// How long an HTTP/1 client connection with no request under way is kept open, in
        /// seconds (Envoy's `idle_timeout`, 1 h by default); 0 keeps it open until the client
        /// closes it.
        idle_timeout: Duration = Duration::from_secs(60 * 60),
            ("idle-timeout-secs", "MARROW_IDLE_TIMEOUT_SECS", parse::SECS),
        /// Largest request body, in bytes: a larger declared `content-length` is answered 413
        /// before anything goes upstream, a longer streamed body 413 while the upstream has
        /// not answered (else the request is reset). 0 (the default) is no limit: bodies are
        /// streamed, as Envoy does.
        max_request_body_bytes: usize = 0,
            ("max-request-body-bytes", "MARROW_MAX_REQUEST_BODY_BYTES", parse::COUNT),
        /// How long to wait for a client's first bytes on a port of unspecified protocol, in
        /// milliseconds; server-first protocols send nothing, and are relayed at L4 after it.
        sniff_timeout: Duration = Duration::from_secs(5),
            ("sniff-timeout-ms", "MARROW_SNIFF_TIMEOUT_MS", parse::MILLIS),
        /// Most bytes read to decide whether a port of unspecified protocol speaks HTTP.
        sniff_bytes: usize = 8 * 1024,
            ("sniff-bytes", "MARROW_SNIFF_BYTES", parse::COUNT),
        /// Largest request head (request line and headers), in bytes (Envoy's default 60 KiB).
        max_header_bytes: usize = 60 * 1024,
            ("max-header-bytes", "MARROW_MAX_HEADER_BYTES", parse::COUNT),
        /// Most request headers (Envoy's default 100).
        max_headers: usize = 100,
            ("max-headers", "MARROW_MAX_HEADERS", parse::COUNT),
        /// Most concurrent HTTP/2 streams per client connection.
        h2_max_concurrent_streams: usize = 100,
            ("h2-max-concurrent-streams", "MARROW_H2_MAX_CONCURRENT_STREAMS", parse::COUNT),
        /// Streams a client may reset before they were served, per connection, before the
        /// connection is closed (HTTP/2 rapid reset).
        h2_max_pending_resets: usize = 20,
            ("h2-max-pending-resets", "MARROW_H2_MAX_PENDING_RESETS", parse::COUNT),
        /// Seconds open connections may go on after SIGTERM before they are closed.
        drain_timeout: Duration = Duration::from_secs(30),
            ("drain-timeout-secs", "MARROW_DRAIN_TIMEOUT_SECS", parse::SECS),
        /// Runtime worker threads.
        worker_threads: usize = 2,
            ("worker-threads", "MARROW_WORKER_THREADS", parse::COUNT),
    }
}

/// A percentage, 0 to 100, kept in hundredths of a percent (so settings compare exactly).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Percent(u32);

impl Percent {
    /// `hundredths` / 100 percent.
    pub const fn from_hundredths(hundredths: u32) -> Self {
        Self(hundredths)
    }

    /// As a number of percent.
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 100.0
    }
}

/// A percentage from 0 to 100, e.g. `1`, `0.5`, `100`.
const PERCENT: marrow_settings::Parser<Percent> = marrow_settings::Parser {
    shape: marrow_settings::Shape::Value,
    value_name: "PERCENT",
    expected: "a percentage from 0 to 100",
    parse: |v| {
        let text = parse::one(v)?;
        let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
        if !(0.0..=100.0).contains(&value) {
            return Err(format!("{value} is outside 0..=100"));
        }
        Ok(Percent((value * 100.0).round() as u32))
    },
    show: |p| Some(format!("{}", p.as_f64())),
};

/// The bounds the HTTP side enforces on clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// TCP connect to an endpoint's node proxy.
    pub connect_timeout: Duration,
    /// TLS and HTTP/2 handshakes.
    pub handshake_timeout: Duration,
    /// Reading an HTTP/1 request head, from its first byte.
    pub header_read_timeout: Duration,
    /// An HTTP/1 connection with no request under way; `None` never.
    pub idle_timeout: Option<Duration>,
    /// Request body size; `None` is no limit.
    pub max_request_body_bytes: Option<u64>,
    /// Waiting for a client's first bytes when sniffing.
    pub sniff_timeout: Duration,
    /// Bytes read when sniffing.
    pub sniff_bytes: usize,
    /// Request head size (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Request header count (HTTP/1).
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per client connection.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 streams reset before being served, per connection.
    pub h2_max_pending_resets: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Config::default().limits()
    }
}

impl Config {
    /// Checks the values can work; a bad one is named with its value and what is expected.
    ///
    /// # Errors
    /// [`WaypointError::Setting`] naming the first bad setting.
    pub fn validate(&self) -> Result<(), WaypointError> {
        self.identity()?;
        let bad = |setting: &'static str, value: String, expected: &'static str| {
            Err(WaypointError::Setting {
                setting,
                value,
                expected,
            })
        };
        // hyper refuses a read buffer under 8 KiB; 1 MiB is far above any honest head.
        if !(8 * 1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return bad(
                "--max-header-bytes",
                self.max_header_bytes.to_string(),
                "8192..=1048576",
            );
        }
        if !(1..=1000).contains(&self.max_headers) {
            return bad("--max-headers", self.max_headers.to_string(), "1..=1000");
        }
        if !(1..=10_000).contains(&self.h2_max_concurrent_streams) {
            return bad(
                "--h2-max-concurrent-streams",
                self.h2_max_concurrent_streams.to_string(),
                "1..=10000",
            );
        }
        if !(16..=64 * 1024).contains(&self.sniff_bytes) {
            return bad("--sniff-bytes", self.sniff_bytes.to_string(), "16..=65536");
        }
        if !(1..=64).contains(&self.worker_threads) {
            return bad(
                "--worker-threads",
                self.worker_threads.to_string(),
                "1..=64",
            );
        }
        for (setting, value) in [
            ("--connect-timeout-ms", self.connect_timeout),
            ("--handshake-timeout-ms", self.handshake_timeout),
            ("--header-read-timeout-ms", self.header_read_timeout),
            ("--sniff-timeout-ms", self.sniff_timeout),
        ] {
            if value.is_zero() {
                return bad(setting, "0".to_owned(), "a positive duration");
            }
        }
        match (&self.state_file, self.kube) {
            (Some(path), true) => {
                return bad(
                    "--state-file",
                    path.display().to_string(),
                    "either --state-file or --kube, not both",
                );
            }
            (None, false) => {
                return bad("--state-file", String::new(), "a state file, or --kube");
            }
            _ => {}
        }
        match (&self.ca_dir, &self.ca_address, &self.ca_roots) {
            (Some(_), None, _) | (None, Some(_), Some(_)) => {}
            (Some(dir), Some(_), _) => {
                return bad(
                    "--ca-dir",
                    dir.display().to_string(),
                    "either --ca-dir or --ca-address, not both",
                );
            }
            (None, Some(address), None) => {
                return bad(
                    "--ca-roots",
                    address.clone(),
                    "the CA's roots (PEM) with --ca-address",
                );
            }
            (None, None, _) => {
                return bad("--ca-dir", String::new(), "a local CA, or --ca-address");
            }
        }
        Ok(())
    }

    /// The trust domain and the waypoint's SPIFFE ID, `spiffe://<td>/ns/<gw-ns>/sa/<sa>`.
    ///
    /// # Errors
    /// When the trust domain, namespace or service account is malformed.
    pub fn identity(&self) -> Result<(TrustDomain, SpiffeId), WaypointError> {
        let trust_domain =
            TrustDomain::new(&self.trust_domain).map_err(|_| WaypointError::Setting {
                setting: "--trust-domain",
                value: self.trust_domain.clone(),
                expected: "a SPIFFE trust domain (a-z 0-9 . - _)",
            })?;
        let account = self
            .service_account
            .as_deref()
            .unwrap_or(&self.gateway_name);
        let id = SpiffeId::new(&trust_domain, &self.gateway_namespace, account).map_err(|_| {
            WaypointError::Setting {
                setting: "--gateway-namespace/--service-account",
                value: format!("{}/{account}", self.gateway_namespace),
                expected: "a Kubernetes namespace and service account name",
            }
        })?;
        Ok((trust_domain, id))
    }

    /// The tracer's configuration: the collector, the sampling percentage, and Istio's
    /// names for this proxy (`service.name` `<gateway>.<namespace>`, the canonical tags).
    pub fn tracing(&self) -> marrow_mesh::trace::TracerConfig {
        marrow_mesh::trace::TracerConfig {
            collector: self.tracing_collector.clone(),
            sampling_percent: self.tracing_sampling.as_f64(),
            service_name: format!("{}.{}", self.gateway_name, self.gateway_namespace),
            node_id: format!("waypoint~{}.{}", self.gateway_name, self.gateway_namespace),
            tags: vec![
                (
                    "istio.canonical_service".to_owned(),
                    self.gateway_name.clone(),
                ),
                ("istio.namespace".to_owned(), self.gateway_namespace.clone()),
                ("istio.cluster_id".to_owned(), self.cluster_id.clone()),
            ],
            ..marrow_mesh::trace::TracerConfig::default()
        }
    }

    /// The bounds on clients.
    pub fn limits(&self) -> Limits {
        Limits {
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: (!self.idle_timeout.is_zero()).then_some(self.idle_timeout),
            max_request_body_bytes: (self.max_request_body_bytes != 0)
                .then(|| u64::try_from(self.max_request_body_bytes).unwrap_or(u64::MAX)),
            sniff_timeout: self.sniff_timeout,
            sniff_bytes: self.sniff_bytes,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            h2_max_concurrent_streams: u32::try_from(self.h2_max_concurrent_streams)
                .unwrap_or(u32::MAX),
            h2_max_pending_resets: self.h2_max_pending_resets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runnable() -> Config {
        Config {
            state_file: Some("/etc/marrow/state.yaml".into()),
            ca_dir: Some("/etc/marrow-ca".into()),
            gateway_namespace: "shop".into(),
            gateway_name: "shop-waypoint".into(),
            ..Config::default()
        }
    }

    fn refused(config: &Config) -> String {
        config.validate().unwrap_err().to_string()
    }

    #[test]
    fn the_identity_is_the_gateways_service_account() {
        let (td, id) = runnable().identity().unwrap();
        assert_eq!(td.as_str(), "cluster.local");
        assert_eq!(
            id.as_str(),
            "spiffe://cluster.local/ns/shop/sa/shop-waypoint"
        );
        let own_account = Config {
            service_account: Some("custom".into()),
            ..runnable()
        };
        assert_eq!(
            own_account.identity().unwrap().1.as_str(),
            "spiffe://cluster.local/ns/shop/sa/custom"
        );
        assert!(runnable().validate().is_ok());
    }

    #[test]
    fn zero_turns_the_idle_timeout_and_the_body_limit_off() {
        let limits = runnable().limits();
        assert_eq!(limits.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(limits.max_request_body_bytes, None, "no limit by default");
        let limits = Config {
            idle_timeout: Duration::ZERO,
            max_request_body_bytes: 1024,
            ..runnable()
        }
        .limits();
        assert_eq!(limits.idle_timeout, None);
        assert_eq!(limits.max_request_body_bytes, Some(1024));
        assert!(
            Config {
                idle_timeout: Duration::ZERO,
                ..runnable()
            }
            .validate()
            .is_ok()
        );
    }

    #[test]
    fn a_bad_value_names_its_setting() {
        let cases: Vec<(Config, &str)> = vec![
            (
                Config {
                    gateway_namespace: "Not_A_Namespace".into(),
                    ..runnable()
                },
                "--gateway-namespace",
            ),
            (
                Config {
                    trust_domain: "Bad Domain".into(),
                    ..runnable()
                },
                "--trust-domain",
            ),
            (
                Config {
                    max_header_bytes: 100,
                    ..runnable()
                },
                "--max-header-bytes",
            ),
            (
                Config {
                    sniff_timeout: Duration::ZERO,
                    ..runnable()
                },
                "--sniff-timeout-ms",
            ),
            (
                Config {
                    state_file: None,
                    ..runnable()
                },
                "--state-file",
            ),
            (
                Config {
                    kube: true,
                    ..runnable()
                },
                "--state-file",
            ),
            (
                Config {
                    ca_dir: None,
                    ca_address: Some("https://marrow-ca:15012".into()),
                    ..runnable()
                },
                "--ca-roots",
            ),
            (
                Config {
                    ca_dir: None,
                    ..runnable()
                },
                "--ca-dir",
            ),
        ];
        for (config, setting) in cases {
            let error = refused(&config);
            assert!(error.contains(setting), "{setting}: {error}");
        }
    }
}
