//! Istio's ztunnel as a data plane under test (`--ztunnel PATH`, the binary the user built
//! from Istio's source with its `testing` feature; see BENCHMARKS.md): one ztunnel per node
//! in its in-pod mode, as Istio ambient runs it, with us in the parts of istio-cni and istiod.
//!
//! - Each node's ztunnel runs in the node's network namespace and cgroup (as node-proxy), with
//!   no control plane: its fake CA signs the workload certificates (`FAKE_CA`), and a local
//!   file lists the workloads (`LOCAL_XDS_PATH`, [`config`]).
//! - Each pod is wired by the plain CNI chain (not enrolled with marrow); we then install
//!   istio-cni's in-pod redirection in its namespace ([`rules`]) and hand ztunnel the pod's
//!   namespace over ZDS ([`zds`]), as istio-cni's node agent does; ztunnel binds its listeners
//!   (15001, 15006, 15008) inside the pod and answers.
//! - Every connection between pods of different nodes is then HBONE (mTLS + HTTP/2 CONNECT)
//!   between the client pod's and the server pod's ztunnel listeners; a bed checks it on
//!   ztunnel's Prometheus counters (port 15020) as the hbone bed checks marrow's.
//!
//! Everything lives in the bed's nodes: the processes in the node cgroups (and killed on
//! drop), sockets and files in the node's temporary directory, rules in the pods' namespaces.
//! A pod handed to ztunnel is not taken back (no ZDS `del`): ztunnel keeps its namespace open
//! until the bed, and so ztunnel, goes.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use marrow_tests::metrics::count;
use marrow_tests::process::{kill_and_reap, tail};
use marrow_tests::{Node, Pod};

mod config;
mod rules;
pub mod zds;

#[cfg(test)]
mod tests;

use config::NodeSlots;
use zds::ZdsServer;

/// How long ztunnel may take to connect to our ZDS socket and report ready.
const READY: Duration = Duration::from_secs(30);
/// How long ztunnel may take to ack a pod (its listeners bound in the pod).
const ACK: Duration = Duration::from_secs(10);
/// How often readiness is polled.
const POLL: Duration = Duration::from_millis(50);
/// ztunnel's Prometheus port and readiness port (on every address of the node namespace).
const STATS_PORT: u16 = 15020;
const READINESS_PORT: u16 = 15021;
/// Lines of a ztunnel log shown when it fails.
const LOG_TAIL: usize = 40;

/// What a reader of the cross-node table must know when ztunnel ran.
pub const NOTES: [&str; 2] = [
    "ztunnel: Istio's ztunnel (the binary given with --ztunnel) in its in-pod mode, one per \
     node: each pod carries istio-cni's in-pod iptables rules and its namespace is handed to \
     ztunnel over ZDS, ztunnel's fake CA signs, a local file lists the workloads. A new \
     connection is a new HTTP/2 stream on a pooled mTLS connection, as through hbone. \
     Data-plane CPU and peak RSS: both nodes' ztunnels summed.",
    "hbone/ztunnel is marrow's figure divided by ztunnel's (below 1 is fewer: better for \
     latency, CPU and memory, worse for rates and throughput).",
];

/// BENCHMARKS.md's paragraph on the ztunnel set-up, when it ran.
pub const DOCUMENT: &str = "The ztunnel set-up runs Istio's ztunnel, which the bench never \
builds: build it from Istio's source outside this repository, with its `testing` feature (its \
fake CA is what signs here), and pass the binary with `--ztunnel`:\n\n\
```sh\n\
git clone https://github.com/istio/ztunnel && cd ztunnel\n\
# Only crates.io is needed: drop the git dependency of the unused tls-boring feature.\n\
sed -i '/^boring-rustls-provider = /d; s/, \"boring-rustls-provider\\/fips-only\"//' Cargo.toml\n\
sudo apt-get install protobuf-compiler   # build.rs runs protoc\n\
cargo build --release --features testing\n\
cd - && cargo xtask bench --ztunnel ztunnel/out/rust/release/ztunnel   # its .cargo/config.toml sets the target dir\n\
```\n\n\
Each node runs one ztunnel in its in-pod mode (Istio ambient's), in the node's network \
namespace and cgroup, with no istiod: `FAKE_CA=true`, `XDS_ADDRESS=` (off) and \
`LOCAL_XDS_PATH` naming a file that lists the workloads (each node's first 64 pod addresses, \
HBONE, one service account per node, since ztunnel reads the file once, before the pods \
exist), `RUST_LOG=info` (its access log on, as node-proxy's), worker threads at its default. \
The pods are wired by the same plain CNI chain as direct-x; each then gets istio-cni's \
in-pod iptables rules and policy route, and its network namespace is handed to its node's \
ztunnel over ZDS (our own server of the protocol, in the bench), as istio-cni's node agent \
does. A bed fails unless both ztunnels counted mutual-TLS connections (reporter source on node \
1, destination on node 2) and nothing else.\n";

