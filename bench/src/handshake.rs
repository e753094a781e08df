//! The TLS stack alone: new mutual-TLS handshakes per second of the node proxy's own
//! `identity` and `tls` modules (in `marrow-mesh`) — TLS 1.3, ECDSA P-256 workload
//! certificates from a local CA, rustls on aws-lc-rs, no resumption — with client and server
//! in one process over loopback TCP, once per key-exchange setting (`--tls-key-exchange`: the
//! X25519MLKEM768 hybrid preferred, and X25519MLKEM768 only). No proxy, no HTTP/2, no
//! namespaces: the ceiling on brand-new HBONE connections, not a mesh figure.
//!
//! Each handshake is a new TCP connection, the client's and the server's handshake (each side
//! verifies the other's chain and SPIFFE identity, as the proxies do), then one byte from the
//! server once it has accepted the client, so a counted handshake is complete on both sides.
//! `clients` tasks do this in closed loops for a fixed time against one accepting task (which
//! spawns one task per connection) on a runtime with a worker per CPU. CPU time is the whole
//! process's (`/proc/self/stat`): both sides of every handshake.
//!
//! `cargo xtask bench` runs a debug build of the bench, in which rustls and aws-lc's C code run
//! several times slower, so the bench runs the release build of itself
//! (`target/release/marrow-bench --handshakes-only --json FILE`) and reads the file.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use marrow_mesh::identity::{LocalCa, LocalCaOptions, SpiffeId, TrustDomain, create_ca};
use marrow_mesh::tls::{self, KeyExchange};
use rustls::{ClientConfig, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::procfs;
use super::report::median;

/// Concurrent clients of each run.
pub const CLIENTS: [usize; 2] = [1, 4];
/// Bound on one handshake (a stuck peer must not hang the run).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Prefix of the CA's temporary directory (the run's leftover check looks for it).
const TEMP_PREFIX: &str = "marrow-test-bench-tls-";

/// One run: `clients` closed loops for `seconds`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HandshakeRun {
    /// The key-exchange setting of both ends (`--tls-key-exchange`).
    #[serde(default)]
    pub key_exchange: String,
    /// The group the handshakes negotiated, e.g. `X25519MLKEM768`.
    #[serde(default)]
    pub group: Option<String>,
    /// Concurrent clients.
    pub clients: usize,
    /// Wall-clock seconds, until the last handshake in flight finished.
    pub seconds: f64,
    /// Handshakes completed on both sides.
    pub handshakes: u64,
    /// Failed attempts (client or server side).
    pub errors: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// CPU seconds of the process (client and server sides together).
    pub cpu_seconds: f64,
}

impl HandshakeRun {
    /// Handshakes per second.
    pub fn per_second(&self) -> f64 {
        self.handshakes as f64 / self.seconds.max(f64::EPSILON)
    }

    /// CPU microseconds per handshake, both sides.
    pub fn cpu_us_per_handshake(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.handshakes.max(1) as f64
    }
}

/// Every run of the handshake measurement.
#[derive(Clone, Debug)]
pub struct HandshakeFigures {
    /// Each run, in the order they ran.
    pub runs: Vec<HandshakeRun>,
    /// Whether they ran in a release build (a debug build's figures mean little).
    pub release: bool,
}

impl HandshakeFigures {
    /// The runs of one setting and number of clients.
    fn runs_of(&self, kx: KeyExchange, clients: usize) -> Vec<&HandshakeRun> {
        self.runs
            .iter()
            .filter(|r| r.clients == clients && r.key_exchange == kx.as_str())
            .collect()
    }

