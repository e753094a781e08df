//! Istio's Telemetry API as the source of a program's tracer configuration: which
//! `telemetry.istio.io` Telemetry objects apply to a waypoint, which tracing provider and sampling
//! percentage they leave in force, and where that provider's collector is.
//!
//! Semantics as istiod's (istio/istio `pilot/pkg/model/telemetry.go`, `Telemetries.Tracing` and
//! `applicableTelemetries`; the schema in istio/api `telemetry/v1/telemetry.proto` and
//! `mesh/v1alpha1/config.proto`):
//! - levels, later overriding earlier: the root namespace's Telemetry without selector or
//!   targetRefs, the waypoint's namespace's one, then every Telemetry of that namespace whose
//!   `selector.matchLabels` are a subset of the waypoint pod's labels or whose `targetRefs` name
//!   the waypoint Gateway. Objects are taken oldest first (creation time, then name), and of the
//!   namespace-wide ones only the oldest counts;
//! - `providers` from the last entry that names some (first name only, matched case-insensitively
//!   against MeshConfig `extensionProviders`), else MeshConfig `defaultProviders.tracing[0]`;
//!   `randomSamplingPercentage` and `disableSpanReporting` from the last entry that sets them;
//!   sampling else MeshConfig `defaultConfig.tracing.sampling` when not zero (over 100 → 1),
//!   else Istio's `PILOT_TRACE_SAMPLING` default of 1% (`pilot/pkg/networking/core/tracing.go`,
//!   `proxyConfigSamplingValue`);
//! - no applicable tracing entry and no default provider: the Telemetry API says nothing
//!   ([`tracing_for`] answers `None`) and the program's own flags decide;
//! - a waypoint serves requests: entries with `match.mode: CLIENT` are not its (Istio builds a
//!   waypoint's HTTP connection manager with the inbound, server class);
//! - a provider marrow cannot export to (zipkin, datadog, …) or that MeshConfig does not define,
//!   and a collector that is not a Service in the state, turn tracing off and are reported, never
//!   refuse the state: the next state change answers again.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

use crate::objects::{MESH_CONFIG_KEY, ObjectRef, RawKind, RawObject};
use crate::state::Snapshot;

/// Istio's sampling percentage when neither Telemetry nor MeshConfig sets one
/// (`PILOT_TRACE_SAMPLING`).
pub const ISTIO_DEFAULT_SAMPLING: f64 = 1.0;

/// The waypoint the question is about.
#[derive(Clone, Copy, Debug)]
pub struct TracedWaypoint<'a> {
    /// Its Gateway's namespace (Istio's `ConfigNamespace`).
    pub namespace: &'a str,
    /// Its Gateway's name (what `targetRefs` kind Gateway names).
    pub gateway: &'a str,
    /// Its pods' labels (what `selector.matchLabels` matches).
    pub labels: &'a BTreeMap<String, String>,
}

/// What the Telemetry API sets for a waypoint's tracing.
#[derive(Clone, Debug, PartialEq)]
pub struct TelemetryTracing {
    /// The Telemetry objects that applied, root first.
    pub telemetries: Vec<ObjectRef>,
    /// The provider's name, when one was named (by a Telemetry or `defaultProviders`).
    pub provider: Option<String>,
    /// What follows.
    pub outcome: Outcome,
}

/// Whether spans go out, and where.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Export over OTLP/gRPC.
    Export {
        /// The collector's address (a Service VIP and port, or an IP given as the service).
        collector: SocketAddr,
        /// Percentage of requests without a caller's decision that are sampled.
        sampling_percent: f64,
    },
    /// Off, and nothing to report: `disableSpanReporting: true`, or no provider at all.
    Disabled,
    /// Off: the named provider is not among MeshConfig's `extensionProviders` (or there is no
    /// MeshConfig).
    UnknownProvider,
    /// Off: the provider is of a kind marrow does not export to (`zipkin`, `datadog`, …).
    Unsupported {
        /// The provider's kind, its key in `extensionProviders[]`.
        kind: String,
    },
    /// Off until a state change resolves it: the provider's `service:port` is no Service
    /// (and port) in the state.
    Unresolved {
        /// `service:port` as configured.
        service: String,
    },
    /// Off: the MeshConfig or a provider does not parse.
    Malformed {
        /// What is wrong.
        reason: String,
    },
}

impl Outcome {
    /// The metric label for why tracing is off (`none` when it is on or simply disabled).
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Export { .. } | Outcome::Disabled => "none",
            Outcome::UnknownProvider => "unknown_provider",
            Outcome::Unsupported { .. } => "unsupported_provider",
            Outcome::Unresolved { .. } => "unresolved_service",
            Outcome::Malformed { .. } => "malformed",
        }
    }
}

