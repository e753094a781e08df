//! Load-balancer policies of a DestinationRule's `loadBalancer`, over a destination's ready
//! endpoints, skipping those the caller says are unusable (ejected):
//! - `ROUND_ROBIN`: a cursor;
//! - `RANDOM`: a uniform draw;
//! - `LEAST_REQUEST`: Envoy's power of two choices (two random draws, the one with fewer
//!   requests in flight; the first on a tie), counting requests with [`Balancer::begin`];
//! - `consistentHash`: a ring hash (Envoy's `ring_hash`: each endpoint hashed onto the ring
//!   `ceil(1024 / n)` times — rounded up to a power of two here so removing one moves only its keys — a key goes to the first point at or after its own hash, walking on
//!   past unusable endpoints). Istio's default for `consistentHash` without `maglev` is
//!   `RING_HASH` with `minimumRingSize` 1024 (istio/istio
//!   `pilot/pkg/networking/core/cluster_traffic_policy.go`, `applyLoadBalancer`; istio/api
//!   `networking/v1alpha3/destination_rule.proto`). A pick without a key (the header is
//!   absent) is random, as Envoy's ring hash does with no hash. Removing an endpoint moves only
//!   the keys that were on it.
//!
//! The caller extracts the key (a header's value, a cookie, the source IP, a query parameter)
//! and passes its bytes. Picking allocates nothing; the ring is rebuilt only when the
//! endpoint set changes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use arc_swap::ArcSwapOption;

use crate::traffic::LoadBalancer;

/// Istio's default `minimumRingSize`.
pub const MIN_RING_SIZE: usize = 1024;
/// Slots of the least-request counters (an endpoint's slot is a hash of its address).
const LEAST_REQUEST_SLOTS: usize = 256;

/// Which policy a [`Balancer`] applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Policy {
    RoundRobin,
    Random,
    LeastRequest,
    RingHash,
}

/// One destination's balancer.
#[derive(Debug)]
pub struct Balancer {
    policy: Policy,
    cursor: AtomicUsize,
    rng: AtomicU64,
    /// Requests in flight per slot (`LEAST_REQUEST` only; empty otherwise).
    active: Box<[AtomicUsize]>,
    ring: ArcSwapOption<Ring>,
}

impl Balancer {
    /// A balancer for `policy` (`None`: round robin, the node proxy's and Istio's ambient
    /// default at L4; the waypoint keeps its own least-request default).
    pub fn new(policy: Option<&LoadBalancer>) -> Self {
        let policy = match policy {
            None | Some(LoadBalancer::RoundRobin) => Policy::RoundRobin,
            Some(LoadBalancer::Random) => Policy::Random,
            Some(LoadBalancer::LeastRequest) => Policy::LeastRequest,
            Some(LoadBalancer::ConsistentHash(_)) => Policy::RingHash,
        };
        let active = if policy == Policy::LeastRequest {
            (0..LEAST_REQUEST_SLOTS)
                .map(|_| AtomicUsize::new(0))
                .collect()
        } else {
            Box::default()
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Self {
            policy,
            cursor: AtomicUsize::new(0),
            rng: AtomicU64::new(seed),
            active,
            ring: ArcSwapOption::empty(),
        }
    }

    /// Fixes the random source (tests).
    pub fn with_seed(self, seed: u64) -> Self {
        self.rng.store(seed, Ordering::Relaxed);
        self
    }

    /// One usable endpoint of `endpoints`; `key` is the consistent hash's key, when the
    /// request has one. `None` when no endpoint is usable.
    pub fn pick(
        &self,
        endpoints: &[SocketAddr],
        key: Option<&[u8]>,
        usable: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        if endpoints.is_empty() {
            return None;
        }
        match (self.policy, key) {
            (Policy::RoundRobin, _) => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                probe(endpoints, start, &usable)
            }
            (Policy::Random, _) | (Policy::RingHash, None) => {
                probe(endpoints, self.next() as usize, &usable)
            }
            (Policy::LeastRequest, _) => self.least_request(endpoints, &usable),
            (Policy::RingHash, Some(key)) => self.ring(endpoints).pick(hash_bytes(key), &usable),
        }
    }

    /// As [`Balancer::pick`] for a retry's second pick: round robin reads its cursor without
    /// moving it, so the retry does not take the next connection's turn (after one failure
    /// every connection would otherwise try the failing endpoint first).
    pub fn pick_again(
        &self,
        endpoints: &[SocketAddr],
        key: Option<&[u8]>,
        usable: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        if self.policy == Policy::RoundRobin {
            return probe(endpoints, self.cursor.load(Ordering::Relaxed), &usable);
        }
        self.pick(endpoints, key, usable)
    }

