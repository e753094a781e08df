//! The API server as a state source: kube-rs watchers on the kinds the mesh needs, feeding the
//! same [`StateUpdate`]s as the local file.
//!
//! One watcher per kind (`list` + `watch` only, see [`super::access`]): Namespaces; this node's
//! Pods (field selector `spec.nodeName=<node>`, kept whole for enrollment decisions) and the
//! other Pods (`spec.nodeName!=<node>`, kept only as the trimmed [`Workload`] the data path
//! needs); Services and EndpointSlices; Istio's AuthorizationPolicies, PeerAuthentications and
//! RequestAuthentications (kept to be reported: marrow does not enforce them).
//! kube-runtime's watcher lists (paginated, or as a streaming list where the server offers
//! one), then watches with bookmarks; on `410 Gone` or a dropped watch it re-lists, with
//! backoff while the server is unreachable.
//!
//! Invariants:
//! - Nothing is published before every kind has been listed once, so the data path never
//!   sees a half-known cluster. A re-list replaces a kind's objects only when it completes,
//!   so the last state keeps serving while the API server is away.
//! - One malformed object is left out with a warning naming it; it does not refuse its kind.
//!   A policy marrow cannot enforce as written never refuses a version: it is handled
//!   fail-safe and reported (see [`crate::policy`]), by the same code as for the state file.
//! - A kind whose resource the server does not have (Istio's CRDs not installed: 404) counts as
//!   listed and empty, and is retried.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::objects::{RawKind, RawObject};
use crate::state::{Namespace, StateStore, StateUpdate, Workload, k8s};

/// Pause after a change before a new state version is built, so a burst of events (a list, a
/// rollout) makes one version, not hundreds.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);

/// The kinds watched, for status and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Namespace.
    Namespaces,
    /// v1 Pod on this node.
    LocalPods,
    /// v1 Pod elsewhere.
    RemotePods,
    /// v1 Service.
    Services,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlices,
    /// security.istio.io/v1 AuthorizationPolicy.
    AuthorizationPolicies,
    /// security.istio.io/v1 PeerAuthentication.
    PeerAuthentications,
    /// security.istio.io/v1 RequestAuthentication.
    RequestAuthentications,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::Namespaces,
        Kind::LocalPods,
        Kind::RemotePods,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::AuthorizationPolicies,
        Kind::PeerAuthentications,
        Kind::RequestAuthentications,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Namespaces => "namespaces",
            Kind::LocalPods => "pods on this node",
            Kind::RemotePods => "pods on other nodes",
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::AuthorizationPolicies => "authorizationpolicies",
            Kind::PeerAuthentications => "peerauthentications",
            Kind::RequestAuthentications => "requestauthentications",
        }
    }
}

/// Where to watch from.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    node_name: Option<String>,
    root_namespace: String,
    debounce: Duration,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("node_name", &self.node_name)
            .field("root_namespace", &self.root_namespace)
            .finish_non_exhaustive()
    }
}

/// The objects of every kind as last listed/watched, converted to the state's types.
#[derive(Debug, Default)]
struct Caches {
    namespaces: BTreeMap<String, Namespace>,
    /// This node's pods, whole (enrollment decisions need their annotations and spec).
    local_pods: BTreeMap<String, Arc<Pod>>,
    /// Every pod's workload, by `namespace/name`, local and remote.
    workloads: HashMap<String, Arc<Workload>>,
    /// Which keys of `workloads` each pod watcher put there.
    workload_keys: HashMap<Kind, std::collections::HashSet<String>>,
    /// Services, EndpointSlices and policies, kept as JSON for the state's parsers.
    raw: BTreeMap<(Kind, String), RawObject>,
    /// Kinds listed at least once.
    synced: std::collections::HashSet<Kind>,
    /// The objects of a re-list in progress, per kind, swapped in when it completes.
    relisting: HashMap<Kind, Vec<Object>>,
    /// Counts visible changes; a version is built only when it moved.
    changes: u64,
}

/// One object converted for the caches.
#[derive(Debug)]
enum Object {
    Namespace(Namespace),
    Pod {
        key: String,
        workload: Option<Arc<Workload>>,
        whole: Option<Arc<Pod>>,
    },
    Raw(String, RawObject),
}