    /// Table rows: label, value (medians over the runs with the same setting and number of
    /// clients).
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows = Vec::new();
        for kx in KeyExchange::ALL {
            let group = self
                .runs
                .iter()
                .find(|r| r.key_exchange == kx.as_str())
                .and_then(|r| r.group.clone())
                .unwrap_or_else(|| "—".to_owned());
            rows.push((format!("{kx}: key exchange negotiated"), group));
            for clients in CLIENTS {
                let runs = self.runs_of(kx, clients);
                let med = |f: fn(&HandshakeRun) -> f64| {
                    median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
                        .map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"))
                };
                let plural = if clients == 1 { "" } else { "s" };
                rows.push((
                    format!("  new mTLS handshakes/s, {clients} client{plural}"),
                    med(HandshakeRun::per_second),
                ));
                rows.push((
                    "    CPU µs per handshake (client + server)".to_owned(),
                    med(HandshakeRun::cpu_us_per_handshake),
                ));
            }
        }
        let errors: u64 = self.runs.iter().map(|r| r.errors).sum();
        rows.push((
            "failed handshakes (all runs)".to_owned(),
            errors.to_string(),
        ));
        rows
    }

    /// The figures as JSON: every run, and the medians per setting and number of clients.
    pub fn json(&self) -> serde_json::Value {
        let medians: serde_json::Map<String, serde_json::Value> = KeyExchange::ALL
            .iter()
            .map(|&kx| {
                let by_clients: serde_json::Map<String, serde_json::Value> = CLIENTS
                    .iter()
                    .map(|&clients| {
                        let runs = self.runs_of(kx, clients);
                        let med = |f: fn(&HandshakeRun) -> f64| {
                            median(&runs.iter().map(|r| f(r)).collect::<Vec<_>>())
                        };
                        let value = serde_json::json!({
                            "handshakes_per_s": med(HandshakeRun::per_second),
                            "cpu_us_per_handshake": med(HandshakeRun::cpu_us_per_handshake),
                        });
                        (clients.to_string(), value)
                    })
                    .collect();
                (kx.to_string(), serde_json::Value::Object(by_clients))
            })
            .collect();
        serde_json::json!({
            "what": "TLS stack alone: node-proxy's identity + tls modules in one process over \
                     loopback TCP (TLS 1.3, ECDSA P-256, rustls on aws-lc-rs, no resumption), \
                     per --tls-key-exchange setting",
            "release_build": self.release,
            "median_by_key_exchange_and_clients": medians,
            "runs": self.runs,
        })
    }
}

/// Runs the measurement in the release build of `marrow-bench` in `bin_dir` (`quick` sizes,
/// `rounds` rounds), printing its lines, and reads its figures back.
pub fn measure_in_release(
    bin_dir: &Path,
    quick: bool,
    rounds: u32,
) -> anyhow::Result<HandshakeFigures> {
    let dir = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir()
        .context("creating a temporary directory")?;
    let file = dir.path().join("handshakes.json");
    let mut cmd = Command::new(bin_dir.join(crate::BINARY));
    cmd.args(["--handshakes-only", "--no-build"])
        .args(["--rounds", &rounds.to_string()])
        .arg("--json")
        .arg(&file);
    if quick {
        cmd.arg("--quick");
    }
    marrow_tests::command::run(&mut cmd)?;
    let parse = || -> anyhow::Result<HandshakeFigures> {
        let text = std::fs::read_to_string(&file)?;
        let value: serde_json::Value = serde_json::from_str(&text)?;
        let figures = &value["tls_handshakes"];
        Ok(HandshakeFigures {
            runs: serde_json::from_value(figures["runs"].clone())?,
            release: figures["release_build"].as_bool().unwrap_or(false),
        })
    };
    parse().with_context(|| format!("reading the figures in {}", file.display()))
}

/// Measures in this process: `rounds` rounds of one run per key-exchange setting and entry of
/// [`CLIENTS`], each `seconds` long (both ends with the same setting).
pub fn measure(seconds: u64, rounds: u32) -> anyhow::Result<HandshakeFigures> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let dir = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempdir()
        .context("creating the CA's directory")?;
    let td = TrustDomain::default();
    let files = create_ca(dir.path(), &td, Duration::from_secs(3600))?;
    let ca = LocalCa::load(&files, td.clone(), LocalCaOptions::default())?;
    let client_id = SpiffeId::new(&td, "bench", "client")?;
    let server_id = SpiffeId::new(&td, "bench", "server")?;
    let (client_cert, server_cert) = (ca.issue(&client_id)?, ca.issue(&server_id)?);
    let mut runs = Vec::new();
    for _ in 0..rounds.max(1) {
        for kx in KeyExchange::ALL {
            let peers = Peers {
                client: tls::client_config(&client_cert, server_id.clone(), kx)?,
                server: tls::server_config(&server_cert, kx)?,
                trust_domain: td.clone(),
                client_id: client_id.clone(),
            };
            for clients in CLIENTS {
                let mut run =
                    runtime.block_on(run_once(&peers, clients, Duration::from_secs(seconds)))?;
                run.key_exchange = kx.to_string();
                println!(
                    "    TLS stack alone, {kx}, {clients} client(s): {:>6.0} handshakes/s  {:>6.0} CPU µs each  ({})  errors {}{}",
                    run.per_second(),
                    run.cpu_us_per_handshake(),
                    run.group.as_deref().unwrap_or("no group"),
                    run.errors,
                    run.first_error
                        .as_deref()
                        .map(|e| format!(" (first: {e})"))
                        .unwrap_or_default()
                );
                if run.handshakes == 0 {
                    bail!("no handshake completed with {kx} and {clients} client(s)");
                }
                runs.push(run);
            }
        }
    }
    Ok(HandshakeFigures {
        runs,
        release: !cfg!(debug_assertions),
    })
}

