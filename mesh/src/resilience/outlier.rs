//! Outlier detection: endpoints that keep failing are ejected from the pick for a while.
//!
//! Envoy's consecutive-error detectors as Istio configures them (envoy
//! `source/common/upstream/outlier_detection_impl.cc`; istio/istio
//! `pilot/pkg/networking/core/cluster_traffic_policy.go`, `applyOutlierDetection`):
//! - two counters per endpoint: consecutive 5xx, and consecutive gateway errors (502, 503,
//!   504). A connect failure counts as a 503 in both: Istio leaves Envoy's
//!   `split_external_local_origin_errors` off unless `splitExternalLocalOriginErrors` is set, and
//!   Envoy then folds a local-origin connect failure into the HTTP code 503. A success resets
//!   both; a 5xx that is not a gateway error resets the gateway counter;
//! - `consecutive5xxErrors` unset keeps Envoy's default of 5 (Istio leaves the field and its
//!   enforcement, default 100 %, alone); `consecutiveGatewayErrors` unset is off (Envoy's
//!   `enforcing_consecutive_gateway_failure` defaults to 0); 0 turns either off;
//! - the counter reaching its threshold ejects at once, unless the share of the endpoints
//!   already ejected is not below `maxEjectionPercent` (Envoy's `ejected_percent <
//!   max_ejection_percent`, the count before this ejection: with any cap above 0 one endpoint
//!   may always be ejected). The counter restarts either way;
//! - an ejection lasts `baseEjectionTime × backoff`, capped at `max(baseEjectionTime, 300 s)`
//!   (Envoy's default `max_ejection_time`; Istio sets none); the backoff grows by one per
//!   ejection and shrinks by one per `interval` the endpoint spends back in service.
//!
//! One difference, on purpose: Envoy returns an endpoint at the first interval sweep after its
//! time is up; here it returns when its time is up (checked lazily at each pick and report, and
//! by [`OutlierDetector::sweep`], which a program runs every interval for its gauges). The
//! ejection is never shorter than Envoy's; it can end up to one interval sooner.
//!
//! Time is passed in (`now`), so tests step it exactly. The pick path reads one atomic when
//! nothing is ejected and takes the detector's lock only while something is.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::traffic::OutlierDetection;

/// Envoy's default `consecutive_5xx`, in force when `consecutive5xxErrors` is unset.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Envoy's default `max_ejection_time` (Istio sets none).
pub const DEFAULT_MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// What one try at an endpoint came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (L4) or answered below 500 (L7).
    Success,
    /// The connection (or tunnel) to the endpoint could not be made: a 503 to the detector.
    ConnectFailure,
    /// The endpoint answered with this HTTP status.
    Status(u16),
}

impl Outcome {
    /// The status the detector sees (Envoy's `resultToHttpCode` for local-origin results).
    fn status(self) -> u16 {
        match self {
            Outcome::Success => 200,
            Outcome::ConnectFailure => 503,
            Outcome::Status(code) => code,
        }
    }
}

/// Which detector ejected an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EjectionReason {
    /// `consecutive5xxErrors`.
    Consecutive5xx,
    /// `consecutiveGatewayErrors`.
    ConsecutiveGatewayError,
}

impl EjectionReason {
    /// The `reason` label: `consecutive_5xx`, `consecutive_gateway_error`.
    pub fn as_str(self) -> &'static str {
        match self {
            EjectionReason::Consecutive5xx => "consecutive_5xx",
            EjectionReason::ConsecutiveGatewayError => "consecutive_gateway_error",
        }
    }
}

/// An ejection that just happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ejection {
    /// The endpoint.
    pub endpoint: SocketAddr,
    /// Why.
    pub reason: EjectionReason,
    /// For how long.
    pub duration: Duration,
}

/// One endpoint's counters and ejection.
#[derive(Clone, Copy, Debug, Default)]
struct Monitor {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Until when it is out of the pick, while it is.
    ejected_until: Option<Instant>,
    /// The ejection multiplier.
    backoff: u32,
    /// When it last came back (the decay counts intervals from here).
    returned_at: Option<Instant>,
}

impl Monitor {
    /// Whether nothing is remembered: the entry can go.
    fn is_blank(&self) -> bool {
        self.consecutive_5xx == 0
            && self.consecutive_gateway == 0
            && self.ejected_until.is_none()
            && self.backoff == 0
    }
}

/// The settings in force, with Envoy's defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Settings {
    consecutive_5xx: Option<u32>,
    consecutive_gateway: Option<u32>,
    interval: Duration,
    base_ejection_time: Duration,
    max_ejection_time: Duration,
    max_ejection_percent: u32,
    min_health_percent: u32,
}

