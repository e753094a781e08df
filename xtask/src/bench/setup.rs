//! The set-ups the bench compares, and the test bed each one builds: a node (network namespace,
//! cgroup, real CNI chain), the data plane under test, and a client and a server pod.
//!
//! Only the data plane differs between set-ups; the topology, CNI chain, load tools and their
//! settings are the same. A new set-up (cross-node HBONE, an Envoy sidecar baseline) is a new
//! [`SetUp`] variant and a branch in [`Bed::new`] / [`Bed::pod_pair`]: the figures only see a
//! client pod, the server's addresses and the processes whose CPU and memory are the mesh's.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use marrow_tests::{Node, Pod, PodProcess, Proxy, binaries};

/// Port of the server pod's echo server (`testpod serve`): connection rate, ping-pong, hold.
pub const ECHO_PORT: u16 = 8080;
/// Port of the server pod's sink (`testpod serve --sink`): bulk throughput.
pub const SINK_PORT: u16 = 8081;
/// How long the proxy may take to load its eBPF programs and report ready.
const PROXY_READY: Duration = Duration::from_secs(30);
/// How long a server may take to report that it listens.
const SERVER_READY: Duration = Duration::from_secs(10);
/// Ephemeral ports of every bench pod, the same in every set-up (a Kubernetes "safe" sysctl),
/// with `tcp_tw_reuse=1`: the default 28,232 ports all sit in TIME_WAIT after ~3 s of closing
/// ~10,000 connections a second to one server, after which `connect()` fails or crawls.
/// The range stays above 32767, outside the node proxy's source ports for the connections that
/// keep the client's address (`--inbound-source-ports`, default 1024-32767), as on real nodes.
const PORT_RANGE: &str = "32768 65535";

/// A data-plane set-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetUp {
    /// The baseline: pods wired by the plain CNI chain, no node proxy on the node.
    Direct,
    /// Both pods enrolled (redirect-cni in the chain): the client's outbound and the server's
    /// inbound connections go through the node proxy, as plain TCP on one node.
    Marrow,
}

impl SetUp {
    /// Every set-up, the baseline first.
    pub const ALL: [SetUp; 2] = [SetUp::Direct, SetUp::Marrow];
    /// What the others are compared with.
    pub const BASELINE: SetUp = SetUp::Direct;

    /// Short name: table column, JSON key, node name.
    pub fn name(self) -> &'static str {
        match self {
            SetUp::Direct => "direct",
            SetUp::Marrow => "marrow",
        }
    }

    /// One line on what it is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            SetUp::Direct => {
                "two pods on one node, plain CNI chain (bridge + host-local), no proxy"
            }
            SetUp::Marrow => {
                "two enrolled pods on one node (+ redirect-cni): client outbound and server \
                 inbound through node-proxy, plain TCP"
            }
        }
    }

    /// Whether a node proxy runs and the pods are enrolled with it.
    fn meshed(self) -> bool {
        self == SetUp::Marrow
    }
}

/// A client and a server pod, the server's echo and sink running. Field order is drop order.
pub struct PodPair {
    _servers: [PodProcess; 2],
    server: Pod,
    client: Pod,
}

impl PodPair {
    /// The pod the load generators run in.
    pub fn client(&self) -> &Pod {
        &self.client
    }

    /// The server's echo address.
    pub fn echo(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.server.ipv4()), ECHO_PORT)
    }

    /// The server's sink address.
    pub fn sink(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.server.ipv4()), SINK_PORT)
    }
}

/// One set-up, built: its node and, for a mesh, its data plane. Dropping it removes everything
/// (processes via the cgroups, pods via CNI DEL, namespaces, pins, temporary files).
pub struct Bed {
    setup: SetUp,
    // Field order is drop order: the proxy before the node it lives in.
    proxy: Option<Proxy>,
    node: Node,
    pairs: u32,
}

impl Bed {
    /// Builds `setup` on a fresh node named `name` (unique within the run; a crashed earlier
    /// run's leftovers of the same name are removed first).
    pub fn new(setup: SetUp, name: &str) -> anyhow::Result<Bed> {
        let node = Node::new(name);
        let proxy = if setup.meshed() {
            let mut proxy = node.start_proxy();
            proxy
                .wait_ready(PROXY_READY)
                .context("starting the node proxy")?;
            Some(proxy)
        } else {
            None
        };
        Ok(Bed {
            setup,
            proxy,
            node,
            pairs: 0,
        })
    }

    /// The set-up it runs.
    pub fn setup(&self) -> SetUp {
        self.setup
    }

    /// A fresh client and server pod (new network namespaces: no TIME_WAIT from earlier runs),
    /// servers listening.
    pub fn pod_pair(&mut self) -> anyhow::Result<PodPair> {
        self.pairs += 1;
        let n = self.pairs;
        let enrolled = self.setup.meshed();
        let client = self.node.add_pod(&format!("client{n}"), "bench", enrolled);
        let server = self.node.add_pod(&format!("server{n}"), "bench", enrolled);
        for pod in [&client, &server] {
            pod.netns()
                .sysctl("net.ipv4.ip_local_port_range", PORT_RANGE);
            pod.netns().sysctl("net.ipv4.tcp_tw_reuse", "1");
        }
        let servers = [
            serve(&server, &["serve", "--port", &ECHO_PORT.to_string()])?,
            serve(
                &server,
                &["serve", "--port", &SINK_PORT.to_string(), "--sink"],
            )?,
        ];
        Ok(PodPair {
            _servers: servers,
            server,
            client,
        })
    }

    /// Adds an (idle) pod, enrolled when the set-up is a mesh.
    pub fn add_pod(&self, name: &str) -> Pod {
        self.node.add_pod(name, "bench", self.setup.meshed())
    }

    /// The processes whose CPU time is the data plane's (none for the baseline).
    pub fn data_plane_pids(&self) -> Vec<u32> {
        self.proxy.iter().filter_map(Proxy::pid).collect()
    }

    /// The node proxy's process id, for a mesh set-up.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().and_then(Proxy::pid)
    }

    /// Lines of the proxy's log at WARN or ERROR level or with a failure flag
    /// (`response_flags`): how many, and the first (a mesh that drops connections under load
    /// says why here).
    pub fn proxy_problems(&self) -> Option<(usize, String)> {
        let log = self.proxy.as_ref()?.log();
        let mut problems = log.lines().map(str::to_owned).filter(|l| {
            l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("response_flags")
        });
        let first = problems.next()?;
        Some((problems.count() + 1, first))
    }

    /// Fails when the proxy has exited (a crash mid-run must fail the bench, not skew it).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(proxy) = self.proxy.as_mut()
            && let Some(status) = proxy.try_wait()
        {
            anyhow::bail!(
                "node-proxy exited ({status}); log tail:\n{}",
                tail(&proxy.log(), 40)
            );
        }
        Ok(())
    }
}

/// Starts `testpod args…` in `pod` and waits until it prints `listening`.
fn serve(pod: &Pod, args: &[&str]) -> anyhow::Result<PodProcess> {
    let server = pod.spawn(binaries::testpod(), args);
    let deadline = Instant::now() + SERVER_READY;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match server.next_line(left) {
            Some(line) if line.starts_with("listening") => return Ok(server),
            Some(_) => {}
            None => break,
        }
    }
    anyhow::bail!(
        "`testpod {}` in pod {} did not start listening; stderr:\n{}",
        args.join(" "),
        pod.name(),
        server.log()
    )
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
