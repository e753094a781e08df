//! The samples of every figure across rounds, and the report: per topology, a Markdown table of
//! medians with each mesh set-up's ratio to that topology's baseline (and marrow's to the
//! sidecars'), the memory table, the TLS handshake figures, the latency plot's curves, and the
//! same as JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::figure::{Compare, Figure};
use super::handshake::HandshakeFigures;
use super::latency::Distribution;
use super::memory::MemoryFigures;
use super::plot::{self, Series};
use super::topology::{SetUp, Topology};

/// marrow's cross-node set-up and each rival: the pairs the memory table compares.
const VERSUS: &[(SetUp, SetUp)] = Topology::CrossNode.rivals();

/// Every sample of every figure, by set-up, the connection errors seen, and each ping-pong
/// run's distribution.
#[derive(Default)]
pub struct Samples {
    values: BTreeMap<Figure, BTreeMap<SetUp, Vec<f64>>>,
    errors: BTreeMap<SetUp, (u64, Option<String>)>,
    distributions: BTreeMap<SetUp, Vec<Distribution>>,
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

    /// Keeps one ping-pong run's distribution.
    pub fn add_distribution(&mut self, setup: SetUp, distribution: Distribution) {
        self.distributions
            .entry(setup)
            .or_default()
            .push(distribution);
    }

    /// The median of a figure's samples for `setup`.
    fn median(&self, figure: Figure, setup: SetUp) -> Option<f64> {
        median(self.values.get(&figure)?.get(&setup)?)
    }

