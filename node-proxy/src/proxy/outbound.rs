//! Outbound: a pod's captured connection, to its original destination — in HBONE when the
//! destination is a mesh workload, else as plain TCP.

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;

use marrow_common::PROXY_OUTBOUND_MARK;
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{OrigDst, PodContext, PodHbone, connect_result, relay_or_fail};
use crate::hbone::pool::PoolKey;
use crate::hbone::{Baggage, ConnectRequest, TraceParent};
use crate::metrics::{ConnectionLabels, Reporter};
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
        if let Some(hbone) = &ctx.hbone {
            let snap = hbone.mesh.state.snapshot();
            if let Route::Hbone {
                workload,
                target,
                authority,
            } = state::route(&snap, dst.0)
            {
                // Boxed: the tunnel's state would otherwise size every connection's future.
                let tunnel = via_hbone(&ctx, hbone, client, peer, &workload, target, authority);
                return Box::pin(tunnel).await;
            }
        }
        plain(&ctx, client, dst).await;
    }
    .instrument(span)
    .await
}

async fn plain(ctx: &PodContext, client: TcpStream, dst: OrigDst) {
    let mut labels = ConnectionLabels::unknown(Reporter::Source);
    labels.source_workload = ctx.pod.name.clone();
    labels.source_workload_namespace = ctx.pod.namespace.clone();
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
    relay_or_fail(&ctx.metrics, labels, client, upstream).await;
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
    let Some((src_workload, source)) = hbone.identity.resolve(mesh, &ctx.ips) else {
        // Without an identity there is no mTLS; the destination decides whether it accepts
        // plaintext (PeerAuthentication, issue 4).
        tracing::warn!("this pod has no identity in the state; sending plaintext");
        return plain(ctx, client, OrigDst(authority)).await;
    };
    let Some(server) = mesh.identity_of(dst_workload) else {
        tracing::warn!(dst_pod = %dst_workload.name, "destination has no valid identity; refusing");
        socket::reset(client);
        return;
    };
    let mut labels = ConnectionLabels::unknown(Reporter::Source);
    labels.source_workload = src_workload.workload_name.clone();
    labels.source_workload_namespace = src_workload.namespace.clone();
    labels.source_principal = source.to_string();
    labels.destination_workload = dst_workload.workload_name.clone();
    labels.destination_workload_namespace = dst_workload.namespace.clone();
    labels.destination_principal = server.to_string();
    labels.connection_security_policy = "mutual_tls".into();

    let pod_ip = ctx
        .ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == authority.is_ipv4())
        .unwrap_or(peer.ip());
    let request = ConnectRequest {
        authority,
        forwarded_for: SocketAddr::new(pod_ip, peer.port()),
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
    relay_or_fail(&ctx.metrics, labels, client, tunnel).await;
}
