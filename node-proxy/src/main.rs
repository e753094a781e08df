//! The `node-proxy` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use node_proxy::admin::{self, LogControl};
use node_proxy::capture::{self, Capture, CaptureConfig};
use node_proxy::config::Config;
use node_proxy::drain::Drain;
use node_proxy::http::{self, Readiness};
use node_proxy::identity::{
    self, CaFiles, CertificateManager, LocalCa, LocalCaOptions, ManagerConfig, TrustDomain,
};
use node_proxy::inpod::server::{Enrollment, EnrollmentServer};
use node_proxy::inpod::{RecordStore, Registry};
use node_proxy::metrics::Metrics;
use node_proxy::netns::HostNetns;
use node_proxy::proxy::ProxySettings;
use node_proxy::proxy::connections::ConnectionTable;
use node_proxy::proxy::mesh::Mesh;
use node_proxy::state::StateStore;
use node_proxy::state::file::{FileWatch, LocalFileSource};
use node_proxy::upgrade;

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
    Run(Box<RunArgs>),
    /// Explain the L4 decision for a connection, from a state file: allow or deny, the deciding
    /// policy and rule, and why.
    Explain(ExplainArgs),
    /// The local mesh CA (demos, tests, small clusters).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Ask a running node proxy (its node-local admin API): workloads, services, policies,
    /// certificates, open connections, configuration, log level, or a policy decision.
    Admin(AdminArgs),
    /// Remove this proxy's pinned eBPF maps and links: capture ends for every pod on the node.
    Cleanup {
        /// The proxy's bpffs directory.
        #[arg(long, env = "MARROW_BPFFS_DIR", default_value = "/sys/fs/bpf/marrow")]
        bpffs_dir: PathBuf,
    },
    /// Put redirect-cni on this node and chain it into the primary CNI network, or take it
    /// out (the DaemonSet's installer container).
    #[command(subcommand)]
    Cni(CniCommand),
}

/// Flags of `explain`.
#[derive(clap::Args)]
struct ExplainArgs {
    /// The state file (Kubernetes YAML with Pods, Namespaces and Istio security policies).
    #[arg(long)]
    config: PathBuf,
    /// The client: `ns/pod`, or `ip:A.B.C.D` for a plaintext client outside the mesh.
    #[arg(long)]
    from: String,
    /// The server: `ns/pod`.
    #[arg(long)]
    to: String,
    /// The destination port.
    #[arg(long)]
    port: u16,
    /// Print `{"decision":..,"policy":..,"rule":..,"reason":..}`.
    #[arg(long)]
    json: bool,
    /// SPIFFE trust domain of the mesh.
    #[arg(long, default_value = node_proxy::identity::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, default_value = node_proxy::policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,
}

/// Flags of `admin`.
#[derive(clap::Args)]
struct AdminArgs {
    /// The admin API's address (`run --admin-addr`).
    #[arg(
        long,
        global = true,
        env = "MARROW_ADMIN_ADDR",
        default_value = "127.0.0.1:15000"
    )]
    addr: SocketAddr,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    what: AdminCommand,
}

/// `node-proxy admin …`.
#[derive(Subcommand)]
enum AdminCommand {
    /// The state's workloads, and the pods enrolled on this node.
    Workloads,
    /// The state's Services and EndpointSlices.
    Services,
    /// AuthorizationPolicies and PeerAuthentications in force, with their warnings.
    Policies,
    /// The identities this proxy holds certificates for, and their validity.
    Certificates,
    /// The connections open now: both ends, both identities, bytes each way, age.
    Connections,
    /// The effective configuration, state generation and trust domain.
    Config,
    /// The log filter in force; with --level, replace it.
    Logging {
        /// An EnvFilter directive, e.g. `debug` or `info,access=off`.
        #[arg(long)]
        level: Option<String>,
    },
    /// The running proxy's L4 decision for a connection (as `node-proxy explain`).
    Explain {
        /// The client: `ns/pod`, or `ip:A.B.C.D`.
        #[arg(long)]
        from: String,
        /// The server: `ns/pod`.
        #[arg(long)]
        to: String,
        /// The destination port.
        #[arg(long)]
        port: u16,
    },
}

/// `node-proxy ca …`.
#[derive(Subcommand)]
enum CaCommand {
    /// Create a self-signed ECDSA P-256 mesh CA: DIR/ca-cert.pem and DIR/ca-key.pem (0600).
    Create {
        /// Directory to write to (created if missing; existing CA files are never overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// SPIFFE trust domain.
        #[arg(long, default_value = node_proxy::identity::DEFAULT_TRUST_DOMAIN)]
        trust_domain: String,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u64,
    },
    /// Serve the mesh CA over Istio's CA protocol (gRPC CreateCertificate, TLS on :15012):
    /// node proxies obtain only the identities of pods on their own node.
    Serve(node_proxy::ca::ServeArgs),
}

