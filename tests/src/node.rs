//! A test "node": its root network namespace, its cgroup, its bpffs pin directory and a
//! temporary directory for CNI state, the proxy's state, logs and the enrollment socket.
//!
//! The node's parts live in a shared inner value: pods and proxies keep it alive, so dropping
//! the [`Node`] before its pods is harmless; everything goes when the last holder drops. Drop
//! order inside: the cgroup first (kills the proxy and anything else started in the node), then
//! the bpffs directory, the namespace (and with it the bridge) and the temporary directory.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::binaries::testpod;
use crate::bpffs::BpffsDir;
use crate::cgroup::Cgroup;
use crate::cni::{BridgeConfig, CniChain, CniError, bridge_plugin, redirect_plugin};
use crate::http::{HttpResponse, get_in};
use crate::names::{NETNS_PREFIX, PREFIX, ifname, next_serial, sanitize};
use crate::netns::{NETNS_RUN_DIR, Netns};
use crate::pod::{DEFAULT_CONNECT_TIMEOUT, Pod, connect_with};
use crate::process::command_in;
use crate::proxy::{Proxy, ProxyOptions};
use crate::testpod::ConnectOutcome;

/// How a node is set up.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Give pods an IPv6 address too (`fd00:<index>::/64`) besides IPv4.
    pub dual_stack: bool,
    /// The node's number: its pod ranges are `10.244.<index>.0/24` and `fd00:<index>::/64`.
    /// Default: a number unique within this test process (1–250).
    pub index: Option<u8>,
}

/// A test node; see the module documentation.
#[derive(Clone, Debug)]
pub struct Node {
    pub(crate) inner: Arc<NodeInner>,
}

/// The parts of a node, shared by its pods and proxies. Field order is drop order.
#[derive(Debug)]
pub(crate) struct NodeInner {
    pub(crate) cgroup: Cgroup,
    pub(crate) bpffs: BpffsDir,
    pub(crate) netns: Netns,
    pub(crate) tmp: tempfile::TempDir,
    pub(crate) name: String,
    pub(crate) index: u8,
    pub(crate) dual_stack: bool,
    pub(crate) bridge: String,
    pub(crate) pod_names: Mutex<HashSet<String>>,
}

fn next_index() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) % 250 + 1
}

impl Node {
    /// An IPv4-only node named after `name` (usually the test's name).
    pub fn new(name: &str) -> Node {
        Node::with_options(name, NodeOptions::default())
    }

    /// A node with `options`.
    pub fn with_options(name: &str, options: NodeOptions) -> Node {
        let name = sanitize(name);
        let index = options.index.unwrap_or_else(next_index);
        let cgroup = Cgroup::new(&name);
        remove_stale(&name);
        let bpffs = BpffsDir::new(&name);
        let netns = Netns::new(&name);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{name}-"))
            .tempdir()
            .expect("cannot create the node's temporary directory");
        for dir in ["state", "ipam", "logs"] {
            std::fs::create_dir(tmp.path().join(dir)).expect("cannot create node directories");
        }
        netns.sysctl("net.ipv4.ip_forward", "1");
        netns.sysctl("net.ipv6.conf.all.forwarding", "1");
        // The bridge and node links are created later; without DAD their IPv6 addresses are
        // usable at once instead of ~1-2 s later (a fresh namespace has no conflicts to detect).
        netns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        let inner = NodeInner {
            bridge: ifname("mtbr", &name),
            cgroup,
            bpffs,
            netns,
            tmp,
            name,
            index,
            dual_stack: options.dual_stack,
            pod_names: Mutex::new(HashSet::new()),
        };
        Node {
            inner: Arc::new(inner),
        }
    }

    /// The sanitised node name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The node's number (see [`NodeOptions::index`]).
    pub fn index(&self) -> u8 {
        self.inner.index
    }

    /// Whether pods get IPv6 addresses too.
    pub fn dual_stack(&self) -> bool {
        self.inner.dual_stack
    }

    /// The node's root network namespace (where the bridge and the proxy are).
    pub fn netns(&self) -> &Netns {
        &self.inner.netns
    }

    /// The node cgroup: the proxy runs here and attaches its cgroup programs here; pods'
    /// cgroups are its children.
    pub fn cgroup(&self) -> &Cgroup {
        &self.inner.cgroup
    }

    /// The node's bpffs pin directory (not created by the harness).
    pub fn bpffs_dir(&self) -> &Path {
        self.inner.bpffs.path()
    }

    /// The node's temporary directory.
    pub fn temp_dir(&self) -> &Path {
        self.inner.tmp.path()
    }

    /// `<temp>/state`: the proxy's `--state-dir` (created).
    pub fn state_dir(&self) -> PathBuf {
        self.temp_dir().join("state")
    }

    /// `<temp>/cni.sock`: the proxy's enrollment socket, which redirect-cni connects to.
    pub fn cni_socket(&self) -> PathBuf {
        self.temp_dir().join("cni.sock")
    }

