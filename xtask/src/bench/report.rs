//! The samples of every figure across rounds, and the report: a Markdown table of medians with
//! each set-up's ratio to the baseline, and the same as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::figure::{Compare, Figure};
use super::memory::MemoryFigures;
use super::setup::SetUp;

/// Every sample of every figure, by set-up, and the connection errors seen.
#[derive(Default)]
pub struct Samples {
    values: BTreeMap<Figure, BTreeMap<SetUp, Vec<f64>>>,
    errors: BTreeMap<SetUp, (u64, Option<String>)>,
}

impl Samples {
    /// Adds one sample.
    pub fn record(&mut self, figure: Figure, setup: SetUp, value: f64) {
        self.values
            .entry(figure)
            .or_default()
            .entry(setup)
            .or_default()
            .push(value);
    }

    /// Adds one sample if there is one (a baseline has no data-plane figures).
    pub fn record_opt(&mut self, figure: Figure, setup: SetUp, value: Option<f64>) {
        if let Some(value) = value {
            self.record(figure, setup, value);
        }
    }

    /// Counts failed connection attempts, keeping the first error.
    pub fn add_errors(&mut self, setup: SetUp, count: u64, first: Option<String>) {
        let entry = self.errors.entry(setup).or_default();
        entry.0 += count;
        if entry.1.is_none() {
            entry.1 = first;
        }
    }

    /// The median of a figure's samples for `setup`.
    fn median(&self, figure: Figure, setup: SetUp) -> Option<f64> {
        median(self.values.get(&figure)?.get(&setup)?)
    }
}

/// The median (the mean of the middle two for an even count); `None` when empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// Everything a run measured, and how.
pub struct Report {
    /// The 1, 5 and 15-minute load averages before the run.
    pub load_average: [f64; 3],
    /// CPUs available.
    pub cpus: usize,
    /// The run's parameters, as JSON.
    pub parameters: Value,
    /// The order the set-ups ran in.
    pub order: Vec<SetUp>,
    /// The per-round samples.
    pub samples: Samples,
    /// The memory figures, if measured.
    pub memory: Option<MemoryFigures>,
}

fn others() -> impl Iterator<Item = SetUp> {
    SetUp::ALL.into_iter().filter(|s| *s != SetUp::BASELINE)
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.decimals$}"))
}

impl Report {
    /// The Markdown table: figure | baseline | each set-up | each set-up's ratio.
    pub fn table(&self) -> String {
        let base = SetUp::BASELINE;
        let mut header = vec!["figure".to_owned(), base.name().to_owned()];
        header.extend(others().map(|s| s.name().to_owned()));
        let single = others().count() == 1;
        header.extend(others().map(|s| {
            if single {
                "ratio".to_owned()
            } else {
                format!("{} ratio", s.name())
            }
        }));
        let mut rows = vec![header];
        for figure in Figure::ALL {
            let (_, label, decimals, compare) = figure.spec();
            let b = self.samples.median(figure, base);
            let mut row = vec![label.to_owned(), number(b, decimals)];
            row.extend(others().map(|s| number(self.samples.median(figure, s), decimals)));
            row.extend(others().map(|s| {
                let (Some(b), Some(v)) = (b, self.samples.median(figure, s)) else {
                    return "—".to_owned();
                };
                match compare {
                    Compare::Nothing => "—".to_owned(),
                    Compare::Ratio => format!("{:.2}×", v / b),
                    Compare::RatioAndAdded => format!("{:.2}× ({:+.1} µs)", v / b, v - b),
                }
            }));
            rows.push(row);
        }
        let errors = |s: SetUp| self.errors(s).0.to_string();
        let mut row = vec![
            "failed connection attempts (all runs)".to_owned(),
            errors(base),
        ];
        row.extend(others().map(errors));
        row.extend(others().map(|_| "—".to_owned()));
        rows.push(row);
        if let Some(memory) = &self.memory {
            for (label, value) in memory.rows() {
                let mut row = vec![label, "—".to_owned(), value];
                row.extend(others().skip(1).map(|_| "—".to_owned()));
                row.extend(others().map(|_| "—".to_owned()));
                rows.push(row);
            }
        }
        render(&rows)
    }

    fn errors(&self, setup: SetUp) -> (u64, Option<String>) {
        self.samples.errors.get(&setup).cloned().unwrap_or_default()
    }

