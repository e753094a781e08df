use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::traffic::HashKey;

fn eps(n: u8) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
        .collect()
}

fn counts(b: &Balancer, all: &[SocketAddr], picks: usize) -> HashMap<SocketAddr, usize> {
    let mut counts = HashMap::new();
    for _ in 0..picks {
        *counts
            .entry(b.pick(all, None, |_| true).unwrap())
            .or_default() += 1;
    }
    counts
}

#[test]
fn round_robin_cycles_and_skips_the_unusable() {
    let all = eps(3);
    let b = Balancer::new(Some(&LoadBalancer::RoundRobin));
    let picks: Vec<_> = (0..6)
        .map(|_| b.pick(&all, None, |_| true).unwrap())
        .collect();
    assert_eq!(picks, [all.clone(), all.clone()].concat());
    let b = Balancer::new(None);
    for _ in 0..6 {
        assert_ne!(b.pick(&all, None, |e| e != all[1]), Some(all[1]));
    }
    assert_eq!(b.pick(&all, None, |_| false), None);
    // A retry's pick does not take the next one's turn.
    let b = Balancer::new(None);
    assert_eq!(b.pick(&all, None, |_| true), Some(all[0]));
    assert_eq!(b.pick_again(&all, None, |e| e != all[1]), Some(all[2]));
    assert_eq!(b.pick(&all, None, |_| true), Some(all[1]));
    assert_eq!(b.pick(&[], None, |_| true), None);
}

#[test]
fn random_spreads_evenly() {
    let all = eps(4);
    let b = Balancer::new(Some(&LoadBalancer::Random)).with_seed(7);
    let counts = counts(&b, &all, 40_000);
    // 10,000 each expected; σ ≈ 87: within ±5σ.
    for e in &all {
        let c = counts[e] as i64;
        assert!((c - 10_000).abs() < 435, "{e}: {c}");
    }
}

#[test]
fn least_request_prefers_the_idle_endpoint() {
    let all = eps(2);
    let b = Arc::new(Balancer::new(Some(&LoadBalancer::LeastRequest)).with_seed(3));
    let _busy: Vec<_> = (0..10).map(|_| b.begin(all[0])).collect();
    let first = counts(&b, &all, 1000);
    // Two draws: the busy one wins only when both draws land on it (~1/4).
    let busy = first.get(&all[0]).copied().unwrap_or(0);
    assert!((150..350).contains(&busy), "busy picked {busy} times");
    drop(_busy);
    let _other: Vec<_> = (0..10).map(|_| b.begin(all[1])).collect();
    let again = counts(&b, &all, 1000);
    assert!(again.get(&all[1]).copied().unwrap_or(0) < 350);
}

#[test]
fn consistent_hash_is_sticky_and_moves_only_the_removed_keys() {
    let all = eps(5);
    let b = Balancer::new(Some(&LoadBalancer::ConsistentHash(HashKey::SourceIp)));
    let keys: Vec<String> = (0..2000).map(|i| format!("user-{i}")).collect();
    let before: Vec<_> = keys
        .iter()
        .map(|k| b.pick(&all, Some(k.as_bytes()), |_| true).unwrap())
        .collect();
    // Sticky: the same key, the same endpoint.
    for (k, e) in keys.iter().zip(&before) {
        assert_eq!(b.pick(&all, Some(k.as_bytes()), |_| true), Some(*e));
    }
    // Spread: each endpoint holds a fair share (400 expected).
    let mut share: HashMap<SocketAddr, usize> = HashMap::new();
    for e in &before {
        *share.entry(*e).or_default() += 1;
    }
    for e in &all {
        assert!((200..650).contains(&share[e]), "{e}: {}", share[e]);
    }
    // Removing an endpoint (or ejecting it) moves only its keys.
    let gone = all[2];
    let fewer: Vec<_> = all.iter().copied().filter(|e| *e != gone).collect();
    for (k, e) in keys.iter().zip(&before) {
        let after = b.pick(&fewer, Some(k.as_bytes()), |_| true).unwrap();
        let skipped = b.pick(&all, Some(k.as_bytes()), |x| x != gone).unwrap();
        if *e != gone {
            assert_eq!(after, *e, "key {k} moved");
            assert_eq!(skipped, *e, "key {k} moved when {gone} was skipped");
        } else {
            assert_ne!(after, gone);
        }
    }
    // No key: a random pick, still one of the usable.
    assert!(b.pick(&all, None, |e| e == all[0]) == Some(all[0]));
}