/// The ztunnel binary given with `--ztunnel`.
static BINARY: OnceLock<PathBuf> = OnceLock::new();

/// Records the ztunnel binary (`--ztunnel PATH`), after checking it is a file; once per run.
pub fn set_binary(path: &Path) -> anyhow::Result<()> {
    let path = path
        .canonicalize()
        .with_context(|| format!("--ztunnel {}", path.display()))?;
    if !path.is_file() {
        bail!("--ztunnel {}: not a file", path.display());
    }
    BINARY
        .set(path)
        .map_err(|_| anyhow::anyhow!("the ztunnel binary was already set"))
}

/// The ztunnel binary, when `--ztunnel` was given.
pub fn binary() -> Option<&'static Path> {
    BINARY.get().map(PathBuf::as_path)
}

/// What the ztunnels counted (`istio_tcp_connections_opened_total`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Opened {
    /// Every reporter and policy, both nodes.
    pub all: u64,
    /// `reporter="source"`, `connection_security_policy="mutual_tls"`, the client node's.
    pub mtls_source: u64,
    /// `reporter="destination"`, `connection_security_policy="mutual_tls"`, the server node's.
    pub mtls_destination: u64,
}

/// The ztunnels of a bed, the client node's first.
pub struct Ztunnels {
    nodes: Vec<Ztunnel>,
}

/// One node's ztunnel. Field order is drop order: the process before its socket.
struct Ztunnel {
    child: Child,
    zds: ZdsServer,
    slots: NodeSlots,
    node: Node,
    log: PathBuf,
}

impl Ztunnels {
    /// Starts `binary` on each node of `nodes` (a node with the service account of its pods),
    /// every one with a local config listing all nodes' workloads, and waits until each has
    /// connected to its ZDS socket and reports ready.
    pub fn start(binary: &Path, nodes: &[(&Node, &str)], namespace: &str) -> anyhow::Result<Self> {
        let slots: Vec<NodeSlots> = nodes
            .iter()
            .map(|(node, account)| NodeSlots {
                node: node.name().to_owned(),
                index: node.index(),
                namespace: namespace.to_owned(),
                service_account: (*account).to_owned(),
            })
            .collect();
        let config = serde_json::to_string_pretty(&config::local_config(&slots))?;
        let mut started = Vec::new();
        for ((node, _), slots) in nodes.iter().zip(slots) {
            started.push(Ztunnel::spawn(binary, node, slots, &config)?);
        }
        for ztunnel in &mut started {
            ztunnel.wait_ready().with_context(|| {
                format!(
                    "starting ztunnel on node {}; log tail:\n{}",
                    ztunnel.node.name(),
                    tail(&ztunnel.log, LOG_TAIL)
                )
            })?;
        }
        Ok(Ztunnels { nodes: started })
    }

    /// Hands `pod` to its node's ztunnel: istio-cni's rules in its namespace, then ZDS `add`,
    /// acked once ztunnel's listeners are bound in it.
    pub fn enroll(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let Some(ztunnel) = self
            .nodes
            .iter_mut()
            .find(|z| z.node.name() == pod.node().name())
        else {
            bail!("no ztunnel runs on node {}", pod.node().name());
        };
        let ip = pod.ipv4();
        let name = ztunnel.slots.name_of(ip).with_context(|| {
            format!(
                "pod {} got {ip}, not one of the {} addresses ztunnel's local config lists",
                pod.name(),
                config::SLOTS
            )
        })?;
        rules::install(pod)?;
        let netns = pod.netns().open();
        let info = zds::proto::WorkloadInfo {
            name: name.clone(),
            namespace: ztunnel.slots.namespace.clone(),
            service_account: ztunnel.slots.service_account.clone(),
        };
        let uid = ztunnel.slots.uid_of(&name);
        ztunnel
            .zds
            .add(&uid, info, netns.as_fd(), ACK)
            .with_context(|| format!("handing pod {} ({ip}) to ztunnel", pod.name()))
    }

