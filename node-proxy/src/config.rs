//! The node proxy's configuration: defaults, overridden by environment (`MARROW_*`), overridden
//! by flags; then validated, with errors naming the setting, the value and what is expected.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Errors of [`Config::validate`] and cgroup discovery.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value that cannot work.
    #[error("setting {setting} = {value:?}: {expected}")]
    Invalid {
        /// Setting name (the flag).
        setting: &'static str,
        /// The offending value.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// No cgroup2 mount was found and none was configured.
    #[error("no cgroup2 mount in /proc/self/mountinfo; pass --cgroup")]
    NoCgroup2,
}

/// Everything the `run` command needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The compiled eBPF object.
    pub ebpf_object: PathBuf,
    /// This proxy's bpffs directory (pins).
    pub bpffs_dir: PathBuf,
    /// The cgroup2 directory to attach the cgroup programs to; `None` = the cgroup2 root.
    pub cgroup: Option<PathBuf>,
    /// Where enrollment records are kept across restarts.
    pub state_dir: PathBuf,
    /// The enrollment socket redirect-cni talks to.
    pub cni_socket: PathBuf,
    /// `/metrics` listen address.
    pub metrics_addr: SocketAddr,
    /// `/healthz/ready` listen address.
    pub readiness_addr: SocketAddr,
    /// Admin API listen address (workloads, policies, certificates, connections, logging, explain); node-local by default.
    pub admin_addr: SocketAddr,
    /// Bound on connecting to an upstream or the app.
    pub connect_timeout: Duration,
    /// Runtime worker threads.
    pub worker_threads: usize,
    /// Source ports of the proxy's source-preserving connections to apps (inclusive).
    pub inbound_source_ports: (u16, u16),
    /// Kubernetes YAML of workloads (Namespaces, Pods); with `ca_dir`, turns HBONE on.
    pub state_file: Option<PathBuf>,
    /// Watch the Kubernetes API server (in-cluster config, or `KUBECONFIG`) instead of a state
    /// file; with `ca_dir`, turns HBONE on.
    pub kube: bool,
    /// How often the state file is checked for changes.
    pub state_poll: Duration,
    /// A local mesh CA (`ca-cert.pem`, `ca-key.pem`) that signs workload certificates.
    pub ca_dir: Option<PathBuf>,
    /// A CA speaking Istio's protocol (istiod, istio-csr, `node-proxy ca serve`), `https://…`;
    /// instead of `ca_dir`: no CA key on the node.
    pub ca_address: Option<String>,
    /// With `ca_address`: the PEM root bundle (the CA's serving certificate, the issued chains
    /// and peers must lead to one of them), re-read every `ca_roots_poll`.
    pub ca_roots: Option<PathBuf>,
    /// With `ca_address`: the node proxy's projected ServiceAccount token (audience `istio-ca`).
    pub ca_token_file: PathBuf,
    /// With `ca_address`: the name the CA's serving certificate must carry (default: the
    /// address's host).
    pub ca_server_name: Option<String>,
    /// How often the root bundle file is checked for changes (a root rotation).
    pub ca_roots_poll: Duration,
    /// With `ca_address`: extra gRPC metadata `(name, value)` on every call (istiod's
    /// `ClusterID` in a multicluster mesh).
    pub ca_headers: Vec<(String, String)>,
    /// The mesh's SPIFFE trust domain.
    pub trust_domain: String,
    /// Policies in this namespace apply mesh-wide (Istio's root namespace).
    pub root_namespace: String,
    /// This node's name: the proxy takes identities only of pods the state places here.
    pub node_name: Option<String>,
    /// Bound on an HBONE TLS handshake.
    pub handshake_timeout: Duration,
    /// The key exchanges HBONE's TLS offers and accepts: the post-quantum hybrid X25519MLKEM768
    /// preferred with classic fallbacks (default), or X25519MLKEM768 only (ztunnel's
    /// `COMPLIANCE_POLICY=pqc`).
    pub tls_key_exchange: crate::tls::KeyExchange,
    /// Lifetime of workload certificates from the local CA (renewed at half-life).
    pub cert_ttl: Duration,
    /// On SIGTERM or after handing over to a new proxy: how long open connections may go on
    /// before they are closed and the process exits. Keep it below the pod's
    /// `terminationGracePeriodSeconds`.
    pub drain_timeout: Duration,
    /// The cluster the state's workloads are in, as Istio names it (`CLUSTER_ID`): the
    /// `source_cluster`/`destination_cluster` metric labels.
    pub cluster_id: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ebpf_object: PathBuf::from("/usr/lib/marrow/marrow-ebpf.o"),
            bpffs_dir: PathBuf::from("/sys/fs/bpf/marrow"),
            cgroup: None,
            state_dir: PathBuf::from("/var/run/marrow"),
            cni_socket: PathBuf::from(redirect_cni::protocol::DEFAULT_SOCKET_PATH),
            metrics_addr: SocketAddr::from(([0, 0, 0, 0], 15020)),
            readiness_addr: SocketAddr::from(([0, 0, 0, 0], 15021)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 15000)),
            connect_timeout: Duration::from_secs(10),
            worker_threads: 2,
            inbound_source_ports: (
                *crate::proxy::source_port::DEFAULT_RANGE.start(),
                *crate::proxy::source_port::DEFAULT_RANGE.end(),
            ),
            state_file: None,
            kube: false,
            state_poll: Duration::from_secs(1),
            ca_dir: None,
            ca_address: None,
            ca_roots: None,
            ca_token_file: PathBuf::from("/var/run/secrets/tokens/istio-token"),
            ca_server_name: None,
            ca_roots_poll: Duration::from_secs(5),
            ca_headers: Vec::new(),
            trust_domain: crate::identity::DEFAULT_TRUST_DOMAIN.to_owned(),
            root_namespace: crate::policy::DEFAULT_ROOT_NAMESPACE.to_owned(),
            node_name: None,
            handshake_timeout: Duration::from_secs(10),
            tls_key_exchange: crate::tls::KeyExchange::default(),
            cert_ttl: Duration::from_secs(24 * 60 * 60),
            drain_timeout: Duration::from_secs(30),
            cluster_id: crate::metrics::DEFAULT_CLUSTER_ID.to_owned(),
        }
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
            if crate::identity::istio_ca::metadata(name, value).is_err() {
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
        if crate::identity::TrustDomain::new(&self.trust_domain).is_err() {
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
    ConfigError::Invalid {
        setting,
        value: value.to_string(),
        expected,
    }
}

/// Parses `NAME=VALUE` (an extra header for the CA).
pub fn parse_header(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))?;
    Ok((name.trim().to_owned(), value.trim().to_owned()))
}

