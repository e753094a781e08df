//! An in-process stand-in for the Kubernetes API server: it answers list and watch requests
//! with the JSON a real API server sends (lists with `metadata.resourceVersion` and `continue`,
//! newline-delimited watch events, `BOOKMARK`s, `ERROR` events with a `410 Gone` Status), and
//! lets a test change the collections, drop watch connections, expire resource versions
//! (compaction) and go unreachable. It also answers what a CA asks: TokenReviews (from a token
//! table the test fills, audiences checked as the API server checks them), a single object by
//! name (404 `NotFound` Status when absent) and namespaced lists; and what a controller does:
//! server-side apply of an object or its `/status`, the garbage collector's cascade on a
//! delete (`apply`), cluster-scoped ClusterRoleBindings applied, read and deleted by name
//! (`apply`), and a leader election's Lease create and replace with resourceVersion
//! conflicts (`lease`). There is no API server on these machines; this replays what one says.

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
use http_body_util::BodyExt;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

mod apply;
mod lease;
/// Objects as the API server returns them.
pub mod objects;
mod respond;

use apply::answer_patch;
use respond::{answer, answer_post};

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
    /// ClusterIPs handed out to applied Services so far.
    next_cluster_ip: u32,
    /// Tokens the TokenReview endpoint knows: token -> its audiences and user.
    tokens: BTreeMap<String, (Vec<String>, Value)>,
    /// The `spec` of every TokenReview received.
    token_reviews: Vec<Value>,
    /// How many Lease replacements still to answer 409, as if another writer came first.
    lease_conflicts: usize,
}

/// The replay server; dropped, it stops.
pub struct ApiServer {
    /// Where it listens.
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

/// The plural of a kind this server knows.
fn plural_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Lease" => "leases",
        "Namespace" => "namespaces",
        "Pod" => "pods",
        "Service" => "services",
        "EndpointSlice" => "endpointslices",
        "AuthorizationPolicy" => "authorizationpolicies",
        "PeerAuthentication" => "peerauthentications",
        "RequestAuthentication" => "requestauthentications",
        "Telemetry" => "telemetries",
        "VirtualService" => "virtualservices",
        "DestinationRule" => "destinationrules",
        "HTTPRoute" => "httproutes",
        "GRPCRoute" => "grpcroutes",
        "TCPRoute" => "tcproutes",
        "ConfigMap" => "configmaps",
        other => return apply::controller_plural(other),
    })
}

/// The collection path of an object (`/api/v1/pods`, `/apis/<group>/<version>/<plural>`).
fn collection_of(object: &Value) -> String {
    let api_version = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    let plural = plural_of(kind).unwrap_or_else(|| panic!("replay server: unknown kind {kind}"));
    let api_version = served_version(api_version, kind);
    if api_version.contains('/') {
        format!("/apis/{api_version}/{plural}")
    } else {
        format!("/api/{api_version}/{plural}")
    }
}

