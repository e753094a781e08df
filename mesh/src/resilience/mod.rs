//! Per-endpoint resilience, shared by the node proxy (L4) and the waypoint (L7): outlier
//! detection ([`OutlierDetector`]), connection-pool limits ([`Limits`], Envoy's circuit
//! breakers), load-balancer policies ([`Balancer`]), and the metrics they feed
//! ([`ResilienceMetrics`]). Reads the DestinationRule model of [`crate::traffic`]; knows
//! nothing of the state store or of sockets.
//!
//! [`Destinations`] holds one [`Destination`] (detector, limits, balancer) per destination
//! key — the node proxy keys by Service VIP and port, the waypoint by (Service, subset, port)
//! — rebuilt only when the resolved policy changes, so counters and ejections survive state
//! updates that leave the policy alone.
//!
//! Invariants: a [`LimitGuard`] always gives back what it took; an endpoint is ejected only
//! while the share of the destination's endpoints already out is below `maxEjectionPercent`.

mod balance;
mod limits;
mod metrics;
mod outlier;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

pub use balance::{Balancer, InFlight, MIN_RING_SIZE, hash_bytes};
pub use limits::{LimitGuard, Limits, Resource, UNLIMITED};
pub use metrics::{EjectedLabels, EjectionLabels, ResilienceMetrics};
pub use outlier::{
    DEFAULT_CONSECUTIVE_5XX, DEFAULT_MAX_EJECTION_TIME, Ejection, EjectionReason, Outcome,
    OutlierDetector,
};

use crate::traffic::TrafficPolicy;

/// Why a destination refused a connection or request.
#[derive(Debug, thiserror::Error)]
pub enum ResilienceError {
    /// A circuit breaker is open: the resource is at its limit (Envoy's `UO`).
    #[error("circuit breaker open: {resource} at its limit of {limit}")]
    Overflow {
        /// What is at its limit.
        resource: Resource,
        /// The limit.
        limit: u32,
    },
}

/// The resilience state of one destination.
#[derive(Debug)]
pub struct Destination {
    /// The policy it was built from.
    policy: TrafficPolicy,
    /// The snapshot generation it was last checked against.
    generation: AtomicU64,
    /// `destination_service` of its metrics.
    service: Arc<str>,
    /// Outlier detection, when the policy has it.
    pub outlier: Option<OutlierDetector>,
    /// Connection-pool limits.
    pub limits: Arc<Limits>,
    /// The load balancer.
    pub balancer: Arc<Balancer>,
    metrics: ResilienceMetrics,
}

