//! Every Kubernetes API call the node proxy makes, in one table: the kube-rs watchers use
//! exactly these, and the ClusterRole in `manifests/` must grant exactly these (a test checks
//! both ways), so least privilege cannot drift from the code.

/// One resource the node proxy reads: API group (`""` for core), resource (plural), verbs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiAccess {
    /// API group: `""` (core), `discovery.k8s.io`, `security.istio.io`,
    /// `gateway.networking.k8s.io`, `telemetry.istio.io`, `networking.istio.io`.
    pub group: &'static str,
    /// Resource name, plural, as in RBAC rules.
    pub resource: &'static str,
    /// Verbs used on it.
    pub verbs: &'static [&'static str],
}

/// Reads only: lists and watches (streaming lists and bookmarks are `watch`).
const READ: &[&str] = &["list", "watch"];

/// What the node proxy calls. Pods are watched twice (this node's in full, the rest trimmed),
/// both with list + watch.
pub const NODE_PROXY_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "",
        resource: "pods",
        verbs: READ,
    },
    ApiAccess {
        group: "",
        resource: "namespaces",
        verbs: READ,
    },
    ApiAccess {
        group: "",
        resource: "services",
        verbs: READ,
    },
    ApiAccess {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: READ,
    },
    ApiAccess {
        group: "security.istio.io",
        resource: "authorizationpolicies",
        verbs: READ,
    },
    ApiAccess {
        group: "security.istio.io",
        resource: "peerauthentications",
        verbs: READ,
    },
    ApiAccess {
        group: "security.istio.io",
        resource: "requestauthentications",
        verbs: READ,
    },
    ApiAccess {
        group: "gateway.networking.k8s.io",
        resource: "gateways",
        verbs: READ,
    },
    ApiAccess {
        group: "gateway.networking.k8s.io",
        resource: "gatewayclasses",
        verbs: READ,
    },
    ApiAccess {
        group: "telemetry.istio.io",
        resource: "telemetries",
        verbs: READ,
    },
    ApiAccess {
        group: "networking.istio.io",
        resource: "virtualservices",
        verbs: READ,
    },
    ApiAccess {
        group: "networking.istio.io",
        resource: "destinationrules",
        verbs: READ,
    },
    ApiAccess {
        group: "gateway.networking.k8s.io",
        resource: "httproutes",
        verbs: READ,
    },
    ApiAccess {
        group: "gateway.networking.k8s.io",
        resource: "grpcroutes",
        verbs: READ,
    },
    ApiAccess {
        group: "gateway.networking.k8s.io",
        resource: "tcproutes",
        verbs: READ,
    },
];

/// One object read by name (list + watch with the field selector `metadata.name=<name>`), which
/// RBAC grants with `resourceNames`: a grant of the whole resource would expose every ConfigMap
/// of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedAccess {
    /// The resource and verbs.
    pub access: ApiAccess,
    /// The one name read.
    pub name: &'static str,
}

/// What the node proxy (and the waypoint, with the same source) reads by name: Istio's
/// MeshConfig, the ConfigMap `istio` (only in the root namespace; RBAC cannot name a namespace
/// in a ClusterRole, and a Role would need the root namespace to exist at install time).
pub const NODE_PROXY_NAMED_ACCESS: &[NamedAccess] = &[NamedAccess {
    access: ApiAccess {
        group: "",
        resource: "configmaps",
        verbs: READ,
    },
    name: crate::objects::MESH_CONFIG_NAME,
}];
