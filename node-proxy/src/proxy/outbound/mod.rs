//! Outbound: a pod's captured connection, to its original destination — in HBONE when the
//! destination is a mesh workload, else as plain TCP.
//!
//! A connection this side cannot carry is counted and logged with ztunnel's response flag at
//! the source ([`ResponseFlag`]: `CONNECT` for a tunnel the peer refused, …), and the client
//! is reset. A connection addressed to a Service VIP carries the Service's host name in
//! `forwarded: host=` and is labelled `destination_service`, as ztunnel does.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use marrow_common::PROXY_OUTBOUND_MARK;
use tokio::net::TcpStream;
use tracing::Instrument;

mod tunnel;

use super::l4::{self, ServiceTry};
use super::record::{ConnectionRecord, Failure, Side};
use super::relay::RelayError;
use super::{OriginalDst, PodContext, PodMesh, peers, relay};
use crate::socket;
use marrow_mesh::hbone::{ConnectRequest, Forwarded, HboneError, TraceParent, TransportFailure};
use marrow_mesh::identity::{IdentityError, SpiffeId};
use marrow_mesh::resilience::{ResilienceError, Resource};
use marrow_mesh::state::waypoints::WaypointName;
use marrow_mesh::state::{self, Attempt, Route, Snapshot};
use marrow_mesh::telemetry::{ConnectionLabels, PeerLabels, Reporter, ResponseFlag, ServiceLabels};

