//! The pods of an L7 bed ([`Topology::L7`]): a client pod on node 1, an HTTP/1.1 server pod
//! (`testpod http-serve`) on node 2, and between them the L7 hop in a pod of its own on node 2 —
//! marrow's waypoint (the Service the client calls uses it) or an Envoy with the HTTP connection
//! manager, reached through Envoy sidecars in the client and server pods.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use marrow_tests::state_file::PodRecord;
use marrow_tests::waypoint::{self, bound_service, gateway_objects};
use marrow_tests::workload_cert::WorkloadCert;
use marrow_tests::{Pod, PodProcess, binaries};

use super::routes::{self, Routes};
use super::{Bed, CLIENT_SA, ECHO_PORT, NAMESPACE, SERVER_SA, SIDECAR_ROUTES, serve};
use crate::sidecar::l7_hop::L7Hop;
use crate::sidecar::{Sidecar, TlsCounts};
use crate::topology::{SetUp, Topology};

/// The Gateway (and service account) of the bench's waypoint, and its pod's name.
const WAYPOINT: &str = "waypoint";
/// The Service the client calls (bound to the waypoint).
const SERVICE: &str = "web";
/// The service account of the Envoy L7 hop's pod.
const HOP_SA: &str = "bench-hop";
/// ClusterIPs of the Service the client calls and of the waypoint's own Service.
const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 80);
const WAYPOINT_VIP: &str = "10.96.0.81";
/// The port the client calls on the Service (forwarded to the server's [`ECHO_PORT`]).
const SERVICE_PORT: u16 = 80;
/// Bound on the waypoint becoming ready (certificate issued, state read).
const WAYPOINT_READY: Duration = Duration::from_secs(30);
/// The Envoy hop's port: the one the client sidecar's first route sends to.
const HOP_PORT: u16 = SIDECAR_ROUTES[0].inbound;

/// The L7 hop of a bed.
enum Hop {
    /// No hop: the client calls the server.
    None,
    /// marrow's waypoint (`waypoint` binary).
    Waypoint(PodProcess),
    /// Envoy as the L7 hop, between the client's and the server's sidecars (in that order).
    Envoy {
        hop: Sidecar,
        sidecars: Vec<Sidecar>,
    },
}

/// What the waypoint counted: client requests and the retries made for them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryCount {
    /// Client requests answered (every code).
    pub requests: u64,
    /// Retries (tries after a request's first).
    pub retries: u64,
}

/// The three pods of an L7 bed and what runs in them. Field order is drop order.
pub struct L7Pair {
    _server_app: PodProcess,
    hop: Hop,
    hop_pod: Option<Pod>,
    server: Pod,
    client: Pod,
    target: SocketAddr,
}

impl L7Pair {
    /// The pod the load generator runs in.
    pub fn client(&self) -> &Pod {
        &self.client
    }

    /// What the client sends its requests to: the server, the Service bound to the waypoint,
    /// or the client sidecar's outbound listener.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// The L7 hop's process, if any.
    pub fn hop_pid(&self) -> Option<u32> {
        match &self.hop {
            Hop::None => None,
            Hop::Waypoint(process) => Some(process.pid()),
            Hop::Envoy { hop, .. } => Some(hop.pid()),
        }
    }