/// `node-proxy cni …`.
#[derive(Subcommand)]
enum CniCommand {
    /// Copy the plugin into the bin dir and append it to the primary network's plugins (the
    /// lexically first *.conflist/*.conf/*.json of the conf dir). Idempotent.
    Install {
        #[command(flatten)]
        dirs: CniDirs,
        /// The redirect-cni binary to copy.
        #[arg(long, default_value = "/usr/lib/marrow/redirect-cni")]
        plugin_binary: PathBuf,
        /// The node proxy's enrollment socket, written as the entry's `proxySocket`.
        #[arg(long, default_value = redirect_cni::protocol::DEFAULT_SOCKET_PATH)]
        socket: PathBuf,
        /// Keep running: chain again whenever the primary CNI rewrites its config; exit on
        /// SIGTERM leaving everything in place.
        #[arg(long)]
        watch: bool,
        /// With --watch: seconds between checks.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        poll_secs: u64,
    },
    /// Take redirect-cni out of every network config and remove the binary.
    Uninstall {
        #[command(flatten)]
        dirs: CniDirs,
    },
    /// Exit 0 if the binary is in place and the primary network chains redirect-cni with this
    /// socket (a readiness check); otherwise say what is missing and exit 1.
    Check {
        #[command(flatten)]
        dirs: CniDirs,
        /// The socket the entry must name.
        #[arg(long, default_value = redirect_cni::protocol::DEFAULT_SOCKET_PATH)]
        socket: PathBuf,
    },
}