/// Why an outbound connection was not carried, or ended badly.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The Service VIP the pod addressed has no ready endpoint.
    #[error("service {0} has no ready endpoint")]
    NoEndpoint(String),
    /// The destination uses a waypoint with no ready instance, or one the state lacks: the
    /// connection is refused, never sent around it (ztunnel's `UnknownWaypoint`).
    #[error("waypoint {0} has no ready instance")]
    WaypointDown(WaypointName),
    /// The destination workload's identity cannot be derived (no SPIFFE ID for its namespace
    /// and service account).
    #[error("destination {namespace}/{name} has no valid identity")]
    NoDestinationIdentity {
        /// Its namespace.
        namespace: String,
        /// Its pod name.
        name: String,
    },
    /// No certificate for this pod's identity.
    #[error("no certificate for {id}: {source}")]
    NoCertificate {
        /// This pod's identity.
        id: SpiffeId,
        /// Why.
        source: IdentityError,
    },
    /// The socket for a passthrough connection could not be made in the pod's netns.
    #[error("socket in the pod netns: {0}")]
    PodSocket(#[source] std::io::Error),
    /// The passthrough destination refused or failed the connection.
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    /// Connecting to the passthrough destination timed out.
    #[error("timed out")]
    ConnectTimeout,
    /// The HBONE tunnel could not be opened.
    #[error("{0}")]
    Tunnel(#[source] HboneError),
    /// The destination's DestinationRule limit is reached (`maxConnections` from this node):
    /// refused at once, Envoy's `UO`.
    #[error("{0}")]
    Overflow(#[source] ResilienceError),
    /// The relay failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
}

impl Failure for OutboundError {
    fn side(&self) -> Side {
        match self {
            OutboundError::NoCertificate { .. } | OutboundError::PodSocket(_) => Side::Internal,
            OutboundError::NoEndpoint(_)
            | OutboundError::WaypointDown(_)
            | OutboundError::NoDestinationIdentity { .. }
            | OutboundError::Connect(_)
            | OutboundError::Overflow(_)
            | OutboundError::ConnectTimeout => Side::Upstream,
            OutboundError::Tunnel(HboneError::Transport {
                failure: TransportFailure::Certificate | TransportFailure::TlsConfig,
                ..
            }) => Side::Internal,
            OutboundError::Tunnel(_) => Side::Upstream,
            OutboundError::Relay(e) => e.side(),
        }
    }

    /// ztunnel's flags at the source: `CONNECT` for a passthrough destination or a Service
    /// that could not be reached, `IDENTITY_ERROR` when an identity or certificate is
    /// missing, the tunnel's as [`source_flag`] maps them; Envoy's `UO` for a connection over
    /// a DestinationRule's `maxConnections`; `UH` for a waypoint with no ready
    /// instance (Envoy's "no healthy upstream": ztunnel's `UnknownWaypoint` has no flag of
    /// its own).
    fn response_flag(&self) -> Option<ResponseFlag> {
        match self {
            OutboundError::WaypointDown(_) => Some(ResponseFlag::NoHealthyUpstream),
            OutboundError::Overflow(_) => Some(ResponseFlag::UpstreamOverflow),
            OutboundError::NoEndpoint(_)
            | OutboundError::PodSocket(_)
            | OutboundError::Connect(_)
            | OutboundError::ConnectTimeout => Some(ResponseFlag::Connect),
            OutboundError::NoDestinationIdentity { .. } | OutboundError::NoCertificate { .. } => {
                Some(ResponseFlag::IdentityError)
            }
            OutboundError::Tunnel(e) => Some(source_flag(e)),
            OutboundError::Relay(e) => e.response_flag(),
        }
    }
}

/// Serves one connection accepted on 15001: decides from one snapshot where it goes and how
/// it is described ([`plan`]), then carries it.
pub async fn handle(ctx: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let accepted_v6 = peer.is_ipv6();
    let dst = match socket::original_dst(client.as_fd(), accepted_v6) {
        Ok(addr) => OriginalDst(socket::canonical(addr)),
        Err(error) => {
            tracing::warn!(pod = %ctx.pod.name, %peer, %error, "original destination unknown; closing");
            socket::reset(client);
            return;
        }
    };
    // The app's socket is on loopback (its connect was redirected); log the pod's address.
    let src = ctx
        .ips
        .iter()
        .find(|ip| ip.is_ipv4() == peer.is_ipv4())
        .map(|ip| SocketAddr::new(*ip, peer.port()))
        .unwrap_or(peer);
    let span = tracing::info_span!("outbound", pod = %ctx.pod.name, ns = %ctx.pod.namespace, src = %src, dst = %dst);
    async move {
        let Some(mesh) = &ctx.mesh else {
            // Plain mode (no mesh configuration): everything passes through.
            let record = ctx.record(plain_labels(&ctx, None, dst), src, dst.0);
            return Box::pin(passthrough(&ctx, client, record, dst)).await;
        };
        // One snapshot per connection for its route, its labels and this pod's identity,
        // dropped before any I/O: a long connection must not pin an old state.
        let from = From { src, peer, dst };
        let first = Choice {
            draw: fastrand::u64(..),
            avoid: None,
        };
        match plan(&ctx, mesh, &mesh.context.state.snapshot(), from, first) {
            // Both boxed: each path's connection then holds its own state only, not room for
            // the larger of the two (the task's future is ~0.5 KiB, not ~1.5).
            plan @ Plan::Tunnel(_) => Box::pin(tunnel::carry(&ctx, mesh, client, plan, from)).await,
            Plan::Passthrough(record, dst) => {
                Box::pin(passthrough(&ctx, client, record, dst)).await;
            }
            Plan::Refuse(record, error) => refuse(record, client, *error),
        }
    }
    .instrument(span)
    .await
}

/// Where a connection goes, decided from one snapshot, with its record open (the labels live
/// in the record only, so no copy of them is kept in the connection's future).
enum Plan {
    /// In HBONE to the destination's node proxy.
    Tunnel(Box<TunnelPlan>),
    /// Plain TCP to the address, from the pod's netns.
    Passthrough(ConnectionRecord, OriginalDst),
    /// Refused before any I/O.
    Refuse(ConnectionRecord, Box<OutboundError>),
}

/// Where a connection came from and was headed: what a retry plans again from.
#[derive(Clone, Copy)]
struct From {
    /// The pod's end, as logged.
    src: SocketAddr,
    /// The app's socket.
    peer: SocketAddr,
    /// The original destination.
    dst: OriginalDst,
}

/// The choices a plan is made with: the TCPRoute draw, and an endpoint to avoid on a retry.
#[derive(Clone, Copy)]
struct Choice {
    draw: u64,
    avoid: Option<SocketAddr>,
}

/// A connection to carry in HBONE.
struct TunnelPlan {
    /// Its record: mutual TLS between the two identities.
    record: ConnectionRecord,
    /// This pod's identity (the client certificate).
    source: SpiffeId,
    /// The identity the destination must present.
    server: SpiffeId,
    /// The destination's HBONE address, `<pod ip>:15008`.
    target: SocketAddr,
    /// The CONNECT.
    request: ConnectRequest,
    /// A Service endpoint's try (retry, outlier detection, limits), when the pod addressed a
    /// Service and its endpoint was chosen here.
    service_try: Option<ServiceTry>,
}

/// The route of a connection to a mesh workload.
struct TunnelRoute<'a> {
    /// The destination workload (its identity is the server SAN to expect).
    dst_workload: &'a Arc<state::Workload>,
    /// Its HBONE address, `<pod ip>:15008`.
    target: SocketAddr,
    /// The CONNECT `:authority`, `<pod ip>:<port>`.
    authority: SocketAddr,
    /// The Service the client addressed, if it connected to a VIP.
    service: Option<Arc<ServiceLabels>>,
    /// The Service endpoint's try, when it is one.
    service_try: Option<ServiceTry>,
}

/// Decides, from `snap` alone, where the connection from `src` (the app's `peer`) to `dst`
/// goes and how it is labelled, and opens its record: a mesh workload (or a Service VIP
/// resolved to one) in HBONE, anything else passed through, a VIP without endpoints refused.
fn plan(ctx: &PodContext, mesh: &PodMesh, snap: &Snapshot, from: From, choice: Choice) -> Plan {
    let From { src, peer, dst } = from;
    let source = snap.workload_at(&ctx.ips).map(|w| w.as_ref());
    let picker = mesh.context.state.endpoint_picker();
    let chooser = l4::Chooser {
        destinations: &mesh.context.destinations,
        picker,
        source_ip: ctx
            .ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == dst.0.is_ipv4())
            .unwrap_or(peer.ip()),
    };
    let attempt = Attempt {
        chooser: &chooser,
        draw: choice.draw,
        avoid: choice.avoid,
    };
    let routed = state::route_attempt(snap, source, dst.0, picker, &attempt);
    // The Service whose endpoint was chosen (the TCPRoute's backend, else the one addressed).
    let service = routed.service.map(|s| ctx.labels.service(s));
    match routed.route {
        Route::Tunnel {
            workload,
            target,
            authority,
        } => {
            // A Service endpoint chosen here; a pod address is never tried elsewhere.
            let service_try = routed.addressed.and(routed.service).map(|backend| {
                let destination = l4::destination(&mesh.context.destinations, snap, backend);
                ServiceTry {
                    backend: Arc::clone(backend),
                    endpoint: authority,
                    in_flight: destination.as_ref().map(|d| d.balancer.begin(authority)),
                    destination,
                    draw: choice.draw,
                    retried: choice.avoid.is_some(),
                    slot: None,
                }
            });
            let route = TunnelRoute {
                dst_workload: &workload,
                target,
                authority,
                service,
                service_try,
            };
            plan_tunnel(ctx, mesh, snap, peer, route)
        }
        // Through a waypoint: to one of its instances, as to a workload, with the original
        // destination in the CONNECT; the destination workload is the waypoint's pod, the
        // destination service stays the Service addressed.
        Route::Waypoint {
            waypoint,
            instance,
            target,
            authority,
        } => {
            tracing::debug!(%waypoint, instance = %instance.name, "through the waypoint");
            let route = TunnelRoute {
                dst_workload: &instance,
                target,
                authority,
                service,
                service_try: None,
            };
            plan_tunnel(ctx, mesh, snap, peer, route)
        }
        Route::WaypointDown { waypoint } => {
            let mut labels = plain_labels(ctx, Some(snap), dst);
            labels.destination_service = service;
            let error = OutboundError::WaypointDown(waypoint);
            Plan::Refuse(ctx.record(labels, src, dst.0), Box::new(error))
        }
        // A Service VIP resolved to an endpoint outside the mesh, or no VIP at all.
        Route::Passthrough(to) => {
            let dst = OriginalDst(to);
            let mut labels = plain_labels(ctx, Some(snap), dst);
            labels.destination_service = service;
            Plan::Passthrough(ctx.record(labels, src, dst.0), dst)
        }
        Route::NoEndpoint { service: host } => {
            let mut labels = plain_labels(ctx, Some(snap), dst);
            labels.destination_service = service;
            let error = OutboundError::NoEndpoint(host);
            Plan::Refuse(ctx.record(labels, src, dst.0), Box::new(error))
        }
    }
}

