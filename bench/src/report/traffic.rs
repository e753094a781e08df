//! The waypoint's traffic-management set-ups read against the plain waypoint (the issue's
//! "added latency at the waypoint with 1 route and with 1,000 routes; cost of a retry"): the
//! difference of their medians. A retry is read on one connection at saturation, where the
//! requests are serial: the time per request (1 s / requests/s) added over waypoint-1-route,
//! divided by the retries the waypoint made per request there. At 1,000 req/s over 16
//! connections the retry bed runs past what its back-off lets it answer, so its latency there
//! is a queue's, not a retry's, and is not divided.

use serde_json::{Value, json};

use super::{Samples, number, render};
use crate::figure::Figure;
use crate::topology::SetUp;

/// A row of the table: a figure at 1,000 req/s, or the time per request over one connection
/// at saturation (derived from [`Figure::L7Rps1`]).
#[derive(Clone, Copy)]
enum Row {
    AtRate(Figure, &'static str),
    SerialRequest,
}

/// The rows, in table order.
const ROWS: [Row; 5] = [
    Row::SerialRequest,
    Row::AtRate(Figure::L7P50, " µs"),
    Row::AtRate(Figure::L7P90, " µs"),
    Row::AtRate(Figure::L7P99, " µs"),
    Row::AtRate(Figure::L7PlaneCpu, " millicores"),
];

impl Row {
    /// Label, JSON key, unit, decimals.
    fn spec(self) -> (String, &'static str, &'static str, usize) {
        match self {
            Row::SerialRequest => (
                "time per request µs, 1 connection at saturation (1 s / requests/s)".to_owned(),
                "l7_serial_request_us",
                " µs",
                0,
            ),
            Row::AtRate(figure, unit) => {
                let (key, label, decimals, _) = figure.spec();
                (label.trim().to_owned(), key, unit, decimals)
            }
        }
    }

    /// Its median for `setup`.
    fn median(self, samples: &Samples, setup: SetUp) -> Option<f64> {
        match self {
            Row::SerialRequest => samples
                .median(Figure::L7Rps1, setup)
                .filter(|rps| *rps > 0.0)
                .map(|rps| 1e6 / rps),
            Row::AtRate(figure, _) => samples.median(figure, setup),
        }
    }
}

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
        header: "a retry ((waypoint-retry − waypoint-1-route) / retries per request, serial)",
        setup: SetUp::WaypointRetry,
        against: SetUp::WaypointRoute,
        per_retry: true,
    },
];

impl Reading {
    /// The reading of `row`, when both set-ups have it (per retry: on the serial row only,
    /// and when retries were made).
    fn value(&self, samples: &Samples, row: Row) -> Option<f64> {
        let added = row.median(samples, self.setup)? - row.median(samples, self.against)?;
        if !self.per_retry {
            return Some(added);
        }
        let retries = samples.median(Figure::L7RetriesPerRequest, self.setup)?;
        (matches!(row, Row::SerialRequest) && retries > 0.0).then(|| added / retries)
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
    let mut header = vec!["added at the waypoint".to_owned()];
    header.extend(readings.iter().map(|r| r.header.to_owned()));
    let mut rows = vec![header];
    for row_of in ROWS {
        let (label, _, unit, decimals) = row_of.spec();
        let mut row = vec![label];
        row.extend(readings.iter().map(|r| match r.value(samples, row_of) {
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
    let figures: serde_json::Map<String, Value> = ROWS
        .iter()
        .map(|row| {
            let entry: serde_json::Map<String, Value> = readings
                .iter()
                .map(|r| (r.key.to_owned(), json!(r.value(samples, *row))))
                .collect();
            (row.spec().1.to_owned(), Value::Object(entry))
        })
        .collect();
    Some(Value::Object(figures))
}
