//! The answers: a TokenReview to a POST; a list, a watch stream, a single object or a Status
//! to a GET; 503 to everything while the server is "down".

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{Body, Change, World};

/// The audience the API server checks a TokenReview against when its spec names none.
const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// A POST: creating a TokenReview (Leases are created in `lease`).
pub(super) fn answer_post(
    world: &Arc<Mutex<World>>,
    uri: &hyper::Uri,
    body: &[u8],
) -> Response<Body> {
    let mut w = world.lock().unwrap();
    w.requests.push(format!(
        "POST {}?{}",
        uri.path(),
        uri.query().unwrap_or_default()
    ));
    if w.down {
        return status(StatusCode::SERVICE_UNAVAILABLE, "the replay server is down");
    }
    if uri.path() != "/apis/authentication.k8s.io/v1/tokenreviews" {
        return status(
            StatusCode::NOT_FOUND,
            "the server could not find the requested resource",
        );
    }
    let Ok(review) = serde_json::from_slice::<Value>(body) else {
        return status(StatusCode::BAD_REQUEST, "the request body is not JSON");
    };
    let spec = review["spec"].clone();
    w.token_reviews.push(spec.clone());
    let token = spec["token"].as_str().unwrap_or_default();
    let mut wanted: Vec<String> = spec["audiences"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    if wanted.is_empty() {
        wanted.push(API_SERVER_AUDIENCE.to_owned());
    }
    // As the API server answers: `authenticated` and `audiences` only on success, `user: {}`
    // and an `error` otherwise.
    let review_status = match w.tokens.get(token) {
        None => json!({"user": {},
            "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"}),
        Some((audiences, user)) => {
            let common: Vec<&String> = wanted.iter().filter(|a| audiences.contains(a)).collect();
            if common.is_empty() {
                json!({"user": {}, "error": format!(
                    "[invalid bearer token, token audiences {audiences:?} is invalid for the target audiences {wanted:?}]")})
            } else {
                json!({"authenticated": true, "user": user, "audiences": common})
            }
        }
    };
    let body = json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null}, "spec": spec, "status": review_status});
    json_response(StatusCode::CREATED, &body)
}

/// `/api/v1/namespaces/{ns}/{plural}[/{name}]` or the same under `/apis/{group}/{version}`:
/// the cluster-wide collection path, the namespace and the name.
pub(super) fn namespaced(path: &str) -> Option<(String, String, Option<String>)> {
    let (prefix, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("/api/v1".to_owned(), rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let mut parts = rest.splitn(3, '/');
        let (group, version, rest) = (parts.next()?, parts.next()?, parts.next()?);
        (format!("/apis/{group}/{version}"), rest)
    };
    let segments: Vec<&str> = rest.split('/').collect();
    match segments.as_slice() {
        ["namespaces", ns, plural] => Some((format!("{prefix}/{plural}"), (*ns).to_owned(), None)),
        ["namespaces", ns, plural, name] => Some((
            format!("{prefix}/{plural}"),
            (*ns).to_owned(),
            Some((*name).to_owned()),
        )),
        _ => None,
    }
}

pub(super) fn answer(
    world: &Arc<Mutex<World>>,
    changes: &broadcast::Sender<()>,
    drops: &broadcast::Sender<()>,
    req: Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.to_owned(), percent_decode(v)))
        })
        .collect();
    let mut w = world.lock().unwrap();
    w.requests.push(format!(
        "{} {}?{}",
        req.method(),
        path,
        req.uri().query().unwrap_or_default()
    ));
    if w.down {
        return status(StatusCode::SERVICE_UNAVAILABLE, "the replay server is down");
    }
    if path == "/version" {
        let version = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.4",
            "platform": "linux/amd64", "goVersion": "go1.24.6", "compiler": "gc",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-08-12T00:00:00Z"});
        return json_response(StatusCode::OK, &version);
    }
    let selector = query.get("fieldSelector").cloned();
    // A namespaced watch (`/api/v1/namespaces/{ns}/configmaps?watch=true`) follows the
    // cluster-wide collection, filtered to the namespace.
    let watching = query.get("watch").map(String::as_str) == Some("true");
    let (path, watched_namespace) = match namespaced(&path) {
        Some((collection, namespace, None)) if watching => (collection, Some(namespace)),
        _ => (path, None),
    };
    let matches = move |object: &Value| {
        let in_namespace = watched_namespace
            .as_deref()
            .is_none_or(|ns| object["metadata"]["namespace"] == ns);
        in_namespace
            && match selector.as_deref() {
                None | Some("") => true,
                Some(s) => match s.split_once("!=") {
                    Some(("spec.nodeName", node)) => object["spec"]["nodeName"] != node,
                    _ => match s.split_once('=') {
                        Some(("spec.nodeName", node)) => object["spec"]["nodeName"] == node,
                        Some(("metadata.name", name)) => object["metadata"]["name"] == name,
                        _ => true,
                    },
                },
            }
    };
    if query.get("watch").map(String::as_str) != Some("true")
        && let Some((collection_path, namespace, name)) = namespaced(&path)
    {
        let objects = w.collections.get(&collection_path).map(|c| &c.objects);
        let rv = w.resource_version;
        return match name {
            Some(name) => match objects.and_then(|o| o.get(&format!("{namespace}/{name}"))) {
                Some(object) => json_response(StatusCode::OK, object),
                None => {
                    let plural = collection_path.rsplit('/').next().unwrap_or_default();
                    not_found(plural, &name)
                }
            },
            None => {
                let items: Vec<Value> = objects
                    .map(|o| {
                        o.values()
                            .filter(|o| o["metadata"]["namespace"] == namespace.as_str())
                            .filter(|o| matches(o))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                list_body(&items, rv)
            }
        };
    }
    if !watching && let Some((collection_path, name)) = super::apply::cluster_scoped(&path) {
        let plural = collection_path.rsplit('/').next().unwrap_or_default();
        return match w
            .collections
            .get(&collection_path)
            .and_then(|c| c.objects.get(&format!("/{name}")))
        {
            Some(object) => json_response(StatusCode::OK, object),
            None => not_found(plural, &name),
        };
    }
    let Some(collection) = w.collections.get(&path) else {
        // Istio's CRDs may be absent: a real server says 404 for an unknown resource.
        if (path.starts_with("/apis/security.istio.io/") && !known_istio(&w))
            || absent_gateway_api(&w, &path)
            || absent_group(&w, &path, "/apis/telemetry.istio.io/")
            || absent_group(&w, &path, "/apis/networking.istio.io/")
        {
            return status(
                StatusCode::NOT_FOUND,
                "the server could not find the requested resource",
            );
        }
        // A known resource with no objects yet.
        let rv = w.resource_version;
        if query.get("watch").map(String::as_str) == Some("true") {
            drop(w);
            return watch(world, changes, drops, path, 0, Box::new(matches), rv);
        }
        return list_body(&[], rv);
    };
    if query.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let _ = collection;
        let compacted_below = w.compacted_below;
        let rv = w.resource_version;
        drop(w);
        if from < compacted_below {
            return gone_watch(from);
        }
        return watch(world, changes, drops, path, from, Box::new(matches), rv);
    }
    // Pagination as the API server does it: `limit`, and a `continue` token to resume.
    let limit: usize = query
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    let skip: usize = query
        .get("continue")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let mut matching = collection
        .objects
        .values()
        .filter(|o| matches(o))
        .skip(skip);
    let items: Vec<Value> = matching.by_ref().take(limit).cloned().collect();
    let more = matching.next().is_some();
    let mut response = list_body(&items, w.resource_version);
    if more {
        let body = json!({
            "kind": "List",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": w.resource_version.to_string(),
                "continue": (skip + items.len()).to_string()},
            "items": items,
        });
        response = json_response(StatusCode::OK, &body);
    }
    response
}

