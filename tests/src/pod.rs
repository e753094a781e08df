//! A test "pod": a network namespace wired to its node by a CNI chain, and a child cgroup of
//! the node cgroup where its processes run.
//!
//! Creation: namespace, CNI ADD (on failure: DEL as a runtime would, then the namespace goes),
//! cgroup. Drop: kill the pod's processes (the cgroup), CNI DEL with the cached ADD result
//! (errors logged, not fatal), delete the namespace.

use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::binaries::testpod;
use crate::cgroup::Cgroup;
use crate::cni::{CniArgs, CniChain, CniError, result_ips};
use crate::names::{next_serial, sanitize, unique_uuid};
use crate::netns::Netns;
use crate::node::{Node, NodeInner};
use crate::process::{PodProcess, command_in};
use crate::testpod::{
    BulkOutcome, ConnectFailure, ConnectOutcome, parse_bulk_output, parse_connect_output,
};

/// How long [`Pod::serve`] waits for the server to report that it listens.
const SERVE_READY: Duration = Duration::from_secs(10);
/// Default timeout of [`Pod::connect`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A pod on a [`Node`]; see the module documentation.
#[derive(Debug)]
pub struct Pod {
    node: Node,
    name: String,
    namespace: String,
    chain: CniChain,
    args: CniArgs,
    result: Value,
    ips: Vec<IpAddr>,
    cni_deleted: bool,
    // Options so that Drop can release them in order: processes, DEL, namespace.
    cgroup: Option<Cgroup>,
    netns: Option<Netns>,
}

impl Pod {
    /// Creates pod `namespace/name` on `node` through `chain`.
    pub(crate) fn create(
        node: &Node,
        name: &str,
        namespace: &str,
        chain: CniChain,
    ) -> Result<Pod, Box<CniError>> {
        let inner: &Arc<NodeInner> = &node.inner;
        let pod = sanitize(name);
        inner.reserve_pod_name(&pod);
        let netns = Netns::new(&format!("{}.{pod}", inner.name));
        let args = CniArgs {
            container_id: format!(
                "{}-{pod}-{}-{}",
                inner.name,
                std::process::id(),
                next_serial()
            ),
            netns: netns.path(),
            ifname: "eth0".to_owned(),
            pod_namespace: namespace.to_owned(),
            pod_name: name.to_owned(),
            pod_uid: unique_uuid(),
        };
        let result = match chain.add(&args) {
            Ok(result) => result,
            Err(e) => {
                if let Err(del) = chain.del(&args, None) {
                    eprintln!("warning: CNI DEL after a failed ADD of {namespace}/{name}: {del}");
                }
                drop(netns);
                inner.release_pod_name(&pod);
                return Err(e);
            }
        };
        let ips = result_ips(&result)
            .unwrap_or_else(|e| panic!("pod {namespace}/{name}: bad CNI result: {e}"));
        // Named like kubelet's cgroupfs driver names pod cgroups (`pod<uid>`), which is how the
        // node proxy finds the processes of pods that were running before it.
        let cgroup = inner.cgroup.child(&format!("pod{}", args.pod_uid));
        Ok(Pod {
            node: node.clone(),
            name: pod,
            namespace: namespace.to_owned(),
            chain,
            args,
            result,
            ips,
            cni_deleted: false,
            cgroup: Some(cgroup),
            netns: Some(netns),
        })
    }

    /// The (sanitised) pod name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Kubernetes namespace given at creation.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `K8S_POD_UID`.
    pub fn uid(&self) -> &str {
        &self.args.pod_uid
    }

    /// `CNI_CONTAINERID`.
    pub fn container_id(&self) -> &str {
        &self.args.container_id
    }

    /// The `CNI_*` values used for this pod.
    pub fn cni_args(&self) -> &CniArgs {
        &self.args
    }

    /// The chain that wired this pod.
    pub fn chain(&self) -> &CniChain {
        &self.chain
    }

    /// The final CNI ADD result.
    pub fn cni_result(&self) -> &Value {
        &self.result
    }

    /// The node this pod is on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The pod's network namespace.
    pub fn netns(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("the namespace lives as long as the pod")
    }

    /// The pod's cgroup (a child of the node cgroup).
    pub fn cgroup(&self) -> &Cgroup {
        self.cgroup
            .as_ref()
            .expect("the cgroup lives as long as the pod")
    }

    /// Every address from the CNI result.
    pub fn ips(&self) -> &[IpAddr] {
        &self.ips
    }

    /// The pod's IPv4 address.
    ///
    /// # Panics
    /// When it has none.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ips
            .iter()
            .find_map(|ip| match ip {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .unwrap_or_else(|| panic!("pod {} has no IPv4 address", self.name))
    }

    /// The pod's IPv6 address.
    ///
    /// # Panics
    /// When it has none (the node is not dual-stack).
    pub fn ipv6(&self) -> Ipv6Addr {
        self.ips
            .iter()
            .find_map(|ip| match ip {
                IpAddr::V6(v6) => Some(*v6),
                IpAddr::V4(_) => None,
            })
            .unwrap_or_else(|| panic!("pod {} has no IPv6 address", self.name))
    }

    /// CNI CHECK through the chain with the cached ADD result.
    ///
    /// # Errors
    /// The failing plugin's [`CniError`].
    pub fn cni_check(&self) -> Result<(), Box<CniError>> {
        self.chain.check(&self.args, &self.result)
    }

    /// CNI DEL through the chain now (drop will not repeat it, even if it failed).
    ///
    /// # Errors
    /// The failing plugin's [`CniError`].
    pub fn cni_del(&mut self) -> Result<(), Box<CniError>> {
        self.cni_deleted = true;
        self.chain.del(&self.args, Some(&self.result))
    }

    /// A `Command` for `program` that runs inside the pod's namespace and cgroup.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(program, Some(self.netns()), Some(self.cgroup()))
    }

