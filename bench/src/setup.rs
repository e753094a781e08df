//! The set-ups the bench compares, and the test bed each one builds: one node or two linked
//! nodes (network namespaces, cgroups, real CNI chain), the data plane under test, and client
//! and server pods.
//!
//! Only the data plane differs between the set-ups of a [`Topology`]; the topology, CNI chain,
//! load tools and their settings are the same. The figures only see a client pod, the
//! addresses its load generators dial (the server's, or its own sidecar's on loopback) and the
//! processes whose CPU and memory are the data plane's: the bed's node proxies, and each pod's
//! sidecar Envoy, which lives with its pod ([`PodPair`], [`IdlePod`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use marrow_tests::mesh::{apply_state, apply_yaml, mesh_proxy_options, wait_config_generation};
use marrow_tests::workload_cert::WorkloadCert;
use marrow_tests::{ClusterState, MeshCa, Node, Pod, PodProcess, Proxy, binaries, link_nodes};

use super::sidecar::{Bootstrap, Route, Sidecar, TlsCounts};
pub use super::topology::{SetUp, Topology};
use super::ztunnel::{self, Ztunnels};

mod l7;
mod routes;
pub use l7::{L7Pair, RetryCount};

/// Port of the server pod's echo server (`testpod serve`): connection rate, ping-pong, hold.
pub const ECHO_PORT: u16 = 8080;
/// Port of the server pod's sink (`testpod serve --sink`): bulk throughput.
pub const SINK_PORT: u16 = 8081;
/// The Kubernetes namespace of every bench pod (in the ambient mesh in an HBONE bed).
const NAMESPACE: &str = "bench";
/// The app ports through the sidecars: the client dials 127.0.0.1:15001 for the echo and
/// 127.0.0.1:15002 for the sink; the server pod's Envoy takes mTLS on 15443 and 15444.
const SIDECAR_ROUTES: [Route; 2] = [
    Route {
        app: ECHO_PORT,
        outbound: 15001,
        inbound: 15443,
    },
    Route {
        app: SINK_PORT,
        outbound: 15002,
        inbound: 15444,
    },
];
/// Service accounts (SPIFFE IDs) of the client, server and idle pods.
const CLIENT_SA: &str = "bench-client";
const SERVER_SA: &str = "bench-server";
const IDLE_SA: &str = "bench-idle";
/// How long a proxy may take to load its eBPF programs, report ready and apply its state file.
const PROXY_READY: Duration = Duration::from_secs(30);
/// The node-proxy flag of [`SetUp::HboneUnpooled`]: one mTLS connection per tunnel.
const HBONE_NO_POOL: &str = "--hbone-no-pool";
/// How long a server may take to report that it listens.
const SERVER_READY: Duration = Duration::from_secs(10);
/// Ephemeral ports of every bench pod, the same in every set-up (a Kubernetes "safe" sysctl),
/// with `tcp_tw_reuse=1`: the default 28,232 ports all sit in TIME_WAIT after ~3 s of closing
/// ~10,000 connections a second to one server, after which `connect()` fails or crawls.
/// The range stays above 32767, outside the node proxy's source ports for the connections that
/// keep the client's address (`--inbound-source-ports`, default 1024-32767), as on real nodes.
const PORT_RANGE: &str = "32768 65535";

/// A client and a server pod, the server's echo and sink running, and in a sidecar bed each
/// pod's Envoy. Field order is drop order.
pub struct PodPair {
    _servers: [PodProcess; 2],
    /// The client's sidecar, then the server's (sidecar beds only).
    sidecars: Vec<Sidecar>,
    server: Pod,
    client: Pod,
    echo: SocketAddr,
    sink: SocketAddr,
}

impl PodPair {
    /// The pod the load generators run in.
    pub fn client(&self) -> &Pod {
        &self.client
    }

    /// What the client dials for the echo: the server's address, or its own sidecar's
    /// outbound listener.
    pub fn echo(&self) -> SocketAddr {
        self.echo
    }

