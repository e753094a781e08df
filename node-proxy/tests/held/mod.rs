//! Held connections through the node proxy's real data path on loopback, for memory figures.
//!
//! Two pods in one private network namespace (made with `unshare`, so the kernel removes it
//! with the process, also when a test fails): `client` at 10.77.0.1 and `server` at 10.77.0.2,
//! both on `lo`. An iptables REDIRECT stands in for the eBPF capture, so the client app's
//! connections to `server:8080` reach the client pod's outbound listener (15001) with
//! `SO_ORIGINAL_DST` set; from there on everything is the proxy's own code: the outbound plan,
//! the pooled HBONE connection (mutual TLS from a local CA, HTTP/2 CONNECT), the server pod's
//! 15008, its policy decision and its source-preserving connection to the app, the connection
//! table, the metrics and the relays. The apps are plain blocking sockets: they allocate nothing
//! on the heap, so the heap counts the proxy alone (both node proxies: one process here).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use marrow_mesh::hbone::pool::{Pool, PoolSettings};
use marrow_mesh::identity::{
    CertificateManager, LocalCa, LocalCaOptions, ManagerConfig, TrustDomain, create_ca,
};
use marrow_mesh::resilience::Destinations;
use marrow_mesh::state::StateStore;
use marrow_wire::enrollment::PodIdentity;
use node_proxy::metrics::Metrics;
use node_proxy::netns::{HostNetns, PodNetns};
use node_proxy::proxy::connections::ConnectionTable;
use node_proxy::proxy::connector::PodConnector;
use node_proxy::proxy::context::MeshContext;
use node_proxy::proxy::local_identity::LocalIdentity;
use node_proxy::proxy::source_port::{LiveInbound, SourcePorts};
use node_proxy::proxy::{Direction, PodContext, PodMesh, ProxySettings, TcpCopy, serve};
use tokio::net::TcpListener;

/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The server pod's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The server app's port.
pub const APP_PORT: u16 = 8080;

/// Both pods in the mesh, as a state file.
const STATE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: held, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: held, uid: uid-client, labels: {app: client, version: v1}}
spec: {nodeName: node-a, serviceAccountName: client, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 10.77.0.1, podIPs: [{ip: 10.77.0.1}], conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: held, uid: uid-server, labels: {app: server, version: v1}}
spec: {nodeName: node-b, serviceAccountName: server, containers: [{name: app, image: app}]}
status: {phase: Running, podIP: 10.77.0.2, podIPs: [{ip: 10.77.0.2}], conditions: [{type: Ready, status: "True"}]}
"#;

/// Why this machine cannot run the harness, if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (a network namespace and iptables)".to_owned());
    }
    for tool in ["ip", "iptables"] {
        let found = Command::new(tool).arg("-V").output().is_ok();
        if !found {
            return Some(format!(
                "{tool} is missing (Debian packages iproute2, iptables)"
            ));
        }
    }
    None
}

/// Moves the calling thread (call it first in `main`, before any other thread exists) into a
/// new network namespace with both pods' addresses on `lo` and the capture rule.
pub fn enter_private_netns() -> anyhow::Result<()> {
    // SAFETY: plain syscall; CLONE_NEWNET moves only this thread, which has no sockets yet.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    let client = format!("{CLIENT_IP}/32");
    let server = format!("{SERVER_IP}/32");
    let port = APP_PORT.to_string();
    let redirect = [
        "-t",
        "nat",
        "-A",
        "OUTPUT",
        "-p",
        "tcp",
        "-d",
        &server,
        "--dport",
        &port,
        "-m",
        "mark",
        "--mark",
        "0",
        "-j",
        "REDIRECT",
        "--to-ports",
        "15001",
    ];
    run("ip", &["link", "set", "lo", "up"])?;
    run("ip", &["addr", "add", &client, "dev", "lo"])?;
    run("ip", &["addr", "add", &server, "dev", "lo"])?;
    run("iptables", &redirect)
}

fn run(tool: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(tool)
        .args(args)
        .status()
        .context(tool.to_owned())?;
    if !status.success() {
        bail!("{tool} {args:?}: {status}");
    }
    Ok(())
}

/// Installs the subscriber the node proxy runs with (`info`, formatted; written nowhere): its
/// per-connection spans hold formatted fields, a part of what a connection costs.
pub fn production_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let format = tracing_subscriber::fmt::layer().with_writer(std::io::sink);
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(format)
        .init();
}

