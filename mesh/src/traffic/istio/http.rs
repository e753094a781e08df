//! One VirtualService `http[]` rule: its match blocks, and its action with the policies
//! (rewrite, headers, timeout, retries, fault, mirrors). Field meanings and checks follow
//! istio/istio `pilot/pkg/networking/core/route/route.go` (`TranslateRouteMatch`,
//! `TranslateFault`, `ApplyRedirect`, `MirrorPercent`) and `pkg/config/validation/validation.go`.

use serde_json::Value;

use super::{MESH_GATEWAY, SubsetUse, default_retries, destination, destinations};
use crate::traffic::fields::{
    At, Parsed, Source, boolean, count, field, istio_duration, list, number, object, percent, port,
    regex_at, string, string_map, string_match, strings,
};
use crate::traffic::model::{
    AbortStatus, DirectResponse, Fault, Forward, HeaderMatch, HeaderOps, HttpAction, HttpRule,
    Mirror, PathMatch, PathRewrite, Percent, QueryMatch, Redirect, RequestMatch, RetryOn,
    RetryPolicy, Rewrite, RouteRef, ValueMatch,
};

/// Reads `http[i]`; `None` when none of its match blocks applies to the mesh.
pub(super) fn rule(
    source: &Source,
    at: &At,
    rule: &Value,
    route: RouteRef,
    subsets: &mut Vec<SubsetUse>,
) -> Parsed<Option<HttpRule>> {
    if field(rule, "delegate").is_some() {
        return Err(at
            .key("delegate")
            .invalid("delegate VirtualServices are not supported"));
    }
    let blocks = list(rule, at, "match")?;
    let mut matches = Vec::with_capacity(blocks.len());
    for (j, block) in blocks.iter().enumerate() {
        if let Some(block) = request_match(&at.key("match").index(j), block)? {
            matches.push(block);
        }
    }
    if !blocks.is_empty() && matches.is_empty() {
        return Ok(None);
    }
    let has_route = !list(rule, at, "route")?.is_empty();
    let redirect = field(rule, "redirect");
    let direct = field(rule, "directResponse");
    let action = match (has_route, redirect, direct) {
        (true, Some(_), _) => {
            return Err(at.invalid("HTTP route cannot contain both route and redirect"));
        }
        (true, None, Some(_)) => {
            return Err(at.invalid("HTTP route cannot contain both route and directResponse"));
        }
        (false, Some(_), Some(_)) => {
            return Err(at.invalid("HTTP route cannot contain both redirect and directResponse"));
        }
        (false, Some(r), None) => HttpAction::Redirect(self::redirect(&at.key("redirect"), r)?),
        (false, None, Some(d)) => {
            HttpAction::Respond(direct_response(&at.key("directResponse"), d)?)
        }
        (false, None, None) => {
            return Err(at.invalid("HTTP route, redirect or directResponse is required"));
        }
        (true, None, None) => HttpAction::Forward(Box::new(forward(source, at, rule, subsets)?)),
    };
    Ok(Some(HttpRule {
        route,
        matches,
        action,
    }))
}

/// One match block; `None` when its `gateways` leave the mesh out.
fn request_match(at: &At, block: &Value) -> Parsed<Option<RequestMatch>> {
    let gateways = strings(block, at, "gateways")?;
    if !gateways.is_empty() && !gateways.iter().any(|g| g == MESH_GATEWAY) {
        return Ok(None);
    }
    for unsupported in ["scheme", "statPrefix"] {
        if field(block, unsupported).is_some() {
            return Err(at.key(unsupported).invalid("not supported by marrow"));
        }
    }
    let ignore_case = boolean(block, at, "ignoreUriCase")?.unwrap_or(false);
    let mut out = RequestMatch::default();
    if let Some(uri) = field(block, "uri") {
        out.path = string_match(uri, &at.key("uri"), true)?
            .map(|m| path_match(m, ignore_case, &at.key("uri")))
            .transpose()?;
    }
    if let Some(method) = field(block, "method") {
        out.method = match string_match(method, &at.key("method"), true)? {
            None => None,
            Some(ValueMatch::Exact(m)) => Some(m),
            Some(_) => {
                return Err(at
                    .key("method")
                    .invalid("only an exact method match is supported"));
            }
        };
    }
    if let Some(authority) = field(block, "authority") {
        out.authority = string_match(authority, &at.key("authority"), true)?;
    }
    for (key, invert) in [("headers", false), ("withoutHeaders", true)] {
        for (name, value) in object(block, at, key)? {
            // Istio ignores these keys in `headers` (they are other fields' pseudo-headers).
            if ["uri", "scheme", "method", "authority"].contains(&name.as_str()) {
                continue;
            }
            out.headers.push(HeaderMatch {
                name: name.to_ascii_lowercase(),
                value: string_match(value, &at.key(key).key(name), true)?,
                invert,
            });
        }
    }
    for (name, value) in object(block, at, "queryParams")? {
        out.query.push(QueryMatch {
            name: name.clone(),
            value: string_match(value, &at.key("queryParams").key(name), false)?,
        });
    }
    out.port = port(block, at, "port")?;
    out.source_labels = string_map(block, at, "sourceLabels")?;
    out.source_namespace = string(block, at, "sourceNamespace")?.map(str::to_owned);
    Ok(Some(out))
}

