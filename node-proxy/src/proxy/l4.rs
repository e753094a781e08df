//! Traffic management at L4, for connections to a Service without a waypoint (marrow's
//! addition: ztunnel has none of it): the Service's DestinationRule chooses the endpoint (its
//! load balancer, ejected endpoints skipped), limits the connections this node opens to it
//! (`connectionPool.tcp.maxConnections`, over it refused at once with `UO`), bounds the connect
//! (`connectionPool.tcp.connectTimeout`), and hears how each connect went (outlier
//! detection on connect failures). A failed connect to a Service endpoint is retried once on
//! another ready endpoint; a pod-addressed connection never is.
//!
//! The policy is resolved once per Service port and snapshot generation
//! ([`Destinations::get`]); a Service without a DestinationRule takes none of this path but the
//! one hash lookup that finds none.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use marrow_mesh::hbone::{HboneError, TransportFailure};
use marrow_mesh::resilience::{Destination, Destinations, InFlight, LimitGuard, Outcome};
use marrow_mesh::state::services::ServiceTarget;
use marrow_mesh::state::{EndpointChooser, EndpointPicker, Snapshot};
use marrow_mesh::traffic::{HashKey, LoadBalancer};
use tokio::time::Instant;

/// The node proxy's endpoint choice: the DestinationRule's, else the round-robin.
pub struct Chooser<'a> {
    /// Every Service's DestinationRule state.
    pub destinations: &'a Destinations<SocketAddr>,
    /// The round-robin cursors, for Services without a DestinationRule.
    pub picker: &'a EndpointPicker,
    /// The client pod's address: the key of `consistentHash.useSourceIp`.
    pub source_ip: IpAddr,
}

impl EndpointChooser for Chooser<'_> {
    fn choose(
        &self,
        snap: &Snapshot,
        target: &Arc<ServiceTarget>,
        avoid: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        let Some(destination) = destination(self.destinations, snap, target) else {
            return self.picker.choose(snap, target, avoid);
        };
        let ip_bytes;
        let key = match destination.policy().load_balancer {
            Some(LoadBalancer::ConsistentHash(HashKey::SourceIp)) => {
                ip_bytes = ip_key(self.source_ip);
                Some(&ip_bytes[..])
            }
            // Headers, cookies and query parameters are L7: at L4 the pick has no key, and
            // Envoy's ring hash picks at random without one.
            _ => None,
        };
        destination.pick(&target.endpoints, key, avoid, Instant::now())
    }
}

/// The address as 16 bytes (IPv4 mapped), the consistent hash's key.
fn ip_key(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The DestinationRule state of the Service port `target`, if a DestinationRule applies to it.
pub fn destination(
    destinations: &Destinations<SocketAddr>,
    snap: &Snapshot,
    target: &ServiceTarget,
) -> Option<Arc<Destination>> {
    let policy = snap.traffic().destination_policy(&target.service)?;
    Some(destinations.get(&target.vip, snap.generation(), || {
        (policy.resolve(target.vip.port(), None), target.host())
    }))
}

/// A connection to a Service endpoint: what a retry and the outlier detector need.
pub struct ServiceTry {
    /// The Service port whose endpoint was chosen.
    pub backend: Arc<ServiceTarget>,
    /// The endpoint, `pod ip:port`.
    pub endpoint: SocketAddr,
    /// Its DestinationRule state, if one applies.
    pub destination: Option<Arc<Destination>>,
    /// The TCPRoute draw, so a retry stays on the same backend Service.
    pub draw: u64,
    /// Whether this is the retry (no further one).
    pub retried: bool,
    /// One of the destination's `maxConnections`, held while the connection lives.
    pub slot: Option<LimitGuard>,
    /// The connection counted against its endpoint for `LEAST_REQUEST` while it lives: at
    /// L4 the least-loaded endpoint is the one with the fewest open connections from here.
    pub in_flight: Option<InFlight>,
}

impl ServiceTry {
    /// The per-destination connect timeout (`connectionPool.tcp.connectTimeout`), if set.
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.destination
            .as_ref()?
            .policy()
            .connection_pool
            .as_ref()?
            .connect_timeout
    }

    /// Tells the outlier detector how the connect went.
    pub fn report(&self, outcome: Outcome) {
        if let Some(destination) = &self.destination {
            destination.report(
                &self.backend.endpoints,
                self.endpoint,
                outcome,
                Instant::now(),
            );
        }
    }
}

/// Whether a tunnel failure is a failed connect to the endpoint, which is retried elsewhere
/// and counted by outlier detection (Envoy's connect failure, and a 5xx refusal of the
/// CONNECT: the endpoint's proxy could not reach the app): not this side's certificate or TLS
/// configuration, nor a policy denial (401), which another endpoint would answer alike.
pub fn is_connect_failure(error: &HboneError) -> bool {
    match error {
        HboneError::Transport { failure, .. } => !matches!(
            failure,
            TransportFailure::Certificate | TransportFailure::TlsConfig
        ),
        HboneError::H2(_) => true,
        HboneError::Refused(status) => status.is_server_error(),
        HboneError::Http(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_failures_are_retried_and_denials_are_not() {
        let transport = |failure| HboneError::Transport {
            failure,
            step: "step".into(),
            source: std::io::ErrorKind::Other.into(),
        };
        let cases = [
            (transport(TransportFailure::Connect), true),
            (transport(TransportFailure::ConnectTimeout), true),
            (transport(TransportFailure::Tls), true),
            (transport(TransportFailure::HandshakeTimeout), true),
            (transport(TransportFailure::Identity), true),
            (transport(TransportFailure::Certificate), false),
            (transport(TransportFailure::TlsConfig), false),
            (
                HboneError::Refused(http::StatusCode::SERVICE_UNAVAILABLE),
                true,
            ),
            (HboneError::Refused(http::StatusCode::UNAUTHORIZED), false),
            (HboneError::H2(h2::Reason::REFUSED_STREAM.into()), true),
        ];
        for (error, retried) in cases {
            assert_eq!(is_connect_failure(&error), retried, "{error}");
        }
    }

    #[test]
    fn source_ip_keys_are_the_same_for_both_families() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(ip_key(v4), ip_key(mapped));
        assert_ne!(ip_key(v4), ip_key("10.0.0.2".parse().unwrap()));
    }
}