/// Both pods' data paths, serving.
pub struct Mesh {
    /// The table both pods share (one process stands for both node proxies).
    pub connections: Arc<ConnectionTable>,
    _ca_dir: tempfile::TempDir,
    pods: Vec<Arc<PodContext>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Mesh {
    /// Starts both pods' listeners (call inside the runtime, in the private netns).
    pub async fn start() -> anyhow::Result<Mesh> {
        let ca_dir = tempfile::tempdir()?;
        let trust_domain = TrustDomain::new("cluster.local")?;
        let files = create_ca(
            ca_dir.path(),
            &trust_domain,
            Duration::from_secs(30 * 86_400),
        )?;
        let ca = LocalCa::load(&files, trust_domain.clone(), LocalCaOptions::default())?;
        let certs = Arc::new(CertificateManager::new(
            Arc::new(ca),
            ManagerConfig::default(),
        ));
        let state = Arc::new(StateStore::new());
        state.apply(marrow_mesh::state::file::parse(
            Path::new("held.yaml"),
            STATE.as_bytes(),
        )?);
        let metrics = Arc::new(Metrics::default());
        let connections = Arc::new(ConnectionTable::new(&metrics));
        let context = Arc::new(MeshContext {
            state,
            certs,
            trust_domain,
            node_name: None,
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            key_exchange: Default::default(),
            metrics: metrics.clone(),
            destinations: Arc::new(Destinations::new(metrics.resilience.clone())),
            enrollment_wait: Duration::ZERO,
        });
        let host = HostNetns::current()?;
        let pod = |name: &str, ip: Ipv4Addr| -> anyhow::Result<Arc<PodContext>> {
            let own: std::os::fd::OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")?.into();
            let netns = Arc::new(PodNetns::new(own, host.clone())?);
            let connector = Arc::new(PodConnector {
                netns: netns.clone(),
                mesh: context.clone(),
            });
            Ok(Arc::new(PodContext {
                pod: PodIdentity {
                    uid: format!("uid-{name}"),
                    namespace: "held".into(),
                    name: name.into(),
                    service_account: Some(name.into()),
                },
                ips: vec![IpAddr::V4(ip)],
                netns,
                metrics: metrics.clone(),
                settings: ProxySettings {
                    connect_timeout: Duration::from_secs(10),
                    inbound_source_ports: (1024, 32767),
                    hbone_reuse: true,
                    tcp_copy: TcpCopy::default(),
                },
                source_ports: SourcePorts::new(1024..=32767, 0),
                live_inbound: LiveInbound::default(),
                mesh: Some(PodMesh {
                    context: context.clone(),
                    pool: Pool::new(connector, PoolSettings::default()),
                    identity: LocalIdentity::default(),
                    server_config: std::sync::Mutex::new(None),
                }),
                connections: connections.clone(),
                drain: marrow_mesh::drain::Drain::new(),
                labels: Default::default(),
            }))
        };
        let client = pod("client", CLIENT_IP)?;
        let server = pod("server", SERVER_IP)?;
        let outbound = TcpListener::bind((Ipv4Addr::LOCALHOST, 15001)).await?;
        let hbone = TcpListener::bind((SERVER_IP, 15008)).await?;
        let tasks = vec![
            tokio::spawn(serve(client.clone(), outbound, Direction::Outbound)),
            tokio::spawn(serve(server.clone(), hbone, Direction::InboundTunnel)),
        ];
        Ok(Mesh {
            connections,
            _ca_dir: ca_dir,
            pods: vec![client, server],
            tasks,
        })
    }

    /// Stops the listeners and lets both pods go.
    pub fn stop(self) {
        for task in &self.tasks {
            task.abort();
        }
        drop(self.pods);
    }
}

/// The server app: accepts, reads each connection's first byte, and holds it.
pub struct App {
    held: Arc<Mutex<Vec<StdStream>>>,
}

impl App {
    /// Listens on the server pod's app port.
    pub fn start() -> anyhow::Result<App> {
        let listener = StdListener::bind((SERVER_IP, APP_PORT))?;
        let held = Arc::new(Mutex::new(Vec::new()));
        let list = held.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut first = [0u8; 1];
                if stream.read_exact(&mut first).is_ok() {
                    list.lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(stream);
                }
            }
        });
        Ok(App { held })
    }

    /// How many connections it holds.
    pub fn count(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Closes every connection it holds.
    pub fn close_all(&self) {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

/// Opens `n` client connections to the server app (captured, so through the mesh), each
/// sending one byte, from a plain thread (blocking sockets).
pub fn open_clients(n: usize) -> anyhow::Result<Vec<StdStream>> {
    let server = SocketAddr::from((SERVER_IP, APP_PORT));
    (0..n)
        .map(|_| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            socket.bind(&SocketAddr::from((CLIENT_IP, 0)).into())?;
            socket.connect(&server.into())?;
            let mut stream: StdStream = socket.into();
            stream.write_all(b"x")?;
            Ok(stream)
        })
        .collect()
}

/// Waits until `done` holds, failing after `limit` with `what` (a hang guard, not a timing).
pub async fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            bail!("gave up waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