    /// What the client dials for the sink (as [`PodPair::echo`]).
    pub fn sink(&self) -> SocketAddr {
        self.sink
    }

    /// The pair's sidecar Envoys, the client's first (none outside a sidecar bed).
    pub fn sidecar_pids(&self) -> Vec<u32> {
        self.sidecars.iter().map(Sidecar::pid).collect()
    }

    /// The client's sidecar Envoy, if any.
    pub fn client_sidecar_pid(&self) -> Option<u32> {
        self.sidecars.first().map(Sidecar::pid)
    }

    /// The server's sidecar Envoy, if any.
    pub fn server_sidecar_pid(&self) -> Option<u32> {
        self.sidecars.get(1).map(Sidecar::pid)
    }

    /// Fails when a sidecar has exited (a crash mid-run must fail the bench, not skew it).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        let pods = [&self.client, &self.server];
        for (sidecar, pod) in self.sidecars.iter_mut().zip(pods) {
            sidecar.check_alive(pod)?;
        }
        Ok(())
    }

    /// The TLS handshakes the client's sidecar completed as a client and the server's as a
    /// server; `None` outside a sidecar bed.
    pub fn sidecar_tls(&self) -> anyhow::Result<Option<(TlsCounts, TlsCounts)>> {
        let [client, server] = self.sidecars.as_slice() else {
            return Ok(None);
        };
        Ok(Some((
            client.stats(&self.client)?.tls(),
            server.stats(&self.server)?.tls(),
        )))
    }

    /// Warnings and errors the sidecars logged: how many, and the first.
    pub fn sidecar_problems(&self) -> Option<(usize, String)> {
        let found: Vec<(usize, String)> =
            self.sidecars.iter().filter_map(Sidecar::problems).collect();
        let first = found.first()?.1.clone();
        Some((found.iter().map(|(n, _)| n).sum(), first))
    }
}

/// An idle pod on the client node (enrolled in a marrow bed), with its Envoy in a sidecar
/// bed. Field order is drop order.
pub struct IdlePod {
    sidecar: Option<Sidecar>,
    _pod: Pod,
}

impl IdlePod {
    /// Its sidecar Envoy, if any.
    pub fn sidecar_pid(&self) -> Option<u32> {
        self.sidecar.as_ref().map(Sidecar::pid)
    }
}

/// What a sidecar bed gives each pod's Envoy: the binary and the mesh CA that issues the
/// pods' certificates.
struct Sidecars {
    envoy: PathBuf,
    ca: MeshCa,
}

/// The mesh of an HBONE bed: its CA, the cluster state both proxies are given, and each
/// proxy's copy of the state file (in the order of [`Bed::proxies`]).
struct Mesh {
    state: ClusterState,
    /// YAML documents written after the state's (a waypoint bed's Gateway and Services).
    extra: String,
    files: Vec<PathBuf>,
    ca: MeshCa,
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
    // Field order is drop order: the proxies before the nodes they live in, the CAs last.
    /// The client node's proxy first, then the server node's (when it has its own).
    proxies: Vec<Proxy>,
    /// A ztunnel bed's ztunnels (client node first).
    ztunnels: Option<Ztunnels>,
    client_node: Node,
    /// The client node again in a same-node set-up.
    server_node: Node,
    mesh: Option<Mesh>,
    sidecars: Option<Sidecars>,
    /// The latest pair's server pod: where idle pods' sidecars send their outbound listeners.
    peer: Option<Ipv4Addr>,
    pairs: u32,
    idle: u32,
}