/// [`plan`] for a connection to a mesh workload: in HBONE as this pod's identity; passed
/// through when this pod has none; refused when the destination has none.
fn plan_tunnel(
    ctx: &PodContext,
    mesh: &PodMesh,
    snap: &Snapshot,
    peer: SocketAddr,
    route: TunnelRoute<'_>,
) -> Plan {
    let TunnelRoute {
        dst_workload,
        target,
        authority,
        service,
        mut service_try,
    } = route;
    let context = &mesh.context;
    let pod_ip = ctx
        .ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == authority.is_ipv4())
        .unwrap_or(peer.ip());
    // This pod's end of the connection, as the destination will see it (`forwarded`).
    let src = SocketAddr::new(pod_ip, peer.port());
    let Some((src_workload, source)) = mesh.identity.resolve(context, snap, &ctx.ips) else {
        // Without an identity there is no mTLS; the destination decides whether it accepts
        // plaintext (its PeerAuthentication).
        tracing::warn!("this pod has no identity in the state; sending plaintext");
        let dst = OriginalDst(authority);
        let mut labels = plain_labels(ctx, Some(snap), dst);
        labels.destination_service = service;
        return Plan::Passthrough(ctx.record(labels, src, dst.0), dst);
    };
    let cluster = ctx.metrics.cluster_id.label();
    let mut labels = ConnectionLabels::between_shared(
        Reporter::Source,
        Some(ctx.labels.workload(&src_workload, cluster)),
        Some(ctx.labels.workload(dst_workload, cluster)),
    );
    let host = service.as_ref().map(|s| s.host.as_str().to_owned());
    labels.destination_service = service;
    let server = ctx
        .labels
        .identities
        .get(dst_workload, |w| context.identity_of(w));
    let Some(server) = Option::clone(&server) else {
        tracing::warn!(dst_pod = %dst_workload.name, "destination has no valid identity; refusing");
        let error = OutboundError::NoDestinationIdentity {
            namespace: dst_workload.namespace.clone(),
            name: dst_workload.name.clone(),
        };
        return Plan::Refuse(ctx.record(labels, src, authority), Box::new(error));
    };
    let request = ConnectRequest {
        authority,
        forwarded: Forwarded {
            for_addr: Some(src),
            host,
        },
        baggage: peers::baggage_of(&src_workload, cluster),
        traceparent: TraceParent::random(),
    };
    let labels = labels.with_mutual_tls(&source, &server);
    // `connectionPool.tcp.maxConnections`, counted per client node proxy.
    if let Some(limits) = service_try
        .as_ref()
        .and_then(|t| t.destination.as_ref())
        .map(|d| &d.limits)
    {
        match limits.try_acquire(Resource::Connections) {
            Ok(slot) => {
                if let Some(t) = service_try.as_mut() {
                    t.slot = Some(slot);
                }
            }
            Err(overflow) => {
                let error = OutboundError::Overflow(overflow);
                return Plan::Refuse(ctx.record(labels, src, authority), Box::new(error));
            }
        }
    }
    Plan::Tunnel(Box::new(TunnelPlan {
        record: ctx.record(labels, src, authority),
        source,
        server,
        target,
        request,
        service_try,
    }))
}

