//! An in-process stand-in for the Kubernetes API server: it answers list and watch requests
//! with the JSON a real API server sends (lists with `metadata.resourceVersion` and `continue`,
//! newline-delimited watch events, `BOOKMARK`s, `ERROR` events with a `410 Gone` Status), and
//! lets a test change the collections, drop watch connections, expire resource versions
//! (compaction) and go unreachable. It also answers what a CA asks: TokenReviews (from a token
//! table the test fills, audiences checked as the API server checks them), a single object by
//! name (404 `NotFound` Status when absent) and namespaced lists. There is no API server on
//! these machines; this replays what one says.

#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    reason = "a test fixture: a broken fixture must fail the test loudly"
)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// One change to a collection, as a watch sends it.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    kind: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Collection {
    /// Objects by namespace/name.
    objects: BTreeMap<String, Value>,
    /// Every change, oldest first.
    history: Vec<Change>,
}

#[derive(Debug, Default)]
struct World {
    resource_version: u64,
    /// Watches from a version older than this get 410 Gone.
    compacted_below: u64,
    collections: BTreeMap<String, Collection>,
    /// Answer everything with 503 (the server is "unreachable").
    down: bool,
    /// How long each POST (a TokenReview) takes to answer: a slow API server.
    post_delay: Duration,
    /// Requests seen, `METHOD path?query`.
    requests: Vec<String>,
    /// Tokens the TokenReview endpoint knows: token -> its audiences and user.
    tokens: BTreeMap<String, (Vec<String>, Value)>,
    /// The `spec` of every TokenReview received.
    token_reviews: Vec<Value>,
}

/// The replay server; dropped, it stops.
pub struct ApiServer {
    pub addr: SocketAddr,
    world: Arc<Mutex<World>>,
    changes: broadcast::Sender<()>,
    /// Closing watches: bumping this ends every open watch stream.
    drops: broadcast::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
        // Connections still open hold the world: empty it, and end their watches.
        if let Ok(mut world) = self.world.lock() {
            world.collections.clear();
            world.down = true;
        }
        let _ = self.drops.send(());
    }
}

