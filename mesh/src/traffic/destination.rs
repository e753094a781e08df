//! `networking.istio.io` DestinationRule (v1, v1beta1, v1alpha3) to a [`DestinationPolicy`]:
//! `host` → the Service, `trafficPolicy` (loadBalancer, connectionPool, outlierDetection,
//! portLevelSettings), `subsets[]` (name, labels, trafficPolicy). `exportTo` and `tls` are not
//! read (marrow's mesh is one trust domain with mTLS everywhere; `tls` to a mesh Service is
//! Istio's default already).
//!
//! Defaults and field meanings are istiod's: istio/istio
//! `pilot/pkg/networking/core/cluster_traffic_policy.go` (`applyLoadBalancer`: LEAST_CONN is
//! LEAST_REQUEST; `applyOutlierDetection`), istio/api `networking/v1alpha3/destination_rule.proto`
//! (outlier `interval` 10s, `baseEjectionTime` 30s, `maxEjectionPercent` 10, the deprecated
//! `consecutiveErrors` read as gateway errors — Istio's own translation of it).

use std::time::Duration;

use serde_json::Value;

use super::fields::{
    At, Parsed, Source, count, field, istio_duration, istio_host, list, number, port, string,
    string_map,
};
use super::model::{
    ConnectionPool, DestinationPolicy, HashKey, LoadBalancer, OutlierDetection, Subset,
    TrafficPolicy,
};

/// Reads a DestinationRule.
pub(super) fn destination_rule(source: &Source, body: &Value) -> Parsed<DestinationPolicy> {
    let at = At::root("spec");
    let spec = field(body, "spec").unwrap_or(&Value::Null);
    let host = string(spec, &at, "host")?
        .ok_or_else(|| at.key("host").invalid("a DestinationRule needs a host"))?;
    let service =
        istio_host(host, &source.namespace).map_err(|reason| at.key("host").invalid(reason))?;
    if field(spec, "workloadSelector").is_some() {
        return Err(at
            .key("workloadSelector")
            .invalid("workloadSelector is for sidecars; not supported"));
    }
    let (policy, port_policies) = match field(spec, "trafficPolicy") {
        Some(p) => traffic_policy(&at.key("trafficPolicy"), p)?,
        None => (TrafficPolicy::default(), Vec::new()),
    };
    let mut subsets: Vec<Subset> = Vec::new();
    for (i, subset) in list(spec, &at, "subsets")?.iter().enumerate() {
        let s_at = at.key("subsets").index(i);
        let name = string(subset, &s_at, "name")?
            .filter(|n| !n.is_empty())
            .ok_or_else(|| s_at.key("name").invalid("a subset needs a name"))?;
        if subsets.iter().any(|s| s.name == name) {
            return Err(s_at
                .key("name")
                .invalid(format!("duplicate subset name {name:?}")));
        }
        let (policy, port_policies) = match field(subset, "trafficPolicy") {
            Some(p) => traffic_policy(&s_at.key("trafficPolicy"), p)?,
            None => (TrafficPolicy::default(), Vec::new()),
        };
        subsets.push(Subset {
            name: name.to_owned(),
            labels: string_map(subset, &s_at, "labels")?,
            policy,
            port_policies,
        });
    }
    Ok(DestinationPolicy {
        namespace: source.namespace.clone(),
        name: source.name.clone(),
        service,
        policy,
        port_policies,
        subsets,
    })
}

/// A `trafficPolicy` and its `portLevelSettings`.
fn traffic_policy(at: &At, value: &Value) -> Parsed<(TrafficPolicy, Vec<(u16, TrafficPolicy)>)> {
    let policy = policy_fields(at, value)?;
    let mut ports: Vec<(u16, TrafficPolicy)> = Vec::new();
    for (i, setting) in list(value, at, "portLevelSettings")?.iter().enumerate() {
        let p_at = at.key("portLevelSettings").index(i);
        let number = field(setting, "port")
            .map(|p| port(p, &p_at.key("port"), "number"))
            .transpose()?
            .flatten()
            .ok_or_else(|| {
                p_at.key("port")
                    .invalid("a port level setting needs port.number")
            })?;
        if ports.iter().any(|(p, _)| *p == number) {
            return Err(p_at
                .key("port")
                .invalid(format!("port {number} has two port level settings")));
        }
        ports.push((number, policy_fields(&p_at, setting)?));
    }
    Ok((policy, ports))
}

/// The three parts marrow applies.
fn policy_fields(at: &At, value: &Value) -> Parsed<TrafficPolicy> {
    Ok(TrafficPolicy {
        load_balancer: field(value, "loadBalancer")
            .map(|lb| load_balancer(&at.key("loadBalancer"), lb))
            .transpose()?
            .flatten(),
        connection_pool: field(value, "connectionPool")
            .map(|cp| connection_pool(&at.key("connectionPool"), cp))
            .transpose()?,
        outlier_detection: field(value, "outlierDetection")
            .map(|od| outlier_detection(&at.key("outlierDetection"), od))
            .transpose()?,
    })
}