/// The host's CNI directories, as mounted into the installer.
#[derive(clap::Args)]
struct CniDirs {
    /// The CNI plugin directory (the host's /opt/cni/bin).
    #[arg(long)]
    bin_dir: PathBuf,
    /// The CNI network config directory (the host's /etc/cni/net.d).
    #[arg(long)]
    conf_dir: PathBuf,
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
    /// Admin API address (see `node-proxy admin`).
    #[arg(long, env = "MARROW_ADMIN_ADDR")]
    admin_addr: Option<SocketAddr>,
    /// Upstream/app connect timeout in milliseconds.
    #[arg(long, env = "MARROW_CONNECT_TIMEOUT_MS")]
    connect_timeout_ms: Option<u64>,
    /// Runtime worker threads.
    #[arg(long, env = "MARROW_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// Kubernetes YAML of Namespaces and Pods; with --ca-dir, turns on HBONE.
    #[arg(long, env = "MARROW_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// How often the state file is checked for changes, in milliseconds.
    #[arg(long, env = "MARROW_STATE_POLL_MS")]
    state_poll_ms: Option<u64>,
    /// Local mesh CA directory (ca-cert.pem, ca-key.pem): the CA key on this node (demos).
    #[arg(long, env = "MARROW_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// A CA speaking Istio's protocol (istiod, istio-csr, `node-proxy ca serve`), e.g.
    /// https://marrow-ca.marrow-system.svc:15012; instead of --ca-dir.
    #[arg(long, env = "MARROW_CA_ADDRESS")]
    ca_address: Option<String>,
    /// With --ca-address: PEM root bundle the CA and all peers chain to (during a root rotation
    /// old and new); re-read when it changes.
    #[arg(long, env = "MARROW_CA_ROOTS")]
    ca_roots: Option<PathBuf>,
    /// With --ca-address: this proxy's projected ServiceAccount token (audience istio-ca).
    #[arg(long, env = "MARROW_CA_TOKEN_FILE")]
    ca_token_file: Option<PathBuf>,
    /// With --ca-address: the name the CA's serving certificate must carry (default: the
    /// address's host).
    #[arg(long, env = "MARROW_CA_SERVER_NAME")]
    ca_server_name: Option<String>,
    /// With --ca-address: an extra header NAME=VALUE on every call (repeatable; istiod's
    /// ClusterID in a multicluster mesh).
    #[arg(long = "ca-header", env = "MARROW_CA_HEADERS", value_delimiter = ',',
        value_parser = node_proxy::config::parse_header)]
    ca_headers: Vec<(String, String)>,
    /// How often --ca-roots is checked for changes, in milliseconds.
    #[arg(long, env = "MARROW_CA_ROOTS_POLL_MS")]
    ca_roots_poll_ms: Option<u64>,
    /// SPIFFE trust domain.
    #[arg(long, env = "MARROW_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Namespace whose policies apply mesh-wide.
    #[arg(long, env = "MARROW_ROOT_NAMESPACE")]
    root_namespace: Option<String>,
    /// This node's name (Kubernetes: spec.nodeName of this DaemonSet pod).
    #[arg(long, env = "MARROW_NODE_NAME")]
    node_name: Option<String>,
    /// Lifetime of workload certificates, in seconds: what the local CA signs, what a remote
    /// CA is asked for (it may sign shorter); renewed at half-life.
    #[arg(long, env = "MARROW_CERT_TTL_SECS")]
    cert_ttl_secs: Option<u64>,
    /// HBONE TLS handshake timeout in milliseconds.
    #[arg(long, env = "MARROW_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: Option<u64>,
    /// HBONE TLS key exchange: prefer-post-quantum (X25519MLKEM768, then X25519, P-256, P-384)
    /// or post-quantum-only (X25519MLKEM768 alone, as ztunnel's COMPLIANCE_POLICY=pqc).
    #[arg(long, env = "MARROW_TLS_KEY_EXCHANGE", value_parser = node_proxy::config::parse_key_exchange)]
    tls_key_exchange: Option<node_proxy::tls::KeyExchange>,
    /// Source ports (LO-HI) of connections to apps that keep the client's address.
    #[arg(long, env = "MARROW_INBOUND_SOURCE_PORTS", value_parser = node_proxy::config::parse_port_range)]
    inbound_source_ports: Option<(u16, u16)>,
    /// The cluster the workloads are in (`source_cluster`/`destination_cluster` labels).
    #[arg(long, env = "MARROW_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Seconds open connections may go on after SIGTERM or a hand-over to a new proxy.
    #[arg(long, env = "MARROW_DRAIN_TIMEOUT_SECS")]
    drain_timeout_secs: Option<u64>,
    /// Watch the Kubernetes API server (in-cluster, or KUBECONFIG) instead of --state-file.
    #[arg(long, env = "MARROW_KUBE")]
    kube: bool,
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
            admin_addr: self.admin_addr.unwrap_or(d.admin_addr),
            connect_timeout: self
                .connect_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.connect_timeout),
            worker_threads: self.worker_threads.unwrap_or(d.worker_threads),
            inbound_source_ports: self.inbound_source_ports.unwrap_or(d.inbound_source_ports),
            state_file: self.state_file.or(d.state_file),
            kube: self.kube,
            state_poll: self
                .state_poll_ms
                .map(Duration::from_millis)
                .unwrap_or(d.state_poll),
            ca_dir: self.ca_dir.or(d.ca_dir),
            ca_address: self.ca_address.or(d.ca_address),
            ca_roots: self.ca_roots.or(d.ca_roots),
            ca_token_file: self.ca_token_file.unwrap_or(d.ca_token_file),
            ca_server_name: self.ca_server_name.or(d.ca_server_name),
            ca_headers: if self.ca_headers.is_empty() {
                d.ca_headers
            } else {
                self.ca_headers
            },
            ca_roots_poll: self
                .ca_roots_poll_ms
                .map(Duration::from_millis)
                .unwrap_or(d.ca_roots_poll),
            trust_domain: self.trust_domain.unwrap_or(d.trust_domain),
            root_namespace: self.root_namespace.unwrap_or(d.root_namespace),
            node_name: self.node_name.or(d.node_name),
            cert_ttl: self
                .cert_ttl_secs
                .map(Duration::from_secs)
                .unwrap_or(d.cert_ttl),
            handshake_timeout: self
                .handshake_timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(d.handshake_timeout),
            tls_key_exchange: self.tls_key_exchange.unwrap_or(d.tls_key_exchange),
            cluster_id: self.cluster_id.unwrap_or(d.cluster_id),
            drain_timeout: self
                .drain_timeout_secs
                .map(Duration::from_secs)
                .unwrap_or(d.drain_timeout),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match cli.command {
        Command::Run(args) => {
            let config = (*args).into_config();
            config.validate()?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(config.worker_threads)
                .enable_all()
                .build()
                .context("building the runtime")?;
            runtime.block_on(run(config))
        }
        Command::Explain(args) => explain_command(&args),
        Command::Admin(args) => admin_command(&args),
        Command::Ca(CaCommand::Create {
            dir,
            trust_domain,
            days,
        }) => {
            let td = TrustDomain::new(&trust_domain)?;
            let files =
                identity::create_ca(&dir, &td, Duration::from_secs(days.saturating_mul(86_400)))?;
            println!("{}\n{}", files.cert.display(), files.key.display());
            Ok(())
        }
        Command::Ca(CaCommand::Serve(args)) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("building the runtime")?;
            runtime.block_on(node_proxy::ca::run(args))?;
            Ok(())
        }
        Command::Cleanup { bpffs_dir } => {
            capture::remove_pins(&bpffs_dir)
                .with_context(|| format!("removing {}", bpffs_dir.display()))?;
            tracing::info!(dir = %bpffs_dir.display(), "pins removed; capture detached");
            Ok(())
        }
        Command::Cni(command) => cni_command(command),
    }
}