    /// Counts a request to `endpoint` in flight until the guard drops (`LEAST_REQUEST`; a
    /// no-op for the other policies).
    pub fn begin(self: &Arc<Self>, endpoint: SocketAddr) -> InFlight {
        let slot = (!self.active.is_empty()).then(|| {
            let slot = slot_of(endpoint);
            self.active[slot].fetch_add(1, Ordering::Relaxed);
            slot
        });
        InFlight {
            balancer: Arc::clone(self),
            slot,
        }
    }

    fn least_request(
        &self,
        endpoints: &[SocketAddr],
        usable: &impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        let mut best: Option<(SocketAddr, usize)> = None;
        for _ in 0..2 {
            let candidate = probe(endpoints, self.next() as usize, usable)?;
            let load = self.active[slot_of(candidate)].load(Ordering::Relaxed);
            if best.is_none_or(|(_, least)| load < least) {
                best = Some((candidate, load));
            }
        }
        best.map(|(endpoint, _)| endpoint)
    }

    /// The ring over `endpoints`, rebuilt when they changed.
    fn ring(&self, endpoints: &[SocketAddr]) -> Arc<Ring> {
        if let Some(ring) = self.ring.load_full()
            && ring.endpoints == endpoints
        {
            return ring;
        }
        let ring = Arc::new(Ring::new(endpoints, MIN_RING_SIZE));
        self.ring.store(Some(Arc::clone(&ring)));
        ring
    }

    /// The next draw of a splitmix64 sequence.
    fn next(&self) -> u64 {
        let x = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(x)
    }
}

/// A request in flight, counted for `LEAST_REQUEST` until dropped.
#[derive(Debug)]
pub struct InFlight {
    balancer: Arc<Balancer>,
    slot: Option<usize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            self.balancer.active[slot].fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The first usable endpoint from `start` on, wrapping around.
fn probe(
    endpoints: &[SocketAddr],
    start: usize,
    usable: &impl Fn(SocketAddr) -> bool,
) -> Option<SocketAddr> {
    let n = endpoints.len();
    (0..n)
        .map(|i| endpoints[(start.wrapping_add(i)) % n])
        .find(|e| usable(*e))
}

/// A hash ring over a set of endpoints.
#[derive(Debug)]
struct Ring {
    endpoints: Vec<SocketAddr>,
    /// (point, index into `endpoints`), sorted by point.
    points: Vec<(u64, usize)>,
}

impl Ring {
    fn new(endpoints: &[SocketAddr], min_size: usize) -> Self {
        // Envoy gives each endpoint ceil(min / n) points; rounded up to a power of two here,
        // so one endpoint more or less seldom changes the others' points and only its own keys
        // move (with Envoy's count, 5 → 4 endpoints adds points to every survivor, which
        // takes keys from its neighbours too).
        let per_endpoint = min_size
            .div_ceil(endpoints.len().max(1))
            .max(1)
            .next_power_of_two();
        let mut points = Vec::with_capacity(per_endpoint * endpoints.len());
        for (index, endpoint) in endpoints.iter().enumerate() {
            // Envoy hashes "<address>_<i>" for each of a host's points.
            let address = endpoint.to_string();
            for i in 0..per_endpoint {
                let mut name = address.clone();
                name.push('_');
                name.push_str(&i.to_string());
                points.push((hash_bytes(name.as_bytes()), index));
            }
        }
        points.sort_unstable();
        Self {
            endpoints: endpoints.to_vec(),
            points,
        }
    }

    /// The first usable endpoint at or after `hash` on the ring.
    fn pick(&self, hash: u64, usable: &impl Fn(SocketAddr) -> bool) -> Option<SocketAddr> {
        let start = self.points.partition_point(|(point, _)| *point < hash);
        let n = self.points.len();
        (0..n)
            .map(|i| self.endpoints[self.points[(start + i) % n].1])
            .find(|e| usable(*e))
    }
}

/// A stable 64-bit hash of `bytes` (FNV-1a, then splitmix64's finalizer to spread it), the
/// same in every process: a key keeps its endpoint across restarts and between proxies.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    mix(hash)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn slot_of(endpoint: SocketAddr) -> usize {
    let bytes = match endpoint.ip() {
        std::net::IpAddr::V4(ip) => u64::from(ip.to_bits()),
        std::net::IpAddr::V6(ip) => ip.to_bits() as u64,
    };
    (mix(bytes ^ u64::from(endpoint.port())) as usize) % LEAST_REQUEST_SLOTS
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
