//! The Kubernetes vocabulary every layer shares: how an object is named ([`ObjectRef`]), a
//! pod's uid ([`PodUid`]), the kind of workload that owns a pod ([`WorkloadType`]), and the
//! objects a source keeps whole for the module that models them ([`RawObject`]).
//!
//! A leaf: the state store, the policy parser, the HBONE metadata and the programs all name
//! these, and none of them owns them, so no import goes upward from here.

use std::fmt;

/// A pod's uid (`metadata.uid`), or the stable one derived from its namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodUid(String);

impl PodUid {
    /// Wraps a uid as given.
    pub fn new(uid: impl Into<String>) -> Self {
        Self(uid.into())
    }

    /// The uid of a pod that has none: `<namespace>.<name>`. Namespaces cannot contain dots and
    /// real uids (UUIDs) never do, so it is unambiguous and never equals a real uid.
    pub fn derived(namespace: &str, name: &str) -> Self {
        Self(format!("{namespace}.{name}"))
    }

    /// The uid as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PodUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kind of workload a pod belongs to, as Istio's ambient index names it (istio/istio
/// `pilot/pkg/serviceregistry/kube/controller/ambient/workloads.go`, `workloadNameAndType`):
/// the `<type>` of the `k8s.<type>.name` baggage key ztunnel sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum WorkloadType {
    /// A Deployment's pod (through its ReplicaSet).
    Deployment,
    /// A CronJob's pod.
    CronJob,
    /// A Job's pod.
    Job,
    /// Any other pod: bare, or of another controller (StatefulSet, DaemonSet, …).
    #[default]
    Pod,
}

impl WorkloadType {
    /// Every kind.
    pub const ALL: [WorkloadType; 4] = [
        WorkloadType::Deployment,
        WorkloadType::CronJob,
        WorkloadType::Job,
        WorkloadType::Pod,
    ];

    /// `deployment`, `cronjob`, `job` or `pod`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadType::Deployment => "deployment",
            WorkloadType::CronJob => "cronjob",
            WorkloadType::Job => "job",
            WorkloadType::Pod => "pod",
        }
    }
}

/// The name of the ConfigMap that holds Istio's MeshConfig.
pub const MESH_CONFIG_NAME: &str = "istio";

/// The ConfigMap key whose value is the MeshConfig, as YAML.
pub const MESH_CONFIG_KEY: &str = "mesh";

/// Names an object for logs and errors: `Pod shop/web-1`, `Namespace shop`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    /// `kind`.
    pub kind: String,
    /// `metadata.namespace`; `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// `metadata.name`; empty when the object has none.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() {
            "<unnamed>"
        } else {
            &self.name
        };
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{name}", self.kind),
            None => write!(f, "{} {name}", self.kind),
        }
    }
}

/// The kinds a source keeps whole, as JSON, for the module that models them: Services and
/// EndpointSlices for [`crate::state::services`], Istio's security objects for [`crate::policy`],
/// the Gateway API's Gateways and GatewayClasses for `crate::state::waypoints`, Istio's Telemetry
/// objects and MeshConfig for [`crate::trace::provider`], the route objects and DestinationRules
/// for [`crate::traffic`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RawKind {
    /// `v1` Service.
    Service,
    /// `discovery.k8s.io/v1` EndpointSlice.
    EndpointSlice,
    /// `security.istio.io` AuthorizationPolicy.
    AuthorizationPolicy,
    /// `security.istio.io` PeerAuthentication.
    PeerAuthentication,
    /// `security.istio.io` RequestAuthentication: kept to be reported, never enforced.
    RequestAuthentication,
    /// `gateway.networking.k8s.io` Gateway (v1, or v1beta1: the same schema).
    Gateway,
    /// `gateway.networking.k8s.io` GatewayClass (cluster-scoped).
    GatewayClass,
    /// `telemetry.istio.io` Telemetry (v1, or v1alpha1: the same schema).
    Telemetry,
    /// `networking.istio.io` VirtualService (v1, v1beta1, v1alpha3: the same schema).
    VirtualService,
    /// `networking.istio.io` DestinationRule (v1, v1beta1, v1alpha3: the same schema).
    DestinationRule,
    /// `gateway.networking.k8s.io` HTTPRoute (v1, v1beta1).
    HttpRoute,
    /// `gateway.networking.k8s.io` GRPCRoute (v1, v1alpha2).
    GrpcRoute,
    /// `gateway.networking.k8s.io` TCPRoute (v1alpha2).
    TcpRoute,
    /// Istio's MeshConfig: the `v1` ConfigMap `istio` in the root namespace (key `mesh`). Never
    /// returned by [`RawKind::of`]: whether a ConfigMap is this one depends on its name and
    /// namespace, which the sources check ([`RawKind::is_mesh_config`]).
    MeshConfig,
}

