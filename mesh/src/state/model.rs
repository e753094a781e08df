//! The domain types of the mesh state: what the data path, identity and policy read.
//!
//! They carry no Kubernetes API types (`super::k8s` converts those), so a source other than the
//! API server — the local file today — produces exactly the same values. Everything here is
//! immutable once it is in a [`Snapshot`](super::Snapshot).

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::objects::{PodUid, WorkloadType};

/// The label that enrolls a namespace or a pod (`ambient`) or opts a pod out (`none`), as Istio.
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// The annotation Istio's injector puts on pods that run a sidecar: those stay out of ambient.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
/// The service account of a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// What a `istio.io/dataplane-mode` label says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataplaneMode {
    /// No label, or a value other than `ambient`/`none`: the namespace decides.
    #[default]
    Unset,
    /// `ambient`: enrolled.
    Ambient,
    /// `none`: opted out (meaningful on a pod).
    None,
}

impl DataplaneMode {
    /// Reads the label from a label set; values are case-sensitive, as Istio's.
    pub fn of(labels: &BTreeMap<String, String>) -> Self {
        match labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) {
            Some("ambient") => Self::Ambient,
            Some("none") => Self::None,
            _ => Self::Unset,
        }
    }
}

/// A namespace: only its name and labels matter to the mesh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
}

impl Namespace {
    /// Whether the namespace enrolls its pods (`istio.io/dataplane-mode=ambient`).
    pub fn ambient(&self) -> bool {
        DataplaneMode::of(&self.labels) == DataplaneMode::Ambient
    }
}

/// A pod, as the mesh sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `metadata.uid`, or derived from namespace and name when absent ([`PodUid::derived`]).
    pub uid: PodUid,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `spec.serviceAccountName`, [`DEFAULT_SERVICE_ACCOUNT`] when unset.
    pub service_account: String,
    /// `spec.nodeName`; `None` while unscheduled.
    pub node_name: Option<String>,
    /// `status.podIPs` (with `status.podIP`), deduplicated, primary first; empty while pending.
    pub ips: Vec<IpAddr>,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// The owning workload's name as Istio reports it (`destination_workload`): the Deployment
    /// behind a ReplicaSet, else the controller's name, else the pod's.
    pub workload_name: String,
    /// The kind of that workload (the `k8s.<type>.name` baggage key).
    pub workload_type: WorkloadType,
    /// Istio's canonical service (`service.istio.io/canonical-name`, `app.kubernetes.io/name`,
    /// `app`, else the workload name): metrics and the `baggage` header's `service.name`.
    pub canonical_service: String,
    /// Istio's canonical revision (`service.istio.io/canonical-revision`,
    /// `app.kubernetes.io/version`, `version`, else `latest`).
    pub canonical_revision: String,
    /// `spec.hostNetwork`: the pod shares its node's addresses, so it is never in the mesh and
    /// is not indexed by IP.
    pub host_network: bool,
    /// The pod runs an Istio sidecar ([`SIDECAR_STATUS_ANNOTATION`]): never in ambient.
    pub sidecar: bool,
}

impl Workload {
    /// The (namespace, service account) of its SPIFFE ID `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub fn spiffe_id_parts(&self) -> (&str, &str) {
        (&self.namespace, &self.service_account)
    }

    /// Whether this pod is in the mesh under `snap`'s namespaces (see [`in_mesh`]).
    pub fn captured(&self, snap: &super::Snapshot) -> bool {
        in_mesh(self, snap.namespace(&self.namespace))
    }

    /// The pod's own `istio.io/dataplane-mode` label.
    pub fn dataplane_mode(&self) -> DataplaneMode {
        DataplaneMode::of(&self.labels)
    }
}

/// Istio ambient's enrollment rule: the pod or its namespace says `ambient`, the pod does not
/// say `none`, and the pod neither shares the host's network nor runs a sidecar. A namespace
/// absent from the state counts as unlabelled.
pub fn in_mesh(workload: &Workload, namespace: Option<&Namespace>) -> bool {
    if workload.host_network || workload.sidecar {
        return false;
    }
    match workload.dataplane_mode() {
        DataplaneMode::Ambient => true,
        DataplaneMode::None => false,
        DataplaneMode::Unset => namespace.is_some_and(Namespace::ambient),
    }
}