    /// The ztunnels' process IDs, the client node's first.
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.iter().map(|z| z.child.id()).collect()
    }

    /// What the ztunnels counted so far.
    pub fn opened(&self) -> anyhow::Result<Opened> {
        const OPENED: &str = "istio_tcp_connections_opened_total";
        let mut texts = Vec::new();
        for ztunnel in &self.nodes {
            let response = ztunnel
                .node
                .http_get(STATS_PORT, "/metrics")
                .context("reading ztunnel's metrics")?;
            if response.status != 200 {
                bail!("ztunnel's GET /metrics answered {}", response.status);
            }
            texts.push(response.body);
        }
        let mtls = |text: &str, reporter| {
            count(
                text,
                OPENED,
                &[
                    ("reporter", reporter),
                    ("connection_security_policy", "mutual_tls"),
                ],
            )
        };
        let first = texts.first().map_or("", String::as_str);
        let last = texts.last().map_or("", String::as_str);
        Ok(Opened {
            all: texts.iter().map(|t| count(t, OPENED, &[])).sum(),
            mtls_source: mtls(first, "source"),
            mtls_destination: mtls(last, "destination"),
        })
    }

    /// Fails when a ztunnel has exited (a crash mid-run must fail the bench, not skew it).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for ztunnel in &mut self.nodes {
            ztunnel.check_alive()?;
        }
        Ok(())
    }

    /// Lines the ztunnels logged at warn or error level: how many, and the first.
    pub fn problems(&self) -> Option<(usize, String)> {
        let mut problems = self.nodes.iter().flat_map(|z| {
            std::fs::read_to_string(&z.log)
                .unwrap_or_default()
                .lines()
                .filter(|l| is_problem(l))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        let first = problems.next()?;
        Some((problems.count() + 1, first))
    }
}

impl Ztunnel {
    /// Writes the node's files, listens on its ZDS socket and starts ztunnel on `node`.
    fn spawn(
        binary: &Path,
        node: &Node,
        slots: NodeSlots,
        config: &str,
    ) -> anyhow::Result<Ztunnel> {
        let dir = node.temp_dir();
        let config_path = dir.join("ztunnel-local.json");
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let zds = ZdsServer::bind(&dir.join("ztunnel-zds.sock"))?;
        let log = node.log_dir().join("ztunnel.log");
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = node
            .command(binary)
            .env("RUST_LOG", "info")
            // In-pod ("shared") mode, its default: pods come over ZDS.
            .env("INPOD_UDS", zds.path())
            .env("LOCAL_XDS_PATH", &config_path)
            // No istiod: an empty address turns the xDS client off, the fake CA signs.
            .env("XDS_ADDRESS", "")
            .env("FAKE_CA", "true")
            .env("NODE_NAME", node.name())
            // The pods, and istio-cni's rules here, are IPv4 only.
            .env("IPV6_ENABLED", "false")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Ztunnel {
            child,
            zds,
            slots,
            node: node.clone(),
            log,
        })
    }

    /// Waits for ztunnel to connect over ZDS (and take the empty snapshot), then for its
    /// readiness endpoint to answer 200.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY;
        self.zds.accept(READY)?;
        loop {
            self.check_alive()?;
            let ready = self
                .node
                .http_get(READINESS_PORT, "/healthz/ready")
                .is_ok_and(|r| r.status == 200);
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("ztunnel did not report ready within {READY:?}");
            }
            std::thread::sleep(POLL);
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "ztunnel on node {} exited ({status}); log tail:\n{}",
                self.node.name(),
                tail(&self.log, LOG_TAIL)
            );
        }
        Ok(())
    }
}

impl Drop for Ztunnel {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Whether a ztunnel log line reports a problem: its level field (tab-separated, lowercase)
/// is `warn` or `error`.
fn is_problem(line: &str) -> bool {
    let level = line.split('\t').nth(1).unwrap_or_default();
    level == "warn" || level == "error"
}
