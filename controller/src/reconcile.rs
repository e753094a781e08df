//! The control loop: watches Gateways and the three kinds a waypoint is made of, and for each
//! Gateway that changed (or whose objects changed) applies its objects and writes its status,
//! as istiod's deployment controller does (pilot/pkg/config/kube/gatewaycommon/
//! deploymentcontroller.go `Reconcile`, `apply`, `canManage`).
//!
//! Invariants:
//! - nothing is decided before every watch has listed once (istiod's `WaitForCacheSync`);
//! - an object of a waypoint's name that exists without `gateway.istio.io/managed` is never
//!   written (`canManage`): it is reported (warning, `marrow_controller_objects_not_managed_total`);
//! - an apply is sent only when the watched object lacks some field of the render (or is
//!   absent): an unchanged Gateway sends nothing, a hand-edited or deleted object is put back;
//! - a malformed Gateway is refused alone (warning naming the field, a counter by reason);
//! - a deleted Gateway's namespaced objects carry owner references and the API server's
//!   garbage collector removes them, as for istiod's; its ClusterRoleBinding ([`crate::binding`])
//!   cannot be owned, so the controller deletes it when the Gateway goes or stops being a
//!   waypoint, and, on taking up writing (start, or leadership won), every managed binding of a
//!   Gateway that no longer exists.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::binding;
use crate::config::ControllerSettings;
use crate::error::ControllerError;
use crate::gateway::{self, Waypoint};
use crate::render::{self, MANAGED_LABEL, contains};
use crate::status::{self, Observed};
use crate::telemetry::{ControllerTelemetry, KindLabels, ReasonLabels};

mod cleanup;
use cleanup::{delete_binding, sweep_bindings};

/// Pause after an event before reconciling, so a burst (a list, our own applies) makes one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// Wait before retrying a Gateway whose apply or status write failed.
const RETRY: Duration = Duration::from_secs(5);

/// The kinds watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Gateway,
    ServiceAccount,
    Deployment,
    Service,
    ClusterRoleBinding,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Gateway,
        Kind::ServiceAccount,
        Kind::Deployment,
        Kind::Service,
        Kind::ClusterRoleBinding,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::ServiceAccount => "ServiceAccount",
            Kind::Deployment => "Deployment",
            Kind::Service => "Service",
            Kind::ClusterRoleBinding => "ClusterRoleBinding",
        }
    }

    /// The API of `namespace`'s objects of this kind (the cluster's for a cluster-scoped one).
    fn api(self, client: &Client, namespace: &str) -> Api<DynamicObject> {
        match self {
            Kind::ClusterRoleBinding => Api::all_with(client.clone(), &self.resource()),
            _ => Api::namespaced_with(client.clone(), namespace, &self.resource()),
        }
    }

    fn resource(self) -> ApiResource {
        let (group, version) = match self {
            Kind::Gateway => ("gateway.networking.k8s.io", "v1"),
            Kind::Deployment => ("apps", "v1"),
            Kind::ClusterRoleBinding => ("rbac.authorization.k8s.io", "v1"),
            Kind::ServiceAccount | Kind::Service => ("", "v1"),
        };
        ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, self.name()))
    }
}

