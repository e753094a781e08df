//! The `redirect-cni` executable end to end: environment and stdin in, exit code, stdout JSON
//! and stderr out, as a container runtime sees it.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test"
)]

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use marrow_wire::enrollment::{Request, Response, decode_request};
use marrow_wire::seqpacket::{recv_datagram, send_datagram};
use serde_json::{Value, json};
use socket2::{Domain, SockAddr, Socket, Type};

const BIN: &str = env!("CARGO_BIN_EXE_redirect-cni");

/// Runs the plugin with exactly `env` (no inherited variables) and `stdin`.
fn plugin(env: &[(&str, &str)], stdin: &str) -> (Output, Value) {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).expect("stdout is one JSON object")
    };
    (out, json)
}

/// A directory removed on drop, named after the test.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("rcni-cli-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn socket(&self) -> String {
        self.0.join("cni.sock").display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(socket: &str) -> String {
    json!({
        "cniVersion": "1.1.0",
        "name": "k8s-pod-network",
        "type": "redirect-cni",
        "proxySocket": socket,
        "proxyTimeoutMs": 2000,
        "prevResult": {
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/p"}],
            "ips": [{"address": "10.22.0.7/16", "interface": 0}],
            "dns": {}
        }
    })
    .to_string()
}

const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_UID=u-1";

#[test]
fn version_prints_supported_versions() {
    let (out, json) = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(out.status.success());
    assert_eq!(json["cniVersion"], "1.0.0");
    assert_eq!(
        json["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
}

#[test]
fn del_and_status_without_a_proxy() {
    let dir = TempDir::new("absent");
    let socket = dir.socket();
    let del = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (out, json) = plugin(&del, &config(&socket));
    assert!(out.status.success(), "{json}");
    assert_eq!(json, Value::Null, "DEL prints nothing");
    assert!(String::from_utf8_lossy(&out.stderr).contains("level=warn"));

    let (out, json) = plugin(&[("CNI_COMMAND", "STATUS")], &config(&socket));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["code"], 50);
    assert!(json["msg"].as_str().unwrap().contains(&socket), "{json}");
}

#[test]
fn bad_input_exits_1_with_a_cni_error() {
    let (out, json) = plugin(&[("CNI_COMMAND", "DEL")], "{");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        json["code"], 4,
        "missing variables are found before stdin is parsed"
    );

    let del = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
    ];
    let (out, json) = plugin(&del, "{");
    assert_eq!(
        (out.status.code(), json["code"].as_u64()),
        (Some(1), Some(6))
    );

    let (out, json) = plugin(&[], "");
    assert_eq!(
        (out.status.code(), json["code"].as_u64()),
        (Some(1), Some(4))
    );
}

#[test]
fn add_into_the_plugins_own_namespace_is_refused() {
    let dir = TempDir::new("own-netns");
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/proc/self/ns/net"),
        ("CNI_ARGS", POD_ARGS),
    ];
    let (out, json) = plugin(&env, &config(&dir.socket()));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["code"], 4, "{json}");
}

/// A process in a network namespace of its own, killed on drop.
struct ForeignNetns(Child);

impl ForeignNetns {
    /// `None` when this machine cannot create one (no `unshare`, no privileges).
    fn create() -> Option<Self> {
        let ours = std::fs::metadata("/proc/self/ns/net").ok()?;
        for args in [&["--net", "sleep", "60"][..], &["-rn", "sleep", "60"]] {
            let Ok(child) = Command::new("unshare")
                .args(args)
                .stderr(Stdio::null())
                .spawn()
            else {
                return None;
            };
            let netns = Self(child);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let theirs = std::fs::metadata(netns.path());
                if theirs.is_ok_and(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino()) != (ours.dev(), ours.ino())
                }) {
                    return Some(netns);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        None
    }

    fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.0.id())
    }
}

impl Drop for ForeignNetns {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn add_enrolls_through_the_socket_and_prints_the_result() {
    let Some(netns) = ForeignNetns::create() else {
        eprintln!("skipped: cannot create a network namespace here (unshare)");
        return;
    };
    let dir = TempDir::new("add");
    let socket = dir.socket();
    let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None).unwrap();
    listener
        .bind(&SockAddr::unix(Path::new(&socket)).unwrap())
        .unwrap();
    listener.listen(1).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let datagram = recv_datagram(conn.as_fd()).unwrap().unwrap();
        let request = decode_request(&datagram).unwrap();
        let answer = Response::Ok {
            detail: "enrolled".into(),
        };
        send_datagram(conn.as_fd(), &serde_json::to_vec(&answer).unwrap(), None).unwrap();
        (request, datagram.fds.len())
    });
    let netns_path = netns.path();
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns_path.as_str()),
        ("CNI_ARGS", POD_ARGS),
        ("CNI_PATH", "/opt/cni/bin"),
    ];
    let (out, json) = plugin(&env, &config(&socket));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{json} {stderr}");
    assert_eq!(json["ips"][0]["address"], "10.22.0.7/16");
    assert_eq!(json["dns"], json!({}));
    assert!(stderr.contains("enrolled"), "{stderr}");
    let (request, fds) = server.join().unwrap();
    let Request::Add { add, .. } = request else {
        panic!("not an add: {request:?}")
    };
    assert_eq!(
        (add.pod.uid.as_str(), add.netns_path.as_str(), fds),
        ("u-1", &*netns_path, 1)
    );
}
