//! Multi-document Kubernetes YAML to a [`StateUpdate`], stopping at the first bad document.
//!
//! Kinds: `v1` Namespace and Pod become state; Service, EndpointSlice, the Istio security
//! kinds, the Gateway API's Gateway, GatewayClass, HTTPRoute, GRPCRoute and TCPRoute, Istio's
//! VirtualService, DestinationRule, Telemetry and its MeshConfig (the
//! ConfigMap `istio` in the root namespace; any other ConfigMap is ignored) are kept as raw objects; `List` (what `kubectl get -o yaml` prints) and typed
//! lists (`PodList`, …) are expanded; any other kind is ignored with one warning per kind.
//! Fields the mesh does not read (managedFields, ownerReferences beyond the controller,
//! conditions, …) are accepted as they are.

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod};
use serde::Deserialize;
use serde_yaml_ng::Value;
use tracing::{debug, warn};

use super::{FileError, Location};
use crate::objects::{ObjectRef, RawKind};
use crate::state::{ObjectError, StateUpdate, k8s};

/// Parses the file's bytes with Istio's default root namespace; `path` only names the file in
/// errors and logs.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<StateUpdate, FileError> {
    parse_with_root(path, bytes, crate::policy::DEFAULT_ROOT_NAMESPACE)
}

/// As [`parse`], with policies in `root_namespace` applying mesh-wide.
pub fn parse_with_root(
    path: &Path,
    bytes: &[u8],
    root_namespace: &str,
) -> Result<StateUpdate, FileError> {
    let mut parser = Parser {
        path,
        update: StateUpdate::new(),
        ignored: BTreeMap::new(),
        root_namespace,
    };
    // The document iterator repeats a syntax error forever (and may panic if pushed past
    // it), so the first error ends the loop.
    for (index, document) in serde_yaml_ng::Deserializer::from_slice(bytes).enumerate() {
        let number = index + 1;
        let syntax = |e: serde_yaml_ng::Error| FileError::Syntax {
            path: path.to_owned(),
            document: number,
            line: e.location().map(|l| (l.line(), l.column())),
            message: message_without_location(&e),
        };
        let mut value = Value::deserialize(document).map_err(syntax)?;
        value.apply_merge().map_err(syntax)?;
        if value.is_null() {
            continue; // an empty document, e.g. after a trailing `---`
        }
        parser.document(
            Location {
                document: number,
                item: None,
            },
            value,
        )?;
    }
    for ((api_version, kind), count) in &parser.ignored {
        warn!(file = %path.display(), api_version, kind, count, "state file: kind not used by marrow, ignored");
    }
    let mut update = parser.update;
    for warning in update.build_policies(root_namespace) {
        warn!(file = %path.display(), %warning, "policy warning");
    }
    for warning in update.build_services() {
        warn!(file = %path.display(), %warning, "service warning");
    }
    for warning in update.build_waypoints() {
        warn!(file = %path.display(), %warning, "waypoint warning");
    }
    for warning in update.build_traffic() {
        warn!(file = %path.display(), %warning, "traffic warning");
    }
    Ok(update)
}

struct Parser<'a> {
    path: &'a Path,
    update: StateUpdate,
    /// (apiVersion, kind) → how many were ignored, reported once per parse.
    ignored: BTreeMap<(String, String), usize>,
    /// Where the MeshConfig ConfigMap lives.
    root_namespace: &'a str,
}

