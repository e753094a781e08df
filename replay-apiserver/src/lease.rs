//! `coordination.k8s.io/v1` Leases as the API server keeps them for leader election: create
//! (POST, 409 `AlreadyExists` when present) and replace (PUT, 409 `Conflict` when the body's
//! `metadata.resourceVersion` is not the stored one: optimistic concurrency, which is what
//! makes two candidates unable to both take a lease). Reads are the generic single-object GET.

use std::sync::{Arc, Mutex};

use hyper::{Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::respond::{json_response, namespaced, not_found, status};
use super::{Body, World, apply};

/// The collection path of Leases.
const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";

/// A 409 with the API server's reason.
fn conflict(reason: &str, message: String) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "details": {"group": "coordination.k8s.io",
        "kind": "leases"}, "code": 409});
    json_response(StatusCode::CONFLICT, &body)
}

/// Answers a POST or PUT to a Lease path; `None` when `path` is no Lease path.
pub(super) fn answer_write(
    world: &Arc<Mutex<World>>,
    changes: &broadcast::Sender<()>,
    method: &hyper::Method,
    path: &str,
    body: &[u8],
) -> Option<Response<Body>> {
    let (collection, namespace, name) = namespaced(path)?;
    if collection != LEASES {
        return None;
    }
    let mut w = world.lock().unwrap();
    w.requests.push(format!("{method} {path}?"));
    if w.down {
        return Some(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "the replay server is down",
        ));
    }
    let Ok(mut lease) = serde_json::from_slice::<Value>(body) else {
        return Some(status(
            StatusCode::BAD_REQUEST,
            "the request body is not JSON",
        ));
    };
    lease["apiVersion"] = json!("coordination.k8s.io/v1");
    lease["kind"] = json!("Lease");
    lease["metadata"]["namespace"] = json!(namespace);
    let lease_name = lease["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let stored = w
        .collections
        .get(LEASES)
        .and_then(|c| c.objects.get(&format!("{namespace}/{lease_name}")))
        .cloned();
    let response = match (method, name, stored) {
        (&hyper::Method::POST, None, Some(_)) => conflict(
            "AlreadyExists",
            format!("leases.coordination.k8s.io \"{lease_name}\" already exists"),
        ),
        (&hyper::Method::POST, None, None) => {
            let stored = apply::record(&mut w, lease);
            json_response(StatusCode::CREATED, &stored)
        }
        (&hyper::Method::PUT, Some(name), _) if name != lease_name => status(
            StatusCode::BAD_REQUEST,
            "the name of the object does not match the name on the URL",
        ),
        (&hyper::Method::PUT, Some(name), None) => not_found("leases", &name),
        (&hyper::Method::PUT, Some(_), Some(current)) => {
            let forced = w.lease_conflicts > 0;
            w.lease_conflicts = w.lease_conflicts.saturating_sub(1);
            if forced
                || lease["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]
            {
                conflict(
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on leases.coordination.k8s.io \
                         \"{lease_name}\": the object has been modified; please apply your \
                         changes to the latest version and try again"
                    ),
                )
            } else {
                let stored = apply::record(&mut w, lease);
                json_response(StatusCode::OK, &stored)
            }
        }
        _ => status(
            StatusCode::METHOD_NOT_ALLOWED,
            "the replay server creates and replaces Leases only",
        ),
    };
    drop(w);
    let _ = changes.send(());
    Some(response)
}