    /// Starts `program args…` inside the pod (namespace and cgroup); stdout lines through
    /// [`PodProcess::next_line`], stderr to a log in the node's log directory.
    pub fn spawn(&self, program: impl AsRef<OsStr>, args: &[&str]) -> PodProcess {
        let mut cmd = self.command(program);
        cmd.args(args);
        PodProcess::spawn(cmd, self.node.new_log_path(&self.name))
    }

    /// As [`Pod::spawn`], with `env` added to the program's environment.
    pub fn spawn_with_env(
        &self,
        program: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> PodProcess {
        let mut cmd = self.command(program);
        cmd.args(args).envs(env.iter().copied());
        PodProcess::spawn(cmd, self.node.new_log_path(&self.name))
    }

    /// Runs `program args…` inside the pod to completion.
    pub fn output(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run a program in pod {}: {e}", self.name))
    }

    /// Starts `testpod serve --port <port>` (IPv4, 0.0.0.0) and waits until it listens.
    pub fn serve(&self, port: u16) -> PodProcess {
        self.serve_inner(port, false)
    }

    /// Starts `testpod serve --port <port> --v6` (`[::]`, which accepts IPv4 too) and waits
    /// until it listens.
    pub fn serve_v6(&self, port: u16) -> PodProcess {
        self.serve_inner(port, true)
    }

    fn serve_inner(&self, port: u16, v6: bool) -> PodProcess {
        let port = port.to_string();
        let mut args = vec!["serve", "--port", port.as_str()];
        if v6 {
            args.push("--v6");
        }
        let server = self.spawn(testpod(), &args);
        server.wait_for_line("listening", SERVE_READY);
        server
    }

    /// `testpod connect <addr> --send <text>` from inside the pod (namespace and cgroup).
    pub fn connect(&self, addr: SocketAddr, text: &str) -> ConnectOutcome {
        self.connect_timeout(addr, text, DEFAULT_CONNECT_TIMEOUT)
    }

    /// As [`Pod::connect`], with a connect/read timeout.
    pub fn connect_timeout(
        &self,
        addr: SocketAddr,
        text: &str,
        timeout: Duration,
    ) -> ConnectOutcome {
        connect_with(self.command(testpod()), addr, text, timeout)
    }

    /// As [`Pod::connect`], but from a process in the pod's namespace and NOT in its cgroup (nor
    /// the node's): cgroup programs attached to the node cgroup do not see it.
    pub fn connect_outside_cgroup(&self, addr: SocketAddr, text: &str) -> ConnectOutcome {
        let cmd = command_in(testpod(), Some(self.netns()), None);
        connect_with(cmd, addr, text, DEFAULT_CONNECT_TIMEOUT)
    }

    /// `testpod bulk <addr> --bytes <bytes>` from inside the pod: sends `bytes` pseudo-random
    /// bytes and checks the echo.
    ///
    /// # Errors
    /// The connection's failure as `testpod` reports it.
    pub fn bulk(&self, addr: SocketAddr, bytes: u64) -> Result<BulkOutcome, ConnectFailure> {
        bulk_with(self.command(testpod()), addr, bytes)
    }
}

/// Runs `testpod connect` through `cmd` (a `Command` for the testpod binary, already set up to
/// enter some namespace) and parses its outcome.
///
/// # Panics
/// When testpod cannot run or prints something unparsable.
pub fn connect_with(
    mut cmd: Command,
    addr: SocketAddr,
    text: &str,
    timeout: Duration,
) -> ConnectOutcome {
    let out = cmd
        .args(["connect", &addr.to_string(), "--send", text])
        .args(["--timeout-ms", &timeout.as_millis().to_string()])
        .output()
        .expect("cannot run testpod connect");
    parse_connect_output(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| {
        panic!(
            "testpod connect {addr}: {e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Runs `testpod bulk` through `cmd` (see [`connect_with`]).
///
/// # Errors
/// The connection's failure as `testpod` reports it.
///
/// # Panics
/// When testpod cannot run or prints something unparsable.
pub fn bulk_with(
    mut cmd: Command,
    addr: SocketAddr,
    bytes: u64,
) -> Result<BulkOutcome, ConnectFailure> {
    let out = cmd
        .args(["bulk", &addr.to_string(), "--bytes", &bytes.to_string()])
        .output()
        .expect("cannot run testpod bulk");
    parse_bulk_output(&String::from_utf8_lossy(&out.stdout)).unwrap_or_else(|e| {
        panic!(
            "testpod bulk {addr}: {e}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

impl Drop for Pod {
    fn drop(&mut self) {
        // Kill the pod's processes before its network goes away.
        drop(self.cgroup.take());
        if !self.cni_deleted
            && let Err(e) = self.chain.del(&self.args, Some(&self.result))
        {
            eprintln!(
                "warning: CNI DEL of pod {}/{}: {e}",
                self.namespace, self.name
            );
        }
        drop(self.netns.take());
        self.node.inner.release_pod_name(&self.name);
    }
}
