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

use super::connections::{ConnectionGuard, ConnectionInfo};
use super::{OrigDst, PodContext, PodHbone, connect_result, mesh, relay_or_fail};
use crate::hbone::pool::PoolKey;
use crate::hbone::{ConnectRequest, Forwarded, HboneError, TraceParent, TransportFailure};
use crate::metrics::{
    ConnectionLabels, Metrics, PeerLabels, Reporter, ResponseFlag, ServiceLabels,
};
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
        let mut service = None;
        if let Some(hbone) = &ctx.hbone {
            let snap = hbone.mesh.state.snapshot();
            // The Service the pod addressed, if it connected to a VIP (route() resolves it).
            service = snap
                .services()
                .at(dst.0)
                .map(|s| Arc::new(mesh::service_labels(s)));
            match state::route(&snap, dst.0, hbone.mesh.state.endpoint_picker()) {
                Route::Tunnel {
                    workload,
                    target,
                    authority,
                } => {
                    let tunnel = Tunnel {
                        dst_workload: &workload,
                        target,
                        authority,
                        service,
                    };
                    // Boxed: the tunnel's state would otherwise size every connection's future.
                    return Box::pin(via_hbone(&ctx, hbone, client, peer, tunnel)).await;
                }
                // A Service VIP resolved to an endpoint outside the mesh, or no VIP at all.
                Route::Passthrough(to) => dst = OrigDst(to),
                Route::NoEndpoint { service: host } => {
                    let mut labels = plain_labels(&ctx, dst);
                    labels.destination_service = service;
                    let conn = ctx
                        .connections
                        .open(ConnectionInfo::from_labels(&labels, &ctx.pod, src, dst.0));
                    let error = format!("service {host} has no ready endpoint");
                    refuse(
                        &ctx.metrics,
                        labels,
                        conn,
                        client,
                        ResponseFlag::Connect,
                        error,
                    );
                    return;
                }
            }
        }
        plain(&ctx, client, src, dst, service).await;
    }
    .instrument(span)
    .await
}

async fn plain(
    ctx: &PodContext,
    client: TcpStream,
    src: SocketAddr,
    dst: OrigDst,
    service: Option<Arc<ServiceLabels>>,
) {
    let mut labels = plain_labels(ctx, dst);
    labels.destination_service = service;
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
    match upstream {
        Ok(upstream) => {
            relay_or_fail::<TcpStream>(&ctx.metrics, labels, conn, client, Ok(upstream)).await;
        }
        // ztunnel's flag for a failed plain connect at the source.
        Err(error) => refuse(
            &ctx.metrics,
            labels,
            conn,
            client,
            ResponseFlag::Connect,
            error,
        ),
    }
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

/// Where a tunnel goes.
struct Tunnel<'a> {
    /// The destination workload (its identity is the server SAN to expect).
    dst_workload: &'a state::Workload,
    /// Its HBONE address, `<pod ip>:15008`.
    target: SocketAddr,
    /// The CONNECT `:authority`, `<pod ip>:<port>`.
    authority: SocketAddr,
    /// The Service the client addressed, if it connected to a VIP.
    service: Option<Arc<ServiceLabels>>,
}

async fn via_hbone(
    ctx: &PodContext,
    hbone: &PodHbone,
    client: TcpStream,
    peer: SocketAddr,
    tunnel: Tunnel<'_>,
) {
    let Tunnel {
        dst_workload,
        target,
        authority,
        service,
    } = tunnel;
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
        return plain(ctx, client, src, OrigDst(authority), service).await;
    };
    let cluster = ctx.metrics.cluster_id.label();
    let mut labels = ConnectionLabels::between(
        Reporter::Source,
        Some(PeerLabels::of(&src_workload, cluster)),
        Some(PeerLabels::of(dst_workload, cluster)),
    );
    let host = service.as_ref().map(|s| s.host.as_str().to_owned());
    labels.destination_service = service;
    let Some(server) = mesh.identity_of(dst_workload) else {
        tracing::warn!(dst_pod = %dst_workload.name, "destination has no valid identity; refusing");
        let conn = ctx.connections.open(ConnectionInfo::from_labels(
            &labels, &ctx.pod, src, authority,
        ));
        let error = format!(
            "destination {}/{} has no valid identity",
            dst_workload.namespace, dst_workload.name
        );
        return refuse(
            &ctx.metrics,
            labels,
            conn,
            client,
            ResponseFlag::IdentityError,
            error,
        );
    };
    let labels = labels.with_mutual_tls(&source, &server);
    let conn = ctx.connections.open(ConnectionInfo::from_labels(
        &labels, &ctx.pod, src, authority,
    ));

    let request = ConnectRequest {
        authority,
        forwarded: Forwarded {
            for_addr: Some(src),
            host,
        },
        baggage: mesh::baggage_of(&src_workload, cluster),
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
            let error = format!("no certificate for {source}: {error}");
            return refuse(
                &ctx.metrics,
                labels,
                conn,
                client,
                ResponseFlag::IdentityError,
                error,
            );
        }
    };
    let key = PoolKey {
        source,
        destination: target,
        server,
        certificate_epoch,
    };
    match hbone.pool.tunnel(&key, &request).await {
        Ok(stream) => relay_or_fail(&ctx.metrics, labels, conn, client, Ok(stream)).await,
        Err(error) => {
            let flag = source_flag(&error);
            refuse(&ctx.metrics, labels, conn, client, flag, error.to_string());
        }
    }
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

/// Counts and logs a connection this side could not carry (opened and closed, with `flag`),
/// and resets the client.
fn refuse(
    metrics: &Metrics,
    mut labels: ConnectionLabels,
    mut conn: ConnectionGuard,
    client: TcpStream,
    flag: ResponseFlag,
    error: String,
) {
    labels.response_flags = flag.as_str().into();
    metrics.opened.get_or_create(&labels).inc();
    metrics.closed.get_or_create(&labels).inc();
    tracing::info!(%error, response_flags = flag.as_str(), "connection not carried");
    conn.failed_with(flag, error);
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
