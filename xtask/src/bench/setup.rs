//! The set-ups the bench compares, and the test bed each one builds: one node or two linked
//! nodes (network namespaces, cgroups, real CNI chain), the data plane under test, and client
//! and server pods.
//!
//! Only the data plane differs between the set-ups of a [`Topology`]; the topology, CNI chain,
//! load tools and their settings are the same. A new set-up (an Envoy sidecar baseline) is a
//! new [`SetUp`] variant and a branch in [`Bed::new`]: the figures only see a client pod, the
//! server's addresses and the processes whose CPU and memory are the mesh's.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use marrow_tests::mesh::{apply_state, mesh_proxy_options, wait_config_generation};
use marrow_tests::{ClusterState, MeshCa, Node, Pod, PodProcess, Proxy, binaries, link_nodes};

pub use super::topology::{SetUp, Topology};

/// Port of the server pod's echo server (`testpod serve`): connection rate, ping-pong, hold.
pub const ECHO_PORT: u16 = 8080;
/// Port of the server pod's sink (`testpod serve --sink`): bulk throughput.
pub const SINK_PORT: u16 = 8081;
/// The Kubernetes namespace of every bench pod (in the ambient mesh in an HBONE bed).
const NAMESPACE: &str = "bench";
/// How long a proxy may take to load its eBPF programs, report ready and apply its state file.
const PROXY_READY: Duration = Duration::from_secs(30);
/// How long a server may take to report that it listens.
const SERVER_READY: Duration = Duration::from_secs(10);
/// Ephemeral ports of every bench pod, the same in every set-up (a Kubernetes "safe" sysctl),
/// with `tcp_tw_reuse=1`: the default 28,232 ports all sit in TIME_WAIT after ~3 s of closing
/// ~10,000 connections a second to one server, after which `connect()` fails or crawls.
/// The range stays above 32767, outside the node proxy's source ports for the connections that
/// keep the client's address (`--inbound-source-ports`, default 1024-32767), as on real nodes.
const PORT_RANGE: &str = "32768 65535";

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

/// The mesh of an HBONE bed: its CA, the cluster state both proxies are given, and each
/// proxy's copy of the state file (in the order of [`Bed::proxies`]).
struct Mesh {
    state: ClusterState,
    files: Vec<PathBuf>,
    _ca: MeshCa,
}

/// What the proxies of a meshed bed counted (`istio_tcp_connections_opened_total` and
/// `marrow_hbone_connections_total`): proof that the bench's connections went through them,
/// and in an HBONE bed that they were mutual TLS.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counted {
    /// Connections opened, every reporter and policy, all proxies.
    pub opened: u64,
    /// Opened with `connection_security_policy="mutual_tls"`, reporter `source` (node 1).
    pub mtls_source: u64,
    /// Opened with `connection_security_policy="mutual_tls"`, reporter `destination` (node 2).
    pub mtls_destination: u64,
    /// mTLS + HTTP/2 connections node 1's proxy dialled (the HBONE pool's connections).
    pub tunnels: u64,
}

/// One set-up, built: its node or nodes and, for a mesh, its data plane. Dropping it removes
/// everything (processes via the cgroups, pods via CNI DEL, namespaces, pins, temporary files).
pub struct Bed {
    setup: SetUp,
    // Field order is drop order: the proxies before the nodes they live in, the CA last.
    /// The client node's proxy first, then the server node's (when it has its own).
    proxies: Vec<Proxy>,
    client_node: Node,
    /// The client node again in a same-node set-up.
    server_node: Node,
    mesh: Option<Mesh>,
    pairs: u32,
}

impl Bed {
    /// Builds `setup` on fresh nodes named `name` (one node) or `name-1` and `name-2` (two,
    /// linked); `name` is unique within the run, and a crashed earlier run's leftovers of the
    /// same name are removed first.
    pub fn new(setup: SetUp, name: &str) -> anyhow::Result<Bed> {
        let (client_node, server_node) = if setup.topology() == Topology::CrossNode {
            let (a, b) = (
                Node::new(&format!("{name}-1")),
                Node::new(&format!("{name}-2")),
            );
            link_nodes(&a, &b);
            (a, b)
        } else {
            let node = Node::new(name);
            (node.clone(), node)
        };
        let mut proxies = Vec::new();
        let mut mesh = None;
        match setup {
            SetUp::Direct | SetUp::DirectX => {}
            SetUp::Marrow => {
                let mut proxy = client_node.start_proxy();
                proxy
                    .wait_ready(PROXY_READY)
                    .context("starting the node proxy")?;
                proxies.push(proxy);
            }
            SetUp::Hbone => {
                let ca = MeshCa::create(name);
                let state = ClusterState::new().ambient_namespace(NAMESPACE);
                let mut files = Vec::new();
                for node in [&client_node, &server_node] {
                    let file = node.temp_dir().join("cluster.yaml");
                    state.write(&file);
                    let mut proxy = node.start_proxy_with(mesh_proxy_options(&ca, &file));
                    proxy
                        .wait_ready(PROXY_READY)
                        .with_context(|| format!("starting the proxy of node {}", node.name()))?;
                    wait_config_generation(&proxy, 1, PROXY_READY);
                    proxies.push(proxy);
                    files.push(file);
                }
                mesh = Some(Mesh {
                    state,
                    files,
                    _ca: ca,
                });
            }
        }
        Ok(Bed {
            setup,
            proxies,
            client_node,
            server_node,
            mesh,
            pairs: 0,
        })
    }

