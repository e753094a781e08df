//! `gateway.networking.k8s.io` HTTPRoute (v1, v1beta1), GRPCRoute (v1, v1alpha2) and TCPRoute
//! (v1alpha2) with a Service parent (GAMMA), to rules. Gateway parents belong to the ingress
//! (issue 19) and are passed over without a word.
//!
//! - Each rule is split into one [`HttpRule`] per match (`RouteRef::rule` stays the rule's
//!   index), so the spec's precedence orders matches, not rules ([`Precedence`]).
//! - A match with no path matches the prefix `/` (the CRD's default).
//! - A `backendRef` that cannot be resolved (not a Service, a Service the state lacks, or in
//!   another namespace: marrow reads no ReferenceGrant) keeps its weight and answers 500, as
//!   the spec asks: it is listed in [`Forward::invalid_backends`]. Weight 0 receives nothing;
//!   no weight at all left (or no backendRef) is an empty forward, which answers 500.
//! - Retries: the standard has none (Istio's retry extension is not read); `timeouts.request`
//!   and `timeouts.backendRequest` bound the one try, so the shorter is the timeout.
//! - A field at fault refuses the whole route (istiod marks it not Accepted).

mod filters;

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use super::fields::{
    At, Invalid, Parsed, Source, field, gateway_duration, list, port, regex_at, string,
};
use super::model::{
    Forward, HeaderMatch, HttpAction, HttpRule, PathMatch, QueryMatch, RequestMatch, RouteKind,
    RouteRef, ServiceName, TcpRule, ValueMatch,
};

/// Which of the three kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    /// HTTPRoute.
    Http,
    /// GRPCRoute.
    Grpc,
    /// TCPRoute.
    Tcp,
}

/// A route, read: its rules for each Service parent.
#[derive(Debug, Default)]
pub(super) struct GatewayRoute {
    /// The Service parents, each with its `port` (`None`: every port).
    pub parents: Vec<(ServiceName, Option<u16>)>,
    /// Parents left out (the rest apply).
    pub partial: Vec<Invalid>,
    /// HTTP rules, one per match, in rule then match order, each with its precedence.
    pub http: Vec<(Precedence, HttpRule)>,
    /// The TCP rule's weighted backends.
    pub tcp: Option<TcpRule>,
}

/// How specific a match is, by the spec's order (as istiod sorts converted routes:
/// istio/istio `pilot/pkg/config/kube/gateway/conversion.go`, `sortHTTPRoutes`): path kind
/// (exact, then prefix, then regex), path length, a method, more headers, more query
/// parameters. Greater is evaluated first; ties keep the routes' order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Precedence {
    path_kind: u8,
    path_len: usize,
    method: bool,
    headers: usize,
    query: usize,
}

impl Precedence {
    fn of(m: &RequestMatch) -> Precedence {
        let (path_kind, path_len) = match &m.path {
            Some(PathMatch::Exact(p)) => (3, p.len()),
            Some(PathMatch::Prefix(p) | PathMatch::SegmentPrefix(p)) => (2, p.len()),
            Some(PathMatch::Regex(r)) => (1, r.as_str().len()),
            None => (0, 0),
        };
        Precedence {
            path_kind,
            path_len,
            method: m.method.is_some(),
            headers: m.headers.len(),
            query: m.query.len(),
        }
    }
}

