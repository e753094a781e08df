//! The demo's cluster: two nodes (network namespaces `mt-demo-1` and `mt-demo-2`) joined by a
//! veth "underlay", a node proxy on each, a mesh CA, and four pods wired by the real CNI chain:
//!
//! ```text
//! node 1: shop/frontend (sa frontend), shop/batch (sa batch), legacy/old (sa default, NOT in the mesh)
//! node 2: shop/api (sa api, label app=api), serving on port 8080
//! ```
//!
//! Both proxies read the same state file content (their own copy): namespace `shop` is ambient,
//! a mesh-wide STRICT PeerAuthentication, and `shop/api-from-frontend` which lets only
//! frontend's identity reach `app=api`.
//!
//! Invariant: field order is drop order. The api app and the pods go while the proxies still
//! run (so redirect-cni's DEL reaches them), then the proxies, then the nodes with their
//! cgroups, pins, namespaces and temporary directories, then the CA. Dropping a [`Cluster`]
//! leaves nothing behind.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use marrow_tests::mesh::{config_generation, mesh_proxy_options};
use marrow_tests::proxy::METRICS_PORT;
use marrow_tests::state_file::{PodRecord, write_atomic};
use marrow_tests::{
    ClusterState, MeshCa, Node, NodeLink, NodeOptions, Pod, PodProcess, Proxy, Sniffer,
};

use super::observe::Metrics;
use marrow_tests::command::seconds;
use marrow_tests::stop::Stop;

/// The nodes' names: namespaces `mt-demo-1`/`mt-demo-2`, cgroups and pin directories
/// `marrow-test-demo-1`/`marrow-test-demo-2`.
pub const NODE_NAMES: [&str; 2] = ["demo-1", "demo-2"];
/// The port the api app listens on.
pub const API_PORT: u16 = 8080;
/// The admin port of the proxy (`/explain`).
pub const ADMIN_PORT: u16 = 15000;
/// How long a proxy may take to become ready or to apply its state file.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls.
const POLL: Duration = Duration::from_millis(100);

/// The mesh's policies, appended to the state file: STRICT mTLS everywhere, and only
/// frontend may call api.
pub const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: api-from-frontend
  namespace: shop
