//! "Where does this request go?": the route that applies to traffic for a Service — which rule of
//! which VirtualService, HTTPRoute, GRPCRoute or TCPRoute, its weighted backends, and the
//! timeout, retry and fault policy in force — computed from a snapshot with the functions the
//! data paths call ([`TrafficSet::select_http`] at the waypoint, [`TrafficSet::tcp_rule`] in the
//! node proxy). Used by `node-proxy routes` and the admin's `/routes`.
//!
//! Which layer decides follows the data path: a Service with a waypoint has its HTTP routes
//! applied there (unless its port is declared opaque TCP, which the waypoint relays); a Service
//! without one has only its TCPRoutes applied, by the client's node proxy, and an HTTP route for
//! it is noted as not applied.

use std::net::{IpAddr, SocketAddr};

use serde::Serialize;

use super::{ExplainError, ExplainSource, RequestQuery};
use crate::path;
use crate::state::Snapshot;
use crate::state::protocol::Protocol;
use crate::traffic::{
    AbortStatus, Backend, Forward, HttpAction, HttpSelection, RetryPolicy, RouteRef, RouteRequest,
    ServiceName, TrafficSet,
};

/// A routes question: from whom (optional: source labels and namespace can matter), to which
/// `HOST:PORT`, and the request (for HTTP routes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutesQuery {
    /// `--from ns/pod`.
    pub from: Option<ExplainSource>,
    /// `--to HOST:PORT`: a Service host (`name`, `name.ns`, `name.ns.svc`,
    /// `name.ns.svc.cluster.local`) or a Service VIP, and the service port.
    pub to: String,
    /// The request (method, path, host, headers); defaults as [`RequestQuery`]'s.
    pub request: RequestQuery,
}

impl RoutesQuery {
    /// Parses an admin `/routes` query string (after the `?`): `to=HOST:PORT` and optional
    /// `from=ns/pod`, `method=`, `path=`, `host=`, `header=K%3DV` (repeatable). The error names
    /// the argument and the reason.
    pub fn parse(query: &str) -> Result<Self, String> {
        use crate::http::{query_param as param, query_params as params};
        let from = match param(query, "from") {
            Some(from) => Some(from.parse().map_err(|e: ExplainError| e.to_string())?),
            None => None,
        };
        let to = param(query, "to").ok_or("missing to=HOST:PORT")?;
        Ok(Self {
            from,
            to,
            request: RequestQuery {
                method: param(query, "method"),
                path: param(query, "path"),
                host: param(query, "host"),
                headers: params(query, "header"),
                waypoint: None,
            },
        })
    }
}

/// The route, in the shape `--json` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoutesAnswer {
    /// The Service, `ns/name`.
    pub service: String,
    /// The service port.
    pub port: u16,
    /// Who applies it: `waypoint ns/name` (L7) or `node proxy` (L4).
    pub layer: String,
    /// The rule that applies; `None` when none does.
    pub route: Option<RouteView>,
    /// What the rule does: `forward`, `redirect`, `respond`, `no route` (404 NR), or
    /// `default` (no route object: the Service itself).
    pub action: &'static str,
    /// Weighted backends.
    pub backends: Vec<BackendView>,
    /// The whole request's deadline.
    pub timeout_ms: Option<u64>,
    /// Retries.
    pub retries: Option<RetriesView>,
    /// Injected faults.
    pub fault: Option<FaultView>,
    /// Why a route does not apply here, and the route objects of the Service's namespace that
    /// were refused.
    pub notes: Vec<String>,
}

/// A rule, as `{"kind","name","rule"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteView {
    /// `VirtualService`, `HTTPRoute`, `GRPCRoute`, `TCPRoute`.
    pub kind: &'static str,
    /// `ns/name`.
    pub name: String,
    /// The rule's index.
    pub rule: usize,
}

/// A backend, as `{"service","subset","port","weight"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendView {
    /// `ns/name`.
    pub service: String,
    /// The DestinationRule subset.
    pub subset: Option<String>,
    /// The service port.
    pub port: u16,
    /// Its weight.
    pub weight: u32,
}

/// Retries, as in force.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetriesView {
    /// Retries after the first try.
    pub attempts: u32,
    /// Each try's deadline.
    pub per_try_timeout_ms: Option<u64>,
    /// Istio's `retryOn` names, comma-separated.
    pub retry_on: String,
    /// Status codes retried.
    pub status_codes: Vec<u16>,
}