fn known_istio(world: &World) -> bool {
    world
        .collections
        .keys()
        .any(|k| k.starts_with("/apis/security.istio.io/"))
}

/// A Gateway API resource while the server has no object of that group: its CRDs are not
/// installed (404), as with Istio's.
fn absent_gateway_api(world: &World, path: &str) -> bool {
    const GROUP: &str = "/apis/gateway.networking.k8s.io/";
    path.starts_with(GROUP) && !world.collections.keys().any(|k| k.starts_with(GROUP))
}

/// A resource of `group` while the server has no object of it: its CRD is not installed (404).
fn absent_group(world: &World, path: &str, group: &str) -> bool {
    path.starts_with(group) && !world.collections.keys().any(|k| k.starts_with(group))
}

fn list_body(items: &[Value], rv: u64) -> Response<Body> {
    let body = json!({
        "kind": "List",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    });
    json_response(StatusCode::OK, &body)
}

/// A watch stream: the changes after `from`, then new ones as they come, with a BOOKMARK
/// now and then, until the server drops watches.
fn watch(
    world: &Arc<Mutex<World>>,
    changes: &broadcast::Sender<()>,
    drops: &broadcast::Sender<()>,
    path: String,
    from: u64,
    matches: Box<dyn Fn(&Value) -> bool + Send>,
    _rv: u64,
) -> Response<Body> {
    let world = world.clone();
    let mut changes = changes.subscribe();
    let mut drops = drops.subscribe();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    tokio::spawn(async move {
        let mut sent = from;
        loop {
            let (events, rv) = {
                let w = world.lock().unwrap();
                let events: Vec<Change> = w
                    .collections
                    .get(&path)
                    .map(|c| {
                        c.history
                            .iter()
                            .filter(|c| c.resource_version > sent)
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                (events, w.resource_version)
            };
            for change in events {
                sent = change.resource_version;
                if !matches(&change.object) {
                    continue;
                }
                let line = json!({"type": change.kind, "object": change.object}).to_string() + "\n";
                if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                _ = changes.recv() => {}
                _ = drops.recv() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    let bookmark = json!({"type": "BOOKMARK", "object": {
                        "kind": "Pod", "apiVersion": "v1",
                        "metadata": {"resourceVersion": rv.max(sent).to_string()}}});
                    if tx.send(Ok(Frame::data(Bytes::from(bookmark.to_string() + "\n")))).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let stream = tokio_stream_from(rx);
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What a real server sends on a watch from an expired version: one ERROR event with a 410
/// Status, then the end of the stream.
fn gone_watch(from: u64) -> Response<Body> {
    let event = json!({"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("too old resource version: {from}"),
        "reason": "Expired", "code": 410}});
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(
            event.to_string() + "\n",
        ))))
        .expect("response")
}

pub(super) fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "code": code.as_u16()});
    json_response(code, &body)
}

/// A get of an absent object, as the API server answers it.
pub(super) fn not_found(plural: &str, name: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{plural} \"{name}\" not found"), "reason": "NotFound",
        "details": {"name": name, "kind": plural}, "code": 404});
    json_response(StatusCode::NOT_FOUND, &body)
}

pub(super) fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(Full::new(Bytes::from(body.to_string()))))
        .expect("response")
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&value[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
