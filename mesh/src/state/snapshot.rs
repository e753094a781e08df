//! [`Snapshot`], the immutable state the data path reads, and [`StateUpdate`], the one way to
//! build it.
//!
//! Invariants, checked as each object is added so a source can name the object at fault:
//! - a pod's namespace/name, a pod's uid, and a namespace's name are unique;
//! - an IP belongs to at most one workload (host-network pods share their node's address and
//!   are not indexed by IP, so they never collide);
//! - every index holds the same `Arc<Workload>`, so a workload is one allocation.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::ObjectError;
use super::model::{Namespace, Workload, in_mesh};
use crate::objects::{ObjectRef, PodUid, RawObject};

/// One consistent view of the mesh: workloads, namespaces, the raw objects and what is parsed
/// from them (policies, Services). Never changes once published; a new one replaces it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Set by the store when published; 0 for the empty initial snapshot.
    generation: u64,
    workloads_by_uid: HashMap<PodUid, Arc<Workload>>,
    workloads_by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// Keyed `<namespace>/<name>`: neither part can contain `/`.
    workloads_by_name: HashMap<String, Arc<Workload>>,
    namespaces: HashMap<String, Arc<Namespace>>,
    raw: BTreeMap<ObjectRef, RawObject>,
    /// The `security.istio.io` objects, parsed from the raw objects.
    policies: Arc<crate::policy::PolicySet>,
    /// Service VIPs and their ready endpoints, from the raw Services and EndpointSlices.
    services: Arc<super::services::ServiceIndex>,
    /// Waypoints and who uses them, from the raw Gateways and the rest.
    waypoints: Arc<super::waypoints::WaypointIndex>,
    /// Routes and DestinationRules, parsed from the raw route objects.
    traffic: Arc<crate::traffic::TrafficSet>,
}

impl Snapshot {
    /// Service VIPs and their endpoints.
    pub fn services(&self) -> &super::services::ServiceIndex {
        &self.services
    }

    /// Waypoints, and which Services and workloads use them.
    pub fn waypoints(&self) -> &super::waypoints::WaypointIndex {
        &self.waypoints
    }

    /// The routes and DestinationRules in force.
    pub fn traffic(&self) -> &crate::traffic::TrafficSet {
        &self.traffic
    }

    /// The authorization and peer-authentication policies in force.
    pub fn policies(&self) -> &crate::policy::PolicySet {
        &self.policies
    }

    /// The workload listening at one of `ips` (a local pod's addresses).
    pub fn workload_at(&self, ips: &[IpAddr]) -> Option<&Arc<Workload>> {
        ips.iter().find_map(|ip| self.workload_by_ip(*ip))
    }

    /// The store's count of published snapshots; grows by one with each.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The workload that owns `ip` (IPv4-mapped IPv6 addresses are looked up as IPv4).
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.workloads_by_ip.get(&ip.to_canonical())
    }

    /// The workload with this uid.
    pub fn workload_by_uid(&self, uid: &PodUid) -> Option<&Arc<Workload>> {
        self.workloads_by_uid.get(uid)
    }

    /// The pod `namespace/name`.
    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<&Arc<Workload>> {
        self.workloads_by_name.get(&name_key(namespace, name))
    }

    /// The namespace called `name`, if the source listed it.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name).map(Arc::as_ref)
    }

    /// Whether `workload` is in the mesh (Istio's rule, [`in_mesh`]).
    pub fn in_mesh(&self, workload: &Workload) -> bool {
        in_mesh(workload, self.namespace(&workload.namespace))
    }

    /// Every workload, in no particular order.
    pub fn workloads(&self) -> impl Iterator<Item = &Arc<Workload>> {
        self.workloads_by_uid.values()
    }

    /// Every namespace, in no particular order.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values().map(Arc::as_ref)
    }

    /// The recognised objects this version keeps but does not enforce, by kind and name.
    pub fn raw_objects(&self) -> impl Iterator<Item = &RawObject> {
        self.raw.values()
    }

    /// How many workloads there are.
    pub fn workload_count(&self) -> usize {
        self.workloads_by_uid.len()
    }
}

/// A full set of objects from one source, assembled into the next [`Snapshot`].
///
/// Each `add_*` checks the object against those already added and refuses it without changing
/// anything. A source that gets an error drops the whole update, so the store only ever
/// receives complete, valid sets.
#[derive(Debug, Default)]
pub struct StateUpdate {
    snapshot: Snapshot,
}

impl StateUpdate {
    /// An empty update.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a namespace; its name must be new.
    pub fn add_namespace(&mut self, namespace: Namespace) -> Result<(), ObjectError> {
        if self.snapshot.namespaces.contains_key(&namespace.name) {
            return Err(ObjectError::Duplicate {
                other: ObjectRef {
                    kind: "Namespace".into(),
                    namespace: None,
                    name: namespace.name,
                },
            });
        }
        self.snapshot
            .namespaces
            .insert(namespace.name.clone(), Arc::new(namespace));
        Ok(())
    }

