//! The waypoint applies the snapshot's routes ([`marrow_mesh::traffic::TrafficSet`]) to each
//! authorized request, as Envoy's router does for Istio's VirtualServices and the Gateway
//! API's HTTPRoutes/GRPCRoutes: which rule takes the request ([`decide`]), which backend and
//! which of its endpoints ([`resolve`], `Upstreams::choose` in `crate::upstream`), what is
//! rewritten ([`rewrite`]), what is retried and when ([`retry`]), what faults are injected
//! ([`fault`]); the attempt loop and mirrors run in `forward::attempts`.
//!
//! A Service no route applies to is forwarded to as addressed; a workload addressed directly
//! is never routed (Istio routes by host, and a pod IP is no host).

pub mod fault;
pub mod retry;
pub mod rewrite;
pub mod subsets;

use std::net::SocketAddr;
use std::sync::Arc;

use marrow_mesh::state::Snapshot;
use marrow_mesh::state::services::ServiceTarget;
use marrow_mesh::telemetry::ResponseFlag;
use marrow_mesh::traffic::{
    Backend, Forward, HttpRule, HttpSelection, RouteRef, RouteRequest, ServiceName, TrafficPolicy,
    pick_weighted,
};

use crate::target::Destination;
use rewrite::MatchedPrefix;
use subsets::SubsetCache;

/// Envoy's retry (and mirror) buffer: a request body up to this many bytes is kept to be sent
/// again; a longer one is streamed once and never retried nor mirrored (Envoy buffers up to
/// the listener's `per_connection_buffer_limit_bytes`, 1 MiB by default, and gives up retrying
/// past it: router.cc "retry buffer overflow").
pub const REPLAY_LIMIT: usize = 1 << 20;

/// Mirrored requests in flight at most, over the whole waypoint; past it a mirror is skipped.
pub const MIRRORS_IN_FLIGHT: usize = 64;

/// Why a routed request cannot be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The rule's backends are none, all weigh 0, or the one drawn cannot be resolved
    /// (Gateway API: 500).
    #[error("{route}: no backend with a weight")]
    NoBackend {
        /// The rule.
        route: RouteRef,
    },
    /// The backend names a Service port the state does not have.
    #[error("{route}: backend service {service} port {port} is unknown")]
    UnknownService {
        /// The rule.
        route: RouteRef,
        /// The Service.
        service: ServiceName,
        /// The port.
        port: u16,
    },
}

impl RouteError {
    /// The status and flag of the answer: 500 for a rule without backends (the Gateway API's
    /// answer to a rule whose backends are all invalid or weightless), 503 `UH` for a backend
    /// that does not exist (Envoy's answer to a cluster without hosts).
    pub fn answer(&self) -> (http::StatusCode, Option<ResponseFlag>, &'static str) {
        match self {
            RouteError::NoBackend { .. } => (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "no backend for the route",
            ),
            RouteError::UnknownService { .. } => (
                http::StatusCode::SERVICE_UNAVAILABLE,
                Some(ResponseFlag::NoHealthyUpstream),
                "no healthy upstream",
            ),
        }
    }
}

/// Which way a request goes.
#[derive(Debug)]
pub enum Decision<'a> {
    /// No route applies (or the destination is a workload): forward as addressed.
    Unrouted,
    /// Routes apply and none matches: 404 `NR`.
    NoRoute,
    /// This rule matched.
    Rule(&'a HttpRule),
}

/// The Service a request to `dest` may be routed for (none for a workload).
pub fn service_name(dest: &Destination) -> Option<ServiceName> {
    dest.service_ref()
        .map(|(namespace, name)| ServiceName::new(namespace, name))
}

/// The rule a request to `service` takes (the first match in evaluation order).
pub fn decide<'a>(
    snap: &'a Snapshot,
    service: Option<&ServiceName>,
    request: &RouteRequest<'_>,
) -> Decision<'a> {
    let Some(service) = service else {
        return Decision::Unrouted;
    };
    match snap.traffic().select_http(service, request) {
        HttpSelection::NoRoutes => Decision::Unrouted,
        HttpSelection::NoMatch => Decision::NoRoute,
        HttpSelection::Matched(rule) => Decision::Rule(rule),
    }
}

