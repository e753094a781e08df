//! Inbound: plaintext captured on 15006 and HBONE on 15008, both relayed to the app from the
//! client's own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use marrow_common::PROXY_INBOUND_MARK;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::connections::ConnectionInfo;
use super::{PodContext, PodHbone, connect_result, log_closed, mesh, relay, relay_or_fail};
use crate::hbone::{self, IncomingConnect, Refusal};
use crate::identity::SpiffeId;
use crate::metrics::{ConnectionLabels, DenialReason, PeerLabels, Reporter};
use crate::{policy, socket, tls};

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
        let mut labels = plaintext_labels(&ctx, peer);
        let mut conn = ctx
            .connections
            .open(ConnectionInfo::from_labels(&labels, &ctx.pod, peer, dst));
        let allowed_by = match admit_plaintext(&ctx, peer, dst) {
            Ok(allowed_by) => allowed_by,
            Err((denial, reason)) => {
                ctx.metrics.policy_denied(denial);
                labels.response_flags = "DENY".into();
                ctx.metrics.opened.get_or_create(&labels).inc();
                ctx.metrics.closed.get_or_create(&labels).inc();
                tracing::info!(%reason, response_flags = "DENY", "connection denied");
                conn.deny(reason);
                socket::reset(client);
                return;
            }
        };
        conn.allow(allowed_by);
        let _tracked = ctx.live_inbound.track(peer, dst);
        let app = connect_result(connect_preserving_source(&ctx, peer.ip(), dst).await);
        relay_or_fail(&ctx.metrics, labels, conn, client, app).await;
    }
    .instrument(span)
    .await
}

/// Serves one connection on 15008: mutual TLS as this pod, then HTTP/2 CONNECT streams, each
/// relayed to the app from the HBONE connection's source address (the client pod's).
pub async fn hbone(ctx: Arc<PodContext>, tcp: TcpStream, peer: SocketAddr) {
    let peer = socket::canonical(peer);
    let Some(hbone) = &ctx.hbone else {
        tracing::debug!(pod = %ctx.pod.name, %peer, "hbone without a mesh configuration; closing");
        return;
    };
    let span =
        tracing::info_span!("hbone", pod = %ctx.pod.name, ns = %ctx.pod.namespace, src = %peer);
    let metrics = &ctx.metrics;
    let served = async {
        let (workload, id) = hbone.identity.resolve(&hbone.mesh, &ctx.ips).ok_or((
            "identity",
            "this pod has no identity in the state".to_owned(),
        ))?;
        let cert = hbone
            .mesh
            .certs
            .get(&id)
            .await
            .map_err(|e| ("certificate", format!("certificate for {id}: {e}")))?;
        let config = hbone
            .server_config(&cert)
            .map_err(|e| ("certificate", e.to_string()))?;
        let tls = tokio::time::timeout(hbone.mesh.handshake_timeout, tls::accept(config, tcp))
            .await
            .map_err(|_| ("timeout", "tls handshake timed out".to_owned()))?
            .map_err(|e| ("tls", e.to_string()))?;
        let client_id = tls::peer_identity(tls.get_ref().1, &hbone.mesh.trust_domain)
            .map_err(|e| ("identity", e.to_string()))?;
        metrics.hbone_established("inbound");
        let (labels, source_known) = tunnel_labels(&ctx, hbone, peer, &workload, &client_id, &id);
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
            hbone.mesh.handshake_timeout,
            drain.started(),
            move |incoming| tunnel(session.clone(), incoming),
        )
        .await
        .map_err(|e| ("http2", e.to_string()))
    };
    if let Err((kind, reason)) = served.instrument(span.clone()).await {
        if kind != "http2" {
            metrics.hbone_failed("inbound", kind);
        }
        span.in_scope(|| tracing::info!(kind, %reason, "hbone connection refused or ended"));
    }
}

