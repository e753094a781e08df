//! The node proxy under test, run as a process inside a node.
//!
//! `node-proxy run` starts inside the node's network namespace and cgroup with the flags below
//! (the contract with `node-proxy`); stdout and stderr go to `<node temp>/logs/proxy.log`,
//! appended across restarts. Dropped while a test panics, it prints the log's tail first.
//!
//! ```text
//! node-proxy run --ebpf-object <obj> --cgroup <node cgroup> --bpffs-dir <node bpffs dir>
//!   --state-dir <temp>/state --cni-socket <temp>/cni.sock
//!   --metrics-addr 127.0.0.1:15020 --readiness-addr 127.0.0.1:15021   (RUST_LOG=info)
//! ```

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::binaries::{ebpf_object, node_proxy};
use crate::http::HttpResponse;
use crate::node::Node;
use crate::process::{kill_and_reap, print_tail, tail, wait_timeout};

/// The proxy's Prometheus port (inside the node netns, on 127.0.0.1).
pub const METRICS_PORT: u16 = 15020;
/// The proxy's readiness port (inside the node netns, on 127.0.0.1).
pub const READINESS_PORT: u16 = 15021;
/// Lines of the log printed when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// How to start the proxy.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// Arguments appended after the standard flags.
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// `RUST_LOG` (default `info`).
    pub rust_log: String,
    /// The proxy binary (default: [`node_proxy`]).
    pub binary: Option<PathBuf>,
    /// The eBPF object (default: [`ebpf_object`]).
    pub ebpf_object: Option<PathBuf>,
}

impl Default for ProxyOptions {
    fn default() -> ProxyOptions {
        ProxyOptions {
            extra_args: Vec::new(),
            env: Vec::new(),
            rust_log: "info".to_owned(),
            binary: None,
            ebpf_object: None,
        }
    }
}

/// A running (or stopped) `node-proxy` process in a node; killed on drop.
#[derive(Debug)]
pub struct Proxy {
    node: Node,
    binary: PathBuf,
    args: Vec<OsString>,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Proxy {
    /// Starts the proxy in `node`.
    ///
    /// # Panics
    /// When the binary or the eBPF object is missing (the message says how to build them), or
    /// the process cannot start.
    pub fn start(node: &Node, options: ProxyOptions) -> Proxy {
        let binary = options.binary.unwrap_or_else(node_proxy);
        let object = options.ebpf_object.unwrap_or_else(ebpf_object);
        let mut args: Vec<OsString> = vec!["run".into(), "--ebpf-object".into(), object.into()];
        args.push("--cgroup".into());
        args.push(node.cgroup().path().into());
        args.push("--bpffs-dir".into());
        args.push(node.bpffs_dir().into());
        args.push("--state-dir".into());
        args.push(node.state_dir().into());
        args.push("--cni-socket".into());
        args.push(node.cni_socket().into());
        args.push("--metrics-addr".into());
        args.push(format!("127.0.0.1:{METRICS_PORT}").into());
        args.push("--readiness-addr".into());
        args.push(format!("127.0.0.1:{READINESS_PORT}").into());
        args.extend(options.extra_args.into_iter().map(OsString::from));
        let mut env = vec![("RUST_LOG".to_owned(), options.rust_log)];
        env.extend(options.env);
        let mut proxy = Proxy {
            node: node.clone(),
            binary,
            args,
            env,
            log: node.log_dir().join("proxy.log"),
            child: None,
            starts: 0,
        };
        proxy.spawn();
        proxy
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let _ = writeln!(
            log,
            "=== marrow-tests: start #{} of node-proxy",
            self.starts
        );
        let stderr = log.try_clone().expect("cannot duplicate the log file");
        let mut cmd = self.node.command(&self.binary);
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.binary.display()));
        self.child = Some(child);
    }

    /// The arguments the proxy was started with (after the program name).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its exit status if it has exited, `None` while it runs (or when it was never started).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Polls `GET /healthz/ready` on 127.0.0.1:15021 inside the node until it answers 200.
    ///
    /// # Errors
    /// When the proxy exits or `timeout` passes first; the error carries the log's tail.
    pub fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                bail!(
                    "node-proxy exited ({status}) before it was ready; log tail:\n{}",
                    tail(&self.log, LOG_TAIL_LINES)
                );
            }
            let last = match self.node.http_get(READINESS_PORT, "/healthz/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("status {}: {}", r.status, r.body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "node-proxy not ready after {timeout:?} (last: {last}); log tail:\n{}",
                    tail(&self.log, LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path` on 127.0.0.1:`port` inside the node.
    ///
    /// # Errors
    /// On connect/I/O errors or a malformed response.
    pub fn http_get(&self, port: u16, path: &str) -> anyhow::Result<HttpResponse> {
        self.node.http_get(port, path)
    }

    /// The Prometheus text from 127.0.0.1:15020/metrics inside the node.
    ///
    /// # Panics
    /// When the request fails or does not answer 200.
    pub fn metrics(&self) -> String {
        let r = self
            .http_get(METRICS_PORT, "/metrics")
            .unwrap_or_else(|e| panic!("GET /metrics failed: {e:#}"));
        assert_eq!(
            r.status, 200,
            "GET /metrics answered {}: {}",
            r.status, r.body
        );
        r.body
    }

    /// SIGKILL and reap; returns the exit status (`None` if it was not running).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        self.child.take().and_then(|mut c| kill_and_reap(&mut c))
    }

    /// SIGTERM, then waits up to `timeout` for it to exit (SIGKILL after that). Returns the
    /// exit status if it exited by itself in time.
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet,
            // so the pid still names it.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let status = wait_timeout(&mut child, timeout);
        if status.is_none() {
            kill_and_reap(&mut child);
        }
        status
    }

    /// Starts a second `node-proxy` on the same node with the same arguments, as an upgrade
    /// does (it takes over from this one), logging to its own `proxy-<serial>.log`.
    pub fn start_successor(&self) -> Proxy {
        let mut next = Proxy {
            node: self.node.clone(),
            binary: self.binary.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            log: self
                .node
                .log_dir()
                .join(format!("proxy-{}.log", crate::names::next_serial())),
            child: None,
            starts: 0,
        };
        next.spawn();
        next
    }

    /// Sends SIGTERM without waiting (see [`Proxy::wait_exit`]).
    pub fn signal_terminate(&self) {
        let Some(child) = &self.child else { return };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: kill has no memory-safety preconditions; the child is not reaped yet,
            // so the pid still names it.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; its status, or `None` if it
    /// still runs (it is left running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = wait_timeout(self.child.as_mut()?, timeout);
        if status.is_some() {
            self.child = None;
        }
        status
    }

    /// Waits up to `timeout` until the log has a line containing `needle`.
    ///
    /// # Errors
    /// When the time passes first or the process exits; the error carries the log's tail.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().lines().any(|line| line.contains(needle)) {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                bail!(
                    "node-proxy exited ({status}) before logging {needle:?}; log tail:\n{}",
                    tail(&self.log, LOG_TAIL_LINES)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "node-proxy did not log {needle:?} within {timeout:?}; log tail:\n{}",
                    tail(&self.log, LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the proxy (if running) and starts it again with the same arguments.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The log file (stdout and stderr of every start).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            print_tail("node-proxy log", &self.log, LOG_TAIL_LINES);
        }
    }
}