impl Settings {
    fn of(policy: &OutlierDetection) -> Self {
        let on = |n: u32| (n > 0).then_some(n);
        Self {
            consecutive_5xx: on(policy.consecutive_5xx.unwrap_or(DEFAULT_CONSECUTIVE_5XX)),
            consecutive_gateway: policy.consecutive_gateway_errors.and_then(on),
            interval: policy.interval,
            base_ejection_time: policy.base_ejection_time,
            max_ejection_time: DEFAULT_MAX_EJECTION_TIME.max(policy.base_ejection_time),
            max_ejection_percent: policy.max_ejection_percent.min(100),
            min_health_percent: policy.min_health_percent.min(100),
        }
    }
}

/// The outlier detector of one destination (a Service, or one subset of it).
#[derive(Debug)]
pub struct OutlierDetector {
    settings: Settings,
    monitors: Mutex<HashMap<SocketAddr, Monitor>>,
    /// Endpoints ejected now (as of the last report or sweep): 0 lets the pick skip the lock.
    ejected: AtomicUsize,
}

impl OutlierDetector {
    /// A detector with `policy` (a DestinationRule's `outlierDetection`).
    pub fn new(policy: &OutlierDetection) -> Self {
        Self {
            settings: Settings::of(policy),
            monitors: Mutex::new(HashMap::new()),
            ejected: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Monitor>> {
        self.monitors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `outcome` of a try at `endpoint`, one of the destination's ready `endpoints`
    /// (the share ejected is taken over them); the ejection it caused, if it caused one.
    pub fn report(
        &self,
        endpoints: &[SocketAddr],
        endpoint: SocketAddr,
        outcome: Outcome,
        now: Instant,
    ) -> Option<Ejection> {
        let settings = self.settings;
        let mut monitors = self.lock();
        let mut returned = 0;
        let monitor = monitors.entry(endpoint).or_default();
        if monitor.ejected_until.is_some_and(|until| until <= now) {
            return_to_service(monitor);
            returned += 1;
        }
        let ejected_now = monitor.ejected_until.is_some();
        let status = outcome.status();
        let gateway = matches!(status, 502..=504);
        if gateway {
            monitor.consecutive_gateway += 1;
        } else {
            monitor.consecutive_gateway = 0;
        }
        if status >= 500 {
            monitor.consecutive_5xx += 1;
        } else {
            monitor.consecutive_5xx = 0;
        }
        // Envoy checks the gateway detector first; an endpoint already out is left be.
        let reason = if ejected_now {
            None
        } else if settings
            .consecutive_gateway
            .is_some_and(|n| monitor.consecutive_gateway >= n)
        {
            monitor.consecutive_gateway = 0;
            Some(EjectionReason::ConsecutiveGatewayError)
        } else if settings
            .consecutive_5xx
            .is_some_and(|n| monitor.consecutive_5xx >= n)
        {
            monitor.consecutive_5xx = 0;
            Some(EjectionReason::Consecutive5xx)
        } else {
            None
        };
        let ejection = reason.and_then(|reason| {
            let out = endpoints
                .iter()
                .filter(|e| {
                    monitors
                        .get(e)
                        .and_then(|m| m.ejected_until)
                        .is_some_and(|until| until > now)
                })
                .count();
            let share = 100.0 * out as f64 / endpoints.len().max(1) as f64;
            if share >= f64::from(settings.max_ejection_percent) {
                return None;
            }
            let monitor = monitors.entry(endpoint).or_default();
            Some(Ejection {
                endpoint,
                reason,
                duration: eject(monitor, &settings, now),
            })
        });
        drop(monitors);
        self.recount(returned, usize::from(ejection.is_some()));
        ejection
    }

    /// Adjusts the count of ejected endpoints.
    fn recount(&self, returned: usize, ejected: usize) {
        if ejected > 0 {
            self.ejected.fetch_add(ejected, Ordering::AcqRel);
        }
        if returned > 0 {
            let _ = self
                .ejected
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    Some(n.saturating_sub(returned))
                });
        }
    }

    /// Whether `endpoint` is out of the pick at `now`.
    pub fn is_ejected(&self, endpoint: SocketAddr, now: Instant) -> bool {
        if self.ejected.load(Ordering::Acquire) == 0 {
            return false;
        }
        self.lock()
            .get(&endpoint)
            .and_then(|m| m.ejected_until)
            .is_some_and(|until| until > now)
    }

    /// How many of `endpoints` are out of the pick at `now`.
    pub fn ejected_among(&self, endpoints: &[SocketAddr], now: Instant) -> usize {
        if self.ejected.load(Ordering::Acquire) == 0 {
            return 0;
        }
        let monitors = self.lock();
        endpoints
            .iter()
            .filter(|e| {
                monitors
                    .get(e)
                    .and_then(|m| m.ejected_until)
                    .is_some_and(|until| until > now)
            })
            .count()
    }

    /// Whether the pick may use `endpoint` of `endpoints` at `now`: it is not ejected, or the
    /// healthy share is below `minHealthPercent` (Istio maps it to Envoy's panic threshold:
    /// below it the balancer uses every endpoint, ejected or not; Istio's 0 never panics).
    /// Use [`OutlierDetector::panicking`] once per pick and [`OutlierDetector::is_ejected`]
    /// per endpoint to avoid counting for each.
    pub fn usable(&self, endpoints: &[SocketAddr], endpoint: SocketAddr, now: Instant) -> bool {
        self.panicking(endpoints, now) || !self.is_ejected(endpoint, now)
    }

    /// Whether the healthy share of `endpoints` is below `minHealthPercent` (Envoy's panic
    /// mode: the pick ignores ejections).
    pub fn panicking(&self, endpoints: &[SocketAddr], now: Instant) -> bool {
        let min = self.settings.min_health_percent;
        if min == 0 || endpoints.is_empty() {
            return false;
        }
        let healthy = endpoints.len() - self.ejected_among(endpoints, now);
        100 * healthy < min as usize * endpoints.len()
    }

    /// The endpoints of `endpoints` the pick may use at `now`, in order (every one in panic
    /// mode). Allocates nothing.
    pub fn healthy<'a>(
        &'a self,
        endpoints: &'a [SocketAddr],
        now: Instant,
    ) -> impl Iterator<Item = SocketAddr> + 'a {
        let panic = self.panicking(endpoints, now);
        endpoints
            .iter()
            .copied()
            .filter(move |e| panic || !self.is_ejected(*e, now))
    }

    /// Returns to service every endpoint whose time is up at `now`, forgets blank entries,
    /// and applies the backoff's decay; the endpoints returned (for the gauges). Run every
    /// `interval` (Envoy's sweep).
    pub fn sweep(&self, now: Instant) -> Vec<SocketAddr> {
        let interval = self.settings.interval;
        let mut returned = Vec::new();
        let mut monitors = self.lock();
        for (endpoint, monitor) in monitors.iter_mut() {
            if monitor.ejected_until.is_some_and(|until| until <= now) {
                return_to_service(monitor);
                returned.push(*endpoint);
            }
            if monitor.ejected_until.is_none() {
                decay(monitor, interval, now);
            }
        }
        monitors.retain(|_, m| !m.is_blank());
        drop(monitors);
        self.recount(returned.len(), 0);
        returned
    }

    /// The ejection interval (how often to [`OutlierDetector::sweep`]).
    pub fn interval(&self) -> Duration {
        self.settings.interval
    }
}