/// A `uri` StringMatch as a path match; `ignoreUriCase` turns it into a case-insensitive
/// regex of the same meaning.
fn path_match(m: ValueMatch, ignore_case: bool, at: &At) -> Parsed<PathMatch> {
    if !ignore_case {
        return Ok(match m {
            ValueMatch::Exact(e) => PathMatch::Exact(e),
            ValueMatch::Prefix(p) => PathMatch::Prefix(p),
            ValueMatch::Regex(r) => PathMatch::Regex(r),
        });
    }
    let source = match &m {
        ValueMatch::Exact(e) => format!("(?i){}", regex::escape(e)),
        ValueMatch::Prefix(p) => format!("(?i){}.*", regex::escape(p)),
        ValueMatch::Regex(r) => format!("(?i)(?:{})", r.as_str()),
    };
    Ok(PathMatch::Regex(regex_at(&source, at)?))
}

/// `headers.request` / `headers.response`: set, add, remove.
pub(super) fn header_ops(headers: &Value, at: &At, key: &str) -> Parsed<HeaderOps> {
    let Some(ops) = field(headers, key) else {
        return Ok(HeaderOps::default());
    };
    let at = at.key(key);
    let pairs = |name: &str| -> Parsed<Vec<(String, String)>> {
        Ok(string_map(ops, &at, name)?
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect())
    };
    Ok(HeaderOps {
        set: pairs("set")?,
        add: pairs("add")?,
        remove: strings(ops, &at, "remove")?
            .into_iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    })
}

/// A forwarding rule and its policies.
fn forward(
    source: &Source,
    at: &At,
    rule: &Value,
    subsets: &mut Vec<SubsetUse>,
) -> Parsed<Forward> {
    let mut out = Forward {
        backends: destinations(source, at, rule, subsets)?,
        timeout: istio_duration(rule, at, "timeout")?,
        ..Forward::default()
    };
    if let Some(headers) = field(rule, "headers") {
        out.request_headers = header_ops(headers, &at.key("headers"), "request")?;
        out.response_headers = header_ops(headers, &at.key("headers"), "response")?;
    }
    if let Some(rewrite) = field(rule, "rewrite") {
        out.rewrite = self::rewrite(&at.key("rewrite"), rewrite)?;
    }
    out.retries = match field(rule, "retries") {
        None => Some(default_retries()),
        Some(retries) => self::retries(&at.key("retries"), retries)?,
    };
    if let Some(fault) = field(rule, "fault") {
        out.fault = Some(self::fault(&at.key("fault"), fault)?);
    }
    if let Some(mirror) = field(rule, "mirror") {
        let backend = destination(source, &at.key("mirror"), Some(mirror), subsets)?;
        // `mirrorPercentage` (a double), else the deprecated whole `mirrorPercent`, else all
        // (`MirrorPercent`).
        let percent = match (
            field(rule, "mirrorPercentage"),
            field(rule, "mirrorPercent"),
        ) {
            (Some(p), _) => percentage_value(&at.key("mirrorPercentage"), p)?,
            (None, Some(p)) => percent(p, &at.key("mirrorPercent"))?,
            (None, None) => Percent(100.0),
        };
        out.mirrors.push(Mirror { backend, percent });
    }
    for (i, mirror) in list(rule, at, "mirrors")?.iter().enumerate() {
        let mirror_at = at.key("mirrors").index(i);
        let backend = destination(
            source,
            &mirror_at.key("destination"),
            field(mirror, "destination"),
            subsets,
        )?;
        let percent = match field(mirror, "percentage") {
            Some(p) => percentage_value(&mirror_at.key("percentage"), p)?,
            None => Percent(100.0),
        };
        out.mirrors.push(Mirror { backend, percent });
    }
    Ok(out)
}

