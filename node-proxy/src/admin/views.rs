//! The JSON views of the admin API, each a pure function of the [`AdminState`] (and, for
//! workloads, the enrolled pods): what an operator reads, shaped for reading, not the internal
//! types.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::AdminState;
use crate::inpod::PodRecord;
use crate::proxy::connections::Connection;
use crate::proxy::record::millis;
use marrow_mesh::identity::SpiffeId;
use marrow_mesh::objects::{RawKind, timestamp};
use marrow_mesh::policy::ModeSetting;
use marrow_mesh::state::Snapshot;

/// `GET /workloads`.
#[derive(Debug, Serialize)]
pub struct Workloads {
    /// Generation of the state shown (0: no state).
    pub generation: u64,
    /// The state's workloads, by namespace and name.
    pub workloads: Vec<WorkloadView>,
    /// The pods enrolled on this node, by namespace and name.
    pub enrolled: Vec<EnrolledView>,
}

/// One workload of the state.
#[derive(Debug, Serialize)]
pub struct WorkloadView {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod uid.
    pub uid: String,
    /// The owning workload's name (the metrics' `*_workload`).
    pub workload: String,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// Service account.
    pub service_account: String,
    /// The node it is scheduled on.
    pub node: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The SPIFFE ID its certificates carry.
    pub spiffe_id: Option<String>,
    /// Whether it is in the ambient mesh.
    pub in_mesh: bool,
    /// Whether it is enrolled on this node.
    pub enrolled_here: bool,
}

/// One pod enrolled on this node.
#[derive(Debug, Serialize)]
pub struct EnrolledView {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod uid.
    pub uid: String,
    /// Addresses.
    pub ips: Vec<IpAddr>,
    /// Whether the state knows the pod.
    pub in_state: bool,
}

/// The workloads of the state, and the pods enrolled here.
pub fn workloads(admin: &AdminState, enrolled: &[PodRecord]) -> Workloads {
    let snap = snapshot(admin);
    let is_enrolled = |ns: &str, name: &str, uid: &str| {
        enrolled
            .iter()
            .any(|r| r.pod.uid == uid || (r.pod.namespace == ns && r.pod.name == name))
    };
    let mut workloads: Vec<WorkloadView> = snap
        .iter()
        .flat_map(|s| s.workloads())
        .map(|w| {
            let (ns, sa) = w.spiffe_id_parts();
            WorkloadView {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                uid: w.uid.to_string(),
                workload: w.workload_name.clone(),
                ips: w.ips.clone(),
                service_account: w.service_account.clone(),
                node: w.node_name.clone(),
                labels: w.labels.clone(),
                spiffe_id: SpiffeId::new(&admin.trust_domain, ns, sa)
                    .ok()
                    .map(|id| id.to_string()),
                in_mesh: snap.as_ref().is_some_and(|s| s.in_mesh(w)),
                enrolled_here: is_enrolled(&w.namespace, &w.name, w.uid.as_str()),
            }
        })
        .collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut enrolled: Vec<EnrolledView> = enrolled
        .iter()
        .map(|r| EnrolledView {
            namespace: r.pod.namespace.clone(),
            name: r.pod.name.clone(),
            uid: r.pod.uid.clone(),
            ips: r.ips.clone(),
            in_state: workloads.iter().any(|w| {
                w.uid == r.pod.uid || (w.namespace == r.pod.namespace && w.name == r.pod.name)
            }),
        })
        .collect();
    enrolled.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Workloads {
        generation: generation(admin),
        workloads,
        enrolled,
    }
}

/// `GET /services`.
#[derive(Debug, Serialize)]
pub struct Services {
    /// Generation of the state shown.
    pub generation: u64,
    /// Services, by namespace and name.
    pub services: Vec<KeptObject>,
    /// EndpointSlices, by namespace and name.
    pub endpoint_slices: Vec<KeptObject>,
    /// What the proxy does with them.
    pub note: &'static str,
}

/// An object the state keeps whole.
#[derive(Debug, Serialize)]
pub struct KeptObject {
    /// Namespace.
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// The object as the source gave it.
    pub object: serde_json::Value,
}

