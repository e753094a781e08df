//! Whether a failed attempt is tried again, and how long to wait first: Envoy's router retry
//! semantics (envoy `source/common/router/retry_state_impl.cc`: `wouldRetryFromHeaders`,
//! `wouldRetryFromReset`; `source/common/common/backoff_strategy.cc`,
//! `JitteredExponentialBackOffStrategy`), which Istio's `retries` configure.
//!
//! Pure functions of the policy and the attempt's outcome; the attempt loop is in
//! `forward::attempts`.

use std::time::Duration;

use marrow_mesh::traffic::{RetryOn, RetryPolicy};

/// How one attempt ended, as far as retrying cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The endpoint answered with this status (and `grpc-status`, when the head carried one).
    Answered {
        /// The HTTP status.
        status: u16,
        /// `grpc-status` of a trailers-only gRPC answer.
        grpc: Option<u32>,
    },
    /// No connection to the endpoint (tunnel refused, connect failed or timed out).
    ConnectFailure,
    /// The endpoint refused the HTTP/2 stream (`REFUSED_STREAM`).
    RefusedStream,
    /// The connection or stream was reset before the response head.
    Reset,
    /// The per-try timeout expired before the response head.
    PerTryTimeout,
}

impl Attempt {
    /// The `reason` label of a retry caused by it (`marrow_retries_total`) and the `outcome`
    /// of the attempt (`marrow_upstream_attempts_total`): the status code, or the failure.
    pub fn label(&self) -> String {
        match self {
            Attempt::Answered {
                grpc: Some(grpc), ..
            } if *grpc != 0 => format!("grpc-{grpc}"),
            Attempt::Answered { status, .. } => status.to_string(),
            Attempt::ConnectFailure => "connect-failure".to_owned(),
            Attempt::RefusedStream => "refused-stream".to_owned(),
            Attempt::Reset => "reset".to_owned(),
            Attempt::PerTryTimeout => "per-try-timeout".to_owned(),
        }
    }
}

/// gRPC status codes Istio's `retryOn` names.
const GRPC_CANCELLED: u32 = 1;
const GRPC_DEADLINE_EXCEEDED: u32 = 4;
const GRPC_RESOURCE_EXHAUSTED: u32 = 8;
const GRPC_UNAVAILABLE: u32 = 14;

/// Whether `policy` retries an attempt that ended as `attempt` (attempts left aside).
pub fn retriable(policy: &RetryPolicy, attempt: &Attempt) -> bool {
    let on: &RetryOn = &policy.retry_on;
    match *attempt {
        Attempt::Answered { status, grpc } => {
            let five_xx = (500..600).contains(&status);
            let gateway = matches!(status, 502..=504);
            (on.five_xx && five_xx)
                || (on.gateway_error && gateway)
                || (on.retriable_4xx && status == 409)
                || (on.retriable_status_codes && policy.status_codes.contains(&status))
                || grpc.is_some_and(|code| {
                    (on.grpc_cancelled && code == GRPC_CANCELLED)
                        || (on.grpc_deadline_exceeded && code == GRPC_DEADLINE_EXCEEDED)
                        || (on.grpc_resource_exhausted && code == GRPC_RESOURCE_EXHAUSTED)
                        || (on.grpc_unavailable && code == GRPC_UNAVAILABLE)
                })
        }
        // `5xx` and `gateway-error` count a failure to connect as a 503 would be
        // (retry_state_impl.cc: "we count an upstream reset as a 5xx").
        Attempt::ConnectFailure => on.connect_failure || on.five_xx || on.gateway_error,
        Attempt::RefusedStream => on.refused_stream || on.five_xx || on.gateway_error,
        Attempt::Reset => on.reset || on.five_xx || on.gateway_error,
        // A per-try timeout resets the stream locally; Envoy retries it under the conditions
        // that retry a reset (router.cc `onPerTryTimeoutCommon` → `maybeRetryReset`).
        Attempt::PerTryTimeout => on.reset || on.five_xx || on.gateway_error,
    }
}

/// Envoy's default retry back-off: 25 ms base, 250 ms cap (ten times the base).
pub const BASE_INTERVAL: Duration = Duration::from_millis(25);
/// The cap of one back-off.
pub const MAX_INTERVAL: Duration = Duration::from_millis(250);

/// Jittered exponential back-off, as Envoy's `JitteredExponentialBackOffStrategy`: the n-th
/// wait is uniform in `[0, (2^n - 1) × base)`, capped at `max`.
#[derive(Debug)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    retry: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE_INTERVAL, MAX_INTERVAL)
    }
}

