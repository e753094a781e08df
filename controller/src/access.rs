//! Every Kubernetes API call the controller makes, in one table: the ClusterRole in
//! `manifests/ca.yaml` (`marrow-waypoint-controller`) must grant exactly these (a test checks
//! both ways), so its privileges cannot drift from the code.

use marrow_mesh::apiserver::access::ApiAccess;

/// Watched (list + watch), and server-side applied (patch; create when absent).
const WATCH_AND_APPLY: &[&str] = &["list", "watch", "create", "patch"];

/// What the controller calls: Gateways watched, their status applied; the three kinds it
/// renders watched (for `canManage`, readiness and the ClusterIP) and applied; the waypoints'
/// ClusterRoleBindings watched, applied and deleted (a cluster-scoped object has no owner for
/// the garbage collector to follow, [`crate::binding`]); its election's Lease read, created and
/// updated ([`crate::leader`]). No `get` but the Lease's: the watch caches answer; no other
/// `delete`: the garbage collector removes what a Gateway owned.
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
        group: "rbac.authorization.k8s.io",
        resource: "clusterrolebindings",
        verbs: &["list", "watch", "create", "patch", "delete"],
    },
    ApiAccess {
        group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "update"],
    },
];

/// Calls on named objects only (`resourceNames` in the rule): `bind` on the ClusterRole the
/// waypoints are bound to. The API server refuses a binding to a role whose permissions its
/// creator does not hold, unless the creator may `bind` that role (kubernetes.io, RBAC,
/// "Restrictions on role binding creation or update"); this grants that for one role only.
pub const CONTROLLER_NAMED_ACCESS: &[(ApiAccess, &[&str])] = &[(
    ApiAccess {
        group: "rbac.authorization.k8s.io",
        resource: "clusterroles",
        verbs: &["bind"],
    },
    &[crate::binding::WAYPOINT_ROLE],
)];
