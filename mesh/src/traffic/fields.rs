//! Reading the fields of a route object's JSON, shared by the parsers: where a field is (its
//! path, for the refusal), typed getters that refuse a wrong type, Istio's and the Gateway API's
//! duration formats, percentages, Istio's `StringMatch`, and how a host names a Service.
//!
//! Every getter treats an absent field and `null` alike (Kubernetes drops nulls on write; a
//! state file may keep them).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::model::{FullRegex, Percent, ServiceName, ValueMatch};

/// A field refused: where, and why. The parser that meets it refuses its whole object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub(super) struct Invalid {
    /// The field's path (`spec.http[0].match[1].uri.regex`).
    pub field: String,
    /// Why.
    pub reason: String,
}

/// What a parser returns.
pub(super) type Parsed<T> = Result<T, Invalid>;

/// A field's path, grown as a parser descends.
#[derive(Clone, Debug)]
pub(super) struct At(String);

impl At {
    /// The path `root` (`spec`).
    pub fn root(root: &str) -> At {
        At(root.to_owned())
    }

    /// `<self>.<key>`.
    pub fn key(&self, key: &str) -> At {
        At(format!("{}.{key}", self.0))
    }

    /// `<self>[<index>]`.
    pub fn index(&self, index: usize) -> At {
        At(format!("{}[{index}]", self.0))
    }

    /// A refusal of this field.
    pub fn invalid(&self, reason: impl Into<String>) -> Invalid {
        Invalid {
            field: self.0.clone(),
            reason: reason.into(),
        }
    }

    /// The path as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `value[key]`, absent when missing or null.
pub(super) fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.get(key).filter(|v| !v.is_null())
}

/// A string field.
pub(super) fn string<'a>(value: &'a Value, at: &At, key: &str) -> Parsed<Option<&'a str>> {
    match field(value, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(at.key(key).invalid("not a string")),
    }
}

/// A boolean field.
pub(super) fn boolean(value: &Value, at: &At, key: &str) -> Parsed<Option<bool>> {
    match field(value, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(at.key(key).invalid("not a boolean")),
    }
}

/// A whole number field, `0..=max`.
pub(super) fn number(value: &Value, at: &At, key: &str, max: u64) -> Parsed<Option<u64>> {
    match field(value, key) {
        None => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(Some(n)),
            _ => Err(at
                .key(key)
                .invalid(format!("{v} is not a whole number from 0 to {max}"))),
        },
    }
}

/// A `u32` field.
pub(super) fn count(value: &Value, at: &At, key: &str) -> Parsed<Option<u32>> {
    Ok(number(value, at, key, u64::from(u32::MAX))?.and_then(|n| u32::try_from(n).ok()))
}

/// A port number field (1..=65535).
pub(super) fn port(value: &Value, at: &At, key: &str) -> Parsed<Option<u16>> {
    match number(value, at, key, 65535)? {
        None => Ok(None),
        Some(0) => Err(at.key(key).invalid("port 0 is not a port")),
        Some(n) => Ok(u16::try_from(n).ok()),
    }
}

/// A list field (absent: empty).
pub(super) fn list<'a>(value: &'a Value, at: &At, key: &str) -> Parsed<&'a [Value]> {
    match field(value, key) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(at.key(key).invalid("not a list")),
    }
}

/// An object field, as its entries (absent: none).
pub(super) fn object<'a>(
    value: &'a Value,
    at: &At,
    key: &str,
) -> Parsed<Vec<(&'a String, &'a Value)>> {
    match field(value, key) {
        None => Ok(Vec::new()),
        Some(Value::Object(map)) => Ok(map.iter().collect()),
        Some(_) => Err(at.key(key).invalid("not an object")),
    }
}

/// A map of strings (labels).
pub(super) fn string_map(value: &Value, at: &At, key: &str) -> Parsed<BTreeMap<String, String>> {
    object(value, at, key)?
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(at.key(key).key(k).invalid("not a string")),
        })
        .collect()
}

/// A list of strings.
pub(super) fn strings(value: &Value, at: &At, key: &str) -> Parsed<Vec<String>> {
    list(value, at, key)?
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(at.key(key).index(i).invalid("not a string")),
        })
        .collect()
}

/// Istio's duration (`protobuf.Duration` written as the CRD's CEL `duration()` reads it, which
/// is Go's `time.ParseDuration`: `10s`, `0.5s`, `100ms`, `1m30s`), at least 1 ms (the CRD's
/// rule `duration(self) >= duration('1ms')`, istio/api `kubernetes/customresourcedefinitions.gen.yaml`).
pub(super) fn istio_duration(value: &Value, at: &At, key: &str) -> Parsed<Option<Duration>> {
    let Some(text) = string(value, at, key)? else {
        return Ok(None);
    };
    let at = at.key(key);
    let parsed = go_duration(text).ok_or_else(|| {
        at.invalid(format!(
            "{text:?} is not a duration (a number and a unit: h, m, s, ms, us, ns; e.g. 1.5s, 100ms)"
        ))
    })?;
    if parsed < Duration::from_millis(1) {
        return Err(at.invalid(format!("{text:?} is under the minimum of 1ms")));
    }
    Ok(Some(parsed))
}

