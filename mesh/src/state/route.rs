//! The outbound decision: carry a captured connection in HBONE or pass it through.
//!
//! Pure over a [`Snapshot`]: the same snapshot and destination always give the same route, but
//! for which ready endpoint of a Service (the [`EndpointPicker`]'s round-robin, kept outside
//! the snapshot).

use std::net::SocketAddr;
use std::sync::Arc;

use marrow_common::HBONE_PORT;

use super::services::ServiceTarget;
use super::{EndpointPicker, Snapshot, Workload};

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
    /// Anything else: plain TCP to the original destination, untouched.
    Passthrough(SocketAddr),
    /// A Service VIP with no ready endpoint: refused, as kube-proxy does.
    NoEndpoint {
        /// The service, `<name>.<namespace>.svc.cluster.local`.
        service: String,
    },
}

/// A [`Route`] and the Service whose VIP the connection addressed, if it did (for its labels:
/// the caller needs not look the VIP up again).
#[derive(Debug)]
pub struct Routed<'s> {
    /// Where the connection goes.
    pub route: Route,
    /// The Service port at the addressed VIP.
    pub service: Option<&'s Arc<ServiceTarget>>,
}

/// Routes a captured connection to `dst` (IPv4-mapped IPv6 destinations count as IPv4); a
/// Service VIP resolves to one of its ready endpoints first, the one `picker` chooses (see
/// [`super::services`]). Pure over the snapshot but for the picker's round-robin position.
pub fn route<'s>(snap: &'s Snapshot, dst: SocketAddr, picker: &EndpointPicker) -> Routed<'s> {
    // A Service VIP: one of its ready endpoints, then as if the pod had connected there.
    let service = snap.services().at(dst);
    let dst = match service {
        Some(target) => match picker.pick(target) {
            Some(endpoint) => endpoint,
            None => {
                let route = Route::NoEndpoint {
                    service: target.host(),
                };
                return Routed { route, service };
            }
        },
        None => dst,
    };
    let route = to_endpoint(snap, dst);
    Routed { route, service }
}

/// The route to a pod address (or anything else) once no VIP is left to resolve.
fn to_endpoint(snap: &Snapshot, dst: SocketAddr) -> Route {
    let ip = dst.ip().to_canonical();
    match snap.workload_by_ip(ip) {
        Some(workload) if snap.in_mesh(workload) => Route::Tunnel {
            workload: Arc::clone(workload),
            target: SocketAddr::new(ip, HBONE_PORT),
            authority: SocketAddr::new(ip, dst.port()),
        },
        _ => Route::Passthrough(dst),
    }
}

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
                route(&snap, dst, &EndpointPicker::default()).route,
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