    /// `<temp>/ipam`: host-local's `dataDir`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.temp_dir().join("ipam")
    }

    /// `<temp>/logs`: logs of processes started in the node and its pods.
    pub fn log_dir(&self) -> PathBuf {
        self.temp_dir().join("logs")
    }

    /// The bridge's interface name in the node netns.
    pub fn bridge_name(&self) -> &str {
        &self.inner.bridge
    }

    /// The IPv4 pod range, `10.244.<index>.0/24`.
    pub fn ipv4_subnet(&self) -> String {
        format!("10.244.{}.0/24", self.inner.index)
    }

    /// The IPv6 pod range `fd00:<index>::/64` of a dual-stack node.
    pub fn ipv6_subnet(&self) -> Option<String> {
        self.inner
            .dual_stack
            .then(|| format!("fd00:{:x}::/64", self.inner.index))
    }

    /// The bridge's IPv4 address: pods' default gateway.
    pub fn gateway_v4(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.inner.index, 1)
    }

    /// The bridge's IPv6 address on a dual-stack node.
    pub fn gateway_v6(&self) -> Option<Ipv6Addr> {
        self.inner
            .dual_stack
            .then(|| Ipv6Addr::new(0xfd00, u16::from(self.inner.index), 0, 0, 0, 0, 0, 1))
    }

    /// The bridge + host-local plugin config of this node.
    pub fn bridge_plugin(&self) -> Value {
        bridge_plugin(&BridgeConfig {
            bridge: self.inner.bridge.clone(),
            ipv4_subnet: self.ipv4_subnet(),
            ipv6_subnet: self.ipv6_subnet(),
            data_dir: self.ipam_dir(),
        })
    }

    /// The node's CNI chain: `bridge` + `host-local`, then `redirect-cni` (pointing at
    /// [`Node::cni_socket`]) when `enrolled`.
    pub fn chain(&self, enrolled: bool) -> CniChain {
        let chain = CniChain::new(
            &format!("{PREFIX}{}", self.inner.name),
            vec![self.bridge_plugin()],
            self.netns().path(),
        );
        if enrolled {
            chain.with_plugin(redirect_plugin(&self.cni_socket()))
        } else {
            chain
        }
    }

    /// Creates a pod, wired by [`Node::chain`]`(enrolled)`.
    ///
    /// # Panics
    /// When CNI ADD fails (the message carries the plugin's error and stderr).
    pub fn add_pod(&self, name: &str, namespace: &str, enrolled: bool) -> Pod {
        self.try_add_pod(name, namespace, enrolled)
            .unwrap_or_else(|e| panic!("cannot add pod {namespace}/{name}: {e}"))
    }

    /// Creates a pod; when ADD fails, runs DEL as a runtime would, removes the namespace and
    /// returns the error.
    ///
    /// # Errors
    /// The failing plugin's [`CniError`].
    pub fn try_add_pod(
        &self,
        name: &str,
        namespace: &str,
        enrolled: bool,
    ) -> Result<Pod, Box<CniError>> {
        Pod::create(self, name, namespace, self.chain(enrolled))
    }

    /// Creates a pod wired by a custom `chain` (e.g. from [`Node::chain`] with extra plugins).
    ///
    /// # Errors
    /// The failing plugin's [`CniError`].
    pub fn try_add_pod_with(
        &self,
        name: &str,
        namespace: &str,
        chain: CniChain,
    ) -> Result<Pod, Box<CniError>> {
        Pod::create(self, name, namespace, chain)
    }

    /// Starts `node-proxy run …` in this node with the default options.
    pub fn start_proxy(&self) -> Proxy {
        Proxy::start(self, ProxyOptions::default())
    }

    /// Starts `node-proxy run …` in this node with `options`.
    pub fn start_proxy_with(&self, options: ProxyOptions) -> Proxy {
        Proxy::start(self, options)
    }

    /// A `Command` for `program` inside the node netns and the node cgroup (so it is killed
    /// when the node goes).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(program, Some(self.netns()), Some(self.cgroup()))
    }

    /// `testpod connect <addr> --send <text>` from the node netns (in the node cgroup): traffic
    /// that reaches a pod from outside any pod.
    pub fn connect(&self, addr: SocketAddr, text: &str) -> ConnectOutcome {
        connect_with(self.command(testpod()), addr, text, DEFAULT_CONNECT_TIMEOUT)
    }

    /// `GET path` on `127.0.0.1:port` inside the node netns.
    ///
    /// # Errors
    /// On connect/I/O errors or a malformed response.
    pub fn http_get(&self, port: u16, path: &str) -> anyhow::Result<HttpResponse> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        get_in(self.netns(), addr, path, Duration::from_secs(5))
    }

    /// A log file path `<temp>/logs/<stem>-<serial>.log`, unique in this process.
    pub(crate) fn new_log_path(&self, stem: &str) -> PathBuf {
        self.log_dir().join(format!("{stem}-{}.log", next_serial()))
    }
}

