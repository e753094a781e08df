//! Reading what the node proxy exposes: its `/metrics` page (Prometheus text) and its log.
//!
//! Pure functions over text, so they are tested without a proxy; the demo fetches the text.
//! Label-aware queries go through `marrow_tests::metrics`, which parses the labels.

/// The line the test harness writes into the proxy's log before each start.
const START_MARKER: &str = "=== marrow-tests: start";

/// A `/metrics` page (Prometheus text format).
#[derive(Clone, Debug)]
pub struct Metrics(String);

impl Metrics {
    /// Wraps the text of a `/metrics` page.
    pub fn new(text: String) -> Metrics {
        Metrics(text)
    }

    /// The page's text.
    pub fn text(&self) -> &str {
        &self.0
    }

    /// The page's text, owned.
    pub fn into_text(self) -> String {
        self.0
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

/// The part of a proxy log (appended across restarts) written since its latest start.
pub fn since_last_start(log: &str) -> &str {
    log.rfind(START_MARKER).map_or(log, |at| &log[at..])
}

#[cfg(test)]
mod tests {
    use super::{Metrics, since_last_start};

    const PAGE: &str = r#"# HELP istio_tcp_connections_opened Total number of TCP connections opened.
# TYPE istio_tcp_connections_opened counter
istio_tcp_connections_opened_total{reporter="source",source_workload="client"} 2
istio_tcp_connections_opened_total{reporter="destination",source_workload="client"} 1
istio_tcp_connections_opened_total_extra{reporter="source"} 100
marrow_enrolled_pods 2
"#;

    #[test]
    fn selects_the_samples_of_one_metric() {
        let m = Metrics::new(PAGE.to_owned());
        assert_eq!(m.samples("istio_tcp_connections_opened_total").count(), 2);
        assert_eq!(m.samples("istio_tcp_absent").count(), 0);
        assert_eq!(m.count_with_prefix("istio_tcp_"), 3);
        assert_eq!(
            Metrics::new(String::new()).count_with_prefix("istio_tcp_"),
            0
        );
    }

    #[test]
    fn finds_the_latest_start() {
        let log = "=== marrow-tests: start #1\nold\n=== marrow-tests: start #2\nnew\n";
        assert_eq!(since_last_start(log), "=== marrow-tests: start #2\nnew\n");
        assert_eq!(since_last_start("no marker"), "no marker");
    }
}
