//! The node proxy program (`node-proxy run`): its composition root. [`run`] builds the proxy
//! from a [`Config`] — capture, metrics, the mesh context ([`mesh_context`]), the admin API, the
//! enrollment registry, a take-over of a running proxy ([`takeover`]) — serves until SIGTERM
//! or a successor takes over, then drains.
//!
//! Invariants of the start/stop sequence: readiness is bound only after any take-over (both
//! processes share its port during an upgrade) and turns false before anything stops
//! accepting; the sockets this process bound are removed at exit only if no successor has
//! bound its own since.

pub mod certificates;
pub mod logging;
pub mod mesh_context;
pub mod takeover;

use std::path::PathBuf;
use std::sync::Arc;

use crate::admin::{self, LogControl};
use crate::capture::{Capture, CaptureConfig, CaptureError};
use crate::config::{Config, ConfigError};
use crate::inpod::server::{Enrollment, ServerError};
use crate::inpod::{ProxyParts, RecordError, RecordStore, Registry};
use crate::metrics::Metrics;
use crate::netns::HostNetns;
use crate::proxy::connections::ConnectionTable;
use crate::proxy::{ProxySettings, TcpCopy};
use crate::upgrade::{self, HandoffError};
use marrow_mesh::drain::Drain;
use marrow_mesh::http::{self, Readiness};
use marrow_mesh::identity::{SpiffeIdError, TrustDomain};
use marrow_mesh::program::{self, StartError};

/// Why the node proxy could not start; each names the step (and setting) that failed.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The async runtime could not be built.
    #[error("building the runtime")]
    Runtime(#[source] std::io::Error),
    /// The proxy's own network namespace cannot be opened (every netns switch returns there).
    #[error("opening the proxy's own netns")]
    OwnNetns(#[source] std::io::Error),
    /// The eBPF capture cannot be loaded or attached.
    #[error(transparent)]
    Capture(#[from] CaptureError),
    /// The trust domain is no SPIFFE trust domain.
    #[error(transparent)]
    TrustDomain(#[from] SpiffeIdError),
    /// A part every program shares (a listener, the certificate or state source) cannot
    /// start; the error names its setting.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The enrollment records cannot be opened.
    #[error(transparent)]
    Records(#[from] RecordError),
    /// Asking a running proxy to hand over failed inside the runtime.
    #[error("asking a running node proxy to hand over")]
    TakeOverTask(#[source] tokio::task::JoinError),
    /// The enrollment socket cannot be served.
    #[error(transparent)]
    Enrollment(#[from] ServerError),
    /// The enrollment server cannot start.
    #[error("starting the enrollment server")]
    EnrollmentStart(#[source] std::io::Error),
    /// The hand-off socket cannot be bound.
    #[error(transparent)]
    Handoff(#[from] HandoffError),
}

/// Aborts the task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `node-proxy run`: validates `config`, builds the runtime, serves until SIGTERM or a
/// hand-over, and drains. `logging` is the log filter the admin API may change.
///
/// # Errors
/// When the configuration is invalid or a step of the start fails.
pub fn run(config: Config, logging: Option<Arc<dyn LogControl>>) -> Result<(), AppError> {
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    runtime.block_on(serve(config, logging))
}

/// The start, serve and drain sequence.
async fn serve(config: Config, logging: Option<Arc<dyn LogControl>>) -> Result<(), AppError> {
    // Captured before any netns switch: every switch returns here.
    let host = HostNetns::current().map_err(AppError::OwnNetns)?;
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
    let metrics_listener = program::bind("--metrics-addr", config.metrics_addr).await?;
    let metrics_task = tokio::spawn(http::serve_metrics(metrics_listener, Arc::new(prom)));

    let (mesh, _state_watch) =
        match mesh_context::start(&config, &metrics, &connections, &readiness).await? {
            Some((mesh, watch)) => (Some(mesh), Some(watch)),
            None => (None, None),
        };
    let admin_listener = program::bind("--admin-addr", config.admin_addr).await?;
    let mut admin = admin::AdminState {
        state: mesh.as_ref().map(|m| m.state.clone()),
        trust_domain: TrustDomain::new(&config.trust_domain)?,
        certs: mesh.as_ref().map(|m| m.certs.clone()),
        connections: connections.clone(),
        enrolled: None,
        config: config.clone(),
        logging,
    };
    let records = RecordStore::open(config.state_dir.join("pods"))?;
    let drain = Drain::new();
    let reconcile_host = host.clone();
    let mesh_for_reconcile = mesh.clone();
    let parts = ProxyParts {
        metrics,
        settings: ProxySettings {
            connect_timeout: config.connect_timeout,
            inbound_source_ports: config.inbound_source_ports,
            hbone_reuse: !config.hbone_no_pool,
            tcp_copy: if config.no_splice {
                TcpCopy::Buffer
            } else {
                TcpCopy::Splice
            },
        },
        mesh,
        connections,
        drain: drain.clone(),
    };
    let registry = Arc::new(Registry::new(host, capture, records, parts));
    admin.enrolled = Some(registry.clone());
    let admin_task = tokio::spawn(admin::serve(admin_listener, Arc::new(admin)));
    let (server, predecessor) = takeover::take_over_or_bind(&config, &registry).await?;
    let restored = registry.restore().await;
    tracing::info!(restored, "enrollment records re-adopted");
    let enrollment = Enrollment::start(server, registry.clone(), readiness.clone())
        .map_err(AppError::EnrollmentStart)?;
    if let Some((takeover, adopted)) = predecessor {
        takeover::confirm(takeover, adopted).await;
    }
    let handoff_path = config.state_dir.join(upgrade::HANDOFF_SOCKET);
    let handoff = upgrade::bind(&handoff_path)?;
    let own_sockets = takeover::OwnSockets::record([&config.cni_socket, &handoff_path]);
    // Readiness is bound only now, after any take-over: during an upgrade both processes
    // share the port (SO_REUSEPORT), and a probe must not find this one ready before it
    // serves the pods.
    let readiness_listener = program::bind("--readiness-addr", config.readiness_addr).await?;
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
        (Some(mesh), Some(node)) if config.kube => {
            Some(AbortOnDrop(tokio::spawn(crate::inpod::reconcile::run(
                registry.clone(),
                mesh.clone(),
                reconcile_host.clone(),
                node.clone(),
                PathBuf::from("/proc"),
                crate::inpod::reconcile::DEFAULT_EVERY,
            ))))
        }
        _ => None,
    };
    readiness.set(true);
    tracing::info!("node proxy ready");

    let handed_over = tokio::select! {
        () = marrow_mesh::drain::shutdown_signal() => {
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
            () = marrow_mesh::drain::shutdown_signal() => tracing::info!("signal while draining; the drain goes on to its deadline"),
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
        own_sockets.remove_unreplaced();
        tracing::info!(
            "stopped; pinned capture stays in place, enrolled pods fail closed until restart"
        );
    }
    Ok(())
}
