//! Service VIPs: a connection to a Service's ClusterIP and port goes to one of its ready
//! endpoints (from its EndpointSlices), chosen round-robin, as kube-proxy would — but by the
//! proxy, so the connection to the chosen pod can be carried in HBONE with its identity.
//!
//! Built from the state's Services and EndpointSlices (`discovery.k8s.io/v1`):
//! - a Service's VIPs are `spec.clusterIPs` (else `spec.clusterIP`); headless (`None`) and
//!   VIP-less services have no entry;
//! - a service port matches a slice port by name (both empty for a single unnamed port), and
//!   the endpoint's port is the slice port's number (the resolved `targetPort`);
//! - an endpoint counts while `conditions.ready` is not `false` (absent means ready); its
//!   addresses of the VIP's family are used;
//! - slices belong to the service named by their `kubernetes.io/service-name` label, in the
//!   same namespace.
//!
//! A malformed Service or EndpointSlice is left out with a warning naming it: one broken object
//! must not take the other services away.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use crate::objects::{RawKind, RawObject};

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// One service port at one VIP, and where it leads.
#[derive(Debug)]
pub struct ServiceTarget {
    /// The Service, as routes and DestinationRules name it (a hash key for their lookups).
    pub service: crate::traffic::ServiceName,
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The VIP and service port (canonical: IPv4 as IPv4).
    pub vip: SocketAddr,
    /// The service port's `name` (empty when unnamed): Istio's protocol by name prefix.
    pub port_name: String,
    /// The service port's `appProtocol`, which Istio reads instead of the name when set.
    pub app_protocol: Option<String>,
    /// Its round-robin cursor in the [`EndpointPicker`](super::EndpointPicker).
    pub(super) slot: usize,
    /// Ready endpoints (pod IP, target port), in a stable order.
    pub endpoints: Vec<SocketAddr>,
}

impl ServiceTarget {
    /// The port's application protocol, as Istio chooses it ([`super::protocol::of_port`]).
    pub fn protocol(&self) -> super::protocol::Protocol {
        super::protocol::of_port(
            self.app_protocol.as_deref(),
            &self.port_name,
            self.vip.port(),
        )
    }

    /// `<name>.<namespace>.svc.cluster.local`, Istio's `destination_service`.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

/// Every service port by VIP and port, and by the addresses of its ready endpoints.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    by_vip: HashMap<SocketAddr, Arc<ServiceTarget>>,
    /// The service ports with a ready endpoint at each pod IP, for the per-tunnel lookup of
    /// the destination's Services (a hash lookup, not a scan of every endpoint).
    by_endpoint_ip: HashMap<IpAddr, Vec<Arc<ServiceTarget>>>,
    /// The service ports by Service and port number, for routes that name a backend Service:
    /// the first VIP's entry (the primary family, `spec.clusterIPs[0]`).
    by_name: HashMap<(crate::traffic::ServiceName, u16), Arc<ServiceTarget>>,
}

impl ServiceIndex {
    /// The service port at `vip` (an IPv4-mapped address counts as IPv4).
    pub fn at(&self, vip: SocketAddr) -> Option<&Arc<ServiceTarget>> {
        let vip = SocketAddr::new(vip.ip().to_canonical(), vip.port());
        self.by_vip.get(&vip)
    }

    /// The service ports (one per VIP) with a ready endpoint at `ip`: the Services of the pod
    /// at that address. One hash lookup; called once per inbound tunnel.
    pub fn serving(&self, ip: IpAddr) -> impl Iterator<Item = &Arc<ServiceTarget>> {
        self.by_endpoint_ip
            .get(&ip.to_canonical())
            .into_iter()
            .flatten()
    }

    /// The port `port` of the Service `service` (of its primary VIP): what a route's backend
    /// names. One hash lookup.
    pub fn by_name(
        &self,
        service: &crate::traffic::ServiceName,
        port: u16,
    ) -> Option<&Arc<ServiceTarget>> {
        // A borrowed key would need a second map shape; the clone is two short strings, paid
        // only for routed requests.
        self.by_name.get(&(service.clone(), port))
    }

    /// How many VIP:port entries there are.
    pub fn len(&self) -> usize {
        self.by_vip.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_vip.is_empty()
    }