    /// The latency curve of `setup`: point by point, the median of its runs' ladders (the
    /// points every run has, at the same percentiles).
    pub fn latency_curve(&self, setup: SetUp) -> Vec<[f64; 2]> {
        let Some(runs) = self.distributions.get(&setup) else {
            return Vec::new();
        };
        let shortest = runs.iter().map(|d| d.ladder.len()).min().unwrap_or(0);
        (0..shortest)
            .filter_map(|i| {
                let p = runs.first()?.ladder.get(i)?[0];
                let values: Vec<f64> = runs
                    .iter()
                    .filter_map(|d| d.ladder.get(i))
                    .filter(|[q, _]| (q - p).abs() < 1e-9)
                    .map(|[_, us]| *us)
                    .collect();
                if values.len() != runs.len() {
                    return None;
                }
                Some([p, median(&values)?])
            })
            .collect()
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

/// `v / b` as `0.50×`, or `—` when either is missing or `b` is 0.
fn ratio(b: Option<f64>, v: Option<f64>) -> String {
    match (b, v) {
        (Some(b), Some(v)) if b != 0.0 => times(v / b),
        _ => "—".to_owned(),
    }
}

/// A ratio with two decimals, or two significant digits below 0.1 (`0.0042×`, not `0.00×`).
fn times(r: f64) -> String {
    let decimals = if r != 0.0 && r.is_finite() && r.abs() < 0.095 {
        (1.0 - r.abs().log10().floor()) as usize
    } else {
        2
    };
    format!("{r:.decimals$}×")
}

/// Colour and dash of a set-up's latency curve.
fn style(setup: SetUp) -> (&'static str, bool) {
    match setup {
        SetUp::Direct => ("#7f7f7f", true),
        SetUp::Marrow => ("#2ca02c", true),
        SetUp::DirectX => ("#333333", false),
        SetUp::Hbone => ("#1f77b4", false),
        SetUp::HboneUnpooled => ("#aec7e8", false),
        SetUp::Sidecars => ("#d62728", false),
        SetUp::Ztunnel => ("#e377c2", false),
        SetUp::L7Direct => ("#9467bd", false),
        SetUp::Waypoint => ("#17becf", false),
        SetUp::EnvoyL7 => ("#ff7f0e", false),
        SetUp::WaypointRoute => ("#2a9d8f", false),
        SetUp::WaypointRoutes => ("#264653", false),
        SetUp::WaypointRetry => ("#8c564b", false),
    }
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
                let setups = t
                    .setups()
                    .iter()
                    .copied()
                    .filter(|s| ran.contains(s))
                    .collect();
                (t, setups)
            })
            .filter(|(_, setups): &(Topology, Vec<SetUp>)| !setups.is_empty())
            .collect()
    }

    /// marrow's set-up and each rival (Envoy's, ztunnel) in `topology`, where both ran.
    fn versus(&self, topology: Topology) -> Vec<(SetUp, SetUp)> {
        let ran = self.ran();
        topology
            .rivals()
            .iter()
            .copied()
            .filter(|(ours, theirs)| ran.contains(ours) && ran.contains(theirs))
            .collect()
    }

    /// The Markdown report: a table per topology, the memory table, then the TLS handshake
    /// table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        for (topology, setups) in self.topologies() {
            let _ = writeln!(out, "### {}\n", topology.title());
            out.push_str(&self.topology_table(topology, &setups));
            if let Some(traffic) = traffic::table(&self.samples, &setups) {
                let _ = writeln!(
                    out,
                    "\nTraffic management at the waypoint, against the plain waypoint (medians; \
                     negative is less):\n"
                );
                out.push_str(&traffic);
            }
            for note in topology.notes() {
                let _ = writeln!(out, "\n{note}");
            }
            if setups.contains(&SetUp::Ztunnel) {
                for note in super::ztunnel::NOTES {
                    let _ = writeln!(out, "\n{note}");
                }
            }
            out.push('\n');
        }
        if let Some(memory) = self.memory.as_ref().filter(|m| !m.steps.is_empty()) {
            let _ = writeln!(
                out,
                "### Memory: the data plane of node 1 (marrow: its node-proxy; sidecars: every \
                 Envoy on it, one per pod{})\n",
                if memory.steps.contains_key(&SetUp::Ztunnel) {
                    "; ztunnel: its ztunnel"
                } else {
                    ""
                }
            );
            out.push_str(&memory_table(memory));
            let _ = writeln!(
                out,
                "\nEach pod count is a fresh bed: N pods on node 1 (the client and N - 1 idle \
                 ones), the server pod on node 2 (on node 1 for marrow same-node). direct has \
                 no data plane: 0, so no ratio to it. Connections are held open by the client \
                 pod to the server's echo, idle. RSS summed over processes counts the pages \
                 they share (the Envoy binary, mapped by every Envoy) once per process; PSS \
                 divides shared pages among their users, so summed PSS is what the node \
                 actually spends."
            );
            out.push('\n');
        }
        if let Some(handshakes) = &self.handshakes {
            let _ = writeln!(
                out,
                "### TLS stack alone: node-proxy's identity + tls modules, one process, loopback \
                 TCP (TLS 1.3, ECDSA P-256, aws-lc-rs), per key-exchange setting{}\n",
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

    /// One topology's table: figure | baseline | mesh set-ups | their ratios to the baseline
    /// | marrow's ratio to the sidecars (when both ran).
    fn topology_table(&self, topology: Topology, setups: &[SetUp]) -> String {
        let base = topology.baseline();
        let others: Vec<SetUp> = setups.iter().copied().filter(|s| *s != base).collect();
        let versus: Vec<(SetUp, SetUp)> = topology
            .rivals()
            .iter()
            .copied()
            .filter(|(ours, theirs)| others.contains(ours) && others.contains(theirs))
            .collect();
        let mut header = vec!["figure".to_owned(), base.name().to_owned()];
        header.extend(others.iter().map(|s| s.name().to_owned()));
        header.extend(others.iter().map(|s| {
            if others.len() == 1 {
                "ratio".to_owned()
            } else {
                format!("{}/{}", s.name(), base.name())
            }
        }));
        for (ours, theirs) in &versus {
            header.push(format!("{}/{}", ours.name(), theirs.name()));
        }
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
                    Compare::Ratio => times(v / b),
                    Compare::RatioAndAdded => format!("{} ({:+.1} µs)", times(v / b), v - b),
                }
            }));
            for (ours, theirs) in &versus {
                row.push(if figure.across_meshes() {
                    ratio(
                        self.samples.median(figure, *theirs),
                        self.samples.median(figure, *ours),
                    )
                } else {
                    "—".to_owned()
                });
            }
            rows.push(row);
        }
        let errors = |s: &SetUp| self.errors(*s).0.to_string();
        let mut row = vec![
            "failed connection attempts (all runs)".to_owned(),
            errors(&base),
        ];
        row.extend(others.iter().map(errors));
        row.extend(others.iter().map(|_| "—".to_owned()));
        row.extend(versus.iter().map(|_| "—".to_owned()));
        rows.push(row);
        render(&rows)
    }

    /// The latency plot of every set-up that ran (same-node ones dashed).
    pub fn latency_svg(&self) -> String {
        let series: Vec<Series> = self
            .ran()
            .into_iter()
            .filter_map(|setup| {
                let points = self.samples.latency_curve(setup);
                let p50 = self.samples.median(Figure::PingP50, setup)?;
                let p999 = self.samples.median(Figure::PingP999, setup)?;
                let (colour, dashed) = style(setup);
                (!points.is_empty()).then(|| Series {
                    name: format!("{}  p50 {p50:.0}, p99.9 {p999:.0} µs", setup.name()),
                    colour,
                    dashed,
                    points,
                })
            })
            .collect();
        let runs = self
            .samples
            .distributions
            .values()
            .map(Vec::len)
            .max()
            .unwrap_or(0);
        plot::latency_svg(
            &format!(
                "1-byte ping-pong round trip by percentile (each curve: median of {runs} run{})",
                if runs == 1 { "" } else { "s" }
            ),
            &series,
        )
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
            for (ours, theirs) in Topology::ALL.into_iter().flat_map(|t| self.versus(t)) {
                if !figure.across_meshes() {
                    continue;
                }
                let (o, t) = (
                    self.samples.median(figure, ours),
                    self.samples.median(figure, theirs),
                );
                if o.is_none() && t.is_none() {
                    continue;
                }
                let key = format!("{}_vs_{}", ours.name(), theirs.name());
                entry[key] = json!(o.zip(t).filter(|(_, t)| *t != 0.0).map(|(o, t)| o / t));
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
        let latency: serde_json::Map<String, Value> = ran
            .iter()
            .filter_map(|s| {
                let runs = self.samples.distributions.get(s)?;
                let entry = json!({
                    "runs": runs.len(),
                    "count_per_run": runs.first().map(|d| d.count),
                    "median_curve": self.samples.latency_curve(*s),
                    "max_us": runs.iter().map(|d| d.max_us).collect::<Vec<_>>(),
                    "mean_us": runs.iter().map(|d| d.mean_us).collect::<Vec<_>>(),
                });
                Some((s.name().to_owned(), entry))
            })
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
            "latency_distributions": latency,
            "tls_handshakes": self.handshakes.as_ref().map(HandshakeFigures::json),
            "traffic_vs_waypoint": traffic::json(&self.samples, &ran),
        })
    }
}

