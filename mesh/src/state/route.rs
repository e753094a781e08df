//! The outbound decision: carry a captured connection in HBONE — to the destination's node
//! proxy, or to a waypoint — or pass it through.
//!
//! Pure over a [`Snapshot`]: the same snapshot, source and destination always give the same
//! route, but for which ready endpoint of a Service or waypoint (the [`EndpointPicker`]'s
//! round-robin, kept outside the snapshot, or the caller's [`EndpointChooser`]) and which
//! backend a TCPRoute's weighted choice takes (the [`Attempt`]'s draw).
//!
//! TCPRoute (Gateway API v1alpha2 with a Service parent) is applied here, by the client's node
//! proxy, for a Service without a waypoint: marrow's own addition, ztunnel has no routes.
//!
//! Waypoints as ztunnel uses them (istio/ztunnel `src/proxy/outbound.rs` `build_request`,
//! `src/state.rs` `fetch_service_waypoint`): a Service VIP whose Service uses a waypoint (type
//! service or all) goes in HBONE to an instance of it with `CONNECT <VIP:port>`, the original
//! destination (`hbone_target_destination`); a pod address whose workload uses one (type
//! workload or all) likewise with `CONNECT <pod ip:port>`. Traffic from a waypoint's own pods
//! never goes to a waypoint. A waypoint with no ready instance, or named but absent, refuses
//! the connection (ztunnel's `UnknownWaypoint`): never a way around it.

use std::net::SocketAddr;
use std::sync::Arc;

use marrow_common::HBONE_PORT;

use super::services::ServiceTarget;
use super::waypoints::{Unbound, Waypoint, WaypointName};
use super::{EndpointPicker, Snapshot, Workload};
use crate::traffic::{RouteRef, pick_weighted};

/// Where an outbound connection goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The destination is a workload in the mesh: tunnel to its node proxy.
    Tunnel {
        /// The destination workload (its identity is the server SAN to expect).
        workload: Arc<Workload>,
        /// Where to open the HBONE connection: `<pod ip>:15008`.
        target: SocketAddr,
        /// The CONNECT `:authority`: `<pod ip>:<port>`.
        authority: SocketAddr,
    },
    /// The destination uses a waypoint: tunnel to one of its instances.
    Waypoint {
        /// The waypoint.
        waypoint: WaypointName,
        /// The instance chosen (its identity is the server SAN to expect).
        instance: Arc<Workload>,
        /// Where to open the HBONE connection: `<instance ip>:15008`.
        target: SocketAddr,
        /// The CONNECT `:authority`: the original destination (VIP or pod, and port).
        authority: SocketAddr,
    },
    /// Anything else: plain TCP to the original destination, untouched.
    Passthrough(SocketAddr),
    /// A Service VIP with no ready endpoint: refused, as kube-proxy does.
    NoEndpoint {
        /// The service, `<name>.<namespace>.svc.cluster.local`.
        service: String,
    },
    /// The destination uses a waypoint that has no ready instance, or that the state lacks:
    /// refused, never sent around it.
    WaypointDown {
        /// The waypoint.
        waypoint: WaypointName,
    },
}

/// A [`Route`] and the Service it went to, if the connection addressed a VIP (for its
/// labels: the caller needs not look the VIP up again).
#[derive(Debug)]
pub struct Routed<'s> {
    /// Where the connection goes.
    pub route: Route,
    /// The Service port whose endpoint (or waypoint) was chosen: the one at the addressed
    /// VIP, or the TCPRoute's backend. Its host is `destination_service`, as Istio reports
    /// the chosen cluster's service for a weighted TCP route (the stats filter reads the
    /// upstream cluster's `istio` metadata, istio/istio `pilot/pkg/networking/util`
    /// `AddConfigInfoMetadata` / `AppendLbEndpointMetadata`), not the Service addressed.
    pub service: Option<&'s Arc<ServiceTarget>>,
    /// The Service port at the addressed VIP, when it differs from `service` or not.
    pub addressed: Option<&'s Arc<ServiceTarget>>,
    /// The TCPRoute rule that chose the backend, if one did.
    pub tcp_route: Option<&'s RouteRef>,
}

/// How the ready endpoint of a Service is chosen: [`EndpointPicker`]'s round-robin by default;
/// the node proxy's chooser applies the Service's DestinationRule (load balancer, ejected
/// endpoints skipped).
pub trait EndpointChooser {
    /// One ready endpoint of `target`, never `avoid` (an endpoint that just failed); `None`
    /// when none is left.
    fn choose(
        &self,
        snap: &Snapshot,
        target: &Arc<ServiceTarget>,
        avoid: Option<SocketAddr>,
    ) -> Option<SocketAddr>;
}

impl EndpointChooser for EndpointPicker {
    fn choose(
        &self,
        _snap: &Snapshot,
        target: &Arc<ServiceTarget>,
        avoid: Option<SocketAddr>,
    ) -> Option<SocketAddr> {
        match avoid {
            None => self.pick(target),
            Some(avoid) => self.pick_where(target, |e| e != avoid),
        }
    }
}