/// Go's `time.ParseDuration` for non-negative durations: one or more `<decimal><unit>`.
fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        if number.is_empty() || number == "." {
            return None;
        }
        let number: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += number * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The Gateway API's duration (GEP-2257: `^([0-9]{1,5}(h|m|s|ms)){1,4}$`); `0s` is zero.
pub(super) fn gateway_duration(value: &Value, at: &At, key: &str) -> Parsed<Option<Duration>> {
    let Some(text) = string(value, at, key)? else {
        return Ok(None);
    };
    let bad = || {
        at.key(key).invalid(format!(
            "{text:?} is not a Gateway API duration (1 to 4 of 1-5 digits and h, m, s or ms; e.g. 1h30m, 500ms)"
        ))
    };
    let mut rest = text;
    let mut parts = 0;
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(number).map_err(|_| bad())?;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(Some(total))
}

/// A percentage, 0 to 100.
pub(super) fn percent(value: &Value, at: &At) -> Parsed<Percent> {
    match value.as_f64() {
        Some(p) if (0.0..=100.0).contains(&p) => Ok(Percent(p)),
        _ => Err(at.invalid(format!("{value} is not a percentage from 0 to 100"))),
    }
}

/// Istio's `StringMatch`: exactly one of `exact`, `prefix`, `regex`; `{}` (no value) means
/// "present" where the field allows it. `prefix_ok`: whether a prefix is accepted.
pub(super) fn string_match(value: &Value, at: &At, prefix_ok: bool) -> Parsed<Option<ValueMatch>> {
    if !value.is_object() {
        return Err(at.invalid("not an object (exact, prefix or regex)"));
    }
    let exact = string(value, at, "exact")?;
    let prefix = string(value, at, "prefix")?;
    let regex = string(value, at, "regex")?;
    match (exact, prefix, regex) {
        (None, None, None) => Ok(None),
        (Some(e), None, None) => Ok(Some(ValueMatch::Exact(e.to_owned()))),
        (None, Some(p), None) if prefix_ok => Ok(Some(ValueMatch::Prefix(p.to_owned()))),
        (None, Some(_), None) => Err(at
            .key("prefix")
            .invalid("a prefix match is not supported here")),
        (None, None, Some(r)) => Ok(Some(ValueMatch::Regex(regex_at(r, &at.key("regex"))?))),
        _ => Err(at.invalid("more than one of exact, prefix and regex")),
    }
}

/// A regex that must compile (RE2 syntax, as Envoy's `safe_regex`).
pub(super) fn regex_at(source: &str, at: &At) -> Parsed<FullRegex> {
    FullRegex::new(source).map_err(|e| at.invalid(format!("{source:?} is not a valid regex: {e}")))
}

/// The Service an Istio host names, seen from `namespace`: `name` (that namespace),
/// `name.ns`, `name.ns.svc`, `name.ns.svc.cluster.local`. Why not, otherwise.
pub(super) fn istio_host(host: &str, namespace: &str) -> Result<ServiceName, String> {
    if host.contains('*') {
        return Err(format!(
            "{host:?} is a wildcard; a route here applies to one Service at a time"
        ));
    }
    let labels: Vec<&str> = host.split('.').collect();
    if labels.iter().any(|l| l.is_empty()) {
        return Err(format!("{host:?} is not a host name"));
    }
    match labels.as_slice() {
        [name] => Ok(ServiceName::new(namespace, *name)),
        [name, ns] | [name, ns, "svc"] | [name, ns, "svc", "cluster", "local"] => {
            Ok(ServiceName::new(*ns, *name))
        }
        _ => Err(format!(
            "{host:?} names no Service (name, name.namespace, name.namespace.svc or name.namespace.svc.cluster.local)"
        )),
    }
}

/// The object a parser reads: its kind, namespace and name, and its age.
#[derive(Clone, Debug)]
pub(super) struct Source {
    /// `VirtualService`, `HTTPRoute`, …
    pub kind: &'static str,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.creationTimestamp` (RFC 3339 text sorts by time; absent sorts first).
    pub created: String,
}

impl Source {
    /// The refusal of this object for `invalid`.
    pub fn refusal(&self, invalid: Invalid) -> super::model::Refusal {
        super::model::Refusal {
            kind: self.kind.to_owned(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            field: invalid.field,
            reason: invalid.reason,
        }
    }
}