    /// The report as JSON.
    pub fn json(&self) -> Value {
        let base = SetUp::BASELINE;
        let mut figures = serde_json::Map::new();
        for figure in Figure::ALL {
            let (key, label, _, compare) = figure.spec();
            let medians: serde_json::Map<String, Value> = SetUp::ALL
                .into_iter()
                .map(|s| (s.name().to_owned(), json!(self.samples.median(figure, s))))
                .collect();
            let samples: serde_json::Map<String, Value> = SetUp::ALL
                .into_iter()
                .map(|s| {
                    let values = self.samples.values.get(&figure).and_then(|m| m.get(&s));
                    (
                        s.name().to_owned(),
                        json!(values.cloned().unwrap_or_default()),
                    )
                })
                .collect();
            let b = self.samples.median(figure, base);
            let compared = |f: fn(f64, f64) -> f64| -> serde_json::Map<String, Value> {
                others()
                    .map(|s| {
                        let v = self.samples.median(figure, s);
                        let c = b.zip(v).map(|(b, v)| f(b, v));
                        (s.name().to_owned(), json!(c))
                    })
                    .collect()
            };
            let mut entry = json!({ "label": label.trim(), "median": medians, "samples": samples });
            if compare != Compare::Nothing {
                entry["ratio"] = Value::Object(compared(|b, v| v / b));
            }
            if compare == Compare::RatioAndAdded {
                entry["added"] = Value::Object(compared(|b, v| v - b));
            }
            figures.insert(key.to_owned(), entry);
        }
        let errors: serde_json::Map<String, Value> = SetUp::ALL
            .into_iter()
            .map(|s| {
                let (count, first) = self.errors(s);
                (
                    s.name().to_owned(),
                    json!({ "count": count, "first": first }),
                )
            })
            .collect();
        let setups: serde_json::Map<String, Value> = SetUp::ALL
            .into_iter()
            .map(|s| (s.name().to_owned(), json!(s.describe())))
            .collect();
        json!({
            "load_average": self.load_average,
            "cpus": self.cpus,
            "parameters": self.parameters,
            "baseline": base.name(),
            "setups": setups,
            "order": self.order.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "figures": figures,
            "connection_errors": errors,
            "memory": self.memory.as_ref().map(MemoryFigures::json),
        })
    }
}

/// A Markdown table with padded columns (numbers right-aligned).
fn render(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width = |c: usize| {
        rows.iter()
            .filter_map(|r| r.get(c))
            .map(|cell| cell.chars().count())
            .max()
            .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..columns).map(width).collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        out.push('|');
        for (c, w) in widths.iter().enumerate() {
            let cell = row.get(c).map_or("", String::as_str);
            let pad = w - cell.chars().count();
            let _ = if c == 0 {
                write!(out, " {cell}{} |", " ".repeat(pad))
            } else {
                write!(out, " {}{cell} |", " ".repeat(pad))
            };
        }
        out.push('\n');
        if i == 0 {
            out.push('|');
            for (c, w) in widths.iter().enumerate() {
                let dashes = "-".repeat(*w);
                let _ = if c == 0 {
                    write!(out, " {dashes} |")
                } else {
                    write!(out, " {}: |", &dashes[1..])
                };
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn table_compares_with_the_baseline() {
        let mut samples = Samples::default();
        for (d, m) in [(100.0, 50.0), (110.0, 40.0), (90.0, 60.0)] {
            samples.record(Figure::ConnRate1, SetUp::Direct, d);
            samples.record(Figure::ConnRate1, SetUp::Marrow, m);
        }
        samples.record(Figure::PingP50, SetUp::Direct, 20.0);
        samples.record(Figure::PingP50, SetUp::Marrow, 50.0);
        samples.record(Figure::BulkPlaneCpu, SetUp::Marrow, 1.5);
        samples.add_errors(SetUp::Marrow, 2, Some("reset".to_owned()));
        let report = Report {
            load_average: [0.1, 0.2, 0.3],
            cpus: 2,
            parameters: json!({}),
            order: vec![SetUp::Direct, SetUp::Marrow, SetUp::Marrow, SetUp::Direct],
            samples,
            memory: None,
        };
        let table = report.table();
        let row = |label: &str| -> Vec<String> {
            let line = table.lines().find(|l| l.contains(label)).unwrap();
            line.split('|')
                .map(|c| c.trim().to_owned())
                .filter(|c| !c.is_empty())
                .collect()
        };
        assert_eq!(
            row("connections/s, 1")[1..],
            ["100", "50", "0.50×"],
            "{table}"
        );
        assert_eq!(row("ping-pong p50")[3], "2.50× (+30.0 µs)", "{table}");
        assert_eq!(
            row("node-proxy CPU-s per GB")[1..],
            ["—", "1.50", "—"],
            "{table}"
        );
        assert_eq!(row("failed")[1..], ["0", "2", "—"], "{table}");
        assert!(
            table.lines().nth(1).unwrap().ends_with(": |"),
            "numbers align right"
        );
        let v = report.json();
        assert_eq!(v["figures"]["conn_rate_t1"]["ratio"]["marrow"], json!(0.5));
        assert_eq!(v["figures"]["ping_p50_us"]["added"]["marrow"], json!(30.0));
        assert_eq!(
            v["figures"]["bulk_proxy_cpu_s_per_gb"]["median"]["direct"],
            Value::Null
        );
        assert_eq!(v["connection_errors"]["marrow"]["count"], json!(2));
    }
}
