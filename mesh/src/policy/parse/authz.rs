//! AuthorizationPolicy documents: action, provider, selector, rules, and the `istio.io/dry-run`
//! annotation. L7-only, unknown and malformed fields are recorded on the rule they are in
//! (so an ALLOW rule never matches and a DENY or CUSTOM rule is checked without them);
//! problems of the policy as a whole that make its rules unreliable (selector, unknown spec
//! fields, unreadable rules) are recorded on every rule too.

use serde_json::{Map, Value};

use super::{AUTHZ, Doc, ParseError, is_unset, l7, pattern, wrong_type};
use crate::policy::model::{
    Action, AuthorizationPolicy, Condition, Finding, Operation, Rule, Source,
};
use crate::policy::request::RequestCondition;

/// The annotation Istio honours on policies: evaluate, log, never enforce.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// The fields of `spec` (istio/api `security/v1beta1/authorization_policy.proto`).
const SPEC_FIELDS: &[&str] = &[
    "selector",
    "targetRef",
    "targetRefs",
    "rules",
    "action",
    "provider",
];
/// The fields of a rule.
const RULE_FIELDS: &[&str] = &["from", "to", "when"];
/// The fields of a `when` condition.
const CONDITION_FIELDS: &[&str] = &["key", "values", "notValues"];
/// Source fields checked at L4.
const L4_SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "trustDomains",
    "notTrustDomains",
];
/// Source fields that only an L7 proxy can check.
const L7_SOURCE_FIELDS: &[&str] = &[
    "requestPrincipals",
    "notRequestPrincipals",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];
/// Operation fields checked at L4.
const L4_OPERATION_FIELDS: &[&str] = &["ports", "notPorts"];
/// Operation fields that only an L7 proxy can check.
const L7_OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
];
/// `when` keys that only an L7 proxy can check (`request.*` and `experimental.envoy.filters.*`
/// are matched by prefix), from istiod's `pilot/pkg/security/authz/model/model.go`.
const L7_CONDITION_KEYS: &[&str] = &["remote.ip", "connection.sni"];

/// Parses an AuthorizationPolicy object. Only a missing name refuses it.
pub fn authorization_policy(body: &Value) -> Result<AuthorizationPolicy, ParseError> {
    let doc = Doc::new(AUTHZ, body)?;
    let mut findings = Vec::new();
    let dry_run = dry_run(&body["metadata"], &mut findings);
    let mut policy = AuthorizationPolicy {
        namespace: doc.policy.namespace.clone(),
        name: doc.policy.name.clone(),
        selector: None,
        action: Action::Allow,
        rules: Vec::new(),
        targets_waypoint: false,
        target_refs: Vec::new(),
        waypoint_findings: Vec::new(),
        provider: None,
        dry_run,
        findings: Vec::new(),
    };
    let empty = Map::new();
    let spec = match &body["spec"] {
        Value::Null => &empty,
        Value::Object(spec) => spec,
        _ => {
            // Nothing can be read: not whom it selects, nor what it does.
            findings.push(wrong_type("spec", "an object"));
            policy.action = Action::Unrecognized;
            policy.findings = findings;
            return Ok(policy);
        }
    };
    // Problems that make every rule unreliable: an ALLOW must not match on them.
    let mut every_rule = Vec::new();
    doc.unknown_fields(spec, "spec", SPEC_FIELDS, &mut every_rule);
    policy.action = action(spec, &mut findings);
    policy.provider = provider(&doc, spec, policy.action, &mut findings);
    // A selector that cannot be read widens the policy to its namespace, and its ALLOW
    // rules never match there: it denies more, never allows more.
    policy.selector = doc.selector(spec, &mut every_rule).unwrap_or(None);
    policy.targets_waypoint = Doc::targets_waypoint(spec);
    policy.target_refs = l7::target_refs(&doc, spec, &mut policy.waypoint_findings);
    if policy.targets_waypoint && spec.get("selector").is_some_and(|s| !s.is_null()) {
        // istiod's ambient conversion sends ztunnel nothing for a targetRefs policy, so the
        // node proxy leaves it to the waypoint (`convertAuthorizationPolicy`).
        findings.push(Finding::Invalid(ParseError::Conflict {
            field: "selector".to_owned(),
            other: "targetRefs",
        }));
    }
    policy.rules = match spec.get("rules") {
        None | Some(Value::Null) => {
            if matches!(policy.action, Action::Deny | Action::Custom) {
                // Istio's validation refuses this; its builder makes the policy match nothing.
                findings.push(Finding::Invalid(ParseError::Misplaced {
                    field: "rules".to_owned(),
                    why: "DENY and CUSTOM policies need rules (`{}` matches everything)",
                }));
            }
            Vec::new()
        }
        Some(Value::Array(rules)) => rules
            .iter()
            .enumerate()
            .map(|(i, r)| rule(&doc, r, &format!("rules[{i}]")))
            .collect(),
        Some(_) => {
            // Unreadable rules: one rule that an ALLOW never matches and a DENY always does.
            vec![Rule {
                unchecked: vec![wrong_type("rules", "a list")],
                unchecked_at_waypoint: vec![wrong_type("rules", "a list")],
                ..Rule::default()
            }]
        }
    };
    for rule in &mut policy.rules {
        rule.unchecked.extend(every_rule.iter().cloned());
        rule.unchecked.dedup();
        let at_waypoint = every_rule.iter().chain(&policy.waypoint_findings).cloned();
        rule.unchecked_at_waypoint.extend(at_waypoint);
        rule.unchecked_at_waypoint.dedup();
    }
    findings.extend(every_rule);
    policy.findings = findings;
    Ok(policy)
}