/// The Services and EndpointSlices of the state.
pub fn services(admin: &AdminState) -> Services {
    let snap = snapshot(admin);
    let of_kind = |kind: RawKind| -> Vec<KeptObject> {
        snap.iter()
            .flat_map(|s| s.raw_objects())
            .filter(|d| d.kind == kind)
            .map(|d| KeptObject {
                namespace: d.object.namespace.clone(),
                name: d.object.name.clone(),
                object: d.body.clone(),
            })
            .collect()
    };
    Services {
        generation: generation(admin),
        services: of_kind(RawKind::Service),
        endpoint_slices: of_kind(RawKind::EndpointSlice),
        note: "kept from the state; not used for routing yet",
    }
}

/// `GET /policies`.
#[derive(Debug, Serialize)]
pub struct Policies {
    /// Generation of the state shown.
    pub generation: u64,
    /// Policies here apply mesh-wide.
    pub root_namespace: String,
    /// AuthorizationPolicies in force, by namespace and name.
    pub authorization_policies: Vec<AuthorizationView>,
    /// PeerAuthentications in force, by namespace and name.
    pub peer_authentications: Vec<PeerAuthenticationView>,
    /// What the proxy ignores or enforces differently (L7-only fields, waypoint policies, …).
    pub warnings: Vec<String>,
}

/// One AuthorizationPolicy.
#[derive(Debug, Serialize)]
pub struct AuthorizationView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `ALLOW` or `DENY`.
    pub action: String,
    /// `matchLabels`; none selects the namespace (or the mesh, in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// How many rules.
    pub rules: usize,
    /// Whether the node proxy takes it into its decisions (not a waypoint's `targetRefs`
    /// policy, not dry-run, not AUDIT).
    pub enforced: bool,
    /// The policy's `spec` as written.
    pub spec: Option<serde_json::Value>,
}

/// One PeerAuthentication.
#[derive(Debug, Serialize)]
pub struct PeerAuthenticationView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `matchLabels`; none covers the namespace (or the mesh, in the root namespace).
    pub selector: Option<BTreeMap<String, String>>,
    /// `UNSET`, `STRICT`, `PERMISSIVE` or `DISABLE`.
    pub mode: &'static str,
    /// `portLevelMtls`, by port.
    pub port_level: BTreeMap<u16, &'static str>,
}

/// The policies in force, with their warnings.
pub fn policies(admin: &AdminState) -> Policies {
    let snap = snapshot(admin);
    let default_set = marrow_mesh::policy::PolicySet::default();
    let set = snap.as_ref().map_or(&default_set, |s| s.policies());
    let specs: HashMap<(&str, &str), &serde_json::Value> = snap
        .iter()
        .flat_map(|s| s.raw_objects())
        .filter(|d| d.kind == RawKind::AuthorizationPolicy)
        .filter_map(|d| {
            Some((
                (d.object.namespace.as_deref()?, d.object.name.as_str()),
                &d.body,
            ))
        })
        .collect();
    let authorization_policies = set
        .authorization_policies()
        .iter()
        .map(|p| AuthorizationView {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            action: p.action.to_string(),
            selector: p.selector.clone(),
            rules: p.rules.len(),
            enforced: p.is_enforced(),
            spec: specs
                .get(&(p.namespace.as_str(), p.name.as_str()))
                .and_then(|body| body.get("spec").cloned()),
        })
        .collect();
    let peer_authentications = set
        .peer_authentications()
        .iter()
        .map(|p| PeerAuthenticationView {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            selector: p.selector.clone(),
            mode: mode_name(p.mode),
            port_level: p
                .port_level
                .iter()
                .map(|(port, mode)| (*port, mode_name(*mode)))
                .collect(),
        })
        .collect();
    Policies {
        generation: generation(admin),
        root_namespace: set.root_namespace().to_owned(),
        authorization_policies,
        peer_authentications,
        warnings: set.warnings(),
    }
}

fn mode_name(mode: ModeSetting) -> &'static str {
    match mode {
        ModeSetting::Unset => "UNSET",
        ModeSetting::Strict => "STRICT",
        ModeSetting::Permissive => "PERMISSIVE",
        ModeSetting::Disable => "DISABLE",
    }
}

/// `GET /certificates`.
#[derive(Debug, Serialize)]
pub struct Certificates {
    /// One per identity of a local pod, by identity.
    pub certificates: Vec<CertificateView>,
}

