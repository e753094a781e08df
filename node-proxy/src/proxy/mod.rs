//! The data path of one enrolled pod: accept loops on its in-pod listeners and the per-connection
//! relays.
//!
//! Outbound (15001): the original destination comes from `SO_ORIGINAL_DST`; a destination that
//! the state knows as a mesh workload is reached through HBONE (mTLS + HTTP/2 CONNECT to its
//! pod's 15008, dialled from this pod's netns), anything else by plain TCP from the pod's netns
//! with the outbound mark. Inbound: plaintext on 15006 (assigned by `sk_lookup` with its
//! destination intact) and HBONE on 15008 are both relayed to the app from the client's own
//! address (transparent, inbound mark), so the app sees the real client.
//!
//! Every connection, whatever its path, has one [`record::ConnectionRecord`]: its entry in the
//! live table ([`connections`]), its `istio_tcp_*` counts and its access-log line; each module's
//! error says which side failed and its response flag ([`record::Failure`]).

pub mod connections;
pub mod connector;
pub mod context;
pub mod enrollment;
mod inbound;
pub mod l4;
pub mod local_identity;
mod outbound;
pub mod peers;
pub mod policy_watch;
pub mod record;
mod relay;
pub mod source_port;

pub use relay::TcpCopy;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use marrow_wire::enrollment::PodIdentity;
use tokio::net::{TcpListener, TcpStream};

use crate::metrics::Metrics;
use crate::netns::PodNetns;
use crate::socket;
use connections::{ConnectionFacts, ConnectionTable};
use context::MeshContext;
use local_identity::LocalIdentity;
use marrow_mesh::hbone::pool::Pool;
use marrow_mesh::telemetry::{ConnectionLabels, ResponseFlag};
use policy_watch::{PolicyError, Watched};
use record::{ConnectionRecord, Failure};

/// The destination a captured outbound connection was headed for (`SO_ORIGINAL_DST`; not
/// `marrow_common::OrigDst`, the eBPF map's record it is read from).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OriginalDst(pub SocketAddr);

impl fmt::Display for OriginalDst {
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
    /// Whether outbound HBONE tunnels share pooled connections (`--hbone-no-pool` turns it
    /// off).
    pub hbone_reuse: bool,
    /// How plaintext TCP to TCP relays move bytes.
    pub tcp_copy: relay::TcpCopy,
}

/// What every connection of one pod needs.
pub struct PodContext {
    /// The pod.
    pub pod: PodIdentity,
    /// Its addresses.
    pub ips: Vec<IpAddr>,
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
    /// This pod's part of the mesh (HBONE both ways); `None` in plain mode.
    pub mesh: Option<PodMesh>,
    /// The proxy's live connection table (shared by every pod and the admin API).
    pub connections: Arc<ConnectionTable>,
    /// The proxy's connection tasks and its drain signal.
    pub drain: marrow_mesh::drain::Drain,
    /// Labels shared by this pod's connections (built once per workload and Service).
    pub labels: peers::PodLabels,
}

/// A pod's part of the mesh.
pub struct PodMesh {
    /// The mesh context.
    pub context: Arc<MeshContext>,
    /// Pooled HBONE connections from this pod.
    pub pool: Arc<Pool<connector::PodConnector>>,
    /// The identity this pod holds certificates for.
    pub identity: LocalIdentity,
    /// The TLS server configuration of this pod's 15008, rebuilt only when the certificate
    /// changes (renewal), not per connection.
    pub server_config: std::sync::Mutex<Option<ServerConfigCache>>,
}

/// A server configuration and the certificate it was built from.
pub struct ServerConfigCache {
    cert: Arc<marrow_mesh::identity::WorkloadCertificate>,
    config: Arc<rustls::ServerConfig>,
}

impl PodMesh {
    /// The server configuration for `cert`, from the cache when it is the same certificate.
    pub fn server_config(
        &self,
        cert: &Arc<marrow_mesh::identity::WorkloadCertificate>,
    ) -> Result<Arc<rustls::ServerConfig>, marrow_mesh::tls::TlsError> {
        let mut cached = self
            .server_config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(entry) = cached.as_ref().filter(|e| Arc::ptr_eq(&e.cert, cert)) {
            return Ok(entry.config.clone());
        }
        let config = marrow_mesh::tls::server_config(cert, self.context.key_exchange)?;
        *cached = Some(ServerConfigCache {
            cert: cert.clone(),
            config: config.clone(),
        });
        Ok(config)
    }
}