impl RawKind {
    /// The kind for an `apiVersion` and `kind`, if it is one of the raw ones.
    pub fn of(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            ("v1", "Service") => Some(Self::Service),
            ("discovery.k8s.io/v1", "EndpointSlice") => Some(Self::EndpointSlice),
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                Some(Self::AuthorizationPolicy)
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                Some(Self::PeerAuthentication)
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "RequestAuthentication") => {
                Some(Self::RequestAuthentication)
            }
            ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "Gateway") => {
                Some(Self::Gateway)
            }
            (
                "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1",
                "GatewayClass",
            ) => Some(Self::GatewayClass),
            ("telemetry.istio.io/v1" | "telemetry.istio.io/v1alpha1", "Telemetry") => {
                Some(Self::Telemetry)
            }
            (
                "networking.istio.io/v1"
                | "networking.istio.io/v1beta1"
                | "networking.istio.io/v1alpha3",
                "VirtualService",
            ) => Some(Self::VirtualService),
            (
                "networking.istio.io/v1"
                | "networking.istio.io/v1beta1"
                | "networking.istio.io/v1alpha3",
                "DestinationRule",
            ) => Some(Self::DestinationRule),
            ("gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1beta1", "HTTPRoute") => {
                Some(Self::HttpRoute)
            }
            (
                "gateway.networking.k8s.io/v1" | "gateway.networking.k8s.io/v1alpha2",
                "GRPCRoute",
            ) => Some(Self::GrpcRoute),
            ("gateway.networking.k8s.io/v1alpha2", "TCPRoute") => Some(Self::TcpRoute),
            _ => None,
        }
    }

    /// Whether a `v1` ConfigMap named `name` in `namespace` is Istio's MeshConfig: the one named
    /// `istio` in the root namespace (istio/istio `pkg/config/mesh/kubemesh/watcher.go` reads
    /// that ConfigMap's `mesh` key). Every other ConfigMap is ignored.
    pub fn is_mesh_config(namespace: &str, name: &str, root_namespace: &str) -> bool {
        name == MESH_CONFIG_NAME && namespace == root_namespace
    }

    /// Whether objects of this kind have no namespace (`metadata.namespace` is ignored).
    pub fn cluster_scoped(self) -> bool {
        matches!(self, Self::GatewayClass)
    }
}

/// An object of a [`RawKind`], kept whole: its modelling module parses it, the admin dump shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RawObject {
    /// Which kind.
    pub kind: RawKind,
    /// Its name.
    pub object: ObjectRef,
    /// The whole object, as JSON.
    pub body: serde_json::Value,
}

/// A time as Kubernetes writes it in `status` (RFC 3339, whole seconds, UTC:
/// `2026-12-07T18:59:02Z`), of Unix seconds; past the calendar's range, the epoch.
pub fn timestamp(unix_secs: u64) -> String {
    let t = i64::try_from(unix_secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod timestamp_tests {
    use super::timestamp;

    #[test]
    fn a_timestamp_is_rfc3339_in_whole_seconds_and_out_of_range_is_the_epoch() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(timestamp(1_796_669_942), "2026-12-07T18:59:02Z");
        assert_eq!(timestamp(u64::MAX), "1970-01-01T00:00:00Z");
    }
}
