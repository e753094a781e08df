//! What a controller asks of the API server beyond reads: server-side apply (PATCH with
//! `application/apply-patch+yaml`) on an object or its `/status` subresource, and the garbage
//! collector's cascade when an owner is deleted.
//!
//! Faithful where a controller can tell the difference, simplified where it cannot:
//! - an apply to an absent object creates it (uid, creationTimestamp, generation 1, a ClusterIP
//!   for a ClusterIP Service); to a present one it merges: maps field by field, lists and
//!   scalars replaced whole (no managedFields, so a field an applier stops sending is kept —
//!   a real server would remove it from that manager's set);
//! - an apply that changes nothing bumps no resourceVersion and sends no watch event, as the
//!   real server's no-op apply;
//! - `/status` takes only the body's `status`; the main resource ignores the body's `status`
//!   (what the real server does for kinds with a status subresource);
//! - a `fieldManager` is required, the body must be the object the path names (apiVersion and
//!   kind of that collection, the same name and namespace), as the real server checks;
//! - the body is read as JSON: JSON is YAML, and kube-rs sends JSON; YAML block syntax is not
//!   parsed.
//! - deleting an object deletes, at once and transitively, every object whose
//!   `ownerReferences` names its uid (background propagation; the real collector does it a
//!   moment later);
//! - cluster-scoped kinds ([`cluster_scoped`]: ClusterRoleBindings) are applied, read and
//!   deleted at `/apis/<group>/<version>/<plural>/<name>`; a DELETE (of any kind) honours a
//!   `preconditions.uid` (409 when the stored object is another) and answers the object
//!   deleted, 404 when there is none.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::respond::{json_response, namespaced, status};
use super::{Body, Change, World, collection_of, key_of};

/// The plurals of the kinds a waypoint controller reads and writes (beside those the node
/// proxy watches).
pub(super) fn controller_plural(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Gateway" => "gateways",
        "GatewayClass" => "gatewayclasses",
        "Deployment" => "deployments",
        "ServiceAccount" => "serviceaccounts",
        "ClusterRoleBinding" => "clusterrolebindings",
        _ => return None,
    })
}

/// Plurals of the cluster-scoped kinds this server writes and reads by name.
const CLUSTER_SCOPED: [&str; 1] = ["clusterrolebindings"];

/// `/apis/<group>/<version>/<plural>/<name>` of a cluster-scoped kind: the collection path and
/// the name.
pub(super) fn cluster_scoped(path: &str) -> Option<(String, String)> {
    let (collection, name) = path.rsplit_once('/')?;
    let plural = collection.rsplit('/').next()?;
    let mut parts = collection.strip_prefix("/apis/")?.split('/');
    let well_formed = parts.next().is_some() && parts.next().is_some() && parts.next().is_some();
    (well_formed && parts.next().is_none() && CLUSTER_SCOPED.contains(&plural) && !name.is_empty())
        .then(|| (collection.to_owned(), name.to_owned()))
}

/// The collection, namespace (`""` for a cluster-scoped kind) and name of an object's path.
fn object_path(path: &str) -> Option<(String, String, String)> {
    match namespaced(path) {
        Some((collection, namespace, Some(name))) => Some((collection, namespace, name)),
        Some((_, _, None)) => None,
        None => cluster_scoped(path).map(|(collection, name)| (collection, String::new(), name)),
    }
}