/// The log filter installed by [`init_tracing`], for the admin API's `/logging`.
static LOG_FILTER: OnceLock<Arc<dyn LogControl>> = OnceLock::new();

/// Logs to stderr, as text or JSON lines, through a filter (`RUST_LOG`, default `info`) that
/// the admin API can replace at run time.
fn init_tracing(json: bool) {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let format = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let format = if json {
        format.json().boxed()
    } else {
        format.boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
    let _ = LOG_FILTER.set(Arc::new(admin::ReloadableFilter::new(handle)));
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

    let metrics = Arc::new(Metrics::new(&config.cluster_id));
    let connections = Arc::new(ConnectionTable::new(&metrics));
    let mut prom = prometheus_client::registry::Registry::default();
    metrics.register(&mut prom);
    let readiness = Arc::new(Readiness::default());
    let metrics_listener = http::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding --metrics-addr {}", config.metrics_addr))?;
    let metrics_task = tokio::spawn(http::serve_metrics(metrics_listener, Arc::new(prom)));

    let (mesh, _state_watch) = match start_mesh(&config, &metrics, &connections, &readiness).await?
    {
        Some((mesh, watch)) => (Some(mesh), Some(watch)),
        None => (None, None),
    };
    let admin_listener = http::bind(config.admin_addr)
        .await
        .with_context(|| format!("binding --admin-addr {}", config.admin_addr))?;
    let mut admin = admin::AdminState {
        state: mesh.as_ref().map(|m| m.state.clone()),
        trust_domain: TrustDomain::new(&config.trust_domain)?,
        certs: mesh.as_ref().map(|m| m.certs.clone()),
        connections: connections.clone(),
        enrolled: None,
        config: config.clone(),
        logging: LOG_FILTER.get().cloned(),
    };
    let records = RecordStore::open(config.state_dir.join("pods"))?;
    let drain = Drain::new();
    let reconcile_host = host.clone();
    let mesh_for_reconcile = mesh.clone();
    let registry = Arc::new(Registry::new(
        host,
        capture,
        records,
        metrics,
        ProxySettings {
            connect_timeout: config.connect_timeout,
            inbound_source_ports: config.inbound_source_ports,
        },
        mesh,
        connections,
        drain.clone(),
    ));
    admin.enrolled = Some(registry.clone());
    let admin_task = tokio::spawn(admin::serve(admin_listener, Arc::new(admin)));
    let (server, predecessor) = take_over_or_bind(&config, &registry).await?;
    let restored = registry.restore().await;
    tracing::info!(restored, "enrollment records re-adopted");
    let enrollment = Enrollment::start(server, registry.clone(), readiness.clone())
        .context("starting the enrollment server")?;
    if let Some((takeover, adopted)) = predecessor {
        // From here the previous proxy stops accepting; both served the same sockets so far.
        let confirmed = tokio::task::spawn_blocking(move || takeover.confirm(adopted)).await;
        match confirmed {
            Ok(Ok(())) => tracing::info!(adopted, "took over from the previous node proxy"),
            Ok(Err(error)) => {
                tracing::warn!(%error, "the previous node proxy did not hear the confirmation")
            }
            Err(error) => tracing::warn!(%error, "confirming the take-over failed"),
        }
    }
    let handoff_path = config.state_dir.join(upgrade::HANDOFF_SOCKET);
    let handoff = upgrade::bind(&handoff_path)?;
    // The files this process serves, by inode: at exit it removes them only if no successor
    // has bound its own since (a failed hand-off leaves both running for a while).
    let own_sockets = [&config.cni_socket, &handoff_path].map(|path| (path.clone(), inode(path)));
    // Readiness is bound only now, after any take-over: during an upgrade both processes
    // share the port (SO_REUSEPORT), and a probe must not find this one ready before it
    // serves the pods.
    let readiness_listener = http::bind(config.readiness_addr)
        .await
        .with_context(|| format!("binding --readiness-addr {}", config.readiness_addr))?;
    let readiness_task = tokio::spawn(http::serve_readiness(readiness_listener, readiness.clone()));
    let mut successor = tokio::spawn(upgrade::serve_successor(
        handoff,
        handoff_path.clone(),
        registry.clone(),
        enrollment.clone(),
    ));
    // With the API server as source, pods of this node that belong in the mesh but were never
    // enrolled (running before the install, or labelled later) are enrolled here.
    let _reconcile = match (&mesh_for_reconcile, &config.node_name) {
        (Some(mesh), Some(node)) if config.kube => Some(AbortOnDrop(tokio::spawn(
            node_proxy::inpod::reconcile::run(
                registry.clone(),
                mesh.clone(),
                reconcile_host.clone(),
                node.clone(),
                std::path::PathBuf::from("/proc"),
                node_proxy::inpod::reconcile::DEFAULT_EVERY,
            ),
        ))),
        _ => None,
    };
    readiness.set(true);
    tracing::info!("node proxy ready");

    let handed_over = tokio::select! {
        () = node_proxy::drain::shutdown_signal() => {
            successor.abort();
            false
        }
        handed = &mut successor => {
            tracing::info!(pods = handed.unwrap_or_default(), "a new node proxy took over");
            true
        }
    };
    // Readiness first, so nothing new is sent here; then stop accepting; then drain.
    readiness.set(false);
    if handed_over {
        // The successor answers readiness on the same port (SO_REUSEPORT); leave it alone.
        readiness_task.abort();
    }
    enrollment.stop().await;
    let stopped = registry.stop_accepting().await;
    let in_flight = drain.in_flight();
    tracing::info!(
        pods = stopped,
        connections = in_flight,
        deadline_secs = config.drain_timeout.as_secs(),
        handed_over,
        "stopped accepting; draining open connections"
    );
    let draining = drain.drain(config.drain_timeout);
    tokio::pin!(draining);
    let left = loop {
        tokio::select! {
            left = &mut draining => break left,
            // Kubernetes signals the old pod while it drains after a hand-over: not a reason
            // to cut connections short.
            () = node_proxy::drain::shutdown_signal() => tracing::info!("signal while draining; the drain goes on to its deadline"),
        }
    };
    if left > 0 {
        tracing::warn!(
            connections = left,
            "drain deadline passed; closing the connections left"
        );
    } else {
        tracing::info!("every connection finished");
    }
    metrics_task.abort();
    readiness_task.abort();
    admin_task.abort();
    if !handed_over {
        // Nobody serves these any more; enrolled pods fail closed (pinned capture stays) until
        // a proxy starts again and re-adopts them from the records.
        for (path, bound) in &own_sockets {
            if bound.is_some() && inode(path) == *bound {
                let _ = std::fs::remove_file(path);
            }
        }
        tracing::info!(
            "stopped; pinned capture stays in place, enrolled pods fail closed until restart"
        );
    }
    Ok(())
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The inode of the file at `path`, if there is one.
fn inode(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|meta| meta.ino())
}

/// Asks a node proxy already running here to hand over its pods and sockets (an upgrade); if
/// there is none, or the hand-off fails, binds the enrollment socket afresh. Returns the
/// enrollment server and, after a take-over, what to confirm to the previous proxy.
async fn take_over_or_bind(
    config: &Config,
    registry: &Arc<Registry>,
) -> anyhow::Result<(EnrollmentServer, Option<(upgrade::TakeOver, usize)>)> {
    let path = config.state_dir.join(upgrade::HANDOFF_SOCKET);
    let asked = tokio::task::spawn_blocking(move || upgrade::take_over(&path))
        .await
        .context("asking a running node proxy to hand over")?;
    let mut takeover = match asked {
        Ok(Some(takeover)) => takeover,
        Ok(None) => return Ok((EnrollmentServer::bind(&config.cni_socket)?, None)),
        Err(error) => {
            tracing::warn!(%error, "a running node proxy did not hand over; starting afresh beside it");
            return Ok((EnrollmentServer::bind(&config.cni_socket)?, None));
        }
    };
    // Certificates first: the pods' first connections then find them.
    let certificates = registry.adopt_certificates(&takeover.certificates);
    tracing::info!(
        certificates,
        offered = takeover.certificates.len(),
        "workload certificates taken over"
    );
    let mut adopted = 0;
    for pod in std::mem::take(&mut takeover.pods) {
        let who = format!("{}/{}", pod.record.pod.namespace, pod.record.pod.name);
        match registry.adopt(pod).await {
            Ok(()) => adopted += 1,
            // restore() retries it from its record with new listeners.
            Err(error) => tracing::error!(pod = %who, %error, "cannot serve a handed-over pod"),
        }
    }
    let server = match takeover.enrollment.take() {
        Some(fd) => EnrollmentServer::from_listening(fd, &config.cni_socket)?,
        None => EnrollmentServer::bind(&config.cni_socket)?,
    };
    Ok((server, Some((takeover, adopted))))
}

/// `node-proxy explain`: one decision from a state file, as the destination's proxy takes it.
fn explain_command(args: &ExplainArgs) -> anyhow::Result<()> {
    use node_proxy::explain::{self, ExplainSource};
    let update = LocalFileSource::new(&args.config)
        .with_root_namespace(&args.root_namespace)
        .load()?;
    let store = StateStore::new();
    store.apply(update);
    let source: ExplainSource = args.from.parse()?;
    let (ns, name) = explain::workload_ref(&args.to, "destination")?;
    let td = TrustDomain::new(&args.trust_domain)?;
    let answer = explain::explain(&store.snapshot(), &td, &source, (&ns, &name), args.port)?;
    if args.json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        println!("decision: {}", answer.decision);
        println!("policy:   {}", answer.policy.as_deref().unwrap_or("none"));
        println!(
            "rule:     {}",
            answer
                .rule
                .map_or_else(|| "-".to_owned(), |r| r.to_string())
        );
        println!("reason:   {}", answer.reason);
        for note in &answer.notes {
            println!("note:     {note}");
        }
    }
    Ok(())
}