/// Removes what a crashed earlier run of the same node left that the guards do not re-create
/// by name: its pods' namespaces (`mt-<node>.<pod>`) and its temporary directories.
fn remove_stale(name: &str) {
    let pod_prefix = format!("{NETNS_PREFIX}{name}.");
    for entry in read_dir_names(Path::new(NETNS_RUN_DIR)) {
        if entry.starts_with(&pod_prefix) {
            eprintln!("removing stale network namespace {entry}");
            let _ = Command::new("ip").args(["netns", "del", &entry]).status();
        }
    }
    // tempfile names are `<prefix><6 random alphanumerics>`; anything longer belongs to a
    // node whose name merely starts with ours.
    let tmp_prefix = format!("{PREFIX}{name}-");
    let tmp = std::env::temp_dir();
    for entry in read_dir_names(&tmp) {
        let stale = entry
            .strip_prefix(&tmp_prefix)
            .is_some_and(|rest| rest.len() == 6 && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        if stale {
            eprintln!("removing stale temporary directory {entry}");
            let _ = std::fs::remove_dir_all(tmp.join(&entry));
        }
    }
}

fn read_dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl NodeInner {
    /// Reserves a pod name on this node; a duplicate would collide on the namespace name.
    pub(crate) fn reserve_pod_name(&self, name: &str) {
        let mut names = self
            .pod_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        assert!(
            names.insert(name.to_owned()),
            "node {} already has a pod {name}",
            self.name
        );
    }

    /// Releases a pod name reserved with [`NodeInner::reserve_pod_name`].
    pub(crate) fn release_pod_name(&self, name: &str) {
        self.pod_names
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }
}

impl Drop for NodeInner {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- node {}: netns {}, cgroup {}, temp {}",
                self.name,
                self.netns.name(),
                self.cgroup.path().display(),
                self.tmp.path().display()
            );
        }
    }
}

/// Connects two nodes with a veth pair and routes each node's pod ranges through it, so pods
/// on `a` reach pods on `b`. Returns the link addresses `(a side, b side)`; [`NodeLink::between`]
/// does the same and also names the interfaces (e.g. to capture the underlay's packets).
pub fn link_nodes(a: &Node, b: &Node) -> (IpAddr, IpAddr) {
    let link = NodeLink::between(a, b);
    (link.a_ip, link.b_ip)
}

/// The underlay between two nodes: one veth pair, an end in each node's netns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeLink {
    /// The IPv4 address of `a`'s end.
    pub a_ip: IpAddr,
    /// The IPv4 address of `b`'s end.
    pub b_ip: IpAddr,
    /// The interface name of `a`'s end (in `a`'s netns).
    pub a_ifname: String,
    /// The interface name of `b`'s end (in `b`'s netns).
    pub b_ifname: String,
}

impl NodeLink {
    /// Connects two nodes with a veth pair and routes each node's pod ranges through it, so
    /// pods on `a` reach pods on `b`.
    ///
    /// The link is `172.30.<k>.0/30` (and `fd30:<k>::/64` when both nodes are dual-stack), `k`
    /// unique per call in this process; it disappears with the namespaces.
    pub fn between(a: &Node, b: &Node) -> NodeLink {
        static NEXT: AtomicU8 = AtomicU8::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let key = format!("{}/{}/{k}", a.name(), b.name());
        let (va, vb) = (ifname("mtla", &key), ifname("mtlb", &key));
        a.netns().ip(&[
            "link",
            "add",
            &va,
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            b.netns().name(),
        ]);
        let ip_a = Ipv4Addr::new(172, 30, k, 1);
        let ip_b = Ipv4Addr::new(172, 30, k, 2);
        for (node, other, dev, me, peer) in [(a, b, &va, ip_a, ip_b), (b, a, &vb, ip_b, ip_a)] {
            let ns = node.netns();
            ns.ip(&["addr", "add", &format!("{me}/30"), "dev", dev]);
            ns.ip(&["link", "set", dev, "up"]);
            ns.ip(&[
                "route",
                "add",
                &other.ipv4_subnet(),
                "via",
                &peer.to_string(),
            ]);
        }
        if a.dual_stack() && b.dual_stack() {
            let v6 = |host: u16| Ipv6Addr::new(0xfd30, u16::from(k), 0, 0, 0, 0, 0, host);
            for (node, other, dev, me, peer) in
                [(a, b, &va, v6(1), v6(2)), (b, a, &vb, v6(2), v6(1))]
            {
                let ns = node.netns();
                ns.ip(&[
                    "-6",
                    "addr",
                    "add",
                    &format!("{me}/64"),
                    "dev",
                    dev,
                    "nodad",
                ]);
                if let Some(subnet) = other.ipv6_subnet() {
                    ns.ip(&["-6", "route", "add", &subnet, "via", &peer.to_string()]);
                }
            }
        }
        NodeLink {
            a_ip: IpAddr::V4(ip_a),
            b_ip: IpAddr::V4(ip_b),
            a_ifname: va,
            b_ifname: vb,
        }
    }
}
