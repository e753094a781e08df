//! The `node-proxy` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node_proxy::capture::{self, Capture, CaptureConfig};
use node_proxy::config::Config;
use node_proxy::http::{self, Readiness};
use node_proxy::inpod::server::EnrollmentServer;
use node_proxy::inpod::{RecordStore, Registry};
use node_proxy::metrics::Metrics;
use node_proxy::netns::HostNetns;
use node_proxy::proxy::ProxySettings;

#[derive(Parser)]
#[command(name = "node-proxy", version, about = "marrow's per-node proxy")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "MARROW_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the capture, serve enrollment and proxy enrolled pods.
    Run(RunArgs),
    /// Remove this proxy's pinned eBPF maps and links: capture ends for every pod on the node.
    Cleanup {
        /// The proxy's bpffs directory.
        #[arg(long, env = "MARROW_BPFFS_DIR", default_value = "/sys/fs/bpf/marrow")]
        bpffs_dir: PathBuf,
    },
}

/// Flags of `run`; each overrides its `MARROW_*` variable, which overrides the default.
#[derive(clap::Args)]
struct RunArgs {
    /// Compiled eBPF object.
    #[arg(long, env = "MARROW_EBPF_OBJECT")]
    ebpf_object: Option<PathBuf>,
    /// bpffs directory for this proxy's pins.
    #[arg(long, env = "MARROW_BPFFS_DIR")]
    bpffs_dir: Option<PathBuf>,
    /// cgroup2 directory to attach to (default: the cgroup2 root).
    #[arg(long, env = "MARROW_CGROUP")]
    cgroup: Option<PathBuf>,
    /// Directory for enrollment records.
    #[arg(long, env = "MARROW_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Enrollment socket path.
    #[arg(long, env = "MARROW_CNI_SOCKET")]
    cni_socket: Option<PathBuf>,
    /// `/metrics` address.
    #[arg(long, env = "MARROW_METRICS_ADDR")]
    metrics_addr: Option<SocketAddr>,
    /// `/healthz/ready` address.
    #[arg(long, env = "MARROW_READINESS_ADDR")]
    readiness_addr: Option<SocketAddr>,
    /// Upstream/app connect timeout in milliseconds.
    #[arg(long, env = "MARROW_CONNECT_TIMEOUT_MS")]
    connect_timeout_ms: Option<u64>,
    /// Runtime worker threads.
    #[arg(long, env = "MARROW_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Source ports (LO-HI) of connections to apps that keep the client's address.
    #[arg(long, env = "MARROW_INBOUND_SOURCE_PORTS", value_parser = node_proxy::config::parse_port_range)]
    inbound_source_ports: Option<(u16, u16)>,
}

impl RunArgs {
    fn into_config(self) -> Config {
        let d = Config::default();
        Config {
            ebpf_object: self.ebpf_object.unwrap_or(d.ebpf_object),
            bpffs_dir: self.bpffs_dir.unwrap_or(d.bpffs_dir),
            cgroup: self.cgroup.or(d.cgroup),
            state_dir: self.state_dir.unwrap_or(d.state_dir),
            cni_socket: self.cni_socket.unwrap_or(d.cni_socket),
            metrics_addr: self.metrics_addr.unwrap_or(d.metrics_addr),
            readiness_addr: self.readiness_addr.unwrap_or(d.readiness_addr),
            connect_timeout: self
                .connect_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.connect_timeout),
            worker_threads: self.worker_threads.unwrap_or(d.worker_threads),
            inbound_source_ports: self.inbound_source_ports.unwrap_or(d.inbound_source_ports),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match cli.command {
        Command::Run(args) => {
            let config = args.into_config();
            config.validate()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.worker_threads)
                .enable_all()
                .build()
                .context("building the runtime")?;
            runtime.block_on(run(config))
        }
        Command::Cleanup { bpffs_dir } => {
            capture::remove_pins(&bpffs_dir)
                .with_context(|| format!("removing {}", bpffs_dir.display()))?;
            tracing::info!(dir = %bpffs_dir.display(), "pins removed; capture detached");
            Ok(())
        }
    }
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Captured before any netns switch: every switch returns here.
    let host = HostNetns::current().context("opening the proxy's own netns")?;
    let cgroup = config.cgroup_or_root()?;
    let capture = Capture::load(&CaptureConfig {
        object: config.ebpf_object.clone(),
        bpffs_dir: config.bpffs_dir.clone(),
        cgroup: cgroup.clone(),
    })?;
    tracing::info!(cgroup = %cgroup.display(), bpffs = %config.bpffs_dir.display(), "capture loaded");

    let metrics = Arc::new(Metrics::default());
    let mut prom = prometheus_client::registry::Registry::default();
    metrics.register(&mut prom);
    let readiness = Arc::new(Readiness::default());
    let metrics_listener = http::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", config.metrics_addr))?;
    let readiness_listener = http::bind(config.readiness_addr)
        .await
        .with_context(|| format!("binding --readiness-addr {}", config.readiness_addr))?;
    let metrics_task = tokio::spawn(http::serve_metrics(metrics_listener, Arc::new(prom)));
    let readiness_task = tokio::spawn(http::serve_readiness(readiness_listener, readiness.clone()));

    let records = RecordStore::open(config.state_dir.join("pods"))?;
    let registry = Arc::new(Registry::new(
        host,
        capture,
        records,
        metrics,
        ProxySettings {
            connect_timeout: config.connect_timeout,
            inbound_source_ports: config.inbound_source_ports,
        },
    ));
    let restored = registry.restore().await;
    tracing::info!(restored, "enrollment records re-adopted");

    let server = EnrollmentServer::bind(&config.cni_socket)?;
    let server_task = tokio::spawn(server.serve(registry.clone(), readiness.clone()));
    readiness.set(true);
    tracing::info!("node proxy ready");

    shutdown_signal().await;
    readiness.set(false);
    tracing::info!(
        "shutting down; pinned capture stays in place, enrolled pods fail closed until restart"
    );
    server_task.abort();
    metrics_task.abort();
    readiness_task.abort();
    let _ = std::fs::remove_file(&config.cni_socket);
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stopping");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
