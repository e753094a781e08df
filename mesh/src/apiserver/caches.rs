//! What the watchers have seen, per kind, converted to the state's types; each state version
//! is built from it. Owned by the build loop in [`super::watch`], behind one mutex.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};
use tracing::{debug, warn};

use super::watch::Kind;
use crate::objects::{RawKind, RawObject};
use crate::state::{Namespace, ObjectError, StateUpdate, Workload, k8s};

/// The objects of every kind as last listed/watched, converted to the state's types.
#[derive(Debug, Default)]
pub(super) struct Caches {
    namespaces: BTreeMap<String, Namespace>,
    /// This node's pods, whole (enrollment decisions need their annotations and spec).
    local_pods: BTreeMap<String, Arc<Pod>>,
    /// Every pod's workload, by `namespace/name`, local and remote.
    workloads: HashMap<String, Arc<Workload>>,
    /// Which keys of `workloads` each pod watcher put there.
    workload_keys: HashMap<Kind, HashSet<String>>,
    /// Services, EndpointSlices and policies, kept as JSON for the state's parsers.
    raw: BTreeMap<(Kind, String), RawObject>,
    /// Kinds listed at least once.
    pub(super) synced: HashSet<Kind>,
    /// The objects of a re-list in progress, per kind, swapped in when it completes.
    pub(super) relisting: HashMap<Kind, Vec<Object>>,
    /// Counts visible changes; a version is built only when it moved.
    pub(super) changes: u64,
}

/// One object converted for the caches.
#[derive(Debug)]
pub(super) enum Object {
    Namespace(Namespace),
    Pod {
        key: String,
        workload: Option<Arc<Workload>>,
        whole: Option<Arc<Pod>>,
    },
    Raw(String, RawObject),
}

/// A pod for the caches: its workload (`None` when finished), and the whole object if local.
pub(super) fn pod_object(pod: &Pod, local: bool) -> Result<Object, ObjectError> {
    let key = format!(
        "{}/{}",
        pod.namespace()
            .unwrap_or_else(|| k8s::DEFAULT_NAMESPACE.into()),
        pod.name_any()
    );
    let workload = k8s::workload(pod)?.map(Arc::new);
    Ok(Object::Pod {
        key,
        workload,
        whole: local.then(|| Arc::new(pod.clone())),
    })
}

/// A Service, EndpointSlice, policy or Gateway API object kept as JSON.
pub(super) fn raw_object<K: serde::Serialize + ResourceExt>(
    kind: RawKind,
    kind_name: &str,
    object: &K,
) -> Result<Object, ObjectError> {
    let mut body = serde_json::to_value(object).map_err(|e| ObjectError::Malformed {
        reason: e.to_string(),
    })?;
    // managedFields are large and no parser reads them.
    if let Some(meta) = body.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        meta.remove("managedFields");
    }
    let raw = k8s::raw_object(kind, kind_name, body)?;
    let key = format!(
        "{}/{}",
        raw.object.namespace.clone().unwrap_or_default(),
        raw.object.name
    );
    Ok(Object::Raw(key, raw))
}

impl Caches {
    /// Replaces every object of `kind` (a completed re-list).
    pub(super) fn replace_kind(&mut self, kind: Kind, objects: Vec<Object>) {
        match kind {
            Kind::Namespaces => self.namespaces.clear(),
            Kind::LocalPods | Kind::RemotePods => {
                for key in self.workload_keys.remove(&kind).unwrap_or_default() {
                    self.workloads.remove(&key);
                    if kind == Kind::LocalPods {
                        self.local_pods.remove(&key);
                    }
                }
            }
            _ => self.raw.retain(|(k, _), _| *k != kind),
        }
        for object in objects {
            self.insert(kind, object);
        }
    }

    pub(super) fn insert(&mut self, kind: Kind, object: Object) {
        match object {
            Object::Namespace(ns) => {
                self.namespaces.insert(ns.name.clone(), ns);
            }
            Object::Pod {
                key,
                workload,
                whole,
            } => {
                match workload {
                    Some(workload) => {
                        self.workloads.insert(key.clone(), workload);
                        self.workload_keys
                            .entry(kind)
                            .or_default()
                            .insert(key.clone());
                    }
                    // Finished: its address may be a new pod's already.
                    None => {
                        self.workloads.remove(&key);
                    }
                }
                if let Some(whole) = whole {
                    self.local_pods.insert(key, whole);
                }
            }
            Object::Raw(key, raw) => {
                self.raw.insert((kind, key), raw);
            }
        }
    }

    pub(super) fn remove<K: Resource>(&mut self, kind: Kind, object: &K) {
        let meta = object.meta();
        let name = meta.name.clone().unwrap_or_default();
        match kind {
            Kind::Namespaces => {
                self.namespaces.remove(&name);
            }
            Kind::LocalPods | Kind::RemotePods => {
                let key = format!(
                    "{}/{name}",
                    meta.namespace.as_deref().unwrap_or(k8s::DEFAULT_NAMESPACE)
                );
                self.workloads.remove(&key);
                self.local_pods.remove(&key);
                if let Some(keys) = self.workload_keys.get_mut(&kind) {
                    keys.remove(&key);
                }
            }
            // Keyed as `raw_object` keys them: no namespace for a cluster-scoped kind.
            Kind::GatewayClasses => {
                self.raw.remove(&(kind, format!("/{name}")));
            }
            _ => {
                let key = format!(
                    "{}/{name}",
                    meta.namespace.as_deref().unwrap_or(k8s::DEFAULT_NAMESPACE)
                );
                self.raw.remove(&(kind, key));
            }
        }
    }

    /// A state version from everything cached. Objects that collide (two pods claiming one
    /// IP while one terminates) keep the first and log the other.
    pub(super) fn build(&self, root_namespace: &str) -> StateUpdate {
        let mut update = StateUpdate::new();
        for ns in self.namespaces.values() {
            if let Err(error) = update.add_namespace(ns.clone()) {
                debug!(%error, "namespace left out");
            }
        }
        let mut keys: Vec<&String> = self.workloads.keys().collect();
        keys.sort_unstable();
        for key in keys {
            if let Err(error) = update.add_shared_workload(self.workloads[key].clone()) {
                debug!(pod = %key, %error, "pod left out of this version");
            }
        }
        for raw in self.raw.values() {
            if let Err(error) = update.add_raw_object(raw.clone()) {
                debug!(%error, "object left out");
            }
        }
        for warning in update.build_policies(root_namespace) {
            warn!(%warning, "policy warning");
        }
        for warning in update.build_services() {
            warn!(%warning, "service warning");
        }
        for warning in update.build_waypoints() {
            warn!(%warning, "waypoint warning");
        }
        for warning in update.build_traffic() {
            warn!(%warning, "traffic warning");
        }
        update
    }
}
