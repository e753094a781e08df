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
    /// HTTP/1.1 requests from a client pod on node 1 to a server pod on node 2, through an L7
    /// hop (marrow's waypoint, or Envoy) in a pod on node 2.
    L7,
}

impl Topology {
    /// Every topology, in report order.
    pub const ALL: [Topology; 3] = [Topology::SameNode, Topology::CrossNode, Topology::L7];

    /// Its set-ups, the baseline first.
    pub fn setups(self) -> &'static [SetUp] {
        match self {
            Topology::SameNode => &[SetUp::Direct, SetUp::Marrow],
            Topology::CrossNode => &[
                SetUp::DirectX,
                SetUp::Hbone,
                SetUp::HboneUnpooled,
                SetUp::Sidecars,
                SetUp::Ztunnel,
            ],
            Topology::L7 => &[
                SetUp::L7Direct,
                SetUp::Waypoint,
                SetUp::WaypointRoute,
                SetUp::WaypointRoutes,
                SetUp::WaypointRetry,
                SetUp::EnvoyL7,
            ],
        }
    }

    /// marrow's set-up and the Envoy one it is compared with, where the topology has both.
    pub const fn versus(self) -> Option<(SetUp, SetUp)> {
        match self {
            Topology::SameNode => None,
            Topology::CrossNode => Some((SetUp::Hbone, SetUp::Sidecars)),
            Topology::L7 => Some((SetUp::Waypoint, SetUp::EnvoyL7)),
        }
    }

    /// marrow's set-up and each other data plane it is compared with, where the topology has
    /// them: [`Topology::versus`] first, then Istio's ztunnel across nodes.
    pub const fn rivals(self) -> &'static [(SetUp, SetUp)] {
        match self {
            Topology::SameNode => &[],
            Topology::CrossNode => &[
                (SetUp::Hbone, SetUp::Sidecars),
                (SetUp::Hbone, SetUp::Ztunnel),
            ],
            Topology::L7 => &[(SetUp::Waypoint, SetUp::EnvoyL7)],
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
            Topology::L7 => {
                "L7: HTTP/1.1 keep-alive requests of 1 KiB from a client pod on node 1 to a server \
                 pod on node 2, through an L7 hop in a pod on node 2"
            }
        }
    }

    /// Key in the JSON report.
    pub fn key(self) -> &'static str {
        match self {
            Topology::SameNode => "same_node",
            Topology::CrossNode => "cross_node",
            Topology::L7 => "l7",
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
                "hbone-unpooled runs the connection-rate figures alone, with the proxies' \
                 pooling off (--hbone-no-pool): each client connection is a brand-new mTLS \
                 connection between the proxies (TCP, TLS 1.3 handshake, HTTP/2 handshake, one \
                 CONNECT stream), closed with it, as through the sidecars.",
                "Through the sidecars, every new connection is a new mTLS connection between \
                 the two Envoys (tcp_proxy does not pool; TLS 1.3 session resumption may \
                 shorten the handshake): the rates include them.",
                "Data-plane CPU and peak RSS: hbone, both nodes' proxies summed; sidecars, \
                 the measured pair's two Envoys summed.",
                "hbone/sidecars is marrow's figure divided by the sidecars' (below 1 is \
                 fewer: better for latency, CPU and memory, worse for rates and throughput).",
            ],
            Topology::L7 => &[
                "Both L7 paths have three proxies: waypoint is node 1's proxy → HBONE → the \
                 waypoint → HBONE → node 2's proxy; envoy-l7 is the client's sidecar → mTLS → \
                 the L7 Envoy → mTLS → the server's sidecar. The L7 hop parses every request \
                 and picks the upstream per request; the waypoint also evaluates the \
                 AuthorizationPolicies bound to it (none here), counts Istio's request metrics \
                 and writes no access log by default.",
                "Requests/s: closed loops, each connection sends the next request when the \
                 answer is read. Latency: a fixed 1,000 requests/s over 16 connections, each \
                 request timed from when it was due (a stall shows in the tail).",
                "Data-plane CPU and RSS: the three proxies of the path summed; the L7 hop's \
                 RSS alone on its own row.",
                "waypoint/envoy-l7 is marrow's figure divided by Envoy's.",
                "waypoint-1-route, waypoint-1000-routes and waypoint-retry are the waypoint bed \
                 with VirtualServices for the Service: the table below them reads each against \
                 waypoint (no route object). waypoint itself applies Istio's default retry \
                 policy (as istiod's default route) and so keeps each request body for a \
                 retry; a VirtualService with `retries: {attempts: 0}` does not.",
                "waypoint-retry: the server answers 503 to every other request it serves \
                 (counted across connections) and the route retries 5xx twice. Each retry \
                 first waits Envoy's default back-off (25 ms base, fully jittered: 0-24 ms \
                 before the first retry; marrow takes no back-off from a VirtualService), \
                 which is most of what a retry costs, so a retry is read over one connection, \
                 where requests are serial. Over 16 connections the bed answers fewer than \
                 1,000 requests/s, so its latency at that rate is a queue's; and the tries of \
                 one request land on either parity, so some fail three times: the client sees \
                 those 503s, counted as failures.",
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
    /// As [`SetUp::Hbone`] with the proxies' HBONE pooling off (`--hbone-no-pool`): every
    /// client connection is a brand-new mTLS connection between the proxies. Only the
    /// connection-rate figures run.
    #[value(name = "hbone-unpooled")]
    HboneUnpooled,
    /// As [`SetUp::DirectX`] (pods not enrolled) with an Envoy in each pod: the client
    /// connects to its Envoy on loopback, which opens mTLS to the server pod's Envoy, which
    /// connects to the app on loopback — Istio's sidecar data path, minus the iptables
    /// REDIRECT.
    Sidecars,
    /// As [`SetUp::DirectX`] (pods not enrolled with marrow) with Istio's ztunnel on each
    /// node in its in-pod mode, each pod carrying istio-cni's redirection rules and handed to
    /// its node's ztunnel over ZDS: every connection is HBONE between the two ztunnels. Runs
    /// only with `--ztunnel PATH` (see [`crate::ztunnel`]).
    Ztunnel,
    /// The L7 baseline: as [`SetUp::DirectX`], the server pod running an HTTP/1.1 server.
    #[value(name = "l7-direct")]
    L7Direct,
    /// As [`SetUp::L7Direct`] with both pods enrolled and the server behind a Service bound to
    /// a marrow waypoint (`istio.io/use-waypoint`) that runs in an unenrolled pod on node 2.
    Waypoint,
    /// As [`SetUp::L7Direct`] with an Envoy sidecar in the client and server pod (as
    /// [`SetUp::Sidecars`]) and an Envoy in a pod on node 2 as the L7 hop between them.
    #[value(name = "envoy-l7")]
    EnvoyL7,
    /// As [`SetUp::Waypoint`] with one VirtualService for the Service: one `http` rule
    /// (`uri prefix /`, no retries), so the waypoint matches and routes every request.
    #[value(name = "waypoint-1-route")]
    WaypointRoute,
    /// As [`SetUp::WaypointRoute`] with 1,000 rules in the VirtualService, the first 999 on
    /// paths the bench never asks for: every request scans them all.
    #[value(name = "waypoint-1000-routes")]
    WaypointRoutes,
    /// As [`SetUp::WaypointRoute`] with `retries: {attempts: 2, retryOn: 5xx}` and a server
    /// that answers 503 to every other request: the cost of a retry.
    #[value(name = "waypoint-retry")]
    WaypointRetry,
}

