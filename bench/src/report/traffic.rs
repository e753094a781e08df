//! The waypoint's traffic-management set-ups read against the plain waypoint (the issue's
//! "added latency at the waypoint with 1 route and with 1,000 routes; cost of a retry"): the
//! difference of their medians, the retry's divided by the retries the waypoint made per
//! request, so it reads per retry whatever share of requests was retried.

use serde_json::{Value, json};

use super::{Samples, number, render};
use crate::figure::Figure;
use crate::topology::SetUp;

/// The figures the table reads, each with its unit after the number.
const FIGURES: [(Figure, &str); 4] = [
    (Figure::L7P50, " µs"),
    (Figure::L7P90, " µs"),
    (Figure::L7P99, " µs"),
    (Figure::L7PlaneCpu, " millicores"),
];

/// One reading: `setup` minus `against`, per retry or per request.
struct Reading {
    key: &'static str,
    header: &'static str,
    setup: SetUp,
    against: SetUp,
    per_retry: bool,
}

const READINGS: [Reading; 4] = [
    Reading {
        key: "routing_1_rule",
        header: "1 route (waypoint-1-route − waypoint)",
        setup: SetUp::WaypointRoute,
        against: SetUp::Waypoint,
        per_retry: false,
    },
    Reading {
        key: "routing_1000_rules",
        header: "1,000 routes (waypoint-1000-routes − waypoint)",
        setup: SetUp::WaypointRoutes,
        against: SetUp::Waypoint,
        per_retry: false,
    },
    Reading {
        key: "rules_1000_vs_1",
        header: "999 more rules scanned (waypoint-1000-routes − waypoint-1-route)",
        setup: SetUp::WaypointRoutes,
        against: SetUp::WaypointRoute,
        per_retry: false,
    },
    Reading {
        key: "per_retry",
        header: "a retry ((waypoint-retry − waypoint-1-route) / retries per request)",
        setup: SetUp::WaypointRetry,
        against: SetUp::WaypointRoute,
        per_retry: true,
    },
];

impl Reading {
    /// The reading of `figure`, when both set-ups have it (and, per retry, retries were made).
    fn value(&self, samples: &Samples, figure: Figure) -> Option<f64> {
        let added = samples.median(figure, self.setup)? - samples.median(figure, self.against)?;
        if !self.per_retry {
            return Some(added);
        }
        let retries = samples.median(Figure::L7RetriesPerRequest, self.setup)?;
        (retries > 0.0).then(|| added / retries)
    }

    /// Whether both of its set-ups ran.
    fn ran(&self, ran: &[SetUp]) -> bool {
        ran.contains(&self.setup) && ran.contains(&self.against)
    }
}

/// The Markdown table of the readings whose set-ups both ran; `None` when none did.
pub(super) fn table(samples: &Samples, ran: &[SetUp]) -> Option<String> {
    let readings: Vec<&Reading> = READINGS.iter().filter(|r| r.ran(ran)).collect();
    if readings.is_empty() {
        return None;
    }
    let mut header = vec!["added at the waypoint, at 1,000 req/s".to_owned()];
    header.extend(readings.iter().map(|r| r.header.to_owned()));
    let mut rows = vec![header];
    for (figure, unit) in FIGURES {
        let (_, label, decimals, _) = figure.spec();
        let label = label.trim().replace(" at 1,000 req/s", "");
        let mut row = vec![label];
        row.extend(readings.iter().map(|r| match r.value(samples, figure) {
            Some(v) => format!("{v:+.decimals$}{unit}"),
            None => number(None, decimals),
        }));
        rows.push(row);
    }
    Some(render(&rows))
}

/// The readings as JSON: per figure key, each reading whose set-ups both ran (`null` when a
/// median is missing); `None` when no reading's set-ups ran.
pub(super) fn json(samples: &Samples, ran: &[SetUp]) -> Option<Value> {
    let readings: Vec<&Reading> = READINGS.iter().filter(|r| r.ran(ran)).collect();
    if readings.is_empty() {
        return None;
    }
    let figures: serde_json::Map<String, Value> = FIGURES
        .iter()
        .map(|(figure, _)| {
            let entry: serde_json::Map<String, Value> = readings
                .iter()
                .map(|r| (r.key.to_owned(), json!(r.value(samples, *figure))))
                .collect();
            (figure.spec().0.to_owned(), Value::Object(entry))
        })
        .collect();
    Some(Value::Object(figures))
}