spec:
  selector:
    matchLabels:
      app: api
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [\"cluster.local/ns/shop/sa/frontend\"]
";

/// The two nodes, their proxies and the pods; see the module documentation.
#[derive(Debug)]
pub struct Cluster {
    /// `testpod serve --port 8080` in `shop/api`; `None` once handed over by [`Cluster::keep`].
    api_app: Option<PodProcess>,
    /// `shop/frontend` on node 1, service account `frontend`.
    pub frontend: Pod,
    /// `shop/batch` on node 1, service account `batch`.
    pub batch: Pod,
    /// `legacy/old` on node 1, outside the mesh.
    pub old: Pod,
    /// `shop/api` on node 2, serves on [`API_PORT`].
    pub api: Pod,
    /// Node 1's proxy.
    pub proxy1: Proxy,
    /// Node 2's proxy.
    pub proxy2: Proxy,
    /// The underlay between the nodes.
    pub link: NodeLink,
    /// Node 1.
    pub node1: Node,
    /// Node 2; dropped after the pods and proxies (they hold it too).
    pub node2: Node,
    /// The pods both proxies' state files list (policies are added when written).
    pub state: ClusterState,
    /// Node 1's and node 2's state files.
    pub state_files: [PathBuf; 2],
    /// The mesh CA (a temporary directory).
    pub ca: MeshCa,
}

impl Cluster {
    /// Builds the nodes, the CA, the proxies and the pods, then writes the policies, printing
    /// each step with its duration.
    pub fn start(stop: &Stop) -> anyhow::Result<Cluster> {
        let step = Instant::now();
        println!("\nSetting up two nodes: network namespaces mt-demo-1 and mt-demo-2, linked");
        let node = |index: u8| {
            let options = NodeOptions {
                dual_stack: false,
                index: Some(index),
            };
            Node::with_options(NODE_NAMES[usize::from(index) - 1], options)
        };
        let (node1, node2) = (node(1), node(2));
        let link = NodeLink::between(&node1, &node2);
        println!(
            "   underlay     {} ({}) <-> {} ({}), pods 10.244.1.0/24 and 10.244.2.0/24 [{}]",
            link.a_ifname,
            link.a_ip,
            link.b_ifname,
            link.b_ip,
            seconds(step.elapsed())
        );
        stop.check()?;
        let step = Instant::now();
        let ca = MeshCa::create(super::keep::CA_NAME);
        println!(
            "   mesh CA      `node-proxy ca create`, trust domain {} [{}]",
            ca.trust_domain(),
            seconds(step.elapsed())
        );
        let state1 = node1.temp_dir().join("cluster.yaml");
        let state2 = node2.temp_dir().join("cluster.yaml");
        let namespaces = namespaces();
        for path in [&state1, &state2] {
            write_state(path, &namespaces.to_yaml())?;
        }
        let mut proxy1 = start_proxy(&node1, &ca, &state1, stop)?;
        let mut proxy2 = start_proxy(&node2, &ca, &state2, stop)?;
        for (n, proxy) in [(1, &mut proxy1), (2, &mut proxy2)] {
            wait_generation(proxy, 1, stop)?;
            println!(
                "   node-proxy   node {n} ready (pid {}), state file read",
                proxy.pid().unwrap_or_default()
            );
        }
        let frontend = add_pod(&node1, "frontend", "shop", true, stop)?;
        let batch = add_pod(&node1, "batch", "shop", true, stop)?;
        let old = add_pod(&node1, "old", "legacy", false, stop)?;
        let api = add_pod(&node2, "api", "shop", true, stop)?;
        let api_app = api.serve(API_PORT);
        println!(
            "   shop/api runs `testpod serve --port {API_PORT}`: it greets each caller with the address it sees, then echoes"
        );
        let step = Instant::now();
        let state = namespaces
            .pod(&frontend, "frontend")
            .pod(&batch, "batch")
            .pod(&old, "default")
            .with_pod(PodRecord::of(&api, "api").with_label("app", "api"));
        let yaml = format!("{}\n---\n{POLICIES}", state.to_yaml());
        for (proxy, path) in [(&mut proxy1, &state1), (&mut proxy2, &state2)] {
            let before = config_generation(proxy).unwrap_or_default();
            write_state(path, &yaml)?;
            wait_generation(proxy, before + 1, stop)?;
        }
        let state_files = [state1, state2];
        println!(
            "   state files  pods, service accounts, STRICT mTLS and shop/api-from-frontend applied by both proxies [{}]",
            seconds(step.elapsed())
        );
        stop.check()?;
        Ok(Cluster {
            api_app: Some(api_app),
            frontend,
            batch,
            old,
            api,
            proxy1,
            proxy2,
            link,
            node1,
            node2,
            state,
            state_files,
            ca,
        })
    }

    /// Writes `pods`, the mesh's policies and `extra` (YAML documents) to both state files and
    /// waits until both proxies applied them.
    ///
    /// # Errors
    /// When a file cannot be written or a proxy does not apply it in time.
    pub fn apply(&self, pods: &ClusterState, extra: &str, stop: &Stop) -> anyhow::Result<()> {
        let yaml = format!("{}\n---\n{POLICIES}\n---\n{extra}", pods.to_yaml());
        for (proxy, path) in [
            (&self.proxy1, &self.state_files[0]),
            (&self.proxy2, &self.state_files[1]),
        ] {
            let before = config_generation(proxy).unwrap_or_default();
            write_state(path, &yaml)?;
            let started = Instant::now();
            while config_generation(proxy).is_none_or(|g| g <= before) {
                stop.check()?;
                anyhow::ensure!(
                    started.elapsed() < READY_TIMEOUT,
                    "a proxy did not apply its state file; see {}",
                    proxy.log_path().display()
                );
                std::thread::sleep(POLL);
            }
        }
        Ok(())
    }

    /// `shop/api`'s address on [`API_PORT`].
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.api.ipv4()), API_PORT)
    }

    /// A packet capture on node 1's end of the underlay.
    pub fn sniff(&self) -> Sniffer {
        Sniffer::start(self.node1.netns(), &self.link.a_ifname)
    }

    /// Node 2's (api's) `/metrics` page now.
    ///
    /// # Errors
    /// When the proxy does not answer, or answers something else than 200.
    pub fn metrics2(&self) -> anyhow::Result<Metrics> {
        let response = self
            .proxy2
            .http_get(METRICS_PORT, "/metrics")
            .context("reading node 2's /metrics")?;
        anyhow::ensure!(
            response.status == 200,
            "node 2's /metrics answered {}: {}",
            response.status,
            response.body.trim()
        );
        Ok(Metrics::new(response.body))
    }

    /// Node 2's answer to `GET /explain?<query>` as JSON.
    ///
    /// # Errors
    /// When the proxy does not answer 200 with JSON.
    pub fn explain(&self, query: &str) -> anyhow::Result<serde_json::Value> {
        let response = self
            .proxy2
            .http_get(ADMIN_PORT, &format!("/explain?{query}"))
            .context("asking node 2's proxy /explain")?;
        anyhow::ensure!(
            response.status == 200,
            "/explain answered {}: {}",
            response.status,
            response.body.trim()
        );
        serde_json::from_str(&response.body).context("/explain's answer is not JSON")
    }
}