/// Reads a route of `kind`; `services` are the Services the state has.
pub(super) fn route(
    source: &Source,
    body: &Value,
    kind: Kind,
    services: &HashSet<ServiceName>,
) -> Parsed<GatewayRoute> {
    let at = At::root("spec");
    let spec = field(body, "spec").unwrap_or(&Value::Null);
    let mut out = GatewayRoute::default();
    for (i, parent) in list(spec, &at, "parentRefs")?.iter().enumerate() {
        let p_at = at.key("parentRefs").index(i);
        let group = string(parent, &p_at, "group")?.unwrap_or("gateway.networking.k8s.io");
        let parent_kind = string(parent, &p_at, "kind")?.unwrap_or("Gateway");
        match (group, parent_kind) {
            ("gateway.networking.k8s.io", "Gateway") => continue,
            ("" | "core", "Service") => {}
            (group, other) => {
                out.partial.push(p_at.invalid(format!(
                    "a parent of kind {other:?} (group {group:?}) is not supported; only Services and Gateways"
                )));
                continue;
            }
        }
        let name = string(parent, &p_at, "name")?
            .ok_or_else(|| p_at.key("name").invalid("a parentRef needs a name"))?;
        let namespace = string(parent, &p_at, "namespace")?.unwrap_or(&source.namespace);
        if namespace != source.namespace {
            out.partial.push(p_at.key("namespace").invalid(
                "a route in another namespace than its Service (a consumer route) is not supported",
            ));
            continue;
        }
        let service = ServiceName::new(namespace, name);
        if !services.contains(&service) {
            out.partial
                .push(p_at.key("name").invalid(format!("no Service {service}")));
            continue;
        }
        out.parents.push((service, port(parent, &p_at, "port")?));
    }
    let rules = list(spec, &at, "rules")?;
    let route_ref = |rule| RouteRef {
        kind: match kind {
            Kind::Http => RouteKind::HttpRoute,
            Kind::Grpc => RouteKind::GrpcRoute,
            Kind::Tcp => RouteKind::TcpRoute,
        },
        namespace: source.namespace.clone(),
        name: source.name.clone(),
        rule,
    };
    if kind == Kind::Tcp {
        if rules.len() > 1 {
            return Err(at.key("rules").invalid(
                "a TCPRoute with more than one rule has nothing to choose between them; use one rule with weighted backendRefs",
            ));
        }
        if let Some(rule) = rules.first() {
            let r_at = at.key("rules").index(0);
            let forward = filters::backends(source, &r_at, rule, services, false)?;
            out.tcp = Some(TcpRule {
                route: route_ref(0),
                port: None,
                backends: forward.backends,
            });
        }
        return Ok(out);
    }
    for (i, rule) in rules.iter().enumerate() {
        let r_at = at.key("rules").index(i);
        let (action, rewrite_needs_prefix) = filters::action(source, &r_at, rule, services, kind)?;
        let matches = match kind {
            Kind::Http => http_matches(&r_at, rule)?,
            _ => grpc_matches(&r_at, rule)?,
        };
        for (j, m) in matches.into_iter().enumerate() {
            if rewrite_needs_prefix && !matches!(m.path, Some(PathMatch::SegmentPrefix(_))) {
                return Err(r_at
                    .key("matches")
                    .index(j)
                    .key("path")
                    .invalid("ReplacePrefixMatch needs a PathPrefix match"));
            }
            out.http.push((
                Precedence::of(&m),
                HttpRule {
                    route: route_ref(i),
                    matches: vec![m],
                    action: action.clone(),
                },
            ));
        }
    }
    Ok(out)
}

/// An HTTPRoute rule's `matches` (none: one that matches every path).
fn http_matches(at: &At, rule: &Value) -> Parsed<Vec<RequestMatch>> {
    let blocks = list(rule, at, "matches")?;
    if blocks.is_empty() {
        return Ok(vec![RequestMatch {
            path: Some(PathMatch::SegmentPrefix("/".into())),
            ..RequestMatch::default()
        }]);
    }
    let mut out = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.iter().enumerate() {
        let m_at = at.key("matches").index(j);
        let mut m = RequestMatch {
            path: Some(match field(block, "path") {
                None => PathMatch::SegmentPrefix("/".into()),
                Some(path) => path_match(&m_at.key("path"), path)?,
            }),
            method: string(block, &m_at, "method")?.map(str::to_owned),
            ..RequestMatch::default()
        };
        m.headers = headers(&m_at, block)?;
        for (k, q) in list(block, &m_at, "queryParams")?.iter().enumerate() {
            let q_at = m_at.key("queryParams").index(k);
            let (name, value) = name_value(&q_at, q)?;
            m.query.push(QueryMatch {
                name: name.to_owned(),
                value: Some(value),
            });
        }
        out.push(m);
    }
    Ok(out)
}

/// `path`: `type` (Exact, PathPrefix — the default —, RegularExpression) and `value` (`/`).
fn path_match(at: &At, path: &Value) -> Parsed<PathMatch> {
    let value = string(path, at, "value")?.unwrap_or("/");
    let kind = string(path, at, "type")?.unwrap_or("PathPrefix");
    if kind != "RegularExpression" && !value.starts_with('/') {
        return Err(at
            .key("value")
            .invalid(format!("{value:?} does not start with /")));
    }
    match kind {
        "Exact" => Ok(PathMatch::Exact(value.to_owned())),
        "PathPrefix" => Ok(PathMatch::SegmentPrefix(value.to_owned())),
        "RegularExpression" => Ok(PathMatch::Regex(regex_at(value, &at.key("value"))?)),
        other => Err(at.key("type").invalid(format!(
            "{other:?} is not a path match type (Exact, PathPrefix, RegularExpression)"
        ))),
    }
}