/// One authenticated HBONE connection.
struct Session {
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
    fn labels_for(&self, target: &hbone::ConnectTarget) -> ConnectionLabels {
        let mut labels = self.labels.clone();
        if !self.source_known {
            labels.source = Some(Arc::new(mesh::derived_source(
                &target.baggage,
                &self.client_id,
            )));
        }
        if let Some(hbone) = &self.ctx.hbone {
            let snap = hbone.mesh.state.snapshot();
            let host = target.forwarded.host.as_deref();
            labels.destination_service =
                mesh::inbound_service(&snap, host, target.authority).map(Arc::new);
        }
        labels
    }
}

async fn tunnel(session: Arc<Session>, incoming: IncomingConnect) {
    let target = incoming.target.authority;
    let span = tracing::info_span!("inbound", pod = %session.ctx.pod.name, ns = %session.ctx.pod.namespace, src = %session.peer, dst = %target);
    tunnel_to_app(session, incoming, target)
        .instrument(span)
        .await
}

async fn tunnel_to_app(session: Arc<Session>, incoming: IncomingConnect, target: SocketAddr) {
    let ctx = &session.ctx;
    let Some(hbone) = &ctx.hbone else {
        return incoming.refuse(Refusal::Unavailable);
    };
    let mut labels = session.labels_for(&incoming.target);
    let mut conn = ctx.connections.open(ConnectionInfo::from_labels(
        &labels,
        &ctx.pod,
        session.peer,
        target,
    ));
    if !ctx.ips.contains(&target.ip().to_canonical()) {
        tracing::info!(%target, "CONNECT to an address that is not this pod's; answering 400");
        conn.fail(format!("CONNECT to {target}, not an address of this pod"));
        return incoming.refuse(Refusal::BadRequest);
    }
    let allowed_by = match authorize(
        hbone,
        ctx,
        Some(session.client_id.clone()),
        session.peer,
        target,
    ) {
        Ok(allowed_by) => allowed_by,
        Err((denial, reason)) => {
            ctx.metrics.policy_denied(denial);
            labels.response_flags = "DENY".into();
            ctx.metrics.opened.get_or_create(&labels).inc();
            ctx.metrics.closed.get_or_create(&labels).inc();
            tracing::info!(%reason, response_flags = "DENY", "tunnel denied; answering 401");
            conn.deny(reason);
            return incoming.refuse(Refusal::Denied);
        }
    };
    conn.allow(allowed_by);
    match connect_result(connect_preserving_source(ctx, session.peer.ip(), target).await) {
        Ok(app) => match incoming.accept() {
            Ok(stream) => {
                ctx.metrics.opened.get_or_create(&labels).inc();
                let outcome = relay::copy_both_ways(stream, app, conn.bytes()).await;
                log_closed(&ctx.metrics, &labels, conn, &outcome);
            }
            Err(error) => {
                tracing::info!(%error, "client went away before the tunnel opened");
                conn.fail(format!(
                    "client went away before the tunnel opened: {error}"
                ));
            }
        },
        Err(error) => {
            labels.response_flags = "UF".into();
            ctx.metrics.opened.get_or_create(&labels).inc();
            ctx.metrics.closed.get_or_create(&labels).inc();
            tracing::info!(%error, response_flags = "UF", "app unreachable; answering 503");
            conn.upstream_failed(error);
            incoming.refuse(Refusal::Unavailable);
        }
    }
}

/// Plaintext to this pod: refused when PeerAuthentication makes the port STRICT, or when an
/// AuthorizationPolicy denies a client without identity. Plain mode (no mesh) admits all.
/// Admitted: the policy decision's reason, when a decision was taken.
fn admit_plaintext(
    ctx: &PodContext,
    peer: SocketAddr,
    dst: SocketAddr,
) -> Result<Option<String>, (DenialReason, String)> {
    let Some(hbone) = &ctx.hbone else {
        return Ok(None);
    };
    let snap = hbone.mesh.state.snapshot();
    if let Some(workload) = snap.workload_at(&ctx.ips) {
        let view = view_of(workload);
        policy::plaintext_allowed(snap.policies(), &view, dst.port())
            .map_err(|e| (DenialReason::MtlsRequired, e.to_string()))?;
    }
    authorize(hbone, ctx, None, peer, dst)
}