/// Both ends' TLS configurations, and what the server checks the client to be.
struct Peers {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    trust_domain: TrustDomain,
    client_id: SpiffeId,
}

/// One run: an accepting task, `clients` client tasks until `duration` has passed.
async fn run_once(
    peers: &Peers,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<HandshakeRun> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let server_errors = Arc::new(AtomicU64::new(0));
    let acceptor = tokio::spawn(serve(
        listener,
        peers.server.clone(),
        peers.trust_domain.clone(),
        peers.client_id.clone(),
        server_errors.clone(),
    ));
    let cpu_before = procfs::cpu_ticks(std::process::id())?;
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| tokio::spawn(client_loop(peers.client.clone(), addr, deadline)))
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        let tally = task.await.context("a client task panicked")?;
        total.ok += tally.ok;
        total.errors += tally.errors;
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
        if total.group.is_none() {
            total.group = tally.group;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let ticks = procfs::cpu_ticks(std::process::id())?.saturating_sub(cpu_before);
    acceptor.abort();
    Ok(HandshakeRun {
        key_exchange: String::new(),
        group: total.group,
        clients,
        seconds,
        handshakes: total.ok,
        errors: total.errors + server_errors.load(Ordering::Relaxed),
        first_error: total.first_error,
        cpu_seconds: ticks as f64 / procfs::clock_ticks_per_second() as f64,
    })
}

/// What one client task did.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    /// The key-exchange group of the first handshake.
    group: Option<String>,
}

/// Handshakes one after the other until `deadline`.
async fn client_loop(config: Arc<ClientConfig>, addr: SocketAddr, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&config, addr)).await {
            Ok(Ok(group)) => {
                tally.ok += 1;
                tally.group.get_or_insert(group);
            }
            Ok(Err(e)) => {
                tally.errors += 1;
                tally.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
            Err(_) => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| "handshake timed out".to_owned());
            }
        }
    }
    tally
}

/// One client handshake, complete when the server's byte arrives (it sends it once it has
/// accepted the client's certificate); the key-exchange group it negotiated.
async fn handshake(config: &Arc<ClientConfig>, addr: SocketAddr) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let mut stream = tls::connect(config.clone(), addr.ip(), tcp).await?;
    let group = stream
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map_or_else(|| "none".to_owned(), |g| format!("{:?}", g.name()));
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .await
        .context("reading the server's byte")?;
    Ok(group)
}

/// Accepts connections, each on its own task: the server handshake, the client's identity
/// checked, one byte back.
async fn serve(
    listener: TcpListener,
    config: Arc<ServerConfig>,
    trust_domain: TrustDomain,
    expected: SpiffeId,
    errors: Arc<AtomicU64>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            errors.fetch_add(1, Ordering::Relaxed);
            // Out of descriptors, most likely: let the clients' sockets close.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (config, trust_domain, expected, errors) = (
            config.clone(),
            trust_domain.clone(),
            expected.clone(),
            errors.clone(),
        );
        tokio::spawn(async move {
            let accepted = async {
                let _ = tcp.set_nodelay(true);
                let mut stream = tls::accept(config, tcp).await?;
                let peer = tls::peer_identity(stream.get_ref().1, &trust_domain)?;
                if peer != expected {
                    bail!("the client presented {peer}, expected {expected}");
                }
                stream.write_all(b"k").await?;
                stream.flush().await?;
                anyhow::Ok(())
            };
            if tokio::time::timeout(HANDSHAKE_TIMEOUT, accepted)
                .await
                .map_or(true, |r| r.is_err())
            {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