/// A DELETE of the object at `uri`: gone from its collection (DELETED to watchers) with what it
/// owned, answered with the object as last stored.
pub(super) fn answer_delete(
    world: &Arc<Mutex<World>>,
    changes: &broadcast::Sender<()>,
    uri: &hyper::Uri,
    body: &[u8],
) -> Response<Body> {
    let mut w = world.lock().unwrap();
    w.requests.push(format!(
        "DELETE {}?{}",
        uri.path(),
        uri.query().unwrap_or_default()
    ));
    if w.down {
        return status(StatusCode::SERVICE_UNAVAILABLE, "the replay server is down");
    }
    let Some((collection_path, namespace, name)) = object_path(uri.path()) else {
        return status(
            StatusCode::METHOD_NOT_ALLOWED,
            "the replay server deletes single objects only",
        );
    };
    let plural = collection_path.rsplit('/').next().unwrap_or_default();
    let key = format!("{namespace}/{name}");
    let Some(stored) = w
        .collections
        .get(&collection_path)
        .and_then(|c| c.objects.get(&key))
        .cloned()
    else {
        return super::respond::not_found(plural, &name);
    };
    let options: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if let Some(uid) = options["preconditions"]["uid"].as_str()
        && stored["metadata"]["uid"] != uid
    {
        return status(
            StatusCode::CONFLICT,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                stored["metadata"]["uid"].as_str().unwrap_or_default()
            ),
        );
    }
    w.resource_version += 1;
    let rv = w.resource_version;
    let mut gone = stored;
    gone["metadata"]["resourceVersion"] = json!(rv.to_string());
    let collection = w.collections.entry(collection_path).or_default();
    collection.objects.remove(&key);
    collection.history.push(Change {
        resource_version: rv,
        kind: "DELETED",
        object: gone.clone(),
    });
    let uid = gone["metadata"]["uid"].as_str().map(str::to_owned);
    collect_garbage(&mut w, uid.into_iter().collect());
    drop(w);
    let _ = changes.send(());
    json_response(StatusCode::OK, &gone)
}

/// The content type of a server-side apply.
const APPLY_PATCH: &str = "application/apply-patch+yaml";

/// A PATCH: a server-side apply of `body` to the object (or its `/status`) at `uri`.
pub(super) fn answer_patch(
    world: &Arc<Mutex<World>>,
    changes: &broadcast::Sender<()>,
    uri: &hyper::Uri,
    content_type: Option<&str>,
    body: &[u8],
) -> Response<Body> {
    let mut w = world.lock().unwrap();
    let query = uri.query().unwrap_or_default();
    w.requests.push(format!("PATCH {}?{query}", uri.path()));
    if w.down {
        return status(StatusCode::SERVICE_UNAVAILABLE, "the replay server is down");
    }
    if content_type != Some(APPLY_PATCH) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "the body of the request was in an unknown format - accepted media types include: {APPLY_PATCH} (the replay server answers server-side apply only)"
            ),
        );
    }
    let params: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    if params.get("fieldManager").is_none_or(|m| m.is_empty()) {
        return status(
            StatusCode::BAD_REQUEST,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        );
    }
    let (path, subresource) = match uri.path().strip_suffix("/status") {
        Some(path) => (path, true),
        None => (uri.path(), false),
    };
    let Some((collection_path, namespace, name)) = object_path(path) else {
        return status(
            StatusCode::NOT_FOUND,
            "the server could not find the requested resource",
        );
    };
    let Ok(mut applied) = serde_json::from_slice::<Value>(body) else {
        return status(
            StatusCode::BAD_REQUEST,
            "the request body is not JSON (nor YAML this server reads)",
        );
    };
    if !applied["kind"].is_string() || !applied["apiVersion"].is_string() {
        return status(
            StatusCode::BAD_REQUEST,
            "Object 'Kind' or 'apiVersion' is missing in the request body",
        );
    }
    if super::plural_of(applied["kind"].as_str().unwrap_or_default()).is_none()
        || collection_of(&applied) != collection_path
    {
        return status(
            StatusCode::BAD_REQUEST,
            "the body's apiVersion and kind are not those of the path",
        );
    }
    if applied["metadata"]["name"] != name.as_str() {
        return status(
            StatusCode::BAD_REQUEST,
            "the name of the object does not match the name on the URL",
        );
    }
    match applied["metadata"]["namespace"].as_str() {
        None if namespace.is_empty() => {}
        None => applied["metadata"]["namespace"] = json!(namespace),
        Some(ns) if ns == namespace => {}
        Some(_) => {
            return status(
                StatusCode::BAD_REQUEST,
                "the namespace of the object does not match the namespace on the request",
            );
        }
    }
    let key = format!("{namespace}/{name}");
    let existing = w
        .collections
        .get(&collection_path)
        .and_then(|c| c.objects.get(&key))
        .cloned();
    let object = match (existing, subresource) {
        (None, true) => {
            let plural = collection_path.rsplit('/').next().unwrap_or_default();
            return super::respond::not_found(plural, &name);
        }
        (None, false) => {
            applied.as_object_mut().map(|o| o.remove("status"));
            created(&mut w, applied)
        }
        (Some(existing), true) => {
            let mut merged = existing.clone();
            merge(&mut merged["status"], &applied["status"]);
            if merged == existing {
                return json_response(StatusCode::OK, &existing);
            }
            merged
        }
        (Some(existing), false) => {
            applied.as_object_mut().map(|o| o.remove("status"));
            let mut merged = existing.clone();
            merge(&mut merged, &applied);
            if merged == existing {
                return json_response(StatusCode::OK, &existing);
            }
            if merged["spec"] != existing["spec"] {
                let generation = existing["metadata"]["generation"].as_u64().unwrap_or(1);
                merged["metadata"]["generation"] = json!(generation + 1);
            }
            merged
        }
    };
    let stored = record(&mut w, object);
    drop(w);
    let _ = changes.send(());
    json_response(StatusCode::OK, &stored)
}

