//! Connection-pool limits: Envoy's cluster circuit breakers as Istio maps a DestinationRule's
//! `connectionPool` (istio/istio `pilot/pkg/networking/core/cluster_traffic_policy.go`,
//! `applyConnectionPool`): `tcp.maxConnections` → `max_connections`,
//! `http.http1MaxPendingRequests` → `max_pending_requests`, `http.http2MaxRequests` →
//! `max_requests`, `http.maxRetries` → `max_retries`. A field left unset is Envoy's
//! "unlimited", 2^32 − 1, which istiod writes explicitly for every cluster
//! (`getDefaultCircuitBreakerThresholds`) — not Envoy's own defaults of 1024 (3 retries).
//!
//! A counter per resource; [`Limits::try_acquire`] takes one unit or says the limit is
//! reached (Envoy's `canCreate`: below the limit), and the [`LimitGuard`] gives it back when
//! dropped. Over the limit the caller refuses at once with Envoy's `UO` flag (upstream
//! overflow): a reset at L4, a 503 at L7.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use super::ResilienceError;
use crate::traffic::ConnectionPool;

/// What a circuit breaker counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    /// Open connections to the destination (`tcp.maxConnections`).
    Connections,
    /// Requests waiting for a connection (`http.http1MaxPendingRequests`).
    PendingRequests,
    /// Requests in flight (`http.http2MaxRequests`).
    Requests,
    /// Retries in flight (`http.maxRetries`).
    Retries,
}

impl Resource {
    const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::PendingRequests,
        Resource::Requests,
        Resource::Retries,
    ];

    fn index(self) -> usize {
        match self {
            Resource::Connections => 0,
            Resource::PendingRequests => 1,
            Resource::Requests => 2,
            Resource::Retries => 3,
        }
    }

    /// The DestinationRule field that sets it.
    pub fn field(self) -> &'static str {
        match self {
            Resource::Connections => "connectionPool.tcp.maxConnections",
            Resource::PendingRequests => "connectionPool.http.http1MaxPendingRequests",
            Resource::Requests => "connectionPool.http.http2MaxRequests",
            Resource::Retries => "connectionPool.http.maxRetries",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// Envoy's "unlimited", what istiod sets for a limit left unset.
pub const UNLIMITED: u32 = u32::MAX;

/// The circuit breakers of one destination.
#[derive(Debug)]
pub struct Limits {
    max: [u32; 4],
    active: [AtomicU32; 4],
}

impl Limits {
    /// The limits of `pool` (`None`: every one unlimited).
    pub fn new(pool: Option<&ConnectionPool>) -> Arc<Self> {
        let pool = pool.cloned().unwrap_or_default();
        let max = [
            pool.max_connections,
            pool.http1_max_pending_requests,
            pool.http2_max_requests,
            pool.max_retries,
        ]
        .map(|limit| limit.unwrap_or(UNLIMITED));
        Arc::new(Self {
            max,
            active: std::array::from_fn(|_| AtomicU32::new(0)),
        })
    }

    /// The limit on `resource`.
    pub fn max(&self, resource: Resource) -> u32 {
        self.max[resource.index()]
    }

    /// How many of `resource` are held now.
    pub fn active(&self, resource: Resource) -> u32 {
        self.active[resource.index()].load(Ordering::Acquire)
    }

    /// Takes one `resource`, or [`ResilienceError::Overflow`] when it is at its limit.
    pub fn try_acquire(
        self: &Arc<Self>,
        resource: Resource,
    ) -> Result<LimitGuard, ResilienceError> {
        let max = self.max(resource);
        self.active[resource.index()]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| ResilienceError::Overflow {
                resource,
                limit: max,
            })?;
        Ok(LimitGuard {
            limits: Arc::clone(self),
            resource,
        })
    }

    /// Whether every limit is unlimited (nothing to count).
    pub fn is_unlimited(&self) -> bool {
        Resource::ALL.iter().all(|r| self.max(*r) == UNLIMITED)
    }
}

/// One unit of a resource, given back when dropped.
#[derive(Debug)]
pub struct LimitGuard {
    limits: Arc<Limits>,
    resource: Resource,
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        self.limits.active[self.resource.index()].fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_limit_overflows_and_a_guard_gives_back() {
        let limits = Limits::new(Some(&ConnectionPool {
            max_connections: Some(2),
            ..ConnectionPool::default()
        }));
        let a = limits.try_acquire(Resource::Connections).unwrap();
        let _b = limits.try_acquire(Resource::Connections).unwrap();
        let err = limits.try_acquire(Resource::Connections).unwrap_err();
        assert!(matches!(
            err,
            ResilienceError::Overflow {
                resource: Resource::Connections,
                limit: 2
            }
        ));
        assert!(
            err.to_string()
                .contains("connectionPool.tcp.maxConnections")
        );
        assert_eq!(limits.active(Resource::Connections), 2);
        drop(a);
        assert_eq!(limits.active(Resource::Connections), 1);
        assert!(limits.try_acquire(Resource::Connections).is_ok());
        // Other resources are counted apart, and unset ones are unlimited.
        assert_eq!(limits.max(Resource::Requests), UNLIMITED);
        let _r = limits.try_acquire(Resource::Requests).unwrap();
        assert!(!limits.is_unlimited());
    }

    #[test]
    fn unset_pool_is_unlimited() {
        let limits = Limits::new(None);
        assert!(limits.is_unlimited());
        let guards: Vec<_> = (0..1000)
            .map(|_| limits.try_acquire(Resource::Retries).unwrap())
            .collect();
        assert_eq!(limits.active(Resource::Retries), 1000);
        drop(guards);
        assert_eq!(limits.active(Resource::Retries), 0);
    }

    #[test]
    fn zero_refuses_everything() {
        let limits = Limits::new(Some(&ConnectionPool {
            max_retries: Some(0),
            ..ConnectionPool::default()
        }));
        assert!(limits.try_acquire(Resource::Retries).is_err());
    }
}
