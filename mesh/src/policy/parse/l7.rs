//! The parts of an AuthorizationPolicy only a waypoint reads: `targetRefs`, `to.operation`
//! hosts/methods/paths, `from.source.remoteIpBlocks` and the L7 `when` keys.
//!
//! At L4 these stay `Finding::L7Only` on the rule (the node proxy's behaviour is unchanged);
//! here they become typed matchers, and what the waypoint cannot check as written goes to a
//! separate list that becomes [`Rule::unchecked_at_waypoint`](crate::policy::Rule).

use http::HeaderName;
use serde_json::{Map, Value};

use super::{Doc, ParseError, is_unset, pattern, wrong_type};
use crate::policy::matcher::{Match, PathPattern, StringMatch};
use crate::policy::model::{Finding, Operation, Source, TargetRef};
use crate::policy::request::RequestCondition;

/// The group of Gateway API objects.
const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The GatewayClass of waypoints.
const WAYPOINT_CLASS: &str = "istio-waypoint";

/// `spec.targetRefs`, or the older single `spec.targetRef` when the list is empty (istiod's
/// `GetTargetRefs` in `pilot/pkg/model/policyattachment.go`). What binds to nothing is kept as
/// [`TargetRef::Other`] with a finding, so the policy is reported and fail-safe.
pub(super) fn target_refs(
    doc: &Doc,
    spec: &Map<String, Value>,
    found: &mut Vec<Finding>,
) -> Vec<TargetRef> {
    let list = doc.list(spec.get("targetRefs"), "targetRefs", found);
    let (items, at): (Vec<&Value>, &str) = if list.is_empty() {
        match spec.get("targetRef") {
            None | Some(Value::Null) => return Vec::new(),
            Some(one) => (vec![one], "targetRef"),
        }
    } else {
        (list.iter().collect(), "targetRefs")
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let field = if at == "targetRef" {
            at.to_owned()
        } else {
            format!("{at}[{i}]")
        };
        let Some(map) = doc.object(item, &field, found) else {
            continue;
        };
        let text = |key: &str| map.get(key).and_then(Value::as_str).unwrap_or("");
        let (group, kind, name, namespace) =
            (text("group"), text("kind"), text("name"), text("namespace"));
        let target = target_ref(&doc.policy.namespace, group, kind, name, namespace);
        if let TargetRef::Other { text } = &target {
            found.push(Finding::Invalid(ParseError::Misplaced {
                field: format!("{field} {text}"),
                why: "a waypoint binds a policy by Gateway (gateway.networking.k8s.io), Service \
                      (core) in the policy's namespace, or GatewayClass istio-waypoint from the \
                      root namespace; this reference binds to nothing",
            }));
        }
        out.push(target);
    }
    out
}

/// One reference, as `ShouldAttachPolicy` in istiod's `pilot/pkg/model/policyattachment.go`
/// reads it: an empty group is the core group, another namespace never matches.
fn target_ref(policy_ns: &str, group: &str, kind: &str, name: &str, ns: &str) -> TargetRef {
    let core = group.is_empty() || group == "core";
    let same_ns = ns.is_empty() || ns == policy_ns;
    match (kind, name) {
        (_, "") => {}
        ("Gateway", _) if group == GATEWAY_GROUP && same_ns => {
            return TargetRef::Gateway {
                name: name.to_owned(),
            };
        }
        ("Service", _) if core && same_ns => {
            return TargetRef::Service {
                name: name.to_owned(),
            };
        }
        ("GatewayClass", WAYPOINT_CLASS) if group == GATEWAY_GROUP => {
            return TargetRef::WaypointClass;
        }
        _ => {}
    }
    let group = if group.is_empty() { "core" } else { group };
    let ns = if ns.is_empty() {
        ""
    } else {
        " in another namespace"
    };
    TargetRef::Other {
        text: format!("{group}/{kind}/{name}{ns}"),
    }
}

/// `to.operation` hosts, methods and paths, into `op`.
pub(super) fn operation(
    doc: &Doc,
    map: &Map<String, Value>,
    at: &str,
    op: &mut Operation,
    found: &mut Vec<Finding>,
) {
    op.hosts = doc.pair(map, at, "hosts", found, |_, _, text| {
        Ok(StringMatch::parse(&text.to_ascii_lowercase()))
    });
    op.methods = doc.pair(map, at, "methods", found, |_, _, text| {
        Ok(StringMatch::parse(text))
    });
    op.paths = doc.pair(map, at, "paths", found, |_, field, text| {
        PathPattern::parse(text).map_err(|why| ParseError::Misplaced {
            field: format!("{field} {text:?}"),
            why,
        })
    });
}

/// `from.source` remoteIpBlocks into `source`; request principals are JWT (issue 19).
pub(super) fn source(
    doc: &Doc,
    map: &Map<String, Value>,
    at: &str,
    source: &mut Source,
    found: &mut Vec<Finding>,
) {
    source.remote_ip_blocks = doc.pair(map, at, "remoteIpBlocks", found, Doc::cidr);
    for name in ["requestPrincipals", "notRequestPrincipals"] {
        if map.get(name).is_some_and(|v| !is_unset(v)) {
            found.push(Finding::NotAtWaypoint {
                field: format!("from.source.{name}"),
            });
        }
    }
}

/// A `when` entry with an L7 key; `None` (with a finding in `found`) when the waypoint does not
/// check it or it is malformed.
pub(super) fn condition(
    doc: &Doc,
    key: &str,
    map: &Map<String, Value>,
    at: &str,
    found: &mut Vec<Finding>,
) -> Option<RequestCondition> {
    let before = found.len();
    let condition = if let Some(rest) = key.strip_prefix("request.headers[") {
        let Some(name) = rest.strip_suffix(']').filter(|n| !n.is_empty()) else {
            found.push(wrong_type(
                &format!("{at}.key {key:?}"),
                "request.headers[<name>]",
            ));
            return None;
        };
        let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
            found.push(wrong_type(
                &format!("{at}.key {key:?}"),
                "a valid header name",
            ));
            return None;
        };
        let values = doc.pair(map, at, "values", found, |_, _, t| {
            Ok(StringMatch::parse(t))
        });
        let set = !values.is_empty();
        set.then_some(RequestCondition::Header { name, values })
    } else if key == "remote.ip" {
        let values = doc.pair(map, at, "values", found, Doc::cidr);
        (!values.is_empty()).then_some(RequestCondition::RemoteIp(values))
    } else if key == "connection.sni" {
        let values: Match<StringMatch> = doc.pair(map, at, "values", found, pattern);
        (!values.is_empty()).then_some(RequestCondition::Sni(values))
    } else if key.starts_with("request.auth.") || key.starts_with("experimental.envoy.filters.") {
        found.push(Finding::NotAtWaypoint {
            field: format!("when.{key}"),
        });
        return None;
    } else {
        found.push(Finding::Unknown {
            field: format!("when.{key}"),
        });
        return None;
    };
    if condition.is_none() && found.len() == before {
        found.push(Finding::Invalid(ParseError::Empty {
            field: format!("{at}.values"),
        }));
    }
    condition
}

/// What of the L4 findings still holds at the waypoint: all but the L7-only ones (the waypoint
/// checks those, or recorded what it cannot as [`Finding::NotAtWaypoint`]).
pub(super) fn still_unchecked(l4: &[Finding]) -> impl Iterator<Item = &Finding> {
    l4.iter().filter(|f| !matches!(f, Finding::L7Only { .. }))
}