/// The version a multi-version CRD is read at: a real API server converts an object written at
/// any served version, so one written as `networking.istio.io/v1beta1` lists under `v1` too.
fn served_version<'a>(api_version: &'a str, kind: &str) -> &'a str {
    match (api_version, kind) {
        (
            "networking.istio.io/v1beta1" | "networking.istio.io/v1alpha3",
            "VirtualService" | "DestinationRule",
        ) => "networking.istio.io/v1",
        ("gateway.networking.k8s.io/v1beta1", "HTTPRoute")
        | ("gateway.networking.k8s.io/v1alpha2", "GRPCRoute") => "gateway.networking.k8s.io/v1",
        _ => api_version,
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
                                if req.method() == hyper::Method::POST
                                    || req.method() == hyper::Method::PUT
                                {
                                    let (parts, body) = req.into_parts();
                                    let body = read_body(body).await;
                                    if let Some(response) = lease::answer_write(
                                        &state.0,
                                        &state.1,
                                        &parts.method,
                                        parts.uri.path(),
                                        &body,
                                    ) {
                                        return Ok::<_, Infallible>(response);
                                    }
                                    if parts.method == hyper::Method::PUT {
                                        return Ok::<_, Infallible>(respond::status(
                                            hyper::StatusCode::METHOD_NOT_ALLOWED,
                                            "the replay server replaces Leases only",
                                        ));
                                    }
                                    // Recorded at once, answered after the delay.
                                    let response = answer_post(&state.0, &parts.uri, &body);
                                    let delay = state.0.lock().unwrap().post_delay;
                                    tokio::time::sleep(delay).await;
                                    return Ok::<_, Infallible>(response);
                                }
                                if req.method() == hyper::Method::DELETE {
                                    let (parts, body) = req.into_parts();
                                    let body = read_body(body).await;
                                    return Ok::<_, Infallible>(apply::answer_delete(
                                        &state.0, &state.1, &parts.uri, &body,
                                    ));
                                }
                                if req.method() == hyper::Method::PATCH {
                                    let (parts, body) = req.into_parts();
                                    let body = read_body(body).await;
                                    let content_type = parts
                                        .headers
                                        .get(hyper::header::CONTENT_TYPE)
                                        .and_then(|v| v.to_str().ok());
                                    return Ok::<_, Infallible>(answer_patch(
                                        &state.0,
                                        &state.1,
                                        &parts.uri,
                                        content_type,
                                        &body,
                                    ));
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

    /// Adds or replaces an object (ADDED / MODIFIED to watchers). A Pod, or an object of a
    /// kind the waypoint controller uses, without a uid gets one (a Gateway's names its
    /// resourceVersion, so a Gateway made again under the same name is another owner).
    pub fn apply(&self, mut object: Value) {
        let mut world = self.world.lock().unwrap();
        let kind = object["kind"].as_str().unwrap_or_default();
        // Replacing an object keeps its identity, as an update does.
        let existing_uid = world
            .collections
            .get(&collection_of(&object))
            .and_then(|c| c.objects.get(&key_of(&object)))
            .map(|o| o["metadata"]["uid"].clone())
            .filter(|uid| !uid.is_null());
        if let Some(uid) = existing_uid.filter(|_| object["metadata"]["uid"].is_null()) {
            object["metadata"]["uid"] = uid;
        } else if object["metadata"]["uid"].is_null() {
            if kind == "Pod" {
                object["metadata"]["uid"] =
                    json!(format!("uid-{}", key_of(&object).replace('/', "-")));
            } else if apply::controller_plural(kind).is_some() {
                let uid = format!(
                    "uid-{}-{}-{}",
                    kind.to_lowercase(),
                    key_of(&object).replace('/', "-"),
                    world.resource_version + 1
                );
                object["metadata"]["uid"] = json!(uid);
            }
        }
        apply::record(&mut world, object);
        drop(world);
        let _ = self.changes.send(());
    }

    /// The object of `kind` (`apiVersion` as in the object) `namespace/name`, as stored
    /// (`namespace` empty for a cluster-scoped kind).
    pub fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let probe = json!({"apiVersion": api_version, "kind": kind,
            "metadata": {"namespace": namespace, "name": name}});
        let world = self.world.lock().unwrap();
        let collection = world.collections.get(&collection_of(&probe))?;
        collection.objects.get(&key_of(&probe)).cloned()
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

    /// Deletes an object (DELETED to watchers), and with it what it owns, as the garbage
    /// collector's background propagation does.
    pub fn delete(&self, object: &Value) {
        let mut world = self.world.lock().unwrap();
        world.resource_version += 1;
        let rv = world.resource_version;
        let collection = world.collections.entry(collection_of(object)).or_default();
        if let Some(mut gone) = collection.objects.remove(&key_of(object)) {
            gone["metadata"]["resourceVersion"] = json!(rv.to_string());
            let uid = gone["metadata"]["uid"].as_str().map(str::to_owned);
            collection.history.push(Change {
                resource_version: rv,
                kind: "DELETED",
                object: gone,
            });
            apply::collect_garbage(&mut world, uid.into_iter().collect());
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

    /// Answers the next `count` Lease replacements (PUT) with 409 Conflict, as when another
    /// candidate wrote the Lease between a read and the write.
    pub fn conflict_lease_updates(&self, count: usize) {
        self.world.lock().unwrap().lease_conflicts = count;
    }

    /// The `spec` of every TokenReview received so far.
    pub fn token_reviews(&self) -> Vec<Value> {
        self.world.lock().unwrap().token_reviews.clone()
    }
}

/// A request's whole body (empty when reading it fails: the answer then says what is missing).
async fn read_body(body: hyper::body::Incoming) -> Bytes {
    body.collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default()
}
