use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

fn policy(
    consecutive_5xx: Option<u32>,
    gateway: Option<u32>,
    max_percent: u32,
) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx,
        consecutive_gateway_errors: gateway,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: max_percent,
        min_health_percent: 0,
    }
}

fn eps(n: u8) -> Vec<SocketAddr> {
    (1..=n)
        .map(|i| SocketAddr::from(([10, 0, 0, i], 80)))
        .collect()
}

fn fail(
    d: &OutlierDetector,
    all: &[SocketAddr],
    e: SocketAddr,
    times: u32,
    now: Instant,
) -> Option<Ejection> {
    let mut last = None;
    for _ in 0..times {
        last = d.report(all, e, Outcome::ConnectFailure, now);
    }
    last
}

#[test]
fn ejects_at_the_threshold_and_not_below() {
    let all = eps(4);
    let d = OutlierDetector::new(&policy(Some(3), None, 100));
    let now = Instant::now();
    assert_eq!(fail(&d, &all, all[0], 2, now), None);
    assert!(!d.is_ejected(all[0], now));
    let ejection = d
        .report(&all, all[0], Outcome::ConnectFailure, now)
        .unwrap();
    assert_eq!(ejection.reason, EjectionReason::Consecutive5xx);
    assert_eq!(ejection.duration, Duration::from_secs(30));
    assert!(d.is_ejected(all[0], now));
    assert!(!d.is_ejected(all[1], now));
    assert_eq!(d.healthy(&all, now).collect::<Vec<_>>(), all[1..].to_vec());
}

#[test]
fn a_success_restarts_the_count() {
    let all = eps(2);
    let d = OutlierDetector::new(&policy(Some(3), None, 100));
    let now = Instant::now();
    fail(&d, &all, all[0], 2, now);
    assert_eq!(d.report(&all, all[0], Outcome::Success, now), None);
    assert_eq!(fail(&d, &all, all[0], 2, now), None);
    assert!(!d.is_ejected(all[0], now));
    assert!(fail(&d, &all, all[0], 1, now).is_some());
}

#[test]
fn gateway_errors_and_plain_5xx() {
    let all = eps(4);
    let now = Instant::now();
    // A 500 is a 5xx but not a gateway error: it restarts the gateway count.
    let d = OutlierDetector::new(&policy(Some(0), Some(2), 100));
    d.report(&all, all[0], Outcome::Status(502), now);
    d.report(&all, all[0], Outcome::Status(500), now);
    assert_eq!(d.report(&all, all[0], Outcome::Status(504), now), None);
    let e = d.report(&all, all[0], Outcome::Status(503), now).unwrap();
    assert_eq!(e.reason, EjectionReason::ConsecutiveGatewayError);
    // consecutive5xxErrors unset: Envoy's 5; gateway errors unset: off.
    let d = OutlierDetector::new(&policy(None, None, 100));
    for _ in 0..4 {
        assert_eq!(d.report(&all, all[1], Outcome::Status(500), now), None);
    }
    let e = d.report(&all, all[1], Outcome::Status(500), now).unwrap();
    assert_eq!(e.reason, EjectionReason::Consecutive5xx);
    // 4xx is no error.
    let d = OutlierDetector::new(&policy(Some(1), None, 100));
    assert_eq!(d.report(&all, all[2], Outcome::Status(404), now), None);
}

#[test]
fn max_ejection_percent_caps_the_ejected_share() {
    let all = eps(4);
    let now = Instant::now();
    // 50 % of 4: the first two go (0 % then 25 % already out, below 50), the third not.
    let d = OutlierDetector::new(&policy(Some(1), None, 50));
    assert!(fail(&d, &all, all[0], 1, now).is_some());
    assert!(fail(&d, &all, all[1], 1, now).is_some());
    assert_eq!(fail(&d, &all, all[2], 1, now), None);
    assert_eq!(d.ejected_among(&all, now), 2);
    // Envoy's rule counts those already out: with a cap of 10 % one endpoint may still go.
    let d = OutlierDetector::new(&policy(Some(1), None, 10));
    assert!(fail(&d, &all, all[0], 1, now).is_some());
    assert_eq!(fail(&d, &all, all[1], 1, now), None);
    // 0 % ejects nothing.
    let d = OutlierDetector::new(&policy(Some(1), None, 0));
    assert_eq!(fail(&d, &all, all[0], 1, now), None);
}

#[test]
fn back_after_base_time_times_ejections_then_decays() {
    let all = eps(2);
    let d = OutlierDetector::new(&policy(Some(1), None, 100));
    let t0 = Instant::now();
    let s = Duration::from_secs;
    assert_eq!(fail(&d, &all, all[0], 1, t0).unwrap().duration, s(30));
    assert!(d.is_ejected(all[0], t0 + s(29)));
    assert!(!d.is_ejected(all[0], t0 + s(30)));
    assert_eq!(d.sweep(t0 + s(30)), vec![all[0]]);
    // Failing again at once: the second ejection lasts twice as long.
    let t1 = t0 + s(31);
    assert_eq!(fail(&d, &all, all[0], 1, t1).unwrap().duration, s(60));
    assert!(d.is_ejected(all[0], t1 + s(59)));
    assert!(!d.is_ejected(all[0], t1 + s(60)));
    // Back at t1+60; two whole intervals in service take the backoff from 2 to 0, so the
    // next ejection is base × 1 again.
    let t2 = t1 + s(60) + s(20);
    assert_eq!(fail(&d, &all, all[0], 1, t2).unwrap().duration, s(30));
    // Failing within an interval of its return: no decay, the backoff goes 1 → 2.
    let t3 = t2 + s(30) + s(5);
    assert_eq!(fail(&d, &all, all[0], 1, t3).unwrap().duration, s(60));
}

#[test]
fn ejection_time_is_capped_at_300s() {
    let all = eps(2);
    let mut p = policy(Some(1), None, 100);
    p.base_ejection_time = Duration::from_secs(100);
    let d = OutlierDetector::new(&p);
    let mut now = Instant::now();
    let mut durations = Vec::new();
    for _ in 0..5 {
        let e = fail(&d, &all, all[0], 1, now).unwrap();
        durations.push(e.duration.as_secs());
        now += e.duration;
    }
    assert_eq!(durations, vec![100, 200, 300, 300, 300]);
}

#[test]
fn min_health_percent_panics_the_pick() {
    let all = eps(2);
    let mut p = policy(Some(1), None, 100);
    p.min_health_percent = 60;
    let d = OutlierDetector::new(&p);
    let now = Instant::now();
    fail(&d, &all, all[0], 1, now);
    // 50 % healthy < 60 %: every endpoint is usable again.
    assert!(d.panicking(&all, now));
    assert_eq!(d.healthy(&all, now).count(), 2);
    p.min_health_percent = 50;
    let d = OutlierDetector::new(&p);
    fail(&d, &all, all[0], 1, now);
    assert!(!d.panicking(&all, now));
    assert_eq!(d.healthy(&all, now).collect::<Vec<_>>(), vec![all[1]]);
}

#[test]
fn sweep_forgets_blank_endpoints() {
    let all = eps(2);
    let d = OutlierDetector::new(&policy(Some(3), None, 100));
    let now = Instant::now();
    d.report(&all, all[0], Outcome::Success, now);
    assert!(d.sweep(now).is_empty());
    assert!(d.lock().is_empty());
}
