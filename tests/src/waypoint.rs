//! A real marrow waypoint in a pod: the `waypoint` binary started in an unenrolled pod's
//! namespace (as the controller's Deployment runs it: HBONE on 15008, readiness 15021, metrics
//! 15020, admin on the pod's localhost), its certificate from the mesh CA, the cluster state
//! from a node's state file. Killed on drop.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::http::{self, HttpResponse};
use crate::process::PodProcess;
use crate::{MeshCa, Pod, binaries};

/// Readiness port, as Istio's waypoint pods.
pub const READINESS_PORT: u16 = 15021;
/// Metrics port.
pub const METRICS_PORT: u16 = 15020;
/// Admin port, on the pod's localhost.
pub const ADMIN_PORT: u16 = 15000;
/// Bound on the waypoint becoming ready (certificate issued, state read).
const READY: Duration = Duration::from_secs(30);
/// Bound on one HTTP request to it.
const REQUEST: Duration = Duration::from_secs(5);

/// A running waypoint for the Gateway `namespace/name`, in a pod it borrows.
pub struct Waypoint<'p> {
    process: PodProcess,
    pod: &'p Pod,
}

impl<'p> Waypoint<'p> {
    /// Starts the waypoint of Gateway `namespace/name` (service account `name`) in `pod`,
    /// reading `state_file`, with its certificate signed by `ca`; `extra` flags after.
    pub fn start(
        pod: &'p Pod,
        ca: &MeshCa,
        state_file: &Path,
        (namespace, name): (&str, &str),
        extra: &[&str],
    ) -> Waypoint<'p> {
        let args = args(ca, state_file, (namespace, name), extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Waypoint {
            process: pod.spawn(binaries::waypoint(), &args),
            pod,
        }
    }

    /// Waits until `/healthz/ready` answers 200.
    ///
    /// # Panics
    /// After [`READY`], or when the process exits, with its log.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY;
        loop {
            if let Some(status) = self.process.try_wait() {
                panic!("the waypoint exited ({status}):\n{}", self.log());
            }
            let ready = self.get(READINESS_PORT, "/healthz/ready");
            if ready.as_ref().is_ok_and(|r| r.status == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the waypoint was not ready within {READY:?} ({ready:?}):\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path` on one of its ports (the admin one on its localhost), from its pod.
    ///
    /// # Errors
    /// As [`http::get`].
    pub fn get(&self, port: u16, path: &str) -> anyhow::Result<HttpResponse> {
        let ip = if port == ADMIN_PORT {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(self.pod.ipv4())
        };
        http::get_in(self.pod.netns(), SocketAddr::new(ip, port), path, REQUEST)
    }

    /// Its Prometheus exposition.
    ///
    /// # Panics
    /// When `/metrics` does not answer 200.
    pub fn metrics(&self) -> String {
        let response = self
            .get(METRICS_PORT, "/metrics")
            .unwrap_or_else(|e| panic!("waypoint /metrics: {e:#}"));
        assert_eq!(response.status, 200, "waypoint /metrics: {}", response.body);
        response.body
    }

    /// Its process id (the same one while it is not restarted).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }
}

/// The `waypoint` command line of [`Waypoint::start`]: Gateway `namespace/name` (service
/// account `name`), certificates from `ca`, state from `state_file` (polled every 100 ms),
/// `extra` flags after.
pub fn args(
    ca: &MeshCa,
    state_file: &Path,
    (namespace, name): (&str, &str),
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--gateway-namespace".into(),
        namespace.into(),
        "--gateway-name".into(),
        name.into(),
        "--service-account".into(),
        name.into(),
        "--trust-domain".into(),
        ca.trust_domain().into(),
        "--ca-dir".into(),
        ca.dir().display().to_string(),
        "--state-file".into(),
        state_file.display().to_string(),
        "--state-poll-ms".into(),
        "100".into(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    args
}

/// The objects that make `namespace/name` a waypoint in a state file: the Gateway (class
/// `istio-waypoint`, listener `mesh` 15008 HBONE), its Service (ClusterIP `vip`, port 15008, as
/// the controller makes it), and that Service's EndpointSlice with `instances` as the ready
/// waypoint pods (none: the waypoint is down). YAML documents, separated by `---`.
pub fn gateway_objects(namespace: &str, name: &str, vip: &str, instances: &[String]) -> String {
    let endpoints: String = instances
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n"))
        .collect();
    let endpoints = if endpoints.is_empty() {
        "endpoints: []\n".to_owned()
    } else {
        format!("endpoints:\n{endpoints}")
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{gateway.istio.io/managed: istio.io-mesh-controller}}
spec:
  clusterIP: {vip}
  ports: [{{name: mesh, port: 15008, protocol: TCP, appProtocol: hbone}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: mesh, port: 15008, protocol: TCP}}]
{endpoints}"
    )
}

/// A Service `namespace/name` at ClusterIP `vip` labelled `istio.io/use-waypoint: waypoint`,
/// with `ports` (`(name, port, target port)`), and its EndpointSlice with `endpoints` ready.
/// YAML documents, separated by `---`, ending with a newline.
pub fn bound_service(
    (namespace, name): (&str, &str),
    vip: &str,
    waypoint: &str,
    ports: &[(&str, u16, u16)],
    endpoints: &[String],
) -> String {
    let service_ports: String = ports
        .iter()
        .map(|(port_name, port, target)| {
            format!(
                "  - {{name: {port_name}, port: {port}, targetPort: {target}, protocol: TCP}}\n"
            )
        })
        .collect();
    let slice_ports: String = ports
        .iter()
        .map(|(port_name, _, target)| {
            format!("- {{name: {port_name}, port: {target}, protocol: TCP}}\n")
        })
        .collect();
    let endpoints: String = endpoints
        .iter()
        .map(|ip| format!("- addresses: [{ip}]\n"))
        .collect();
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{istio.io/use-waypoint: {waypoint}}}
spec:
  clusterIP: {vip}
  ports:
{service_ports}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-1
  namespace: {namespace}
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports:
{slice_ports}endpoints:
{endpoints}"
    )
}
