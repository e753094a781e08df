//! A Gateway API rule's filters and backendRefs: what the rule does. Filter meanings follow
//! the spec (kubernetes-sigs/gateway-api `apis/v1/httproute_types.go`): RequestHeaderModifier,
//! ResponseHeaderModifier, RequestRedirect (default 302), URLRewrite (ReplaceFullPath,
//! ReplacePrefixMatch, hostname), RequestMirror (`percent` or `fraction`), each at most once
//! except mirrors; a redirect and a rewrite never together.

use std::collections::HashSet;

use serde_json::Value;

use super::{Kind, timeouts};
use crate::traffic::fields::{At, Parsed, Source, field, list, number, port, string};
use crate::traffic::model::{
    Backend, Forward, HeaderOps, HttpAction, Mirror, PathRewrite, Percent, Redirect, Rewrite,
    ServiceName,
};

/// What a rule does; and whether a `ReplacePrefixMatch` needs its matches to be prefixes.
pub(super) fn action(
    source: &Source,
    at: &At,
    rule: &Value,
    services: &HashSet<ServiceName>,
    kind: Kind,
) -> Parsed<(HttpAction, bool)> {
    // The standard has no retries; istiod converts a route to a VirtualService route without
    // any, which `retry.ConvertPolicy(nil)` turns into Istio's default policy
    // (pilot/pkg/networking/core/route/retry/retry.go), so a Gateway API route retries as a
    // VirtualService route without `retries` does.
    let mut forward = Forward {
        retries: Some(super::super::default_retries()),
        ..Forward::default()
    };
    let mut redirect: Option<Redirect> = None;
    let mut rewrite: Option<Rewrite> = None;
    let mut needs_prefix = false;
    let mut seen: Vec<&str> = Vec::new();
    for (i, filter) in list(rule, at, "filters")?.iter().enumerate() {
        let f_at = at.key("filters").index(i);
        let filter_type = string(filter, &f_at, "type")?
            .ok_or_else(|| f_at.key("type").invalid("a filter needs a type"))?;
        if filter_type != "RequestMirror" && seen.contains(&filter_type) {
            return Err(f_at
                .key("type")
                .invalid(format!("filter {filter_type} given twice")));
        }
        seen.push(filter_type);
        let grpc_ok = matches!(
            filter_type,
            "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror"
        );
        if kind == Kind::Grpc && !grpc_ok {
            return Err(f_at
                .key("type")
                .invalid(format!("{filter_type} is not a GRPCRoute filter")));
        }
        match filter_type {
            "RequestHeaderModifier" => {
                forward.request_headers = header_modifier(&f_at, filter, "requestHeaderModifier")?;
            }
            "ResponseHeaderModifier" => {
                forward.response_headers =
                    header_modifier(&f_at, filter, "responseHeaderModifier")?;
            }
            "RequestRedirect" => {
                let (r, prefix) = request_redirect(
                    &f_at.key("requestRedirect"),
                    field(filter, "requestRedirect"),
                )?;
                needs_prefix |= prefix;
                redirect = Some(r);
            }
            "URLRewrite" => {
                let (r, prefix) =
                    url_rewrite(&f_at.key("urlRewrite"), field(filter, "urlRewrite"))?;
                needs_prefix |= prefix;
                rewrite = Some(r);
            }
            "RequestMirror" => {
                forward.mirrors.push(mirror(
                    source,
                    &f_at.key("requestMirror"),
                    field(filter, "requestMirror"),
                    services,
                )?);
            }
            other => {
                return Err(f_at
                    .key("type")
                    .invalid(format!("filter {other} is not supported by marrow")));
            }
        }
    }
    if let Some(redirect) = redirect {
        if rewrite.is_some() {
            return Err(at
                .key("filters")
                .invalid("RequestRedirect and URLRewrite cannot both be given"));
        }
        return Ok((HttpAction::Redirect(redirect), needs_prefix));
    }
    let backends = backends(source, at, rule, services, true)?;
    forward.backends = backends.backends;
    forward.invalid_backends = backends.invalid_backends;
    forward.rewrite = rewrite.unwrap_or_default();
    if kind == Kind::Http {
        forward.timeout = timeouts(at, rule)?;
    }
    Ok((super::forward_action(forward), needs_prefix))
}