/// `headers[]`: `type` (Exact — the default — or RegularExpression), `name` (case-insensitive),
/// `value`. A name given twice: the first counts (the spec).
fn headers(at: &At, block: &Value) -> Parsed<Vec<HeaderMatch>> {
    let mut out: Vec<HeaderMatch> = Vec::new();
    for (k, h) in list(block, at, "headers")?.iter().enumerate() {
        let h_at = at.key("headers").index(k);
        let (name, value) = name_value(&h_at, h)?;
        let name = name.to_ascii_lowercase();
        if out.iter().any(|o| o.name == name) {
            continue;
        }
        out.push(HeaderMatch {
            name,
            value: Some(value),
            invert: false,
        });
    }
    Ok(out)
}

/// A header or query match: `name`, `value`, `type` (Exact or RegularExpression).
fn name_value<'a>(at: &At, value: &'a Value) -> Parsed<(&'a str, ValueMatch)> {
    let name = string(value, at, "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| at.key("name").invalid("a name is required"))?;
    let text = string(value, at, "value")?.unwrap_or_default();
    let m = match string(value, at, "type")?.unwrap_or("Exact") {
        "Exact" => ValueMatch::Exact(text.to_owned()),
        "RegularExpression" => ValueMatch::Regex(regex_at(text, &at.key("value"))?),
        other => {
            return Err(at.key("type").invalid(format!(
                "{other:?} is not a match type (Exact, RegularExpression)"
            )));
        }
    };
    Ok((name, m))
}

/// A GRPCRoute rule's `matches`: `method` (service and method, Exact or RegularExpression) as
/// a match on the path `/<service>/<method>` (istiod's conversion), and `headers`.
fn grpc_matches(at: &At, rule: &Value) -> Parsed<Vec<RequestMatch>> {
    let blocks = list(rule, at, "matches")?;
    if blocks.is_empty() {
        return Ok(vec![RequestMatch::default()]);
    }
    let mut out = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.iter().enumerate() {
        let m_at = at.key("matches").index(j);
        let mut m = RequestMatch::default();
        if let Some(method) = field(block, "method") {
            m.path = grpc_path(&m_at.key("method"), method)?;
        }
        m.headers = headers(&m_at, block)?;
        out.push(m);
    }
    Ok(out)
}

/// A gRPC method match as a path match.
fn grpc_path(at: &At, method: &Value) -> Parsed<Option<PathMatch>> {
    let service = string(method, at, "service")?.filter(|s| !s.is_empty());
    let name = string(method, at, "method")?.filter(|s| !s.is_empty());
    match string(method, at, "type")?.unwrap_or("Exact") {
        "Exact" => {
            for (key, part) in [("service", service), ("method", name)] {
                if part.is_some_and(|p| p.contains('/')) {
                    return Err(at.key(key).invalid("must not contain /"));
                }
            }
            Ok(match (service, name) {
                (Some(s), Some(m)) => Some(PathMatch::Exact(format!("/{s}/{m}"))),
                (Some(s), None) => Some(PathMatch::Prefix(format!("/{s}/"))),
                (None, Some(m)) => Some(PathMatch::Regex(regex_at(
                    &format!("/[^/]+/{}", regex::escape(m)),
                    &at.key("method"),
                )?)),
                (None, None) => None,
            })
        }
        "RegularExpression" => {
            let s = service.unwrap_or("[^/]+");
            let m = name.unwrap_or("[^/]+");
            // Each part is checked alone first, so the error names the field at fault.
            if let Some(s) = service {
                regex_at(s, &at.key("service"))?;
            }
            if let Some(m) = name {
                regex_at(m, &at.key("method"))?;
            }
            Ok(Some(PathMatch::Regex(regex_at(
                &format!("/(?:{s})/(?:{m})"),
                at,
            )?)))
        }
        other => Err(at.key("type").invalid(format!(
            "{other:?} is not a method match type (Exact, RegularExpression)"
        ))),
    }
}

/// `timeouts`: `request` (`0s`: none) and `backendRequest` (not longer than `request`); the
/// shorter bounds the one try.
fn timeouts(at: &At, rule: &Value) -> Parsed<Option<Duration>> {
    let Some(timeouts) = field(rule, "timeouts") else {
        return Ok(None);
    };
    let t_at = at.key("timeouts");
    let request = gateway_duration(timeouts, &t_at, "request")?.filter(|d| !d.is_zero());
    let backend = gateway_duration(timeouts, &t_at, "backendRequest")?.filter(|d| !d.is_zero());
    if let (Some(request), Some(backend)) = (request, backend)
        && backend > request
    {
        return Err(t_at
            .key("backendRequest")
            .invalid("backendRequest timeout cannot be longer than request timeout"));
    }
    Ok(match (request, backend) {
        (Some(r), Some(b)) => Some(r.min(b)),
        (r, b) => r.or(b),
    })
}

/// The action a rule's filters and backends make (a redirect, or a forward).
pub(super) fn forward_action(forward: Forward) -> HttpAction {
    HttpAction::Forward(Box::new(forward))
}