/// `loadBalancer`: `simple` or `consistentHash`. `None` for an empty one (Envoy's default,
/// least request, stays).
fn load_balancer(at: &At, value: &Value) -> Parsed<Option<LoadBalancer>> {
    let simple = string(value, at, "simple")?;
    let hash = field(value, "consistentHash");
    // `localityLbSetting` and `warmupDurationSecs` are not read: one locality, no slow start.
    match (simple, hash) {
        (Some(_), Some(_)) => Err(at.invalid("only one of simple and consistentHash")),
        (Some(simple), None) => match simple {
            "ROUND_ROBIN" => Ok(Some(LoadBalancer::RoundRobin)),
            // Envoy's default, and istiod maps LEAST_CONN to it.
            "LEAST_REQUEST" | "LEAST_CONN" | "UNSPECIFIED" => Ok(Some(LoadBalancer::LeastRequest)),
            "RANDOM" => Ok(Some(LoadBalancer::Random)),
            "PASSTHROUGH" => Err(at
                .key("simple")
                .invalid("PASSTHROUGH (to the original destination) is not supported")),
            other => Err(at.key("simple").invalid(format!(
                "{other:?} is not a load balancer (ROUND_ROBIN, LEAST_REQUEST, RANDOM)"
            ))),
        },
        (None, Some(hash)) => consistent_hash(&at.key("consistentHash"), hash).map(Some),
        (None, None) => Ok(None),
    }
}

/// `consistentHash`: exactly one key.
fn consistent_hash(at: &At, value: &Value) -> Parsed<LoadBalancer> {
    let mut keys = Vec::new();
    if let Some(header) = string(value, at, "httpHeaderName")? {
        keys.push(HashKey::Header(header.to_ascii_lowercase()));
    }
    if let Some(cookie) = field(value, "httpCookie") {
        let c_at = at.key("httpCookie");
        keys.push(HashKey::Cookie {
            name: string(cookie, &c_at, "name")?
                .ok_or_else(|| c_at.key("name").invalid("a hash cookie needs a name"))?
                .to_owned(),
            ttl: cookie_ttl(cookie, &c_at)?,
            path: string(cookie, &c_at, "path")?.map(str::to_owned),
        });
    }
    if field(value, "useSourceIp").and_then(Value::as_bool) == Some(true) {
        keys.push(HashKey::SourceIp);
    }
    if let Some(param) = string(value, at, "httpQueryParameterName")? {
        keys.push(HashKey::QueryParameter(param.to_owned()));
    }
    match keys.len() {
        1 => Ok(LoadBalancer::ConsistentHash(keys.remove(0))),
        0 => Err(at.invalid(
            "needs one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName",
        )),
        _ => Err(at.invalid("more than one hash key")),
    }
}

/// A cookie's `ttl`: `0s` is a session cookie (Envoy's meaning), so it is a duration that may
/// be zero, unlike Istio's other durations.
fn cookie_ttl(cookie: &Value, at: &At) -> Parsed<Option<Duration>> {
    if string(cookie, at, "ttl")? == Some("0s") || string(cookie, at, "ttl")? == Some("0") {
        return Ok(Some(Duration::ZERO));
    }
    istio_duration(cookie, at, "ttl")
}

/// `connectionPool.tcp` / `.http`.
fn connection_pool(at: &At, value: &Value) -> Parsed<ConnectionPool> {
    let mut out = ConnectionPool::default();
    // istiod sets each limit only when above 0 (`applyConnectionPool`: 0 means unset).
    let positive = |n: Option<u32>| n.filter(|n| *n > 0);
    if let Some(tcp) = field(value, "tcp") {
        let t_at = at.key("tcp");
        out.max_connections = positive(count(tcp, &t_at, "maxConnections")?);
        out.connect_timeout = istio_duration(tcp, &t_at, "connectTimeout")?;
    }
    if let Some(http) = field(value, "http") {
        let h_at = at.key("http");
        out.http1_max_pending_requests = positive(count(http, &h_at, "http1MaxPendingRequests")?);
        out.http2_max_requests = positive(count(http, &h_at, "http2MaxRequests")?);
        out.max_requests_per_connection = positive(count(http, &h_at, "maxRequestsPerConnection")?);
        out.max_retries = positive(count(http, &h_at, "maxRetries")?);
    }
    Ok(out)
}

/// `outlierDetection`, with istiod's defaults.
fn outlier_detection(at: &At, value: &Value) -> Parsed<OutlierDetection> {
    // `consecutive5xxErrors` and `consecutiveGatewayErrors` are wrapped uint32s: 0 disables
    // that trigger. The deprecated `consecutiveErrors` counted 502/503/504 (Istio's docs).
    let consecutive =
        |key: &str| -> Parsed<Option<u32>> { Ok(count(value, at, key)?.filter(|n| *n > 0)) };
    let mut gateway = consecutive("consecutiveGatewayErrors")?;
    if gateway.is_none() {
        gateway = consecutive("consecutiveErrors")?;
    }
    let percent = |key: &str, default: u32| -> Parsed<u32> {
        Ok(number(value, at, key, 100)?
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(default))
    };
    Ok(OutlierDetection {
        consecutive_5xx: consecutive("consecutive5xxErrors")?,
        consecutive_gateway_errors: gateway,
        interval: istio_duration(value, at, "interval")?.unwrap_or(Duration::from_secs(10)),
        base_ejection_time: istio_duration(value, at, "baseEjectionTime")?
            .unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: percent("maxEjectionPercent", 10)?,
        min_health_percent: percent("minHealthPercent", 0)?,
    })
}
