//! `networking.istio.io` VirtualService (v1, v1beta1, v1alpha3) to rules, as istiod builds a
//! waypoint's routes from one (istio/istio `pilot/pkg/networking/core/listener_waypoint.go`,
//! `waypointInboundRoute`, `waypointRouteDestination`) and validates it first
//! (`pkg/config/validation/validation.go`: the webhook refuses the whole object, so a field at
//! fault refuses the whole VirtualService here).
//!
//! - `hosts`: each names one Service ([`super::fields::istio_host`]); a wildcard or non-Service
//!   host is refused alone, the rest apply.
//! - `gateways`: absent or containing `mesh` applies to the mesh; otherwise the object is kept
//!   for the gateway that names it and applies to no Service here.
//! - `http[]` in order, first match wins; a match block whose own `gateways` leaves out `mesh`
//!   is dropped, and a rule left with none is dropped.
//! - Retries: a route without `retries` gets Istio's default ([`default_retries`]);
//!   `attempts: 0` disables them (`pilot/pkg/networking/core/route/retry/retry.go`).

mod http;

use serde_json::Value;

use super::fields::{At, Invalid, Parsed, Source, field, istio_host, list, port, strings};
use super::model::{Backend, HeaderOps, RetryOn, RetryPolicy, RouteKind, RouteRef, TcpRule};
use super::model::{HttpRule, ServiceName};

/// The mesh's name in `gateways` (istio `pkg/config/constants`, `IstioMeshGateway`).
pub(super) const MESH_GATEWAY: &str = "mesh";

/// A subset a rule names, to check against the DestinationRules once all are read.
#[derive(Clone, Debug)]
pub(super) struct SubsetUse {
    /// Where it is named.
    pub field: String,
    /// The Service.
    pub service: ServiceName,
    /// The subset.
    pub subset: String,
}

/// A VirtualService, read.
#[derive(Debug)]
pub(super) struct VirtualService {
    /// The Services of its usable hosts.
    pub hosts: Vec<ServiceName>,
    /// Parts left out (hosts, `tls` routes): the rest applies.
    pub partial: Vec<Invalid>,
    /// `gateways` as written.
    pub gateways: Vec<String>,
    /// Whether it applies to the mesh (waypoints, node proxies).
    pub mesh: bool,
    /// `http[]`, in order.
    pub http: Vec<HttpRule>,
    /// `tcp[]`, in order.
    pub tcp: Vec<TcpRule>,
    /// Every subset it names.
    pub subsets: Vec<SubsetUse>,
}

/// Istio's retry policy for a route that sets none: 2 retries on
/// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` with 503
/// (istio/istio `pilot/pkg/networking/core/route/retry/retry.go`, `defaultPolicy`; 503 unless
/// istiod runs with `EXCLUDE_UNSAFE_503_FROM_DEFAULT_RETRY`).
pub fn default_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: RetryOn {
            connect_failure: true,
            refused_stream: true,
            grpc_unavailable: true,
            grpc_cancelled: true,
            retriable_status_codes: true,
            ..RetryOn::default()
        },
        status_codes: vec![503],
    }
}

/// Reads a VirtualService.
pub(super) fn virtual_service(source: &Source, body: &Value) -> Parsed<VirtualService> {
    let spec_at = At::root("spec");
    let spec = field(body, "spec").unwrap_or(&Value::Null);
    let mut out = VirtualService {
        hosts: Vec::new(),
        partial: Vec::new(),
        gateways: strings(spec, &spec_at, "gateways")?,
        mesh: true,
        http: Vec::new(),
        tcp: Vec::new(),
        subsets: Vec::new(),
    };
    out.mesh = out.gateways.is_empty() || out.gateways.iter().any(|g| g == MESH_GATEWAY);
    let hosts = strings(spec, &spec_at, "hosts")?;
    if hosts.is_empty() {
        return Err(spec_at
            .key("hosts")
            .invalid("a VirtualService must have at least one host"));
    }
    if !out.mesh {
        // Bound to gateways only: its hosts are the gateway's (often external names) and its
        // rules are the ingress's to read (issue 19); nothing here applies or is refused.
        return Ok(out);
    }
    for (i, host) in hosts.iter().enumerate() {
        match istio_host(host, &source.namespace) {
            Ok(service) if out.hosts.contains(&service) => {}
            Ok(service) => out.hosts.push(service),
            Err(reason) => out
                .partial
                .push(spec_at.key("hosts").index(i).invalid(reason)),
        }
    }
    if field(spec, "tls").is_some() {
        out.partial.push(
            spec_at
                .key("tls")
                .invalid("TLS routes are not supported; TLS traffic takes the Service as it is"),
        );
    }
    let http_at = spec_at.key("http");
    for (i, rule) in list(spec, &spec_at, "http")?.iter().enumerate() {
        let route = RouteRef {
            kind: RouteKind::VirtualService,
            namespace: source.namespace.clone(),
            name: source.name.clone(),
            rule: i,
        };
        if let Some(rule) = http::rule(source, &http_at.index(i), rule, route, &mut out.subsets)? {
            out.http.push(rule);
        }
    }
    let tcp_at = spec_at.key("tcp");
    for (i, rule) in list(spec, &spec_at, "tcp")?.iter().enumerate() {
        tcp_rules(source, &tcp_at.index(i), rule, i, &mut out)?;
    }
    if out.http.is_empty() && out.tcp.is_empty() && field(spec, "tls").is_none() {
        return Err(spec_at.invalid("no http or tcp routes"));
    }
    Ok(out)
}

