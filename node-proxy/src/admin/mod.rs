//! The admin API (node-local, 15000 as ztunnel's): JSON views of what the proxy holds —
//! workloads, services, policies, certificates, open connections, the effective configuration
//! — the log level, read and changed at run time, and `/explain`. [`client`] is the other end,
//! behind `node-proxy admin`.
//!
//! Invariants: every reply is JSON (`application/json`), errors included (`{"error": …}`); only
//! `POST /logging` changes anything; routing ([`handle`]) is a function of the request and the
//! [`AdminState`], so it is tested in process without sockets.

pub mod client;
mod views;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Response, StatusCode, Uri};
use serde::Serialize;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload;

use crate::config::Config;
use crate::inpod::{PodRecord, Registry};
use crate::proxy::connections::ConnectionTable;
use marrow_mesh::identity::{CertificateManager, TrustDomain};
use marrow_mesh::state::StateStore;

/// One endpoint of the admin API: the one table the server routes by, the index lists and
/// the client ([`client`]) asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /workloads`: the state's workloads, and the pods enrolled on this node.
    Workloads,
    /// `GET /services`: the state's Services and EndpointSlices.
    Services,
    /// `GET /policies`: AuthorizationPolicies and PeerAuthentications in force.
    Policies,
    /// `GET /certificates`: the identities held, and their validity.
    Certificates,
    /// `GET /connections`: the connections open now.
    Connections,
    /// `GET /config_dump`: the effective configuration.
    ConfigDump,
    /// `GET /logging`: the log filter; `POST /logging?level=…` replaces it.
    Logging,
    /// `GET /explain?from=…&to=…&port=…`: the L4 decision for a connection (with `method=`,
    /// `path=`, `host=`, `header=`, `waypoint=`: the waypoint's for a request).
    Explain,
    /// `GET /routes?to=HOST:PORT[&from=…&method=…&path=…&header=…]`: the route that applies.
    Routes,
    /// `GET /`: this list.
    Index,
}

impl Endpoint {
    /// Every endpoint, in the order the index lists them.
    pub const ALL: [Endpoint; 10] = [
        Endpoint::Workloads,
        Endpoint::Services,
        Endpoint::Policies,
        Endpoint::Certificates,
        Endpoint::Connections,
        Endpoint::ConfigDump,
        Endpoint::Logging,
        Endpoint::Explain,
        Endpoint::Routes,
        Endpoint::Index,
    ];

    /// Its path.
    pub const fn path(self) -> &'static str {
        match self {
            Endpoint::Workloads => "/workloads",
            Endpoint::Services => "/services",
            Endpoint::Policies => "/policies",
            Endpoint::Certificates => "/certificates",
            Endpoint::Connections => "/connections",
            Endpoint::ConfigDump => "/config_dump",
            Endpoint::Logging => "/logging",
            Endpoint::Explain => "/explain",
            Endpoint::Routes => "/routes",
            Endpoint::Index => "/",
        }
    }

    /// How it is called, as the index and the 404 reply list it.
    const fn usage(self) -> &'static [&'static str] {
        match self {
            Endpoint::Workloads => &["GET /workloads"],
            Endpoint::Services => &["GET /services"],
            Endpoint::Policies => &["GET /policies"],
            Endpoint::Certificates => &["GET /certificates"],
            Endpoint::Connections => &["GET /connections"],
            Endpoint::ConfigDump => &["GET /config_dump"],
            Endpoint::Logging => &["GET /logging", "POST /logging?level=<EnvFilter directive>"],
            Endpoint::Explain => &[
                "GET /explain?from=ns/pod|ip:ADDR&to=ns/pod&port=N[&method=M&path=P&host=H&header=K%3DV&waypoint=ns/name]",
            ],
            Endpoint::Routes => {
                &["GET /routes?to=HOST:PORT[&from=ns/pod&method=M&path=P&host=H&header=K%3DV]"]
            }
            Endpoint::Index => &["GET /"],
        }
    }

    /// The methods it answers; only `POST /logging` changes anything.
    fn methods(self) -> &'static [Method] {
        match self {
            Endpoint::Logging => &[Method::GET, Method::POST],
            _ => &[Method::GET],
        }
    }

    /// The endpoint at `path`, if any.
    pub fn at(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }
}

/// The endpoints, as the 404 reply and `GET /` list them.
pub fn endpoints() -> Vec<&'static str> {
    Endpoint::ALL
        .iter()
        .flat_map(|e| e.usage().iter().copied())
        .collect()
}

