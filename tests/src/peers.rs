//! The L7 applications and clients the waypoint tests and the demo run inside pods: an HTTP/1.1
//! echo server and a gRPC server and client (`tests/peers/*.py`, on Debian's python3 and
//! python3-grpcio), and curl. Real clients and servers, so what the waypoint proxies is what
//! real software sends.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::Pod;
use crate::process::PodProcess;

/// Debian's Python, which has python3-grpcio (a pyenv or venv `python3` on `PATH` may not).
pub const SYSTEM_PYTHON: &str = "/usr/bin/python3";
/// Bound on a peer server printing that it listens.
const READY: Duration = Duration::from_secs(15);

/// A peer script's path in the source tree.
pub fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(name)
}

/// Whether the tools the L7 peers need are installed, or the missing one's name (for a skip
/// message): curl, and Debian's python3 with the grpc module.
pub fn missing_tool() -> Option<&'static str> {
    let runs = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !runs("curl", &["--version"]) {
        return Some("curl");
    }
    if !runs(SYSTEM_PYTHON, &["-c", "import grpc"]) {
        return Some("python3-grpcio");
    }
    None
}

/// Starts the HTTP/1.1 echo server on `port` in `pod`, answering as `name`; waits until it listens.
pub fn http_echo(pod: &Pod, port: u16, name: &str) -> PodProcess {
    let script = script("http_echo.py");
    let port = port.to_string();
    let server = pod.spawn(
        SYSTEM_PYTHON,
        &[&script.to_string_lossy(), "--port", &port, "--name", name],
    );
    server.wait_for_line("listening", READY);
    server
}

/// Starts the gRPC server on `port` in `pod`, answering as `name`; waits until it listens.
pub fn grpc_server(pod: &Pod, port: u16, name: &str) -> PodProcess {
    let script = script("grpc_peer.py");
    let port = port.to_string();
    let server = pod.spawn(
        SYSTEM_PYTHON,
        &[
            &script.to_string_lossy(),
            "serve",
            "--port",
            &port,
            "--name",
            name,
        ],
    );
    server.wait_for_line("listening", READY);
    server
}

/// What a gRPC call got: its status code name (`OK`, `PERMISSION_DENIED`, …), details,
/// messages and trailing metadata, as `grpc_peer.py call` prints them.
#[derive(Debug)]
pub struct GrpcReply {
    /// The status code's name.
    pub code: String,
    /// The status message.
    pub details: String,
    /// The response messages, as text.
    pub messages: Vec<String>,
    /// The whole JSON line.
    pub json: Value,
}

/// Calls `method` (`Say` or `Count`) on the gRPC server at `addr` from inside `pod`.
///
/// # Panics
/// When the client does not run or prints no JSON line (a call that failed with a status does
/// not panic: its code is in the reply).
pub fn grpc_call(
    pod: &Pod,
    addr: SocketAddr,
    method: &str,
    data: &str,
    metadata: &[(&str, &str)],
) -> GrpcReply {
    let script = script("grpc_peer.py");
    let addr = addr.to_string();
    let mut args: Vec<String> = vec![
        script.to_string_lossy().into_owned(),
        "call".into(),
        addr,
        "--method".into(),
        method.into(),
        "--data".into(),
        data.into(),
    ];
    for (k, v) in metadata {
        args.push("--metadata".into());
        args.push(format!("{k}={v}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = pod.output(SYSTEM_PYTHON, &args);
    let json = last_json(&out)
        .unwrap_or_else(|| panic!("grpc_peer.py call printed no JSON: {}", describe(&out)));
    GrpcReply {
        code: json["code"].as_str().unwrap_or_default().to_owned(),
        details: json["details"].as_str().unwrap_or_default().to_owned(),
        messages: json["messages"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        json,
    }
}

/// What curl got: the status (0 when no response came), the body, and curl's exit code.
#[derive(Debug)]
pub struct CurlReply {
    /// The HTTP status, 0 when there was no response.
    pub status: u16,
    /// The response body.
    pub body: String,
    /// curl's exit code (0 on a response, e.g. 7 connect failure, 28 timeout, 52/56 reset).
    pub exit: i32,
    /// curl's stderr.
    pub stderr: String,
}

impl CurlReply {
    /// The body as JSON (the echo server's answer).
    ///
    /// # Panics
    /// When the body is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

/// Runs `curl -sS <args> -w '\n%{http_code}'` inside `pod` (10 s max).
pub fn curl(pod: &Pod, args: &[&str]) -> CurlReply {
    let mut all = vec!["-sS", "--max-time", "10", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = pod.output("curl", &all);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    CurlReply {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_owned(),
        exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What [`curl_many`] saw: how many answers of each status, and from which server (the
/// `x-served-by` header of `testpod http-serve --name`, `-` when absent).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    /// Answers by HTTP status (0: no response).
    pub by_status: std::collections::BTreeMap<u16, usize>,
    /// Answers by server name.
    pub by_server: std::collections::BTreeMap<String, usize>,
    /// Requests sent.
    pub total: usize,
}

impl Tally {
    /// Answers with this status.
    pub fn status(&self, status: u16) -> usize {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Answers from this server.
    pub fn server(&self, name: &str) -> usize {
        self.by_server.get(name).copied().unwrap_or(0)
    }

    /// The share of answers from `name`, 0 to 1.
    pub fn share(&self, name: &str) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        self.server(name) as f64 / self.total as f64
    }
}

/// Sends `count` GETs to `url` from one curl process inside `pod` (one keep-alive connection,
/// a real client), `args` added (e.g. `-H x-canary:true`), and tallies the answers.
pub fn curl_many(pod: &Pod, url: &str, count: usize, args: &[&str]) -> Tally {
    let config = std::env::temp_dir().join(format!(
        "marrow-curl-{}-{}-{count}.cfg",
        std::process::id(),
        pod.name()
    ));
    let mut text = String::with_capacity(count * (url.len() + 40));
    for _ in 0..count {
        text.push_str(&format!("url = \"{url}\"\noutput = \"/dev/null\"\n"));
    }
    let written = std::fs::write(&config, text);
    let mut all = vec![
        "-s",
        "--max-time",
        "60",
        "-w",
        "%{http_code} %header{x-served-by}\n",
    ];
    all.extend_from_slice(args);
    let config_arg = config.to_string_lossy().into_owned();
    all.extend_from_slice(&["-K", &config_arg]);
    let out = if written.is_ok() {
        String::from_utf8_lossy(&pod.output("curl", &all).stdout).into_owned()
    } else {
        String::new()
    };
    let _ = std::fs::remove_file(&config);
    let mut tally = Tally {
        total: count,
        ..Tally::default()
    };
    for line in out.lines() {
        let mut parts = line.split_whitespace();
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        let server = parts.next().unwrap_or("-").to_owned();
        *tally.by_status.entry(status).or_default() += 1;
        *tally.by_server.entry(server).or_default() += 1;
    }
    let answered: usize = tally.by_status.values().sum();
    if answered < count {
        *tally.by_status.entry(0).or_default() += count - answered;
    }
    tally
}

fn last_json(out: &Output) -> Option<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
