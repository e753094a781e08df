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
use marrow_mesh::program::{self, StartError};
use marrow_mesh::state::SourceWatch;
use tokio::net::TcpListener;

use crate::WaypointError;
use crate::config::Config;
use crate::context::{Context, Gateway};
use crate::telemetry::Telemetry;
use crate::upstream::DialMap;

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

fn local_addr(setting: &'static str, listener: &TcpListener) -> Result<SocketAddr, WaypointError> {
    listener.local_addr().map_err(|source| {
        WaypointError::Start(StartError::Bind {
            setting,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })
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
    // The waypoint asks for its own identity with its own token: the CA grants a caller its
    // own identity outright (marrow-ca's Plan::Own, istiod alike). Failures are only logged.
    let certs = program::certificates(&config.ca_settings(), &trust_domain, None)?
        .ok_or(WaypointError::Setting {
            setting: "--ca-dir",
            value: String::new(),
            expected: "a local CA, or --ca-address with --ca-roots",
        })?
        .manager;
    let readiness = Arc::new(Readiness::default());
    // The waypoint serves pods on every node: no node filter.
    let (state, state_watch) =
        program::start_state(&config.state_settings(None), &readiness).await?;
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

    let hbone = program::bind("--hbone-addr", config.hbone_addr).await?;
    let metrics = program::bind("--metrics-addr", config.metrics_addr).await?;
    let ready = program::bind("--readiness-addr", config.readiness_addr).await?;
    let admin = program::bind("--admin-addr", config.admin_addr).await?;
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
        tokio::spawn(sweep_ejections(context.clone())),
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

/// Returns endpoints whose ejection is over to service, every 250 ms (their gauge to 0): an
/// endpoint is back when its time is up, not only at the next request.
async fn sweep_ejections(context: Arc<Context>) {
    let mut every = tokio::time::interval(std::time::Duration::from_millis(250));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        context
            .upstreams
            .resilience
            .sweep(tokio::time::Instant::now());
    }
}

/// The admin API (localhost): `/` answers the waypoint's identity, its open HBONE connections
/// and where its spans go (the Telemetry API's answer, or the flags);
/// `/explain?from=…&to=…&port=…&method=…&path=…&host=…&header=K%3DV` the decision this
/// waypoint takes for that request (the same answer as `node-proxy explain --waypoint`), from
/// the state in force; `/routes?to=HOST:PORT[&from=…&method=…&path=…&header=K%3DV]` the route
/// it applies to that request (the same answer as `node-proxy routes`).
async fn serve_admin(listener: TcpListener, context: Arc<Context>) {
    http::serve_async(listener, move |req| {
        let (status, body) = match req.uri().path() {
            "/" => (
                hyper::StatusCode::OK,
                serde_json::json!({
                    "identity": context.identity.to_string(),
                    "upstream_connections": context.upstreams.connections(),
                    "tracing": context.telemetry.tracing_source(),
                })
                .to_string(),
            ),
            "/explain" => explain(&context, req.uri().query().unwrap_or_default()),
            "/routes" => routes(&context, req.uri().query().unwrap_or_default()),
            _ => (
                hyper::StatusCode::NOT_FOUND,
                "{\"error\":\"no such endpoint: /, /explain and /routes are\"}".to_owned(),
            ),
        };
        let mut response = hyper::Response::new(Full::new(Bytes::from(body + "\n")));
        *response.status_mut() = status;
        std::future::ready(response)
    })
    .await;
}

/// `/routes`: the route this waypoint applies to a request, as JSON.
fn routes(context: &Context, query: &str) -> (hyper::StatusCode, String) {
    let answer = marrow_mesh::explain::RoutesQuery::parse(query).and_then(|q| {
        marrow_mesh::explain::explain_routes(&context.state.snapshot(), &q)
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
