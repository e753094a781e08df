//! Waypoints: which Gateways are waypoints, where their instances run, and which Services and
//! workloads use one — Istio ambient's binding rules, read from istio/istio
//! `pilot/pkg/serviceregistry/ambient/waypoints.go` (`fetchWaypointForTarget`,
//! `fetchWaypointForService`, `fetchWaypointForWorkload`, `fetchWaypointForInstance`,
//! `makeAllowedRoutes`, `gatewayToWaypointTransform`).
//!
//! Built once per snapshot, after the Service index, and pure: the same objects give the same
//! index.
//! - A Gateway with `gatewayClassName: istio-waypoint` is a waypoint. What it serves is
//!   `istio.io/waypoint-for` on the Gateway, else on its GatewayClass, else `service`.
//! - A Service or pod uses the waypoint its own `istio.io/use-waypoint` label names, else the one
//!   its Namespace's label names (`istio.io/use-waypoint-namespace` on the same object gives the
//!   Gateway's namespace; default: the object's). `none` on the object opts it out. Pods never
//!   inherit from their Services. A label naming a waypoint the state lacks is no waypoint and
//!   no fallback to the Namespace's: [`Unbound::Missing`], and the traffic fails (see
//!   [`super::route`]) — never a bypass.
//! - A waypoint's own Service and its pods never use a waypoint.
//! - Its instances are the ready endpoints of port 15008 of the Service istiod makes for it
//!   (`<gateway>` or the `gateway.istio.io/name-override` annotation, in the Gateway's
//!   namespace), each known by its pod, whose identity is the one to expect there.
//!
//! A Gateway this module cannot read, or a binding upstream would refuse, is reported as a
//! warning naming it; it never refuses the state.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::Value;

use gateway::{AllowedRoutes, labels_of, waypoint_of};
pub use guard::WaypointGuard;

use super::services::ServiceTarget;
use super::{EndpointPicker, Namespace, Snapshot, Workload};
use crate::objects::{PodUid, RawKind};

/// The label that names the waypoint a Namespace, Service or Pod uses (`none`: no waypoint).
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// The label that gives the namespace of the waypoint [`USE_WAYPOINT_LABEL`] names.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// The label on a Gateway or GatewayClass that says what a waypoint serves.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// The GatewayClass of waypoints.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// The label on a waypoint's pods (and its other objects) naming the Gateway.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// The label istiod's controllers put on what they manage.
pub const MANAGED_LABEL: &str = "gateway.istio.io/managed";
/// The annotation that renames a Gateway's Deployment and Service.
pub const NAME_OVERRIDE_ANNOTATION: &str = "gateway.istio.io/name-override";
/// The annotation that names a Gateway's ServiceAccount.
pub const SERVICE_ACCOUNT_ANNOTATION: &str = "gateway.istio.io/service-account";
/// The HBONE port of a waypoint's Service (hard-coded upstream too, `hbone_mtls_port`).
pub const WAYPOINT_HBONE_PORT: u16 = 15008;

/// [`MANAGED_LABEL`] values of Services that never use a waypoint: a waypoint's own and an
/// east/west gateway's (`fetchWaypointForService`).
const GATEWAY_CONTROLLERS: [&str; 2] = ["istio.io-mesh-controller", "istio.io-eastwest-controller"];

/// What a waypoint serves (`istio.io/waypoint-for`; istio `pkg/config/constants`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrafficType {
    /// Traffic addressed to a Service (the default).
    Service,
    /// Traffic addressed to a pod.
    Workload,
    /// Both.
    All,
    /// Nothing (also any value Istio does not define).
    None,
}

impl TrafficType {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Service => "service",
            TrafficType::Workload => "workload",
            TrafficType::All => "all",
            TrafficType::None => "none",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "service" => Some(TrafficType::Service),
            "workload" => Some(TrafficType::Workload),
            "all" => Some(TrafficType::All),
            "none" => Some(TrafficType::None),
            _ => None,
        }
    }

    /// Whether Service-addressed traffic may use it.
    pub fn serves_services(self) -> bool {
        matches!(self, TrafficType::Service | TrafficType::All)
    }

    /// Whether pod-addressed traffic may use it.
    pub fn serves_workloads(self) -> bool {
        matches!(self, TrafficType::Workload | TrafficType::All)
    }
}

impl fmt::Display for TrafficType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A waypoint's Gateway: namespace and name, shown `ns/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WaypointName {
    /// The Gateway's namespace.
    pub namespace: String,
    /// The Gateway's name.
    pub name: String,
}