impl Backoff {
    /// Back-off from `base`, never more than `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base_ms: u64::try_from(base.as_millis()).unwrap_or(u64::MAX).max(1),
            max_ms: u64::try_from(max.as_millis()).unwrap_or(u64::MAX),
            retry: 1,
        }
    }

    /// The next wait, `draw` a uniform random number.
    pub fn wait_with(&mut self, draw: u64) -> Duration {
        let multiplier = (1u64 << self.retry.min(62)) - 1;
        let ceiling = multiplier.saturating_mul(self.base_ms);
        if ceiling <= self.max_ms {
            self.retry += 1;
        }
        Duration::from_millis((draw % ceiling.max(1)).min(self.max_ms))
    }

    /// The next wait.
    pub fn wait(&mut self) -> Duration {
        self.wait_with(fastrand::u64(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: RetryOn, codes: &[u16]) -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            per_try_timeout: None,
            retry_on: on,
            status_codes: codes.to_vec(),
        }
    }

    fn answered(status: u16) -> Attempt {
        Attempt::Answered { status, grpc: None }
    }

    #[test]
    fn the_decision_table() {
        let five_xx = policy(
            RetryOn {
                five_xx: true,
                ..RetryOn::default()
            },
            &[],
        );
        let gateway = policy(
            RetryOn {
                gateway_error: true,
                ..RetryOn::default()
            },
            &[],
        );
        let connect = policy(
            RetryOn {
                connect_failure: true,
                ..RetryOn::default()
            },
            &[],
        );
        let codes = policy(
            RetryOn {
                retriable_status_codes: true,
                ..RetryOn::default()
            },
            &[429],
        );
        let four = policy(
            RetryOn {
                retriable_4xx: true,
                ..RetryOn::default()
            },
            &[],
        );
        let grpc = policy(
            RetryOn {
                grpc_unavailable: true,
                ..RetryOn::default()
            },
            &[],
        );
        let reset = policy(
            RetryOn {
                reset: true,
                ..RetryOn::default()
            },
            &[],
        );
        let refused = policy(
            RetryOn {
                refused_stream: true,
                ..RetryOn::default()
            },
            &[],
        );
        let table: &[(&RetryPolicy, Attempt, bool)] = &[
            (&five_xx, answered(500), true),
            (&five_xx, answered(503), true),
            (&five_xx, answered(404), false),
            (&five_xx, answered(200), false),
            (&five_xx, Attempt::ConnectFailure, true),
            (&five_xx, Attempt::Reset, true),
            (&five_xx, Attempt::PerTryTimeout, true),
            (&gateway, answered(502), true),
            (&gateway, answered(504), true),
            (&gateway, answered(500), false),
            (&connect, Attempt::ConnectFailure, true),
            (&connect, answered(503), false),
            (&connect, Attempt::Reset, false),
            (&connect, Attempt::PerTryTimeout, false),
            (&codes, answered(429), true),
            (&codes, answered(503), false),
            (&four, answered(409), true),
            (&four, answered(400), false),
            (
                &grpc,
                Attempt::Answered {
                    status: 200,
                    grpc: Some(14),
                },
                true,
            ),
            (
                &grpc,
                Attempt::Answered {
                    status: 200,
                    grpc: Some(2),
                },
                false,
            ),
            (&reset, Attempt::Reset, true),
            (&reset, Attempt::PerTryTimeout, true),
            (&reset, answered(503), false),
            (&refused, Attempt::RefusedStream, true),
            (&refused, Attempt::Reset, false),
        ];
        for (policy, attempt, want) in table {
            assert_eq!(
                retriable(policy, attempt),
                *want,
                "{:?} on {attempt:?}",
                policy.retry_on
            );
        }
    }

    #[test]
    fn backoff_grows_jittered_and_capped() {
        // A draw just under each ceiling shows it: 25, 75, 175 ms, then the 250 ms cap.
        let mut high = Backoff::default();
        let waits: Vec<u64> = [24, 74, 174, 374, 10_000]
            .iter()
            .map(|draw| u64::try_from(high.wait_with(*draw).as_millis()).unwrap())
            .collect();
        assert_eq!(waits, [24, 74, 174, 250, 250]);
        let mut wrap = Backoff::default();
        assert_eq!(
            wrap.wait_with(25),
            Duration::ZERO,
            "the draw wraps under the ceiling"
        );
        let mut any = Backoff::default();
        for _ in 0..100 {
            assert!(any.wait() <= MAX_INTERVAL);
        }
    }

    #[test]
    fn labels_name_the_outcome() {
        assert_eq!(answered(503).label(), "503");
        assert_eq!(
            Attempt::Answered {
                status: 200,
                grpc: Some(14)
            }
            .label(),
            "grpc-14"
        );
        assert_eq!(Attempt::ConnectFailure.label(), "connect-failure");
    }
}