    /// The data plane's processes outside the node proxies: the hop, and the sidecars.
    pub fn plane_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.hop_pid().into_iter().collect();
        if let Hop::Envoy { sidecars, .. } = &self.hop {
            pids.extend(sidecars.iter().map(Sidecar::pid));
        }
        pids
    }

    /// Fails when the hop or a sidecar has exited (a crash mid-run must fail the bench).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match &mut self.hop {
            Hop::None => {}
            Hop::Waypoint(process) => {
                if let Some(status) = process.try_wait() {
                    bail!(
                        "the waypoint exited ({status}); log tail:\n{}",
                        super::tail(&process.log(), 40)
                    );
                }
            }
            Hop::Envoy { hop, sidecars } => {
                if let Some(pod) = &self.hop_pod {
                    hop.check_alive(pod)?;
                }
                for (sidecar, pod) in sidecars.iter_mut().zip([&self.client, &self.server]) {
                    sidecar.check_alive(pod)?;
                }
            }
        }
        Ok(())
    }

    /// The waypoint's `/metrics` text; `None` when the hop is not a waypoint.
    fn waypoint_metrics(&self) -> anyhow::Result<Option<String>> {
        let (Some(pod), Hop::Waypoint(_)) = (&self.hop_pod, &self.hop) else {
            return Ok(None);
        };
        let addr = SocketAddr::new(IpAddr::V4(pod.ipv4()), waypoint::METRICS_PORT);
        let response =
            marrow_tests::http::get_in(pod.netns(), addr, "/metrics", Duration::from_secs(5))
                .context("reading the waypoint's metrics")?;
        if response.status != 200 {
            bail!("the waypoint's /metrics answered {}", response.status);
        }
        Ok(Some(response.body))
    }

    /// The waypoint's client requests (`istio_requests_total`, reporter `waypoint`, every
    /// code) and retries (`marrow_retries_total`) so far; `None` when the hop is not a
    /// waypoint.
    pub fn waypoint_retries(&self) -> anyhow::Result<Option<RetryCount>> {
        use marrow_tests::metrics::count;
        Ok(self.waypoint_metrics()?.map(|text| RetryCount {
            requests: count(&text, "istio_requests_total", &[("reporter", "waypoint")]),
            retries: count(&text, "marrow_retries_total", &[]),
        }))
    }

    /// Proof that the requests went through the hop: the waypoint's `istio_requests_total`
    /// (reporter `waypoint`, code 200), or the L7 Envoy's completed downstream requests and
    /// the sidecars' TLS handshakes; `None` without a hop.
    pub fn hop_requests(&self) -> anyhow::Result<Option<u64>> {
        let Some(pod) = &self.hop_pod else {
            return Ok(None);
        };
        match &self.hop {
            Hop::None => Ok(None),
            Hop::Waypoint(_) => Ok(self.waypoint_metrics()?.map(|text| {
                marrow_tests::metrics::count(
                    &text,
                    "istio_requests_total",
                    &[("reporter", "waypoint"), ("response_code", "200")],
                )
            })),
            Hop::Envoy { hop, sidecars } => {
                let stats = hop.stats(pod)?;
                let [client, server] = sidecars.as_slice() else {
                    bail!("the L7 Envoy bed has {} sidecars, not 2", sidecars.len());
                };
                let (client, server): (TlsCounts, TlsCounts) = (
                    client.stats(&self.client)?.tls(),
                    server.stats(&self.server)?.tls(),
                );
                if client.as_client == 0 || server.as_server == 0 {
                    bail!(
                        "envoy-l7: the sidecars went without mTLS (client {} handshakes as a \
                         client, server {} as a server)",
                        client.as_client,
                        server.as_server
                    );
                }
                Ok(Some(stats.sum("http.l7_hop.", "downstream_rq_2xx")))
            }
        }
    }

    /// Warnings and errors the hop and sidecars logged: how many, and the first.
    pub fn problems(&self) -> Option<(usize, String)> {
        match &self.hop {
            Hop::None => None,
            Hop::Waypoint(process) => {
                let log = marrow_tests::process::strip_ansi(&process.log());
                let mut lines = log
                    .lines()
                    .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "));
                let first = lines.next()?.to_owned();
                Some((lines.count() + 1, first))
            }
            Hop::Envoy { hop, sidecars } => {
                let found: Vec<(usize, String)> = std::iter::once(hop)
                    .chain(sidecars)
                    .filter_map(Sidecar::problems)
                    .collect();
                let first = found.first()?.1.clone();
                Some((found.iter().map(|(n, _)| n).sum(), first))
            }
        }
    }
}