impl fmt::Debug for PodContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PodContext")
            .field("pod", &self.pod)
            .field("ips", &self.ips)
            .finish_non_exhaustive()
    }
}

impl Drop for PodContext {
    fn drop(&mut self) {
        if let Some(mesh) = &self.mesh {
            mesh.identity.release(&mesh.context);
        }
    }
}

/// Which in-pod listener an accept loop serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// `127.0.0.1:15001` / `[::1]:15001`.
    Outbound,
    /// *:15006: plaintext captured by `sk_lookup`.
    InboundPlaintext,
    /// *:15008: HBONE tunnels (mutual TLS, HTTP/2 CONNECT).
    InboundTunnel,
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
        // Small writes (HTTP/2 frames, request/response apps) must not wait for an ACK:
        // Nagle against the peer's delayed ACK costs ~40 ms per exchange.
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        // One spawn per kind: a task is as large as its future, and one `match` inside a
        // single task would size every outbound connection's task for the HBONE connection's
        // (its TLS state: ~8 KiB instead of ~1.5 KiB per held connection).
        let task_ctx = ctx.clone();
        match direction {
            Direction::Outbound => ctx.drain.spawn(outbound::handle(task_ctx, stream, peer)),
            Direction::InboundPlaintext => {
                ctx.drain.spawn(inbound::plaintext(task_ctx, stream, peer));
            }
            Direction::InboundTunnel => {
                ctx.drain
                    .spawn(inbound::tunnel_connection(task_ctx, stream, peer));
            }
        }
    }
}

