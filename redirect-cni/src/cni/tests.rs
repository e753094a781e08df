//! Unit tests: parsers with good and bad input, request choice, error mapping, and the whole
//! plugin against fake node proxies on temporary `SOCK_SEQPACKET` sockets. The shared helpers
//! live here; the tests in [`parse`] and [`proxy`].

mod parse;
mod proxy;

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use socket2::{Domain, SockAddr, Socket, Type};

use super::*;
use marrow_wire::enrollment::{
    Attachment, ErrorKind, PROTOCOL_VERSION, PodIdentity, ProtocolError, Request, Response,
    decode_request,
};
use marrow_wire::seqpacket::{Datagram, recv_datagram, send_datagram};

// ---------------------------------------------------------------------------------------------
// Helpers

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;\
                        K8S_POD_INFRA_CONTAINER_ID=c0ffee;K8S_POD_UID=7f3a-11";

fn env(vars: &[(&str, &str)]) -> HashMap<String, String> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn add_env(netns: &str) -> HashMap<String, String> {
    env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", POD_ARGS),
        ("CNI_PATH", "/opt/cni/bin"),
    ])
}

fn command_env(command: &str) -> HashMap<String, String> {
    env(&[
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c0ffee"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ])
}

/// What a bridge + host-local chain hands on, with fields this plugin does not know.
fn prev_result() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "00:11:22:33:44:55"},
            {"name": "veth1", "mac": "55:44:33:22:11:11"},
            {"name": "eth0", "mac": "99:88:77:66:55:44", "sandbox": "/var/run/netns/blue"}
        ],
        "ips": [
            {"address": "10.1.0.5/16", "gateway": "10.1.0.1", "interface": 2},
            {"address": "fd00::5/64", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
        "dns": {"nameservers": ["10.1.0.1"], "search": ["svc.cluster.local"]},
        "x-vendor": {"nested": [1, 2.5, null, true]}
    })
}

fn config(version: &str, socket: &Path) -> Value {
    json!({
        "cniVersion": version,
        "name": "k8s-pod-network",
        "type": "redirect-cni",
        "proxySocket": socket.to_str().unwrap(),
        "proxyTimeoutMs": 2000,
        "runtimeConfig": {"portMappings": []},
        "args": {"labels": {"app": "web"}},
        "prevResult": prev_result()
    })
}

/// Runs the plugin in-process; returns the outcome, stdout parsed, and the log.
fn run(env: &HashMap<String, String>, stdin: &[u8]) -> (Outcome, Value, String) {
    let mut log = Vec::new();
    let outcome = Plugin::new(env).run(&mut &stdin[..], &mut log);
    let stdout = outcome
        .stdout
        .as_deref()
        .map(|s| serde_json::from_str(s).expect("stdout must be JSON"))
        .unwrap_or(Value::Null);
    (outcome, stdout, String::from_utf8(log).unwrap())
}

fn run_json(env: &HashMap<String, String>, config: &Value) -> (Outcome, Value, String) {
    run(env, config.to_string().as_bytes())
}

/// Asserts a CNI error with `code` whose message contains every one of `words`.
#[track_caller]
fn assert_error(outcome: &Outcome, stdout: &Value, code: u32, words: &[&str]) {
    assert_eq!(outcome.exit_code, 1, "{stdout}");
    assert_eq!(stdout["code"], code, "{stdout}");
    let msg = stdout["msg"].as_str().unwrap();
    for word in words {
        assert!(msg.contains(word), "{word:?} not in {msg:?}");
    }
    assert!(stdout["cniVersion"].is_string(), "{stdout}");
}

fn parse_err(stdin: &Value) -> CniError {
    NetConf::parse(stdin.to_string().as_bytes()).unwrap_err()
}

/// A directory removed on drop, named after the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rcni-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn socket(&self) -> PathBuf {
        self.0.join("cni.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request as the fake proxy saw it.
struct Received {
    request: Request,
    netns: Option<NetnsId>,
}

fn listen(path: &Path) -> Socket {
    let sock = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    sock.bind(&SockAddr::unix(path).unwrap()).unwrap();
    sock.listen(8).unwrap();
    // A test that never connects fails instead of hanging.
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    sock
}

/// A fake node proxy answering one request per entry of `answers`, in order.
fn fake_proxy(path: &Path, answers: Vec<Response>) -> JoinHandle<Vec<Received>> {
    let listener = listen(path);
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for answer in answers {
            let (conn, _) = listener.accept().unwrap();
            let datagram: Datagram = recv_datagram(conn.as_fd()).unwrap().unwrap();
            let request = decode_request(&datagram).unwrap();
            let netns = datagram
                .fds
                .first()
                .map(|fd| NetnsId::of_file(&std::fs::File::from(fd.try_clone().unwrap())).unwrap());
            seen.push(Received { request, netns });
            send_datagram(conn.as_fd(), &serde_json::to_vec(&answer).unwrap(), None).unwrap();
        }
        seen
    })
}

fn ok() -> Response {
    Response::Ok {
        detail: "done".into(),
    }
}

fn refusal(kind: ErrorKind, message: &str) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

fn attachment() -> Attachment {
    Attachment {
        container_id: "c0ffee".into(),
        ifname: "eth0".into(),
    }
}

fn own_netns() -> NetnsId {
    NetnsId::of_path(Path::new("/proc/self/ns/net")).unwrap()
}