impl Bed {
    /// The pods of an L7 bed, the server listening and the hop ready (the waypoint in the node
    /// proxies' state and serving; the Envoys ready).
    pub fn l7_pair(&mut self) -> anyhow::Result<L7Pair> {
        if self.setup.topology() != Topology::L7 {
            bail!("{} is not an L7 set-up", self.setup.name());
        }
        let enrolled = self.setup.enrolled();
        let client = self.client_node.add_pod("client", NAMESPACE, enrolled);
        let server = self.server_node.add_pod("server", NAMESPACE, enrolled);
        let routes = routes::routes(self.setup, NAMESPACE, SERVICE);
        let port = ECHO_PORT.to_string();
        let mut args = vec!["http-serve", "--port", &port];
        args.extend(routes.iter().flat_map(|r| r.server_flags.iter().copied()));
        let server_app = serve(&server, &args)?;
        let direct = SocketAddr::new(IpAddr::V4(server.ipv4()), ECHO_PORT);
        let (hop, hop_pod, target) = match self.setup {
            setup if setup.waypoint() => {
                let pod = self.server_node.add_pod(WAYPOINT, NAMESPACE, false);
                let process = self.start_waypoint(&client, &server, &pod, routes.as_ref())?;
                let target = SocketAddr::new(IpAddr::V4(SERVICE_VIP), SERVICE_PORT);
                (Hop::Waypoint(process), Some(pod), target)
            }
            SetUp::EnvoyL7 => {
                let pod = self.server_node.add_pod("hop", NAMESPACE, false);
                let hop = self.start_envoy_hop(&client, &server, &pod)?;
                let outbound = SocketAddr::from((Ipv4Addr::LOCALHOST, SIDECAR_ROUTES[0].outbound));
                (hop, Some(pod), outbound)
            }
            _ => (Hop::None, None, direct),
        };
        Ok(L7Pair {
            _server_app: server_app,
            hop,
            hop_pod,
            server,
            client,
            target,
        })
    }