/// `node-proxy admin …`: one request to the admin API, printed as a table or as its JSON.
fn admin_command(args: &AdminArgs) -> anyhow::Result<()> {
    use admin::client::{self, View, query_escape};
    let (view, method, path) = match &args.what {
        AdminCommand::Workloads => (View::Workloads, "GET", "/workloads".to_owned()),
        AdminCommand::Services => (View::Services, "GET", "/services".to_owned()),
        AdminCommand::Policies => (View::Policies, "GET", "/policies".to_owned()),
        AdminCommand::Certificates => (View::Certificates, "GET", "/certificates".to_owned()),
        AdminCommand::Connections => (View::Connections, "GET", "/connections".to_owned()),
        AdminCommand::Config => (View::Config, "GET", "/config_dump".to_owned()),
        AdminCommand::Logging { level: None } => (View::Logging, "GET", "/logging".to_owned()),
        AdminCommand::Logging { level: Some(level) } => (
            View::Logging,
            "POST",
            format!("/logging?level={}", query_escape(level)),
        ),
        AdminCommand::Explain { from, to, port } => (
            View::Explain,
            "GET",
            format!(
                "/explain?from={}&to={}&port={port}",
                query_escape(from),
                query_escape(to)
            ),
        ),
    };
    let reply = client::request(args.addr, method, &path)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
    } else {
        print!("{}", client::render(view, &reply));
    }
    Ok(())
}