/// One try at routing a connection: how endpoints are chosen, the draw of a TCPRoute's
/// weighted choice (the same draw picks the same backend, so a retry stays on it), and an
/// endpoint to avoid.
pub struct Attempt<'a> {
    /// Chooses a Service's endpoint.
    pub chooser: &'a dyn EndpointChooser,
    /// The weighted choice's draw.
    pub draw: u64,
    /// An endpoint not to choose (the one a first try failed on).
    pub avoid: Option<SocketAddr>,
}

/// Routes a connection from `src` (the source pod's workload, if the state knows it) to `dst`
/// (IPv4-mapped IPv6 destinations count as IPv4). A Service VIP goes to its waypoint if it uses
/// one, else resolves to one of its ready endpoints, the one `picker` chooses (see
/// [`super::services`]). Pure over the snapshot but for the picker's round-robin position.
pub fn route<'s>(
    snap: &'s Snapshot,
    src: Option<&Workload>,
    dst: SocketAddr,
    picker: &EndpointPicker,
) -> Routed<'s> {
    let attempt = Attempt {
        chooser: picker,
        draw: fastrand::u64(..),
        avoid: None,
    };
    route_attempt(snap, src, dst, picker, &attempt)
}

/// [`route`] with the endpoint choice, the TCPRoute draw and an endpoint to avoid given.
///
/// A Service VIP without a waypoint whose Service has a TCPRoute (Gateway API v1alpha2,
/// parent the Service) for the port takes a backend Service by weight, then one of the
/// backend's ready endpoints (or the backend's waypoint, if it has one: never around it). A
/// Service with a waypoint leaves its TCPRoutes to the waypoint, which is where Istio applies
/// routes for such a Service (the node proxy only carries the connection there).
pub fn route_attempt<'s>(
    snap: &'s Snapshot,
    src: Option<&Workload>,
    dst: SocketAddr,
    picker: &EndpointPicker,
    attempt: &Attempt<'_>,
) -> Routed<'s> {
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    // ztunnel's rule: a waypoint's own traffic never goes to a waypoint (no loops).
    let from_waypoint = src.is_some_and(|w| snap.waypoints().instance_of(w).is_some());
    // A Service VIP: its waypoint, or one of its ready endpoints, then as if the pod had
    // connected there.
    let addressed = snap.services().at(dst);
    let Some(target) = addressed else {
        let route = to_endpoint(snap, dst, (!from_waypoint).then_some(picker));
        return Routed {
            route,
            service: None,
            addressed,
            tcp_route: None,
        };
    };
    let routed = |route, service, tcp_route| Routed {
        route,
        service: Some(service),
        addressed,
        tcp_route,
    };
    if !from_waypoint {
        let bound = snap
            .waypoints()
            .for_service(&target.namespace, &target.name);
        if let Some(route) = via_waypoint(bound, dst, picker) {
            return routed(route, target, None);
        }
    }
    let (backend, tcp_route) = match snap.traffic().tcp_rule(&target.service, dst.port()) {
        None => (target, None),
        Some(rule) => {
            let chosen = pick_weighted(&rule.backends, attempt.draw).and_then(|b| {
                snap.services()
                    .by_name(&b.service, b.port.unwrap_or(dst.port()))
            });
            match chosen {
                Some(backend) => (backend, Some(&rule.route)),
                None => {
                    // A backend Service the state lacks (or no port of that number): refused,
                    // as Envoy answers for a cluster with no hosts.
                    let service = pick_weighted(&rule.backends, attempt.draw)
                        .map_or_else(|| target.host(), |b| b.service.host());
                    return routed(Route::NoEndpoint { service }, target, Some(&rule.route));
                }
            }
        }
    };
    if tcp_route.is_some() && !from_waypoint {
        let bound = snap
            .waypoints()
            .for_service(&backend.namespace, &backend.name);
        if let Some(route) = via_waypoint(bound, backend.vip, picker) {
            return routed(route, backend, tcp_route);
        }
    }
    let route = match attempt.chooser.choose(snap, backend, attempt.avoid) {
        // Service-addressed: a workload waypoint of the endpoint does not apply (ztunnel).
        Some(endpoint) => to_endpoint(snap, endpoint, None),
        None => Route::NoEndpoint {
            service: backend.host(),
        },
    };
    routed(route, backend, tcp_route)
}

/// The route through the waypoint of a binding, `None` when there is none to use.
fn via_waypoint(
    bound: Result<&Arc<Waypoint>, Unbound>,
    authority: SocketAddr,
    picker: &EndpointPicker,
) -> Option<Route> {
    match bound {
        Ok(waypoint) => Some(match waypoint.pick(picker) {
            Some((target, instance)) => Route::Waypoint {
                waypoint: waypoint.name.clone(),
                instance: instance.clone(),
                target,
                authority,
            },
            None => Route::WaypointDown {
                waypoint: waypoint.name.clone(),
            },
        }),
        Err(Unbound::Missing(waypoint)) => Some(Route::WaypointDown { waypoint }),
        Err(_) => None,
    }
}

