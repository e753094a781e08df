//! The node proxy's configuration (`node-proxy run`): each setting declared once below, with
//! its default, flag, `MARROW_*` variable and parser; read from the defaults, then a YAML
//! file (`--config-file`, `MARROW_CONFIG_FILE`), then the environment, then the flags
//! ([`marrow_settings`]); then [`Config::validate`]d, with errors naming the setting, the value and what
//! is expected.

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use marrow_mesh::tls::KeyExchange;
use marrow_settings::{Parser, SettingsError, Shape, parse};

/// Errors of reading and validating the configuration, and of cgroup discovery.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting is missing, malformed or cannot work (named with its layer and value).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// No cgroup2 mount was found and none was configured.
    #[error("no cgroup2 mount in /proc/self/mountinfo; pass --cgroup")]
    NoCgroup2,
}

marrow_mesh::program_settings! {
    /// Everything `node-proxy run` needs (with the state and certificate source's rows every
    /// program shares, [`marrow_mesh::program_settings!`]).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Config {
        /// The compiled eBPF object.
        ebpf_object: PathBuf = PathBuf::from("/usr/lib/marrow/marrow-ebpf.o"),
            ("ebpf-object", "MARROW_EBPF_OBJECT", parse::PATH),
        /// This proxy's bpffs directory for its pins.
        bpffs_dir: PathBuf = PathBuf::from("/sys/fs/bpf/marrow"),
            ("bpffs-dir", "MARROW_BPFFS_DIR", parse::PATH),
        /// The cgroup2 directory to attach the cgroup programs to (default: the cgroup2 root).
        cgroup: Option<PathBuf> = None,
            ("cgroup", "MARROW_CGROUP", parse::SOME_PATH),
        /// Where enrollment records are kept across restarts.
        state_dir: PathBuf = PathBuf::from("/var/run/marrow"),
            ("state-dir", "MARROW_STATE_DIR", parse::PATH),
        /// The enrollment socket redirect-cni talks to.
        cni_socket: PathBuf = PathBuf::from(marrow_wire::enrollment::DEFAULT_SOCKET_PATH),
            ("cni-socket", "MARROW_CNI_SOCKET", parse::PATH),
        /// `/metrics` listen address.
        metrics_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 15020)),
            ("metrics-addr", "MARROW_METRICS_ADDR", parse::ADDR),
        /// `/healthz/ready` listen address.
        readiness_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 15021)),
            ("readiness-addr", "MARROW_READINESS_ADDR", parse::ADDR),
        /// Admin API listen address (see `node-proxy admin`); node-local by default.
        admin_addr: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 15000)),
            ("admin-addr", "MARROW_ADMIN_ADDR", parse::ADDR),
        /// Bound on connecting to an upstream or the app, in milliseconds.
        connect_timeout: Duration = Duration::from_secs(10),
            ("connect-timeout-ms", "MARROW_CONNECT_TIMEOUT_MS", parse::MILLIS),
        /// Runtime worker threads.
        worker_threads: usize = 2,
            ("worker-threads", "MARROW_WORKER_THREADS", parse::COUNT),
        /// With --ca-address: an extra header NAME=VALUE on every call (repeatable; istiod's
        /// ClusterID in a multicluster mesh).
        ca_headers: Vec<(String, String)> = Vec::new(),
            ("ca-header", "MARROW_CA_HEADERS", parse::HEADERS),
        /// This node's name (Kubernetes: spec.nodeName of this DaemonSet pod): the proxy takes
        /// identities only of pods the state places here.
        node_name: Option<String> = None,
            ("node-name", "MARROW_NODE_NAME", parse::SOME_TEXT),
        /// Bound on an HBONE TLS handshake, in milliseconds.
        handshake_timeout: Duration = Duration::from_secs(10),
            ("handshake-timeout-ms", "MARROW_HANDSHAKE_TIMEOUT_MS", parse::MILLIS),
        /// HBONE TLS key exchange: prefer-post-quantum (X25519MLKEM768, then X25519, P-256,
        /// P-384) or post-quantum-only (X25519MLKEM768 alone, as ztunnel's
        /// COMPLIANCE_POLICY=pqc).
        tls_key_exchange: marrow_mesh::tls::KeyExchange = marrow_mesh::tls::KeyExchange::default(),
            ("tls-key-exchange", "MARROW_TLS_KEY_EXCHANGE", KEY_EXCHANGE),
        /// Source ports (LO-HI) of the proxy's connections to apps that keep the client's
        /// address.
        inbound_source_ports: (u16, u16) = (
            *crate::proxy::source_port::DEFAULT_RANGE.start(),
            *crate::proxy::source_port::DEFAULT_RANGE.end(),
        ),
            ("inbound-source-ports", "MARROW_INBOUND_SOURCE_PORTS", parse::PORT_RANGE),
        /// Relay plaintext TCP to TCP through a user-space buffer instead of splice(2) (the
        /// fallback, which is also taken when no pipe can be had).
        no_splice: bool = false,
            ("no-splice", "MARROW_NO_SPLICE", parse::SWITCH),
        /// The cluster the workloads are in, as Istio names it (CLUSTER_ID): the
        /// source_cluster/destination_cluster metric labels.
        cluster_id: String = marrow_mesh::telemetry::DEFAULT_CLUSTER_ID.to_owned(),
            ("cluster-id", "MARROW_CLUSTER_ID", parse::TEXT),
        /// Seconds open connections may go on after SIGTERM or a hand-over to a new proxy
        /// before they are closed; keep it below the pod's terminationGracePeriodSeconds.
        drain_timeout: Duration = Duration::from_secs(30),
            ("drain-timeout-secs", "MARROW_DRAIN_TIMEOUT_SECS", parse::SECS),
        /// Every outbound HBONE tunnel on a brand-new mTLS connection of its own, closed with
        /// it, instead of a stream on a pooled one (ztunnel's POOL_MAX_STREAMS_PER_CONNECTION=1):
        /// for measuring handshakes (the bench's hbone-unpooled), not for production.
        hbone_no_pool: bool = false,
            ("hbone-no-pool", "MARROW_HBONE_NO_POOL", parse::SWITCH),
    }
}

