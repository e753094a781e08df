//! A loopback mesh for the waypoint's tests: a local CA, fake node proxies (HBONE servers on
//! `<pod ip>:15008` presenting the pod's identity, relaying each CONNECT to the app at its
//! authority), in-process apps (an HTTP/1.1 + h2 echo, a TCP echo), a state file, the waypoint
//! started in process, and an HBONE client that speaks as a client pod.
//!
//! Every test takes its own 127.88.<n>.0/24 (pods at .1, .2, .3; the client at .10), so tests
//! run in parallel; everything is dropped (and its tasks aborted) with the test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use marrow_mesh::hbone::{self, Baggage, ConnectRequest, Forwarded, HboneClient, TraceParent};
use marrow_mesh::identity::{
    CaFiles, LocalCa, LocalCaOptions, SpiffeId, TrustDomain, WorkloadCertificate, create_ca,
};
use marrow_mesh::tls;
use marrow_waypoint::app::{Running, start_with};
use marrow_waypoint::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

mod echo;

use echo::serve_echo;
pub use echo::{Served, ServedLog};

/// The HTTP app's port on every pod.
pub const HTTP_PORT: u16 = 8080;
/// The gRPC-ish (h2) app port: the same echo app, declared `grpc`.
pub const GRPC_PORT: u16 = 9090;
/// The TCP echo app's port.
pub const TCP_PORT: u16 = 9000;

/// Aborts its tasks when dropped.
#[derive(Default)]
pub struct Tasks(Mutex<Vec<JoinHandle<()>>>);

impl Tasks {
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.0.lock().unwrap().push(tokio::spawn(task));
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in self.0.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// What a fake node proxy saw of one CONNECT.
#[derive(Clone, Debug)]
pub struct SeenConnect {
    pub authority: SocketAddr,
    pub forwarded: Forwarded,
    pub baggage: Baggage,
    pub peer: SpiffeId,
}

/// One fake node proxy, in front of one pod.
pub struct NodeProxy {
    /// TCP connections accepted.
    pub accepted: Arc<AtomicUsize>,
    /// Every CONNECT.
    pub connects: Arc<Mutex<Vec<SeenConnect>>>,
}

/// A label every pod carries with its host number (`h1`, `h2`, …), for DestinationRule
/// subsets in routing tests.
pub const HOST_LABEL: &str = "marrow-test/host";

fn host_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("h{}", v4.octets()[3]),
        IpAddr::V6(_) => "h0".into(),
    }
}

/// A pod host whose node proxy presents an identity other than the pod's (`sa/impostor`).
pub const IMPOSTOR: u8 = 9;

/// The test's mesh.
pub struct TestMesh {
    pub net: u8,
    /// The CA and state files; removed with the mesh.
    _dir: tempfile::TempDir,
    pub waypoint: Running,
    pub waypoint_id: SpiffeId,
    pub client_cert: Arc<WorkloadCertificate>,
    pub proxies: Vec<NodeProxy>,
    /// Every request the HTTP echo apps got.
    pub served: ServedLog,
    pub tasks: Tasks,
}

/// The address of pod `host` of net `net`, as the state knows it.
pub fn pod_ip(net: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 88, net, host))
}

/// Where pod `ip`'s node proxy and apps listen: the same host in 127.88.0.0/16 (the state
/// refuses loopback pod addresses; the waypoint dials through a map, the fake node proxies
/// map CONNECT authorities the same way).
pub fn local(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(v4) => {
            let [_, _, net, host] = v4.octets();
            SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 88, net, host)), addr.port())
        }
        IpAddr::V6(_) => addr,
    }
}

/// The Service VIP of net `net` (never bound: only the waypoint's state knows it).
pub fn vip(net: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, net, 10))
}

/// The VIP of a Service with a single endpoint (pod .1).
pub fn solo_vip(net: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, net, 11))
}

/// The VIP of a Service without endpoints.
pub fn empty_vip(net: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, net, 12))
}

/// The VIP of a Service (`opted-out`) that opts out of the namespace's waypoint.
pub fn opted_out_vip(net: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, net, 13))
}