/// The collection path of an object (`/api/v1/pods`, `/apis/<group>/<version>/<plural>`).
fn collection_of(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let plural = match object["kind"].as_str().unwrap_or_default() {
        "Namespace" => "namespaces",
        "Pod" => "pods",
        "Service" => "services",
        "EndpointSlice" => "endpointslices",
        "AuthorizationPolicy" => "authorizationpolicies",
        "PeerAuthentication" => "peerauthentications",
        "RequestAuthentication" => "requestauthentications",
        other => panic!("replay server: unknown kind {other}"),
    };
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or(""),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

impl ApiServer {
    /// Starts serving on a free loopback port.
    pub async fn start() -> ApiServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        ApiServer::serve(listener)
    }

    /// Starts serving on `listener` (bound where the clients are, e.g. in a node's netns).
    /// Call it inside a tokio runtime.
    pub fn start_on(listener: std::net::TcpListener) -> ApiServer {
        listener.set_nonblocking(true).expect("non-blocking");
        ApiServer::serve(TcpListener::from_std(listener).expect("register the listener"))
    }

    fn serve(listener: TcpListener) -> ApiServer {
        let addr = listener.local_addr().expect("address");
        let world = Arc::new(Mutex::new(World {
            resource_version: 1000,
            ..World::default()
        }));
        let (changes, _) = broadcast::channel(1024);
        let (drops, _) = broadcast::channel(16);
        let state = (world.clone(), changes.clone(), drops.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let state = state.clone();
                            async move {
                                if req.method() == hyper::Method::POST {
                                    let (parts, body) = req.into_parts();
                                    let body = body
                                        .collect()
                                        .await
                                        .map(|b| b.to_bytes())
                                        .unwrap_or_default();
                                    // Recorded at once, answered after the delay.
                                    let response = answer_post(&state.0, &parts.uri, &body);
                                    let delay = state.0.lock().unwrap().post_delay;
                                    tokio::time::sleep(delay).await;
                                    return Ok::<_, Infallible>(response);
                                }
                                Ok::<_, Infallible>(answer(&state.0, &state.1, &state.2, req))
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ApiServer {
            addr,
            world,
            changes,
            drops,
            task,
        }
    }

    /// A kube client for this server.
    pub fn client(&self) -> kube::Client {
        let url: http::Uri = format!("http://{}", self.addr).parse().expect("url");
        let mut config = kube::Config::new(url);
        config.read_timeout = Some(Duration::from_secs(30));
        // As the proxy builds its client: the watchers retry with their own backoff and must
        // see a failure to report it.
        config.default_retry = false;
        kube::Client::try_from(config).expect("client")
    }

    /// A kubeconfig (YAML) that points a client at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: replay
  cluster: {{server: \"http://{}\"}}
users:
- name: node-proxy
  user: {{token: replay-token}}
contexts:
- name: replay
  context: {{cluster: replay, user: node-proxy}}
current-context: replay
",
            self.addr
        )
    }

    /// Adds or replaces an object (ADDED / MODIFIED to watchers).
    pub fn apply(&self, mut object: Value) {
        let mut world = self.world.lock().unwrap();
        world.resource_version += 1;
        let rv = world.resource_version;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() && object["kind"] == "Pod" {
            object["metadata"]["uid"] = json!(format!("uid-{}", key_of(&object).replace('/', "-")));
        }
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
            object,
        });
        drop(world);
        let _ = self.changes.send(());
    }

    /// Adds many objects at once, without watch history (a cluster that existed before the
    /// watch started): for the memory measurement's 100,000 pods.
    pub fn seed(&self, objects: impl IntoIterator<Item = Value>) {
        let mut world = self.world.lock().unwrap();
        for mut object in objects {
            world.resource_version += 1;
            object["metadata"]["resourceVersion"] = json!(world.resource_version.to_string());
            let collection = world.collections.entry(collection_of(&object)).or_default();
            collection.objects.insert(key_of(&object), object);
        }
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, object: &Value) {
        let mut world = self.world.lock().unwrap();
        world.resource_version += 1;
        let rv = world.resource_version;
        let collection = world.collections.entry(collection_of(object)).or_default();
        if let Some(mut gone) = collection.objects.remove(&key_of(object)) {
            gone["metadata"]["resourceVersion"] = json!(rv.to_string());
            collection.history.push(Change {
                resource_version: rv,
                kind: "DELETED",
                object: gone,
            });
        }
        drop(world);
        let _ = self.changes.send(());
    }

    /// Ends every open watch connection (the client re-watches from its last version).
    pub fn drop_watches(&self) {
        let _ = self.drops.send(());
    }

    /// Expires every resource version issued so far: the next watch from one gets `410 Gone`,
    /// and the client must list again. Open watches are dropped.
    pub fn compact(&self) {
        let mut world = self.world.lock().unwrap();
        world.compacted_below = world.resource_version + 1;
        drop(world);
        self.drop_watches();
    }

    /// Makes every POST (TokenReviews) take `delay`: an overloaded API server.
    pub fn set_post_delay(&self, delay: Duration) {
        self.world.lock().unwrap().post_delay = delay;
    }

    /// Makes the server answer 503 to everything (and drops watches), or serve again.
    pub fn set_down(&self, down: bool) {
        self.world.lock().unwrap().down = down;
        if down {
            self.drop_watches();
        }
    }

    /// The requests seen so far.
    pub fn requests(&self) -> Vec<String> {
        self.world.lock().unwrap().requests.clone()
    }

    /// Makes `token` valid for `audiences`, authenticating `user` (a `status.user` object, e.g.
    /// [`objects::service_account_user`]). Unknown tokens are refused as the API server refuses
    /// them.
    pub fn add_token(&self, token: &str, audiences: &[&str], user: Value) {
        let audiences = audiences.iter().map(|a| (*a).to_owned()).collect();
        self.world
            .lock()
            .unwrap()
            .tokens
            .insert(token.to_owned(), (audiences, user));
    }

    /// The `spec` of every TokenReview received so far.
    pub fn token_reviews(&self) -> Vec<Value> {
        self.world.lock().unwrap().token_reviews.clone()
    }
}

/// The audience the API server checks a TokenReview against when its spec names none.
const API_SERVER_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// A POST: creating a TokenReview, the only create this server answers.
fn answer_post(world: &Arc<Mutex<World>>, uri: &hyper::Uri, body: &[u8]) -> Response<Body> {
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
fn namespaced(path: &str) -> Option<(String, String, Option<String>)> {
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

fn answer(
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
    let matches = move |object: &Value| match selector.as_deref() {
        None | Some("") => true,
        Some(s) => match s.split_once("!=") {
            Some(("spec.nodeName", node)) => object["spec"]["nodeName"] != node,
            _ => match s.split_once('=') {
                Some(("spec.nodeName", node)) => object["spec"]["nodeName"] == node,
                _ => true,
            },
        },
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
    let Some(collection) = w.collections.get(&path) else {
        // Istio's CRDs may be absent: a real server says 404 for an unknown resource.
        if path.starts_with("/apis/security.istio.io/") && !known_istio(&w) {
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

fn status(code: StatusCode, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "code": code.as_u16()});
    json_response(code, &body)
}

/// A get of an absent object, as the API server answers it.
fn not_found(plural: &str, name: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{plural} \"{name}\" not found"), "reason": "NotFound",
        "details": {"name": name, "kind": plural}, "code": 404});
    json_response(StatusCode::NOT_FOUND, &body)
}

fn json_response(code: StatusCode, body: &Value) -> Response<Body> {
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

/// Objects as the API server returns them.
pub mod objects;
