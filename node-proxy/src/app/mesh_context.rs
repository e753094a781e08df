//! The mesh context of the node proxy: the cluster state's source (a state file or the API
//! server), the certificate source (a local or a remote CA), and the tasks that follow them
//! (state generation and unsupported-policy metrics, certificate gauges, open connections
//! re-checked on every policy change). Without both a state source and a CA the proxy runs
//! plain TCP only.

use std::sync::Arc;
use std::time::Duration;

use super::AppError;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::connections::ConnectionTable;
use crate::proxy::context::MeshContext;
use marrow_mesh::http::Readiness;
use marrow_mesh::identity::{self, TrustDomain};
use marrow_mesh::program;
use marrow_mesh::resilience::Destinations;
use marrow_mesh::state::SourceWatch;

/// Loads the state source and the CA when configured, and keeps the state reloading; `None`
/// without them.
///
/// # Errors
/// When the trust domain, the CA or the state source is unusable.
pub async fn start(
    config: &Config,
    metrics: &Arc<Metrics>,
    connections: &Arc<ConnectionTable>,
    readiness: &Arc<Readiness>,
) -> Result<Option<(Arc<MeshContext>, Arc<dyn SourceWatch>)>, AppError> {
    let trust_domain = TrustDomain::new(&config.trust_domain)?;
    // Every failed fetch or renewal is counted by reason (the waypoint only logs them).
    let failures = metrics.certificate_failures.clone();
    let on_failure: identity::FailureHook = Arc::new(move |_, error: &identity::IdentityError| {
        failures
            .get_or_create(&crate::metrics::CertificateFailureLabels {
                reason: error.reason(),
            })
            .inc();
    });
    let ca = program::CaSettings {
        ca_headers: config.ca_headers.clone(),
        ..config.ca_settings()
    };
    let Some(certificates) = program::certificates(&ca, &trust_domain, Some(on_failure))? else {
        tracing::info!("no --state-file/--kube with a CA: plain TCP only, no HBONE");
        return Ok(None);
    };
    let (certs, ca_name) = (certificates.manager, certificates.ca);
    let (state, watch) =
        program::start_state(&config.state_settings(config.node_name.clone()), readiness).await?;
    let mut generations = state.subscribe();
    let gauge = metrics.config_generation.clone();
    gauge.set(i64::try_from(*generations.borrow()).unwrap_or(i64::MAX));
    metrics.record_unsupported(state.snapshot().policies());
    metrics.config_refused.record(state.snapshot().traffic());
    let (watched, reporting) = (state.clone(), metrics.clone());
    tokio::spawn(async move {
        while generations.changed().await.is_ok() {
            let generation = *generations.borrow();
            gauge.set(i64::try_from(generation).unwrap_or(i64::MAX));
            let snap = watched.snapshot();
            reporting.record_unsupported(snap.policies());
            reporting.config_refused.record(snap.traffic());
        }
    });
    tracing::info!(ca = %ca_name, trust_domain = %trust_domain, key_exchange = %config.tls_key_exchange, "hbone on");
    let mesh = MeshContext {
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
        destinations: Arc::new(Destinations::new(metrics.resilience.clone())),
    };
    // Ejected endpoints come back, and their gauges drop, at this pace (Envoy sweeps every
    // `interval`; a finer pace returns an endpoint closer to its time).
    let sweeping = Arc::downgrade(&mesh.destinations);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            let Some(destinations) = sweeping.upgrade() else {
                return;
            };
            destinations.sweep(tokio::time::Instant::now());
        }
    });
    tokio::spawn(super::certificates::export_expiry(
        mesh.certs.clone(),
        metrics.clone(),
    ));
    // Open inbound connections follow every policy change.
    tokio::spawn(crate::proxy::policy_watch::follow(
        mesh.state.clone(),
        connections.clone(),
    ));
    let certs = mesh.certs.clone();
    readiness.add_detail(Box::new(move || {
        super::certificates::readiness_detail(&certs.statuses())
    }));
    Ok(Some((Arc::new(mesh), watch)))
}
