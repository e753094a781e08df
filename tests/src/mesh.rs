//! The mesh around the node proxies of a test: a CA made by `node-proxy ca create`, SPIFFE IDs,
//! the flags that give a proxy its state file and CA, and waiting until a proxy has applied a
//! version of its state file (`marrow_config_generation`).
//!
//! The flags (the contract with `node-proxy run`):
//!
//! ```text
//! --state-file <path> --state-poll-ms 100 --ca-dir <dir> --trust-domain <td>
//! ```
//!
//! A state file must exist when the proxy starts; every later version must differ in content
//! from the previous one, or the proxy has nothing to apply (and a wait for it times out).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::binaries::node_proxy;
use crate::metrics;
use crate::names::{PREFIX, sanitize};
use crate::process::tail;
use crate::proxy::{METRICS_PORT, Proxy, ProxyOptions};
use crate::state_file::ClusterState;

/// The default trust domain.
pub const TRUST_DOMAIN: &str = "cluster.local";
/// The gauge a proxy increments each time it applies a version of its state file.
pub const CONFIG_GENERATION: &str = "marrow_config_generation";
/// How often test proxies poll their state file.
pub const STATE_POLL_MS: u64 = 100;
/// The HBONE port of every pod in the mesh.
pub const HBONE_PORT: u16 = 15008;
/// Default bound of [`wait_config_generation`] and [`apply_state`].
pub const STATE_APPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// A mesh-wide STRICT PeerAuthentication (in Istio's root namespace), as state-file YAML.
pub const STRICT_MESH_WIDE: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
";
/// Lines of the proxy log quoted when a wait fails.
const LOG_TAIL_LINES: usize = 60;

/// `spiffe://cluster.local/ns/<namespace>/sa/<service_account>`.
pub fn spiffe_id(namespace: &str, service_account: &str) -> String {
    spiffe_id_in(TRUST_DOMAIN, namespace, service_account)
}

/// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
pub fn spiffe_id_in(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// A mesh CA in a temporary directory (`ca-cert.pem`, `ca-key.pem`), removed on drop.
#[derive(Debug)]
pub struct MeshCa {
    dir: tempfile::TempDir,
    trust_domain: String,
}

impl MeshCa {
    /// Runs `node-proxy ca create` for the default trust domain into a new directory named
    /// after `name` (usually the test's).
    ///
    /// # Panics
    /// When the command fails or leaves no CA files (the message has its output).
    pub fn create(name: &str) -> MeshCa {
        MeshCa::create_with(name, TRUST_DOMAIN, &node_proxy())
    }

    /// Runs `<binary> ca create --dir <dir> --trust-domain <trust_domain>`.
    ///
    /// # Panics
    /// As [`MeshCa::create`].
    pub fn create_with(name: &str, trust_domain: &str, binary: &Path) -> MeshCa {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-ca-", sanitize(name)))
            .tempdir()
            .expect("cannot create the CA's temporary directory");
        let out = Command::new(binary)
            .args(["ca", "create", "--dir"])
            .arg(dir.path())
            .args(["--trust-domain", trust_domain])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", binary.display()));
        let ca = MeshCa {
            dir,
            trust_domain: trust_domain.to_owned(),
        };
        assert!(
            out.status.success() && ca.cert_path().is_file() && ca.key_path().is_file(),
            "`node-proxy ca create --dir {}` failed ({}):\nstdout: {}\nstderr: {}",
            ca.dir().display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ca
    }

    /// The directory given to `--ca-dir`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `ca-cert.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.dir().join("ca-cert.pem")
    }

    /// `ca-key.pem`.
    pub fn key_path(&self) -> PathBuf {
        self.dir().join("ca-key.pem")
    }

    /// The trust domain it was made for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The SPIFFE ID of `namespace`/`service_account` in this CA's trust domain.
    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        spiffe_id_in(&self.trust_domain, namespace, service_account)
    }
}