/// Carries a connection as plain TCP to `dst`.
async fn passthrough(
    ctx: &PodContext,
    client: TcpStream,
    record: ConnectionRecord,
    dst: OriginalDst,
) {
    match connect_passthrough(ctx, dst).await {
        Ok(upstream) => relay(record, client, upstream, ctx.settings.tcp_copy).await,
        Err(error) => refuse(record, client, error),
    }
}

/// Connects to `dst` from the pod's netns, with the outbound mark (never captured again).
async fn connect_passthrough(
    ctx: &PodContext,
    dst: OriginalDst,
) -> Result<TcpStream, OutboundError> {
    let sock = ctx
        .netns
        .run(|| socket::marked_socket(dst.0, PROXY_OUTBOUND_MARK))
        .and_then(|s| s)
        .map_err(OutboundError::PodSocket)?;
    tokio::time::timeout(ctx.settings.connect_timeout, socket::connect(sock, dst.0))
        .await
        .map_err(|_| OutboundError::ConnectTimeout)?
        .map_err(OutboundError::Connect)
}

/// Labels of a plain TCP connection from this pod: this pod is its workload in the state, else
/// the enrolled pod; the destination is the workload at its address, if the state knows one (as
/// ztunnel; no principals: nothing proves them).
fn plain_labels(ctx: &PodContext, snap: Option<&Snapshot>, dst: OriginalDst) -> ConnectionLabels {
    let cluster = ctx.metrics.cluster_id.label();
    let source = match snap.and_then(|s| s.workload_at(&ctx.ips)) {
        Some(w) => ctx.labels.workload(w, cluster),
        None => Arc::new(PeerLabels::pod(&ctx.pod.name, &ctx.pod.namespace, cluster)),
    };
    let destination = snap
        .and_then(|s| s.workload_by_ip(dst.0.ip()))
        .map(|w| ctx.labels.workload(w, cluster));
    ConnectionLabels::between_shared(Reporter::Source, Some(source), destination)
}

