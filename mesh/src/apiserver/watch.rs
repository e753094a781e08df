//! The API server as a state source: kube-rs watchers on the kinds the mesh needs, feeding the
//! same [`StateUpdate`]s as the local file.
//!
//! One watcher per kind (`list` + `watch` only, see [`super::access`]): Namespaces; this node's
//! Pods (field selector `spec.nodeName=<node>`, kept whole for enrollment decisions) and the
//! other Pods (`spec.nodeName!=<node>`, kept only as the trimmed [`Workload`] the data path
//! needs); Services and EndpointSlices; Istio's AuthorizationPolicies, PeerAuthentications and
//! RequestAuthentications (kept to be reported: marrow does not enforce them); the Gateway
//! API's Gateways and GatewayClasses (which Gateways are waypoints); Istio's Telemetries and its
//! MeshConfig (only the ConfigMap `istio` in the root namespace, by field selector: no other
//! ConfigMap is read), for the L7 programs' tracing provider; Istio's VirtualServices and
//! DestinationRules and the Gateway API's HTTPRoutes, GRPCRoutes and TCPRoutes (traffic
//! management, [`crate::traffic`]).
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

use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace as K8sNamespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::caches::{Caches, Object, pod_object, raw_object};
use super::status::SourceStatus;
use crate::objects::{MESH_CONFIG_NAME, RawKind};
use crate::state::{SourceError, SourceWatch, StateSource, StateStore, k8s};

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
    /// gateway.networking.k8s.io/v1 Gateway.
    Gateways,
    /// gateway.networking.k8s.io/v1 GatewayClass (cluster-scoped).
    GatewayClasses,
    /// telemetry.istio.io/v1 Telemetry.
    Telemetries,
    /// v1 ConfigMap `istio` in the root namespace (Istio's MeshConfig).
    MeshConfig,
    /// networking.istio.io/v1 VirtualService.
    VirtualServices,
    /// networking.istio.io/v1 DestinationRule.
    DestinationRules,
    /// gateway.networking.k8s.io/v1 HTTPRoute.
    HttpRoutes,
    /// gateway.networking.k8s.io/v1 GRPCRoute.
    GrpcRoutes,
    /// gateway.networking.k8s.io/v1alpha2 TCPRoute.
    TcpRoutes,
}

impl Kind {
    const ALL: [Kind; 17] = [
        Kind::Namespaces,
        Kind::LocalPods,
        Kind::RemotePods,
        Kind::Services,
        Kind::EndpointSlices,
        Kind::AuthorizationPolicies,
        Kind::PeerAuthentications,
        Kind::RequestAuthentications,
        Kind::Gateways,
        Kind::GatewayClasses,
        Kind::Telemetries,
        Kind::MeshConfig,
        Kind::VirtualServices,
        Kind::DestinationRules,
        Kind::HttpRoutes,
        Kind::GrpcRoutes,
        Kind::TcpRoutes,
    ];

    pub(super) fn name(self) -> &'static str {
        match self {
            Kind::Namespaces => "namespaces",
            Kind::LocalPods => "pods on this node",
            Kind::RemotePods => "pods on other nodes",
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::AuthorizationPolicies => "authorizationpolicies",
            Kind::PeerAuthentications => "peerauthentications",
            Kind::RequestAuthentications => "requestauthentications",
            Kind::Gateways => "gateways",
            Kind::GatewayClasses => "gatewayclasses",
            Kind::Telemetries => "telemetries",
            Kind::MeshConfig => "configmap istio (meshconfig)",
            Kind::VirtualServices => "virtualservices",
            Kind::DestinationRules => "destinationrules",
            Kind::HttpRoutes => "httproutes",
            Kind::GrpcRoutes => "grpcroutes",
            Kind::TcpRoutes => "tcproutes",
        }
    }
}