/// The AuthorizationPolicy decision for a connection to this pod: `Err((reason, why))` when
/// denied; when allowed, why (`None` when the pod is not in the state: no policy applies).
fn authorize(
    hbone: &PodHbone,
    ctx: &PodContext,
    source_principal: Option<SpiffeId>,
    peer: SocketAddr,
    dst: SocketAddr,
) -> Result<Option<String>, (DenialReason, String)> {
    let snap = hbone.mesh.state.snapshot();
    // A pod the state does not know is not in the mesh: no policy selects it.
    let Some(workload) = snap.workload_at(&ctx.ips) else {
        return Ok(None);
    };
    let conn = policy::ConnectionView {
        source_principal,
        source_ip: peer.ip().to_canonical(),
        destination_ip: dst.ip().to_canonical(),
        destination_port: dst.port(),
    };
    let decision = policy::evaluate(snap.policies(), &view_of(workload), &conn);
    match DenialReason::of(&decision) {
        Some(denial) => Err((denial, decision.reason)),
        None => Ok(Some(decision.reason)),
    }
}

fn view_of(workload: &crate::state::Workload) -> policy::WorkloadView<'_> {
    policy::WorkloadView {
        namespace: &workload.namespace,
        name: &workload.name,
        labels: &workload.labels,
    }
}

/// Labels of a plaintext connection to this pod. As ztunnel: the client is the workload at its
/// address, if the state knows one (no principal: nothing proves it); this pod is its workload
/// in the state, else the enrolled pod.
fn plaintext_labels(ctx: &PodContext, peer: SocketAddr) -> ConnectionLabels {
    let cluster = ctx.metrics.cluster_id.label();
    let snap = ctx.hbone.as_ref().map(|h| h.mesh.state.snapshot());
    let source = snap
        .as_ref()
        .and_then(|s| s.workload_by_ip(peer.ip()))
        .map(|w| PeerLabels::of(w, cluster));
    let destination = match snap.as_ref().and_then(|s| s.workload_at(&ctx.ips)) {
        Some(w) => PeerLabels::of(w, cluster),
        None => PeerLabels::pod(&ctx.pod.name, &ctx.pod.namespace, cluster),
    };
    ConnectionLabels::between(Reporter::Destination, source, Some(destination))
}

/// Labels of the tunnels of one HBONE connection to this pod (`workload`, `server_id`): the
/// principals from the certificates; the client is the workload at the connection's source
/// address, else known only by its certificate's namespace until a CONNECT's `baggage` says
/// more ([`Session::labels_for`]). Also: whether the state knows the client.
fn tunnel_labels(
    ctx: &PodContext,
    hbone: &PodHbone,
    peer: SocketAddr,
    workload: &crate::state::Workload,
    client_id: &SpiffeId,
    server_id: &SpiffeId,
) -> (ConnectionLabels, bool) {
    let cluster = ctx.metrics.cluster_id.label();
    let snap = hbone.mesh.state.snapshot();
    let known = snap.workload_by_ip(peer.ip());
    let source = match known {
        Some(src) => PeerLabels::of(src, cluster),
        None => PeerLabels::namespace_only(client_id),
    };
    let destination = PeerLabels::of(workload, cluster);
    let labels = ConnectionLabels::between(Reporter::Destination, Some(source), Some(destination))
        .with_mutual_tls(client_id, server_id);
    (labels, known.is_some())
}

/// Connects to the app at `dst` from `client_ip`, on a source port of the proxy's choosing
/// (see [`super::source_port`]): never one of a live captured connection, never one in use.
async fn connect_preserving_source(
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