/// `node-proxy cni …`: the node's CNI chain (see `node_proxy::cni_install`).
fn cni_command(command: CniCommand) -> anyhow::Result<()> {
    use node_proxy::cni_install::{self, Copied, Installer};
    let placeholder = || PathBuf::from("/usr/lib/marrow/redirect-cni");
    match command {
        CniCommand::Install {
            dirs,
            plugin_binary,
            socket,
            watch,
            poll_secs,
        } => {
            let installer = Installer::new(dirs.bin_dir, dirs.conf_dir, plugin_binary, &socket)?;
            if watch {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building the runtime")?;
                runtime.block_on(installer.watch(
                    Duration::from_secs(poll_secs),
                    node_proxy::drain::shutdown_signal(),
                ))?;
                return Ok(());
            }
            let (copied, chained) = installer.install()?;
            let binary = installer.installed_binary();
            match copied {
                Copied::Written => {
                    tracing::info!(binary = %binary.display(), "plugin binary installed")
                }
                Copied::Unchanged => {
                    tracing::info!(binary = %binary.display(), "plugin binary already in place")
                }
            }
            match &chained {
                cni_install::Chained::Already { config } => {
                    tracing::info!(config = %config.display(), "redirect-cni already chained; nothing written")
                }
                inserted => cni_install::log_chained(inserted),
            }
            Ok(())
        }
        CniCommand::Uninstall { dirs } => {
            let done = cni_install::uninstall(&dirs.bin_dir, &dirs.conf_dir)?;
            for config in &done.unchained {
                tracing::info!(config = %config.display(), "redirect-cni taken out");
            }
            for (config, reason) in &done.left_alone {
                tracing::warn!(config = %config.display(), %reason, "not a JSON config; left alone");
            }
            tracing::info!(
                configs = done.unchained.len(),
                binary_removed = done.binary_removed,
                "uninstalled"
            );
            Ok(())
        }
        CniCommand::Check { dirs, socket } => {
            let installer = Installer::new(dirs.bin_dir, dirs.conf_dir, placeholder(), &socket)?;
            let config = installer.check()?;
            println!("chained: {}", config.display());
            Ok(())
        }
    }
}