/// The route to a pod address (or anything else) once no VIP is left to resolve; a pod that
/// uses a workload waypoint goes through it when `waypoints` is given (pod-addressed traffic
/// not from a waypoint).
fn to_endpoint(snap: &Snapshot, dst: SocketAddr, waypoints: Option<&EndpointPicker>) -> Route {
    let ip = dst.ip().to_canonical();
    match snap.workload_by_ip(ip) {
        Some(workload) if snap.in_mesh(workload) => {
            if let Some(picker) = waypoints {
                let bound = snap.waypoints().for_workload(workload);
                if let Some(route) = via_waypoint(bound, SocketAddr::new(ip, dst.port()), picker) {
                    return route;
                }
            }
            Route::Tunnel {
                workload: Arc::clone(workload),
                target: SocketAddr::new(ip, HBONE_PORT),
                authority: SocketAddr::new(ip, dst.port()),
            }
        }
        _ => Route::Passthrough(dst),
    }
}

#[cfg(test)]
#[path = "route_l4_tests.rs"]
mod l4_tests;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    use super::*;
    use crate::objects::PodUid;
    use crate::state::{
        DATAPLANE_MODE_LABEL, DEFAULT_SERVICE_ACCOUNT, Namespace, StateStore, StateUpdate,
    };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn workload(ns: &str, name: &str, ips: &[&str], labels: &[(&str, &str)]) -> Workload {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Workload {
            uid: PodUid::derived(ns, name),
            name: name.into(),
            namespace: ns.into(),
            service_account: DEFAULT_SERVICE_ACCOUNT.into(),
            node_name: Some("node-1".into()),
            ips: ips.iter().map(|s| ip(s)).collect(),
            labels,
            workload_name: name.into(),
            workload_type: crate::objects::WorkloadType::Pod,
            canonical_service: name.into(),
            canonical_revision: "latest".into(),
            host_network: false,
            sidecar: false,
        }
    }

    #[test]
    fn route_table() {
        let ambient = [(DATAPLANE_MODE_LABEL, "ambient")];
        let mut update = StateUpdate::new();
        update
            .add_namespace(Namespace {
                name: "shop".into(),
                labels: ambient
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
            .unwrap();
        update
            .add_workload(workload("shop", "ns-enrolled", &["10.0.0.1"], &[]))
            .unwrap();
        update
            .add_workload(workload(
                "shop",
                "opted-out",
                &["10.0.0.2"],
                &[(DATAPLANE_MODE_LABEL, "none")],
            ))
            .unwrap();
        update
            .add_workload(workload("other", "pod-enrolled", &["10.0.0.3"], &ambient))
            .unwrap();
        update
            .add_workload(workload("other", "unlabelled", &["10.0.0.4"], &[]))
            .unwrap();
        update
            .add_workload(workload("shop", "dual", &["10.0.0.5", "fd00::5"], &[]))
            .unwrap();
        update
            .add_workload(Workload {
                sidecar: true,
                ..workload("shop", "with-sidecar", &["10.0.0.6"], &ambient)
            })
            .unwrap();
        update
            .add_workload(Workload {
                host_network: true,
                ..workload("shop", "host-net", &["192.168.0.1"], &ambient)
            })
            .unwrap();
        let snap = StateStore::new().apply(update);

        let hbone = |name: &str, target: &str, authority: &str| {
            Some((name.to_string(), addr(target), addr(authority)))
        };
        let cases = [
            (
                "namespace-enrolled pod",
                "10.0.0.1:8080",
                hbone("ns-enrolled", "10.0.0.1:15008", "10.0.0.1:8080"),
            ),
            ("pod opted out", "10.0.0.2:5432", None),
            (
                "pod-enrolled pod",
                "10.0.0.3:80",
                hbone("pod-enrolled", "10.0.0.3:15008", "10.0.0.3:80"),
            ),
            ("unlabelled pod, unlabelled namespace", "10.0.0.4:80", None),
            ("unknown IP", "93.184.215.14:443", None),
            (
                "IPv6 pod",
                "[fd00::5]:9090",
                hbone("dual", "[fd00::5]:15008", "[fd00::5]:9090"),
            ),
            (
                "IPv4-mapped destination",
                "[::ffff:10.0.0.5]:80",
                hbone("dual", "10.0.0.5:15008", "10.0.0.5:80"),
            ),
            ("pod with a sidecar", "10.0.0.6:80", None),
            ("host-network pod", "192.168.0.1:10250", None),
        ];
        for (what, dst, expected) in cases {
            let dst = addr(dst);
            match (
                route(&snap, None, dst, &EndpointPicker::default()).route,
                expected,
            ) {
                (
                    Route::Tunnel {
                        workload,
                        target,
                        authority,
                    },
                    Some((name, t, a)),
                ) => {
                    assert_eq!(
                        (workload.name.as_str(), target, authority),
                        (name.as_str(), t, a),
                        "{what}"
                    );
                }
                (Route::Passthrough(to), None) => assert_eq!(to, dst, "{what}"),
                (got, expected) => panic!("{what}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