fn state_yaml(net: u8, pods: &[u8], extra: &str) -> String {
    // Everything in `shop` uses the waypoint `shop/waypoint`, for Service and workload traffic
    // alike, but the Service `opted-out` (`istio.io/use-waypoint: none`).
    let mut docs = vec![
        serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {
                "istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "waypoint"}}
        }),
        serde_json::json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "elsewhere", "labels": {"istio.io/dataplane-mode": "ambient"}}
        }),
        serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "waypoint", "namespace": "shop",
                "labels": {"istio.io/waypoint-for": "all"}},
            "spec": {"gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}
        }),
    ];
    let pod = |name: String, ip: IpAddr, sa: &str| {
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{ip}"),
                "labels": {"app": sa, HOST_LABEL: host_label(ip)}},
            "spec": {"nodeName": "node", "serviceAccountName": sa},
            "status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}
        })
    };
    docs.push(pod("client".into(), pod_ip(net, 10), "client"));
    for host in pods {
        docs.push(pod(format!("web-{host}"), pod_ip(net, *host), "web"));
    }
    let ports = serde_json::json!([
        {"name": "http", "port": 80, "targetPort": HTTP_PORT, "protocol": "TCP"},
        {"name": "grpc-api", "port": 9090, "targetPort": GRPC_PORT, "protocol": "TCP"},
        {"name": "tcp-echo", "port": 7000, "targetPort": TCP_PORT, "protocol": "TCP"},
        {"name": "web", "port": 81, "targetPort": HTTP_PORT, "protocol": "TCP"},
        {"name": "echo", "port": 7001, "targetPort": TCP_PORT, "protocol": "TCP"},
    ]);
    let slice_ports = serde_json::json!([
        {"name": "http", "port": HTTP_PORT, "protocol": "TCP"},
        {"name": "grpc-api", "port": GRPC_PORT, "protocol": "TCP"},
        {"name": "tcp-echo", "port": TCP_PORT, "protocol": "TCP"},
        {"name": "web", "port": HTTP_PORT, "protocol": "TCP"},
        {"name": "echo", "port": TCP_PORT, "protocol": "TCP"},
    ]);
    let service = |name: &str, vip: IpAddr, endpoints: Vec<IpAddr>| {
        vec![
            serde_json::json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"clusterIP": vip.to_string(), "clusterIPs": [vip.to_string()],
                    "ports": ports.clone()}
            }),
            serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{name}-1"), "namespace": "shop",
                    "labels": {"kubernetes.io/service-name": name}},
                "addressType": "IPv4",
                "ports": slice_ports.clone(),
                "endpoints": endpoints.iter()
                    .map(|ip| serde_json::json!({"addresses": [ip.to_string()]}))
                    .collect::<Vec<_>>(),
            }),
        ]
    };
    docs.extend(service(
        "web",
        vip(net),
        pods.iter().map(|h| pod_ip(net, *h)).collect(),
    ));
    docs.extend(service("solo", solo_vip(net), vec![pod_ip(net, pods[0])]));
    docs.extend(service("empty", empty_vip(net), vec![]));
    let mut opted_out = service("opted-out", opted_out_vip(net), vec![pod_ip(net, pods[0])]);
    opted_out[0]["metadata"]["labels"] = serde_json::json!({"istio.io/use-waypoint": "none"});
    docs.extend(opted_out);
    let mut yaml = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("\n---\n");
    if !extra.is_empty() {
        yaml.push_str("\n---\n");
        yaml.push_str(extra);
    }
    yaml
}

impl TestMesh {
    /// A mesh on net `net` with server pods at hosts `pods`, each with a node proxy and apps.
    pub async fn start(net: u8, pods: &[u8]) -> TestMesh {
        Self::start_with(net, pods, |_| {}).await
    }

    /// As [`TestMesh::start`], with the waypoint's config adjusted by `tune`.
    pub async fn start_with(net: u8, pods: &[u8], tune: impl FnOnce(&mut Config)) -> TestMesh {
        Self::start_full(net, pods, "", tune).await
    }

    /// As [`TestMesh::start`], with `extra` YAML documents (policies) in the state.
    pub async fn start_with_state(net: u8, pods: &[u8], extra: &str) -> TestMesh {
        Self::start_full(net, pods, extra, |_| {}).await
    }

