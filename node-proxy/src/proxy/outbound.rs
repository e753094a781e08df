//! Outbound: a pod's captured connection, to its original destination — in HBONE when the
//! destination is a mesh workload, else as plain TCP.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use marrow_common::PROXY_OUTBOUND_MARK;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::connections::ConnectionInfo;
use super::{OrigDst, PodContext, PodHbone, connect_result, relay_or_fail};
use crate::hbone::pool::PoolKey;
use crate::hbone::{Baggage, ConnectRequest, TraceParent};
use crate::metrics::{ConnectionLabels, PeerLabels, Reporter};
use crate::socket;
use crate::state::{self, Route};

/// Serves one connection accepted on 15001.
pub async fn handle(ctx: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let accepted_v6 = peer.is_ipv6();
    let dst = match socket::original_dst(client.as_fd(), accepted_v6) {
        Ok(addr) => OrigDst(socket::canonical(addr)),
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
        let mut dst = dst;
        if let Some(hbone) = &ctx.hbone {
            let snap = hbone.mesh.state.snapshot();
            match state::route(&snap, dst.0) {
                Route::Hbone {
                    workload,
                    target,
                    authority,
                } => {
                    // Boxed: the tunnel's state would otherwise size every connection's future.
                    let tunnel = via_hbone(&ctx, hbone, client, peer, &workload, target, authority);
                    return Box::pin(tunnel).await;
                }
                // A Service VIP resolved to an endpoint outside the mesh, or no VIP at all.
                Route::Passthrough(to) => dst = OrigDst(to),
                Route::NoEndpoint { service } => {
                    let labels = plain_labels(&ctx, dst);
                    let conn = ctx
                        .connections
                        .open(ConnectionInfo::from_labels(&labels, &ctx.pod, src, dst.0));
                    let refused: Result<TcpStream, String> =
                        Err(format!("service {service} has no ready endpoint"));
                    relay_or_fail(&ctx.metrics, labels, conn, client, refused).await;
                    return;
                }
            }
        }
        plain(&ctx, client, src, dst).await;
    }
    .instrument(span)
    .await
}

async fn plain(ctx: &PodContext, client: TcpStream, src: SocketAddr, dst: OrigDst) {
    let labels = plain_labels(ctx, dst);
    let conn = ctx
        .connections
        .open(ConnectionInfo::from_labels(&labels, &ctx.pod, src, dst.0));
    let upstream = match ctx
        .netns
        .run(|| socket::marked_socket(dst.0, PROXY_OUTBOUND_MARK))
        .and_then(|s| s)
    {
        Ok(sock) => connect_result(
            tokio::time::timeout(ctx.settings.connect_timeout, socket::connect(sock, dst.0)).await,
        ),
        Err(e) => Err(format!("socket in the pod netns: {e}")),
    };
    relay_or_fail(&ctx.metrics, labels, conn, client, upstream).await;
}

/// Labels of a plain TCP connection from this pod: this pod is its workload in the state, else
/// the enrolled pod; the destination is the workload at its address, if the state knows one (as
/// ztunnel; no principals: nothing proves them).
fn plain_labels(ctx: &PodContext, dst: OrigDst) -> ConnectionLabels {
    let cluster = ctx.metrics.cluster_id.label();
    let snap = ctx.hbone.as_ref().map(|h| h.mesh.state.snapshot());
    let source = match snap.as_ref().and_then(|s| s.workload_at(&ctx.ips)) {
        Some(w) => PeerLabels::of(w, cluster),
        None => PeerLabels::pod(&ctx.pod.name, &ctx.pod.namespace, cluster),
    };
    let destination = snap
        .as_ref()
        .and_then(|s| s.workload_by_ip(dst.0.ip()))
        .map(|w| PeerLabels::of(w, cluster));
    ConnectionLabels::between(Reporter::Source, Some(source), destination)
}

async fn via_hbone(
    ctx: &PodContext,
    hbone: &PodHbone,
    client: TcpStream,
    peer: SocketAddr,
    dst_workload: &state::Workload,
    target: SocketAddr,
    authority: SocketAddr,
) {
    let mesh = &hbone.mesh;
    let pod_ip = ctx
        .ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == authority.is_ipv4())
        .unwrap_or(peer.ip());
    // This pod's end of the connection, as the destination will see it (`forwarded`).
    let src = SocketAddr::new(pod_ip, peer.port());
    let Some((src_workload, source)) = hbone.identity.resolve(mesh, &ctx.ips) else {
        // Without an identity there is no mTLS; the destination decides whether it accepts
        // plaintext (PeerAuthentication, issue 4).
        tracing::warn!("this pod has no identity in the state; sending plaintext");
        return plain(ctx, client, src, OrigDst(authority)).await;
    };
    let Some(server) = mesh.identity_of(dst_workload) else {
        tracing::warn!(dst_pod = %dst_workload.name, "destination has no valid identity; refusing");
        let mut refused = ctx.connections.open(ConnectionInfo {
            src_workload: Some(ConnectionInfo::workload_name(&src_workload)),
            dst_workload: Some(ConnectionInfo::workload_name(dst_workload)),
            ..ConnectionInfo::new(Reporter::Source, &ctx.pod, src, authority)
        });
        refused.fail(format!(
            "destination {}/{} has no valid identity",
            dst_workload.namespace, dst_workload.name
        ));
        socket::reset(client);
        return;
    };
    let cluster = ctx.metrics.cluster_id.label();
    let labels = ConnectionLabels::between(
        Reporter::Source,
        Some(PeerLabels::of(&src_workload, cluster)),
        Some(PeerLabels::of(dst_workload, cluster)),
    )
    .with_mutual_tls(&source, &server);
    let mut conn = ctx.connections.open(ConnectionInfo::from_labels(
        &labels, &ctx.pod, src, authority,
    ));

    let request = ConnectRequest {
        authority,
        forwarded_for: src,
        baggage: Baggage {
            namespace: Some(src_workload.namespace.clone()),
            pod: Some(src_workload.name.clone()),
            service: Some(src_workload.canonical_service.clone()),
            version: Some(src_workload.canonical_revision.clone()),
        },
        traceparent: TraceParent::random(),
    };
    let certificate_epoch = match mesh.certs.get(&source).await {
        Ok(cert) => cert
            .not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        Err(error) => {
            tracing::warn!(%source, %error, "no certificate; refusing");
            mesh.metrics.hbone_failed("outbound", "certificate");
            conn.fail(format!("no certificate for {source}: {error}"));
            socket::reset(client);
            return;
        }
    };
    let key = PoolKey {
        source,
        destination: target,
        server,
        certificate_epoch,
    };
    let tunnel = hbone
        .pool
        .tunnel(&key, &request)
        .await
        .map_err(|e| e.to_string());
    relay_or_fail(&ctx.metrics, labels, conn, client, tunnel).await;
}