impl Bed {
    /// Builds `setup` on fresh nodes named `name` (one node) or `name-1` and `name-2` (two,
    /// linked); `name` is unique within the run, and a crashed earlier run's leftovers of the
    /// same name are removed first. `envoy` is the sidecars' binary (needed by
    /// [`SetUp::Sidecars`] only).
    pub fn new(setup: SetUp, name: &str, envoy: Option<&Path>) -> anyhow::Result<Bed> {
        let (client_node, server_node) = if setup.topology() != Topology::SameNode {
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
        let mut sidecars = None;
        let mut ztunnels = None;
        match setup {
            SetUp::Direct | SetUp::DirectX | SetUp::L7Direct => {}
            SetUp::Ztunnel => {
                let binary =
                    ztunnel::binary().context("the ztunnel set-up needs --ztunnel PATH")?;
                let nodes = [(&client_node, CLIENT_SA), (&server_node, SERVER_SA)];
                ztunnels = Some(Ztunnels::start(binary, &nodes, NAMESPACE)?);
            }
            SetUp::Sidecars | SetUp::EnvoyL7 => {
                let envoy = envoy.context("the sidecars set-up needs Envoy")?;
                sidecars = Some(Sidecars {
                    envoy: envoy.to_owned(),
                    ca: MeshCa::create(name),
                });
            }
            SetUp::Marrow => {
                let mut proxy = client_node.start_proxy();
                proxy
                    .wait_ready(PROXY_READY)
                    .context("starting the node proxy")?;
                proxies.push(proxy);
            }
            SetUp::Hbone
            | SetUp::HboneUnpooled
            | SetUp::Waypoint
            | SetUp::WaypointRoute
            | SetUp::WaypointRoutes
            | SetUp::WaypointRetry => {
                let ca = MeshCa::create(name);
                let state = ClusterState::new().ambient_namespace(NAMESPACE);
                let mut files = Vec::new();
                for node in [&client_node, &server_node] {
                    let file = node.temp_dir().join("cluster.yaml");
                    state.write(&file);
                    let mut options = mesh_proxy_options(&ca, &file);
                    if setup == SetUp::HboneUnpooled {
                        options.extra_args.push(HBONE_NO_POOL.to_owned());
                    }
                    let mut proxy = node.start_proxy_with(options);
                    proxy
                        .wait_ready(PROXY_READY)
                        .with_context(|| format!("starting the proxy of node {}", node.name()))?;
                    wait_config_generation(&proxy, 1, PROXY_READY);
                    proxies.push(proxy);
                    files.push(file);
                }
                mesh = Some(Mesh {
                    state,
                    extra: String::new(),
                    files,
                    ca,
                });
            }
        }
        Ok(Bed {
            setup,
            proxies,
            ztunnels,
            client_node,
            server_node,
            mesh,
            sidecars,
            peer: None,
            pairs: 0,
            idle: 0,
        })
    }

    /// The set-up it runs.
    pub fn setup(&self) -> SetUp {
        self.setup
    }

    /// A fresh client and server pod (new network namespaces: no TIME_WAIT from earlier runs),
    /// servers listening; in an HBONE bed both are in the proxies' state, in a sidecar bed
    /// both Envoys are ready, before this returns.
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
        self.hand_to_ztunnel(&[&client, &server])?;
        let servers = [
            serve(&server, &["serve", "--port", &ECHO_PORT.to_string()])?,
            serve(
                &server,
                &["serve", "--port", &SINK_PORT.to_string(), "--sink"],
            )?,
        ];
        self.record(&[(&client, CLIENT_SA), (&server, SERVER_SA)]);
        let direct = |port| SocketAddr::new(IpAddr::V4(server.ipv4()), port);
        let (mut echo, mut sink) = (direct(ECHO_PORT), direct(SINK_PORT));
        let mut sidecars = Vec::new();
        if self.sidecars.is_some() {
            sidecars.push(self.start_sidecar(&client, CLIENT_SA, server.ipv4(), SERVER_SA)?);
            sidecars.push(self.start_sidecar(&server, SERVER_SA, client.ipv4(), CLIENT_SA)?);
            for (sidecar, pod) in sidecars.iter_mut().zip([&client, &server]) {
                sidecar.wait_ready(pod)?;
            }
            let outbound = |route: &Route| SocketAddr::from((Ipv4Addr::LOCALHOST, route.outbound));
            (echo, sink) = (outbound(&SIDECAR_ROUTES[0]), outbound(&SIDECAR_ROUTES[1]));
        }
        self.peer = Some(server.ipv4());
        Ok(PodPair {
            _servers: servers,
            sidecars,
            server,
            client,
            echo,
            sink,
        })
    }