    async fn start_full(
        net: u8,
        pods: &[u8],
        extra: &str,
        tune: impl FnOnce(&mut Config),
    ) -> TestMesh {
        let dir = tempfile::tempdir().unwrap();
        let trust_domain = TrustDomain::new("cluster.local").unwrap();
        let ca_dir = dir.path().join("ca");
        create_ca(&ca_dir, &trust_domain, Duration::from_secs(86_400)).unwrap();
        let ca = LocalCa::load(
            &CaFiles::in_dir(&ca_dir),
            trust_domain.clone(),
            LocalCaOptions::default(),
        )
        .unwrap();
        let state_file: PathBuf = dir.path().join("state.yaml");
        std::fs::write(&state_file, state_yaml(net, pods, extra)).unwrap();

        let tasks = Tasks::default();
        let served = ServedLog::default();
        let mut proxies = Vec::new();
        for host in pods {
            let ip = pod_ip(net, *host);
            let account = if *host == IMPOSTOR { "impostor" } else { "web" };
            let id = SpiffeId::new(&trust_domain, "shop", account).unwrap();
            let cert = Arc::new(ca.issue(&id).unwrap());
            proxies.push(node_proxy(ip, cert, &tasks).await);
            serve_echo(SocketAddr::new(ip, HTTP_PORT), &tasks, &served).await;
            serve_echo(SocketAddr::new(ip, GRPC_PORT), &tasks, &served).await;
            serve_tcp_echo(local(SocketAddr::new(ip, TCP_PORT)), &tasks).await;
        }

        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = Config {
            hbone_addr: loopback,
            readiness_addr: loopback,
            metrics_addr: loopback,
            admin_addr: loopback,
            gateway_namespace: "shop".into(),
            gateway_name: "waypoint".into(),
            state_file: Some(state_file),
            ca_dir: Some(ca_dir),
            ..Config::default()
        };
        tune(&mut config);
        let waypoint = start_with(&config, Some(Arc::new(local))).await.unwrap();
        let waypoint_id = SpiffeId::new(&trust_domain, "shop", "waypoint").unwrap();
        let client_id = SpiffeId::new(&trust_domain, "shop", "client").unwrap();
        let client_cert = Arc::new(ca.issue(&client_id).unwrap());
        TestMesh {
            net,
            _dir: dir,
            waypoint,
            waypoint_id,
            client_cert,
            proxies,
            served,
            tasks,
        }
    }