/// Parses `--tls-key-exchange`: `prefer-post-quantum` or `post-quantum-only`.
pub fn parse_key_exchange(text: &str) -> Result<crate::tls::KeyExchange, String> {
    text.trim().parse()
}

/// Parses a port range `LO-HI`.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?} is not LO-HI"))?;
    let port = |p: &str| p.trim().parse::<u16>().map_err(|e| format!("{p:?}: {e}"));
    Ok((port(lo)?, port(hi)?))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut c = Config {
            worker_threads: 0,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--worker-threads")
        );
        c = Config {
            bpffs_dir: "rel".into(),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--bpffs-dir")
        );
        c = Config {
            readiness_addr: Config::default().metrics_addr,
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--readiness-addr")
        );
        c = Config {
            cluster_id: String::new(),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--cluster-id")
        );
        c = Config {
            cni_socket: PathBuf::from(format!("/{}", "x".repeat(120))),
            ..Config::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("--cni-socket")
        );
    }

    #[test]
    fn the_certificate_source_is_one_complete_ca() {
        let remote = Config {
            kube: true,
            ca_address: Some("https://marrow-ca.marrow-system.svc:15012".into()),
            ca_roots: Some("/var/run/secrets/marrow-ca/root-cert.pem".into()),
            ..Config::default()
        };
        remote.validate().unwrap();
        let cases: [(Config, &str, &str); 7] = [
            (
                Config {
                    ca_headers: vec![("authorization".into(), "Bearer x".into())],
                    ..remote.clone()
                },
                "--ca-header",
                "NAME=VALUE",
            ),
            (
                Config {
                    ca_dir: Some("/etc/ca".into()),
                    ..remote.clone()
                },
                "--ca-dir",
                "not both",
            ),
            (
                Config {
                    ca_roots: None,
                    ..remote.clone()
                },
                "--ca-address",
                "--ca-roots",
            ),
            (
                Config {
                    ca_address: Some("http://ca:15012".into()),
                    ..remote.clone()
                },
                "--ca-address",
                "https://",
            ),
            (
                Config {
                    ca_address: None,
                    kube: false,
                    ..remote.clone()
                },
                "--ca-roots",
                "--ca-address",
            ),
            (
                Config {
                    kube: false,
                    ..remote.clone()
                },
                "--ca-address",
                "state source",
            ),
            (
                Config {
                    ca_roots_poll: Duration::ZERO,
                    ..remote.clone()
                },
                "--ca-roots-poll-ms",
                "10..",
            ),
        ];
        for (config, setting, expected) in cases {
            let error = config.validate().unwrap_err().to_string();
            assert!(
                error.contains(setting) && error.contains(expected),
                "{error}"
            );
        }
    }

    #[test]
    fn the_key_exchange_setting_takes_two_values() {
        use crate::tls::KeyExchange;
        assert_eq!(
            Config::default().tls_key_exchange,
            KeyExchange::PreferPostQuantum
        );
        assert_eq!(
            parse_key_exchange("post-quantum-only"),
            Ok(KeyExchange::PostQuantumOnly)
        );
        assert_eq!(
            parse_key_exchange(" prefer-post-quantum "),
            Ok(KeyExchange::PreferPostQuantum)
        );
        for bad in ["", "pqc", "Post-Quantum-Only", "x25519"] {
            let error = parse_key_exchange(bad).unwrap_err();
            assert!(
                error.contains("prefer-post-quantum or post-quantum-only"),
                "{bad:?}: {error}"
            );
        }
    }

    #[test]
    fn finds_cgroup2_on_hybrid_hosts() {
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("garbage"), None);
    }
}