/// How the source is doing, for readiness and the admin API.
#[derive(Debug, Default)]
pub struct SourceStatus {
    inner: Mutex<StatusInner>,
}

#[derive(Debug)]
struct Failing {
    since: Instant,
    last: Instant,
    why: String,
}

#[derive(Debug, Default)]
struct StatusInner {
    /// Per kind: since when its watcher fails, when it last failed, and why.
    failing: BTreeMap<Kind, Failing>,
    synced: bool,
}

impl SourceStatus {
    /// Whether every kind was listed once and a state is published.
    pub fn synced(&self) -> bool {
        self.lock().synced
    }

    /// A line for readiness: `None` when all is well, else what is wrong and since when.
    pub fn detail(&self) -> Option<String> {
        let inner = self.lock();
        let parts: Vec<String> = inner
            .failing
            .iter()
            .map(|(kind, failing)| {
                format!(
                    "API server: watching {} fails for {}s ({}); the last state keeps serving",
                    kind.name(),
                    failing.since.elapsed().as_secs(),
                    failing.why
                )
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    fn failing(&self, kind: Kind, why: String) {
        let now = Instant::now();
        let mut inner = self.lock();
        let entry = inner.failing.entry(kind).or_insert(Failing {
            since: now,
            last: now,
            why: String::new(),
        });
        entry.last = now;
        entry.why = why;
    }

    fn recovered(&self, kind: Kind) {
        if self.lock().failing.remove(&kind).is_some() {
            info!(kind = kind.name(), "API server watch recovered");
        }
    }

    /// The API server answered a probe started at `probed`: every kind whose last failure is
    /// older is watching again (kube-runtime's watcher emits nothing when a watch merely
    /// resumes). A kind that still fails fails again on its next attempt.
    fn answered_since(&self, probed: Instant) {
        let mut inner = self.lock();
        let before = inner.failing.len();
        inner.failing.retain(|_, failing| failing.last >= probed);
        if inner.failing.len() < before {
            info!("API server reachable again");
        }
    }

    fn any_failing(&self) -> bool {
        !self.lock().failing.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running watchers; dropping it stops them.
#[derive(Debug)]
#[must_use = "dropping the KubeWatch stops the watchers"]
pub struct KubeWatch {
    tasks: Vec<JoinHandle<()>>,
    status: Arc<SourceStatus>,
}

impl KubeWatch {
    /// The source's status.
    pub fn status(&self) -> Arc<SourceStatus> {
        self.status.clone()
    }
}

impl Drop for KubeWatch {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Shared by the watcher tasks and the builder.
struct Shared {
    caches: Mutex<Caches>,
    changed: Notify,
    status: Arc<SourceStatus>,
}

impl KubeSource {
    /// Watches through `client`; `node_name` splits local from remote pods (without it every
    /// pod is remote: trimmed).
    pub fn new(client: Client, node_name: Option<String>, root_namespace: &str) -> KubeSource {
        KubeSource {
            client,
            node_name,
            root_namespace: root_namespace.to_owned(),
            debounce: DEFAULT_DEBOUNCE,
        }
    }

    /// Sets the pause between a change and the version built from it.
    pub fn with_debounce(mut self, debounce: Duration) -> KubeSource {
        self.debounce = debounce;
        self
    }

    /// Starts the watchers and the builder that publishes into `store`. Returns at once; see
    /// [`SourceStatus::synced`] for the first complete state.
    pub fn start(self, store: Arc<StateStore>) -> KubeWatch {
        let status = Arc::new(SourceStatus::default());
        let shared = Arc::new(Shared {
            caches: Mutex::new(Caches::default()),
            changed: Notify::new(),
            status: status.clone(),
        });
        let client = self.client.clone();
        let on_node = self
            .node_name
            .as_ref()
            .map(|node| format!("spec.nodeName={node}"));
        let off_node = self
            .node_name
            .as_ref()
            .map(|node| format!("spec.nodeName!={node}"));
        let mut tasks = vec![
            spawn_watch(
                Api::<K8sNamespace>::all(client.clone()),
                watcher::Config::default(),
                Kind::Namespaces,
                shared.clone(),
                |ns| k8s::namespace(ns).map(Object::Namespace),
            ),
            spawn_watch(
                Api::<Pod>::all(client.clone()),
                fields(off_node),
                Kind::RemotePods,
                shared.clone(),
                |pod| pod_object(pod, false),
            ),
            spawn_watch(
                Api::<Service>::all(client.clone()),
                watcher::Config::default(),
                Kind::Services,
                shared.clone(),
                |svc| raw_object(RawKind::Service, "Service", svc),
            ),
            spawn_watch(
                Api::<EndpointSlice>::all(client.clone()),
                watcher::Config::default(),
                Kind::EndpointSlices,
                shared.clone(),
                |slice| raw_object(RawKind::EndpointSlice, "EndpointSlice", slice),
            ),
        ];
        if on_node.is_some() {
            tasks.push(spawn_watch(
                Api::<Pod>::all(client.clone()),
                fields(on_node),
                Kind::LocalPods,
                shared.clone(),
                |pod| pod_object(pod, true),
            ));
        } else {
            shared
                .caches
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .synced
                .insert(Kind::LocalPods);
        }
        for (kind, kind_name, raw) in [
            (
                Kind::AuthorizationPolicies,
                "AuthorizationPolicy",
                RawKind::AuthorizationPolicy,
            ),
            (
                Kind::PeerAuthentications,
                "PeerAuthentication",
                RawKind::PeerAuthentication,
            ),
            (
                Kind::RequestAuthentications,
                "RequestAuthentication",
                RawKind::RequestAuthentication,
            ),
        ] {
            let resource =
                ApiResource::from_gvk(&GroupVersionKind::gvk("security.istio.io", "v1", kind_name));
            tasks.push(spawn_watch(
                Api::<DynamicObject>::all_with(client.clone(), &resource),
                watcher::Config::default(),
                kind,
                shared.clone(),
                move |object| {
                    let mut object = object.clone();
                    object.types = Some(kube::core::TypeMeta {
                        api_version: "security.istio.io/v1".into(),
                        kind: kind_name.into(),
                    });
                    raw_object(raw, kind_name, &object)
                },
            ));
        }
        tasks.push(tokio::spawn(probe_while_failing(
            self.client.clone(),
            status.clone(),
        )));
        tasks.push(tokio::spawn(build_loop(
            shared,
            store,
            self.root_namespace,
            self.debounce,
        )));
        KubeWatch { tasks, status }
    }
}

/// A watcher config with an optional field selector.
fn fields(selector: Option<String>) -> watcher::Config {
    let config = watcher::Config::default();
    match selector {
        Some(selector) => config.fields(&selector),
        None => config,
    }
}

/// A pod for the caches: its workload (`None` when finished), and the whole object if local.
fn pod_object(pod: &Pod, local: bool) -> Result<Object, crate::state::ObjectError> {
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

/// A Service, EndpointSlice or policy kept as JSON.
fn raw_object<K: serde::Serialize + ResourceExt>(
    kind: RawKind,
    kind_name: &str,
    object: &K,
) -> Result<Object, crate::state::ObjectError> {
    let mut body =
        serde_json::to_value(object).map_err(|e| crate::state::ObjectError::Malformed {
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

/// Runs one kind's watcher until aborted, folding its events into the caches.
fn spawn_watch<K, F>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    shared: Arc<Shared>,
    convert: F,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Fn(&K) -> Result<Object, crate::state::ObjectError> + Send + Sync + 'static,
{
    tokio::spawn(async move {
        let stream = watcher::watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(event) => {
                    shared.status.recovered(kind);
                    if apply_event(&shared, kind, event, &convert) {
                        shared.changed.notify_one();
                    }
                }
                Err(error) => {
                    let missing = matches!(
                        &error,
                        watcher::Error::InitialListFailed(kube::Error::Api(response))
                            | watcher::Error::WatchFailed(kube::Error::Api(response))
                            if response.code == 404
                    );
                    if missing {
                        let mut caches =
                            shared.caches.lock().unwrap_or_else(PoisonError::into_inner);
                        if caches.synced.insert(kind) {
                            warn!(
                                kind = kind.name(),
                                "the API server has no such resource (CRD not installed?); treated as empty"
                            );
                            drop(caches);
                            shared.changed.notify_one();
                        }
                        continue;
                    }
                    warn!(kind = kind.name(), %error, "API server watch failed; retrying with backoff, the last state keeps serving");
                    shared.status.failing(kind, error.to_string());
                }
            }
        }
    })
}

/// Folds one event into the caches; whether anything visible changed.
fn apply_event<K, F>(shared: &Shared, kind: Kind, event: Event<K>, convert: &F) -> bool
where
    K: Resource + Debug,
    F: Fn(&K) -> Result<Object, crate::state::ObjectError>,
{
    let describe = |object: &K| {
        format!(
            "{}/{}",
            object.meta().namespace.as_deref().unwrap_or("-"),
            object.meta().name.as_deref().unwrap_or("?")
        )
    };
    let converted = |object: &K| match convert(object) {
        Ok(converted) => Some(converted),
        Err(error) => {
            warn!(kind = kind.name(), object = %describe(object), %error, "object left out of the state");
            None
        }
    };
    let mut caches = shared.caches.lock().unwrap_or_else(PoisonError::into_inner);
    let changed = match event {
        Event::Init => {
            caches.relisting.insert(kind, Vec::new());
            false
        }
        Event::InitApply(object) => {
            if let Some(object) = converted(&object) {
                caches.relisting.entry(kind).or_default().push(object);
            }
            false
        }
        Event::InitDone => {
            let objects = caches.relisting.remove(&kind).unwrap_or_default();
            caches.replace_kind(kind, objects);
            if caches.synced.insert(kind) {
                info!(kind = kind.name(), "listed");
            }
            true
        }
        Event::Apply(object) => match converted(&object) {
            Some(object) => {
                caches.insert(kind, object);
                true
            }
            None => false,
        },
        Event::Delete(object) => {
            caches.remove(kind, &object);
            true
        }
    };
    if changed {
        caches.changes += 1;
    }
    changed
}

impl Caches {
    /// Replaces every object of `kind` (a completed re-list).
    fn replace_kind(&mut self, kind: Kind, objects: Vec<Object>) {
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

    fn insert(&mut self, kind: Kind, object: Object) {
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

    fn remove<K: Resource>(&mut self, kind: Kind, object: &K) {
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
    fn build(&self, root_namespace: &str) -> StateUpdate {
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
        update
    }
}

/// How often the API server is probed while a watcher fails.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// While any watcher fails, asks the API server for its version now and then; an answer
/// clears the failures older than the question (see [`SourceStatus::answered_since`]).
async fn probe_while_failing(client: Client, status: Arc<SourceStatus>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if !status.any_failing() {
            continue;
        }
        let probed = Instant::now();
        if client.apiserver_version().await.is_ok() {
            // The watchers' retries come after the probe; give them a moment to fail anew.
            tokio::time::sleep(PROBE_EVERY).await;
            status.answered_since(probed);
        }
    }
}

/// Publishes a new version after each burst of changes, once every kind has been listed.
async fn build_loop(
    shared: Arc<Shared>,
    store: Arc<StateStore>,
    root_namespace: String,
    debounce: Duration,
) {
    let mut built_from = None;
    loop {
        shared.changed.notified().await;
        tokio::time::sleep(debounce).await;
        let built = {
            let caches = shared.caches.lock().unwrap_or_else(PoisonError::into_inner);
            // Several notifications for one burst: one version.
            if built_from == Some(caches.changes) {
                continue;
            }
            let missing: Vec<&str> = Kind::ALL
                .iter()
                .filter(|k| !caches.synced.contains(k))
                .map(|k| k.name())
                .collect();
            if !missing.is_empty() {
                debug!(waiting_for = ?missing, "not every kind listed yet");
                continue;
            }
            built_from = Some(caches.changes);
            caches.build(&root_namespace)
        };
        let snapshot = store.apply(built);
        let mut status = shared.status.lock();
        if !status.synced {
            info!(
                generation = snapshot.generation(),
                workloads = snapshot.workload_count(),
                "cluster state from the API server"
            );
        }
        status.synced = true;
    }
}