impl Config {
    /// Checks the certificate source: at most one CA, and the Istio CA's settings complete.
    fn validate_ca(&self) -> Result<(), ConfigError> {
        match (&self.ca_dir, &self.ca_address) {
            (Some(dir), Some(_)) => {
                return Err(invalid(
                    "--ca-dir",
                    dir.display(),
                    "either --ca-dir (a local CA) or --ca-address (a remote CA), not both",
                ));
            }
            (_, Some(address)) => {
                let url_ok = address
                    .strip_prefix("https://")
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
                if !url_ok {
                    return Err(invalid(
                        "--ca-address",
                        address,
                        "an https:// URL such as https://istiod.istio-system.svc:15012",
                    ));
                }
                if self.ca_roots.is_none() {
                    return Err(invalid(
                        "--ca-address",
                        address,
                        "--ca-roots with it (the PEM root bundle the CA's certificates chain to)",
                    ));
                }
            }
            (_, None) => {
                if let Some(roots) = &self.ca_roots {
                    return Err(invalid(
                        "--ca-roots",
                        roots.display(),
                        "--ca-address with it (the roots are those of a remote CA)",
                    ));
                }
            }
        }
        for (name, value) in &self.ca_headers {
            if marrow_mesh::identity::istio_ca::metadata(name, value).is_err() {
                return Err(invalid(
                    "--ca-header",
                    format!("{name}={value}"),
                    "NAME=VALUE: a header name (letters, digits, - _ .) other than \
                     authorization or grpc-*, and a visible-ASCII value",
                ));
            }
        }
        if let Some(name) = &self.ca_server_name
            && (name.is_empty() || name.contains(char::is_whitespace))
        {
            return Err(invalid("--ca-server-name", name, "a DNS name"));
        }
        if self.ca_roots_poll < Duration::from_millis(10)
            || self.ca_roots_poll > Duration::from_secs(3600)
        {
            return Err(invalid(
                "--ca-roots-poll-ms",
                self.ca_roots_poll.as_millis(),
                "10..=3600000",
            ));
        }
        Ok(())
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.bpffs_dir.is_absolute() {
            return Err(invalid(
                "--bpffs-dir",
                self.bpffs_dir.display(),
                "an absolute path on bpffs",
            ));
        }
        if !self.state_dir.is_absolute() {
            return Err(invalid(
                "--state-dir",
                self.state_dir.display(),
                "an absolute path",
            ));
        }
        if self.cni_socket.as_os_str().len() >= 108 {
            return Err(invalid(
                "--cni-socket",
                self.cni_socket.display(),
                "a path shorter than 108 bytes (sun_path)",
            ));
        }
        if self.admin_addr == self.metrics_addr || self.admin_addr == self.readiness_addr {
            return Err(invalid(
                "--admin-addr",
                self.admin_addr,
                "an address other than --metrics-addr and --readiness-addr",
            ));
        }
        if self.metrics_addr == self.readiness_addr {
            return Err(invalid(
                "--readiness-addr",
                self.readiness_addr,
                "an address other than --metrics-addr",
            ));
        }
        if self.connect_timeout.is_zero() || self.connect_timeout > Duration::from_secs(300) {
            return Err(invalid(
                "--connect-timeout-ms",
                self.connect_timeout.as_millis(),
                "1..=300000",
            ));
        }
        let (lo, hi) = self.inbound_source_ports;
        if lo < 1024 || hi < lo || hi - lo < 1023 {
            return Err(invalid(
                "--inbound-source-ports",
                format!("{lo}-{hi}"),
                "LO-HI with 1024 <= LO and at least 1024 ports, outside the clients' ephemeral range",
            ));
        }
        if self.kube && self.state_file.is_some() {
            return Err(invalid(
                "--kube",
                "true",
                "either --kube or --state-file, not both (one source of cluster state)",
            ));
        }
        self.validate_ca()?;
        let has_source = self.state_file.is_some() || self.kube;
        let has_ca = self.ca_dir.is_some() || self.ca_address.is_some();
        if self.kube && !has_ca {
            return Err(invalid(
                "--kube",
                "true",
                "--kube with --ca-dir or --ca-address (HBONE needs workloads and identities)",
            ));
        }
        if has_source != has_ca {
            let (setting, value) = match (&self.state_file, &self.ca_dir, &self.ca_address) {
                (Some(path), ..) => ("--state-file", path.display().to_string()),
                (None, Some(dir), _) => ("--ca-dir", dir.display().to_string()),
                (None, None, address) => ("--ca-address", address.clone().unwrap_or_default()),
            };
            return Err(invalid(
                setting,
                value,
                "a state source (--state-file or --kube) and a CA (--ca-dir or --ca-address) \
                 together (HBONE needs workloads and identities)",
            ));
        }
        if self.state_poll < Duration::from_millis(10) || self.state_poll > Duration::from_secs(600)
        {
            return Err(invalid(
                "--state-poll-ms",
                self.state_poll.as_millis(),
                "10..=600000",
            ));
        }
        if marrow_mesh::identity::TrustDomain::new(&self.trust_domain).is_err() {
            return Err(invalid(
                "--trust-domain",
                &self.trust_domain,
                "a SPIFFE trust domain such as cluster.local",
            ));
        }
        let ns = &self.root_namespace;
        let label_ok = !ns.is_empty()
            && ns.len() <= 63
            && ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !label_ok {
            return Err(invalid(
                "--root-namespace",
                ns,
                "a Kubernetes namespace name",
            ));
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > Duration::from_secs(120) {
            return Err(invalid(
                "--handshake-timeout-ms",
                self.handshake_timeout.as_millis(),
                "1..=120000",
            ));
        }
        if self.cert_ttl < Duration::from_secs(2)
            || self.cert_ttl > Duration::from_secs(366 * 86_400)
        {
            return Err(invalid(
                "--cert-ttl-secs",
                self.cert_ttl.as_secs(),
                "2..=31622400",
            ));
        }
        let id = &self.cluster_id;
        if id.is_empty() || id.len() > 253 || id.chars().any(char::is_control) {
            return Err(invalid(
                "--cluster-id",
                id,
                "a non-empty name of at most 253 characters, without control characters",
            ));
        }
        if self.drain_timeout > Duration::from_secs(24 * 60 * 60) {
            return Err(invalid(
                "--drain-timeout-secs",
                self.drain_timeout.as_secs(),
                "0..=86400",
            ));
        }
        if !(1..=64).contains(&self.worker_threads) {
            return Err(invalid("--worker-threads", self.worker_threads, "1..=64"));
        }
        Ok(())
    }

    /// The cgroup to attach to: the configured one, or the cgroup2 root.
    pub fn cgroup_or_root(&self) -> Result<PathBuf, ConfigError> {
        match &self.cgroup {
            Some(path) => Ok(path.clone()),
            None => std::fs::read_to_string("/proc/self/mountinfo")
                .ok()
                .and_then(|text| cgroup2_mount(&text))
                .ok_or(ConfigError::NoCgroup2),
        }
    }
}

fn invalid(
    setting: &'static str,
    value: impl std::fmt::Display,
    expected: &'static str,
) -> ConfigError {
    ConfigError::Settings(marrow_settings::invalid(setting, value, expected))
}

/// The first cgroup2 mount point in a mountinfo text (hybrid hosts mount it at
/// `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// HBONE's TLS key exchange.
pub const KEY_EXCHANGE: Parser<KeyExchange> = Parser {
    shape: Shape::Value,
    value_name: "POLICY",
    expected: "prefer-post-quantum or post-quantum-only",
    parse: |v| parse_key_exchange(parse::one(v)?),
    show: |k| Some(k.as_str().to_owned()),
};

/// Parses `--tls-key-exchange`: `prefer-post-quantum` or `post-quantum-only`.
///
/// # Errors
/// Any other text.
pub fn parse_key_exchange(text: &str) -> Result<KeyExchange, String> {
    text.trim().parse()
}