impl fmt::Display for TelemetryTracing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.telemetries.iter().map(ToString::to_string).collect();
        write!(
            f,
            "telemetries [{}] provider {}: ",
            names.join(", "),
            self.provider.as_deref().unwrap_or("<none>")
        )?;
        match &self.outcome {
            Outcome::Export {
                collector,
                sampling_percent,
            } => write!(f, "export to {collector} sampling {sampling_percent}%"),
            Outcome::Disabled => f.write_str("span reporting disabled"),
            Outcome::UnknownProvider => f.write_str("no such provider in meshconfig, tracing off"),
            Outcome::Unsupported { kind } => {
                write!(
                    f,
                    "provider kind {kind} is not supported (opentelemetry only), tracing off"
                )
            }
            Outcome::Unresolved { service } => {
                write!(
                    f,
                    "collector {service} is no service in the state, tracing off"
                )
            }
            Outcome::Malformed { reason } => write!(f, "{reason}, tracing off"),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Telemetry {
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Metadata {
    name: String,
    namespace: Option<String>,
    creation_timestamp: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    selector: Option<Selector>,
    target_refs: Vec<TargetRef>,
    /// The deprecated singular form, still accepted by Istio.
    target_ref: Option<TargetRef>,
    tracing: Vec<Tracing>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Selector {
    match_labels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct TargetRef {
    group: String,
    kind: String,
    name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Tracing {
    #[serde(rename = "match")]
    selector: Option<TracingSelector>,
    providers: Vec<ProviderRef>,
    random_sampling_percentage: Option<f64>,
    disable_span_reporting: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TracingSelector {
    mode: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProviderRef {
    name: String,
}

/// The parts of MeshConfig (`mesh/v1alpha1/config.proto`) tracing reads.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct MeshConfig {
    extension_providers: Vec<BTreeMap<String, serde_json::Value>>,
    default_providers: DefaultProviders,
    default_config: ProxyConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct DefaultProviders {
    tracing: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProxyConfig {
    tracing: ProxyTracing,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProxyTracing {
    sampling: f64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OpenTelemetryProvider {
    service: String,
    port: u16,
}

impl Spec {
    fn namespace_wide(&self) -> bool {
        self.selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
            && self.target_refs.is_empty()
            && self.target_ref.is_none()
    }

    /// Whether a workload-level Telemetry selects the waypoint: by labels, or by a targetRef to
    /// its Gateway.
    fn selects(&self, waypoint: &TracedWaypoint<'_>) -> bool {
        let by_labels = self.selector.as_ref().is_some_and(|s| {
            !s.match_labels.is_empty()
                && s.match_labels
                    .iter()
                    .all(|(k, v)| waypoint.labels.get(k) == Some(v))
        });
        let by_ref = self
            .target_refs
            .iter()
            .chain(self.target_ref.as_ref())
            .any(|r| {
                r.kind == "Gateway"
                    && (r.group.is_empty() || r.group == "gateway.networking.k8s.io")
                    && r.name == waypoint.gateway
            });
        by_labels || by_ref
    }
}

/// What the Telemetry API sets for `waypoint`'s tracing in `snap`, or `None` when it says
/// nothing (no applicable tracing entry and no default provider).
pub fn tracing_for(snap: &Snapshot, waypoint: &TracedWaypoint<'_>) -> Option<TelemetryTracing> {
    let root = snap.policies().root_namespace();
    let objects: Vec<&RawObject> = snap.raw_objects().collect();
    tracing_from(&objects, root, waypoint, |host, port| {
        resolve(&objects, host, port)
    })
}

/// [`tracing_for`] over the raw objects, with the collector resolved by `resolve`.
fn tracing_from(
    objects: &[&RawObject],
    root: &str,
    waypoint: &TracedWaypoint<'_>,
    resolve: impl Fn(&str, u16) -> Option<SocketAddr>,
) -> Option<TelemetryTracing> {
    let mesh = objects
        .iter()
        .find(|o| o.kind == RawKind::MeshConfig && o.object.namespace.as_deref() == Some(root))
        .map(|o| mesh_config(&o.body));
    let mut telemetries: Vec<Telemetry> = objects
        .iter()
        .filter(|o| o.kind == RawKind::Telemetry)
        // A Telemetry that does not parse has no part in the answer; the state keeps it.
        .filter_map(|o| serde_json::from_value(o.body.clone()).ok())
        .collect();
    // Oldest first, as istiod's `sortConfigByCreationTime`; RFC 3339 in UTC sorts as text.
    telemetries.sort_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    });
    let in_ns = |ns: &str| {
        let ns = ns.to_owned();
        telemetries
            .iter()
            .filter(move |t| t.metadata.namespace.as_deref() == Some(ns.as_str()))
    };
    let mut applied: Vec<&Telemetry> = Vec::new();
    applied.extend(in_ns(root).find(|t| t.spec.namespace_wide()));
    if waypoint.namespace != root {
        applied.extend(in_ns(waypoint.namespace).find(|t| t.spec.namespace_wide()));
    }
    applied.extend(
        in_ns(waypoint.namespace).filter(|t| !t.spec.namespace_wide() && t.spec.selects(waypoint)),
    );
    let entries: Vec<&Tracing> = applied
        .iter()
        .flat_map(|t| &t.spec.tracing)
        .filter(|e| e.selector.as_ref().is_none_or(|m| m.mode != "CLIENT"))
        .collect();
    let (mesh, mesh_error) = match mesh {
        Some(Ok(mesh)) => (mesh, None),
        Some(Err(reason)) => (MeshConfig::default(), Some(reason)),
        None => (MeshConfig::default(), None),
    };
    let default_provider = mesh.default_providers.tracing.first().cloned();
    // A MeshConfig that does not parse matters only where a Telemetry asks for a provider.
    if entries.is_empty() && default_provider.is_none() {
        return None;
    }
    let mut provider = default_provider;
    let mut disabled = false;
    let mut sampling = None;
    for entry in &entries {
        if let Some(first) = entry.providers.first() {
            provider = Some(first.name.clone());
        }
        if let Some(disable) = entry.disable_span_reporting {
            disabled = disable;
        }
        if let Some(percent) = entry.random_sampling_percentage {
            sampling = Some(percent);
        }
    }
    let telemetries = applied
        .iter()
        .map(|t| ObjectRef {
            kind: "Telemetry".to_owned(),
            namespace: t.metadata.namespace.clone(),
            name: t.metadata.name.clone(),
        })
        .collect();
    let outcome = match (&provider, mesh_error) {
        _ if disabled => Outcome::Disabled,
        (None, None) => Outcome::Disabled,
        (_, Some(reason)) => Outcome::Malformed { reason },
        (Some(name), None) => {
            let sampling = sampling.unwrap_or_else(|| mesh_sampling(&mesh));
            provider_outcome(&mesh, name, sampling, &resolve)
        }
    };
    Some(TelemetryTracing {
        telemetries,
        provider,
        outcome,
    })
}

/// MeshConfig `defaultConfig.tracing.sampling` when set (not zero; over 100 → 1), else
/// Istio's default.
fn mesh_sampling(mesh: &MeshConfig) -> f64 {
    let sampling = mesh.default_config.tracing.sampling;
    if sampling == 0.0 {
        ISTIO_DEFAULT_SAMPLING
    } else if sampling > 100.0 {
        1.0
    } else {
        sampling
    }
}

fn provider_outcome(
    mesh: &MeshConfig,
    name: &str,
    sampling_percent: f64,
    resolve: &impl Fn(&str, u16) -> Option<SocketAddr>,
) -> Outcome {
    let Some(provider) = mesh.extension_providers.iter().find(|p| {
        p.get("name")
            .and_then(serde_json::Value::as_str)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    }) else {
        return Outcome::UnknownProvider;
    };
    let Some((kind, body)) = provider.iter().find(|(k, _)| k.as_str() != "name") else {
        return Outcome::Malformed {
            reason: format!("extension provider {name} has no kind"),
        };
    };
    if kind != "opentelemetry" {
        return Outcome::Unsupported { kind: kind.clone() };
    }
    let otel = match OpenTelemetryProvider::deserialize(body) {
        Ok(otel) if !otel.service.is_empty() && otel.port != 0 => otel,
        Ok(_) => {
            return Outcome::Malformed {
                reason: format!("extension provider {name}: opentelemetry needs service and port"),
            };
        }
        Err(e) => {
            return Outcome::Malformed {
                reason: format!("extension provider {name}: {e}"),
            };
        }
    };
    match resolve(&otel.service, otel.port) {
        Some(collector) => Outcome::Export {
            collector,
            sampling_percent: sampling_percent.clamp(0.0, 100.0),
        },
        None => Outcome::Unresolved {
            service: format!("{}:{}", otel.service, otel.port),
        },
    }
}

/// The ConfigMap's `data.mesh`, parsed.
fn mesh_config(body: &serde_json::Value) -> Result<MeshConfig, String> {
    let Some(text) = body["data"][MESH_CONFIG_KEY].as_str() else {
        // A MeshConfig ConfigMap without the key is Istio's defaults.
        return Ok(MeshConfig::default());
    };
    serde_yaml_ng::from_str::<Option<MeshConfig>>(text)
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("configmap {MESH_CONFIG_KEY} key: {e}"))
}

/// A collector host and port through the state's Services: `name.namespace[.svc[.<domain>]]`,
/// optionally after Istio's `namespace/` prefix, to its cluster IP when the Service has that
/// port; an IP address as it is. No DNS.
fn resolve(objects: &[&RawObject], host: &str, port: u16) -> Option<SocketAddr> {
    let host = host.rsplit_once('/').map_or(host, |(_, h)| h);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let mut labels = host.split('.');
    let (name, namespace) = (labels.next()?, labels.next()?);
    if !matches!(labels.next(), None | Some("svc")) {
        return None;
    }
    let service = objects.iter().find(|o| {
        o.kind == RawKind::Service
            && o.object.name == name
            && o.object.namespace.as_deref() == Some(namespace)
    })?;
    let spec = &service.body["spec"];
    let has_port = spec["ports"].as_array().is_some_and(|ports| {
        ports
            .iter()
            .any(|p| p["port"].as_u64() == Some(port.into()))
    });
    let ip = spec["clusterIP"].as_str()?.parse::<IpAddr>().ok()?;
    has_port.then_some(SocketAddr::new(ip, port))
}

#[cfg(test)]
#[path = "provider_tests.rs"]
mod tests;
