//! The way out: a tunnel to a chosen endpoint through its node proxy — HBONE to
//! `<pod ip>:15008`, `CONNECT <pod ip:port>`, as the waypoint's own identity, expecting the
//! endpoint workload's; connections pooled ([`Pool`]) so requests and tunnels share them. The
//! CONNECT carries the *original* client in `forwarded` and `baggage`, as ztunnel's does, so
//! the destination's telemetry names the real source.

mod endpoints;

pub use endpoints::{ChoiceRequest, DestinationKey};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use marrow_mesh::dial::{DialAsWorkload, DialTimeouts, dial};
use marrow_mesh::hbone::pool::{Pool, PoolKey, PoolSettings, PooledStream};
use marrow_mesh::hbone::{
    ConnectRequest, Forwarded, HBONE_PORT, HboneClient, HboneError, TraceParent,
};
use marrow_mesh::identity::{
    CertificateManager, IdentityError, SpiffeId, TrustDomain, WorkloadCertificate,
};
use marrow_mesh::resilience::{Destinations, ResilienceMetrics};
use marrow_mesh::state::Snapshot;
use marrow_mesh::telemetry::ResponseFlag;
use marrow_mesh::tls;

use crate::balance::LeastRequest;
use crate::client::OriginalClient;

/// Why a tunnel to an endpoint could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The Service has no ready endpoint.
    #[error("service {0} has no ready endpoint")]
    NoEndpoint(String),
    /// The endpoint is no workload of the snapshot, so its identity is unknown.
    #[error("endpoint {0} is no known workload: its identity is unknown")]
    UnknownWorkload(SocketAddr),
    /// The workload's identity cannot be formed.
    #[error("endpoint {endpoint}: no SPIFFE identity for its workload: {reason}")]
    Identity {
        /// The endpoint.
        endpoint: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The waypoint has no certificate of its own.
    #[error("the waypoint's own certificate: {0}")]
    Certificate(#[source] IdentityError),
    /// HBONE to the endpoint's node proxy failed (connect, TLS, refusal).
    #[error("tunnel to {endpoint}: {source}")]
    Tunnel {
        /// The endpoint.
        endpoint: SocketAddr,
        /// Cause.
        source: HboneError,
    },
    /// Opening the tunnel took longer than the connect timeout.
    #[error("tunnel to {0}: timed out")]
    Timeout(SocketAddr),
    /// The HTTP handshake over the tunnel failed.
    #[error("http handshake with {endpoint}: {source}")]
    Http {
        /// The endpoint.
        endpoint: SocketAddr,
        /// Cause.
        source: hyper::Error,
    },
}

impl UpstreamError {
    /// Envoy's flag for it: no endpoint is UH, every other failure to reach one is UF.
    pub fn flag(&self) -> ResponseFlag {
        match self {
            UpstreamError::NoEndpoint(_) => ResponseFlag::NoHealthyUpstream,
            _ => ResponseFlag::UpstreamFailure,
        }
    }
}

/// Where the TCP connection to a node proxy's HBONE address goes: that address in production;
/// the in-process tests, whose pods have routable addresses but whose node proxies listen on
/// loopback (the state refuses loopback pod addresses), map one to the other.
pub type DialMap = Arc<dyn Fn(SocketAddr) -> SocketAddr + Send + Sync>;

/// Dials HBONE connections as the waypoint: TCP, mutual TLS (own certificate, expecting the
/// endpoint's identity), HTTP/2.
pub struct WaypointConnector {
    connect_timeout: Duration,
    handshake_timeout: Duration,
    dial_map: Option<DialMap>,
}

impl DialAsWorkload for WaypointConnector {
    /// Dials as `cert`: TCP (through the dial map in tests), TLS, HTTP/2.
    async fn dial(
        &self,
        key: PoolKey,
        cert: Arc<WorkloadCertificate>,
    ) -> Result<HboneClient, HboneError> {
        let to = self
            .dial_map
            .as_ref()
            .map_or(key.destination, |map| map(key.destination));
        let tcp = async move {
            let tcp = tokio::net::TcpStream::connect(to).await?;
            tcp.set_nodelay(true)?;
            Ok(tcp)
        };
        let timeouts = DialTimeouts {
            connect: self.connect_timeout,
            handshake: self.handshake_timeout,
        };
        dial(&key, &cert, tls::KeyExchange::default(), timeouts, tcp).await
    }
}

/// The endpoints' side: the balancer, the HBONE pool (to each node proxy's port 15008), the
/// waypoint's identity.
pub struct Upstreams {
    /// Least-request counts over every endpoint.
    pub balancer: Arc<LeastRequest>,
    /// Each DestinationRule'd destination's load balancer, limits and outlier detection.
    pub resilience: Destinations<DestinationKey>,
    /// Mirrored requests in flight (at most [`crate::route::MIRRORS_IN_FLIGHT`]).
    pub mirrors: Arc<tokio::sync::Semaphore>,
    /// DestinationRule subsets' endpoints, per snapshot.
    pub subsets: crate::route::subsets::SubsetCache,
    pool: Arc<Pool<WaypointConnector>>,
    certs: Arc<CertificateManager>,
    identity: SpiffeId,
    trust_domain: TrustDomain,
    connect_timeout: Duration,
}

impl Upstreams {
    /// The upstream side of a waypoint with `identity`, its certificates from `certs`.
    pub fn new(
        certs: Arc<CertificateManager>,
        identity: SpiffeId,
        trust_domain: TrustDomain,
        connect_timeout: Duration,
        handshake_timeout: Duration,
        dial_map: Option<DialMap>,
        resilience: ResilienceMetrics,
    ) -> Self {
        let connector = Arc::new(WaypointConnector {
            connect_timeout,
            handshake_timeout,
            dial_map,
        });
        let pool = Pool::new(connector, PoolSettings::default());
        tokio::spawn(pool.clone().run_reaper());
        Self {
            balancer: Arc::new(LeastRequest::default()),
            mirrors: Arc::new(tokio::sync::Semaphore::new(crate::route::MIRRORS_IN_FLIGHT)),
            subsets: crate::route::subsets::SubsetCache::default(),
            resilience: Destinations::new(resilience),
            pool,
            certs,
            identity,
            trust_domain,
            connect_timeout,
        }
    }

    /// HBONE connections open to node proxies.
    pub fn connections(&self) -> usize {
        self.pool.connections()
    }

    /// Opens a tunnel to `endpoint` (a pod ip:port) for `client`'s traffic to `service_host`.
    pub async fn tunnel(
        &self,
        snap: &Snapshot,
        endpoint: SocketAddr,
        client: &OriginalClient,
        service_host: Option<String>,
    ) -> Result<PooledStream, UpstreamError> {
        let workload = snap
            .workload_by_ip(endpoint.ip())
            .ok_or(UpstreamError::UnknownWorkload(endpoint))?;
        let server = SpiffeId::new(
            &self.trust_domain,
            &workload.namespace,
            &workload.service_account,
        )
        .map_err(|e| UpstreamError::Identity {
            endpoint,
            reason: e.to_string(),
        })?;
        let cert = self
            .certs
            .get(&self.identity)
            .await
            .map_err(UpstreamError::Certificate)?;
        let epoch = cert
            .not_after()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let key = PoolKey {
            source: self.identity.clone(),
            destination: SocketAddr::new(endpoint.ip(), HBONE_PORT),
            server,
            certificate_epoch: epoch,
        };
        let request = ConnectRequest {
            authority: endpoint,
            forwarded: Forwarded {
                for_addr: Some(client.addr),
                host: service_host,
            },
            baggage: client.baggage.clone(),
            traceparent: client.traceparent.unwrap_or_else(TraceParent::random),
        };
        tokio::time::timeout(
            self.connect_timeout,
            self.pool.tunnel(&key, &cert, &request),
        )
        .await
        .map_err(|_| UpstreamError::Timeout(endpoint))?
        .map_err(|source| UpstreamError::Tunnel { endpoint, source })
    }
}