/// `namespace/name` of an object.
fn key_of(object: &Value) -> String {
    format!(
        "{}/{}",
        object["metadata"]["namespace"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// What the watches have seen, per kind, by `namespace/name`.
#[derive(Debug, Default)]
struct Caches {
    objects: BTreeMap<Kind, BTreeMap<String, Value>>,
    /// A re-list in progress: replaces the kind's objects when complete.
    relisting: BTreeMap<Kind, BTreeMap<String, Value>>,
    synced: BTreeSet<Kind>,
}

/// The shared state of the loop.
struct Context {
    client: Client,
    settings: ControllerSettings,
    telemetry: Arc<ControllerTelemetry>,
    caches: Mutex<Caches>,
    synced: Notify,
    /// Whether this replica holds the Lease (always, without an election): nothing is
    /// written while it does not.
    leading: tokio::sync::watch::Receiver<bool>,
}

impl Context {
    fn leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Every Gateway the watch has seen, for a pass over all when this replica starts leading.
    fn gateway_keys(&self) -> Vec<String> {
        self.caches()
            .objects
            .get(&Kind::Gateway)
            .map(|gateways| gateways.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn caches(&self) -> std::sync::MutexGuard<'_, Caches> {
        self.caches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cached(&self, kind: Kind, key: &str) -> Option<Value> {
        self.caches().objects.get(&kind)?.get(key).cloned()
    }

    /// Folds one watch event into the caches; returns the objects it touched.
    fn fold(&self, kind: Kind, event: Event<DynamicObject>) -> Vec<Value> {
        // A real API server leaves apiVersion and kind out of list items: put them back, so a
        // listed object compares with a render as a watched one does.
        let value = |o: &DynamicObject| {
            let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
            if v.is_object() && v["kind"].is_null() {
                let resource = kind.resource();
                v["apiVersion"] = json!(resource.api_version);
                v["kind"] = json!(resource.kind);
            }
            trimmed(kind, v)
        };
        let mut caches = self.caches();
        match event {
            Event::Init => {
                caches.relisting.insert(kind, BTreeMap::new());
                Vec::new()
            }
            Event::InitApply(object) => {
                let object = value(&object);
                caches
                    .relisting
                    .entry(kind)
                    .or_default()
                    .insert(key_of(&object), object.clone());
                vec![object]
            }
            Event::InitDone => {
                let fresh = caches.relisting.remove(&kind).unwrap_or_default();
                // Objects gone while the watch was away touch their Gateway too.
                let old = caches.objects.insert(kind, fresh).unwrap_or_default();
                let gone = old
                    .into_iter()
                    .filter(|(k, _)| !caches.objects[&kind].contains_key(k))
                    .map(|(_, v)| v)
                    .collect();
                if caches.synced.insert(kind) && caches.synced.len() == Kind::ALL.len() {
                    self.synced.notify_one();
                }
                gone
            }
            Event::Apply(object) => {
                let object = value(&object);
                caches
                    .objects
                    .entry(kind)
                    .or_default()
                    .insert(key_of(&object), object.clone());
                vec![object]
            }
            Event::Delete(object) => {
                let object = value(&object);
                if let Some(objects) = caches.objects.get_mut(&kind) {
                    objects.remove(&key_of(&object));
                }
                vec![object]
            }
        }
    }
}

/// What is kept of an object that is none of ours: the watches see every Service, Deployment
/// and ServiceAccount of the cluster (to know which names are taken, istiod's `canManage`),
/// but only a waypoint's own objects and Gateways of its class are kept whole.
fn trimmed(kind: Kind, object: Value) -> Value {
    let ours = match kind {
        Kind::Gateway => object["spec"]["gatewayClassName"] == gateway::WAYPOINT_CLASS,
        _ => !object["metadata"]["labels"][MANAGED_LABEL].is_null(),
    };
    if ours {
        return object;
    }
    let meta = &object["metadata"];
    json!({"apiVersion": object["apiVersion"], "kind": object["kind"],
        "metadata": {"name": meta["name"], "namespace": meta["namespace"],
            "labels": meta["labels"], "ownerReferences": meta["ownerReferences"]},
        "spec": {"gatewayClassName": object["spec"]["gatewayClassName"]}})
}

/// The Gateways an object's change concerns: itself for a Gateway, the one its labels name for
/// a binding of ours, else its owner Gateways (istiod's `EnqueueForParentHandler`).
fn gateways_of(kind: Kind, object: &Value) -> Vec<String> {
    match kind {
        Kind::Gateway => return vec![key_of(object)],
        Kind::ClusterRoleBinding => {
            return binding::gateway_of(object)
                .filter(|_| binding::ours(object))
                .into_iter()
                .collect();
        }
        _ => {}
    }
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    object["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["kind"] == "Gateway"
                && r["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/"))
        })
        .filter_map(|r| r["name"].as_str())
        .map(|name| format!("{namespace}/{name}"))
        .collect()
}

/// Runs one kind's watch until the loop stops, feeding the caches and the queue.
async fn watch(context: Arc<Context>, kind: Kind, queue: mpsc::UnboundedSender<String>) {
    let api = Api::<DynamicObject>::all_with(context.client.clone(), &kind.resource());
    let mut stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                for object in context.fold(kind, event) {
                    for key in gateways_of(kind, &object) {
                        let _ = queue.send(key);
                    }
                }
            }
            Err(error) => warn!(kind = kind.name(), %error, "watch failed; retrying"),
        }
    }
}