/// Loads the state file and the CA when configured, and keeps the state reloading.
async fn start_mesh(
    config: &Config,
    metrics: &Arc<Metrics>,
    connections: &Arc<ConnectionTable>,
    readiness: &Arc<Readiness>,
) -> anyhow::Result<Option<(Arc<Mesh>, StateWatch)>> {
    let trust_domain = TrustDomain::new(&config.trust_domain)?;
    let Some((provider, bundle, ca_name)) = certificate_provider(config, &trust_domain)? else {
        tracing::info!("no --state-file/--kube with a CA: plain TCP only, no HBONE");
        return Ok(None);
    };
    let failures = metrics.certificate_failures.clone();
    let mut certs = CertificateManager::new(provider, ManagerConfig::default()).with_failure_hook(
        Arc::new(move |_, error: &identity::IdentityError| {
            failures
                .get_or_create(&node_proxy::metrics::CertificateFailureLabels {
                    reason: error.reason(),
                })
                .inc();
        }),
    );
    if let Some(bundle) = bundle {
        certs = certs.with_trust_bundle(bundle);
    }
    let certs = Arc::new(certs);
    let state = Arc::new(StateStore::new());
    let watch = match &config.state_file {
        Some(state_file) => StateWatch::File(
            LocalFileSource::new(state_file.clone())
                .with_interval(config.state_poll)
                .with_root_namespace(config.root_namespace.clone())
                .start(state.clone())
                .await
                .with_context(|| format!("--state-file {}", state_file.display()))?,
        ),
        None => StateWatch::Kube(start_kube(config, &state, readiness).await?),
    };
    let mut generations = state.subscribe();
    let gauge = metrics.config_generation.clone();
    gauge.set(i64::try_from(*generations.borrow()).unwrap_or(i64::MAX));
    metrics.record_unsupported(state.snapshot().policies());
    let (watched, reporting) = (state.clone(), metrics.clone());
    tokio::spawn(async move {
        while generations.changed().await.is_ok() {
            let generation = *generations.borrow();
            gauge.set(i64::try_from(generation).unwrap_or(i64::MAX));
            reporting.record_unsupported(watched.snapshot().policies());
        }
    });
    tracing::info!(ca = %ca_name, trust_domain = %trust_domain, key_exchange = %config.tls_key_exchange, "hbone on");
    let mesh = Mesh {
        enrollment_wait: if config.kube {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        },
        state,
        certs,
        trust_domain,
        node_name: config.node_name.clone(),
        handshake_timeout: config.handshake_timeout,
        connect_timeout: config.connect_timeout,
        key_exchange: config.tls_key_exchange,
        metrics: metrics.clone(),
    };
    tokio::spawn(export_certificate_expiry(
        mesh.certs.clone(),
        metrics.clone(),
    ));
    // Open inbound connections follow every policy change.
    tokio::spawn(node_proxy::proxy::policy_watch::follow(
        mesh.state.clone(),
        connections.clone(),
    ));
    let certs = mesh.certs.clone();
    readiness.add_detail(Box::new(move || certificate_detail(&certs.statuses())));
    Ok(Some((Arc::new(mesh), watch)))
}

/// The certificate source the flags choose, the trust bundle to follow (a remote CA's, re-read
/// from --ca-roots), and a name for logs; `None` without a CA.
type CertificateSource = (
    Arc<dyn identity::CertificateProvider>,
    Option<identity::TrustBundle>,
    String,
);

/// The local CA (--ca-dir) or a remote one (--ca-address); `None` without either.
fn certificate_provider(
    config: &Config,
    trust_domain: &TrustDomain,
) -> anyhow::Result<Option<CertificateSource>> {
    if let Some(ca_dir) = &config.ca_dir {
        // Backdating guards against peers with slow clocks, but must stay small against the
        // lifetime, or half-life renewal would come due at once.
        let options = LocalCaOptions {
            validity: config.cert_ttl,
            backdate: LocalCaOptions::default().backdate.min(config.cert_ttl / 10),
        };
        let ca = LocalCa::load(&CaFiles::in_dir(ca_dir), trust_domain.clone(), options)?;
        return Ok(Some((Arc::new(ca), None, ca_dir.display().to_string())));
    }
    let (Some(address), Some(roots_file)) = (&config.ca_address, &config.ca_roots) else {
        return Ok(None);
    };
    let roots = identity::read_roots(roots_file).context("--ca-roots")?;
    let bundle = identity::TrustBundle::new(roots);
    let ca = identity::IstioCa::new(
        identity::IstioCaConfig {
            address: address.clone(),
            server_name: config.ca_server_name.clone(),
            headers: config.ca_headers.clone(),
            token_file: config.ca_token_file.clone(),
            validity: config.cert_ttl,
            timeout: Duration::from_secs(10),
        },
        bundle.clone(),
    )
    .context("--ca-address")?;
    tokio::spawn(identity::watch_file(
        roots_file.clone(),
        bundle.clone(),
        config.ca_roots_poll,
    ));
    Ok(Some((Arc::new(ca), Some(bundle), address.clone())))
}

