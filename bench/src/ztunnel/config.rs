//! ztunnel's local configuration (`LOCAL_XDS_PATH`: ztunnel's `src/xds.rs`, `LocalConfig`),
//! which stands in for istiod: the workloads (and services, policies) of the mesh.
//!
//! ztunnel reads the file once, at start, so every pod a bed will create must be listed
//! before it exists. A pod's address is known only once CNI ADD ran, but host-local hands a
//! fresh node's addresses out in order from `.2`, so each node's first [`SLOTS`] addresses
//! are listed, each as a workload named after its address (`pod-10-244-3-7`) with the node's
//! service account; a pod is handed to ztunnel under the name of the address it got. The
//! bench dials pod addresses, so no service is listed, and no policy.
//!
//! The file is JSON, which ztunnel's YAML parser reads as it is.

use std::net::Ipv4Addr;

use serde_json::{Value, json};

/// Addresses listed per node: a bed's pods on one node (a memory bed's 50, its pair, slack).
pub const SLOTS: u8 = 64;
/// The first address host-local gives a pod (`.1` is the bridge).
const FIRST_HOST: u8 = 2;
/// ztunnel's default cluster ID and trust domain.
const CLUSTER_ID: &str = "Kubernetes";
const TRUST_DOMAIN: &str = "cluster.local";

/// One node's part of the mesh: its name, its pods' /24 (`10.244.<index>.0`) and the service
/// account its pods run as.
#[derive(Clone, Debug)]
pub struct NodeSlots {
    /// The node's name (the workloads' `node`).
    pub node: String,
    /// The third octet of its pod range.
    pub index: u8,
    /// The Kubernetes namespace of its pods.
    pub namespace: String,
    /// The service account of its pods.
    pub service_account: String,
}

impl NodeSlots {
    /// The workload name of a pod at `ip`, if `ip` is one of this node's listed addresses.
    pub fn name_of(&self, ip: Ipv4Addr) -> Option<String> {
        let [a, b, c, d] = ip.octets();
        let listed = (FIRST_HOST..FIRST_HOST.saturating_add(SLOTS)).contains(&d);
        ([a, b, c] == [10, 244, self.index] && listed).then(|| slot_name(ip))
    }

    /// The workload UID of a pod at `ip` (what the ZDS `add` carries).
    pub fn uid_of(&self, name: &str) -> String {
        format!("{CLUSTER_ID}//Pod/{}/{name}", self.namespace)
    }

    /// The workloads listed for this node.
    fn workloads(&self) -> impl Iterator<Item = Value> + '_ {
        (FIRST_HOST..FIRST_HOST.saturating_add(SLOTS)).map(move |host| {
            let ip = Ipv4Addr::new(10, 244, self.index, host);
            let name = slot_name(ip);
            json!({
                "uid": self.uid_of(&name),
                "name": name,
                "namespace": self.namespace,
                "serviceAccount": self.service_account,
                "trustDomain": TRUST_DOMAIN,
                "workloadIps": [ip.to_string()],
                "protocol": "HBONE",
                "node": self.node,
                "network": "",
                "clusterId": CLUSTER_ID,
                "services": {},
            })
        })
    }
}

/// The local configuration listing every node's workloads (every ztunnel of a bed gets the
/// same file: each must know the other node's pods as HBONE destinations).
pub fn local_config(nodes: &[NodeSlots]) -> Value {
    let workloads: Vec<Value> = nodes.iter().flat_map(NodeSlots::workloads).collect();
    json!({ "workloads": workloads, "services": [], "policies": [] })
}

/// `pod-a-b-c-d`.
fn slot_name(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("pod-{a}-{b}-{c}-{d}")
}
