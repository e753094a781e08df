//! Fixtures and checks shared by the HBONE suites (hbone, policy, admin, upgrade, …): two
//! linked nodes with a proxy each ([`Mesh`]) or the inbound suites' cast on them ([`Cast`]),
//! wire checks over a capture, metric label sets, and log checks.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::mesh::{config_generation, mesh_proxy_options, wait_config_generation};
use crate::sniff::{
    Capture, Flow, TLS_APPLICATION_DATA, TLS_CHANGE_CIPHER_SPEC, TLS_HANDSHAKE, tls_records,
};
use crate::state_file::write_atomic;
use crate::{ClusterState, MeshCa, Node, NodeLink, NodeOptions, Pod, Proxy, Sniffer, spiffe_id};

/// Bound on a proxy becoming ready (and on its first state file).
pub const READY: Duration = Duration::from_secs(30);
/// The port the test apps listen on.
pub const APP_PORT: u16 = 8080;
/// Size of the bulk transfer.
pub const BULK_BYTES: u64 = 8 << 20;
/// Connections opened, per reporter and labels.
pub const OPENED: &str = "istio_tcp_connections_opened_total";
/// Connections closed.
pub const CLOSED: &str = "istio_tcp_connections_closed_total";
/// Bytes from client to server.
pub const SENT: &str = "istio_tcp_sent_bytes_total";

/// Two linked nodes, a mesh CA, each node's own copy of the state file, and a proxy per node.
/// Field order is drop order: proxies, then nodes (the CA directory goes last).
pub struct Mesh {
    /// Node 1's proxy.
    pub p1: Proxy,
    /// Node 2's proxy.
    pub p2: Proxy,
    /// Node 1.
    pub n1: Node,
    /// Node 2.
    pub n2: Node,
    /// The underlay between them.
    pub link: NodeLink,
    /// Node 1's copy of the state file.
    pub state1: PathBuf,
    /// Node 2's copy of the state file.
    pub state2: PathBuf,
    /// The mesh CA both proxies trust.
    pub ca: MeshCa,
}

impl Mesh {
    /// Nodes `<test>-1` (index 1) and `<test>-2` (index 2), linked; proxies started on a state
    /// file with the namespaces only (pods come later: enrolment needs a running proxy).
    pub fn start(test: &str) -> Mesh {
        Mesh::start_with(test, &[])
    }

    /// As [`Mesh::start`], with `extra` flags for both proxies.
    pub fn start_with(test: &str, extra: &[&str]) -> Mesh {
        let node = |n: u8| {
            let options = NodeOptions {
                dual_stack: false,
                index: Some(n),
            };
            Node::with_options(&format!("{test}-{n}"), options)
        };
        let (n1, n2) = (node(1), node(2));
        let link = NodeLink::between(&n1, &n2);
        let ca = MeshCa::create(test);
        let state1 = n1.temp_dir().join("cluster.yaml");
        let state2 = n2.temp_dir().join("cluster.yaml");
        let namespaces = namespaces();
        namespaces.write(&state1);
        namespaces.write(&state2);
        let start = |node: &Node, state: &PathBuf| {
            let mut options = mesh_proxy_options(&ca, state);
            options
                .extra_args
                .extend(extra.iter().map(|a| (*a).to_owned()));
            let mut proxy = node.start_proxy_with(options);
            proxy.wait_ready(READY).expect("proxy ready");
            wait_config_generation(&proxy, 1, READY);
            proxy
        };
        let (p1, p2) = (start(&n1, &state1), start(&n2, &state2));
        Mesh {
            p1,
            p2,
            n1,
            n2,
            link,
            state1,
            state2,
            ca,
        }
    }

    /// Writes `state` to both proxies' files and waits until both applied it.
    pub fn apply(&self, state: &ClusterState) {
        self.apply_with(state, "");
    }

    /// As [`Mesh::apply`], with `extra` YAML documents (policies, services) after the state.
    pub fn apply_with(&self, state: &ClusterState, extra: &str) {
        let yaml = format!("{}\n---\n{extra}", state.to_yaml());
        for (proxy, path) in [(&self.p1, &self.state1), (&self.p2, &self.state2)] {
            let before = config_generation(proxy).expect("config generation");
            write_atomic(path, yaml.as_bytes()).expect("write state");
            wait_config_generation(proxy, before + 1, READY);
        }
    }

    /// A sniffer on node 1's end of the underlay.
    pub fn sniff(&self) -> Sniffer {
        Sniffer::start(self.n1.netns(), &self.link.a_ifname)
    }
}

/// The usual cast of the inbound tests: `shop/client` and `legacy/outsider` (outside the mesh)
/// on node 1, `shop/web` on node 2 serving each of `ports`, in the state both proxies applied.
/// Field order is drop order: the apps, the pods, then the mesh.
pub struct Cast {
    /// `web`'s servers, one per port.
    pub apps: Vec<crate::process::PodProcess>,
    /// `shop/client` on node 1.
    pub client: Pod,
    /// `legacy/outsider` on node 1, not in the mesh.
    pub outsider: Pod,
    /// `shop/web` on node 2.
    pub web: Pod,
    /// The state both proxies applied.
    pub state: ClusterState,
    /// The two nodes and their proxies.
    pub mesh: Mesh,
}