impl fmt::Display for WaypointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Why a Service or workload uses no waypoint, or cannot use the one it names.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unbound {
    /// Neither it nor its Namespace names a waypoint.
    #[error("no {USE_WAYPOINT_LABEL} label on it or its namespace")]
    NoLabel,
    /// Its own label says `none`.
    #[error("opted out ({USE_WAYPOINT_LABEL}: none)")]
    OptedOut,
    /// It is a waypoint's own Service or pod.
    #[error("it is part of waypoint {0}")]
    IsWaypoint(WaypointName),
    /// The waypoint it names is not in the state (Istio's `WaypointIsNotReady`): its traffic
    /// is refused, never sent around the waypoint.
    #[error("waypoint {0} does not exist (no Gateway of class {WAYPOINT_CLASS} by that name)")]
    Missing(WaypointName),
    /// The waypoint does not serve this kind of traffic (Istio's `UnsupportedTrafficType`).
    #[error("waypoint {waypoint} serves {traffic} traffic, not {wanted}")]
    UnsupportedTrafficType {
        /// The waypoint.
        waypoint: WaypointName,
        /// What it serves.
        traffic: TrafficType,
        /// `service` or `workload`.
        wanted: &'static str,
    },
    /// The waypoint's listener does not admit routes from this namespace (Istio's
    /// `AttachmentDenied`).
    #[error("waypoint {waypoint} does not allow namespace {namespace} to attach (allowedRoutes)")]
    AttachmentDenied {
        /// The waypoint.
        waypoint: WaypointName,
        /// The namespace that tried.
        namespace: String,
    },
}

/// A waypoint: its Gateway, what it serves, and where it runs.
#[derive(Debug)]
pub struct Waypoint {
    /// Its Gateway.
    pub name: WaypointName,
    /// What it serves.
    pub traffic: TrafficType,
    /// The Service istiod makes for it, in the Gateway's namespace.
    pub service_name: String,
    /// The ServiceAccount its pods run as (`gateway.istio.io/service-account`, else the
    /// Gateway's name): its identity is `ns/<gateway ns>/sa/<this>`.
    pub service_account: String,
    allowed: AllowedRoutes,
    /// Port 15008 of its Service, whose ready endpoints are the instances.
    hbone: Option<Arc<ServiceTarget>>,
    /// The pods behind those endpoints, by IP; an endpoint whose pod the state does not know is
    /// left out (no identity to expect).
    instances: HashMap<IpAddr, Arc<Workload>>,
}

impl Waypoint {
    /// The (namespace, service account) of the identity the Gateway's pods are given.
    pub fn identity_parts(&self) -> (&str, &str) {
        (&self.name.namespace, &self.service_account)
    }

    /// `<service>.<namespace>.svc.cluster.local`.
    pub fn host(&self) -> String {
        format!(
            "{}.{}.svc.cluster.local",
            self.service_name, self.name.namespace
        )
    }

    /// The ready instances' pods.
    pub fn instances(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.instances.values()
    }

    /// The next ready instance, balanced as other endpoints: its HBONE address and its pod.
    /// `None` when none is ready (the waypoint is down).
    pub fn pick(&self, picker: &EndpointPicker) -> Option<(SocketAddr, &Arc<Workload>)> {
        let hbone = self.hbone.as_ref()?;
        // Endpoints whose pod is unknown are skipped; at most one round.
        for _ in 0..hbone.endpoints.len() {
            let endpoint = picker.pick(hbone)?;
            if let Some(pod) = self.instances.get(&endpoint.ip().to_canonical()) {
                return Some((endpoint, pod));
            }
        }
        None
    }
}

/// Every waypoint and every binding of a snapshot.
#[derive(Debug, Default)]
pub struct WaypointIndex {
    waypoints: HashMap<WaypointName, Arc<Waypoint>>,
    /// Services that name a waypoint, or are one's, by (namespace, name).
    services: HashMap<(String, String), Result<Arc<Waypoint>, Unbound>>,
    /// Pods that name a waypoint, or are one's.
    workloads: HashMap<PodUid, Result<Arc<Waypoint>, Unbound>>,
    /// Pods behind a waypoint (their own binding or a Service's).
    guards: HashMap<PodUid, Arc<WaypointGuard>>,
}

