//! The samples of every figure across rounds, and the report: per topology, a Markdown table of
//! medians with the mesh set-up's ratio to that topology's baseline, the TLS handshake figures,
//! and the same as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::figure::{Compare, Figure};
use super::handshake::HandshakeFigures;
use super::memory::MemoryFigures;
use super::topology::{SetUp, Topology};

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
    /// The TLS handshake figures, if measured.
    pub handshakes: Option<HandshakeFigures>,
}

fn number(value: Option<f64>, decimals: usize) -> String {
    value.map_or_else(|| "—".to_owned(), |v| format!("{v:.decimals$}"))
}

impl Report {
    /// The set-ups that ran, in [`SetUp::ALL`] order.
    fn ran(&self) -> Vec<SetUp> {
        SetUp::ALL
            .into_iter()
            .filter(|s| self.order.contains(s))
            .collect()
    }

    /// The topologies with a set-up that ran, and their set-ups that ran (the baseline first).
    fn topologies(&self) -> Vec<(Topology, Vec<SetUp>)> {
        let ran = self.ran();
        Topology::ALL
            .into_iter()
            .map(|t| {
                let setups = t.setups().into_iter().filter(|s| ran.contains(s)).collect();
                (t, setups)
            })
            .filter(|(_, setups): &(Topology, Vec<SetUp>)| !setups.is_empty())
            .collect()
    }

    /// The Markdown report: a table per topology, then the TLS handshake table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (topology, setups) in self.topologies() {
            let _ = writeln!(out, "### {}\n", topology.title());
            out.push_str(&self.topology_table(topology, &setups));
            for note in topology.notes() {
                let _ = writeln!(out, "\n{note}");
            }
            out.push('\n');
        }
        if let Some(handshakes) = &self.handshakes {
            let _ = writeln!(
                out,
                "### TLS stack alone: node-proxy's identity + tls modules, one process, loopback \
                 TCP (TLS 1.3, ECDSA P-256, ring){}\n",
                if handshakes.release {
                    ""
                } else {
                    " — DEBUG BUILD, not representative"
                }
            );
            let mut rows = vec![vec!["figure".to_owned(), "value".to_owned()]];
            rows.extend(handshakes.rows().into_iter().map(|(l, v)| vec![l, v]));
            out.push_str(&render(&rows));
        }
        out
    }

    /// One topology's table: figure | baseline | mesh set-up | ratio.
    fn topology_table(&self, topology: Topology, setups: &[SetUp]) -> String {
        let base = topology.baseline();
        let others: Vec<SetUp> = setups.iter().copied().filter(|s| *s != base).collect();
        let mut header = vec!["figure".to_owned(), base.name().to_owned()];
        header.extend(others.iter().map(|s| s.name().to_owned()));
        header.extend(others.iter().map(|_| "ratio".to_owned()));
        let mut rows = vec![header];
        for figure in Figure::ALL {
            let (_, label, decimals, compare) = figure.spec();
            let b = self.samples.median(figure, base);
            let values: Vec<Option<f64>> = others
                .iter()
                .map(|s| self.samples.median(figure, *s))
                .collect();
            if b.is_none() && values.iter().all(Option::is_none) {
                continue;
            }
            let mut row = vec![label.to_owned(), number(b, decimals)];
            row.extend(values.iter().map(|v| number(*v, decimals)));
            row.extend(values.iter().map(|v| {
                let (Some(b), Some(v)) = (b, *v) else {
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
        let errors = |s: &SetUp| self.errors(*s).0.to_string();
        let mut row = vec![
            "failed connection attempts (all runs)".to_owned(),
            errors(&base),
        ];
        row.extend(others.iter().map(errors));
        row.extend(others.iter().map(|_| "—".to_owned()));
        rows.push(row);
        if let Some(memory) = self
            .memory
            .as_ref()
            .filter(|_| others.contains(&SetUp::Marrow))
        {
            for (label, value) in memory.rows() {
                rows.push(vec![label, "—".to_owned(), value, "—".to_owned()]);
            }
        }
        render(&rows)
    }

    fn errors(&self, setup: SetUp) -> (u64, Option<String>) {
        self.samples.errors.get(&setup).cloned().unwrap_or_default()
    }

    /// The report as JSON.
    pub fn json(&self) -> Value {
        let ran = self.ran();
        let mut figures = serde_json::Map::new();
        for figure in Figure::ALL {
            let (key, label, _, compare) = figure.spec();
            let medians: serde_json::Map<String, Value> = ran
                .iter()
                .map(|s| (s.name().to_owned(), json!(self.samples.median(figure, *s))))
                .collect();
            let samples: serde_json::Map<String, Value> = ran
                .iter()
                .map(|s| {
                    let values = self.samples.values.get(&figure).and_then(|m| m.get(s));
                    (
                        s.name().to_owned(),
                        json!(values.cloned().unwrap_or_default()),
                    )
                })
                .collect();
            let compared = |f: fn(f64, f64) -> f64| -> serde_json::Map<String, Value> {
                ran.iter()
                    .filter(|s| s.baseline() != **s)
                    .map(|s| {
                        let b = self.samples.median(figure, s.baseline());
                        let v = self.samples.median(figure, *s);
                        (s.name().to_owned(), json!(b.zip(v).map(|(b, v)| f(b, v))))
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
        let errors: serde_json::Map<String, Value> = ran
            .iter()
            .map(|s| {
                let (count, first) = self.errors(*s);
                (
                    s.name().to_owned(),
                    json!({ "count": count, "first": first }),
                )
            })
            .collect();
        let setups: serde_json::Map<String, Value> = ran
            .iter()
            .map(|s| {
                let entry = json!({
                    "describe": s.describe(),
                    "topology": s.topology().key(),
                    "baseline": s.baseline().name(),
                });
                (s.name().to_owned(), entry)
            })
            .collect();
        let notes: serde_json::Map<String, Value> = self
            .topologies()
            .into_iter()
            .map(|(t, _)| (t.key().to_owned(), json!(t.notes())))
            .collect();
        json!({
            "load_average": self.load_average,
            "cpus": self.cpus,
            "parameters": self.parameters,
            "setups": setups,
            "notes": notes,
            "order": self.order.iter().map(|s| s.name()).collect::<Vec<_>>(),
            "figures": figures,
            "connection_errors": errors,
            "memory": self.memory.as_ref().map(MemoryFigures::json),
            "tls_handshakes": self.handshakes.as_ref().map(HandshakeFigures::json),
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
mod tests;