impl Cluster {
    /// Leaves the cluster running after the demo exits (`--keep`): the api app is restarted
    /// with its output in a log file instead of a pipe to this process, then every fixture is
    /// forgotten, not dropped, so the namespaces, cgroups, pins and processes stay.
    /// `cargo xtask demo --down` removes them by name.
    ///
    /// # Errors
    /// When the detached api app does not start listening.
    pub fn keep(mut self) -> anyhow::Result<Kept> {
        drop(self.api_app.take());
        let log = self.api.node().log_dir().join("api-app.log");
        let output =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = self
            .api
            .command(marrow_tests::binaries::testpod())
            .args(["serve", "--port", &API_PORT.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(output.try_clone()?)
            .stderr(output)
            .spawn()
            .context("restarting the api app detached from the demo")?;
        let started = Instant::now();
        while !std::fs::read_to_string(&log)?.contains("listening") {
            anyhow::ensure!(
                started.elapsed() < READY_TIMEOUT,
                "the api app did not listen again; see {}",
                log.display()
            );
            std::thread::sleep(POLL);
        }
        let kept = Kept {
            api_app_pid: child.id(),
            api_app_log: log,
        };
        // The child keeps running when its handle is dropped (std never kills on drop).
        drop(child);
        std::mem::forget(self);
        Ok(kept)
    }
}

/// What [`Cluster::keep`] left running besides the cluster's own fixtures.
#[derive(Debug)]
pub struct Kept {
    /// The detached `testpod serve` in shop/api.
    pub api_app_pid: u32,
    /// Its output.
    pub api_app_log: std::path::PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        println!(
            "\nCleaning up: stopping the pods and both proxies, removing namespaces, the link, cgroups, eBPF pins and the CA"
        );
    }
}

/// `shop` is in the ambient mesh, `legacy` is not.
fn namespaces() -> ClusterState {
    ClusterState::new()
        .ambient_namespace("shop")
        .namespace("legacy", &[])
}

/// Replaces a proxy's state file in one step (the proxy never reads half of it).
fn write_state(path: &Path, yaml: &str) -> anyhow::Result<()> {
    write_atomic(path, yaml.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

/// Starts a node's proxy on its state file and the CA, and waits until it is ready.
fn start_proxy(node: &Node, ca: &MeshCa, state: &Path, stop: &Stop) -> anyhow::Result<Proxy> {
    let step = Instant::now();
    let mut options = mesh_proxy_options(ca, state);
    // The log is a file that the demo may print: no colour escapes in it.
    options.env.push(("NO_COLOR".to_owned(), "1".to_owned()));
    let mut proxy = node.start_proxy_with(options);
    loop {
        stop.check()?;
        match proxy.wait_ready(POLL) {
            Ok(()) => break,
            Err(e) if proxy.try_wait().is_some() || step.elapsed() >= READY_TIMEOUT => {
                return Err(e.context(format!("waiting for {}'s node proxy", node.name())));
            }
            Err(_) => {}
        }
    }
    println!(
        "   node-proxy   started on {}: eBPF capture loaded, certificates from the mesh CA [{}]",
        node.name(),
        seconds(step.elapsed())
    );
    Ok(proxy)
}

/// Waits until `proxy` has applied state file version `at_least` (`marrow_config_generation`).
fn wait_generation(proxy: &mut Proxy, at_least: u64, stop: &Stop) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        stop.check()?;
        if config_generation(proxy).is_some_and(|g| g >= at_least) {
            return Ok(());
        }
        if proxy.try_wait().is_some() || started.elapsed() >= READY_TIMEOUT {
            anyhow::bail!(
                "the proxy did not apply its state file (version {at_least}); see {}",
                proxy.log_path().display()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Creates a pod and prints its node, address and CNI chain.
pub(super) fn add_pod(
    node: &Node,
    name: &str,
    namespace: &str,
    enrolled: bool,
    stop: &Stop,
) -> anyhow::Result<Pod> {
    stop.check()?;
    let step = Instant::now();
    let pod = node
        .try_add_pod(name, namespace, enrolled)
        .map_err(|e| anyhow!("creating pod {namespace}/{name}: {e}"))?;
    let note = if enrolled {
        "in the mesh"
    } else {
        "NOT in the mesh (no redirect-cni)"
    };
    println!(
        "   pod {:<14} {} {:<11} {note}; CNI: {} [{}]",
        format!("{namespace}/{name}"),
        node.name(),
        pod.ipv4(),
        chain_summary(&pod),
        seconds(step.elapsed())
    );
    Ok(pod)
}

/// The plugins of the pod's CNI chain, e.g. `bridge + host-local + redirect-cni`.
fn chain_summary(pod: &Pod) -> String {
    pod.chain()
        .plugins()
        .iter()
        .flat_map(|plugin| [&plugin["type"], &plugin["ipam"]["type"]])
        .filter_map(serde_json::Value::as_str)
        .collect::<Vec<_>>()
        .join(" + ")
}