/// ztunnel's response flag at the source for a tunnel that could not be opened: what its
/// `extract_failure_reason` (src/proxy/metrics.rs) makes of the error its outbound path returns
/// for the same failure (src/proxy/pool.rs, src/proxy/h2/client.rs).
fn source_flag(error: &HboneError) -> ResponseFlag {
    match error {
        HboneError::Transport { failure, .. } => match failure {
            // fetch_certificate: Error::Identity.
            TransportFailure::Certificate => ResponseFlag::IdentityError,
            // outbound_connector: Error::Tls.
            TransportFailure::TlsConfig => ResponseFlag::TlsFailure,
            // A connect timeout: Error::MaybeHBONENetworkPolicyError.
            TransportFailure::ConnectTimeout => ResponseFlag::NetworkPolicy,
            // I/O errors, the TLS handshake's included: Error::Io, counted as CONNECT.
            TransportFailure::Connect
            | TransportFailure::Tls
            | TransportFailure::Identity
            | TransportFailure::HandshakeTimeout => ResponseFlag::Connect,
        },
        // Error::Http2Handshake or Error::H2.
        HboneError::H2(_) => ResponseFlag::Http2HandshakeFailure,
        // A 401 or 503 from the peer: Error::HttpStatus, counted as CONNECT.
        HboneError::Refused(_) | HboneError::Http(_) => ResponseFlag::Connect,
    }
}

/// Ends a connection this side could not carry with `error` (its record counts it opened and
/// closed, with the error's flag), and resets the client.
fn refuse(record: ConnectionRecord, client: TcpStream, error: OutboundError) {
    let flag = ResponseFlag::label(error.response_flag());
    tracing::info!(%error, response_flags = flag, "connection not carried");
    record.finish(Err(error));
    socket::reset(client);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_get_ztunnels_source_flags() {
        let transport = |failure| HboneError::Transport {
            failure,
            step: "step".into(),
            source: std::io::ErrorKind::Other.into(),
        };
        let cases = [
            (transport(TransportFailure::Certificate), "IDENTITY_ERROR"),
            (transport(TransportFailure::TlsConfig), "TLS_FAILURE"),
            (
                transport(TransportFailure::ConnectTimeout),
                "NETWORK_POLICY",
            ),
            (transport(TransportFailure::Connect), "CONNECT"),
            (transport(TransportFailure::Tls), "CONNECT"),
            (transport(TransportFailure::Identity), "CONNECT"),
            (transport(TransportFailure::HandshakeTimeout), "CONNECT"),
            (
                HboneError::Refused(http::StatusCode::UNAUTHORIZED),
                "CONNECT",
            ),
            (
                HboneError::Refused(http::StatusCode::SERVICE_UNAVAILABLE),
                "CONNECT",
            ),
            (
                HboneError::H2(h2::Reason::REFUSED_STREAM.into()),
                "H2_HANDSHAKE_FAILURE",
            ),
        ];
        for (error, flag) in cases {
            assert_eq!(source_flag(&error).as_str(), flag, "{error}");
        }
    }
}