impl Parser<'_> {
    fn document(&mut self, location: Location, value: Value) -> Result<(), FileError> {
        if !value.is_mapping() {
            return Err(self.not_an_object(location, "the document is not a mapping"));
        }
        let Some(kind) = value.get("kind").and_then(Value::as_str) else {
            return Err(self.not_an_object(location, "no kind"));
        };
        let Some(api_version) = value.get("apiVersion").and_then(Value::as_str) else {
            return Err(self.not_an_object(location, "no apiVersion"));
        };
        let (kind, api_version) = (kind.to_owned(), api_version.to_owned());
        if kind.ends_with("List") && (kind == "List" || value.get("items").is_some()) {
            return self.list(location, &kind, &api_version, value);
        }
        let meta = |field: &str| {
            value
                .get("metadata")
                .and_then(|m| m.get(field))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let cluster_scoped = kind == "Namespace"
            || RawKind::of(&api_version, &kind).is_some_and(RawKind::cluster_scoped);
        let object = ObjectRef {
            namespace: (!cluster_scoped)
                .then(|| meta("namespace").unwrap_or_else(|| k8s::DEFAULT_NAMESPACE.into())),
            name: meta("name").unwrap_or_default(),
            kind,
        };
        let refused = |source| FileError::Object {
            path: self.path.to_owned(),
            location,
            object: Box::new(object.clone()),
            source: Box::new(source),
        };
        match (api_version.as_str(), object.kind.as_str()) {
            ("v1", "Namespace") => {
                let ns: K8sNamespace =
                    serde_yaml_ng::from_value(value).map_err(|e| refused(malformed(e)))?;
                let ns = k8s::namespace(&ns).map_err(refused)?;
                self.update.add_namespace(ns).map_err(refused)
            }
            ("v1", "Pod") => {
                let pod: Pod =
                    serde_yaml_ng::from_value(value).map_err(|e| refused(malformed(e)))?;
                match k8s::workload(&pod).map_err(refused)? {
                    Some(workload) => self.update.add_workload(workload).map_err(refused),
                    None => {
                        debug!(file = %self.path.display(), %object, "state file: finished pod left out");
                        Ok(())
                    }
                }
            }
            (api_version, kind_name) => match RawKind::of(api_version, kind_name).or_else(|| {
                let mesh_config = (api_version, kind_name) == ("v1", "ConfigMap")
                    && RawKind::is_mesh_config(
                        object.namespace.as_deref().unwrap_or_default(),
                        &object.name,
                        self.root_namespace,
                    );
                mesh_config.then_some(RawKind::MeshConfig)
            }) {
                Some(kind) => {
                    let body = serde_json::to_value(&value).map_err(|e| {
                        refused(ObjectError::Malformed {
                            reason: e.to_string(),
                        })
                    })?;
                    let raw = k8s::raw_object(kind, kind_name, body).map_err(refused)?;
                    debug!(file = %self.path.display(), %object, "state file: kept for a later version, not enforced");
                    self.update.add_raw_object(raw).map_err(refused)
                }
                None => {
                    *self
                        .ignored
                        .entry((api_version.to_owned(), kind_name.to_owned()))
                        .or_default() += 1;
                    Ok(())
                }
            },
        }
    }

    /// A `List` carries full objects; a typed list (`PodList`) may leave out its items' kind
    /// and apiVersion, which follow from its own.
    fn list(
        &mut self,
        location: Location,
        kind: &str,
        api_version: &str,
        mut value: Value,
    ) -> Result<(), FileError> {
        if location.item.is_some() {
            return Err(self.not_an_object(location, "a list inside a list"));
        }
        let items = match value.get_mut("items").map(std::mem::take) {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Sequence(items)) => items,
            Some(_) => return Err(self.not_an_object(location, "items is not a sequence")),
        };
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        for (index, mut item) in items.into_iter().enumerate() {
            if let (Some(item_kind), Value::Mapping(map)) = (item_kind, &mut item) {
                map.entry("kind".into()).or_insert_with(|| item_kind.into());
                map.entry("apiVersion".into())
                    .or_insert_with(|| api_version.into());
            }
            let location = Location {
                document: location.document,
                item: Some(index),
            };
            if !item.is_null() {
                self.document(location, item)?;
            }
        }
        Ok(())
    }

    fn not_an_object(&self, location: Location, reason: &'static str) -> FileError {
        FileError::NotAnObject {
            path: self.path.to_owned(),
            location,
            reason,
        }
    }
}

fn malformed(e: serde_yaml_ng::Error) -> ObjectError {
    ObjectError::Malformed {
        reason: e.to_string(),
    }
}

/// The parser's message without the " at line L column C" it appends: the error carries the
/// position separately.
fn message_without_location(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    match e.location() {
        Some(l) => {
            let suffix = format!(" at line {} column {}", l.line(), l.column());
            match text.find(&suffix) {
                Some(at) => format!("{}{}", &text[..at], &text[at + suffix.len()..]),
                None => text,
            }
        }
        None => text,
    }
}