/// One identity's current certificate.
#[derive(Debug, Serialize)]
pub struct CertificateView {
    /// The SPIFFE ID.
    pub identity: String,
    /// `valid`, `expired`, `pending` (first fetch under way) or `failed`.
    pub state: &'static str,
    /// Start of validity, RFC 3339 (UTC).
    pub not_before: Option<String>,
    /// End of validity, RFC 3339 (UTC).
    pub not_after: Option<String>,
    /// End of validity, Unix seconds (as `marrow_certificate_expiry_timestamp_seconds`).
    pub expiry_unix: Option<u64>,
    /// Seconds until expiry (negative once expired).
    pub seconds_left: Option<i64>,
    /// The leaf's serial number, hex.
    pub serial: Option<String>,
    /// Why the last fetch or renewal failed, if it did.
    pub last_error: Option<String>,
    /// Fetches failed in a row since the last success (as
    /// `marrow_certificate_renewal_failures`).
    pub consecutive_failures: u32,
    /// The roots this certificate's peers must chain to: subject and serial of each (more than
    /// one during a root rotation).
    pub trusted_roots: Vec<String>,
}

/// Bound on reading one cached certificate (it is cached: this only guards against a fetch).
const CERT_READ_TIMEOUT: Duration = Duration::from_millis(500);

