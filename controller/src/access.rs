//! Every Kubernetes API call the controller makes, in one table: the ClusterRole in
//! `manifests/ca.yaml` (`marrow-waypoint-controller`) must grant exactly these (a test checks
//! both ways), so its privileges cannot drift from the code.

use marrow_mesh::apiserver::access::ApiAccess;

/// Watched (list + watch), and server-side applied (patch; create when absent).
const WATCH_AND_APPLY: &[&str] = &["list", "watch", "create", "patch"];

/// What the controller calls: Gateways watched, their status applied; the three kinds it
/// renders watched (for `canManage`, readiness and the ClusterIP) and applied; its election's
/// Lease read, created and updated ([`crate::leader`]). No `get` but the Lease's: the watch
/// caches answer; no `delete`: the garbage collector removes what a Gateway owned.
pub const CONTROLLER_ACCESS: &[ApiAccess] = &[
    ApiAccess {
        group: "gateway.networking.k8s.io",
        resource: "gateways",
        verbs: &["list", "watch"],
    },
    ApiAccess {
        group: "gateway.networking.k8s.io",
        resource: "gateways/status",
        verbs: &["patch"],
    },
    ApiAccess {
        group: "",
        resource: "serviceaccounts",
        verbs: WATCH_AND_APPLY,
    },
    ApiAccess {
        group: "",
        resource: "services",
        verbs: WATCH_AND_APPLY,
    },
    ApiAccess {
        group: "apps",
        resource: "deployments",
        verbs: WATCH_AND_APPLY,
    },
    ApiAccess {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
    },
];