    /// Builds the index from the raw objects; returns it and a warning per object left
    /// out.
    pub fn build<'a>(objects: impl Iterator<Item = &'a RawObject>) -> (ServiceIndex, Vec<String>) {
        let mut warnings = Vec::new();
        let mut services: Vec<Service> = Vec::new();
        let mut slices: HashMap<(String, String), Vec<EndpointSlice>> = HashMap::new();
        for object in objects {
            let name = format!("{}", object.object);
            match object.kind {
                RawKind::Service => match serde_json::from_value::<Service>(object.body.clone()) {
                    Ok(service) => services.push(service),
                    Err(e) => warnings.push(format!("{name} left out: {e}")),
                },
                RawKind::EndpointSlice => {
                    match serde_json::from_value::<EndpointSlice>(object.body.clone()) {
                        Ok(slice) => {
                            let namespace = slice.metadata.namespace.clone().unwrap_or_default();
                            match slice
                                .metadata
                                .labels
                                .as_ref()
                                .and_then(|l| l.get(SERVICE_NAME_LABEL))
                            {
                                Some(service) => slices
                                    .entry((namespace, service.clone()))
                                    .or_default()
                                    .push(slice),
                                None => warnings.push(format!(
                                    "{name} left out: no {SERVICE_NAME_LABEL} label"
                                )),
                            }
                        }
                        Err(e) => warnings.push(format!("{name} left out: {e}")),
                    }
                }
                RawKind::AuthorizationPolicy
                | RawKind::PeerAuthentication
                | RawKind::RequestAuthentication
                | RawKind::Gateway
                | RawKind::GatewayClass
                | RawKind::Telemetry
                | RawKind::VirtualService
                | RawKind::DestinationRule
                | RawKind::HttpRoute
                | RawKind::GrpcRoute
                | RawKind::TcpRoute
                | RawKind::MeshConfig => {}
            }
        }
        let mut index = ServiceIndex::default();
        for service in &services {
            index.add(service, &slices, &mut warnings);
        }
        for target in index.by_vip.values() {
            let mut ips: Vec<IpAddr> = target
                .endpoints
                .iter()
                .map(|e| e.ip().to_canonical())
                .collect();
            ips.sort_unstable();
            ips.dedup();
            for ip in ips {
                index
                    .by_endpoint_ip
                    .entry(ip)
                    .or_default()
                    .push(target.clone());
            }
        }
        (index, warnings)
    }

    fn add(
        &mut self,
        service: &Service,
        slices: &HashMap<(String, String), Vec<EndpointSlice>>,
        warnings: &mut Vec<String>,
    ) {
        let namespace = service.metadata.namespace.clone().unwrap_or_default();
        let name = service.metadata.name.clone().unwrap_or_default();
        let Some(spec) = &service.spec else { return };
        let mut vips: Vec<&str> = spec
            .cluster_ips
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .collect();
        if vips.is_empty() {
            vips.extend(spec.cluster_ip.as_deref());
        }
        let own_slices = slices
            .get(&(namespace.clone(), name.clone()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for vip in vips {
            if vip.is_empty() || vip == "None" {
                continue;
            }
            let Ok(vip) = vip.parse::<IpAddr>() else {
                warnings.push(format!(
                    "Service {namespace}/{name}: clusterIP {vip:?} is not an IP address; left out"
                ));
                continue;
            };
            for port in spec.ports.as_deref().unwrap_or_default() {
                if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                    continue;
                }
                let Ok(number) = u16::try_from(port.port) else {
                    warnings.push(format!(
                        "Service {namespace}/{name}: port {} out of range",
                        port.port
                    ));
                    continue;
                };
                let port_name = port.name.as_deref().unwrap_or_default();
                let endpoints = ready_endpoints(own_slices, port_name, vip.is_ipv4());
                let vip = SocketAddr::new(vip, number);
                let target = Arc::new(ServiceTarget {
                    service: crate::traffic::ServiceName::new(namespace.as_str(), name.as_str()),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    vip,
                    port_name: port_name.to_owned(),
                    app_protocol: port.app_protocol.clone(),
                    slot: super::balance::slot_of(vip),
                    endpoints,
                });
                self.by_name
                    .entry((
                        crate::traffic::ServiceName::new(namespace.as_str(), name.as_str()),
                        number,
                    ))
                    .or_insert_with(|| target.clone());
                self.by_vip.insert(vip, target);
            }
        }
    }
}

