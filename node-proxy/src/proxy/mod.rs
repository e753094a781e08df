//! The data path of one enrolled pod: accept loops on its in-pod listeners and the per-connection
//! relays.
//!
//! Outbound (15001): the original destination comes from `SO_ORIGINAL_DST`; the proxy connects
//! to it from the pod's netns with the outbound mark, so `connect4` lets it through.
//! Inbound (15006): `sk_lookup` assigned the connection here with its destination intact; the
//! proxy connects to the app from the client's address (transparent, inbound mark), so the app
//! sees the real client. HBONE (15008) is accepted and closed until HBONE lands.

mod relay;
pub mod source_port;

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_common::{PROXY_INBOUND_MARK, PROXY_OUTBOUND_MARK};
use redirect_cni::protocol::PodIdentity;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::metrics::{ConnectionLabels, Metrics, Reporter};
use crate::netns::PodNetns;
use crate::socket;

/// The destination a captured outbound connection was headed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrigDst(pub SocketAddr);

impl fmt::Display for OrigDst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Data-path settings shared by every pod.
#[derive(Clone, Copy, Debug)]
pub struct ProxySettings {
    /// Bound on connecting to an upstream or to the app.
    pub connect_timeout: Duration,
    /// Source ports of the proxy's source-preserving connections to apps.
    pub inbound_source_ports: (u16, u16),
}

/// Most source ports tried for one connection to the app before giving up.
const SOURCE_PORT_ATTEMPTS: usize = 64;

/// What every connection of one pod needs.
#[derive(Debug)]
pub struct PodContext {
    /// The pod.
    pub pod: PodIdentity,
    /// Its network namespace.
    pub netns: Arc<PodNetns>,
    /// The proxy's metrics.
    pub metrics: Arc<Metrics>,
    /// Data-path settings.
    pub settings: ProxySettings,
    /// Source-port cursor for connections to the app.
    pub source_ports: source_port::SourcePorts,
    /// Captured inbound connections still open.
    pub live_inbound: source_port::LiveInbound,
}

/// Which in-pod listener an accept loop serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// 127.0.0.1:15001 / [::1]:15001.
    Outbound,
    /// *:15006.
    Inbound,
    /// *:15008.
    Hbone,
}

/// Accepts on `listener` until the task is aborted, spawning one task per connection.
pub async fn serve(ctx: Arc<PodContext>, listener: TcpListener, direction: Direction) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; the listener stays up.
                tracing::warn!(pod = %ctx.pod.name, ?direction, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            match direction {
                Direction::Outbound => outbound(ctx, stream, peer).await,
                Direction::Inbound => inbound(ctx, stream, peer).await,
                Direction::Hbone => {
                    tracing::debug!(pod = %ctx.pod.name, %peer, "hbone not served yet; closing");
                }
            }
        });
    }
}

async fn outbound(ctx: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
    let accepted_v6 = peer.is_ipv6();
    let dst = match socket::original_dst(client.as_fd(), accepted_v6) {
        Ok(addr) => OrigDst(socket::canonical(addr)),
        Err(error) => {
            tracing::warn!(pod = %ctx.pod.name, %peer, %error, "original destination unknown; closing");
            socket::reset(client);
            return;
        }
    };
    let span = tracing::info_span!("outbound", pod = %ctx.pod.name, ns = %ctx.pod.namespace, src = %peer, dst = %dst);
    async move {
        let labels = ConnectionLabels {
            reporter: Reporter::Source,
            source_workload: ctx.pod.name.clone(),
            source_workload_namespace: ctx.pod.namespace.clone(),
            destination_workload: "unknown".into(),
            destination_workload_namespace: "unknown".into(),
            connection_security_policy: "none".into(),
            response_flags: "-".into(),
        };
        let upstream = ctx
            .netns
            .run(|| socket::marked_socket(dst.0, PROXY_OUTBOUND_MARK))
            .and_then(|sock| sock);
        let upstream = match upstream {
            Ok(sock) => {
                tokio::time::timeout(ctx.settings.connect_timeout, socket::connect(sock, dst.0))
                    .await
            }
            Err(error) => {
                tracing::warn!(%error, "cannot create upstream socket in pod netns");
                socket::reset(client);
                return;
            }
        };
        relay_or_fail(&ctx.metrics, labels, client, upstream).await;
    }
    .instrument(span)
    .await
}

async fn inbound(ctx: Arc<PodContext>, client: TcpStream, peer: SocketAddr) {
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
        let labels = ConnectionLabels {
            reporter: Reporter::Destination,
            source_workload: "unknown".into(),
            source_workload_namespace: "unknown".into(),
            destination_workload: ctx.pod.name.clone(),
            destination_workload_namespace: ctx.pod.namespace.clone(),
            connection_security_policy: "none".into(),
            response_flags: "-".into(),
        };
        let _tracked = ctx.live_inbound.track(peer, dst);
        let app = connect_preserving_source(&ctx, peer.ip(), dst).await;
        relay_or_fail(&ctx.metrics, labels, client, app).await;
    }
    .instrument(span)
    .await
}

/// Connects to the app at `dst` from `client_ip`, on a source port of the proxy's choosing
/// (see [`source_port`]): never one of a live captured connection, never one in use.
async fn connect_preserving_source(
    ctx: &PodContext,
    client_ip: std::net::IpAddr,
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

/// Relays between `client` and a connected upstream, or resets `client` when connecting failed,
/// counting and logging either way.
async fn relay_or_fail(
    metrics: &Metrics,
    mut labels: ConnectionLabels,
    client: TcpStream,
    upstream: Result<std::io::Result<TcpStream>, tokio::time::error::Elapsed>,
) {
    let started = Instant::now();
    let upstream = match upstream {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            // UF: upstream connection failure (Istio's flag).
            labels.response_flags = "UF".into();
            metrics.opened.get_or_create(&labels).inc();
            metrics.closed.get_or_create(&labels).inc();
            tracing::info!(%error, response_flags = "UF", "upstream connect failed");
            socket::reset(client);
            return;
        }
        Err(_) => {
            labels.response_flags = "UF".into();
            metrics.opened.get_or_create(&labels).inc();
            metrics.closed.get_or_create(&labels).inc();
            tracing::info!(response_flags = "UF", "upstream connect timed out");
            socket::reset(client);
            return;
        }
    };
    metrics.opened.get_or_create(&labels).inc();
    let outcome = relay::copy_both_ways(client, upstream).await;
    metrics
        .sent_bytes
        .get_or_create(&labels)
        .inc_by(outcome.to_upstream);
    metrics
        .received_bytes
        .get_or_create(&labels)
        .inc_by(outcome.to_client);
    metrics.closed.get_or_create(&labels).inc();
    tracing::info!(
        bytes_sent = outcome.to_upstream,
        bytes_received = outcome.to_client,
        duration_ms = started.elapsed().as_millis() as u64,
        error = outcome.error.as_ref().map(tracing::field::display),
        "connection closed"
    );
}