/// `metadata.annotations["istio.io/dry-run"]`, read as Go's `strconv.ParseBool` (istiod's
/// `isDryRun` in `pilot/pkg/security/authz/builder/builder.go`); a value that is not a boolean
/// leaves the policy enforced, as there.
fn dry_run(metadata: &Value, findings: &mut Vec<Finding>) -> bool {
    let field = || format!("metadata.annotations[{DRY_RUN_ANNOTATION}]");
    match &metadata["annotations"][DRY_RUN_ANNOTATION] {
        Value::Null => false,
        // A YAML `true` in a state file: the user's intent is plain.
        Value::Bool(b) => *b,
        Value::String(text) => match text.as_str() {
            "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
            "0" | "f" | "F" | "FALSE" | "false" | "False" | "" => false,
            _ => {
                findings.push(Finding::Invalid(ParseError::BadBool {
                    field: field(),
                    value: text.clone(),
                }));
                false
            }
        },
        other => {
            findings.push(Finding::Invalid(ParseError::BadBool {
                field: field(),
                value: other.to_string(),
            }));
            false
        }
    }
}

fn action(spec: &Map<String, Value>, findings: &mut Vec<Finding>) -> Action {
    match spec.get("action") {
        None | Some(Value::Null) => Action::Allow,
        Some(Value::String(a)) => match a.as_str() {
            "ALLOW" | "" => Action::Allow,
            "DENY" => Action::Deny,
            "AUDIT" => Action::Audit,
            "CUSTOM" => Action::Custom,
            _ => {
                findings.push(Finding::Invalid(ParseError::UnknownAction {
                    field: "action".to_owned(),
                    value: a.clone(),
                }));
                Action::Unrecognized
            }
        },
        Some(_) => {
            findings.push(wrong_type("action", "a string"));
            Action::Unrecognized
        }
    }
}

/// `spec.provider.name`; Istio requires it with CUSTOM and refuses it with any other action.
fn provider(
    doc: &Doc,
    spec: &Map<String, Value>,
    action: Action,
    findings: &mut Vec<Finding>,
) -> Option<String> {
    let provider = doc.object(
        spec.get("provider").unwrap_or(&Value::Null),
        "provider",
        findings,
    );
    if let Some(provider) = provider {
        doc.unknown_fields(provider, "provider", &["name"], findings);
    }
    let name = provider
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    match action {
        Action::Custom if name.is_none() => findings.push(Finding::Invalid(ParseError::Empty {
            field: "provider.name".to_owned(),
        })),
        Action::Custom | Action::Unrecognized => {}
        Action::Allow | Action::Deny | Action::Audit if provider.is_some() => {
            findings.push(Finding::Invalid(ParseError::Misplaced {
                field: "provider".to_owned(),
                why: "only a CUSTOM policy names a provider",
            }));
        }
        Action::Allow | Action::Deny | Action::Audit => {}
    }
    name
}