impl SetUp {
    /// Every set-up, each topology's baseline first.
    pub const ALL: [SetUp; 13] = [
        SetUp::Direct,
        SetUp::Marrow,
        SetUp::DirectX,
        SetUp::Hbone,
        SetUp::HboneUnpooled,
        SetUp::Sidecars,
        SetUp::Ztunnel,
        SetUp::L7Direct,
        SetUp::Waypoint,
        SetUp::WaypointRoute,
        SetUp::WaypointRoutes,
        SetUp::WaypointRetry,
        SetUp::EnvoyL7,
    ];

    /// Short name: table column, JSON key, node name, `--setups` value.
    pub fn name(self) -> &'static str {
        match self {
            SetUp::Direct => "direct",
            SetUp::Marrow => "marrow",
            SetUp::DirectX => "direct-x",
            SetUp::Hbone => "hbone",
            SetUp::HboneUnpooled => "hbone-unpooled",
            SetUp::Sidecars => "sidecars",
            SetUp::Ztunnel => "ztunnel",
            SetUp::L7Direct => "l7-direct",
            SetUp::Waypoint => "waypoint",
            SetUp::EnvoyL7 => "envoy-l7",
            SetUp::WaypointRoute => "waypoint-1-route",
            SetUp::WaypointRoutes => "waypoint-1000-routes",
            SetUp::WaypointRetry => "waypoint-retry",
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
            SetUp::HboneUnpooled => {
                "as hbone with node-proxy --hbone-no-pool: every client connection opens its \
                 own mTLS connection between the proxies (TCP + TLS 1.3 + HTTP/2), closed with \
                 it; connection-rate figures only"
            }
            SetUp::Sidecars => {
                "as direct-x, pods not enrolled, an Envoy in each pod (its netns and cgroup, \
                 --concurrency 2): client → its Envoy on 127.0.0.1 → TLS 1.3 mTLS (ECDSA \
                 P-256, SPIFFE SANs checked) → the server pod's Envoy → the app on 127.0.0.1; \
                 Istio's sidecar data path minus the iptables REDIRECT"
            }
            SetUp::Ztunnel => {
                "as direct-x with Istio's ztunnel (--ztunnel) on each node in its in-pod mode: \
                 istio-cni's in-pod iptables rules in each pod, its namespace handed to ztunnel \
                 over ZDS, fake CA, workloads from a local file: HBONE, mTLS + HTTP/2 CONNECT, \
                 between the pods' ztunnel listeners"
            }
            SetUp::L7Direct => {
                "client pod on node 1, HTTP/1.1 server pod on node 2, plain CNI chain, no proxy"
            }
            SetUp::Waypoint => {
                "as l7-direct with both pods enrolled and a proxy per node (as hbone); the \
                 server's Service uses a marrow waypoint (Gateway of class istio-waypoint) in \
                 a pod on node 2: node 1's proxy → HBONE → the waypoint (HTTP parsed, \
                 least-request, request metrics) → HBONE → node 2's proxy → the server"
            }
            SetUp::EnvoyL7 => {
                "as l7-direct, pods not enrolled, an Envoy sidecar in the client and server pod \
                 (as sidecars) and an Envoy in a pod on node 2 as the L7 hop (HTTP connection \
                 manager + router, --concurrency 2): client → its sidecar → mTLS → the L7 \
                 Envoy → mTLS → the server's sidecar → the server"
            }
            SetUp::WaypointRoute => {
                "as waypoint with a VirtualService for the Service: one http rule (uri prefix \
                 /, route to the Service, retries attempts 0): routing alone"
            }
            SetUp::WaypointRoutes => {
                "as waypoint-1-route with 1,000 http rules, the first 999 matching uri exact \
                 /r<i> (never the bench's path), the last prefix /: every request scans them all"
            }
            SetUp::WaypointRetry => {
                "as waypoint-1-route with retries attempts 2, retryOn 5xx, and the server \
                 answering 503 to every other request it serves (testpod --fail-percent 50)"
            }
        }
    }

    /// The topology it runs on.
    pub fn topology(self) -> Topology {
        match self {
            SetUp::Direct | SetUp::Marrow => Topology::SameNode,
            SetUp::DirectX
            | SetUp::Hbone
            | SetUp::HboneUnpooled
            | SetUp::Sidecars
            | SetUp::Ztunnel => Topology::CrossNode,
            SetUp::L7Direct
            | SetUp::Waypoint
            | SetUp::WaypointRoute
            | SetUp::WaypointRoutes
            | SetUp::WaypointRetry
            | SetUp::EnvoyL7 => Topology::L7,
        }
    }

    /// What it is compared with.
    pub fn baseline(self) -> SetUp {
        self.topology().baseline()
    }

    /// Whether its pods are enrolled with a node proxy.
    pub fn enrolled(self) -> bool {
        self == SetUp::Marrow || self.hbone()
    }

    /// Whether its pods carry Envoy sidecars.
    pub fn sidecars(self) -> bool {
        matches!(self, SetUp::Sidecars | SetUp::EnvoyL7)
    }

    /// Whether the node proxies run with a mesh CA and cluster state (HBONE between nodes).
    pub fn hbone(self) -> bool {
        matches!(self, SetUp::Hbone | SetUp::HboneUnpooled) || self.waypoint()
    }

    /// Whether only the connection-rate figures run (the other figures ride one connection,
    /// where pooling changes nothing).
    pub fn connections_only(self) -> bool {
        self == SetUp::HboneUnpooled
    }

    /// Whether its L7 hop is marrow's waypoint.
    pub fn waypoint(self) -> bool {
        matches!(
            self,
            SetUp::Waypoint | SetUp::WaypointRoute | SetUp::WaypointRoutes | SetUp::WaypointRetry
        )
    }

    /// Whether a run that names no set-up runs it with `--quick` (CI's run must not grow:
    /// the traffic-management variants of the waypoint run in a full run or when named).
    pub fn in_quick(self) -> bool {
        !matches!(
            self,
            SetUp::WaypointRoute | SetUp::WaypointRoutes | SetUp::WaypointRetry
        )
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
        assert!(!SetUp::EnvoyL7.enrolled(), "sidecar pods are not captured");
        for topology in Topology::ALL {
            if let Some((marrow, envoy)) = topology.versus() {
                assert!(marrow.enrolled() && envoy.sidecars(), "{topology:?}");
                assert_eq!((marrow.topology(), envoy.topology()), (topology, topology));
            }
            assert_eq!(topology.rivals().first().copied(), topology.versus());
            for (marrow, rival) in topology.rivals() {
                assert!(marrow.enrolled() && !rival.enrolled(), "{topology:?}");
                assert_eq!((marrow.topology(), rival.topology()), (topology, topology));
            }
        }
        assert!(
            !SetUp::Ztunnel.enrolled(),
            "ztunnel's pods are not marrow's"
        );
        assert!(SetUp::Ztunnel.meshed());
        for setup in SetUp::ALL {
            use clap::ValueEnum as _;
            let value = setup.to_possible_value().map(|v| v.get_name().to_owned());
            assert_eq!(value.as_deref(), Some(setup.name()), "--setups name");
        }
    }
}