/// The pods enrolled on this node (the enrollment registry; a list in tests).
pub trait EnrolledPods: Send + Sync {
    /// Their records, in any order.
    fn enrolled(&self) -> Pin<Box<dyn Future<Output = Vec<PodRecord>> + Send + '_>>;
}

impl EnrolledPods for Registry {
    fn enrolled(&self) -> Pin<Box<dyn Future<Output = Vec<PodRecord>> + Send + '_>> {
        Box::pin(Registry::enrolled(self))
    }
}

impl EnrolledPods for Vec<PodRecord> {
    fn enrolled(&self) -> Pin<Box<dyn Future<Output = Vec<PodRecord>> + Send + '_>> {
        Box::pin(std::future::ready(self.clone()))
    }
}

/// The log filter in force, readable and replaceable at run time.
pub trait LogControl: Send + Sync {
    /// The filter's directives, as `RUST_LOG` would spell them.
    fn current(&self) -> String;
    /// Replaces the filter with `directives`; on an error the filter in force stays.
    fn set(&self, directives: &str) -> Result<(), LogLevelError>;
}

/// Why a new log filter was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogLevelError {
    /// The directives do not parse.
    #[error("invalid log directive {directive:?}: {reason}")]
    Invalid {
        /// What was asked for.
        directive: String,
        /// The parser's message.
        reason: String,
    },
    /// The subscriber the filter belonged to is gone.
    #[error("the log filter cannot be changed: {0}")]
    Reload(String),
}

/// A `tracing_subscriber` [`EnvFilter`] behind a reload layer (what `node-proxy run` installs).
pub struct ReloadableFilter<S>(reload::Handle<EnvFilter, S>);

impl<S> ReloadableFilter<S> {
    /// Controls the filter of `handle`.
    pub fn new(handle: reload::Handle<EnvFilter, S>) -> Self {
        Self(handle)
    }
}

impl<S: 'static> LogControl for ReloadableFilter<S> {
    fn current(&self) -> String {
        self.0
            .with_current(ToString::to_string)
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    fn set(&self, directives: &str) -> Result<(), LogLevelError> {
        let invalid = |reason: String| LogLevelError::Invalid {
            directive: directives.to_owned(),
            reason,
        };
        if directives.trim().is_empty() {
            return Err(invalid("empty".to_owned()));
        }
        let filter = EnvFilter::builder()
            .parse(directives)
            .map_err(|e| invalid(e.to_string()))?;
        self.0
            .reload(filter)
            .map_err(|e| LogLevelError::Reload(e.to_string()))
    }
}

/// What the admin API reads (and, for the log level, changes).
pub struct AdminState {
    /// The state in force, when the proxy runs with a state file.
    pub state: Option<Arc<StateStore>>,
    /// The mesh's trust domain.
    pub trust_domain: TrustDomain,
    /// Workload certificates, when the proxy has a CA.
    pub certs: Option<Arc<CertificateManager>>,
    /// The live connection table.
    pub connections: Arc<ConnectionTable>,
    /// The pods enrolled on this node.
    pub enrolled: Option<Arc<dyn EnrolledPods>>,
    /// The effective configuration.
    pub config: Config,
    /// The log filter, when it can be changed.
    pub logging: Option<Arc<dyn LogControl>>,
}

/// A reply before it is sent: a status and a JSON body (pretty, fields in declaration order).
#[derive(Debug, PartialEq)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// The JSON text.
    pub body: String,
}

/// The body of an error reply.
#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    endpoints: Option<&'a [&'a str]>,
}

impl Reply {
    /// `status` with `value`.
    fn with<T: Serialize>(status: StatusCode, value: &T) -> Self {
        match serde_json::to_string_pretty(value) {
            Ok(body) => Self { status, body },
            Err(e) => Self {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: format!("{{\"error\": \"encoding the reply: {e}\"}}"),
            },
        }
    }

    /// 200 with `value`.
    fn ok<T: Serialize>(value: &T) -> Self {
        Self::with(StatusCode::OK, value)
    }

    /// `status` with `{"error": message}`.
    fn error(status: StatusCode, message: impl AsRef<str>) -> Self {
        let body = ErrorBody {
            error: message.as_ref(),
            endpoints: None,
        };
        Self::with(status, &body)
    }
}

/// Serves the admin API on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, admin: Arc<AdminState>) {
    marrow_mesh::http::serve_async(listener, move |req| {
        let admin = admin.clone();
        async move {
            let reply = handle(&admin, req.method(), req.uri()).await;
            encode(reply)
        }
    })
    .await
}