/// The path prefix `rule` matched `request` on, for a prefix rewrite.
pub fn matched_prefix<'a>(
    rule: &'a HttpRule,
    request: &RouteRequest<'_>,
) -> Option<MatchedPrefix<'a>> {
    let block = rule.matches.iter().find(|block| request.matches(block))?;
    MatchedPrefix::of(block.path.as_ref())
}

/// Where the attempts of one request may go.
#[derive(Clone, Debug)]
pub enum Target {
    /// A Service port's endpoints (all of them, or a subset's).
    Service {
        /// The Service port.
        service: Arc<ServiceTarget>,
        /// The subset's endpoints; `None`: all the Service's.
        subset: Option<Arc<[SocketAddr]>>,
        /// The subset's name (the per-endpoint policy is kept per Service, port and subset).
        subset_name: Option<Arc<str>>,
        /// The DestinationRule policy in force for it.
        policy: Option<TrafficPolicy>,
    },
    /// One pod, addressed directly.
    Workload(SocketAddr),
}

impl Target {
    /// The destination as addressed (the Service `name`, or a workload), no route applied;
    /// the Service's DestinationRule still applies.
    pub fn unrouted(snap: &Snapshot, dest: &Destination, name: Option<&ServiceName>) -> Self {
        match dest {
            Destination::Service(service) => {
                let policy = name
                    .and_then(|name| snap.traffic().destination_policy(name))
                    .map(|p| p.resolve(service.vip.port(), None));
                Target::Service {
                    service: service.clone(),
                    subset: None,
                    subset_name: None,
                    policy,
                }
            }
            Destination::Workload { addr, .. } => Target::Workload(*addr),
        }
    }

    /// The candidate endpoints.
    pub fn endpoints(&self) -> &[SocketAddr] {
        match self {
            Target::Service {
                subset: Some(subset),
                ..
            } => subset,
            Target::Service { service, .. } => &service.endpoints,
            Target::Workload(addr) => std::slice::from_ref(addr),
        }
    }

    /// The Service port, if one is targeted.
    pub fn service(&self) -> Option<&Arc<ServiceTarget>> {
        match self {
            Target::Service { service, .. } => Some(service),
            Target::Workload(_) => None,
        }
    }
}

/// Picks a backend of the rule's `forward` (a random draw over the weights) and resolves it.
/// A backendRef the parser could not resolve keeps its weight and answers 500 for its share
/// (Gateway API: `ResolvedRefs=False`; `Forward::invalid_backends`).
pub fn pick_backend<'a>(
    snap: &Snapshot,
    subsets: &SubsetCache,
    route: &RouteRef,
    forward: &'a Forward,
    request_port: u16,
) -> Result<(&'a Backend, Target), RouteError> {
    let backend = pick_weighted(&forward.backends, fastrand::u64(..)).ok_or_else(|| {
        RouteError::NoBackend {
            route: route.clone(),
        }
    })?;
    if forward.is_invalid(backend) {
        return Err(RouteError::NoBackend {
            route: route.clone(),
        });
    }
    Ok((
        backend,
        resolve(snap, subsets, route, backend, request_port)?,
    ))
}

/// `backend`'s Service port (its own port, else the one the request came to), narrowed to its
/// DestinationRule subset: the endpoints whose pods carry every label of the subset (istio
/// `pilot/pkg/networking/core/cluster.go`, a subset is a cluster of the matching endpoints). A
/// subset the DestinationRule does not define selects nothing (Envoy: a cluster without hosts).
pub fn resolve(
    snap: &Snapshot,
    subsets: &SubsetCache,
    route: &RouteRef,
    backend: &Backend,
    request_port: u16,
) -> Result<Target, RouteError> {
    let port = backend.port.unwrap_or(request_port);
    let service = snap
        .services()
        .by_name(&backend.service, port)
        .ok_or_else(|| RouteError::UnknownService {
            route: route.clone(),
            service: backend.service.clone(),
            port,
        })?;
    let destination = snap.traffic().destination_policy(&backend.service);
    let policy = destination.map(|p| p.resolve(port, backend.subset.as_deref()));
    let subset = backend.subset.as_deref().map(|name| {
        let labels = destination.and_then(|p| p.subset(name)).map(|s| &s.labels);
        subsets.endpoints(snap, &backend.service, service, name, labels)
    });
    Ok(Target::Service {
        service: service.clone(),
        subset,
        subset_name: backend.subset.as_deref().map(Arc::from),
        policy,
    })
}