/// The arguments that make a proxy part of the mesh: its state file (polled every
/// [`STATE_POLL_MS`]) and the CA.
pub fn mesh_args(ca: &MeshCa, state_file: &Path) -> Vec<String> {
    vec![
        "--state-file".to_owned(),
        state_file.display().to_string(),
        "--state-poll-ms".to_owned(),
        STATE_POLL_MS.to_string(),
        "--ca-dir".to_owned(),
        ca.dir().display().to_string(),
        "--trust-domain".to_owned(),
        ca.trust_domain().to_owned(),
    ]
}

/// [`ProxyOptions`] with [`mesh_args`] appended to the standard flags.
pub fn mesh_proxy_options(ca: &MeshCa, state_file: &Path) -> ProxyOptions {
    ProxyOptions {
        extra_args: mesh_args(ca, state_file),
        ..ProxyOptions::default()
    }
}

/// The proxy's `marrow_config_generation`, or `None` while its metrics cannot be read or lack
/// the gauge.
pub fn config_generation(proxy: &Proxy) -> Option<u64> {
    let response = proxy.http_get(METRICS_PORT, "/metrics").ok()?;
    if response.status != 200 {
        return None;
    }
    let value = metrics::value(&response.body, CONFIG_GENERATION)?;
    (value.is_finite() && value >= 0.0).then(|| value.round() as u64)
}

/// Waits until the proxy's `marrow_config_generation` is at least `at_least`; returns it.
///
/// # Panics
/// After `timeout`, with the last value seen and the tail of the proxy's log.
pub fn wait_config_generation(proxy: &Proxy, at_least: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = config_generation(proxy);
        if let Some(generation) = seen.filter(|g| *g >= at_least) {
            return generation;
        }
        if Instant::now() >= deadline {
            panic!(
                "{CONFIG_GENERATION} did not reach {at_least} within {timeout:?} (last seen: \
                 {seen:?}); proxy log ({}) tail:\n{}",
                proxy.log_path().display(),
                tail(proxy.log_path(), LOG_TAIL_LINES)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Writes `state` to `path` (the proxy's `--state-file`) and waits until the proxy has applied
/// it: its generation passes the one it had before the write. Returns the new generation.
///
/// # Panics
/// When the proxy's metrics cannot be read before the write, or it does not apply the file in
/// [`STATE_APPLY_TIMEOUT`] (the message quotes its log).
pub fn apply_state(proxy: &Proxy, path: &Path, state: &ClusterState) -> u64 {
    apply_yaml(proxy, path, &state.to_yaml())
}

/// As [`apply_state`] for a whole state file's text (the state's documents and others after
/// them: Services, Gateways, policies).
///
/// # Panics
/// As [`apply_state`], and when the file cannot be written.
pub fn apply_yaml(proxy: &Proxy, path: &Path, yaml: &str) -> u64 {
    let before = config_generation(proxy).unwrap_or_else(|| {
        panic!(
            "cannot read {CONFIG_GENERATION} before writing {}; proxy log tail:\n{}",
            path.display(),
            tail(proxy.log_path(), LOG_TAIL_LINES)
        )
    });
    crate::state_file::write_atomic(path, yaml.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write the state file {}: {e}", path.display()));
    wait_config_generation(proxy, before + 1, STATE_APPLY_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            spiffe_id("shop", "web"),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(
            spiffe_id_in("example.org", "a", "b"),
            "spiffe://example.org/ns/a/sa/b"
        );
    }

    #[test]
    fn mesh_args_name_every_flag() {
        let dir = tempfile::tempdir().unwrap();
        let ca = MeshCa {
            dir,
            trust_domain: "example.org".to_owned(),
        };
        let args = mesh_args(&ca, Path::new("/tmp/x/cluster.yaml"));
        let pairs: Vec<(&str, &str)> = args
            .chunks(2)
            .map(|c| (c[0].as_str(), c[1].as_str()))
            .collect();
        assert_eq!(pairs[0], ("--state-file", "/tmp/x/cluster.yaml"));
        assert_eq!(pairs[1], ("--state-poll-ms", "100"));
        assert_eq!(pairs[2].0, "--ca-dir");
        assert_eq!(pairs[3], ("--trust-domain", "example.org"));
        assert_eq!(
            ca.spiffe_id("shop", "client"),
            "spiffe://example.org/ns/shop/sa/client"
        );
    }
}