impl WaypointIndex {
    /// The waypoint of Gateway `namespace/name`.
    pub fn waypoint(&self, namespace: &str, name: &str) -> Option<&Arc<Waypoint>> {
        self.waypoints.get(&WaypointName {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// Every waypoint, in no particular order.
    pub fn waypoints(&self) -> impl Iterator<Item = &Arc<Waypoint>> {
        self.waypoints.values()
    }

    /// The waypoint Service `namespace/name` uses, or why none.
    pub fn for_service(&self, namespace: &str, name: &str) -> Result<&Arc<Waypoint>, Unbound> {
        match self.services.get(&(namespace.to_owned(), name.to_owned())) {
            Some(Ok(waypoint)) => Ok(waypoint),
            Some(Err(why)) => Err(why.clone()),
            None => Err(Unbound::NoLabel),
        }
    }

    /// The waypoint traffic addressed to `workload` uses, or why none.
    pub fn for_workload(&self, workload: &Workload) -> Result<&Arc<Waypoint>, Unbound> {
        match self.workloads.get(&workload.uid) {
            Some(Ok(waypoint)) => Ok(waypoint),
            Some(Err(why)) => Err(why.clone()),
            None => Err(Unbound::NoLabel),
        }
    }

    /// The waypoint `workload` is a pod of, if it is one (its [`GATEWAY_NAME_LABEL`] names a
    /// waypoint of its namespace).
    pub fn instance_of(&self, workload: &Workload) -> Option<&Arc<Waypoint>> {
        let gateway = workload.labels.get(GATEWAY_NAME_LABEL)?;
        self.waypoint(&workload.namespace, gateway)
    }

    /// The waypoints `workload` sits behind, if any.
    pub fn guard(&self, workload: &Workload) -> Option<&Arc<WaypointGuard>> {
        self.guards.get(&workload.uid)
    }

    /// The waypoint a request to `workload` on `port` meets: that of the Service whose endpoint
    /// it is on that port, else the workload's own (Service-addressed traffic uses the
    /// Service's, pod-addressed the pod's).
    pub fn in_front_of(
        &self,
        snap: &Snapshot,
        workload: &Workload,
        port: u16,
    ) -> Option<&Arc<Waypoint>> {
        let by_service = workload.ips.iter().find_map(|ip| {
            snap.services()
                .serving(*ip)
                .filter(|s| s.endpoints.contains(&SocketAddr::new(*ip, port)))
                .find_map(|s| self.for_service(&s.namespace, &s.name).ok())
        });
        by_service.or_else(|| self.for_workload(workload).ok())
    }

    /// Builds the index from `snap`'s namespaces, workloads, Services (indexed already) and
    /// Gateways; returns it and a warning per Gateway it cannot use and per binding refused.
    pub fn build(snap: &Snapshot) -> (WaypointIndex, Vec<String>) {
        let mut warnings = Vec::new();
        let mut classes: HashMap<&str, &Value> = HashMap::new();
        let mut gateways = Vec::new();
        let mut services = Vec::new();
        for object in snap.raw_objects() {
            match object.kind {
                RawKind::GatewayClass => {
                    classes.insert(&object.object.name, &object.body);
                }
                RawKind::Gateway => gateways.push(object),
                RawKind::Service => services.push(object),
                _ => {}
            }
        }
        let mut index = WaypointIndex::default();
        for gateway in gateways {
            let class_label = |name: &str| {
                classes
                    .get(name)
                    .and_then(|c| c["metadata"]["labels"][WAYPOINT_FOR_LABEL].as_str())
            };
            match waypoint_of(snap, &gateway.body, class_label, &mut warnings) {
                Ok(Some(waypoint)) => {
                    index
                        .waypoints
                        .insert(waypoint.name.clone(), Arc::new(waypoint));
                }
                Ok(None) => {}
                Err(why) => warnings.push(format!(
                    "{} is not used as a waypoint: {why}",
                    gateway.object
                )),
            }
        }
        let own_services: HashMap<(String, String), WaypointName> = index
            .waypoints
            .values()
            .map(|w| {
                (
                    (w.name.namespace.clone(), w.service_name.clone()),
                    w.name.clone(),
                )
            })
            .collect();
        for service in services {
            let namespace = service.object.namespace.clone().unwrap_or_default();
            let name = service.object.name.clone();
            let labels = labels_of(&service.body["metadata"]["labels"]);
            let key = (namespace, name);
            let binding = match own_services.get(&key) {
                Some(waypoint) => Err(Unbound::IsWaypoint(waypoint.clone())),
                None if labels
                    .get(MANAGED_LABEL)
                    .is_some_and(|c| GATEWAY_CONTROLLERS.contains(&c.as_str())) =>
                {
                    Err(Unbound::NoLabel)
                }
                None => index.bind(snap, &key.0, &labels, Target::Service),
            };
            report(&mut warnings, "Service", &key.0, &key.1, &binding);
            if !matches!(binding, Err(Unbound::NoLabel)) {
                index.services.insert(key, binding);
            }
        }
        for workload in snap.workloads() {
            let binding = match index.instance_of(workload) {
                Some(waypoint) => Err(Unbound::IsWaypoint(waypoint.name.clone())),
                None => index.bind(
                    snap,
                    &workload.namespace,
                    &workload.labels,
                    Target::Workload,
                ),
            };
            report(
                &mut warnings,
                "Pod",
                &workload.namespace,
                &workload.name,
                &binding,
            );
            if !matches!(binding, Err(Unbound::NoLabel)) {
                index.workloads.insert(workload.uid.clone(), binding);
            }
        }
        index.guards = index.guards(snap);
        (index, warnings)
    }

    /// The waypoint an object of `namespace` with `labels` uses: its own label first, else its
    /// Namespace's (`fetchWaypointForTarget`), then checked against the waypoint's traffic type
    /// and allowed namespaces.
    fn bind(
        &self,
        snap: &Snapshot,
        namespace: &str,
        labels: &BTreeMap<String, String>,
        target: Target,
    ) -> Result<Arc<Waypoint>, Unbound> {
        let ns_labels = snap.namespace(namespace).map(|ns: &Namespace| &ns.labels);
        let (name, from_namespace) = match use_waypoint(labels, namespace) {
            Some(Ok(name)) => (name, false),
            Some(Err(opted_out)) => return Err(opted_out),
            None => match ns_labels.and_then(|l| use_waypoint(l, namespace)) {
                Some(Ok(name)) => (name, true),
                // `none` on a Namespace just means no waypoint.
                Some(Err(_)) | None => return Err(Unbound::NoLabel),
            },
        };
        let Some(waypoint) = self.waypoints.get(&name) else {
            // A workload that only inherits a name the state lacks cannot know whether that
            // waypoint would serve pods at all (the default is services only): no waypoint, as
            // upstream's silent type mismatch for inherited bindings.
            if from_namespace && target == Target::Workload {
                return Err(Unbound::NoLabel);
            }
            return Err(Unbound::Missing(name));
        };
        let permitted = waypoint
            .allowed
            .permits(&waypoint.name.namespace, namespace, ns_labels);
        if !permitted {
            return Err(Unbound::AttachmentDenied {
                waypoint: name,
                namespace: namespace.to_owned(),
            });
        }
        let (serves, wanted) = match target {
            Target::Service => (waypoint.traffic.serves_services(), "service"),
            Target::Workload => (waypoint.traffic.serves_workloads(), "workload"),
        };
        if !serves {
            // `fetchWaypointForWorkload`: a mismatch inherited from the Namespace is silent.
            if from_namespace && target == Target::Workload {
                return Err(Unbound::NoLabel);
            }
            return Err(Unbound::UnsupportedTrafficType {
                waypoint: name,
                traffic: waypoint.traffic,
                wanted,
            });
        }
        Ok(waypoint.clone())
    }
}

/// What is binding: a Service (service traffic) or a pod (workload traffic).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Service,
    Workload,
}

/// The waypoint `labels` name (`GetUseWaypoint`): `None` without the label, `Err(OptedOut)` for
/// `none`.
fn use_waypoint(
    labels: &BTreeMap<String, String>,
    own_namespace: &str,
) -> Option<Result<WaypointName, Unbound>> {
    let name = labels.get(USE_WAYPOINT_LABEL).filter(|n| !n.is_empty())?;
    if name == "none" {
        return Some(Err(Unbound::OptedOut));
    }
    let namespace = labels
        .get(USE_WAYPOINT_NAMESPACE_LABEL)
        .filter(|n| !n.is_empty())
        .map_or(own_namespace, String::as_str);
    Some(Ok(WaypointName {
        namespace: namespace.to_owned(),
        name: name.clone(),
    }))
}

/// A warning for a binding upstream would refuse (its Service condition `WaypointBound`).
fn report(
    warnings: &mut Vec<String>,
    kind: &str,
    namespace: &str,
    name: &str,
    binding: &Result<Arc<Waypoint>, Unbound>,
) {
    if let Err(
        why @ (Unbound::Missing(_)
        | Unbound::UnsupportedTrafficType { .. }
        | Unbound::AttachmentDenied { .. }),
    ) = binding
    {
        let effect = match why {
            Unbound::Missing(_) => "its traffic is refused",
            _ => "it uses no waypoint",
        };
        warnings.push(format!("{kind} {namespace}/{name}: {why}; {effect}"));
    }
}

mod gateway;
mod guard;
#[cfg(test)]
mod tests;
