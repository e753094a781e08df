//! Inbound: plaintext captured on 15006 and HBONE on 15008, both relayed to the app from the
//! client's own address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use marrow_common::{HBONE_PORT, INBOUND_PORT, OUTBOUND_PORT, PROXY_INBOUND_MARK};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::connections::ConnectionInfo;
use super::policy_watch::{self, Denial, PolicySubject};
use super::{
    PodContext, PodHbone, connect_result, mesh, relay_or_fail, relay_or_fail_watched, relay_watched,
};
use crate::hbone::{self, IncomingConnect, Refusal};
use crate::identity::SpiffeId;
use crate::metrics::{ConnectionLabels, PeerLabels, Reporter};
use crate::state::Snapshot;
use crate::{socket, tls};

/// The proxy's own in-pod ports: a connection or CONNECT addressed to one of them would be
/// relayed back into the proxy (15001 and 15006 loop through `sk_lookup` until the fd limit;
/// 15008 would nest HBONE in HBONE). Refused as ztunnel refuses its `illegal_ports`
/// (`src/config.rs`; `Error::SelfCall`, 503 on HBONE, in `src/proxy/inbound.rs`).
const OWN_PORTS: [u16; 3] = [OUTBOUND_PORT, INBOUND_PORT, HBONE_PORT];

/// Why a connection addressed to `dst` would call the proxy itself, if it would.
fn self_call(dst: SocketAddr) -> Option<String> {
    OWN_PORTS.contains(&dst.port()).then(|| {
        format!(
            "{dst} is the proxy's own port {}: refused (a recursive call to the proxy)",
            dst.port()
        )
    })
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
        let snap = ctx.hbone.as_ref().map(|h| h.mesh.state.snapshot());
        let mut labels = plaintext_labels(&ctx, snap.as_deref(), peer);
        let mut conn = ctx
            .connections
            .open(ConnectionInfo::from_labels(&labels, &ctx.pod, peer, dst));
        if let Some(reason) = self_call(dst) {
            ctx.metrics
                .connection_refused(Reporter::Destination, "self_call");
            tracing::info!(%reason, "connection refused");
            conn.fail(reason);
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
                    conn.allow(allowed_by);
                    Some(conn.follow_policy(subject))
                }
                Err(denial) => {
                    deny(&ctx, &mut labels, &mut conn, denial);
                    socket::reset(client);
                    return;
                }
            },
        };
        // Not held while the connection lives: a long connection must not pin an old state.
        drop(snap);
        let _tracked = ctx.live_inbound.track(peer, dst);
        let app = connect_result(connect_preserving_source(&ctx, peer.ip(), dst).await);
        match &watched {
            Some(watched) => {
                relay_or_fail_watched(&ctx.metrics, labels, conn, client, app, watched).await;
            }
            None => relay_or_fail(&ctx.metrics, labels, conn, client, app).await,
        }
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
    fn labels_for(&self, snap: &Snapshot, target: &hbone::ConnectTarget) -> ConnectionLabels {
        let mut labels = self.labels.clone();
        if !self.source_known {
            labels.source = Some(Arc::new(mesh::derived_source(
                &target.baggage,
                &self.client_id,
            )));
        }
        let host = target.forwarded.host.as_deref();
        labels.destination_service =
            mesh::inbound_service(snap, host, target.authority).map(Arc::new);
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
    // One snapshot per tunnel: its labels and its policy decision see the same state.
    let snap = hbone.mesh.state.snapshot();
    let mut labels = session.labels_for(&snap, &incoming.target);
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
    if let Some(reason) = self_call(target) {
        ctx.metrics
            .connection_refused(Reporter::Destination, "self_call");
        tracing::info!(%reason, "CONNECT refused; answering 503");
        conn.fail(reason);
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
            conn.allow(allowed_by);
            conn.follow_policy(subject)
        }
        Err(denial) => {
            deny(ctx, &mut labels, &mut conn, denial);
            return incoming.refuse(Refusal::Denied);
        }
    };
    // Not held while the tunnel lives: a long connection must not pin an old state.
    drop(snap);
    match connect_result(connect_preserving_source(ctx, session.peer.ip(), target).await) {
        Ok(mut app) => match incoming.accept() {
            Ok(mut stream) => {
                ctx.metrics.opened.get_or_create(&labels).inc();
                relay_watched(&ctx.metrics, labels, conn, &mut stream, &mut app, &watched).await;
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

/// Counts and logs a connection refused by policy when it was accepted.
fn deny(
    ctx: &PodContext,
    labels: &mut ConnectionLabels,
    conn: &mut super::connections::ConnectionGuard,
    denial: Denial,
) {
    ctx.metrics.policy_denied(denial.reason);
    labels.response_flags = "DENY".into();
    ctx.metrics.opened.get_or_create(labels).inc();
    ctx.metrics.closed.get_or_create(labels).inc();
    tracing::info!(reason = %denial.explanation, response_flags = "DENY", "connection denied");
    conn.deny(denial.explanation);
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
        .map(|w| PeerLabels::of(w, cluster));
    let destination = match snap.and_then(|s| s.workload_at(&ctx.ips)) {
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
