//! A CNI runtime for tests: runs a plugin chain by the CNI exec protocol.
//!
//! Each plugin runs inside the runtime's network namespace (the node's netns, entered in
//! `pre_exec`) with a cleared environment plus `PATH` and the `CNI_*` variables. Its stdin is
//! the plugin's config from the chain with `name` and `cniVersion` injected and `prevResult`
//! set: for ADD the previous plugin's result, in order; for DEL the cached ADD result, in reverse
//! order; for CHECK the cached ADD result, in order. A failing plugin yields a [`CniError`] that
//! names it and carries its exit code, its CNI error object and its stderr.

use std::fmt;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::binaries::cni_path;
use crate::process::{enter_paths, kill_and_reap, wait_timeout};

/// The CNI version every chain speaks (Debian's plugins 1.1.1 stop at 1.0.0).
pub const CNI_VERSION: &str = "1.0.0";
/// How long one plugin may run before the harness kills it.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A CNI operation (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    /// `ADD`
    Add,
    /// `DEL`
    Del,
    /// `CHECK`
    Check,
    /// `VERSION`
    Version,
    /// `STATUS` (spec 1.1)
    Status,
    /// `GC` (spec 1.1)
    Gc,
}

impl CniCommand {
    /// The value of `CNI_COMMAND`.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
            CniCommand::Version => "VERSION",
            CniCommand::Status => "STATUS",
            CniCommand::Gc => "GC",
        }
    }
}

impl fmt::Display for CniCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the runtime tells the plugins about one attachment (the `CNI_*` variables).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniArgs {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the pod's namespace file.
    pub netns: PathBuf,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `K8S_POD_NAMESPACE` in `CNI_ARGS`.
    pub pod_namespace: String,
    /// `K8S_POD_NAME` in `CNI_ARGS`.
    pub pod_name: String,
    /// `K8S_POD_UID` in `CNI_ARGS`.
    pub pod_uid: String,
}

impl CniArgs {
    /// `CNI_ARGS` as kubelet/containerd write it. `IgnoreUnknown=1` comes first because
    /// `host-local` refuses keys it does not know otherwise.
    pub fn cni_args(&self) -> String {
        format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        )
    }

    /// The complete environment for `command` (besides `PATH`).
    pub fn env(&self, command: CniCommand, cni_path: &[PathBuf]) -> Vec<(String, String)> {
        vec![
            ("CNI_COMMAND".to_owned(), command.as_str().to_owned()),
            ("CNI_CONTAINERID".to_owned(), self.container_id.clone()),
            ("CNI_NETNS".to_owned(), self.netns.display().to_string()),
            ("CNI_IFNAME".to_owned(), self.ifname.clone()),
            ("CNI_ARGS".to_owned(), self.cni_args()),
            ("CNI_PATH".to_owned(), join_path(cni_path)),
        ]
    }
}

fn join_path(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// What one plugin execution produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginOutput {
    /// The plugin's `type`.
    pub plugin: String,
    /// Its exit code; `None` when it was killed by a signal (or by the harness's timeout).
    pub exit_code: Option<i32>,
    /// Everything it printed on stdout (a result or a CNI error object).
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// Whether the harness killed it for running past the timeout.
    pub timed_out: bool,
}

impl PluginOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// stdout parsed as a CNI error object, if it is one.
    pub fn error_body(&self) -> Option<CniErrorBody> {
        serde_json::from_str(&self.stdout).ok()
    }
}

/// The CNI error object a failing plugin prints on stdout.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CniErrorBody {
    /// `cniVersion`, if present.
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    /// The error code (1–99 are reserved by the spec; 11 is "try again later").
    pub code: u32,
    /// A short message.
    #[serde(default)]
    pub msg: String,
    /// Longer details.
    #[serde(default)]
    pub details: String,
}

