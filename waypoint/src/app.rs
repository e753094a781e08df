//! The waypoint program assembled: [`start`] builds it from a [`Config`] — certificates (a
//! local CA, or a CA speaking Istio's protocol, asked for the waypoint's own identity), the
//! state source (a file or the API server), the listeners — and [`run`] serves until SIGTERM,
//! then drains.
//!
//! Readiness turns true once the waypoint holds its own certificate, and false before anything
//! stops accepting.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use marrow_mesh::drain::Drain;
use marrow_mesh::http::{self, Readiness};
use marrow_mesh::identity::{
    self, CaFiles, CertificateManager, CertificateProvider, LocalCa, LocalCaOptions, ManagerConfig,
    TrustBundle, TrustDomain,
};
use marrow_mesh::state::file::LocalFileSource;
use marrow_mesh::state::{SourceWatch, StateSource, StateStore};
use tokio::net::TcpListener;

use crate::WaypointError;
use crate::config::Config;
use crate::context::{Context, Gateway};
use crate::telemetry::Telemetry;
use crate::upstream::DialMap;

/// Installs the global log subscriber (stderr; JSON lines with `json`; `RUST_LOG`, default
/// `info`). Call once, first thing.
pub fn init_logging(json: bool) {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
}

/// `waypoint`: validates `config`, serves until SIGTERM or SIGINT, drains.
///
/// # Errors
/// When the configuration is invalid or a step of the start fails.
pub fn run(config: Config) -> Result<(), WaypointError> {
    config.validate()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads)
        .enable_all()
        .build()
        .map_err(WaypointError::Runtime)?;
    runtime.block_on(async {
        let running = start(&config).await?;
        marrow_mesh::drain::shutdown_signal().await;
        tracing::info!("waypoint stopping");
        let left = running.stop(config.drain_timeout).await;
        tracing::info!(left, "waypoint stopped");
        Ok(())
    })
}

/// A started waypoint.
pub struct Running {
    /// The HBONE listener's address.
    pub hbone_addr: SocketAddr,
    /// `/metrics`.
    pub metrics_addr: SocketAddr,
    /// `/healthz/ready`.
    pub readiness_addr: SocketAddr,
    /// The admin API.
    pub admin_addr: SocketAddr,
    /// The shared parts (tests look at the pool).
    pub context: Arc<Context>,
    readiness: Arc<Readiness>,
    drain: Drain,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _state_watch: Arc<dyn SourceWatch>,
}

impl Running {
    /// Turns unready, stops accepting, and waits up to `deadline` for open tunnels; returns
    /// how many were still open.
    pub async fn stop(&self, deadline: Duration) -> usize {
        self.readiness.set(false);
        let left = self.drain.drain(deadline).await;
        // The spans of the requests just finished go out before the process does.
        self.context.telemetry.tracer().shutdown().await;
        for task in &self.tasks {
            task.abort();
        }
        left
    }
}

async fn bind(setting: &'static str, addr: SocketAddr) -> Result<TcpListener, WaypointError> {
    http::bind(addr)
        .await
        .map_err(|source| WaypointError::Bind {
            setting,
            addr,
            source,
        })
}

fn local_addr(setting: &'static str, listener: &TcpListener) -> Result<SocketAddr, WaypointError> {
    listener.local_addr().map_err(|source| WaypointError::Bind {
        setting,
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        source,
    })
}

/// Builds and starts the waypoint; it serves until [`Running::stop`].
///
/// # Errors
/// When the configuration is invalid, the CA or state source is unusable, or a listener cannot
/// be bound.
pub async fn start(config: &Config) -> Result<Running, WaypointError> {
    start_with(config, None).await
}