    /// The set-up it runs.
    pub fn setup(&self) -> SetUp {
        self.setup
    }

    /// A fresh client and server pod (new network namespaces: no TIME_WAIT from earlier runs),
    /// servers listening; in an HBONE bed both are in the proxies' state before this returns.
    pub fn pod_pair(&mut self) -> anyhow::Result<PodPair> {
        self.pairs += 1;
        let n = self.pairs;
        let enrolled = self.setup.enrolled();
        let client = self
            .client_node
            .add_pod(&format!("client{n}"), NAMESPACE, enrolled);
        let server = self
            .server_node
            .add_pod(&format!("server{n}"), NAMESPACE, enrolled);
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
        self.record(&[(&client, "bench-client"), (&server, "bench-server")]);
        Ok(PodPair {
            _servers: servers,
            server,
            client,
        })
    }

    /// Adds an (idle) pod on the client node, enrolled when the set-up is a mesh.
    pub fn add_pod(&mut self, name: &str) -> Pod {
        let pod = self
            .client_node
            .add_pod(name, NAMESPACE, self.setup.enrolled());
        self.record(&[(&pod, "bench-idle")]);
        pod
    }

    /// Adds pods (with their service accounts) to a mesh's cluster state and waits until every
    /// proxy has applied it; nothing for the other set-ups.
    fn record(&mut self, pods: &[(&Pod, &str)]) {
        let Some(mesh) = self.mesh.as_mut() else {
            return;
        };
        for (pod, service_account) in pods {
            mesh.state = std::mem::take(&mut mesh.state).pod(pod, service_account);
        }
        for (proxy, file) in self.proxies.iter().zip(&mesh.files) {
            apply_state(proxy, file, &mesh.state);
        }
    }

    /// The processes whose CPU time is the data plane's: every proxy of the bed (none for a
    /// baseline).
    pub fn data_plane_pids(&self) -> Vec<u32> {
        self.proxies.iter().filter_map(Proxy::pid).collect()
    }

    /// The client node's proxy's process id, for a mesh set-up.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxies.first().and_then(Proxy::pid)
    }

    /// What the proxies counted so far, for a mesh set-up.
    pub fn counted(&self) -> anyhow::Result<Option<Counted>> {
        use marrow_tests::metrics::count;
        const OPENED: &str = "istio_tcp_connections_opened_total";
        if self.proxies.is_empty() {
            return Ok(None);
        }
        let mut texts = Vec::new();
        for proxy in &self.proxies {
            let response = proxy
                .http_get(marrow_tests::proxy::METRICS_PORT, "/metrics")
                .context("reading a proxy's metrics")?;
            if response.status != 200 {
                anyhow::bail!("GET /metrics answered {}", response.status);
            }
            texts.push(response.body);
        }
        let mtls = |text: &str, reporter| {
            let want = [
                ("reporter", reporter),
                ("connection_security_policy", "mutual_tls"),
            ];
            count(text, OPENED, &want)
        };
        let first = texts.first().map_or("", String::as_str);
        let last = texts.last().map_or("", String::as_str);
        Ok(Some(Counted {
            opened: texts.iter().map(|t| count(t, OPENED, &[])).sum(),
            mtls_source: mtls(first, "source"),
            mtls_destination: mtls(last, "destination"),
            tunnels: count(
                first,
                "marrow_hbone_connections_total",
                &[("direction", "outbound")],
            ),
        }))
    }

    /// Lines of the proxies' logs at WARN or ERROR level or with a failure flag
    /// (`response_flags`): how many, and the first (a mesh that drops connections under load
    /// says why here).
    pub fn proxy_problems(&self) -> Option<(usize, String)> {
        let mut problems = self.proxies.iter().flat_map(|proxy| {
            proxy
                .log()
                .lines()
                .filter(|l| {
                    l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("response_flags")
                })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        });
        let first = problems.next()?;
        Some((problems.count() + 1, first))
    }

    /// Fails when a proxy has exited (a crash mid-run must fail the bench, not skew it).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for proxy in &mut self.proxies {
            if let Some(status) = proxy.try_wait() {
                anyhow::bail!(
                    "node-proxy exited ({status}); log tail:\n{}",
                    tail(&proxy.log(), 40)
                );
            }
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
