//! `marrow_config_refused{kind}`: how many route objects and DestinationRules of the state in
//! force were refused (left out, with a logged reason), by kind. One family, registered by the
//! node proxy and the waypoint alike; every kind is exported, 0 when none, so the series stay
//! put as the state changes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::TrafficSet;

/// The kinds refusals are counted for.
pub const REFUSABLE_KINDS: [&str; 5] = [
    "VirtualService",
    "DestinationRule",
    "HTTPRoute",
    "GRPCRoute",
    "TCPRoute",
];

/// Labels of `marrow_config_refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The Kubernetes kind.
    pub kind: &'static str,
}

/// The `marrow_config_refused` gauge (cheap to clone: clones share the series).
#[derive(Clone, Debug, Default)]
pub struct RefusalMetrics {
    refused: Family<RefusedLabels, Gauge>,
}

impl RefusalMetrics {
    /// Registers the family on `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "marrow_config_refused",
            "Route objects and DestinationRules of the state in force refused (left out), by kind",
            self.refused.clone(),
        );
    }

    /// Sets the gauge from `traffic`'s refusals (an object refused for several reasons counts
    /// once per reason).
    pub fn record(&self, traffic: &TrafficSet) {
        let counts = traffic.refusal_counts();
        for kind in REFUSABLE_KINDS {
            let count = counts.get(kind).copied().unwrap_or(0);
            self.refused
                .get_or_create(&RefusedLabels { kind })
                .set(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Refusal;

    #[test]
    fn every_kind_is_exported_and_refusals_are_counted_by_kind() {
        let metrics = RefusalMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut set = TrafficSet::new();
        for name in ["a", "b"] {
            set.refuse(Refusal {
                kind: "VirtualService".into(),
                namespace: "shop".into(),
                name: name.into(),
                field: "spec.http[0].route".into(),
                reason: "weights sum to 90, not 100".into(),
            });
        }
        metrics.record(&set);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("marrow_config_refused{kind=\"VirtualService\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("marrow_config_refused{kind=\"TCPRoute\"} 0"),
            "{text}"
        );
        metrics.record(&TrafficSet::new());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("marrow_config_refused{kind=\"VirtualService\"} 0"),
            "back to 0 once fixed: {text}"
        );
    }
}