/// `tcp[i]`: one [`TcpRule`] per match block (its `port`), or one for every port.
fn tcp_rules(
    source: &Source,
    at: &At,
    rule: &Value,
    index: usize,
    out: &mut VirtualService,
) -> Parsed<()> {
    let backends = destinations(source, at, rule, &mut out.subsets)?;
    let route = RouteRef {
        kind: RouteKind::VirtualService,
        namespace: source.namespace.clone(),
        name: source.name.clone(),
        rule: index,
    };
    let blocks = list(rule, at, "match")?;
    if blocks.is_empty() {
        out.tcp.push(TcpRule {
            route,
            port: None,
            backends,
        });
        return Ok(());
    }
    for (j, block) in blocks.iter().enumerate() {
        let block_at = at.key("match").index(j);
        for unsupported in [
            "destinationSubnets",
            "sourceLabels",
            "sourceNamespace",
            "sniHosts",
        ] {
            if field(block, unsupported).is_some() {
                return Err(block_at
                    .key(unsupported)
                    .invalid("not supported for tcp routes (only port)"));
            }
        }
        let gateways = strings(block, &block_at, "gateways")?;
        if !gateways.is_empty() && !gateways.iter().any(|g| g == MESH_GATEWAY) {
            continue;
        }
        out.tcp.push(TcpRule {
            route: route.clone(),
            port: port(block, &block_at, "port")?,
            backends: backends.clone(),
        });
    }
    Ok(())
}

/// `route[]`: weighted destinations. More than one must weigh 100 in all (istiod's
/// `validateRouteDestinations`: "total destination weight N != 100"); a lone one with no
/// weight takes everything; a weight-0 destination beside others receives nothing.
pub(super) fn destinations(
    source: &Source,
    at: &At,
    rule: &Value,
    subsets: &mut Vec<SubsetUse>,
) -> Parsed<Vec<Backend>> {
    let routes = list(rule, at, "route")?;
    let mut backends = Vec::with_capacity(routes.len());
    let mut total: u64 = 0;
    for (i, route) in routes.iter().enumerate() {
        let route_at = at.key("route").index(i);
        let weight = super::fields::number(route, &route_at, "weight", 100)?.unwrap_or(0);
        total += weight;
        let mut backend = destination(
            source,
            &route_at.key("destination"),
            field(route, "destination"),
            subsets,
        )?;
        backend.weight = u32::try_from(weight).unwrap_or(0);
        if let Some(headers) = field(route, "headers") {
            let headers_at = route_at.key("headers");
            backend.request_headers = http::header_ops(headers, &headers_at, "request")?;
            backend.response_headers = http::header_ops(headers, &headers_at, "response")?;
        }
        backends.push(backend);
    }
    if routes.len() > 1 && total != 100 {
        return Err(at
            .key("route")
            .invalid(format!("total destination weight {total} != 100")));
    }
    if let [only] = backends.as_mut_slice() {
        only.weight = 100;
    }
    Ok(backends)
}

/// A `Destination`: host (required), subset, port.number. The weight is the caller's.
pub(super) fn destination(
    source: &Source,
    at: &At,
    value: Option<&Value>,
    subsets: &mut Vec<SubsetUse>,
) -> Parsed<Backend> {
    let Some(value) = value else {
        return Err(at.invalid("a destination is required"));
    };
    let host = super::fields::string(value, at, "host")?
        .ok_or_else(|| at.key("host").invalid("a destination host is required"))?;
    let service =
        istio_host(host, &source.namespace).map_err(|reason| at.key("host").invalid(reason))?;
    let subset = super::fields::string(value, at, "subset")?.map(str::to_owned);
    if let Some(subset) = &subset {
        subsets.push(SubsetUse {
            field: at.key("subset").as_str().to_owned(),
            service: service.clone(),
            subset: subset.clone(),
        });
    }
    let port = match field(value, "port") {
        Some(p) => port(p, &at.key("port"), "number")?,
        None => None,
    };
    Ok(Backend {
        service,
        port,
        subset,
        weight: 0,
        request_headers: HeaderOps::default(),
        response_headers: HeaderOps::default(),
    })
}
