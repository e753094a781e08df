//! PeerAuthentication documents: selector, `mtls.mode` and `portLevelMtls`.
//!
//! A PeerAuthentication only decides whether plaintext is accepted, so whatever cannot be read
//! reads as STRICT, over the widest scope it could have had: an unknown or malformed mode is
//! STRICT; a `portLevelMtls` entry whose port cannot be read is dropped, and if it (or the
//! whole map) could have made a port STRICT, the policy's own mode becomes STRICT; a selector
//! that cannot be read covers every workload of the namespace, STRICT, without port
//! exceptions. Fields marrow does not know are reported and otherwise ignored.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Doc, PEER, ParseError, wrong_type};
use crate::policy::model::Finding;
use crate::policy::peer_auth::{ModeSetting, PeerAuthentication};

/// Parses a PeerAuthentication object. Only a missing name refuses it.
pub fn peer_authentication(body: &Value) -> Result<PeerAuthentication, ParseError> {
    let doc = Doc::new(PEER, body)?;
    let mut found = Vec::new();
    let mut policy = PeerAuthentication {
        namespace: doc.policy.namespace.clone(),
        name: doc.policy.name.clone(),
        selector: None,
        mode: ModeSetting::Unset,
        port_level: BTreeMap::new(),
        created: body["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_owned),
        findings: Vec::new(),
    };
    let empty = Map::new();
    let spec = match &body["spec"] {
        Value::Null => &empty,
        Value::Object(spec) => spec,
        _ => {
            found.push(wrong_type("spec", "an object"));
            policy.mode = ModeSetting::Strict;
            policy.findings = found;
            return Ok(policy);
        }
    };
    doc.unknown_fields(
        spec,
        "spec",
        &["selector", "mtls", "portLevelMtls"],
        &mut found,
    );
    let selector = doc.selector(spec, &mut found);
    policy.mode = mode(&doc, spec.get("mtls"), "mtls", &mut found);
    let before = found.len();
    let levels = doc.object(
        spec.get("portLevelMtls").unwrap_or(&Value::Null),
        "portLevelMtls",
        &mut found,
    );
    // Could an unreadable part have made some port STRICT?
    let mut lost_strict = found.len() > before;
    for (port, setting) in levels.into_iter().flatten() {
        let field = format!("portLevelMtls.{port}");
        let setting = mode(&doc, Some(setting), &field, &mut found);
        match doc.port(&field, port) {
            Ok(port) => {
                policy.port_level.insert(port, setting);
            }
            Err(error) => {
                found.push(Finding::Invalid(error));
                lost_strict |= setting == ModeSetting::Strict;
            }
        }
    }
    if lost_strict {
        policy.mode = ModeSetting::Strict;
    }
    match selector {
        Ok(selector) => policy.selector = selector,
        Err(()) => {
            // An empty selector selects every workload of the namespace.
            policy.selector = Some(BTreeMap::new());
            policy.mode = ModeSetting::Strict;
            policy.port_level.clear();
        }
    }
    policy.findings = found;
    Ok(policy)
}

/// An `mtls` object's mode; what cannot be read is STRICT.
fn mode(doc: &Doc, value: Option<&Value>, field: &str, found: &mut Vec<Finding>) -> ModeSetting {
    let before = found.len();
    let Some(mtls) = doc.object(value.unwrap_or(&Value::Null), field, found) else {
        return if found.len() > before {
            ModeSetting::Strict
        } else {
            ModeSetting::Unset
        };
    };
    doc.unknown_fields(mtls, field, &["mode"], found);
    let field = format!("{field}.mode");
    match mtls.get("mode") {
        None | Some(Value::Null) => ModeSetting::Unset,
        Some(Value::String(m)) => ModeSetting::parse(m).unwrap_or_else(|| {
            found.push(Finding::Invalid(ParseError::UnknownMode {
                field,
                value: m.clone(),
            }));
            ModeSetting::Strict
        }),
        Some(_) => {
            found.push(wrong_type(&field, "a string"));
            ModeSetting::Strict
        }
    }
}