    /// Adds a workload; its namespace/name, uid and (unless host-network) IPs must be new.
    pub fn add_workload(&mut self, workload: Workload) -> Result<(), ObjectError> {
        self.add_shared_workload(Arc::new(workload))
    }

    /// As [`StateUpdate::add_workload`], for a workload a source keeps between updates (the
    /// API server watchers): shared, not copied, by every snapshot it is in.
    pub fn add_shared_workload(&mut self, workload: Arc<Workload>) -> Result<(), ObjectError> {
        let snap = &mut self.snapshot;
        let key = name_key(&workload.namespace, &workload.name);
        if let Some(other) = snap.workloads_by_name.get(&key) {
            return Err(ObjectError::Duplicate {
                other: pod_ref(other),
            });
        }
        if let Some(other) = snap.workloads_by_uid.get(&workload.uid) {
            return Err(ObjectError::DuplicateUid {
                uid: workload.uid.to_string(),
                other: pod_ref(other),
            });
        }
        let indexed = !workload.host_network;
        if indexed {
            for ip in &workload.ips {
                if let Some(other) = snap.workloads_by_ip.get(ip) {
                    return Err(ObjectError::DuplicateIp {
                        ip: *ip,
                        other: pod_ref(other),
                    });
                }
            }
        }
        if indexed {
            for ip in &workload.ips {
                snap.workloads_by_ip.insert(*ip, Arc::clone(&workload));
            }
        }
        snap.workloads_by_uid
            .insert(workload.uid.clone(), Arc::clone(&workload));
        snap.workloads_by_name.insert(key, workload);
        Ok(())
    }

    /// Keeps an object of a raw kind; its kind/namespace/name must be new.
    pub fn add_raw_object(&mut self, object: RawObject) -> Result<(), ObjectError> {
        if self.snapshot.raw.contains_key(&object.object) {
            return Err(ObjectError::Duplicate {
                other: object.object,
            });
        }
        self.snapshot.raw.insert(object.object.clone(), object);
        Ok(())
    }

    /// Parses the kept `security.istio.io` objects (root namespace `root_namespace`). None
    /// refuses the update: a policy marrow cannot enforce as written is handled fail-safe and
    /// reported. Returns the warnings for the source to log, one line per object and reason.
    pub fn build_policies(&mut self, root_namespace: &str) -> Vec<String> {
        let set =
            crate::policy::PolicySet::from_objects(root_namespace, self.snapshot.raw.values());
        let warnings = set.warnings();
        self.snapshot.policies = Arc::new(set);
        warnings
    }

    /// Indexes the kept Services and EndpointSlices by VIP. A malformed one is left out;
    /// returns a warning for each, for the source to log.
    pub fn build_services(&mut self) -> Vec<String> {
        let (index, warnings) = super::services::ServiceIndex::build(self.snapshot.raw.values());
        self.snapshot.services = Arc::new(index);
        warnings
    }

    /// Indexes the waypoints and their bindings; after [`StateUpdate::build_services`] (a
    /// waypoint's instances are its Service's endpoints). A Gateway it cannot use, or a binding
    /// Istio would refuse, is reported, never refused: returns a warning for each.
    pub fn build_waypoints(&mut self) -> Vec<String> {
        let (index, warnings) = super::waypoints::WaypointIndex::build(&self.snapshot);
        self.snapshot.waypoints = Arc::new(index);
        warnings
    }

    /// Parses the kept route objects and DestinationRules into the snapshot's traffic set;
    /// after [`StateUpdate::build_services`]. A bad object refuses only itself (or the part at
    /// fault): returns a warning per refusal, for the source to log.
    pub fn build_traffic(&mut self) -> Vec<String> {
        let set = crate::traffic::TrafficSet::from_objects(self.snapshot.raw.values());
        let warnings = set.refusals().iter().map(ToString::to_string).collect();
        self.snapshot.traffic = Arc::new(set);
        warnings
    }

    /// Puts a parsed traffic set in the snapshot (the sources build it from the raw objects).
    pub fn set_traffic(&mut self, traffic: crate::traffic::TrafficSet) {
        self.snapshot.traffic = Arc::new(traffic);
    }

    /// The snapshot to publish, with its generation.
    pub(super) fn into_snapshot(self, generation: u64) -> Snapshot {
        Snapshot {
            generation,
            ..self.snapshot
        }
    }
}

fn name_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn pod_ref(workload: &Workload) -> ObjectRef {
    ObjectRef {
        kind: "Pod".into(),
        namespace: Some(workload.namespace.clone()),
        name: workload.name.clone(),
    }
}