/// The custom resources watched: kind, API group, version, Kubernetes kind, raw kind.
const CUSTOM_RESOURCES: [(Kind, &str, &str, &str, RawKind); 11] = [
    (
        Kind::AuthorizationPolicies,
        "security.istio.io",
        "v1",
        "AuthorizationPolicy",
        RawKind::AuthorizationPolicy,
    ),
    (
        Kind::PeerAuthentications,
        "security.istio.io",
        "v1",
        "PeerAuthentication",
        RawKind::PeerAuthentication,
    ),
    (
        Kind::RequestAuthentications,
        "security.istio.io",
        "v1",
        "RequestAuthentication",
        RawKind::RequestAuthentication,
    ),
    (
        Kind::Gateways,
        "gateway.networking.k8s.io",
        "v1",
        "Gateway",
        RawKind::Gateway,
    ),
    (
        Kind::GatewayClasses,
        "gateway.networking.k8s.io",
        "v1",
        "GatewayClass",
        RawKind::GatewayClass,
    ),
    (
        Kind::Telemetries,
        "telemetry.istio.io",
        "v1",
        "Telemetry",
        RawKind::Telemetry,
    ),
    (
        Kind::VirtualServices,
        "networking.istio.io",
        "v1",
        "VirtualService",
        RawKind::VirtualService,
    ),
    (
        Kind::DestinationRules,
        "networking.istio.io",
        "v1",
        "DestinationRule",
        RawKind::DestinationRule,
    ),
    (
        Kind::HttpRoutes,
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
        RawKind::HttpRoute,
    ),
    (
        Kind::GrpcRoutes,
        "gateway.networking.k8s.io",
        "v1",
        "GRPCRoute",
        RawKind::GrpcRoute,
    ),
    // TCPRoute is only in the experimental channel, at v1alpha2.
    (
        Kind::TcpRoutes,
        "gateway.networking.k8s.io",
        "v1alpha2",
        "TCPRoute",
        RawKind::TcpRoute,
    ),
];

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

impl SourceWatch for KubeWatch {
    fn detail(&self) -> Option<String> {
        self.status.detail()
    }
}

impl StateSource for KubeSource {
    fn describe(&self) -> String {
        "--kube".to_owned()
    }

    /// Starts the watchers and waits until every kind has been listed once, logging every 10 s
    /// what it still waits for.
    fn start(
        self: Box<Self>,
        store: Arc<StateStore>,
    ) -> BoxFuture<'static, Result<Box<dyn SourceWatch>, SourceError>> {
        Box::pin(async move {
            let watch = KubeSource::start(*self, store);
            let status = watch.status();
            let mut waited = Duration::ZERO;
            let poll = Duration::from_millis(100);
            while !status.synced() {
                tokio::time::sleep(poll).await;
                waited += poll;
                if waited.as_millis().is_multiple_of(10_000) {
                    info!(
                        waited_secs = waited.as_secs(),
                        detail = status.detail().unwrap_or_default(),
                        "waiting for the first complete list from the API server"
                    );
                }
            }
            Ok(Box::new(watch) as Box<dyn SourceWatch>)
        })
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
            // Only the one ConfigMap: the field selector keeps every other ConfigMap (and
            // whatever it holds) out of this process, and RBAC grants no more (resourceNames).
            spawn_watch(
                Api::<ConfigMap>::namespaced(client.clone(), &self.root_namespace),
                watcher::Config::default().fields(&format!("metadata.name={MESH_CONFIG_NAME}")),
                Kind::MeshConfig,
                shared.clone(),
                |map| raw_object(RawKind::MeshConfig, "ConfigMap", map),
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
        // Custom resources, watched as dynamic objects: their CRDs may be absent. Each at the
        // version its CRD serves as storage today (the API server converts the others).
        for (kind, group, version, kind_name, raw) in CUSTOM_RESOURCES {
            let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind_name));
            tasks.push(spawn_watch(
                Api::<DynamicObject>::all_with(client.clone(), &resource),
                watcher::Config::default(),
                kind,
                shared.clone(),
                move |object| {
                    let mut object = object.clone();
                    object.types = Some(kube::core::TypeMeta {
                        api_version: format!("{group}/{version}"),
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