    /// Adds `count` idle pods on the client node: enrolled (and in the proxies' state) in a
    /// marrow bed; in a sidecar bed each with its Envoy, ready, whose outbound listeners go to
    /// the latest pair's server (so a pair must exist).
    pub fn add_idle_pods(&mut self, count: u64) -> anyhow::Result<Vec<IdlePod>> {
        let mut pods = Vec::new();
        for _ in 0..count {
            self.idle += 1;
            let name = format!("idle{}", self.idle);
            pods.push(
                self.client_node
                    .add_pod(&name, NAMESPACE, self.setup.enrolled()),
            );
        }
        let named: Vec<(&Pod, &str)> = pods.iter().map(|p| (p, IDLE_SA)).collect();
        self.record(&named);
        self.hand_to_ztunnel(&pods.iter().collect::<Vec<_>>())?;
        let mut sidecars = Vec::new();
        if self.sidecars.is_some() {
            let peer = self
                .peer
                .context("idle sidecars need a pod pair to point their outbound listeners at")?;
            for pod in &pods {
                sidecars.push(Some(self.start_sidecar(pod, IDLE_SA, peer, SERVER_SA)?));
            }
            for (sidecar, pod) in sidecars.iter_mut().zip(&pods) {
                if let Some(sidecar) = sidecar {
                    sidecar.wait_ready(pod)?;
                }
            }
        }
        sidecars.resize_with(pods.len(), || None);
        Ok(sidecars
            .into_iter()
            .zip(pods)
            .map(|(sidecar, pod)| IdlePod { sidecar, _pod: pod })
            .collect())
    }