impl PodContext {
    /// Opens the record of a connection of this pod from `src` to `dst`, between the ends
    /// `peers` describes.
    fn record(
        &self,
        peers: ConnectionLabels,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> ConnectionRecord {
        let pod = self.labels.pod_key(&self.pod);
        let facts = ConnectionFacts::with_pod(peers, pod, src, dst);
        ConnectionRecord::open(&self.connections, &self.metrics, facts)
    }
}

/// Relays between `client` and the connected `upstream` until both are done, and ends
/// `record` with the relay's result.
async fn relay<U>(
    mut record: ConnectionRecord,
    mut client: TcpStream,
    mut upstream: U,
    tcp: relay::TcpCopy,
) where
    U: relay::Endpoint,
{
    record.established();
    let result = relay::copy_both_ways(&mut client, &mut upstream, record.bytes(), tcp).await;
    record.finish(result);
}

/// [`relay`] for a connection the policy watcher follows: cut (`client` reset) when `watched`
/// is revoked.
async fn relay_watched<U>(
    metrics: &Metrics,
    record: ConnectionRecord,
    mut client: TcpStream,
    mut upstream: U,
    watched: &Watched,
    tcp: relay::TcpCopy,
) where
    U: relay::Endpoint,
{
    if relay_until_revoked(metrics, record, &mut client, &mut upstream, watched, tcp).await {
        socket::reset(client);
    }
}

/// Ends a connection whose upstream (or app) could not be reached, with `failure`, and resets
/// the client.
fn upstream_failed(record: ConnectionRecord, client: TcpStream, failure: impl Failure) {
    record.finish(Err(failure));
    socket::reset(client);
}

/// Relays until both sides are done or until the policy watcher revokes `watched`, then ends
/// `record`. Returns whether it was revoked (the caller then cuts what it owns; the streams
/// here are only borrowed).
async fn relay_until_revoked<C, U>(
    metrics: &Metrics,
    mut record: ConnectionRecord,
    client: &mut C,
    upstream: &mut U,
    watched: &Watched,
    tcp: relay::TcpCopy,
) -> bool
where
    C: relay::Endpoint,
    U: relay::Endpoint,
{
    record.established();
    let copy = relay::copy_both_ways(client, upstream, record.bytes(), tcp);
    // Boxed: the watch would otherwise enlarge every connection's future.
    let outcome = Box::pin(until_revoked(copy, watched)).await;
    match outcome {
        Ok(result) => {
            record.finish(result);
            false
        }
        Err(denial) => {
            // As ztunnel's late rejection, its close-time series carry `DENY`
            // (`src/proxy/metrics.rs`, `AuthorizationPolicyLateRejection`).
            metrics.policy_denied(denial.reason);
            tracing::info!(
                reason = %denial.explanation,
                response_flags = ResponseFlag::Deny.as_str(),
                "connection closed: no longer allowed by policy"
            );
            record.finish(Err(PolicyError::Revoked(denial)));
            true
        }
    }
}

/// Runs `relay` unless `watched` is revoked first: then the relay is dropped and the denial
/// returned.
async fn until_revoked<F>(relay: F, watched: &Watched) -> Result<F::Output, policy_watch::Denial>
where
    F: std::future::Future,
{
    tokio::select! {
        outcome = relay => Ok(outcome),
        denial = watched.revoked() => Err(denial.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netns::HostNetns;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, B, F: std::future::Future>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every connection is one spawned task holding one of these futures: keep them small, so
    /// thousands of held connections cost little (a regression here multiplies by every
    /// connection). The bounds are the measured sizes rounded up.
    #[tokio::test]
    async fn per_connection_futures_stay_small() {
        let host = HostNetns::current().unwrap();
        let own: std::os::fd::OwnedFd = std::fs::File::open("/proc/self/ns/net").unwrap().into();
        let netns = Arc::new(PodNetns::new(own, host).unwrap());
        let ctx = Arc::new(PodContext {
            pod: PodIdentity {
                uid: "u".into(),
                namespace: "ns".into(),
                name: "p".into(),
                service_account: None,
            },
            ips: vec!["10.0.0.1".parse().unwrap()],
            netns,
            metrics: Arc::default(),
            settings: ProxySettings {
                connect_timeout: Duration::from_secs(1),
                inbound_source_ports: (1024, 32767),
                hbone_reuse: true,
                tcp_copy: relay::TcpCopy::Splice,
            },
            source_ports: source_port::SourcePorts::new(1024..=32767, 0),
            live_inbound: source_port::LiveInbound::default(),
            mesh: None,
            drain: marrow_mesh::drain::Drain::new(),
            connections: Arc::default(),
            labels: peers::PodLabels::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = || async { TcpStream::connect(addr).await.unwrap() };
        let sizes = [
            (
                "outbound",
                std::mem::size_of_val(&outbound::handle(ctx.clone(), stream().await, addr)),
            ),
            (
                "plaintext inbound",
                std::mem::size_of_val(&inbound::plaintext(ctx.clone(), stream().await, addr)),
            ),
            (
                "hbone inbound",
                std::mem::size_of_val(&inbound::tunnel_connection(
                    ctx.clone(),
                    stream().await,
                    addr,
                )),
            ),
            ("hbone tunnel", future_size(inbound::tunnel)),
        ];
        println!("{sizes:?}");
        // Bounds: the measured sizes with some room. The HBONE one is per HBONE connection
        // (its TLS state), shared by all the streams on it. Measured: 1600, 1424, 8120; the
        // first two were 1480 and 1312 before the relay moved chunks without copying (its
        // sources and sinks and the chunk in flight are held here, +120 bytes, while the
        // 2 KiB heap buffer per direction that every idle connection held is gone) (the
        // first two were 1752 and 1824 while each kept its labels beside its table entry; the
        // HBONE one was 8104 before it held its one snapshot through the handshake, 5304
        // before it built Istio's full label set per connection and watched the drain signal
        // for GOAWAY).
        // The tunnel's is per CONNECT stream, each its own task: 2144 (its relay inline, the
        // policy watch boxed).
        // The outbound one was 1480 while its passthrough relay was inline beside the boxed
        // tunnel: 544 with both paths boxed.
        let bounds = [576, 1536, 8192, 2304];
        for ((what, size), bound) in sizes.into_iter().zip(bounds) {
            assert!(
                size <= bound,
                "{what} future is {size} bytes (bound {bound})"
            );
        }
    }
}