/// The memory table: figure | direct | each measured set-up | marrow's ratio to the sidecars.
fn memory_table(memory: &MemoryFigures) -> String {
    let rows = memory.rows();
    let measured: Vec<SetUp> = SetUp::ALL
        .into_iter()
        .filter(|s| memory.steps.contains_key(s))
        .collect();
    let versus: Vec<(SetUp, SetUp)> = VERSUS
        .iter()
        .copied()
        .filter(|(ours, theirs)| measured.contains(ours) && measured.contains(theirs))
        .collect();
    let mut header = vec!["figure".to_owned(), "direct".to_owned()];
    header.extend(measured.iter().map(|s| s.name().to_owned()));
    header.extend(
        versus
            .iter()
            .map(|(ours, theirs)| format!("{}/{}", ours.name(), theirs.name())),
    );
    let mut table = vec![header];
    for (label, values) in rows {
        let decimals = if label.contains("processes") { 0 } else { 1 };
        let mut row = vec![label, number(values.get(&SetUp::Direct).copied(), decimals)];
        row.extend(
            measured
                .iter()
                .map(|s| number(values.get(s).copied(), decimals)),
        );
        for (ours, theirs) in &versus {
            row.push(ratio(
                values.get(theirs).copied(),
                values.get(ours).copied(),
            ));
        }
        table.push(row);
    }
    render(&table)
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

mod traffic;

#[cfg(test)]
mod tests;