/// [`start`], with node proxies dialled through `dial_map` (see [`DialMap`]).
///
/// # Errors
/// As [`start`].
pub async fn start_with(
    config: &Config,
    dial_map: Option<DialMap>,
) -> Result<Running, WaypointError> {
    config.validate()?;
    let (trust_domain, identity) = config.identity()?;
    let (provider, bundle) = certificate_provider(config, &trust_domain)?;
    let mut certs = CertificateManager::new(provider, ManagerConfig::default());
    if let Some(bundle) = bundle {
        certs = certs.with_trust_bundle(bundle);
    }
    let certs = Arc::new(certs);
    let state = Arc::new(StateStore::new());
    let source: Box<dyn StateSource> = match &config.state_file {
        Some(path) => Box::new(
            LocalFileSource::new(path.clone())
                .with_interval(config.state_poll)
                .with_root_namespace(config.root_namespace.clone()),
        ),
        None => Box::new(kube_source(config).await?),
    };
    let setting = source.describe();
    let state_watch: Arc<dyn SourceWatch> = Arc::from(
        source
            .start(state.clone())
            .await
            .map_err(|source| WaypointError::StateSource { setting, source })?,
    );
    let gateway = Gateway {
        namespace: config.gateway_namespace.clone(),
        name: config.gateway_name.clone(),
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let telemetry = Telemetry::new(&mut registry, &config.tracing(), &config.cluster_id)
        .map_err(WaypointError::Tracing)?;
    let context = Arc::new(Context::new(
        state,
        certs.clone(),
        (gateway, identity.clone()),
        trust_domain,
        telemetry,
        config.limits(),
        dial_map,
    ));
    let readiness = Arc::new(Readiness::default());
    let weak = Arc::downgrade(&state_watch);
    readiness.add_detail(Box::new(move || weak.upgrade().and_then(|w| w.detail())));

    let hbone = bind("--hbone-addr", config.hbone_addr).await?;
    let metrics = bind("--metrics-addr", config.metrics_addr).await?;
    let ready = bind("--readiness-addr", config.readiness_addr).await?;
    let admin = bind("--admin-addr", config.admin_addr).await?;
    let hbone_addr = local_addr("--hbone-addr", &hbone)?;
    let metrics_addr = local_addr("--metrics-addr", &metrics)?;
    let readiness_addr = local_addr("--readiness-addr", &ready)?;
    let admin_addr = local_addr("--admin-addr", &admin)?;

    let drain = Drain::new();
    let mut tasks = vec![
        tokio::spawn(http::serve_metrics(metrics, Arc::new(registry))),
        tokio::spawn(http::serve_readiness(ready, readiness.clone())),
        tokio::spawn(serve_admin(admin, context.clone())),
        tokio::spawn(crate::inbound::serve(hbone, context.clone(), drain.clone())),
        // The tracer follows Istio's Telemetry API in the state (else the --tracing-* flags).
        tokio::spawn(context.clone().follow_telemetry_api()),
    ];
    // Ready once the waypoint holds its certificate: before, every handshake would fail.
    let (own, ready_flag) = (identity.clone(), readiness.clone());
    tasks.push(tokio::spawn(async move {
        match certs.get(&own).await {
            Ok(_) => {
                ready_flag.set(true);
                tracing::info!(identity = %own, "waypoint ready");
            }
            Err(error) => {
                tracing::error!(%error, identity = %own, "no certificate for the waypoint")
            }
        }
    }));
    tracing::info!(%hbone_addr, identity = %identity, "waypoint serving");
    Ok(Running {
        hbone_addr,
        metrics_addr,
        readiness_addr,
        admin_addr,
        context,
        readiness,
        drain,
        tasks,
        _state_watch: state_watch,
    })
}

/// The admin API (localhost): `/` answers the waypoint's identity and open HBONE connections;
/// `/explain?from=…&to=…&port=…&method=…&path=…&host=…&header=K%3DV` the decision this
/// waypoint takes for that request (the same answer as `node-proxy explain --waypoint`), from
/// the state in force.
async fn serve_admin(listener: TcpListener, context: Arc<Context>) {
    http::serve_async(listener, move |req| {
        let (status, body) = match req.uri().path() {
            "/" => (
                hyper::StatusCode::OK,
                format!(
                    "{{\"identity\":\"{}\",\"upstream_connections\":{}}}",
                    context.identity,
                    context.upstreams.connections()
                ),
            ),
            "/explain" => explain(&context, req.uri().query().unwrap_or_default()),
            _ => (
                hyper::StatusCode::NOT_FOUND,
                "{\"error\":\"no such endpoint: / and /explain are\"}".to_owned(),
            ),
        };
        let mut response = hyper::Response::new(Full::new(Bytes::from(body + "\n")));
        *response.status_mut() = status;
        std::future::ready(response)
    })
    .await;
}

/// `/explain`: the request's decision at this waypoint (its Gateway unless `waypoint=` names
/// another), as JSON.
fn explain(context: &Context, query: &str) -> (hyper::StatusCode, String) {
    let answer = marrow_mesh::explain::ExplainQuery::parse(query).and_then(|mut q| {
        if q.request.waypoint.is_none() {
            let gateway = &context.gateway;
            q.request.waypoint = Some(format!("{}/{}", gateway.namespace, gateway.name));
        }
        q.answer(&context.state.snapshot(), &context.trust_domain)
            .map_err(|e| e.to_string())
    });
    match answer.and_then(|a| serde_json::to_string(&a).map_err(|e| e.to_string())) {
        Ok(json) => (hyper::StatusCode::OK, json),
        Err(reason) => (
            hyper::StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": reason }).to_string(),
        ),
    }
}

/// The local CA (--ca-dir) or an Istio-protocol CA (--ca-address with --ca-roots), and the
/// trust bundle to follow for the latter.
fn certificate_provider(
    config: &Config,
    trust_domain: &TrustDomain,
) -> Result<(Arc<dyn CertificateProvider>, Option<TrustBundle>), WaypointError> {
    if let Some(ca_dir) = &config.ca_dir {
        let options = LocalCaOptions {
            validity: config.cert_ttl,
            backdate: LocalCaOptions::default().backdate.min(config.cert_ttl / 10),
        };
        let ca = LocalCa::load(&CaFiles::in_dir(ca_dir), trust_domain.clone(), options).map_err(
            |source| WaypointError::CertificateSource {
                setting: "--ca-dir",
                source,
            },
        )?;
        return Ok((Arc::new(ca), None));
    }
    let (Some(address), Some(roots_file)) = (&config.ca_address, &config.ca_roots) else {
        return Err(WaypointError::Setting {
            setting: "--ca-dir",
            value: String::new(),
            expected: "a local CA, or --ca-address with --ca-roots",
        });
    };
    let roots =
        identity::read_roots(roots_file).map_err(|source| WaypointError::CertificateSource {
            setting: "--ca-roots",
            source,
        })?;
    let bundle = TrustBundle::new(roots);
    // The waypoint asks for its own identity with its own token: the CA grants a caller its
    // own identity outright (marrow-ca's Plan::Own, istiod alike).
    let ca = identity::IstioCa::new(
        identity::IstioCaConfig {
            address: address.clone(),
            server_name: config.ca_server_name.clone(),
            headers: Vec::new(),
            token_file: config.ca_token_file.clone(),
            validity: config.cert_ttl,
            timeout: Duration::from_secs(10),
        },
        bundle.clone(),
    )
    .map_err(|source| WaypointError::CertificateSource {
        setting: "--ca-address",
        source,
    })?;
    tokio::spawn(identity::watch_file(
        roots_file.clone(),
        bundle.clone(),
        config.ca_roots_poll,
    ));
    Ok((Arc::new(ca), Some(bundle)))
}

/// The API server as the state source; its start waits until every kind was listed once.
async fn kube_source(config: &Config) -> Result<marrow_mesh::apiserver::KubeSource, WaypointError> {
    let mut kube_config = kube::Config::infer()
        .await
        .map_err(WaypointError::KubeConfig)?;
    kube_config.default_retry = false;
    let client = kube::Client::try_from(kube_config).map_err(WaypointError::KubeClient)?;
    // The waypoint serves pods on every node: no node filter.
    Ok(marrow_mesh::apiserver::KubeSource::new(
        client,
        None,
        &config.root_namespace,
    ))
}