/// The current time as Kubernetes writes it (RFC 3339, seconds, UTC).
fn now() -> String {
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    marrow_mesh::objects::timestamp(unix)
}

/// Watches Gateways and their objects and reconciles them until the returned future is
/// dropped (the watches stop with it).
///
/// With `settings.election`, only while this replica holds the Lease ([`crate::leader`]).
///
/// # Errors
/// When the watches end before every kind was listed once, or the election stops.
pub async fn run(
    client: Client,
    settings: ControllerSettings,
    telemetry: Arc<ControllerTelemetry>,
) -> Result<(), ControllerError> {
    let (lead, leading) = tokio::sync::watch::channel(settings.election.is_none());
    let mut tasks = JoinSet::new();
    // Without an election the sender stays here, so `leading` stays true and open.
    let _single = match settings.election.clone() {
        Some(election) => {
            tasks.spawn(crate::leader::run(client.clone(), election, lead));
            None
        }
        None => Some(lead),
    };
    let context = Arc::new(Context {
        client,
        settings,
        telemetry,
        caches: Mutex::new(Caches::default()),
        synced: Notify::new(),
        leading,
    });
    let (queue, mut keys) = mpsc::unbounded_channel::<String>();
    for kind in Kind::ALL {
        tasks.spawn(watch(context.clone(), kind, queue.clone()));
    }
    context.synced.notified().await;
    info!("waypoint controller synced");
    if context.leading() {
        sweep_bindings(&context).await;
    }
    let mut leadership = context.leading.clone();
    loop {
        let first = tokio::select! {
            key = keys.recv() => key.ok_or(ControllerError::NotSynced)?,
            changed = leadership.changed() => {
                changed.map_err(|_| ControllerError::ElectionStopped)?;
                if *leadership.borrow_and_update() {
                    // Events seen while another replica led were not acted on: a pass over all.
                    info!("leading: reconciling every gateway");
                    for key in context.gateway_keys() {
                        let _ = queue.send(key);
                    }
                    sweep_bindings(&context).await;
                } else {
                    warn!("not leading: the controller writes nothing until it leads again");
                }
                continue;
            }
        };
        if !context.leading() {
            continue;
        }
        tokio::time::sleep(DEBOUNCE).await;
        let mut pending = BTreeSet::from([first]);
        while let Ok(key) = keys.try_recv() {
            pending.insert(key);
        }
        for key in pending {
            if let Err(error) = reconcile(&context, &key).await {
                warn!(gateway = %key, %error, "reconcile failed; retrying");
                let queue = queue.clone();
                tasks.spawn(async move {
                    tokio::time::sleep(RETRY).await;
                    let _ = queue.send(key);
                });
            }
        }
        // Reap finished retry timers so the set does not grow.
        while tasks.try_join_next().is_some() {}
    }
}