    /// Puts the client, the server (behind the Service `web`, bound to the waypoint), the
    /// waypoint's pod and Gateway, and `routes`' VirtualService in the proxies' state, then
    /// starts the waypoint in `pod` and waits until it is ready and, with `routes`, until its
    /// `/routes` shows the rule the bench's requests take. Its access log is off, as Istio's
    /// default profile has it (MeshConfig `accessLogFile: ""`) and as the L7 Envoy has none.
    fn start_waypoint(
        &mut self,
        client: &Pod,
        server: &Pod,
        pod: &Pod,
        routes: Option<&Routes>,
    ) -> anyhow::Result<PodProcess> {
        let Some(mesh) = self.mesh.as_mut() else {
            bail!("{} has no mesh", self.setup.name());
        };
        mesh.state = std::mem::take(&mut mesh.state)
            .pod(client, CLIENT_SA)
            .pod(server, SERVER_SA)
            .with_pod(
                PodRecord::of(pod, WAYPOINT)
                    .with_label("gateway.networking.k8s.io/gateway-name", WAYPOINT)
                    .with_label("istio.io/dataplane-mode", "none"),
            );
        let gateway = gateway_objects(NAMESPACE, WAYPOINT, WAYPOINT_VIP, &[pod.ipv4().to_string()]);
        let web = bound_service(
            (NAMESPACE, SERVICE),
            &SERVICE_VIP.to_string(),
            WAYPOINT,
            &[("http", SERVICE_PORT, ECHO_PORT)],
            &[server.ipv4().to_string()],
        );
        mesh.extra = format!("{gateway}---\n{web}");
        if let Some(routes) = routes {
            mesh.extra = format!("{}---\n{}", mesh.extra, routes.yaml);
        }
        self.apply();
        let Some(mesh) = self.mesh.as_ref() else {
            bail!("{} has no mesh", self.setup.name());
        };
        // The waypoint reads node 2's state file, as a pod there would read its node's view.
        let state_file = mesh
            .files
            .last()
            .context("the waypoint bed has no state file")?;
        let args = waypoint::args(&mesh.ca, state_file, (NAMESPACE, WAYPOINT), &[]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut process = pod.spawn_with_env(
            binaries::waypoint(),
            &args,
            &[("RUST_LOG", "info,access=off")],
        );
        let ready = SocketAddr::new(IpAddr::V4(pod.ipv4()), waypoint::READINESS_PORT);
        let deadline = Instant::now() + WAYPOINT_READY;
        loop {
            if let Some(status) = process.try_wait() {
                bail!("the waypoint exited ({status}):\n{}", process.log());
            }
            let answer = marrow_tests::http::get_in(
                pod.netns(),
                ready,
                "/healthz/ready",
                Duration::from_secs(2),
            );
            if answer.as_ref().is_ok_and(|r| r.status == 200) {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the waypoint was not ready within {WAYPOINT_READY:?} ({answer:?}):\n{}",
                    process.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(routes) = routes {
            wait_routes(&mut process, pod, routes)?;
        }
        Ok(process)
    }

    /// Starts the client's sidecar (its outbound listener to the hop), the server's sidecar
    /// and the L7 Envoy in `pod` (to the server's sidecar), and waits until all three are ready.
    fn start_envoy_hop(&self, client: &Pod, server: &Pod, pod: &Pod) -> anyhow::Result<Hop> {
        let Some(sidecars) = &self.sidecars else {
            bail!("{} has no sidecars", self.setup.name());
        };
        let ca = &sidecars.ca;
        let mut client_sidecar = self.start_sidecar(client, CLIENT_SA, pod.ipv4(), HOP_SA)?;
        let mut server_sidecar = self.start_sidecar(server, SERVER_SA, client.ipv4(), CLIENT_SA)?;
        let dir = pod.node().temp_dir().join("l7-hop");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let identity = WorkloadCert::issue(ca, &ca.spiffe_id(NAMESPACE, HOP_SA))?.write(&dir)?;
        let config = L7Hop {
            port: HOP_PORT,
            identity: &identity,
            ca_cert: &ca.cert_path(),
            trust_domain: ca.trust_domain(),
            upstream: (server.ipv4(), SIDECAR_ROUTES[0].inbound),
            upstream_id: &ca.spiffe_id(NAMESPACE, SERVER_SA),
        }
        .json();
        let mut hop =
            Sidecar::start(pod, &sidecars.envoy, &config, &dir).context("starting the L7 Envoy")?;
        client_sidecar.wait_ready(client)?;
        server_sidecar.wait_ready(server)?;
        hop.wait_ready(pod)?;
        Ok(Hop::Envoy {
            hop,
            sidecars: vec![client_sidecar, server_sidecar],
        })
    }
}

/// Waits until the waypoint's `/routes` for the bench's request (`POST /` to the Service) shows
/// the VirtualService rule of `routes`: it has read the state file (on its own poll).
fn wait_routes(process: &mut PodProcess, pod: &Pod, routes: &Routes) -> anyhow::Result<()> {
    // The admin API listens on the pod's localhost only.
    let admin = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), waypoint::ADMIN_PORT);
    let path = format!("/routes?to={SERVICE}.{NAMESPACE}%3A{SERVICE_PORT}&method=POST&path=%2F");
    let deadline = Instant::now() + WAYPOINT_READY;
    loop {
        if let Some(status) = process.try_wait() {
            bail!("the waypoint exited ({status}):\n{}", process.log());
        }
        let answer = marrow_tests::http::get_in(pod.netns(), admin, &path, Duration::from_secs(2))
            .map_err(|e| e.to_string())
            .and_then(|r| {
                serde_json::from_str::<serde_json::Value>(&r.body).map_err(|e| e.to_string())
            });
        if answer.as_ref().is_ok_and(|a| routes::applied(a, routes)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "the waypoint's {path} did not show VirtualService rule {} within \
                 {WAYPOINT_READY:?}: {answer:?}",
                routes.rule
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