impl Cast {
    /// Starts the mesh for `test` and the cast, and applies the state.
    pub fn start(test: &str, ports: &[u16]) -> Cast {
        let mesh = Mesh::start(test);
        let client = mesh.n1.add_pod("client", "shop", true);
        let outsider = mesh.n1.add_pod("outsider", "legacy", false);
        let web = mesh.n2.add_pod("web", "shop", true);
        let apps = ports.iter().map(|port| web.serve(*port)).collect();
        let state = namespaces()
            .pod(&client, "client")
            .pod(&outsider, "default")
            .pod(&web, "web");
        mesh.apply(&state);
        Cast {
            apps,
            client,
            outsider,
            web,
            state,
            mesh,
        }
    }
}

/// A DENY on port 8080 for everything in `shop`.
pub const DENY_PORT_8080: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: no-8080
  namespace: shop
spec:
  action: DENY
  rules:
  - to:
    - operation:
        ports: [\"8080\"]
";

/// `shop` is in the ambient mesh, `legacy` is not.
pub fn namespaces() -> ClusterState {
    ClusterState::new()
        .ambient_namespace("shop")
        .namespace("legacy", &[])
}

/// `pod`'s IPv4 address with `port`.
pub fn v4(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.ipv4()), port)
}

/// `pod`'s IPv4 address.
pub fn ip(pod: &Pod) -> IpAddr {
    IpAddr::V4(pod.ipv4())
}

/// A marker unique to this run, so an old capture or log can never match it.
pub fn marker(what: &str) -> String {
    format!("MARROW-PLAINTEXT-MARKER-{what}-{}", std::process::id())
}

/// Polls `check` (which says what is still missing) until it passes, for at most ten seconds:
/// proxies count a close after the client has seen it.
pub fn eventually(what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match check() {
            Ok(()) => return,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out waiting for {what}; last: {last}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Checks one direction of an HBONE connection on the wire: TLS records from the first byte
/// (a handshake record first), and once application data starts, nothing but application
/// data (TLS 1.3: everything after the handshake is encrypted). Returns the number of
/// application-data records.
pub fn assert_tls(capture: &Capture, flow: Flow, first_versions: &[u16]) -> usize {
    let stream = capture.stream(flow);
    let records = tls_records(&stream.bytes)
        .unwrap_or_else(|e| panic!("{flow} is not TLS: {e}\n{}", capture.summary()));
    let first = records
        .first()
        .unwrap_or_else(|| panic!("{flow} carried no TLS record\n{}", capture.summary()));
    assert!(
        first.content_type == TLS_HANDSHAKE && first_versions.contains(&first.version),
        "{flow} starts with {first:?}, not a TLS handshake record"
    );
    let start = records
        .iter()
        .position(|r| r.content_type == TLS_APPLICATION_DATA)
        .unwrap_or_else(|| panic!("{flow}: no application data record in {records:?}"));
    assert!(
        records[..start]
            .iter()
            .all(|r| matches!(r.content_type, TLS_HANDSHAKE | TLS_CHANGE_CIPHER_SPEC)),
        "{flow}: unexpected records before encryption: {records:?}"
    );
    let plain = records[start..]
        .iter()
        .find(|r| r.content_type != TLS_APPLICATION_DATA || r.version != 0x0303);
    assert!(
        plain.is_none(),
        "{flow}: {plain:?} after encryption started"
    );
    records.len() - start
}

/// The flows toward an app port that carry `text` in the clear, as (source IP, destination);
/// the echo on the way back is left out.
pub fn cleartext_to_apps(capture: &Capture, text: &str) -> Vec<(IpAddr, SocketAddr)> {
    capture
        .flows_containing(text.as_bytes())
        .into_iter()
        .filter(|f| f.dst.port() == APP_PORT)
        .map(|f| (f.src.ip(), f.dst))
        .collect()
}

/// The `source_principal` and `destination_principal` labels of two `shop` service accounts.
pub fn principals(source: &str, destination: &str) -> [(&'static str, String); 2] {
    [
        ("source_principal", spiffe_id("shop", source)),
        ("destination_principal", spiffe_id("shop", destination)),
    ]
}

/// `reporter` and `connection_security_policy` plus the principals, as label pairs.
pub fn labels<'a>(
    reporter: &'a str,
    policy: &'a str,
    principals: &'a [(&'static str, String); 2],
) -> Vec<(&'a str, &'a str)> {
    let mut want = vec![
        ("reporter", reporter),
        ("connection_security_policy", policy),
    ];
    want.extend(principals.iter().map(|(k, v)| (*k, v.as_str())));
    want
}

/// The proxy's log without terminal colours.
pub fn plain_log(proxy: &Proxy) -> String {
    crate::process::strip_ansi(&proxy.log())
}

/// Waits until `proxy` logged a refusal of the connection from `local` (a line naming it that
/// says why it was refused).
pub fn assert_refusal_logged(proxy: &Proxy, what: &str, local: Option<SocketAddr>) {
    let local = local.unwrap_or_else(|| panic!("{what}: the probe never connected"));
    let src = format!("src={local}");
    eventually(&format!("node 2 to log why it refused {what}"), || {
        let log = plain_log(proxy);
        let found = log.lines().any(|line| {
            line.contains(&src)
                && ["refused", "answering", "denied", "rejected", "timed out"]
                    .iter()
                    .any(|why| line.contains(why))
        });
        if found {
            Ok(())
        } else {
            Err(format!(
                "no refusal line with {src} in {}",
                proxy.log_path().display()
            ))
        }
    });
}