fn rule(doc: &Doc, value: &Value, at: &str) -> Rule {
    let mut found = Vec::new();
    // What only the waypoint reads and cannot take (L4 has these as L7-only).
    let mut l7_found = Vec::new();
    let empty = Map::new();
    let map = doc.object(value, at, &mut found).unwrap_or(&empty);
    doc.unknown_fields(map, at, RULE_FIELDS, &mut found);
    let mut rule = Rule::default();
    if map
        .get("from")
        .is_some_and(|f| f.as_array().is_some_and(Vec::is_empty))
    {
        found.push(Finding::Invalid(ParseError::Empty {
            field: format!("{at}.from"),
        }));
    }
    for (i, from) in doc
        .list(map.get("from"), &format!("{at}.from"), &mut found)
        .iter()
        .enumerate()
    {
        let item = format!("{at}.from[{i}]");
        rule.from
            .push(source(doc, from, &item, &mut found, &mut l7_found));
    }
    if map
        .get("to")
        .is_some_and(|t| t.as_array().is_some_and(Vec::is_empty))
    {
        found.push(Finding::Invalid(ParseError::Empty {
            field: format!("{at}.to"),
        }));
    }
    for (i, to) in doc
        .list(map.get("to"), &format!("{at}.to"), &mut found)
        .iter()
        .enumerate()
    {
        let item = format!("{at}.to[{i}]");
        rule.to
            .push(operation(doc, to, &item, &mut found, &mut l7_found));
    }
    for (i, when) in doc
        .list(map.get("when"), &format!("{at}.when"), &mut found)
        .iter()
        .enumerate()
    {
        let at = format!("{at}.when[{i}]");
        match condition(doc, when, &at, &mut found, &mut l7_found) {
            When::Connection(c) => rule.when.push(c),
            When::Request(c) => rule.request_when.push(c),
            When::Neither => {}
        }
    }
    found.dedup();
    rule.unchecked_at_waypoint = l7::still_unchecked(&found).cloned().collect();
    rule.unchecked_at_waypoint.extend(l7_found);
    rule.unchecked_at_waypoint.dedup();
    rule.unchecked = found;
    rule
}

/// A parsed `when` entry: for both proxies, for the waypoint only, or for neither.
enum When {
    /// A key the node proxy checks (and the waypoint too).
    Connection(Condition),
    /// A key only the waypoint checks.
    Request(RequestCondition),
    /// Not checked as written (recorded as a finding).
    Neither,
}

/// One `from[i]` entry; a malformed part reads as unconstrained (and is in `found`).
fn source(
    doc: &Doc,
    from: &Value,
    item: &str,
    found: &mut Vec<Finding>,
    l7_found: &mut Vec<Finding>,
) -> Source {
    let empty = Map::new();
    let from = doc.object(from, item, found).unwrap_or(&empty);
    doc.unknown_fields(from, item, &["source"], found);
    let at = format!("{item}.source");
    let raw = from.get("source").unwrap_or(&Value::Null);
    let map = doc.object(raw, &at, found).unwrap_or(&empty);
    let known: Vec<&str> = L4_SOURCE_FIELDS
        .iter()
        .chain(L7_SOURCE_FIELDS)
        .copied()
        .collect();
    doc.unknown_fields(map, &at, &known, found);
    if says_nothing(raw) {
        found.push(Finding::Invalid(ParseError::Empty { field: at.clone() }));
    }
    let mut source = Source {
        principals: doc.pair(map, &at, "principals", found, pattern),
        namespaces: doc.pair(map, &at, "namespaces", found, pattern),
        service_accounts: doc.pair(map, &at, "serviceAccounts", found, Doc::service_account),
        ip_blocks: doc.pair(map, &at, "ipBlocks", found, Doc::cidr),
        trust_domains: doc.pair(map, &at, "trustDomains", found, Doc::trust_domain),
        ..Source::default()
    };
    l7::source(doc, map, &at, &mut source, l7_found);
    let set = |name: &str| map.get(name).is_some_and(|v| !is_unset(v));
    if (set("serviceAccounts") || set("notServiceAccounts"))
        && ["principals", "notPrincipals", "namespaces", "notNamespaces"]
            .iter()
            .any(|f| set(f))
    {
        // Istio's validation refuses it; its builder would check both, which this does too.
        found.push(Finding::Invalid(ParseError::Misplaced {
            field: format!("{at}.serviceAccounts"),
            why: "cannot be set with principals or namespaces",
        }));
    }
    l7_fields(map, L7_SOURCE_FIELDS, "from.source", found);
    source
}

