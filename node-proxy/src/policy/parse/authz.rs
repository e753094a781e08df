//! AuthorizationPolicy documents: action, selector, rules; L7-only fields are recorded and
//! dropped, AUDIT and CUSTOM refused.

use serde_json::{Map, Value};

use super::{AUTHZ, Doc, ParseError, pattern};
use crate::policy::model::{Action, AuthorizationPolicy, Condition, Operation, Rule, Source};

/// `when` keys that only an L7 proxy can check; `request.*` is matched by prefix.
const L7_CONDITION_KEYS: &[&str] = &["remote.ip", "connection.sni"];
/// Source fields that only an L7 proxy can check.
const L7_SOURCE_FIELDS: &[&str] = &[
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];
/// Operation fields that only an L7 proxy can check.
const L7_OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];

/// Parses an AuthorizationPolicy object.
pub fn authorization_policy(body: &Value) -> Result<AuthorizationPolicy, ParseError> {
    let doc = Doc::new(AUTHZ, body)?;
    let empty = Map::new();
    let spec = doc.object(&body["spec"], "spec")?.unwrap_or(&empty);
    let action = match spec.get("action") {
        None | Some(Value::Null) => Action::Allow,
        Some(Value::String(a)) => match a.as_str() {
            "ALLOW" | "" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" | "CUSTOM" => {
                return Err(ParseError::UnsupportedAction {
                    kind: AUTHZ,
                    policy: doc.policy.clone(),
                    field: "action".to_owned(),
                    value: a.clone(),
                });
            }
            _ => {
                return Err(ParseError::UnknownAction {
                    kind: AUTHZ,
                    policy: doc.policy.clone(),
                    field: "action".to_owned(),
                    value: a.clone(),
                });
            }
        },
        Some(_) => return Err(doc.wrong_type("action", "a string")),
    };
    let selector = doc.selector(spec)?;
    let targets_waypoint = ["targetRef", "targetRefs"]
        .iter()
        .any(|k| spec.get(*k).is_some_and(|v| !v.is_null()));
    if targets_waypoint && selector.is_some() {
        return Err(ParseError::Conflict {
            kind: AUTHZ,
            policy: doc.policy.clone(),
            field: "selector".to_owned(),
            other: "targetRefs",
        });
    }
    let rules = doc
        .list(spec.get("rules"), "rules")?
        .iter()
        .enumerate()
        .map(|(i, r)| rule(&doc, r, &format!("rules[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(AuthorizationPolicy {
        namespace: doc.policy.namespace,
        name: doc.policy.name,
        selector,
        action,
        rules,
        targets_waypoint,
    })
}

fn rule(doc: &Doc, value: &Value, at: &str) -> Result<Rule, ParseError> {
    let empty = Map::new();
    let map = doc.object(value, at)?.unwrap_or(&empty);
    let mut rule = Rule::default();
    for (i, from) in doc
        .list(map.get("from"), &format!("{at}.from"))?
        .iter()
        .enumerate()
    {
        let item = format!("{at}.from[{i}]");
        let from = doc.object(from, &item)?;
        let at = format!("{item}.source");
        let source = from.and_then(|f| f.get("source")).unwrap_or(&Value::Null);
        let source = doc.object(source, &at)?.unwrap_or(&empty);
        rule.from.push(Source {
            principals: doc.pair(source, &at, "principals", pattern)?,
            namespaces: doc.pair(source, &at, "namespaces", pattern)?,
            service_accounts: doc.pair(source, &at, "serviceAccounts", Doc::service_account)?,
            ip_blocks: doc.pair(source, &at, "ipBlocks", Doc::cidr)?,
        });
        let l7 = l7_fields(
            source,
            L7_SOURCE_FIELDS,
            "from.source",
            &mut rule.l7_only_fields,
        );
        if rule.from.last().is_some_and(|s| *s == Source::default()) && !l7 {
            return Err(doc.empty(at));
        }
    }
    for (i, to) in doc
        .list(map.get("to"), &format!("{at}.to"))?
        .iter()
        .enumerate()
    {
        let item = format!("{at}.to[{i}]");
        let to = doc.object(to, &item)?;
        let at = format!("{item}.operation");
        let operation = to.and_then(|t| t.get("operation")).unwrap_or(&Value::Null);
        let operation = doc.object(operation, &at)?.unwrap_or(&empty);
        let ports = doc.pair(operation, &at, "ports", Doc::port)?;
        let l7 = l7_fields(
            operation,
            L7_OPERATION_FIELDS,
            "to.operation",
            &mut rule.l7_only_fields,
        );
        if ports.is_empty() && !l7 {
            return Err(doc.empty(at));
        }
        rule.to.push(Operation { ports });
    }
    for (i, when) in doc
        .list(map.get("when"), &format!("{at}.when"))?
        .iter()
        .enumerate()
    {
        let at = format!("{at}.when[{i}]");
        if let Some(condition) = condition(doc, when, &at, &mut rule.l7_only_fields)? {
            rule.when.push(condition);
        }
    }
    rule.l7_only_fields.dedup();
    Ok(rule)
}

/// Records which of `names` `map` sets non-empty; whether there was any.
fn l7_fields(map: &Map<String, Value>, names: &[&str], at: &str, out: &mut Vec<String>) -> bool {
    let mut any = false;
    for name in names {
        if map
            .get(*name)
            .is_some_and(|v| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
        {
            out.push(format!("{at}.{name}"));
            any = true;
        }
    }
    any
}

/// A `when` entry; `None` for an L7-only key (recorded in `l7`).
fn condition(
    doc: &Doc,
    value: &Value,
    at: &str,
    l7: &mut Vec<String>,
) -> Result<Option<Condition>, ParseError> {
    let empty = Map::new();
    let map = doc.object(value, at)?.unwrap_or(&empty);
    let key = match map.get("key") {
        None | Some(Value::Null) => return Err(doc.empty(format!("{at}.key"))),
        Some(Value::String(k)) => k.as_str(),
        Some(_) => return Err(doc.wrong_type(&format!("{at}.key"), "a string")),
    };
    let condition = match key {
        "source.ip" => Condition::SourceIp(doc.pair(map, at, "values", Doc::cidr)?),
        "source.namespace" => Condition::SourceNamespace(doc.pair(map, at, "values", pattern)?),
        "source.principal" => Condition::SourcePrincipal(doc.pair(map, at, "values", pattern)?),
        "destination.ip" => Condition::DestinationIp(doc.pair(map, at, "values", Doc::cidr)?),
        "destination.port" => Condition::DestinationPort(doc.pair(map, at, "values", Doc::port)?),
        k if k.starts_with("request.")
            || k.starts_with("experimental.")
            || L7_CONDITION_KEYS.contains(&k) =>
        {
            l7.push(format!("when.{k}"));
            return Ok(None);
        }
        k => {
            return Err(ParseError::UnknownConditionKey {
                kind: AUTHZ,
                policy: doc.policy.clone(),
                field: format!("{at}.key"),
                value: k.to_owned(),
            });
        }
    };
    let set = match &condition {
        Condition::SourceIp(m) | Condition::DestinationIp(m) => !m.is_empty(),
        Condition::SourceNamespace(m) | Condition::SourcePrincipal(m) => !m.is_empty(),
        Condition::DestinationPort(m) => !m.is_empty(),
    };
    if !set {
        return Err(doc.empty(format!("{at}.values")));
    }
    Ok(Some(condition))
}
