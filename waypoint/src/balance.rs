//! Least-request endpoint choice, as Envoy's default LEAST_REQUEST policy with equal weights
//! (envoy `source/extensions/load_balancing_policies/least_request/least_request_lb.{h,cc}`):
//! draw `choice_count` = 2 endpoints at random (with replacement) and take the one with fewer
//! active requests, the first drawn on a tie ("power of two choices").
//!
//! Active requests are counted in a fixed table of atomics indexed by a hash of the endpoint
//! address: picking takes no lock and allocates nothing. Two endpoints that share a slot share
//! a count, which only makes the choice a little less informed.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Count slots (32 KiB of counters for any number of endpoints).
const SLOTS: usize = 4096;
/// Envoy's default `choice_count`.
const CHOICES: usize = 2;

/// The active-request counts and the random source of the picks.
#[derive(Debug)]
pub struct LeastRequest {
    active: Box<[AtomicUsize]>,
    rng: AtomicU64,
}

impl Default for LeastRequest {
    fn default() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x9e37_79b9_7f4a_7c15);
        Self::with_seed(seed)
    }
}

impl LeastRequest {
    /// A balancer whose random draws start from `seed` (tests fix it).
    pub fn with_seed(seed: u64) -> Self {
        Self {
            active: (0..SLOTS).map(|_| AtomicUsize::new(0)).collect(),
            rng: AtomicU64::new(seed),
        }
    }

    /// One endpoint of `endpoints` (`None` when empty).
    pub fn pick(&self, endpoints: &[SocketAddr]) -> Option<SocketAddr> {
        match endpoints {
            [] => None,
            [only] => Some(*only),
            _ => {
                let mut best: Option<(SocketAddr, usize)> = None;
                for _ in 0..CHOICES {
                    let candidate = endpoints[self.next() as usize % endpoints.len()];
                    let load = self.active[slot(candidate)].load(Ordering::Relaxed);
                    if best.is_none_or(|(_, least)| load < least) {
                        best = Some((candidate, load));
                    }
                }
                best.map(|(endpoint, _)| endpoint)
            }
        }
    }

    /// Counts a request active at `endpoint` until the guard drops.
    pub fn start(self: &Arc<Self>, endpoint: SocketAddr) -> ActiveRequest {
        let slot = slot(endpoint);
        self.active[slot].fetch_add(1, Ordering::Relaxed);
        ActiveRequest {
            balancer: self.clone(),
            slot,
        }
    }

    /// Requests active at `endpoint` (and any endpoint sharing its slot).
    pub fn active(&self, endpoint: SocketAddr) -> usize {
        self.active[slot(endpoint)].load(Ordering::Relaxed)
    }

    /// splitmix64 over an atomic counter: cheap, lock-free, good enough to spread picks.
    fn next(&self) -> u64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn slot(endpoint: SocketAddr) -> usize {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(endpoint) as usize % SLOTS
}

/// A request counted active at an endpoint.
#[derive(Debug)]
pub struct ActiveRequest {
    balancer: Arc<LeastRequest>,
    slot: usize,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.balancer.active[self.slot].fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(n: u8) -> Vec<SocketAddr> {
        (1..=n)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 8080)))
            .collect()
    }

    #[test]
    fn idle_endpoints_share_the_load() {
        let lb = Arc::new(LeastRequest::with_seed(7));
        let endpoints = addrs(3);
        let mut counts = [0usize; 3];
        for _ in 0..3000 {
            let pick = lb.pick(&endpoints).unwrap();
            counts[endpoints.iter().position(|e| *e == pick).unwrap()] += 1;
        }
        for count in counts {
            assert!((800..1200).contains(&count), "{counts:?}");
        }
    }

    #[test]
    fn a_busy_endpoint_gets_fewer_requests() {
        let lb = Arc::new(LeastRequest::with_seed(11));
        let endpoints = addrs(2);
        let _busy: Vec<ActiveRequest> = (0..5).map(|_| lb.start(endpoints[0])).collect();
        assert_eq!(lb.active(endpoints[0]), 5);
        let busy_picks = (0..2000)
            .filter(|_| lb.pick(&endpoints) == Some(endpoints[0]))
            .count();
        // Two draws with replacement both land on the busy one a quarter of the time.
        assert!((350..650).contains(&busy_picks), "{busy_picks}");
        drop(_busy);
        assert_eq!(lb.active(endpoints[0]), 0, "guards give their count back");
    }

    #[test]
    fn no_endpoints_no_pick_and_one_is_always_chosen() {
        let lb = LeastRequest::with_seed(1);
        assert_eq!(lb.pick(&[]), None);
        let one = addrs(1);
        assert_eq!(lb.pick(&one), Some(one[0]));
    }
}