impl Destination {
    /// A destination with `policy`, labelled `service` (Istio's `destination_service` host).
    pub fn new(policy: TrafficPolicy, service: &str, metrics: ResilienceMetrics) -> Self {
        Self {
            outlier: policy.outlier_detection.as_ref().map(OutlierDetector::new),
            limits: Limits::new(policy.connection_pool.as_ref()),
            balancer: Arc::new(Balancer::new(policy.load_balancer.as_ref())),
            policy,
            generation: AtomicU64::new(0),
            service: Arc::from(service),
            metrics,
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> &TrafficPolicy {
        &self.policy
    }

    /// Whether the pick may use `endpoint` of `endpoints` now (not ejected, or the pool is in
    /// panic).
    pub fn usable(&self, endpoints: &[SocketAddr], endpoint: SocketAddr, now: Instant) -> bool {
        self.outlier
            .as_ref()
            .is_none_or(|o| o.usable(endpoints, endpoint, now))
    }

    /// Picks a usable endpoint of `endpoints` with the balancer, skipping ejected ones and
    /// any in `avoid` (an endpoint that just failed); `key` for a consistent hash.
    pub fn pick(
        &self,
        endpoints: &[SocketAddr],
        key: Option<&[u8]>,
        avoid: Option<SocketAddr>,
        now: Instant,
    ) -> Option<SocketAddr> {
        let panic = self
            .outlier
            .as_ref()
            .is_some_and(|o| o.panicking(endpoints, now));
        let usable = |e| {
            Some(e) != avoid
                && (panic || self.outlier.as_ref().is_none_or(|o| !o.is_ejected(e, now)))
        };
        match avoid {
            None => self.balancer.pick(endpoints, key, usable),
            Some(_) => self.balancer.pick_again(endpoints, key, usable),
        }
    }

    /// Reports a try at `endpoint` (one of `endpoints`) to the outlier detector, counting an
    /// ejection in the metrics.
    pub fn report(
        &self,
        endpoints: &[SocketAddr],
        endpoint: SocketAddr,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Ejection> {
        let ejection = self
            .outlier
            .as_ref()?
            .report(endpoints, endpoint, outcome, now)?;
        tracing::info!(
            destination_service = &*self.service,
            %endpoint,
            reason = ejection.reason.as_str(),
            ejection_ms = ejection.duration.as_millis() as u64,
            "endpoint ejected"
        );
        self.metrics
            .ejected(&self.service, endpoint, ejection.reason);
        Some(ejection)
    }

    /// Returns to service the endpoints whose time is up, setting their gauge to 0.
    pub fn sweep(&self, now: Instant) {
        let Some(outlier) = &self.outlier else {
            return;
        };
        for endpoint in outlier.sweep(now) {
            tracing::info!(destination_service = &*self.service, %endpoint, "endpoint back in service");
            self.metrics.returned(&self.service, endpoint);
        }
    }
}

/// The [`Destination`]s of a program, by key.
#[derive(Debug)]
pub struct Destinations<K> {
    map: Mutex<HashMap<K, Arc<Destination>>>,
    metrics: ResilienceMetrics,
}

impl<K: Hash + Eq + Clone> Destinations<K> {
    /// None yet; ejections are counted in `metrics`.
    pub fn new(metrics: ResilienceMetrics) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Arc<Destination>>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The destination `key` as of snapshot `generation`: the one held when it was checked
    /// at this generation already (one lookup, no allocation); else `resolve` gives the
    /// policy and the service label, and the one held is kept if its policy is the same (its
    /// ejections and counters with it), else replaced.
    pub fn get(
        &self,
        key: &K,
        generation: u64,
        resolve: impl FnOnce() -> (TrafficPolicy, String),
    ) -> Arc<Destination> {
        let mut map = self.lock();
        if let Some(held) = map.get(key) {
            if held.generation.load(Ordering::Acquire) == generation {
                return Arc::clone(held);
            }
            let (policy, _) = resolve();
            if held.policy == policy {
                held.generation.store(generation, Ordering::Release);
                return Arc::clone(held);
            }
            let service = held.service.to_string();
            return self.replace(&mut map, key, policy, &service, generation);
        }
        let (policy, service) = resolve();
        self.replace(&mut map, key, policy, &service, generation)
    }

    fn replace(
        &self,
        map: &mut HashMap<K, Arc<Destination>>,
        key: &K,
        policy: TrafficPolicy,
        service: &str,
        generation: u64,
    ) -> Arc<Destination> {
        let destination = Arc::new(Destination::new(policy, service, self.metrics.clone()));
        destination.generation.store(generation, Ordering::Release);
        if let Some(old) = map.insert(key.clone(), Arc::clone(&destination))
            && let Some(outlier) = &old.outlier
        {
            // Its ejections end with it: the gauges must not show them.
            for endpoint in outlier.sweep(Instant::now() + DEFAULT_MAX_EJECTION_TIME * 2) {
                self.metrics.returned(&old.service, endpoint);
            }
        }
        destination
    }

    /// Forgets destinations not checked since `generation` (their policy went away).
    pub fn retain_since(&self, generation: u64) {
        self.lock()
            .retain(|_, d| d.generation.load(Ordering::Acquire) >= generation);
    }

    /// Sweeps every destination's outlier detector at `now` (run every second or so: the
    /// shortest sensible `interval`).
    pub fn sweep(&self, now: Instant) {
        let held: Vec<Arc<Destination>> = self.lock().values().cloned().collect();
        for destination in held {
            destination.sweep(now);
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &ResilienceMetrics {
        &self.metrics
    }
}

#[cfg(test)]
mod tests;