/// Answers one request.
pub async fn handle(admin: &AdminState, method: &Method, uri: &Uri) -> Reply {
    let path = uri.path();
    let query = uri.query().unwrap_or_default();
    let Some(endpoint) = Endpoint::at(path) else {
        return Reply::with(
            StatusCode::NOT_FOUND,
            &ErrorBody {
                error: &format!("no endpoint {path}"),
                endpoints: Some(&endpoints()),
            },
        );
    };
    let allowed = endpoint.methods();
    if !allowed.contains(method) {
        return Reply::error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} {path} is not supported; use {}", names(allowed)),
        );
    }
    match endpoint {
        Endpoint::Index => Reply::ok(&serde_json::json!({ "endpoints": endpoints() })),
        Endpoint::Workloads => {
            let enrolled = match &admin.enrolled {
                Some(registry) => registry.enrolled().await,
                None => Vec::new(),
            };
            Reply::ok(&views::workloads(admin, &enrolled))
        }
        Endpoint::Services => Reply::ok(&views::services(admin)),
        Endpoint::Policies => Reply::ok(&views::policies(admin)),
        Endpoint::Certificates => Reply::ok(&views::certificates(admin).await),
        Endpoint::Connections => Reply::ok(&views::connections(admin)),
        Endpoint::ConfigDump => Reply::ok(&views::config_dump(admin)),
        Endpoint::Logging => logging(admin, method, query),
        Endpoint::Explain => explain(admin, query),
        Endpoint::Routes => routes(admin, query),
    }
}

fn names(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// `GET /logging`: the filter in force; `POST /logging?level=…`: replaces it.
fn logging(admin: &AdminState, method: &Method, query: &str) -> Reply {
    let Some(control) = &admin.logging else {
        return Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log level cannot be changed in this process",
        );
    };
    let previous = control.current();
    if method == Method::GET {
        return Reply::ok(&serde_json::json!({ "level": previous }));
    }
    let Some(level) = marrow_mesh::http::query_param(query, "level") else {
        return Reply::error(
            StatusCode::BAD_REQUEST,
            "missing level=<EnvFilter directive>, e.g. level=debug or level=info,access=off",
        );
    };
    match control.set(&level) {
        Ok(()) => {
            let level = control.current();
            tracing::info!(%previous, %level, "log level changed through the admin API");
            Reply::ok(&serde_json::json!({ "level": level, "previous": previous }))
        }
        Err(e @ LogLevelError::Invalid { .. }) => {
            Reply::error(StatusCode::BAD_REQUEST, e.to_string())
        }
        Err(e) => Reply::error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `/explain?from=ns/pod|ip:ADDR&to=ns/pod&port=N`: the same answer as `node-proxy explain
/// --json`, from the state in force; with `method=`, `path=`, `host=`, `header=K%3DV`
/// (repeatable) or `waypoint=ns/name`, the waypoint's decision for that request.
fn explain(admin: &AdminState, query: &str) -> Reply {
    let Some(state) = &admin.state else {
        return Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no state file: policy is not in use",
        );
    };
    let answer = marrow_mesh::explain::ExplainQuery::parse(query).and_then(|q| {
        q.answer(&state.snapshot(), &admin.trust_domain)
            .map_err(|e| e.to_string())
    });
    match answer {
        Ok(answer) => Reply::ok(&answer),
        Err(reason) => Reply::error(StatusCode::BAD_REQUEST, reason),
    }
}

/// `/routes?to=HOST:PORT`: the same answer as `node-proxy routes --json`, from the state in
/// force: the rule that applies (with `from=`, `method=`, `path=`, `host=`, `header=K%3DV`
/// for the request), its backends, timeout, retries and faults.
fn routes(admin: &AdminState, query: &str) -> Reply {
    let Some(state) = &admin.state else {
        return Reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no state file: routes are not in use",
        );
    };
    let answer = marrow_mesh::explain::RoutesQuery::parse(query).and_then(|q| {
        marrow_mesh::explain::explain_routes(&state.snapshot(), &q).map_err(|e| e.to_string())
    });
    match answer {
        Ok(answer) => Reply::ok(&answer),
        Err(reason) => Reply::error(StatusCode::BAD_REQUEST, reason),
    }
}

/// The HTTP response of `reply`, with a trailing newline for curl users.
fn encode(reply: Reply) -> Response<Full<Bytes>> {
    let mut text = reply.body;
    text.push('\n');
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = reply.status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