/// What the API server adds to a created object.
fn created(world: &mut World, mut object: Value) -> Value {
    world.next_cluster_ip += 1;
    let n = world.next_cluster_ip;
    let meta = &mut object["metadata"];
    meta["uid"] = json!(format!("uid-applied-{}", world.resource_version + 1));
    meta["creationTimestamp"] = json!("2026-11-01T10:00:00Z");
    meta["generation"] = json!(1);
    if object["kind"] == "Service" {
        let spec = &mut object["spec"];
        let cluster_ip = spec["type"].as_str().unwrap_or("ClusterIP") == "ClusterIP"
            && spec["clusterIP"].is_null();
        if cluster_ip {
            let ip = format!("10.96.{}.{}", n / 250, n % 250 + 1);
            spec["clusterIP"] = json!(ip);
            spec["clusterIPs"] = json!([ip]);
        }
        if spec["type"].is_null() {
            spec["type"] = json!("ClusterIP");
        }
    }
    object
}

/// Merges `from` into `into` as an apply does with no field ownership: maps key by key,
/// anything else replaced.
fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                merge(into.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (into, from) => *into = from.clone(),
    }
}

/// Stores `object` with a new resourceVersion and a watch event (ADDED or MODIFIED); returns
/// it as stored.
pub(super) fn record(world: &mut World, mut object: Value) -> Value {
    world.resource_version += 1;
    let rv = world.resource_version;
    object["metadata"]["resourceVersion"] = json!(rv.to_string());
    let collection = world.collections.entry(collection_of(&object)).or_default();
    let kind = if collection
        .objects
        .insert(key_of(&object), object.clone())
        .is_some()
    {
        "MODIFIED"
    } else {
        "ADDED"
    };
    collection.history.push(Change {
        resource_version: rv,
        kind,
        object: object.clone(),
    });
    object
}

/// The garbage collector's background cascade: deletes every object owned (by uid in its
/// `ownerReferences`) by one of `gone`, then what those owned, and so on.
pub(super) fn collect_garbage(world: &mut World, mut gone: BTreeSet<String>) {
    while !gone.is_empty() {
        let mut next = BTreeSet::new();
        let paths: Vec<String> = world.collections.keys().cloned().collect();
        for path in paths {
            let owned: Vec<String> = world.collections[&path]
                .objects
                .iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| {
                            refs.iter()
                                .any(|r| r["uid"].as_str().is_some_and(|u| gone.contains(u)))
                        })
                })
                .map(|(key, _)| key.clone())
                .collect();
            for key in owned {
                world.resource_version += 1;
                let rv = world.resource_version;
                let collection = world.collections.entry(path.clone()).or_default();
                if let Some(mut object) = collection.objects.remove(&key) {
                    object["metadata"]["resourceVersion"] = json!(rv.to_string());
                    if let Some(uid) = object["metadata"]["uid"].as_str() {
                        next.insert(uid.to_owned());
                    }
                    collection.history.push(Change {
                        resource_version: rv,
                        kind: "DELETED",
                        object,
                    });
                }
            }
        }
        gone = next;
    }
}
