//! The CA program assembled: settings, the cluster client, the listeners, serving until a
//! shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::{CaError, CaTelemetry, ServeConfig, serve};
use marrow_controller::ControllerTelemetry;
use marrow_mesh::identity::CaFiles;

/// `node-proxy ca serve`: the settings from `config`, a client for the cluster (in-cluster
/// account, or `KUBECONFIG`), [`serve`] on `--listen` until SIGTERM or SIGINT.
///
/// # Errors
/// As [`serve`], and when the flags, the client or the listener are unusable.
pub async fn run(config: ServeConfig) -> Result<(), CaError> {
    let settings = config.settings()?;
    let client = kube::Client::try_default()
        .await
        .map_err(CaError::KubeClient)?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| CaError::Listen {
                addr: addr.to_string(),
                source,
            })
    };
    let listener = bind(config.listen).await?;
    let telemetry = Arc::new(CaTelemetry::default());
    let mut registry = prometheus_client::registry::Registry::default();
    telemetry.register(&mut registry);
    // The waypoint controller shares the CA's client, metrics and lifetime (--waypoint-controller).
    let controller_telemetry = Arc::new(ControllerTelemetry::default());
    controller_telemetry.register(&mut registry);
    let controller = config.controller_settings().map(|mut settings| {
        if let Some(election) = settings.election.as_mut().filter(|e| e.identity.is_empty()) {
            // Kubernetes sets HOSTNAME to the pod's name; two replicas must never share one.
            election.identity = std::env::var("HOSTNAME")
                .unwrap_or_else(|_| format!("marrow-ca-{}", std::process::id()));
        }
        tracing::info!(image = %settings.image, "waypoint controller starting");
        tokio::spawn(run_controller(
            client.clone(),
            settings,
            controller_telemetry,
        ))
    });
    let metrics = tokio::spawn(marrow_mesh::http::serve_metrics(
        bind(config.metrics_addr).await?,
        Arc::new(registry),
    ));
    let readiness = tokio::spawn(marrow_mesh::http::serve_readiness(
        bind(config.readiness_addr).await?,
        telemetry.readiness.clone(),
    ));
    tracing::info!(listen = %config.listen, ca_dir = %config.ca_dir.display(),
        trust_domain = %settings.trust_domain, "ca serving");
    let served = serve(
        client,
        CaFiles::in_dir(&config.ca_dir),
        settings,
        listener,
        telemetry.clone(),
        async {
            marrow_mesh::drain::shutdown_signal().await;
            telemetry.readiness.set(false);
            tracing::info!("ca stopping");
        },
    )
    .await;
    metrics.abort();
    readiness.abort();
    if let Some(controller) = controller {
        controller.abort();
    }
    served
}

/// The waypoint controller until the CA stops; a failure is logged, and the CA keeps signing.
async fn run_controller(
    client: kube::Client,
    settings: marrow_controller::ControllerSettings,
    telemetry: Arc<ControllerTelemetry>,
) {
    if let Err(error) = marrow_controller::run(client, settings, telemetry).await {
        tracing::error!(%error, "waypoint controller stopped");
    }
}