/// `backendRefs[]`: Services by name, namespace (the route's), port (required) and weight
/// (default 1; 0 receives nothing). With `filters`, each backend's header modifiers.
pub(super) fn backends(
    source: &Source,
    at: &At,
    rule: &Value,
    services: &HashSet<ServiceName>,
    filters: bool,
) -> Parsed<Forward> {
    let mut out = Forward::default();
    for (i, r) in list(rule, at, "backendRefs")?.iter().enumerate() {
        let b_at = at.key("backendRefs").index(i);
        let weight = number(r, &b_at, "weight", 1_000_000)?.unwrap_or(1);
        let (service, port, resolvable) = backend_ref(source, &b_at, r, services)?;
        let mut backend = Backend {
            service,
            port,
            subset: None,
            weight: u32::try_from(weight).unwrap_or(0),
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        };
        for (k, filter) in list(r, &b_at, "filters")?.iter().enumerate() {
            let f_at = b_at.key("filters").index(k);
            match string(filter, &f_at, "type")? {
                Some("RequestHeaderModifier") if filters => {
                    backend.request_headers =
                        header_modifier(&f_at, filter, "requestHeaderModifier")?;
                }
                Some("ResponseHeaderModifier") if filters => {
                    backend.response_headers =
                        header_modifier(&f_at, filter, "responseHeaderModifier")?;
                }
                other => {
                    return Err(f_at.key("type").invalid(format!(
                        "backendRef filter {} is not supported (only the header modifiers)",
                        other.unwrap_or("<none>")
                    )));
                }
            }
        }
        if backend.weight == 0 {
            continue;
        }
        if !resolvable {
            out.invalid_backends.push(out.backends.len());
        }
        out.backends.push(backend);
    }
    Ok(out)
}

/// A `backendRef` (or a mirror's): the Service it names, its port, and whether it resolves.
fn backend_ref(
    source: &Source,
    at: &At,
    r: &Value,
    services: &HashSet<ServiceName>,
) -> Parsed<(ServiceName, Option<u16>, bool)> {
    let group = string(r, at, "group")?.unwrap_or("");
    let kind = string(r, at, "kind")?.unwrap_or("Service");
    let name = string(r, at, "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| at.key("name").invalid("a backendRef needs a name"))?;
    let namespace = string(r, at, "namespace")?.unwrap_or(&source.namespace);
    let is_service = matches!(group, "" | "core") && kind == "Service";
    let port = port(r, at, "port")?;
    if is_service && port.is_none() {
        return Err(at.key("port").invalid("a Service backendRef needs a port"));
    }
    let service = ServiceName::new(namespace, name);
    let resolvable = is_service && namespace == source.namespace && services.contains(&service);
    Ok((service, port, resolvable))
}

/// A header modifier: `set` and `add` as `{name, value}` lists, `remove` as names.
fn header_modifier(at: &At, filter: &Value, key: &str) -> Parsed<HeaderOps> {
    let at = at.key(key);
    let Some(modifier) = field(filter, key) else {
        return Err(at.invalid("the filter's settings are missing"));
    };
    let pairs = |name: &str| -> Parsed<Vec<(String, String)>> {
        list(modifier, &at, name)?
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let h_at = at.key(name).index(i);
                let header = string(h, &h_at, "name")?
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| h_at.key("name").invalid("a header name is required"))?;
                Ok((
                    header.to_ascii_lowercase(),
                    string(h, &h_at, "value")?.unwrap_or_default().to_owned(),
                ))
            })
            .collect()
    };
    Ok(HeaderOps {
        set: pairs("set")?,
        add: pairs("add")?,
        remove: crate::traffic::fields::strings(modifier, &at, "remove")?
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    })
}

