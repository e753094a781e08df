//! The set-ups the bench compares and the topologies that group them: each mesh set-up is
//! compared with the baseline of its own topology (same pods, same nodes, no mesh), and
//! marrow's cross-node set-up also with the sidecar one.

/// Where the client and the server pod run, and so which baseline a set-up is compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topology {
    /// Both pods on one node.
    SameNode,
    /// The client pod on node 1, the server pod on node 2, the nodes linked by a veth pair
    /// (the underlay).
    CrossNode,
}

impl Topology {
    /// Every topology, in report order.
    pub const ALL: [Topology; 2] = [Topology::SameNode, Topology::CrossNode];

    /// Its set-ups, the baseline first.
    pub fn setups(self) -> &'static [SetUp] {
        match self {
            Topology::SameNode => &[SetUp::Direct, SetUp::Marrow],
            Topology::CrossNode => &[SetUp::DirectX, SetUp::Hbone, SetUp::Sidecars],
        }
    }

    /// What its set-ups are compared with.
    pub fn baseline(self) -> SetUp {
        self.setups()[0]
    }

    /// Heading of its table.
    pub fn title(self) -> &'static str {
        match self {
            Topology::SameNode => "Same node: client and server pod on one node",
            Topology::CrossNode => {
                "Cross node: client pod on node 1, server pod on node 2 (linked by a veth underlay)"
            }
        }
    }

    /// Key in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Topology::SameNode => "same_node",
            Topology::CrossNode => "cross_node",
        }
    }

    /// What a reader must know to read its table right.
    pub fn notes(self) -> &'static [&'static str] {
        match self {
            Topology::SameNode => &[],
            Topology::CrossNode => &[
                "Through HBONE, a new connection is a new HTTP/2 stream on a pooled mTLS \
                 connection (one pool entry per source identity and destination pod): the \
                 connection rates do not include TLS handshakes; the TLS handshake table does.",
                "Through the sidecars, every new connection is a new mTLS connection between \
                 the two Envoys (tcp_proxy does not pool; TLS 1.3 session resumption may \
                 shorten the handshake): the rates include them.",
                "Data-plane CPU and peak RSS: hbone, both nodes' proxies summed; sidecars, \
                 the measured pair's two Envoys summed.",
                "hbone/sidecars is marrow's figure divided by the sidecars' (below 1 is \
                 fewer: better for latency, CPU and memory, worse for rates and throughput).",
            ],
        }
    }
}

/// A data-plane set-up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum SetUp {
    /// The same-node baseline: pods wired by the plain CNI chain, no node proxy on the node.
    Direct,
    /// Both pods enrolled on one node (redirect-cni in the chain): the client's outbound and
    /// the server's inbound connections go through the node proxy, as plain TCP.
    Marrow,
    /// The cross-node baseline: client pod on node 1, server pod on node 2, plain CNI chain,
    /// no proxy on either node.
    DirectX,
    /// As [`SetUp::DirectX`] with both pods enrolled and in the ambient mesh: every connection
    /// is HBONE (mTLS + HTTP/2 CONNECT) between the two nodes' proxies.
    Hbone,
    /// As [`SetUp::DirectX`] (pods not enrolled) with an Envoy in each pod: the client
    /// connects to its Envoy on loopback, which opens mTLS to the server pod's Envoy, which
    /// connects to the app on loopback — Istio's sidecar data path, minus the iptables
    /// REDIRECT.
    Sidecars,
}

impl SetUp {
    /// Every set-up, each topology's baseline first.
    pub const ALL: [SetUp; 5] = [
        SetUp::Direct,
        SetUp::Marrow,
        SetUp::DirectX,
        SetUp::Hbone,
        SetUp::Sidecars,
    ];

    /// Short name: table column, JSON key, node name, `--setups` value.
    pub fn name(self) -> &'static str {
        match self {
            SetUp::Direct => "direct",
            SetUp::Marrow => "marrow",
            SetUp::DirectX => "direct-x",
            SetUp::Hbone => "hbone",
            SetUp::Sidecars => "sidecars",
        }
    }

    /// One line on what it is, for the report.
    pub fn describe(self) -> &'static str {
        match self {
            SetUp::Direct => {
                "two pods on one node, plain CNI chain (bridge + host-local), no proxy"
            }
            SetUp::Marrow => {
                "two enrolled pods on one node (+ redirect-cni): client outbound and server \
                 inbound through node-proxy, plain TCP"
            }
            SetUp::DirectX => {
                "client pod on node 1, server pod on node 2, plain CNI chain, routed over the \
                 underlay veth, no proxy"
            }
            SetUp::Hbone => {
                "as direct-x with both pods enrolled in an ambient namespace and a proxy per \
                 node (mesh CA, state file): HBONE, mTLS + HTTP/2 CONNECT, between the proxies"
            }
            SetUp::Sidecars => {
                "as direct-x, pods not enrolled, an Envoy in each pod (its netns and cgroup, \
                 --concurrency 2): client → its Envoy on 127.0.0.1 → TLS 1.3 mTLS (ECDSA \
                 P-256, SPIFFE SANs checked) → the server pod's Envoy → the app on 127.0.0.1; \
                 Istio's sidecar data path minus the iptables REDIRECT"
            }
        }
    }

    /// The topology it runs on.
    pub fn topology(self) -> Topology {
        match self {
            SetUp::Direct | SetUp::Marrow => Topology::SameNode,
            SetUp::DirectX | SetUp::Hbone | SetUp::Sidecars => Topology::CrossNode,
        }
    }

    /// What it is compared with.
    pub fn baseline(self) -> SetUp {
        self.topology().baseline()
    }

    /// Whether its pods are enrolled with a node proxy.
    pub fn enrolled(self) -> bool {
        matches!(self, SetUp::Marrow | SetUp::Hbone)
    }

    /// Whether it has a data plane (a node proxy or sidecars).
    pub fn meshed(self) -> bool {
        self != self.baseline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_up_is_in_its_topology_after_its_baseline() {
        for setup in SetUp::ALL {
            let setups = setup.topology().setups();
            assert!(setups.contains(&setup), "{setup:?}");
            assert_eq!(setup.baseline(), setups[0]);
            assert_eq!(setup.meshed(), setup != setups[0], "{setup:?}");
            if setup.enrolled() {
                assert!(setup.meshed(), "{setup:?}");
            }
        }
        assert!(!SetUp::Sidecars.enrolled(), "sidecar pods are not captured");
        for setup in SetUp::ALL {
            use clap::ValueEnum as _;
            let value = setup.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(value.as_deref(), Some(setup.name()), "--setups name");
        }
    }
}
