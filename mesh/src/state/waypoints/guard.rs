//! Who may reach a workload behind a waypoint: the waypoint's pods, and nobody else.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use super::{Unbound, Waypoint, WaypointIndex, WaypointName};
use crate::objects::PodUid;
use crate::state::Snapshot;
use crate::state::Workload;

/// The waypoints a local workload sits behind, and the identities of their pods: the only
/// clients its node proxy accepts for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaypointGuard {
    /// The waypoints, by its own binding or its Services'.
    pub waypoints: Vec<WaypointName>,
    /// (namespace, service account) of every pod of those waypoints.
    pub identities: BTreeSet<(String, String)>,
}

impl WaypointGuard {
    /// Whether a client of this identity is one of the waypoints.
    pub fn admits(&self, namespace: &str, service_account: &str) -> bool {
        self.identities
            .iter()
            .any(|(ns, sa)| ns == namespace && sa == service_account)
    }

    /// `ns/a, ns/b`: the waypoints, for logs and refusals.
    pub fn names(&self) -> String {
        let names: Vec<String> = self.waypoints.iter().map(ToString::to_string).collect();
        names.join(", ")
    }
}

impl WaypointIndex {
    /// Why a connection to `workload` from a client of identity `client` (namespace, service
    /// account; `None` for plaintext) must be refused: the workload sits behind a waypoint and
    /// the client is none of its pods. `None` when it may pass. The node proxy's decision and
    /// `explain` both ask this, so they say the same.
    ///
    /// ztunnel has no such check of its own: istiod adds an ALLOW policy
    /// `istio_allow_waypoint_*` for it (istio `pilot/pkg/serviceregistry/ambient/policies.go`,
    /// `implicitWaypointPolicy`), and only with `PILOT_AUTO_ALLOW_WAYPOINT_POLICY` set; marrow
    /// always applies it, so nothing gets past a waypoint's L7 policy.
    pub fn refusal(&self, workload: &Workload, client: Option<(&str, &str)>) -> Option<String> {
        let guard = self.guard(workload)?;
        if client.is_some_and(|(ns, sa)| guard.admits(ns, sa)) {
            return None;
        }
        let client = client.map_or_else(
            || "a plaintext client".to_owned(),
            |(ns, sa)| format!("ns/{ns}/sa/{sa}"),
        );
        Some(format!(
            "{}/{} is behind waypoint {} and accepts only its identity; {client} is not it",
            workload.namespace,
            workload.name,
            guard.names()
        ))
    }

    /// The waypoints each workload sits behind: its own binding and its Services' (as
    /// istiod's implicit waypoint policy, `implicitWaypointPolicies` in amb/workloads.go), a
    /// waypoint the state lacks counted too (it admits nobody). Workloads behind the same
    /// waypoints share one guard.
    pub(super) fn guards(&self, snap: &Snapshot) -> HashMap<PodUid, Arc<WaypointGuard>> {
        // Every pod of a waypoint's Gateway, ready or not (istiod's implicit policy allows the
        // ServiceAccounts of the pods labelled with its name), and its ready instances.
        let mut identities: HashMap<&WaypointName, BTreeSet<(String, String)>> = HashMap::new();
        for pod in snap.workloads() {
            if let Some(waypoint) = self.instance_of(pod) {
                identities
                    .entry(&waypoint.name)
                    .or_default()
                    .insert((pod.namespace.clone(), pod.service_account.clone()));
            }
        }
        for waypoint in self.waypoints.values() {
            let set = identities.entry(&waypoint.name).or_default();
            for pod in waypoint.instances() {
                set.insert((pod.namespace.clone(), pod.service_account.clone()));
            }
        }
        let mut shared: HashMap<BTreeSet<WaypointName>, Arc<WaypointGuard>> = HashMap::new();
        let mut guards = HashMap::new();
        for workload in snap.workloads() {
            let mut names = BTreeSet::new();
            let mut add = |binding: Option<&Result<Arc<Waypoint>, Unbound>>| match binding {
                Some(Ok(waypoint)) => {
                    names.insert(waypoint.name.clone());
                }
                Some(Err(Unbound::Missing(name))) => {
                    names.insert(name.clone());
                }
                _ => {}
            };
            add(self.workloads.get(&workload.uid));
            for ip in &workload.ips {
                for service in snap.services().serving(*ip) {
                    add(self
                        .services
                        .get(&(service.namespace.clone(), service.name.clone())));
                }
            }
            if names.is_empty() {
                continue;
            }
            let guard = shared.entry(names).or_insert_with_key(|names| {
                Arc::new(WaypointGuard {
                    waypoints: names.iter().cloned().collect(),
                    identities: names
                        .iter()
                        .filter_map(|n| identities.get(n))
                        .flatten()
                        .cloned()
                        .collect(),
                })
            });
            guards.insert(workload.uid.clone(), guard.clone());
        }
        guards
    }
}
