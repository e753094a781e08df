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
use marrow_mesh::identity::{
    self, CaFiles, CertificateManager, LocalCa, LocalCaOptions, ManagerConfig, TrustDomain,
};
use marrow_mesh::state::file::LocalFileSource;
use marrow_mesh::state::{SourceWatch, StateSource, StateStore};

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
    let Some((provider, bundle, ca_name)) = certificate_provider(config, &trust_domain)? else {
        tracing::info!("no --state-file/--kube with a CA: plain TCP only, no HBONE");
        return Ok(None);
    };
    let failures = metrics.certificate_failures.clone();
    let mut certs = CertificateManager::new(provider, ManagerConfig::default()).with_failure_hook(
        Arc::new(move |_, error: &identity::IdentityError| {
            failures
                .get_or_create(&crate::metrics::CertificateFailureLabels {
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
    let source: Box<dyn StateSource> = match &config.state_file {
        Some(state_file) => Box::new(
            LocalFileSource::new(state_file.clone())
                .with_interval(config.state_poll)
                .with_root_namespace(config.root_namespace.clone()),
        ),
        None => Box::new(kube_source(config).await?),
    };
    let setting = source.describe();
    let watch: Arc<dyn SourceWatch> = Arc::from(
        source
            .start(state.clone())
            .await
            .map_err(|source| AppError::StateSource { setting, source })?,
    );
    // Readiness carries the source's status (the API server's failing watchers); it must
    // not keep the source running, which stops when the caller drops the watch.
    let weak = Arc::downgrade(&watch);
    readiness.add_detail(Box::new(move || weak.upgrade().and_then(|w| w.detail())));
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
    };
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
) -> Result<Option<CertificateSource>, AppError> {
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
    let roots = identity::read_roots(roots_file).map_err(|source| AppError::CertificateSource {
        setting: "--ca-roots",
        source,
    })?;
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
    .map_err(|source| AppError::CertificateSource {
        setting: "--ca-address",
        source,
    })?;
    tokio::spawn(identity::watch_file(
        roots_file.clone(),
        bundle.clone(),
        config.ca_roots_poll,
    ));
    Ok(Some((Arc::new(ca), Some(bundle), address.clone())))
}

/// The API server as the state source (in-cluster config, or `KUBECONFIG`); its start waits
/// until every kind has been listed once, so the data path never starts on a half-known
/// cluster.
async fn kube_source(config: &Config) -> Result<marrow_mesh::apiserver::KubeSource, AppError> {
    let mut kube_config = kube::Config::infer().await.map_err(AppError::KubeConfig)?;
    // The watchers retry with their own backoff and must see failures to report them.
    kube_config.default_retry = false;
    let client = kube::Client::try_from(kube_config).map_err(AppError::KubeClient)?;
    Ok(marrow_mesh::apiserver::KubeSource::new(
        client,
        config.node_name.clone(),
        &config.root_namespace,
    ))
}