/// A `Percent` object (`{value: 12.5}`).
fn percentage_value(at: &At, value: &Value) -> Parsed<Percent> {
    match field(value, "value") {
        Some(v) => percent(v, &at.key("value")),
        None => Ok(Percent(0.0)),
    }
}

/// `rewrite`: `uri` (the matched prefix replaced) or `uriRegexRewrite`, and `authority`.
fn rewrite(at: &At, value: &Value) -> Parsed<Rewrite> {
    let uri = string(value, at, "uri")?;
    let regex = field(value, "uriRegexRewrite");
    let path = match (uri, regex) {
        (Some(_), Some(_)) => {
            return Err(at.invalid("rewrite may only contain one of uri or uriRegexRewrite"));
        }
        (Some(uri), None) => Some(PathRewrite::Prefix(uri.to_owned())),
        (None, Some(r)) => {
            let r_at = at.key("uriRegexRewrite");
            let pattern = string(r, &r_at, "match")?
                .ok_or_else(|| r_at.key("match").invalid("a pattern is required"))?;
            Some(PathRewrite::Regex {
                pattern: regex_at(pattern, &r_at.key("match"))?,
                substitution: string(r, &r_at, "rewrite")?.unwrap_or_default().to_owned(),
            })
        }
        (None, None) => None,
    };
    Ok(Rewrite {
        path,
        authority: string(value, at, "authority")?.map(str::to_owned),
    })
}

/// `retries`: `attempts` 0 (or absent) disables; otherwise Istio's default policy with the
/// fields given (`ConvertPolicy`): `retryOn` replaces the conditions and the codes (numbers in
/// it are codes, and imply `retriable-status-codes`), `perTryTimeout` bounds each try.
fn retries(at: &At, value: &Value) -> Parsed<Option<RetryPolicy>> {
    let attempts = count(value, at, "attempts")?.unwrap_or(0);
    if attempts == 0 {
        return Ok(None);
    }
    let mut policy = default_retries();
    policy.attempts = attempts;
    policy.per_try_timeout = istio_duration(value, at, "perTryTimeout")?;
    if let Some(text) = string(value, at, "retryOn")?
        && !text.trim().is_empty()
    {
        let (retry_on, codes) = retry_on(&at.key("retryOn"), text)?;
        policy.retry_on = retry_on;
        policy.status_codes = codes;
    }
    Ok(Some(policy))
}

/// Envoy's `retry_on` list as Istio takes it: names, and HTTP status codes.
pub(crate) fn retry_on(at: &At, text: &str) -> Parsed<(RetryOn, Vec<u16>)> {
    let mut on = RetryOn::default();
    let mut codes = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Ok(code) = part.parse::<u16>() {
            if !(100..=599).contains(&code) {
                return Err(at.invalid(format!("{part:?} is not an HTTP status code")));
            }
            codes.push(code);
            continue;
        }
        let flag = match part {
            "5xx" => &mut on.five_xx,
            "gateway-error" => &mut on.gateway_error,
            "connect-failure" => &mut on.connect_failure,
            "refused-stream" => &mut on.refused_stream,
            "reset" => &mut on.reset,
            "retriable-4xx" => &mut on.retriable_4xx,
            "retriable-status-codes" => &mut on.retriable_status_codes,
            "cancelled" => &mut on.grpc_cancelled,
            "deadline-exceeded" => &mut on.grpc_deadline_exceeded,
            "resource-exhausted" => &mut on.grpc_resource_exhausted,
            "unavailable" => &mut on.grpc_unavailable,
            "reset-before-request"
            | "envoy-ratelimited"
            | "retriable-headers"
            | "http3-post-connect-failure"
            | "internal" => {
                return Err(at.invalid(format!(
                    "retry condition {part:?} is not supported by marrow"
                )));
            }
            _ => return Err(at.invalid(format!("{part:?} is not a valid retryOn policy"))),
        };
        *flag = true;
    }
    if !codes.is_empty() {
        on.retriable_status_codes = true;
    }
    Ok((on, codes))
}