/// What keeps the cluster state current; dropping it stops the updates.
#[derive(Debug)]
enum StateWatch {
    /// `--state-file`, polled.
    File(#[expect(dead_code, reason = "held for its Drop")] FileWatch),
    /// `--kube`, watched.
    Kube(#[expect(dead_code, reason = "held for its Drop")] node_proxy::apiserver::KubeWatch),
}

/// Connects to the API server (in-cluster config, or `KUBECONFIG`), starts the watchers and
/// waits until every kind has been listed once, so the data path never starts on a
/// half-known cluster. Readiness carries the source's status from then on.
async fn start_kube(
    config: &Config,
    state: &Arc<StateStore>,
    readiness: &Arc<Readiness>,
) -> anyhow::Result<node_proxy::apiserver::KubeWatch> {
    let mut kube_config = kube::Config::infer()
        .await
        .context("--kube: no in-cluster service account and no usable KUBECONFIG")?;
    // The watchers retry with their own backoff and must see failures to report them.
    kube_config.default_retry = false;
    let client = kube::Client::try_from(kube_config).context("--kube: building the client")?;
    let watch = node_proxy::apiserver::KubeSource::new(
        client,
        config.node_name.clone(),
        &config.root_namespace,
    )
    .start(state.clone());
    let status = watch.status();
    let mut waited = Duration::ZERO;
    let poll = Duration::from_millis(100);
    while !status.synced() {
        tokio::time::sleep(poll).await;
        waited += poll;
        if waited.as_millis().is_multiple_of(10_000) {
            tracing::info!(
                waited_secs = waited.as_secs(),
                detail = status.detail().unwrap_or_default(),
                "waiting for the first complete list from the API server"
            );
        }
    }
    readiness.add_detail(Box::new(move || status.detail()));
    Ok(watch)
}

/// Keeps the per-identity certificate gauges current (every 2 s: renewals are minutes or hours
/// apart in production, seconds apart only in tests).
async fn export_certificate_expiry(certs: Arc<CertificateManager>, metrics: Arc<Metrics>) {
    let unix = |t: std::time::SystemTime| {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    };
    loop {
        metrics.certificate_expiry.clear();
        metrics.certificate_issued.clear();
        metrics.certificate_renewal_failures.clear();
        for status in certs.statuses() {
            let labels = node_proxy::metrics::IdentityLabels {
                identity: status.id.to_string(),
            };
            metrics
                .certificate_renewal_failures
                .get_or_create(&labels)
                .set(i64::from(status.consecutive_failures));
            if let Some(not_after) = status.not_after {
                metrics
                    .certificate_expiry
                    .get_or_create(&labels)
                    .set(unix(not_after));
            }
            if let Some(not_before) = status.not_before {
                metrics
                    .certificate_issued
                    .get_or_create(&labels)
                    .set(unix(not_before));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The readiness line about certificates: which identities fail to renew or have expired, the
/// oldest certificate's age; `None` while every renewal succeeds.
fn certificate_detail(statuses: &[identity::CertificateStatus]) -> Option<String> {
    let now = std::time::SystemTime::now();
    let failing: Vec<&identity::CertificateStatus> = statuses
        .iter()
        .filter(|s| s.consecutive_failures > 0)
        .collect();
    let worst = failing.iter().max_by_key(|s| s.consecutive_failures)?;
    let expired = failing
        .iter()
        .filter(|s| s.not_after.is_none_or(|t| t < now))
        .count();
    let oldest = statuses
        .iter()
        .filter_map(|s| s.not_before)
        .min()
        .and_then(|t| now.duration_since(t).ok())
        .map(|age| format!(", oldest certificate {}s old", age.as_secs()))
        .unwrap_or_default();
    Some(format!(
        "certificates: {} of {} identities failing to renew, {expired} without a valid \
         certificate{oldest} (e.g. {}: {} failures, last: {})",
        failing.len(),
        statuses.len(),
        worst.id,
        worst.consecutive_failures,
        worst.last_error.as_deref().unwrap_or("-"),
    ))
}