/// Brings one Gateway's objects and status to what it asks for.
async fn reconcile(context: &Context, key: &str) -> Result<(), ControllerError> {
    let Some(object) = context.cached(Kind::Gateway, key) else {
        debug!(gateway = %key, "gateway gone; its objects go by owner references");
        return delete_binding(context, key).await;
    };
    let w = match gateway::parse(&object) {
        Ok(Some(w)) => w,
        Ok(None) => return delete_binding(context, key).await,
        Err(error) => {
            warn!(gateway = %key, reason = error.reason(), %error, "gateway refused");
            context
                .telemetry
                .refused
                .get_or_create(&ReasonLabels {
                    reason: error.reason(),
                })
                .inc();
            return Ok(());
        }
    };
    let rendered = render::render(&w, &context.settings);
    let mut applied_service = None;
    let binding = binding::render(&w);
    for (kind, object) in [
        (Kind::ServiceAccount, &rendered.service_account),
        (Kind::ClusterRoleBinding, &binding),
        (Kind::Deployment, &rendered.deployment),
        (Kind::Service, &rendered.service),
    ] {
        let stored = apply(context, &w, kind, object).await?;
        if kind == Kind::Service {
            applied_service = stored;
        }
    }
    let deployment = context.cached(
        Kind::Deployment,
        &format!("{}/{}", w.namespace, w.deployment_name),
    );
    let service = applied_service.or_else(|| {
        context.cached(
            Kind::Service,
            &format!("{}/{}", w.namespace, w.deployment_name),
        )
    });
    write_status(
        context,
        &w,
        &Observed::of(deployment.as_ref(), service.as_ref()),
    )
    .await
}

/// Applies one rendered object unless it is not ours or already as rendered; returns the object
/// as the API server stored it when an apply was sent.
async fn apply(
    context: &Context,
    w: &Waypoint,
    kind: Kind,
    object: &Value,
) -> Result<Option<Value>, ControllerError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let kind_label = KindLabels { kind: kind.name() };
    if let Some(existing) = context.cached(kind, &key_of(object)) {
        if existing["metadata"]["labels"][MANAGED_LABEL].is_null() {
            warn!(gateway = %w.key(), kind = kind.name(), name,
                "existing object has no gateway.istio.io/managed label; left alone");
            context
                .telemetry
                .not_managed
                .get_or_create(&kind_label)
                .inc();
            return Ok(None);
        }
        if contains(&existing, object) {
            return Ok(None);
        }
    }
    // Checked at each write: a replica that lost the Lease stops between two applies.
    if !context.leading() {
        return Ok(None);
    }
    let api = kind.api(&context.client, &w.namespace);
    let params = PatchParams::apply(&context.settings.field_manager).force();
    let stored = api
        .patch(name, &params, &Patch::Apply(object))
        .await
        .map_err(|source| {
            context
                .telemetry
                .api_errors
                .get_or_create(&kind_label)
                .inc();
            ControllerError::Apply {
                kind: kind.name(),
                // A cluster-scoped object has none.
                namespace: match kind {
                    Kind::ClusterRoleBinding => String::new(),
                    _ => w.namespace.clone(),
                },
                name: name.to_owned(),
                source,
            }
        })?;
    context.telemetry.applied.get_or_create(&kind_label).inc();
    info!(gateway = %w.key(), kind = kind.name(), name, "applied");
    Ok(serde_json::to_value(stored).ok())
}

/// Writes the Gateway's status when it differs from what it says.
async fn write_status(
    context: &Context,
    w: &Waypoint,
    observed: &Observed,
) -> Result<(), ControllerError> {
    let desired = status::desired(w, observed, &context.settings.cluster_domain, &now());
    if status::unchanged(&w.status, &desired) || !context.leading() {
        return Ok(());
    }
    let api = Api::<DynamicObject>::namespaced_with(
        context.client.clone(),
        &w.namespace,
        &Kind::Gateway.resource(),
    );
    let body = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": w.name, "namespace": w.namespace}, "status": desired});
    let params = PatchParams::apply(&context.settings.field_manager).force();
    api.patch_status(&w.name, &params, &Patch::Apply(&body))
        .await
        .map_err(|source| {
            context
                .telemetry
                .api_errors
                .get_or_create(&KindLabels { kind: "Gateway" })
                .inc();
            ControllerError::Status {
                gateway: w.key(),
                source,
            }
        })?;
    context.telemetry.status_writes.inc();
    info!(gateway = %w.key(), ready = observed.ready, "status written");
    Ok(())
}