/// The ready endpoints of `slices` for the service port named `port_name`, of one family.
fn ready_endpoints(slices: &[EndpointSlice], port_name: &str, ipv4: bool) -> Vec<SocketAddr> {
    let mut endpoints = Vec::new();
    for slice in slices {
        let family_ok = match slice.address_type.as_str() {
            "IPv4" => ipv4,
            "IPv6" => !ipv4,
            _ => false,
        };
        if !family_ok {
            continue;
        }
        let Some(port) = slice
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
            .and_then(|p| p.port)
            .and_then(|p| u16::try_from(p).ok())
        else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    endpoints.push(SocketAddr::new(ip, port));
                }
            }
        }
    }
    endpoints.sort_unstable();
    endpoints.dedup();
    endpoints
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::objects::ObjectRef;

    fn raw(kind: RawKind, body: serde_json::Value) -> RawObject {
        RawObject {
            kind,
            object: ObjectRef {
                kind: body["kind"].as_str().unwrap_or_default().into(),
                namespace: body["metadata"]["namespace"].as_str().map(Into::into),
                name: body["metadata"]["name"].as_str().unwrap_or_default().into(),
            },
            body,
        }
    }

    fn service(name: &str, vip: &str) -> RawObject {
        raw(
            RawKind::Service,
            json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"clusterIP": vip, "clusterIPs": [vip],
                    "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP"}]}}),
        )
    }

    fn slice(name: &str, service: &str, endpoints: serde_json::Value) -> RawObject {
        raw(
            RawKind::EndpointSlice,
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": name, "namespace": "shop",
                    "labels": {SERVICE_NAME_LABEL: service}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints}),
        )
    }

    #[test]
    fn vips_resolve_to_ready_endpoints_round_robin() {
        let objects = [
            service("web", "10.96.0.10"),
            slice(
                "web-a",
                "web",
                json!([{"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                       {"addresses": ["10.244.2.5"]},
                       {"addresses": ["10.244.2.9"], "conditions": {"ready": false}}]),
            ),
            slice("web-b", "web", json!([{"addresses": ["10.244.3.5"]}])),
            service("headless", "None"),
            service("empty", "10.96.0.11"),
        ];
        let (index, warnings) = ServiceIndex::build(objects.iter());
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(index.len(), 2, "headless has no VIP");
        let web = index.at("10.96.0.10:80".parse().unwrap()).expect("web");
        assert_eq!(
            web.endpoints,
            ["10.244.1.5:8080", "10.244.2.5:8080", "10.244.3.5:8080"]
                .map(|s| s.parse::<SocketAddr>().unwrap()),
            "ready ones from both slices; the not-ready one left out"
        );
        let picker = super::super::EndpointPicker::default();
        let picks: Vec<SocketAddr> = (0..6).filter_map(|_| picker.pick(web)).collect();
        assert_eq!(picks[..3], web.endpoints[..], "round-robin");
        assert_eq!(picks[3..], web.endpoints[..]);
        assert_eq!(web.host(), "web.shop.svc.cluster.local");
        assert_eq!(web.port_name, "http");
        assert_eq!(web.app_protocol, None);
        assert_eq!(web.protocol(), super::super::protocol::Protocol::Http);
        assert!(
            index.at("10.96.0.10:81".parse().unwrap()).is_none(),
            "only its ports"
        );
        let empty = index.at("10.96.0.11:80".parse().unwrap()).expect("empty");
        assert_eq!(picker.pick(empty), None, "no endpoints: nothing to pick");
        let mapped: SocketAddr = "[::ffff:10.96.0.10]:80".parse().unwrap();
        assert!(index.at(mapped).is_some(), "v4-mapped VIPs count as v4");
        let by_name = |name: &str, port| {
            index
                .by_name(&crate::traffic::ServiceName::new("shop", name), port)
                .map(|t| t.vip)
        };
        assert_eq!(
            by_name("web", 80),
            Some(web.vip),
            "a route's backend by name"
        );
        assert_eq!(by_name("web", 81), None, "only its ports");
        assert_eq!(by_name("headless", 80), None, "no VIP, no entry");
    }

    #[test]
    fn malformed_objects_are_left_out_with_a_warning() {
        let mut bad_service = service("bad", "10.96.0.12");
        bad_service.body["spec"]["ports"] = json!("eighty");
        let mut no_label = slice("orphan", "web", json!([]));
        no_label.body["metadata"]["labels"] = json!({});
        let objects = [bad_service, no_label, service("good", "10.96.0.13")];
        let (index, warnings) = ServiceIndex::build(objects.iter());
        assert_eq!(index.len(), 1, "the good one stays");
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("shop/bad") || warnings[1].contains("shop/bad"),
            "{warnings:?}"
        );
    }
}
