//! The demo's cluster: one node (a network namespace) running the real node proxy, with three
//! pods wired by a real CNI chain: `shop/web` and `shop/client` enrolled (the chain ends with
//! redirect-cni), `legacy/batch` not enrolled.
//!
//! Invariant: field order is drop order. The web app and the pods go while the proxy still
//! runs (so redirect-cni's DEL reaches it), then the proxy, then the node with its cgroup, pins,
//! namespace and temporary directory. Dropping a [`Cluster`] leaves nothing behind.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use marrow_tests::proxy::METRICS_PORT;
use marrow_tests::{Node, Pod, PodProcess, Proxy, ProxyOptions};

use super::observe::{Metrics, Series, since_last_start};
use super::stop::Stop;
use crate::process::seconds;

/// The node's name: its namespace is `mt-demo`, its cgroup and pin directory
/// `marrow-test-demo`.
pub const NODE_NAME: &str = "demo";
/// The port the web app listens on.
pub const WEB_PORT: u16 = 8080;
/// How long the proxy may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the proxy may take to count a connection the client has already seen end.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two polls (readiness, metrics).
const POLL: Duration = Duration::from_millis(100);

/// The node, its proxy and its pods; see the module documentation.
#[derive(Debug)]
pub struct Cluster {
    /// `testpod serve --port 8080` in `shop/web`.
    _web_app: PodProcess,
    /// `shop/web`, enrolled; serves on [`WEB_PORT`].
    pub web: Pod,
    /// `shop/client`, enrolled.
    pub client: Pod,
    /// `legacy/batch`, not enrolled.
    pub batch: Pod,
    /// The node proxy.
    pub proxy: Proxy,
    /// The node; dropped last (the pods and the proxy hold it too).
    _node: Node,
}

impl Cluster {
    /// Builds the node, starts its proxy, waits until it is ready and creates the pods,
    /// printing each step.
    pub fn start(stop: &Stop) -> anyhow::Result<Cluster> {
        println!("\nSetting up a node: the network namespace mt-{NODE_NAME} with its own bridge");
        let node = Node::new(NODE_NAME);
        stop.check()?;
        // The log is a file that the demo may print: no colour escapes in it.
        let mut proxy = node.start_proxy_with(ProxyOptions {
            env: vec![("NO_COLOR".to_owned(), "1".to_owned())],
            ..ProxyOptions::default()
        });
        let ready_after = wait_ready(&mut proxy, stop)?;
        println!(
            "   node-proxy   ready after {} (pid {}): eBPF capture loaded, waiting for pods",
            seconds(ready_after),
            proxy.pid().unwrap_or_default()
        );
        let web = add_pod(&node, "web", "shop", true, stop)?;
        let client = add_pod(&node, "client", "shop", true, stop)?;
        let batch = add_pod(&node, "batch", "legacy", false, stop)?;
        let web_app = web.serve(WEB_PORT);
        println!(
            "   shop/web runs `testpod serve --port {WEB_PORT}`: it greets each caller with the address it sees, then echoes"
        );
        stop.check()?;
        Ok(Cluster {
            _web_app: web_app,
            web,
            client,
            batch,
            proxy,
            _node: node,
        })
    }

    /// `shop/web`'s address on [`WEB_PORT`].
    pub fn web_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.web.ipv4()), WEB_PORT)
    }

    /// The proxy's `/metrics` page now.
    ///
    /// # Errors
    /// When the proxy does not answer, or answers something else than 200.
    pub fn metrics(&self) -> anyhow::Result<Metrics> {
        let response = self
            .proxy
            .http_get(METRICS_PORT, "/metrics")
            .context("reading the proxy's /metrics")?;
        anyhow::ensure!(
            response.status == 200,
            "the proxy's /metrics answered {}: {}",
            response.status,
            response.body.trim()
        );
        Ok(Metrics::new(response.body))
    }

    /// Polls `/metrics` until `series` reaches `at_least` (or [`COUNT_TIMEOUT`] passes) and
    /// returns its last value: the proxy counts a connection's close only after the client
    /// has seen it.
    ///
    /// # Errors
    /// When `/metrics` cannot be read, or the demo is interrupted.
    pub fn wait_for_count(
        &self,
        stop: &Stop,
        series: &Series,
        at_least: u64,
    ) -> anyhow::Result<u64> {
        let deadline = Instant::now() + COUNT_TIMEOUT;
        loop {
            stop.check()?;
            let value = self.metrics()?.sum(series);
            if value >= at_least || Instant::now() >= deadline {
                return Ok(value);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Restarts the proxy (same flags, same state directory) and waits until it is ready.
    ///
    /// # Errors
    /// When it does not become ready, or the demo is interrupted.
    pub fn restart_proxy(&mut self, stop: &Stop) -> anyhow::Result<Duration> {
        self.proxy.restart();
        wait_ready(&mut self.proxy, stop)
    }

    /// The proxy's log since its latest start.
    pub fn proxy_log_since_start(&self) -> String {
        since_last_start(&self.proxy.log()).to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        println!(
            "\nCleaning up: stopping the pods and the proxy, removing namespaces, cgroup and eBPF pins"
        );
    }
}

/// Creates a pod and prints its address and CNI chain.
fn add_pod(
    node: &Node,
    name: &str,
    namespace: &str,
    enrolled: bool,
    stop: &Stop,
) -> anyhow::Result<Pod> {
    stop.check()?;
    let pod = node
        .try_add_pod(name, namespace, enrolled)
        .map_err(|e| anyhow!("creating pod {namespace}/{name}: {e}"))?;
    let (role, note) = if enrolled {
        ("enrolled", "")
    } else {
        ("NOT enrolled", " (no redirect-cni: never captured)")
    };
    println!(
        "   pod {:<13} {:<11} {role:<13} CNI: {}{note}",
        format!("{namespace}/{name}"),
        pod.ipv4(),
        chain_summary(&pod)
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

/// Polls the proxy's readiness endpoint, giving way to a signal between polls.
fn wait_ready(proxy: &mut Proxy, stop: &Stop) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        stop.check()?;
        match proxy.wait_ready(POLL) {
            Ok(()) => return Ok(started.elapsed()),
            Err(e) if proxy.try_wait().is_some() || started.elapsed() >= READY_TIMEOUT => {
                return Err(e.context("waiting for the node proxy to be ready"));
            }
            Err(_) => {}
        }
    }
}