/// Faults, as in force.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FaultView {
    /// The injected delay.
    pub delay_ms: Option<u64>,
    /// The share of requests delayed.
    pub delay_percent: Option<f64>,
    /// The HTTP status of an injected abort.
    pub abort_http_status: Option<u16>,
    /// The gRPC status of an injected abort.
    pub abort_grpc_status: Option<u32>,
    /// The share of requests aborted.
    pub abort_percent: Option<f64>,
}

/// Answers `query` from `snap`.
pub fn explain_routes(snap: &Snapshot, query: &RoutesQuery) -> Result<RoutesAnswer, ExplainError> {
    let source = match &query.from {
        Some(ExplainSource::Workload { namespace, name }) => Some(
            snap.workload_by_name(namespace, name)
                .ok_or_else(|| ExplainError::UnknownWorkload {
                    what: "source",
                    namespace: namespace.clone(),
                    name: name.clone(),
                })?
                .clone(),
        ),
        _ => None,
    };
    let (service, port) = resolve_target(
        snap,
        &query.to,
        source.as_deref().map(|w| w.namespace.as_str()),
    )?;
    let target = snap.services().by_name(&service, port);
    let traffic = snap.traffic();
    let mut notes = refusal_notes(traffic, &service.namespace);
    let waypoint = snap
        .waypoints()
        .for_service(&service.namespace, &service.name);
    let opaque = target.is_some_and(|t| t.protocol() == Protocol::Tcp);
    let answer = |layer: String, route, action, forward: Option<&Forward>, backends| RoutesAnswer {
        service: service.to_string(),
        port,
        layer,
        route,
        action,
        backends,
        timeout_ms: forward.and_then(|f| f.timeout).map(millis),
        retries: forward.and_then(|f| f.retries.as_ref()).map(retries_view),
        fault: forward
            .and_then(|f| f.fault.as_ref())
            .map(|fault| FaultView {
                delay_ms: fault.delay.map(|(d, _)| millis(d)),
                delay_percent: fault.delay.map(|(_, p)| p.0),
                abort_http_status: fault.abort.and_then(|(s, _)| match s {
                    AbortStatus::Http(code) => Some(code),
                    AbortStatus::Grpc(_) => None,
                }),
                abort_grpc_status: fault.abort.and_then(|(s, _)| match s {
                    AbortStatus::Grpc(code) => Some(code),
                    AbortStatus::Http(_) => None,
                }),
                abort_percent: fault.abort.map(|(_, p)| p.0),
            }),
        notes: Vec::new(),
    };
    let itself = || {
        vec![BackendView {
            service: service.to_string(),
            subset: None,
            port,
            weight: 100,
        }]
    };
    let mut result = match waypoint {
        Ok(waypoint) if !opaque => {
            let layer = format!("waypoint {}", waypoint.name);
            let method = query.request.method.clone().unwrap_or_else(|| "GET".into());
            let raw_path = query.request.path.clone().unwrap_or_else(|| "/".into());
            let normalized = path::normalize(&raw_path).map_err(|e| ExplainError::BadArgument {
                what: "path",
                value: format!("{raw_path} ({e})"),
                expected: "a request target the waypoint accepts",
            })?;
            let authority = query.request.host.clone().unwrap_or_else(|| service.host());
            let headers = query.request.header_map()?;
            let request = RouteRequest {
                port,
                method: &method,
                path_and_query: normalized.as_str(),
                authority: &authority,
                headers: &headers,
                source_namespace: source.as_deref().map(|w| w.namespace.as_str()),
                source_labels: source.as_deref().map(|w| &w.labels),
            };
            match traffic.select_http(&service, &request) {
                HttpSelection::NoRoutes => answer(layer, None, "default", None, itself()),
                HttpSelection::NoMatch => {
                    answer(layer, None, "no route (404 NR)", None, Vec::new())
                }
                HttpSelection::Matched(rule) => {
                    let route = Some(route_view(&rule.route));
                    match &rule.action {
                        HttpAction::Forward(forward) => {
                            let backends = backend_views(&forward.backends, port);
                            answer(layer, route, "forward", Some(forward), backends)
                        }
                        HttpAction::Redirect(_) => {
                            answer(layer, route, "redirect", None, Vec::new())
                        }
                        HttpAction::Respond(_) => answer(layer, route, "respond", None, Vec::new()),
                    }
                }
            }
        }
        _ => {
            let layer = "node proxy".to_owned();
            if waypoint.is_ok() {
                notes.push(format!(
                    "port {port} is declared opaque TCP: the waypoint relays it without HTTP routes"
                ));
            }
            if waypoint.is_err() && !traffic.http_rules(&service).is_empty() {
                notes.push(format!(
                    "HTTP routes for {service} are applied only at a waypoint, and it uses none"
                ));
            }
            match traffic.tcp_rule(&service, port) {
                Some(rule) => answer(
                    layer,
                    Some(route_view(&rule.route)),
                    "forward",
                    None,
                    backend_views(&rule.backends, port),
                ),
                None => answer(layer, None, "default", None, itself()),
            }
        }
    };
    if target.is_none() {
        notes.push(format!("{service} has no port {port} in the state"));
    }
    result.notes = notes;
    Ok(result)
}

