//! Inbound: plaintext captured on 15006 and HBONE on 15008, both relayed to the app from the
//! client's own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use marrow_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_INBOUND_MARK};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::policy_watch::{self, Denial, PolicyError, PolicySubject};
use super::record::{ConnectionRecord, Failure, Side};
use super::relay::RelayError;
use super::{PodContext, peers, relay, relay_until_revoked, relay_watched, upstream_failed};
use crate::socket;
use marrow_mesh::hbone::{self, HboneError, IncomingConnect, Refusal};
use marrow_mesh::identity::{IdentityError, SpiffeId};
use marrow_mesh::state::Snapshot;
use marrow_mesh::telemetry::{ConnectionLabels, PeerLabels, Reporter, ResponseFlag};
use marrow_mesh::tls;
use marrow_mesh::tls::TlsError;

/// Why an inbound connection, an HBONE connection or one of its tunnels, was refused or ended
/// badly.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The state has no workload at this pod's addresses: no identity to serve HBONE as.
    #[error("this pod has no identity in the state")]
    NoIdentity,
    /// This pod's certificate could not be had.
    #[error("certificate for {id}: {source}")]
    Certificate {
        /// The pod's identity.
        id: SpiffeId,
        /// Why.
        source: IdentityError,
    },
    /// The TLS server configuration could not be built from the certificate.
    #[error("{0}")]
    ServerConfig(#[source] TlsError),
    /// The client did not finish the TLS handshake in time.
    #[error("tls handshake timed out")]
    HandshakeTimeout,
    /// The TLS handshake failed.
    #[error("{0}")]
    Tls(#[source] TlsError),
    /// The client's certificate names no identity of this trust domain.
    #[error("{0}")]
    ClientIdentity(#[source] TlsError),
    /// The HTTP/2 connection failed or ended with an error.
    #[error("{0}")]
    Http2(#[source] HboneError),
    /// A CONNECT to an address that is not this pod's.
    #[error("CONNECT to {0}, not an address of this pod")]
    NotThisPod(SocketAddr),
    /// Addressed to one of the proxy's own in-pod ports.
    #[error(
        "{0} is the proxy's own port {port}: refused (a recursive call to the proxy)",
        port = .0.port()
    )]
    SelfCall(SocketAddr),
    /// Refused by policy.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Connecting to the app failed.
    #[error("{0}")]
    AppUnreachable(#[source] std::io::Error),
    /// Connecting to the app timed out.
    #[error("timed out")]
    AppTimeout,
    /// The client reset its stream while the app was being connected.
    #[error("client went away before the tunnel opened: {0}")]
    ClientGone(#[source] HboneError),
    /// The relay failed.
    #[error(transparent)]
    Relay(#[from] RelayError),
}

impl InboundError {
    /// The reason of `marrow_hbone_handshake_failures_total` for an HBONE connection that
    /// failed before carrying a stream, and of its log line; `http2` is logged, not counted.
    fn kind(&self) -> &'static str {
        match self {
            InboundError::NoIdentity | InboundError::ClientIdentity(_) => "identity",
            InboundError::Certificate { .. } | InboundError::ServerConfig(_) => "certificate",
            InboundError::HandshakeTimeout => "timeout",
            InboundError::Tls(_) => "tls",
            // The HTTP/2 layer, and the tunnels' own ends (which never end the connection).
            InboundError::Http2(_)
            | InboundError::NotThisPod(_)
            | InboundError::SelfCall(_)
            | InboundError::Policy(_)
            | InboundError::AppUnreachable(_)
            | InboundError::AppTimeout
            | InboundError::ClientGone(_)
            | InboundError::Relay(_) => "http2",
        }
    }
}

impl Failure for InboundError {
    fn side(&self) -> Side {
        match self {
            InboundError::NoIdentity
            | InboundError::Certificate { .. }
            | InboundError::ServerConfig(_) => Side::Internal,
            InboundError::HandshakeTimeout
            | InboundError::Tls(_)
            | InboundError::ClientIdentity(_)
            | InboundError::Http2(_)
            | InboundError::NotThisPod(_)
            | InboundError::SelfCall(_)
            | InboundError::ClientGone(_) => Side::Downstream,
            InboundError::AppUnreachable(_) | InboundError::AppTimeout => Side::Upstream,
            InboundError::Policy(e) => e.side(),
            InboundError::Relay(e) => e.side(),
        }
    }

    /// `UF` for an unreachable app (Envoy's upstream failure: the destination side reports
    /// it), `DENY` for policy; a refused request (wrong address, self-call) or a client gone
    /// before its tunnel opened has none: such a connection is logged, not counted. The HBONE
    /// connection's own failures carry ztunnel's flags for the same step, for the log.
    fn response_flag(&self) -> Option<ResponseFlag> {
        match self {
            InboundError::NoIdentity
            | InboundError::Certificate { .. }
            | InboundError::ClientIdentity(_) => Some(ResponseFlag::IdentityError),
            InboundError::ServerConfig(_) => Some(ResponseFlag::TlsFailure),
            InboundError::HandshakeTimeout | InboundError::Tls(_) => Some(ResponseFlag::Connect),
            InboundError::Http2(_) => Some(ResponseFlag::Http2HandshakeFailure),
            InboundError::NotThisPod(_)
            | InboundError::SelfCall(_)
            | InboundError::ClientGone(_) => None,
            InboundError::AppUnreachable(_) | InboundError::AppTimeout => {
                Some(ResponseFlag::UpstreamFailure)
            }
            InboundError::Policy(e) => e.response_flag(),
            InboundError::Relay(e) => e.response_flag(),
        }
    }
}

/// The proxy's own in-pod ports: a connection or CONNECT addressed to one of them would be
/// relayed back into the proxy (15001 and 15006 loop through `sk_lookup` until the fd limit;
/// 15008 would nest HBONE in HBONE). Refused as ztunnel refuses its `illegal_ports`
/// (`src/config.rs`; `Error::SelfCall`, 503 on HBONE, in `src/proxy/inbound.rs`).
const OWN_PORTS: [u16; 3] = [OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT];

/// Refuses a connection addressed to `dst` if it would call the proxy itself.
fn self_call(dst: SocketAddr) -> Result<(), InboundError> {
    if OWN_PORTS.contains(&dst.port()) {
        return Err(InboundError::SelfCall(dst));
    }
    Ok(())
}

/// Most source ports tried for one connection to the app before giving up.
const SOURCE_PORT_ATTEMPTS: usize = 64;

/// Serves one plaintext connection assigned to 15006.
pub async fn plaintext(ctx: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let peer = socket::canonical(peer);
    let dst = match client.local_addr() {
        Ok(addr) => socket::canonical(addr),
        Err(error) => {
            tracing::warn!(pod = %ctx.pod.name, %peer, %error, "cannot read the connection's destination");
            return;
        }
    };
    let span = tracing::info_span!("inbound", pod = %ctx.pod.name, ns = %ctx.pod.namespace, src = %peer, dst = %dst);
    async move {
        // One snapshot per connection: its labels and its policy decision see the same state.
        let snap = ctx.mesh.as_ref().map(|m| m.context.state.snapshot());
        let labels = plaintext_labels(&ctx, snap.as_deref(), peer);
        let mut record = ctx.record(labels, peer, dst);
        if let Err(refused) = self_call(dst) {
            ctx.metrics
                .connection_refused(Reporter::Destination, "self_call");
            tracing::info!(reason = %refused, "connection refused");
            record.finish(Err(refused));
            socket::reset(client);
            return;
        }
        let subject = PolicySubject {
            pod_ips: ctx.ips.clone().into_boxed_slice(),
            source_principal: None,
            source: peer,
            destination: dst,
        };
        // Plain mode (no mesh configuration) admits all and follows no policy.
        let watched = match &snap {
            None => None,
            Some(snap) => match policy_watch::decide(snap, &subject) {
                Ok(allowed_by) => {
                    record.allow(allowed_by);
                    Some(record.follow_policy(subject))
                }
                Err(denial) => {
                    deny(&ctx, record, denial);
                    socket::reset(client);
                    return;
                }
            },
        };
        // Not held while the connection lives: a long connection must not pin an old state.
        drop(snap);
        let _tracked = ctx.live_inbound.track(peer, dst);
        let app = match connect_preserving_source(&ctx, peer.ip(), dst).await {
            Ok(app) => app,
            Err(failure) => return upstream_failed(record, client, failure),
        };
        match &watched {
            Some(watched) => {
                let tcp = ctx.settings.tcp_copy;
                relay_watched(&ctx.metrics, record, client, app, watched, tcp).await;
            }
            None => relay(record, client, app, ctx.settings.tcp_copy).await,
        }
    }
    .instrument(span)
    .await
}

/// Serves one connection on 15008: mutual TLS as this pod, then HTTP/2 CONNECT streams, each
/// relayed to the app from the HBONE connection's source address (the client pod's).
pub async fn tunnel_connection(ctx: Arc<PodContext>, tcp: TcpStream, peer: SocketAddr) {
    let peer = socket::canonical(peer);
    let Some(mesh) = &ctx.mesh else {
        tracing::debug!(pod = %ctx.pod.name, %peer, "hbone without a mesh configuration; closing");
        return;
    };
    let span =
        tracing::info_span!("hbone", pod = %ctx.pod.name, ns = %ctx.pod.namespace, src = %peer);
    let metrics = &ctx.metrics;
    let served = async {
        // One snapshot per HBONE connection for this pod's identity and the labels of its
        // tunnels (each tunnel takes its own for its policy decision); held through the
        // handshake only.
        let snap = mesh.context.state.snapshot();
        let (workload, id) = mesh
            .identity
            .resolve(&mesh.context, &snap, &ctx.ips)
            .ok_or(InboundError::NoIdentity)?;
        let cert = match mesh.context.certs.get(&id).await {
            Ok(cert) => cert,
            Err(source) => return Err(InboundError::Certificate { id, source }),
        };
        let config = mesh
            .server_config(&cert)
            .map_err(InboundError::ServerConfig)?;
        let tls = tokio::time::timeout(mesh.context.handshake_timeout, tls::accept(config, tcp))
            .await
            .map_err(|_| InboundError::HandshakeTimeout)?
            .map_err(InboundError::Tls)?;
        let client_id = tls::peer_identity(tls.get_ref().1, &mesh.context.trust_domain)
            .map_err(InboundError::ClientIdentity)?;
        metrics.hbone_established("inbound");
        let (labels, source_known) = tunnel_labels(&ctx, &snap, peer, &workload, &client_id, &id);
        drop(snap);
        let session = Arc::new(Session {
            labels,
            source_known,
            ctx: ctx.clone(),
            peer,
            client_id,
        });
        let drain = ctx.drain.clone();
        hbone::serve(
            tls,
            mesh.context.handshake_timeout,
            drain.started(),
            move |incoming| tunnel(session.clone(), incoming),
        )
        .await
        .map_err(InboundError::Http2)
    };
    if let Err(error) = served.instrument(span.clone()).await {
        let kind = error.kind();
        if kind != "http2" {
            metrics.hbone_failed("inbound", kind);
        }
        span.in_scope(
            || tracing::info!(kind, reason = %error, "hbone connection refused or ended"),
        );
    }
}

/// One authenticated HBONE connection.
pub(super) struct Session {
    ctx: Arc<PodContext>,
    peer: SocketAddr,
    client_id: SpiffeId,
    /// The labels of its tunnels (the same peers for all), built once.
    labels: ConnectionLabels,
    /// Whether the state knows the client; if not, each CONNECT's `baggage` describes it.
    source_known: bool,
}

impl Session {
    /// The labels of one tunnel: the connection's, completed with what its CONNECT says, as
    /// ztunnel's inbound reads it (`build_inbound_request`, src/proxy/inbound.rs): a client the
    /// state does not know is described by its `baggage`, and `destination_service` is the
    /// Service of this pod named in `forwarded: host=`, else guessed from the port.
    fn labels_for(&self, snap: &Snapshot, target: &hbone::ConnectTarget) -> ConnectionLabels {
        let mut labels = self.labels.clone();
        if !self.source_known {
            labels.source = Some(Arc::new(peers::derived_source(
                &target.baggage,
                &self.client_id,
            )));
        }
        let host = target.forwarded.host.as_deref();
        labels.destination_service = peers::inbound_service_target(snap, host, target.authority)
            .map(|s| self.ctx.labels.service(s));
        labels
    }
}

/// Serves one CONNECT of an HBONE connection: a task per tunnel, as long as it lives.
pub(super) async fn tunnel(session: Arc<Session>, incoming: IncomingConnect) {
    let target = incoming.target.authority;
    let span = tracing::info_span!("inbound", pod = %session.ctx.pod.name, ns = %session.ctx.pod.namespace, src = %session.peer, dst = %target);
    tunnel_to_app(session, incoming, target)
        .instrument(span)
        .await
}

async fn tunnel_to_app(session: Arc<Session>, incoming: IncomingConnect, target: SocketAddr) {
    let ctx = &session.ctx;
    let Some(mesh) = &ctx.mesh else {
        return incoming.refuse(Refusal::Unavailable);
    };
    // One snapshot per tunnel: its labels and its policy decision see the same state.
    let snap = mesh.context.state.snapshot();
    let labels = session.labels_for(&snap, &incoming.target);
    let mut record = ctx.record(labels, session.peer, target);
    if !ctx.ips.contains(&target.ip().to_canonical()) {
        tracing::info!(%target, "CONNECT to an address that is not this pod's; answering 400");
        record.finish(Err(InboundError::NotThisPod(target)));
        return incoming.refuse(Refusal::BadRequest);
    }
    if let Err(refused) = self_call(target) {
        ctx.metrics
            .connection_refused(Reporter::Destination, "self_call");
        tracing::info!(reason = %refused, "CONNECT refused; answering 503");
        record.finish(Err(refused));
        return incoming.refuse(Refusal::Unavailable);
    }
    let subject = PolicySubject {
        pod_ips: ctx.ips.clone().into_boxed_slice(),
        source_principal: Some(session.client_id.clone()),
        source: session.peer,
        destination: target,
    };
    let watched = match policy_watch::decide(&snap, &subject) {
        Ok(allowed_by) => {
            record.allow(allowed_by);
            record.follow_policy(subject)
        }
        Err(denial) => {
            deny(ctx, record, denial);
            return incoming.refuse(Refusal::Denied);
        }
    };
    // Not held while the tunnel lives: a long connection must not pin an old state.
    drop(snap);
    match connect_preserving_source(ctx, session.peer.ip(), target).await {
        Ok(mut app) => match incoming.accept() {
            Ok(mut stream) => {
                let tcp = ctx.settings.tcp_copy;
                relay_until_revoked(&ctx.metrics, record, &mut stream, &mut app, &watched, tcp)
                    .await;
            }
            Err(error) => {
                tracing::info!(%error, "client went away before the tunnel opened");
                record.finish(Err(InboundError::ClientGone(error)));
            }
        },
        Err(failure) => {
            tracing::info!(
                error = %failure,
                response_flags = ResponseFlag::label(failure.response_flag()),
                "app unreachable; answering 503"
            );
            record.finish(Err(failure));
            incoming.refuse(Refusal::Unavailable);
        }
    }
}

/// Ends a connection refused by policy when it was accepted, counting the denial's reason.
fn deny(ctx: &PodContext, record: ConnectionRecord, denial: Denial) {
    ctx.metrics.policy_denied(denial.reason);
    tracing::info!(
        reason = %denial.explanation,
        response_flags = ResponseFlag::Deny.as_str(),
        "connection denied"
    );
    record.finish(Err(InboundError::Policy(PolicyError::Denied(denial))));
}

/// Labels of a plaintext connection to this pod. As ztunnel: the client is the workload at its
/// address, if the state knows one (no principal: nothing proves it); this pod is its workload
/// in the state, else the enrolled pod.
fn plaintext_labels(
    ctx: &PodContext,
    snap: Option<&Snapshot>,
    peer: SocketAddr,
) -> ConnectionLabels {
    let cluster = ctx.metrics.cluster_id.label();
    let source = snap
        .and_then(|s| s.workload_by_ip(peer.ip()))
        .map(|w| ctx.labels.workload(w, cluster));
    let destination = match snap.and_then(|s| s.workload_at(&ctx.ips)) {
        Some(w) => ctx.labels.workload(w, cluster),
        None => Arc::new(PeerLabels::pod(&ctx.pod.name, &ctx.pod.namespace, cluster)),
    };
    ConnectionLabels::between_shared(Reporter::Destination, source, Some(destination))
}

/// Labels of the tunnels of one HBONE connection to this pod (`workload`, `server_id`): the
/// principals from the certificates; the client is the workload at the connection's source
/// address, else known only by its certificate's namespace until a CONNECT's `baggage` says
/// more ([`Session::labels_for`]). Also: whether the state knows the client.
fn tunnel_labels(
    ctx: &PodContext,
    snap: &Snapshot,
    peer: SocketAddr,
    workload: &Arc<marrow_mesh::state::Workload>,
    client_id: &SpiffeId,
    server_id: &SpiffeId,
) -> (ConnectionLabels, bool) {
    let cluster = ctx.metrics.cluster_id.label();
    let known = snap.workload_by_ip(peer.ip());
    let source = match known {
        Some(src) => ctx.labels.workload(src, cluster),
        None => Arc::new(PeerLabels::namespace_only(client_id)),
    };
    let destination = ctx.labels.workload(workload, cluster);
    let labels =
        ConnectionLabels::between_shared(Reporter::Destination, Some(source), Some(destination))
            .with_mutual_tls(client_id, server_id);
    (labels, known.is_some())
}

/// Connects to the app at `dst` from `client_ip`, on a source port of the proxy's choosing
/// (see [`super::source_port`]): never one of a live captured connection, never one in use.
async fn connect_preserving_source(
    ctx: &PodContext,
    client_ip: IpAddr,
    dst: SocketAddr,
) -> Result<TcpStream, InboundError> {
    match try_source_ports(ctx, client_ip, dst).await {
        Ok(Ok(app)) => Ok(app),
        Ok(Err(error)) => Err(InboundError::AppUnreachable(error)),
        Err(_) => Err(InboundError::AppTimeout),
    }
}

/// [`connect_preserving_source`]'s attempts, bounded by the connect timeout.
async fn try_source_ports(
    ctx: &PodContext,
    client_ip: IpAddr,
    dst: SocketAddr,
) -> Result<std::io::Result<TcpStream>, tokio::time::error::Elapsed> {
    let deadline = tokio::time::Instant::now() + ctx.settings.connect_timeout;
    for _ in 0..SOURCE_PORT_ATTEMPTS {
        let port = ctx.source_ports.next();
        if ctx.live_inbound.clashes(client_ip, port, dst) {
            continue;
        }
        let source = SocketAddr::new(client_ip, port);
        let sock = match ctx
            .netns
            .run(|| socket::transparent_socket(source, PROXY_INBOUND_MARK))
        {
            Ok(Ok(sock)) => sock,
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
            Ok(Err(e)) | Err(e) => return Ok(Err(e)),
        };
        match tokio::time::timeout_at(deadline, socket::connect(sock, dst)).await {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => continue,
            other => return other,
        }
    }
    Ok(Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free source port for {client_ip} -> {dst} after {SOURCE_PORT_ATTEMPTS} tries"),
    )))
}