/// Ends an ejection whose time is up, at the time it ended.
fn return_to_service(monitor: &mut Monitor) {
    monitor.returned_at = monitor.ejected_until.take();
}

/// Takes one off the backoff for each whole interval spent in service since the last return
/// (Envoy decrements it at each sweep that finds the endpoint healthy).
fn decay(monitor: &mut Monitor, interval: Duration, now: Instant) {
    let Some(since) = monitor.returned_at else {
        return;
    };
    if interval.is_zero() {
        monitor.backoff = 0;
        return;
    }
    let intervals = (now.saturating_duration_since(since).as_nanos() / interval.as_nanos())
        .min(u128::from(u32::MAX)) as u32;
    if intervals > 0 {
        monitor.backoff = monitor.backoff.saturating_sub(intervals);
        monitor.returned_at = (monitor.backoff > 0).then(|| since + interval * intervals);
    }
}

/// Ejects `monitor` at `now`; how long for.
fn eject(monitor: &mut Monitor, settings: &Settings, now: Instant) -> Duration {
    decay(monitor, settings.interval, now);
    // Envoy stops growing the backoff once base × backoff reaches the cap.
    let base = settings.base_ejection_time;
    if base.saturating_mul(monitor.backoff) < settings.max_ejection_time || monitor.backoff == 0 {
        monitor.backoff += 1;
    }
    let duration = base
        .saturating_mul(monitor.backoff)
        .min(settings.max_ejection_time);
    monitor.ejected_until = Some(now + duration);
    monitor.returned_at = None;
    duration
}

#[cfg(test)]
#[path = "outlier_tests.rs"]
mod tests;
