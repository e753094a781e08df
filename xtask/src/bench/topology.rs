//! The set-ups the bench compares and the topologies that group them: each mesh set-up is
//! compared with the baseline of its own topology (same pods, same nodes, no mesh).

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
    pub fn setups(self) -> [SetUp; 2] {
        match self {
            Topology::SameNode => [SetUp::Direct, SetUp::Marrow],
            Topology::CrossNode => [SetUp::DirectX, SetUp::Hbone],
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
                "node-proxy CPU and peak RSS are both nodes' proxies summed.",
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
}

impl SetUp {
    /// Every set-up, each topology's baseline first.
    pub const ALL: [SetUp; 4] = [SetUp::Direct, SetUp::Marrow, SetUp::DirectX, SetUp::Hbone];

    /// Short name: table column, JSON key, node name, `--setups` value.
    pub fn name(self) -> &'static str {
        match self {
            SetUp::Direct => "direct",
            SetUp::Marrow => "marrow",
            SetUp::DirectX => "direct-x",
            SetUp::Hbone => "hbone",
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
        }
    }

    /// The topology it runs on.
    pub fn topology(self) -> Topology {
        match self {
            SetUp::Direct | SetUp::Marrow => Topology::SameNode,
            SetUp::DirectX | SetUp::Hbone => Topology::CrossNode,
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_set_up_is_in_its_topology_after_its_baseline() {
        for setup in SetUp::ALL {
            let [baseline, mesh] = setup.topology().setups();
            assert!(setup == baseline || setup == mesh, "{setup:?}");
            assert_eq!(setup.baseline(), baseline);
            assert_eq!(setup.enrolled(), setup != baseline, "{setup:?}");
        }
        for setup in SetUp::ALL {
            use clap::ValueEnum as _;
            let value = setup.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(value.as_deref(), Some(setup.name()), "--setups name");
        }
    }
}
