//! Reading what the node proxy exposes: its `/metrics` page (Prometheus text) and its log.
//!
//! Pure functions over text, so they are tested without a proxy; the demo fetches the text.

use std::fmt;

/// The line the test harness writes into the proxy's log before each start.
const START_MARKER: &str = "=== marrow-tests: start";

/// One counter series, selected by metric name and a subset of its labels.
#[derive(Clone, Debug)]
pub struct Series {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
}

impl Series {
    /// `istio_tcp_connections_opened_total` with `labels`.
    pub fn opened(labels: &[(&'static str, &str)]) -> Series {
        Series {
            name: "istio_tcp_connections_opened_total",
            labels: labels.iter().map(|&(k, v)| (k, v.to_owned())).collect(),
        }
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect();
        write!(f, "{}{{{}}}", self.name, labels.join(","))
    }
}

/// A `/metrics` page (Prometheus text format).
#[derive(Clone, Debug)]
pub struct Metrics(String);

impl Metrics {
    /// Wraps the text of a `/metrics` page.
    pub fn new(text: String) -> Metrics {
        Metrics(text)
    }

    /// The sum of the samples of `series`' metric whose labels include all of `series`' labels.
    pub fn sum(&self, series: &Series) -> u64 {
        let total: f64 = self
            .samples(series.name)
            .filter(|line| series.labels.iter().all(|(k, v)| has_label(line, k, v)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        // Counters are whole, non-negative numbers; the cast cannot lose anything that matters.
        total as u64
    }

    /// The value of an unlabelled gauge, if present.
    pub fn gauge(&self, name: &str) -> Option<f64> {
        self.0
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    /// The sample lines of `metric` (no `# HELP`/`# TYPE` lines).
    pub fn samples<'m>(&'m self, metric: &'m str) -> impl Iterator<Item = &'m str> {
        self.0.lines().filter(move |line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with('{'))
        })
    }

    /// How many sample lines have a name starting with `prefix`.
    pub fn count_with_prefix(&self, prefix: &str) -> usize {
        self.0
            .lines()
            .filter(|line| line.starts_with(prefix))
            .count()
    }
}

/// Whether the sample `line` has the label `key="value"` (exactly that name: it follows `{`
/// or `,`).
fn has_label(line: &str, key: &str, value: &str) -> bool {
    let pair = format!("{key}=\"{value}\"");
    line.match_indices(&pair)
        .any(|(at, _)| matches!(line[..at].chars().next_back(), Some('{' | ',')))
}

/// The part of a proxy log (appended across restarts) written since its latest start.
pub fn since_last_start(log: &str) -> &str {
    log.rfind(START_MARKER).map_or(log, |at| &log[at..])
}

/// The `restored` field of the proxy's "enrollment records re-adopted" log line (text or
/// JSON, with or without colour escapes).
pub fn restored_count(log: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|line| line.contains("enrollment records re-adopted"))?;
    let value = line.split("restored").nth(1)?;
    value
        .trim_start_matches(['"', ':', '=', ' '])
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::{Metrics, Series, restored_count, since_last_start};

    const PAGE: &str = r#"# HELP istio_tcp_connections_opened Total number of TCP connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="source",source_workload="client"} 2
istio_tcp_connections_opened_total{reporter="destination",source_workload="client"} 1
istio_tcp_connections_opened_total{reporter="destination",source_workload="unknown"} 3
istio_tcp_connections_opened_total_extra{reporter="source"} 100
marrow_enrolled_pods 2
"#;

    #[test]
    fn sums_the_samples_that_carry_every_label() {
        let m = Metrics(PAGE.to_owned());
        assert_eq!(m.sum(&Series::opened(&[])), 6);
        assert_eq!(m.sum(&Series::opened(&[("reporter", "source")])), 2);
        assert_eq!(m.sum(&Series::opened(&[("reporter", "destination")])), 4);
        let both = [("reporter", "destination"), ("source_workload", "client")];
        assert_eq!(m.sum(&Series::opened(&both)), 1);
        assert_eq!(m.sum(&Series::opened(&[("reporter", "nobody")])), 0);
        // `workload="client"` is not `source_workload="client"`.
        assert_eq!(m.sum(&Series::opened(&[("workload", "client")])), 0);
    }

    #[test]
    fn reads_gauges_and_ignores_other_lines() {
        let m = Metrics(PAGE.to_owned());
        assert_eq!(m.gauge("marrow_enrolled_pods"), Some(2.0));
        assert_eq!(m.gauge("marrow_enrolled"), None);
        assert_eq!(m.gauge("absent"), None);
        assert_eq!(m.samples("istio_tcp_connections_opened_total").count(), 3);
        assert_eq!(m.count_with_prefix("istio_tcp_"), 4);
        let garbage =
            Metrics("istio_tcp_connections_opened_total{reporter=\"source\"} x\n".to_owned());
        assert_eq!(garbage.sum(&Series::opened(&[])), 0);
        assert_eq!(Metrics(String::new()).gauge("marrow_enrolled_pods"), None);
    }

    #[test]
    fn displays_a_series_as_a_selector() {
        let series = Series::opened(&[("reporter", "source"), ("source_workload", "client")]);
        assert_eq!(
            series.to_string(),
            r#"istio_tcp_connections_opened_total{reporter="source",source_workload="client"}"#
        );
    }

    #[test]
    fn reads_the_restored_count_from_text_and_json_logs() {
        let text =
            "2026-01-01T00:00:00Z  INFO node_proxy: enrollment records re-adopted restored=2";
        assert_eq!(restored_count(text), Some(2));
        let json = r#"{"fields":{"message":"enrollment records re-adopted","restored":12}}"#;
        assert_eq!(restored_count(json), Some(12));
    }

    #[test]
    fn no_restored_count_without_the_line_or_the_number() {
        assert_eq!(restored_count(""), None);
        assert_eq!(restored_count("node proxy ready"), None);
        assert_eq!(restored_count("enrollment records re-adopted"), None);
        assert_eq!(
            restored_count("enrollment records re-adopted restored=x"),
            None
        );
    }

    #[test]
    fn finds_the_latest_start() {
        let log = "=== marrow-tests: start #1\nold\n=== marrow-tests: start #2\nnew\n";
        assert_eq!(since_last_start(log), "=== marrow-tests: start #2\nnew\n");
        assert_eq!(since_last_start("no marker"), "no marker");
    }
}
