//! PeerAuthentication documents: selector, `mtls.mode` and `portLevelMtls`.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::{Doc, PEER, ParseError};
use crate::policy::peer_auth::{ModeSetting, PeerAuthentication};

/// Parses a PeerAuthentication object.
pub fn peer_authentication(body: &Value) -> Result<PeerAuthentication, ParseError> {
    let doc = Doc::new(PEER, body)?;
    let empty = Map::new();
    let spec = doc.object(&body["spec"], "spec")?.unwrap_or(&empty);
    let selector = doc.selector(spec)?;
    let mode = |value: Option<&Value>, field: &str| -> Result<ModeSetting, ParseError> {
        let Some(mtls) = doc.object(value.unwrap_or(&Value::Null), field)? else {
            return Ok(ModeSetting::Unset);
        };
        let field = format!("{field}.mode");
        match mtls.get("mode") {
            None | Some(Value::Null) => Ok(ModeSetting::Unset),
            Some(Value::String(m)) => {
                ModeSetting::parse(m).ok_or_else(|| ParseError::UnknownMode {
                    kind: PEER,
                    policy: doc.policy.clone(),
                    field,
                    value: m.clone(),
                })
            }
            Some(_) => Err(doc.wrong_type(&field, "a string")),
        }
    };
    let workload_mode = mode(spec.get("mtls"), "mtls")?;
    let mut port_level = BTreeMap::new();
    let levels = doc.object(
        spec.get("portLevelMtls").unwrap_or(&Value::Null),
        "portLevelMtls",
    )?;
    for (port, setting) in levels.into_iter().flatten() {
        let field = format!("portLevelMtls.{port}");
        port_level.insert(doc.port(&field, port)?, mode(Some(setting), &field)?);
    }
    Ok(PeerAuthentication {
        namespace: doc.policy.namespace,
        name: doc.policy.name,
        selector,
        mode: workload_mode,
        port_level,
        created: body["metadata"]["creationTimestamp"]
            .as_str()
            .map(str::to_owned),
    })
}
