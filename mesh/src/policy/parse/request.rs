//! RequestAuthentication documents: kept only to be reported. JWT validation needs an L7 proxy
//! (a waypoint), and at L4 a RequestAuthentication changes no decision, so only whom it selects
//! is read.

use serde_json::{Map, Value};

use super::{Doc, ParseError, REQUEST, wrong_type};
use crate::policy::model::RequestAuthentication;

/// Parses a RequestAuthentication object. Only a missing name refuses it.
pub fn request_authentication(body: &Value) -> Result<RequestAuthentication, ParseError> {
    let doc = Doc::new(REQUEST, body)?;
    let mut findings = Vec::new();
    let empty = Map::new();
    let spec = match &body["spec"] {
        Value::Object(spec) => spec,
        Value::Null => &empty,
        _ => {
            findings.push(wrong_type("spec", "an object"));
            &empty
        }
    };
    // A selector that cannot be read: report it as covering the namespace.
    let selector = doc.selector(spec, &mut findings).unwrap_or(None);
    Ok(RequestAuthentication {
        namespace: doc.policy.namespace,
        name: doc.policy.name,
        selector,
        targets_waypoint: Doc::targets_waypoint(spec),
        findings,
    })
}