/// One `to[i]` entry; a malformed part reads as unconstrained (and is in `found`).
fn operation(
    doc: &Doc,
    to: &Value,
    item: &str,
    found: &mut Vec<Finding>,
    l7_found: &mut Vec<Finding>,
) -> Operation {
    let empty = Map::new();
    let to = doc.object(to, item, found).unwrap_or(&empty);
    doc.unknown_fields(to, item, &["operation"], found);
    let at = format!("{item}.operation");
    let raw = to.get("operation").unwrap_or(&Value::Null);
    let map = doc.object(raw, &at, found).unwrap_or(&empty);
    let known: Vec<&str> = L4_OPERATION_FIELDS
        .iter()
        .chain(L7_OPERATION_FIELDS)
        .copied()
        .collect();
    doc.unknown_fields(map, &at, &known, found);
    if says_nothing(raw) {
        found.push(Finding::Invalid(ParseError::Empty { field: at.clone() }));
    }
    let mut op = Operation {
        ports: doc.pair(map, &at, "ports", found, Doc::port),
        ..Operation::default()
    };
    l7::operation(doc, map, &at, &mut op, l7_found);
    l7_fields(map, L7_OPERATION_FIELDS, "to.operation", found);
    op
}

/// Whether a `source` or `operation` is absent or sets nothing (Istio's validation refuses
/// it); one of another type is reported as such instead.
fn says_nothing(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.values().all(is_unset),
        _ => false,
    }
}

/// Records which of `names` `map` sets non-empty.
fn l7_fields(map: &Map<String, Value>, names: &[&str], at: &str, out: &mut Vec<Finding>) {
    for name in names {
        if map.get(*name).is_some_and(|v| !is_unset(v)) {
            out.push(Finding::L7Only {
                field: format!("{at}.{name}"),
            });
        }
    }
}

/// A `when` entry. An L7-only key is a finding in `found` (for L4) and a condition for the
/// waypoint (or, if it cannot check it, a finding in `l7_found`); an unknown or malformed entry
/// is a finding in `found`.
fn condition(
    doc: &Doc,
    value: &Value,
    at: &str,
    found: &mut Vec<Finding>,
    l7_found: &mut Vec<Finding>,
) -> When {
    let empty = Map::new();
    let map = doc.object(value, at, found).unwrap_or(&empty);
    doc.unknown_fields(map, at, CONDITION_FIELDS, found);
    let key = match map.get("key") {
        Some(Value::String(k)) if !k.is_empty() => k.as_str(),
        None | Some(Value::Null | Value::String(_)) => {
            found.push(Finding::Invalid(ParseError::Empty {
                field: format!("{at}.key"),
            }));
            return When::Neither;
        }
        Some(_) => {
            found.push(wrong_type(&format!("{at}.key"), "a string"));
            return When::Neither;
        }
    };
    let before = found.len();
    let condition = match key {
        "source.ip" => Condition::SourceIp(doc.pair(map, at, "values", found, Doc::cidr)),
        "source.namespace" => {
            Condition::SourceNamespace(doc.pair(map, at, "values", found, pattern))
        }
        "source.principal" => {
            Condition::SourcePrincipal(doc.pair(map, at, "values", found, pattern))
        }
        "source.serviceAccount" => Condition::SourceServiceAccount(doc.pair(
            map,
            at,
            "values",
            found,
            Doc::service_account,
        )),
        "source.trustDomain" => {
            Condition::SourceTrustDomain(doc.pair(map, at, "values", found, Doc::trust_domain))
        }
        "destination.ip" => Condition::DestinationIp(doc.pair(map, at, "values", found, Doc::cidr)),
        "destination.port" => {
            Condition::DestinationPort(doc.pair(map, at, "values", found, Doc::port))
        }
        k if k.starts_with("request.")
            || k.starts_with("experimental.envoy.filters.")
            || L7_CONDITION_KEYS.contains(&k) =>
        {
            found.push(Finding::L7Only {
                field: format!("when.{k}"),
            });
            return match l7::condition(doc, k, map, at, l7_found) {
                Some(c) => When::Request(c),
                None => When::Neither,
            };
        }
        k => {
            found.push(Finding::Unknown {
                field: format!("when.{k}"),
            });
            return When::Neither;
        }
    };
    let set = match &condition {
        Condition::SourceIp(m) | Condition::DestinationIp(m) => !m.is_empty(),
        Condition::SourceNamespace(m)
        | Condition::SourcePrincipal(m)
        | Condition::SourceTrustDomain(m) => !m.is_empty(),
        Condition::SourceServiceAccount(m) => !m.is_empty(),
        Condition::DestinationPort(m) => !m.is_empty(),
    };
    if !set {
        // Nothing left to check: Istio refuses a condition without values.
        if found.len() == before {
            found.push(Finding::Invalid(ParseError::Empty {
                field: format!("{at}.values"),
            }));
        }
        return When::Neither;
    }
    When::Connection(condition)
}
