//! The CA program assembled: settings, the cluster client, the listeners, serving until a
//! shutdown signal.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::{CaError, CaTelemetry, ServeConfig, serve};
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
    served
}