/// The identities this proxy holds certificates for.
pub async fn certificates(admin: &AdminState) -> Certificates {
    let Some(certs) = &admin.certs else {
        return Certificates {
            certificates: Vec::new(),
        };
    };
    let now = SystemTime::now();
    let mut out = Vec::new();
    for status in certs.statuses() {
        let expired = status.not_after.is_some_and(|t| t < now);
        let state = match (status.not_after, &status.last_error) {
            (Some(_), _) if expired => "expired",
            (Some(_), _) => "valid",
            (None, Some(_)) => "failed",
            (None, None) => "pending",
        };
        // Only a valid certificate is read: the manager hands it out from its cache.
        let cert = if state == "valid" {
            tokio::time::timeout(CERT_READ_TIMEOUT, certs.get(&status.id))
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        let serial = cert.as_ref().and_then(|cert| serial_of(cert.leaf()));
        let trusted_roots = cert
            .as_ref()
            .map(|cert| {
                cert.roots()
                    .iter()
                    .map(|root| describe_root(root))
                    .collect()
            })
            .unwrap_or_default();
        let expiry = status.not_after.map(unix_seconds);
        out.push(CertificateView {
            identity: status.id.to_string(),
            state,
            not_before: status.not_before.map(|t| timestamp(unix_seconds(t))),
            not_after: expiry.map(timestamp),
            expiry_unix: expiry,
            seconds_left: status.not_after.map(|t| seconds_between(now, t)),
            serial,
            last_error: status.last_error,
            consecutive_failures: status.consecutive_failures,
            trusted_roots,
        });
    }
    Certificates { certificates: out }
}

/// `subject (serial hex)` of a root certificate.
fn describe_root(der: &[u8]) -> String {
    use x509_parser::prelude::FromDer;
    match x509_parser::certificate::X509Certificate::from_der(der) {
        Ok((_, cert)) => format!(
            "{} (serial {})",
            cert.subject(),
            cert.raw_serial_as_string()
        ),
        Err(_) => "(unparsable)".to_owned(),
    }
}

fn serial_of(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    Some(cert.raw_serial_as_string())
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `to - from` in whole seconds, negative when `to` is earlier.
fn seconds_between(from: SystemTime, to: SystemTime) -> i64 {
    match to.duration_since(from) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

/// `GET /connections`.
#[derive(Debug, Serialize)]
pub struct Connections {
    /// How many are open.
    pub count: usize,
    /// The open connections, oldest first.
    pub connections: Vec<OpenConnection>,
}

/// One open connection: its facts, the bytes moved so far and its age.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct OpenConnection {
    /// Unique in this process, in order of opening.
    pub id: u64,
    /// `outbound` or `inbound`.
    pub direction: &'static str,
    /// `source` or `destination`.
    pub reporter: &'static str,
    /// The local pod, `namespace/name`.
    pub pod: String,
    /// The client's address.
    pub src: std::net::SocketAddr,
    /// The address the client connected to.
    pub dst: std::net::SocketAddr,
    /// The client's SPIFFE ID.
    pub src_identity: Option<String>,
    /// The server's SPIFFE ID.
    pub dst_identity: Option<String>,
    /// The client's workload, `namespace/name`.
    pub src_workload: Option<String>,
    /// The server's workload, `namespace/name`.
    pub dst_workload: Option<String>,
    /// `mutual_tls` or `none`.
    pub security: &'static str,
    /// Bytes from the client towards the server so far.
    pub bytes_sent: u64,
    /// Bytes from the server to the client so far.
    pub bytes_received: u64,
    /// Milliseconds since the connection was accepted.
    pub age_ms: u64,
    /// When it was accepted, Unix milliseconds.
    pub opened_unix_ms: u64,
}

impl OpenConnection {
    /// The view of one entry of the table.
    pub fn of(entry: &Connection) -> Self {
        let facts = entry.facts();
        let (bytes_sent, bytes_received) = entry.bytes().get();
        Self {
            id: entry.id(),
            direction: facts.direction(),
            reporter: facts.reporter().as_str(),
            pod: facts.pod.to_string(),
            src: facts.src,
            dst: facts.dst,
            src_identity: facts.src_identity().map(str::to_owned),
            dst_identity: facts.dst_identity().map(str::to_owned),
            src_workload: facts.src_workload(),
            dst_workload: facts.dst_workload(),
            security: facts.security().as_str(),
            bytes_sent,
            bytes_received,
            age_ms: millis(entry.age().as_millis()),
            opened_unix_ms: entry
                .opened_at()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| millis(d.as_millis())),
        }
    }
}

/// The live connection table.
pub fn connections(admin: &AdminState) -> Connections {
    let connections: Vec<OpenConnection> = admin
        .connections
        .entries()
        .iter()
        .map(|entry| OpenConnection::of(entry))
        .collect();
    Connections {
        count: connections.len(),
        connections,
    }
}

/// The effective configuration, with the state generation, the trust domain in use, and the
/// `security.istio.io` objects of the state not enforced as written (and the dry-run ones).
pub fn config_dump(admin: &AdminState) -> serde_json::Value {
    let c = &admin.config;
    let snap = snapshot(admin);
    let unsupported: Vec<marrow_mesh::policy::UnsupportedView> = snap
        .iter()
        .flat_map(|s| s.policies().unsupported())
        .map(|u| u.view())
        .collect();
    let dry_run: Vec<String> = snap
        .iter()
        .flat_map(|s| s.policies().authorization_policies())
        .filter(|p| p.dry_run)
        .map(|p| p.reference().to_string())
        .collect();
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    serde_json::json!({
        "config": {
            "ebpf_object": c.ebpf_object,
            "bpffs_dir": c.bpffs_dir,
            "cgroup": c.cgroup,
            "state_dir": c.state_dir,
            "cni_socket": c.cni_socket,
            "metrics_addr": c.metrics_addr,
            "readiness_addr": c.readiness_addr,
            "admin_addr": c.admin_addr,
            "connect_timeout_ms": ms(c.connect_timeout),
            "worker_threads": c.worker_threads,
            "inbound_source_ports": [c.inbound_source_ports.0, c.inbound_source_ports.1],
            "state_file": c.state_file,
            "state_poll_ms": ms(c.state_poll),
            "ca_dir": c.ca_dir,
            "trust_domain": c.trust_domain,
            "root_namespace": c.root_namespace,
            "node_name": c.node_name,
            "handshake_timeout_ms": ms(c.handshake_timeout),
            "tls_key_exchange": c.tls_key_exchange.as_str(),
            "cert_ttl_secs": c.cert_ttl.as_secs(),
            "drain_timeout_secs": c.drain_timeout.as_secs(),
            "hbone_no_pool": c.hbone_no_pool,
            "cluster_id": c.cluster_id,
        },
        "version": env!("CARGO_PKG_VERSION"),
        "state_generation": admin.state.as_ref().map(|s| s.snapshot().generation()),
        "trust_domain": admin.trust_domain.as_str(),
        "mesh": admin.state.is_some() && admin.certs.is_some(),
        "connections_open": admin.connections.len(),
        "unsupported": unsupported,
        "dry_run_policies": dry_run,
    })
}

fn snapshot(admin: &AdminState) -> Option<std::sync::Arc<Snapshot>> {
    admin.state.as_ref().map(|s| s.snapshot())
}

fn generation(admin: &AdminState) -> u64 {
    admin
        .state
        .as_ref()
        .map_or(0, |s| s.snapshot().generation())
}