    /// Starts the Envoy of `pod` (service account `account`), its outbound listeners to
    /// `peer`, which must be `peer_account`; it is not ready yet.
    fn start_sidecar(
        &self,
        pod: &Pod,
        account: &str,
        peer: Ipv4Addr,
        peer_account: &str,
    ) -> anyhow::Result<Sidecar> {
        let Some(sidecars) = &self.sidecars else {
            bail!("{} has no sidecars", self.setup.name());
        };
        let dir = pod
            .node()
            .temp_dir()
            .join(format!("sidecar-{}", pod.name()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = &sidecars.ca;
        let identity = WorkloadCert::issue(ca, &ca.spiffe_id(NAMESPACE, account))?.write(&dir)?;
        let bootstrap = Bootstrap {
            routes: &SIDECAR_ROUTES,
            identity: &identity,
            ca_cert: &ca.cert_path(),
            peer,
            peer_id: &ca.spiffe_id(NAMESPACE, peer_account),
            trust_domain: ca.trust_domain(),
        };
        Sidecar::start(pod, &sidecars.envoy, &bootstrap.json(), &dir)
            .with_context(|| format!("starting the sidecar of pod {}", pod.name()))
    }

    /// In a ztunnel bed, hands `pods` to their nodes' ztunnels (as istio-cni does when a pod
    /// starts); nothing for the other set-ups.
    fn hand_to_ztunnel(&mut self, pods: &[&Pod]) -> anyhow::Result<()> {
        if let Some(ztunnels) = self.ztunnels.as_mut() {
            for pod in pods {
                ztunnels.enroll(pod)?;
            }
        }
        Ok(())
    }

    /// Adds pods (with their service accounts) to a mesh's cluster state and waits until every
    /// proxy has applied it; nothing for the other set-ups.
    fn record(&mut self, pods: &[(&Pod, &str)]) {
        let Some(mesh) = self.mesh.as_mut() else {
            return;
        };
        if pods.is_empty() {
            // An unchanged state file is never applied: there would be nothing to wait for.
            return;
        }
        for (pod, service_account) in pods {
            mesh.state = std::mem::take(&mut mesh.state).pod(pod, service_account);
        }
        self.apply();
    }

    /// Writes the mesh's state (and its extra documents) to every proxy's file and waits until
    /// each has applied it.
    fn apply(&self) {
        let Some(mesh) = self.mesh.as_ref() else {
            return;
        };
        if mesh.extra.is_empty() {
            for (proxy, file) in self.proxies.iter().zip(&mesh.files) {
                apply_state(proxy, file, &mesh.state);
            }
            return;
        }
        let yaml = format!("{}\n---\n{}", mesh.state.to_yaml(), mesh.extra);
        for (proxy, file) in self.proxies.iter().zip(&mesh.files) {
            apply_yaml(proxy, file, &yaml);
        }
    }

    /// The bed's node proxies, the client node's first (none for a baseline or the sidecars:
    /// their data plane lives in the pods).
    pub fn proxy_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.proxies.iter().filter_map(Proxy::pid).collect();
        pids.extend(self.ztunnels.iter().flat_map(Ztunnels::pids));
        pids
    }

    /// Whether the server pods are on a node of their own.
    pub fn cross_node(&self) -> bool {
        self.setup.topology() != Topology::SameNode
    }

    /// What the proxies counted so far, for a mesh set-up.
    pub fn counted(&self) -> anyhow::Result<Option<Counted>> {
        use marrow_tests::metrics::count;
        const OPENED: &str = "istio_tcp_connections_opened_total";
        if let Some(ztunnels) = &self.ztunnels {
            let opened = ztunnels.opened()?;
            return Ok(Some(Counted {
                opened: opened.all,
                mtls_source: opened.mtls_source,
                mtls_destination: opened.mtls_destination,
                // ztunnel does not count its pool's connections.
                tunnels: 0,
            }));
        }
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

    /// Lines of the proxies' logs at WARN or ERROR level or with a failure flag (an access
    /// log line whose `response_flags` is not `"-"`): how many, and the first (a mesh that
    /// drops connections under load says why here).
    pub fn proxy_problems(&self) -> Option<(usize, String)> {
        if let Some(ztunnels) = &self.ztunnels {
            return ztunnels.problems();
        }
        let mut problems = self.proxies.iter().flat_map(|proxy| {
            proxy
                .log()
                .lines()
                .map(strip_ansi)
                .filter(|l| is_problem(l))
                .collect::<Vec<_>>()
        });
        let first = problems.next()?;
        Some((problems.count() + 1, first))
    }

    /// Fails when a proxy has exited (a crash mid-run must fail the bench, not skew it).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(ztunnels) = self.ztunnels.as_mut() {
            ztunnels.check_alive()?;
        }
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

/// Whether a proxy log line (colours stripped) reports a problem: WARN or ERROR level, or a
/// connection with a failure flag.
fn is_problem(line: &str) -> bool {
    let flagged = line
        .split_once("response_flags=")
        .is_some_and(|(_, flags)| !flags.starts_with("\"-\""));
    line.contains(" WARN ") || line.contains(" ERROR ") || flagged
}

/// `line` without ANSI colour sequences (`ESC [ … m`).
fn strip_ansi(line: &str) -> String {
    marrow_tests::process::strip_ansi(line)
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failed_connections_and_warnings_are_problems() {
        let ok = "\u{1b}[2m2026-11-21T11:11:42Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m access: connection \
                  \u{1b}[3mresponse_flags\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"-\"";
        assert_eq!(
            strip_ansi(ok),
            "2026-11-21T11:11:42Z  INFO access: connection response_flags=\"-\""
        );
        assert!(!is_problem(&strip_ansi(ok)));
        assert!(is_problem(
            "x  INFO access: connection response_flags=\"UF\""
        ));
        assert!(is_problem("x  WARN hbone: pool connection lost"));
        assert!(is_problem("x ERROR state: bad file"));
        assert!(!is_problem("x  INFO node proxy ready"));
    }
}