/// `fault`: `delay` (fixedDelay) and `abort` (httpStatus or grpcStatus), each at its
/// `percentage` (or the deprecated whole `percent`); unspecified, no request is affected.
fn fault(at: &At, value: &Value) -> Parsed<Fault> {
    let share = |v: &Value, at: &At| -> Parsed<Percent> {
        match (field(v, "percentage"), field(v, "percent")) {
            (Some(p), _) => percentage_value(&at.key("percentage"), p),
            (None, Some(p)) => percent(p, &at.key("percent")),
            (None, None) => Ok(Percent(0.0)),
        }
    };
    let mut out = Fault::default();
    if let Some(delay) = field(value, "delay") {
        let d_at = at.key("delay");
        if field(delay, "exponentialDelay").is_some() {
            return Err(d_at
                .key("exponentialDelay")
                .invalid("not supported (Istio does not either)"));
        }
        let fixed = istio_duration(delay, &d_at, "fixedDelay")?
            .ok_or_else(|| d_at.key("fixedDelay").invalid("a delay needs fixedDelay"))?;
        out.delay = Some((fixed, share(delay, &d_at)?));
    }
    if let Some(abort) = field(value, "abort") {
        let a_at = at.key("abort");
        if field(abort, "http2Error").is_some() {
            return Err(a_at.key("http2Error").invalid("not supported by marrow"));
        }
        let status = match (
            field(abort, "httpStatus"),
            string(abort, &a_at, "grpcStatus")?,
        ) {
            (Some(_), Some(_)) => {
                return Err(a_at.invalid("only one of httpStatus and grpcStatus"));
            }
            (Some(_), None) => {
                let code = number(abort, &a_at, "httpStatus", 599)?.unwrap_or(0);
                if code < 200 {
                    return Err(a_at
                        .key("httpStatus")
                        .invalid(format!("{code} is not an HTTP status from 200 to 599")));
                }
                AbortStatus::Http(u16::try_from(code).unwrap_or(500))
            }
            (None, Some(name)) => AbortStatus::Grpc(grpc_code(name).ok_or_else(|| {
                a_at.key("grpcStatus").invalid(format!(
                    "{name:?} is not a gRPC status (UNAVAILABLE, NOT_FOUND, …)"
                ))
            })?),
            (None, None) => return Err(a_at.invalid("an abort needs httpStatus or grpcStatus")),
        };
        out.abort = Some((status, share(abort, &a_at)?));
    }
    Ok(out)
}

/// A gRPC status by its name (as Istio asks: `UNAVAILABLE`, not 14) or number.
fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES
        .iter()
        .position(|n| *n == name)
        .and_then(|i| u32::try_from(i).ok())
        .or_else(|| name.parse().ok().filter(|n| *n <= 16))
}

/// `redirect`: `uri` (the whole path), `authority`, `port`, `scheme`, `redirectCode` (301).
fn redirect(at: &At, value: &Value) -> Parsed<Redirect> {
    let status = number(value, at, "redirectCode", 999)?.unwrap_or(301);
    if ![301, 302, 303, 307, 308].contains(&status) {
        return Err(at.key("redirectCode").invalid(format!(
            "{status} is not a redirect status (301, 302, 303, 307, 308)"
        )));
    }
    Ok(Redirect {
        scheme: string(value, at, "scheme")?.map(str::to_owned),
        hostname: string(value, at, "authority")?.map(str::to_owned),
        port: port(value, at, "port")?,
        path: string(value, at, "uri")?.map(|u| PathRewrite::Full(u.to_owned())),
        status: u16::try_from(status).unwrap_or(301),
    })
}

/// `directResponse`: a status from 200 to 599 and an optional string body.
fn direct_response(at: &At, value: &Value) -> Parsed<DirectResponse> {
    let status = number(value, at, "status", 599)?
        .ok_or_else(|| at.key("status").invalid("a direct response needs a status"))?;
    if status < 200 {
        return Err(at
            .key("status")
            .invalid(format!("{status} is not an HTTP status from 200 to 599")));
    }
    let body = match field(value, "body") {
        None => None,
        Some(body) => {
            if field(body, "bytes").is_some() {
                return Err(at
                    .key("body")
                    .key("bytes")
                    .invalid("a binary body is not supported; use string"));
            }
            string(body, &at.key("body"), "string")?.map(str::to_owned)
        }
    };
    Ok(DirectResponse {
        status: u16::try_from(status).unwrap_or(500),
        body,
    })
}