/// A chain operation that failed in one plugin.
#[derive(Clone, Debug, thiserror::Error)]
#[error(
    "CNI {command} failed in plugin {plugin}: {problem} (exit code {exit_code:?}, error {error:?}, stderr {stderr:?})"
)]
pub struct CniError {
    /// The failing plugin's `type`.
    pub plugin: String,
    /// The operation.
    pub command: CniCommand,
    /// What went wrong, in words (non-zero exit, no valid result, timeout, …).
    pub problem: String,
    /// Its exit code; `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// The CNI error object it printed, if it printed one.
    pub error: Option<CniErrorBody>,
    /// Its raw stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

impl CniError {
    fn from_output(command: CniCommand, out: PluginOutput, problem: String) -> Box<CniError> {
        Box::new(CniError {
            error: out.error_body(),
            plugin: out.plugin,
            command,
            problem,
            exit_code: out.exit_code,
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// The CNI error code, if the plugin printed an error object.
    pub fn code(&self) -> Option<u32> {
        self.error.as_ref().map(|e| e.code)
    }
}

/// A plugin chain (a conflist) and where to run it.
#[derive(Clone, Debug)]
pub struct CniChain {
    name: String,
    cni_version: String,
    plugins: Vec<Value>,
    cni_path: Vec<PathBuf>,
    runtime_netns: PathBuf,
    timeout: Duration,
}

impl CniChain {
    /// A chain called `name` of `plugins` (each a JSON object with a `type`), run inside the
    /// network namespace file `runtime_netns`, with `CNI_PATH` = `/usr/lib/cni:<bin dir>`.
    pub fn new(name: &str, plugins: Vec<Value>, runtime_netns: PathBuf) -> CniChain {
        CniChain {
            name: name.to_owned(),
            cni_version: CNI_VERSION.to_owned(),
            plugins,
            cni_path: cni_path(),
            runtime_netns,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
        }
    }

    /// Appends a plugin.
    pub fn with_plugin(mut self, plugin: Value) -> CniChain {
        self.plugins.push(plugin);
        self
    }

    /// Replaces `CNI_PATH`.
    pub fn with_cni_path(mut self, dirs: Vec<PathBuf>) -> CniChain {
        self.cni_path = dirs;
        self
    }

    /// Replaces the per-plugin timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> CniChain {
        self.timeout = timeout;
        self
    }

    /// The network name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin configs, in chain order.
    pub fn plugins(&self) -> &[Value] {
        &self.plugins
    }

    /// `CNI_PATH`.
    pub fn cni_path(&self) -> &[PathBuf] {
        &self.cni_path
    }

    /// The chain as a conflist document.
    pub fn conflist(&self) -> Value {
        json!({ "cniVersion": self.cni_version, "name": self.name, "plugins": self.plugins })
    }

    /// The stdin for plugin `index`: its config with `name`, `cniVersion` and `prevResult`.
    ///
    /// # Panics
    /// When `index` is out of range or the plugin config is not an object.
    pub fn plugin_stdin(&self, index: usize, prev_result: Option<&Value>) -> Value {
        let mut conf = self.plugins[index].clone();
        let obj = conf
            .as_object_mut()
            .expect("a plugin config is a JSON object");
        obj.insert("name".to_owned(), json!(self.name));
        obj.insert("cniVersion".to_owned(), json!(self.cni_version));
        match prev_result {
            Some(prev) => obj.insert("prevResult".to_owned(), prev.clone()),
            None => obj.remove("prevResult"),
        };
        conf
    }

    /// The `type` of plugin `index`.
    fn plugin_type(&self, index: usize) -> String {
        self.plugins[index]
            .get("type")
            .and_then(Value::as_str)
            .expect("a plugin config has a string \"type\"")
            .to_owned()
    }

    /// The executable for `plugin_type`, searched in `CNI_PATH`.
    pub fn plugin_binary(&self, plugin_type: &str) -> Option<PathBuf> {
        self.cni_path
            .iter()
            .map(|d| d.join(plugin_type))
            .find(|p| p.is_file())
    }

    /// ADD: every plugin in order, each given the previous one's result. Returns the last
    /// plugin's result.
    pub fn add(&self, args: &CniArgs) -> Result<Value, Box<CniError>> {
        let mut prev: Option<Value> = None;
        for index in 0..self.plugins.len() {
            let out = self.run(index, CniCommand::Add, args, prev.as_ref())?;
            let result: Value = serde_json::from_str(&out.stdout).map_err(|e| {
                CniError::from_output(
                    CniCommand::Add,
                    out.clone(),
                    format!("exited 0 but printed no JSON result: {e}"),
                )
            })?;
            if !result.is_object() {
                return Err(CniError::from_output(
                    CniCommand::Add,
                    out,
                    "exited 0 but its result is not a JSON object".to_owned(),
                ));
            }
            prev = Some(result);
        }
        Ok(prev.unwrap_or_else(|| json!({ "cniVersion": self.cni_version })))
    }

    /// DEL: every plugin in reverse order, each given the cached ADD result. Stops at the
    /// first failure.
    pub fn del(&self, args: &CniArgs, prev_result: Option<&Value>) -> Result<(), Box<CniError>> {
        for index in (0..self.plugins.len()).rev() {
            self.run(index, CniCommand::Del, args, prev_result)?;
        }
        Ok(())
    }

    /// CHECK: every plugin in order, each given the cached ADD result.
    pub fn check(&self, args: &CniArgs, prev_result: &Value) -> Result<(), Box<CniError>> {
        for index in 0..self.plugins.len() {
            self.run(index, CniCommand::Check, args, Some(prev_result))?;
        }
        Ok(())
    }

    fn run(
        &self,
        index: usize,
        command: CniCommand,
        args: &CniArgs,
        prev: Option<&Value>,
    ) -> Result<PluginOutput, Box<CniError>> {
        let plugin = self.plugin_type(index);
        let stdin = self.plugin_stdin(index, prev).to_string();
        let env = args.env(command, &self.cni_path);
        // No panics on this path: DEL runs from Pod::drop, possibly during a panic.
        let out = self
            .try_exec_plugin(&plugin, stdin.as_bytes(), &env)
            .map_err(|problem| {
                Box::new(CniError {
                    plugin: plugin.clone(),
                    command,
                    problem,
                    exit_code: None,
                    error: None,
                    stdout: String::new(),
                    stderr: String::new(),
                })
            })?;
        if out.timed_out {
            let problem = format!("killed after running {:?}", self.timeout);
            return Err(CniError::from_output(command, out, problem));
        }
        if !out.success() {
            let problem = match out.exit_code {
                Some(code) => format!("exited with code {code}"),
                None => "killed by a signal".to_owned(),
            };
            return Err(CniError::from_output(command, out, problem));
        }
        Ok(out)
    }

    /// Runs plugin `plugin_type` once, inside the runtime netns, with exactly `stdin` and an
    /// environment of `PATH` plus `env`: for bad-input tests.
    ///
    /// # Panics
    /// When the plugin binary is not in `CNI_PATH` or cannot be started.
    pub fn exec_plugin(
        &self,
        plugin_type: &str,
        stdin: &[u8],
        env: &[(String, String)],
    ) -> PluginOutput {
        self.try_exec_plugin(plugin_type, stdin, env)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_exec_plugin(
        &self,
        plugin_type: &str,
        stdin: &[u8],
        env: &[(String, String)],
    ) -> Result<PluginOutput, String> {
        let binary = self.plugin_binary(plugin_type).ok_or_else(|| {
            let hint = if plugin_type == "redirect-cni" {
                "run `cargo build --workspace --bins`"
            } else {
                "install the Debian package containernetworking-plugins"
            };
            format!(
                "CNI plugin {plugin_type} not found in {}: {hint}",
                join_path(&self.cni_path)
            )
        })?;
        exec(
            &binary,
            plugin_type,
            Some(&self.runtime_netns),
            stdin,
            env,
            self.timeout,
        )
    }
}

/// Runs `binary` in `netns` with `stdin` and env `PATH` + `env`, killing it after `timeout`.
fn exec(
    binary: &Path,
    plugin: &str,
    netns: Option<&Path>,
    stdin: &[u8],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<PluginOutput, String> {
    let mut cmd = Command::new(binary);
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    enter_paths(&mut cmd, netns, None)?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start CNI plugin {}: {e}", binary.display()))?;
    let (Some(mut child_in), Some(child_out), Some(child_err)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        kill_and_reap(&mut child);
        return Err("the plugin's stdio was not piped".to_owned());
    };
    let input = stdin.to_vec();
    // A plugin that does not read its stdin must not block us: write from a thread.
    let writer = std::thread::spawn(move || {
        let _ = child_in.write_all(&input);
    });
    let stdout = reader(child_out);
    let stderr = reader(child_err);
    let status = wait_timeout(&mut child, timeout);
    let timed_out = status.is_none();
    let status = status.or_else(|| kill_and_reap(&mut child));
    let _ = writer.join();
    Ok(PluginOutput {
        plugin: plugin.to_owned(),
        exit_code: status.and_then(|s| s.code()),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
        timed_out,
    })
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The IP addresses of a CNI 1.0 result (`ips[].address`, prefix length dropped), in order.
///
/// # Errors
/// When `ips` is missing or an address does not parse.
pub fn result_ips(result: &Value) -> Result<Vec<IpAddr>, String> {
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("result has no \"ips\" array: {result}"))?;
    ips.iter()
        .map(|ip| {
            let address = ip
                .get("address")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("ips entry without \"address\": {ip}"))?;
            let addr = address.split_once('/').map_or(address, |(a, _)| a);
            addr.parse()
                .map_err(|e| format!("bad address {address:?} in result: {e}"))
        })
        .collect()
}

/// The `bridge` plugin with `host-local` IPAM, as the harness configures it for a node.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// The bridge's interface name (≤ 15 bytes, unique per node).
    pub bridge: String,
    /// The node's IPv4 pod range, e.g. `10.244.1.0/24`.
    pub ipv4_subnet: String,
    /// The node's IPv6 pod range, e.g. `fd00:1::/64`, for dual-stack nodes.
    pub ipv6_subnet: Option<String>,
    /// host-local's `dataDir` (inside the node's temporary directory).
    pub data_dir: PathBuf,
}

/// The `bridge` plugin config: gateway on the bridge, no masquerading, default routes.
pub fn bridge_plugin(cfg: &BridgeConfig) -> Value {
    let mut ranges = vec![json!([{ "subnet": cfg.ipv4_subnet }])];
    let mut routes = vec![json!({ "dst": "0.0.0.0/0" })];
    if let Some(v6) = &cfg.ipv6_subnet {
        ranges.push(json!([{ "subnet": v6 }]));
        routes.push(json!({ "dst": "::/0" }));
    }
    json!({
        "type": "bridge",
        "bridge": cfg.bridge,
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "dataDir": cfg.data_dir,
            "ranges": ranges,
            "routes": routes,
        },
    })
}

/// The `redirect-cni` plugin config pointing at a node proxy's enrollment socket.
pub fn redirect_plugin(proxy_socket: &Path) -> Value {
    json!({
        "type": "redirect-cni",
        "proxySocket": proxy_socket,
        "proxyTimeoutMs": 3000,
    })
}

#[cfg(test)]
mod tests;