    /// The client pod's address as its node proxy reports it (`forwarded: for=`).
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(pod_ip(self.net, 10), 40_000)
    }

    /// An HBONE connection to the waypoint as the client pod.
    pub async fn hbone(&self) -> HboneClient {
        let config = tls::client_config(
            &self.client_cert,
            self.waypoint_id.clone(),
            tls::KeyExchange::default(),
        )
        .unwrap();
        let addr = self.waypoint.hbone_addr;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tls::connect(config, addr.ip(), tcp).await.unwrap();
        HboneClient::handshake(tls).await.unwrap()
    }

    /// A CONNECT to `authority` through the waypoint; the refusal's error when refused.
    pub async fn tunnel(
        &self,
        authority: SocketAddr,
    ) -> Result<(HboneClient, hbone::H2Stream), hbone::HboneError> {
        let client = self.hbone().await;
        let request = ConnectRequest {
            authority,
            forwarded: Forwarded {
                for_addr: Some(self.client_addr()),
                host: None,
            },
            baggage: Baggage {
                namespace: Some("shop".into()),
                service: Some("client".into()),
                ..Baggage::default()
            },
            traceparent: TraceParent::random(),
        };
        let stream = client.connect(&request).await?;
        Ok((client, stream))
    }

    /// An HTTP/1.1 client over a tunnel to `authority`.
    pub async fn http1(
        &self,
        authority: SocketAddr,
    ) -> (
        HboneClient,
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    ) {
        let (client, stream) = self.tunnel(authority).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        self.tasks.spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        (client, sender)
    }

    /// An HTTP/2 client (prior knowledge) over a tunnel to `authority`.
    pub async fn http2(
        &self,
        authority: SocketAddr,
    ) -> (
        HboneClient,
        hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    ) {
        let (client, stream) = self.tunnel(authority).await.unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        self.tasks.spawn(async move {
            let _ = conn.await;
        });
        (client, sender)
    }

    /// Puts `traffic` in force in the waypoint's state (the rest of the state as it is), as a
    /// state source publishing a new snapshot would.
    pub fn set_traffic(&self, traffic: marrow_mesh::traffic::TrafficSet) {
        let store = &self.waypoint.context.state;
        let snap = store.snapshot();
        let mut update = marrow_mesh::state::StateUpdate::new();
        for namespace in snap.namespaces() {
            update.add_namespace(namespace.clone()).unwrap();
        }
        for workload in snap.workloads() {
            update.add_shared_workload(workload.clone()).unwrap();
        }
        for object in snap.raw_objects() {
            update.add_raw_object(object.clone()).unwrap();
        }
        update.build_policies(marrow_mesh::policy::DEFAULT_ROOT_NAMESPACE);
        update.build_services();
        update.build_waypoints();
        update.set_traffic(traffic);
        store.apply(update);
    }

    /// What the HTTP echo apps got, in order.
    pub fn served(&self) -> Vec<Served> {
        self.served.lock().unwrap().clone()
    }

    /// TCP connections accepted by all node proxies.
    pub fn accepted(&self) -> usize {
        self.proxies
            .iter()
            .map(|p| p.accepted.load(Ordering::SeqCst))
            .sum()
    }

    /// Every CONNECT the node proxies saw.
    pub fn connects(&self) -> Vec<SeenConnect> {
        self.proxies
            .iter()
            .flat_map(|p| p.connects.lock().unwrap().clone())
            .collect()
    }
}

/// Writes raw bytes into a tunnel and reads what comes back until the peer closes or
/// `wait` passes.
pub async fn raw_exchange(stream: &mut hbone::H2Stream, bytes: &[u8], wait: Duration) -> String {
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn node_proxy(ip: IpAddr, cert: Arc<WorkloadCertificate>, tasks: &Tasks) -> NodeProxy {
    let listener = TcpListener::bind(local(SocketAddr::new(ip, hbone::HBONE_PORT)))
        .await
        .unwrap();
    let config = tls::server_config(&cert, tls::KeyExchange::default()).unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let connects = Arc::new(Mutex::new(Vec::new()));
    let trust_domain = TrustDomain::new(cert.id().trust_domain()).unwrap();
    let (count, seen) = (accepted.clone(), connects.clone());
    tasks.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (config, seen, trust_domain) = (config.clone(), seen.clone(), trust_domain.clone());
            tokio::spawn(async move {
                let Ok(tls) = tls::accept(config, tcp).await else {
                    return;
                };
                let peer = tls::peer_identity(tls.get_ref().1, &trust_domain).unwrap();
                let _ = hbone::serve(tls, Duration::from_secs(5), std::future::pending(), {
                    move |incoming: hbone::IncomingConnect| {
                        let seen = seen.clone();
                        let peer = peer.clone();
                        async move {
                            let target = incoming.target.clone();
                            seen.lock().unwrap().push(SeenConnect {
                                authority: target.authority,
                                forwarded: target.forwarded.clone(),
                                baggage: target.baggage.clone(),
                                peer,
                            });
                            let Ok(mut app) = TcpStream::connect(local(target.authority)).await
                            else {
                                incoming.refuse(hbone::Refusal::Unavailable);
                                return;
                            };
                            let Ok(mut stream) = incoming.accept() else {
                                return;
                            };
                            let _ = tokio::io::copy_bidirectional(&mut stream, &mut app).await;
                        }
                    }
                })
                .await;
            });
        }
    });
    NodeProxy { accepted, connects }
}

async fn serve_tcp_echo(addr: SocketAddr, tasks: &Tasks) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tasks.spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
}

/// A request for `path` with `method`, `Host: web.shop`, no body.
pub fn request(method: http::Method, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "web.shop")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// `GET path` on `addr` over HTTP/1.0: the whole body.
pub async fn body_of(addr: SocketAddr, path: &str) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.unwrap();
    raw.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}