/// A path modifier (`ReplaceFullPath` or `ReplacePrefixMatch`); whether it is the latter.
fn path_modifier(at: &At, path: &Value) -> Parsed<(PathRewrite, bool)> {
    match string(path, at, "type")? {
        Some("ReplaceFullPath") => Ok((
            PathRewrite::Full(
                string(path, at, "replaceFullPath")?
                    .ok_or_else(|| at.key("replaceFullPath").invalid("required by its type"))?
                    .to_owned(),
            ),
            false,
        )),
        Some("ReplacePrefixMatch") => Ok((
            PathRewrite::Prefix(
                string(path, at, "replacePrefixMatch")?
                    .ok_or_else(|| at.key("replacePrefixMatch").invalid("required by its type"))?
                    .to_owned(),
            ),
            true,
        )),
        other => Err(at.key("type").invalid(format!(
            "{} is not a path modifier (ReplaceFullPath, ReplacePrefixMatch)",
            other.unwrap_or("<none>")
        ))),
    }
}

/// `requestRedirect`: scheme, hostname, path, port, statusCode (301 or 302; 302 by default).
fn request_redirect(at: &At, value: Option<&Value>) -> Parsed<(Redirect, bool)> {
    let Some(value) = value else {
        return Err(at.invalid("the filter's settings are missing"));
    };
    let status = number(value, at, "statusCode", 999)?.unwrap_or(302);
    if status != 301 && status != 302 {
        return Err(at
            .key("statusCode")
            .invalid(format!("{status} is not 301 or 302")));
    }
    let scheme = string(value, at, "scheme")?;
    if let Some(scheme) = scheme
        && scheme != "http"
        && scheme != "https"
    {
        return Err(at
            .key("scheme")
            .invalid(format!("{scheme:?} is not http or https")));
    }
    let (path, prefix) = match field(value, "path") {
        Some(p) => {
            let (p, prefix) = path_modifier(&at.key("path"), p)?;
            (Some(p), prefix)
        }
        None => (None, false),
    };
    Ok((
        Redirect {
            scheme: scheme.map(str::to_owned),
            hostname: string(value, at, "hostname")?.map(str::to_owned),
            port: port(value, at, "port")?,
            path,
            status: u16::try_from(status).unwrap_or(302),
        },
        prefix,
    ))
}

/// `urlRewrite`: hostname and path.
fn url_rewrite(at: &At, value: Option<&Value>) -> Parsed<(Rewrite, bool)> {
    let Some(value) = value else {
        return Err(at.invalid("the filter's settings are missing"));
    };
    let (path, prefix) = match field(value, "path") {
        Some(p) => {
            let (p, prefix) = path_modifier(&at.key("path"), p)?;
            (Some(p), prefix)
        }
        None => (None, false),
    };
    Ok((
        Rewrite {
            path,
            authority: string(value, at, "hostname")?.map(str::to_owned),
        },
        prefix,
    ))
}

/// `requestMirror`: a backendRef and the share mirrored (`percent`, or `fraction`
/// numerator/denominator with denominator 100 by default; all when neither).
fn mirror(
    source: &Source,
    at: &At,
    value: Option<&Value>,
    services: &HashSet<ServiceName>,
) -> Parsed<Mirror> {
    let Some(value) = value else {
        return Err(at.invalid("the filter's settings are missing"));
    };
    let r_at = at.key("backendRef");
    let r =
        field(value, "backendRef").ok_or_else(|| r_at.invalid("a mirror needs a backendRef"))?;
    let (service, port, resolvable) = backend_ref(source, &r_at, r, services)?;
    if !resolvable {
        return Err(r_at.invalid(format!("the mirror's Service {service} cannot be resolved")));
    }
    let percent = match (field(value, "percent"), field(value, "fraction")) {
        (Some(_), Some(_)) => return Err(at.invalid("only one of percent and fraction")),
        (Some(_), None) => Percent(number(value, at, "percent", 100)?.unwrap_or(100) as f64),
        (None, Some(fraction)) => {
            let f_at = at.key("fraction");
            let numerator = number(fraction, &f_at, "numerator", u64::from(u32::MAX))?.unwrap_or(0);
            let denominator =
                number(fraction, &f_at, "denominator", u64::from(u32::MAX))?.unwrap_or(100);
            if denominator == 0 || numerator > denominator {
                return Err(f_at.invalid("numerator must be from 0 to the denominator (above 0)"));
            }
            Percent(numerator as f64 * 100.0 / denominator as f64)
        }
        (None, None) => Percent(100.0),
    };
    Ok(Mirror {
        backend: Backend {
            service,
            port,
            subset: None,
            weight: 0,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        },
        percent,
    })
}