/// `HOST:PORT` to a Service and port: a VIP through the Service index, a name by its
/// `name[.ns[.svc[.cluster.local]]]` form (a bare name in the source's namespace).
fn resolve_target(
    snap: &Snapshot,
    to: &str,
    source_namespace: Option<&str>,
) -> Result<(ServiceName, u16), ExplainError> {
    let bad = |expected| ExplainError::BadArgument {
        what: "destination",
        value: to.to_owned(),
        expected,
    };
    if let Ok(addr) = to.parse::<SocketAddr>() {
        let target = snap
            .services()
            .at(addr)
            .ok_or_else(|| bad("a Service VIP:port of the state"))?;
        return Ok((
            ServiceName::new(target.namespace.as_str(), target.name.as_str()),
            addr.port(),
        ));
    }
    let (host, port) = to.rsplit_once(':').ok_or_else(|| bad("HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| bad("HOST:PORT with a port number"))?;
    if host.parse::<IpAddr>().is_ok() {
        return Err(bad("a Service VIP:port of the state"));
    }
    let host = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let service = match host.split_once('.') {
        Some((name, ns)) if !name.is_empty() && !ns.is_empty() && !ns.contains('.') => {
            ServiceName::new(ns, name)
        }
        None if !host.is_empty() => match source_namespace {
            Some(ns) => ServiceName::new(ns, host),
            None => return Err(bad("name.namespace (a bare name needs --from ns/pod)")),
        },
        _ => {
            return Err(bad(
                "name, name.ns, name.ns.svc or name.ns.svc.cluster.local",
            ));
        }
    };
    Ok((service, port))
}

fn route_view(route: &RouteRef) -> RouteView {
    RouteView {
        kind: route.kind.as_str(),
        name: format!("{}/{}", route.namespace, route.name),
        rule: route.rule,
    }
}

fn backend_views(backends: &[Backend], port: u16) -> Vec<BackendView> {
    backends
        .iter()
        .map(|b| BackendView {
            service: b.service.to_string(),
            subset: b.subset.clone(),
            port: b.port.unwrap_or(port),
            weight: b.weight,
        })
        .collect()
}

fn retries_view(retries: &RetryPolicy) -> RetriesView {
    let on = retries.retry_on;
    let names = [
        (on.five_xx, "5xx"),
        (on.gateway_error, "gateway-error"),
        (on.connect_failure, "connect-failure"),
        (on.refused_stream, "refused-stream"),
        (on.reset, "reset"),
        (on.retriable_4xx, "retriable-4xx"),
        (on.retriable_status_codes, "retriable-status-codes"),
        (on.grpc_cancelled, "cancelled"),
        (on.grpc_deadline_exceeded, "deadline-exceeded"),
        (on.grpc_resource_exhausted, "resource-exhausted"),
        (on.grpc_unavailable, "unavailable"),
    ];
    RetriesView {
        attempts: retries.attempts,
        per_try_timeout_ms: retries.per_try_timeout.map(millis),
        retry_on: names
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect::<Vec<_>>()
            .join(","),
        status_codes: retries.status_codes.clone(),
    }
}

/// The refusals of route objects in `namespace`, one note each.
fn refusal_notes(traffic: &TrafficSet, namespace: &str) -> Vec<String> {
    traffic
        .refusals()
        .iter()
        .filter(|r| r.namespace == namespace)
        .map(ToString::to_string)
        .collect()
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
