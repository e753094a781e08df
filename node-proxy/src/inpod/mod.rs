//! In-pod enrollment: everything the proxy does to capture a pod, and to undo it.
//!
//! Owns the set of enrolled pods. Enrolling a pod means, in order: validate what the CNI sent;
//! open the in-pod listeners and apply the pod-netns routing; mark the pod's addresses enrolled
//! (inbound fails closed from here on), steer them to the pod's :15006 socket, attach
//! `sk_lookup`; record the pod on disk; start the accept loops; and last, turn on outbound
//! capture for its netns. A failure at any step undoes the capture and leaves the other pods
//! untouched. Removal is idempotent.

mod listeners;
pub mod reconcile;
mod records;
mod routing;
pub mod server;
mod transfer;
mod validate;

use std::collections::HashMap;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use marrow_wire::enrollment::{AddPod, Attachment, ErrorKind};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use records::{PodRecord, RecordError, RecordStore};
pub use transfer::{HandedPod, PodListener};

use crate::capture::Capture;
use crate::metrics::Metrics;
use crate::netns::{HostNetns, PodNetns};
use crate::proxy::connections::ConnectionTable;
use crate::proxy::source_port::{LiveInbound, SourcePorts};
use crate::proxy::{self, Direction, PodContext, PodMesh, ProxySettings};
use crate::proxy::{connector::PodConnector, context::MeshContext, local_identity::LocalIdentity};
use listeners::open_listeners;
use marrow_mesh::drain::Drain;
use marrow_mesh::hbone::pool::{Pool, PoolSettings};
use marrow_mesh::objects::PodUid;

/// A refused or failed enrollment operation: the kind the CNI plugin maps to a code, and a
/// message naming the pod and the reason.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct EnrollError {
    /// Machine-readable reason.
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
}

impl EnrollError {
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// An enrolled pod and the tasks serving it.
struct EnrolledPod {
    record: PodRecord,
    tasks: Vec<JoinHandle<()>>,
    /// The pod's netns, kept to hand it over in an upgrade.
    netns: Arc<PodNetns>,
    /// Second descriptors of the sockets the accept loops own, kept to hand them over in an
    /// upgrade. Dropped with the pod, so the sockets close once the loops are aborted too.
    listeners: Vec<PodListener>,
}

impl Drop for EnrolledPod {
    fn drop(&mut self) {
        // Aborting the accept loops closes the listeners, which also removes them from the
        // SOCKHASH. Connections already relaying finish on their own.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The proxy-wide parts every enrolled pod's data path shares, built once by the composition
/// root and handed to the [`Registry`].
pub struct ProxyParts {
    /// The proxy's metrics.
    pub metrics: Arc<Metrics>,
    /// Connection settings every pod uses.
    pub settings: ProxySettings,
    /// The mesh context; `None` in plain mode (everything passes through).
    pub mesh: Option<Arc<MeshContext>>,
    /// The live connection table every pod's data path registers in.
    pub connections: Arc<ConnectionTable>,
    /// The proxy's connection tasks (see [`marrow_mesh::drain`]).
    pub drain: Drain,
}

/// The enrolled pods of this node.
pub struct Registry {
    host: Arc<HostNetns>,
    capture: Mutex<Capture>,
    pods: tokio::sync::Mutex<HashMap<PodUid, EnrolledPod>>,
    records: RecordStore,
    metrics: Arc<Metrics>,
    settings: ProxySettings,
    mesh: Option<Arc<MeshContext>>,
    /// The live connection table every pod's data path registers in.
    connections: Arc<ConnectionTable>,
    /// The proxy's connection tasks (see [`marrow_mesh::drain`]).
    drain: Drain,
    /// Pods an ADD decided not to capture (not in the ambient mesh), so CHECK and DEL answer
    /// for them. Kept in memory only: after a restart their CHECK says "not enrolled".
    skipped: Mutex<HashMap<String, String>>,
}

impl Registry {
    /// A registry over a loaded capture and a record store, serving its pods with `parts`;
    /// `host` is the proxy's own netns.
    pub fn new(
        host: Arc<HostNetns>,
        capture: Capture,
        records: RecordStore,
        parts: ProxyParts,
    ) -> Self {
        let ProxyParts {
            metrics,
            settings,
            mesh,
            connections,
            drain,
        } = parts;
        Self {
            connections,
            drain,
            skipped: Mutex::new(HashMap::new()),
            mesh,
            host,
            capture: Mutex::new(capture),
            pods: tokio::sync::Mutex::new(HashMap::new()),
            records,
            metrics,
            settings,
        }
    }

    /// CNI ADD: enrolls the pod whose netns is `netns_fd`.
    pub async fn add(&self, add: AddPod, netns_fd: OwnedFd) -> Result<String, EnrollError> {
        validate::add_pod(&add).map_err(|reason| {
            EnrollError::new(
                ErrorKind::InvalidPod,
                format!("pod {}/{}: {reason}", add.pod.namespace, add.pod.name),
            )
        })?;
        let who = format!(
            "pod {}/{} ({})",
            add.pod.namespace, add.pod.name, add.pod.uid
        );
        let netns = PodNetns::new(netns_fd, self.host.clone()).map_err(|e| {
            EnrollError::new(
                ErrorKind::Netns,
                format!("{who}: the descriptor is not a usable network namespace: {e}"),
            )
        })?;
        if netns.cookie() == self.host.cookie() {
            return Err(EnrollError::new(
                ErrorKind::Netns,
                format!("{who}: the descriptor is the node proxy's own network namespace"),
            ));
        }
        if let Some(mesh) = &self.mesh
            && let crate::proxy::enrollment::CaptureDecision::Skip(reason) = mesh
                .capture_decision(&add.pod.namespace, &add.pod.name)
                .await
        {
            tracing::info!(uid = %add.pod.uid, namespace = %add.pod.namespace, pod = %add.pod.name, %reason, "pod not captured");
            self.lock_skipped()
                .insert(skip_key(&add.attachment), reason.clone());
            return Ok(format!("{reason}; not captured"));
        }
        let uid = PodUid::new(add.pod.uid.as_str());
        let mut pods = self.pods.lock().await;
        if let Some(existing) = pods.get(&uid) {
            if existing.record.netns_cookie == netns.cookie() {
                return Ok(format!("{who} already enrolled"));
            }
            // The pod's sandbox was re-created without a DEL for the old one.
            tracing::warn!(uid = %add.pod.uid, "pod re-added with a new netns; replacing the old enrollment");
            self.remove_locked(&mut pods, &uid);
        }
        // An address still held by another enrolled pod means that pod is gone without a DEL.
        let stale: Vec<PodUid> = pods
            .iter()
            .filter(|(_, p)| p.record.ips.iter().any(|ip| add.ips.contains(ip)))
            .map(|(uid, _)| uid.clone())
            .collect();
        for stale_uid in stale {
            tracing::warn!(uid = %stale_uid, new_uid = %uid, "address re-used by a new pod; removing the stale enrollment");
            self.remove_locked(&mut pods, &stale_uid);
        }
        let record = PodRecord {
            pod: add.pod,
            attachment: add.attachment,
            netns_path: add.netns_path,
            netns_cookie: netns.cookie(),
            ips: add.ips,
        };
        let enrolled = self.capture_pod(record, netns, None).await?;
        self.records.save(&enrolled.record).map_err(|e| {
            self.undo_capture(&enrolled.record);
            EnrollError::new(ErrorKind::State, format!("{who}: {e}"))
        })?;
        let detail = format!("{who} enrolled: {}", display_ips(&enrolled.record.ips));
        tracing::info!(uid = %enrolled.record.pod.uid, namespace = %enrolled.record.pod.namespace, pod = %enrolled.record.pod.name, ips = %display_ips(&enrolled.record.ips), "pod enrolled");
        pods.insert(uid, enrolled);
        self.metrics.enrolled_pods.set(pods.len() as i64);
        Ok(detail)
    }

    /// CNI DEL: removes the enrollment of `attachment`, if there is one.
    pub async fn del(&self, attachment: &Attachment) -> String {
        if let Some(reason) = self.lock_skipped().remove(&skip_key(attachment)) {
            return format!(
                "container {} was not captured ({reason})",
                attachment.container_id
            );
        }
        let mut pods = self.pods.lock().await;
        let Some(uid) = find(&pods, attachment) else {
            return format!("container {} was not enrolled", attachment.container_id);
        };
        self.remove_locked(&mut pods, &uid);
        format!("pod {uid} removed")
    }

    /// CNI CHECK: is `attachment` enrolled and is every part of its capture in place?
    pub async fn check(&self, attachment: &Attachment) -> Result<String, EnrollError> {
        if let Some(reason) = self.lock_skipped().get(&skip_key(attachment)) {
            return Ok(format!("not captured, as decided at ADD: {reason}"));
        }
        let pods = self.pods.lock().await;
        let Some(uid) = find(&pods, attachment) else {
            return Err(EnrollError::new(
                ErrorKind::NotEnrolled,
                format!(
                    "container {} ({}) is not enrolled with the node proxy",
                    attachment.container_id, attachment.ifname
                ),
            ));
        };
        let pod = &pods[&uid];
        let capture = self.lock_capture();
        let record = &pod.record;
        let mut missing = Vec::new();
        if !capture.is_enrolled(record.netns_cookie) {
            missing.push("outbound capture".to_string());
        }
        if !capture.has_inbound_link(record.netns_cookie) {
            missing.push("sk_lookup link".to_string());
        }
        for ip in &record.ips {
            if !capture.has_inbound_socket(*ip) {
                missing.push(format!("inbound socket for {ip}"));
            }
        }
        if pod.tasks.iter().any(JoinHandle::is_finished) {
            missing.push("listener tasks".to_string());
        }
        if missing.is_empty() {
            Ok(format!(
                "pod {}/{} is captured",
                record.pod.namespace, record.pod.name
            ))
        } else {
            Err(EnrollError::new(
                ErrorKind::Capture,
                format!(
                    "pod {}/{} is enrolled but missing: {}",
                    record.pod.namespace,
                    record.pod.name,
                    missing.join(", ")
                ),
            ))
        }
    }

    /// CNI GC: removes every enrollment whose attachment is not in `valid`.
    pub async fn gc(&self, valid: &[Attachment]) -> String {
        let mut pods = self.pods.lock().await;
        let stale: Vec<PodUid> = pods
            .iter()
            .filter(|(_, p)| !valid.contains(&p.record.attachment))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in &stale {
            self.remove_locked(&mut pods, uid);
        }
        format!("{} stale enrollments removed", stale.len())
    }

    /// Re-adopts the pods recorded by a previous proxy; pods whose netns is gone are forgotten.
    /// Returns how many pods were restored.
    pub async fn restore(&self) -> usize {
        let mut restored = 0;
        for result in self.records.load_all() {
            let record = match result {
                Ok(record) => record,
                Err(error) => {
                    tracing::error!(%error, "skipping an unreadable enrollment record");
                    if let records::RecordError::Malformed { path, .. } = &error {
                        self.records.quarantine(path);
                    }
                    continue;
                }
            };
            let uid = record.uid();
            if self.pods.lock().await.contains_key(&uid) {
                // Handed over by the previous proxy, with its listeners.
                continue;
            }
            let netns = match PodNetns::open(
                PathBuf::from(&record.netns_path).as_path(),
                self.host.clone(),
            ) {
                Ok(netns) if netns.cookie() == record.netns_cookie => netns,
                Ok(_) | Err(_) => {
                    tracing::info!(%uid, netns = %record.netns_path, "pod's netns is gone; forgetting it");
                    self.undo_capture(&record);
                    if let Err(error) = self.records.remove(&uid) {
                        tracing::warn!(%error, "cannot remove the record of a gone pod");
                    }
                    continue;
                }
            };
            match self.capture_pod(record, netns, None).await {
                Ok(enrolled) => {
                    tracing::info!(%uid, pod = %enrolled.record.pod.name, "pod re-adopted");
                    self.pods.lock().await.insert(uid, enrolled);
                    restored += 1;
                }
                Err(error) => {
                    tracing::error!(%uid, %error, "cannot re-adopt pod; it stays fail-closed")
                }
            }
        }
        self.metrics
            .enrolled_pods
            .set(self.pods.lock().await.len() as i64);
        restored
    }

    /// Opens the pod's listeners, applies its routing and turns its capture on.
    async fn capture_pod(
        &self,
        record: PodRecord,
        netns: PodNetns,
        handed: Option<Vec<PodListener>>,
    ) -> Result<EnrolledPod, EnrollError> {
        let who = format!("pod {}/{}", record.pod.namespace, record.pod.name);
        let v4 = record.ips.iter().any(IpAddr::is_ipv4);
        let v6 = record.ips.iter().any(IpAddr::is_ipv6);
        // A handed-over pod is still served by the previous proxy: a failure here must not
        // take its capture away.
        let adopted = handed.is_some();
        let listeners = match handed {
            Some(listeners) => listeners,
            None => netns
                .run(|| open_listeners(v4, v6))
                .and_then(|r| r)
                .map_err(|e| {
                    EnrollError::new(
                        ErrorKind::PodNetwork,
                        format!("{who}: opening in-pod listeners: {e}"),
                    )
                })?
                .into_vec(),
        };
        routing::apply(&netns, v4, v6)
            .await
            .map_err(|e| EnrollError::new(ErrorKind::PodNetwork, format!("{who}: {e}")))?;

        let netns = Arc::new(netns);
        let result = self.turn_on(&record, &netns, &listeners);
        if let Err(e) = result {
            self.undo_capture_unless(adopted, &record);
            return Err(EnrollError::new(ErrorKind::Capture, format!("{who}: {e}")));
        }
        let pod_mesh = self.mesh.as_ref().map(|mesh| {
            let connector = Arc::new(PodConnector {
                netns: netns.clone(),
                mesh: mesh.clone(),
            });
            let pool = Pool::new(
                connector,
                PoolSettings {
                    reuse: self.settings.hbone_reuse,
                    ..PoolSettings::default()
                },
            );
            tokio::spawn(pool.clone().run_reaper());
            PodMesh {
                context: mesh.clone(),
                pool,
                identity: LocalIdentity::default(),
                server_config: std::sync::Mutex::new(None),
            }
        });
        let ctx = Arc::new(PodContext {
            pod: record.pod.clone(),
            ips: record.ips.clone(),
            mesh: pod_mesh,
            netns: netns.clone(),
            metrics: self.metrics.clone(),
            settings: self.settings,
            source_ports: SourcePorts::new(
                self.settings.inbound_source_ports.0..=self.settings.inbound_source_ports.1,
                // Spread pods over the range so they do not walk it in step.
                (record.netns_cookie as u32).wrapping_mul(2_654_435_761),
            ),
            live_inbound: LiveInbound::default(),
            drain: self.drain.clone(),
            connections: self.connections.clone(),
            labels: Default::default(),
        });
        let mut tasks = Vec::new();
        for listener in &listeners {
            let owned = listener
                .socket
                .try_clone()
                .and_then(|socket| {
                    socket.set_nonblocking(true)?;
                    Ok(socket)
                })
                .and_then(TcpListener::from_std);
            match owned {
                Ok(owned) => tasks.push(tokio::spawn(proxy::serve(
                    ctx.clone(),
                    owned,
                    listener.direction,
                ))),
                Err(e) => {
                    for t in &tasks {
                        t.abort();
                    }
                    self.undo_capture_unless(adopted, &record);
                    return Err(EnrollError::new(
                        ErrorKind::PodNetwork,
                        format!("{who}: registering listener: {e}"),
                    ));
                }
            }
        }
        // Outbound capture goes on last, when the :15001 accept loop is already running.
        if let Err(e) = self.lock_capture().enroll_netns(record.netns_cookie) {
            for t in &tasks {
                t.abort();
            }
            self.undo_capture_unless(adopted, &record);
            return Err(EnrollError::new(ErrorKind::Capture, format!("{who}: {e}")));
        }
        Ok(EnrolledPod {
            record,
            tasks,
            netns,
            listeners,
        })
    }

    fn turn_on(
        &self,
        record: &PodRecord,
        netns: &PodNetns,
        listeners: &[PodListener],
    ) -> Result<(), crate::capture::CaptureError> {
        let mut capture = self.lock_capture();
        capture.add_pod_addrs(&record.ips)?;
        for ip in &record.ips {
            let listener = listeners
                .iter()
                .find(|l| l.direction == Direction::InboundPlaintext && l.ipv6 == ip.is_ipv6());
            if let Some(listener) = listener {
                capture.set_inbound_socket(*ip, &listener.socket)?;
            }
        }
        capture.attach_inbound(netns)
    }

    fn remove_locked(&self, pods: &mut HashMap<PodUid, EnrolledPod>, uid: &PodUid) {
        if let Some(pod) = pods.remove(uid) {
            self.undo_capture(&pod.record);
            if let Err(error) = self.records.remove(uid) {
                tracing::warn!(%uid, %error, "cannot remove enrollment record");
            }
            tracing::info!(%uid, pod = %pod.record.pod.name, namespace = %pod.record.pod.namespace, "pod removed");
        }
        self.metrics.enrolled_pods.set(pods.len() as i64);
    }

    /// [`Registry::undo_capture`], unless the pod is being adopted from a previous proxy.
    fn undo_capture_unless(&self, adopted: bool, record: &PodRecord) {
        if !adopted {
            self.undo_capture(record);
        }
    }

    fn undo_capture(&self, record: &PodRecord) {
        if let Err(error) = self
            .lock_capture()
            .remove_pod(record.netns_cookie, &record.ips)
        {
            tracing::error!(uid = %record.pod.uid, %error, "cannot fully remove a pod's capture");
        }
    }

    fn lock_skipped(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.skipped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_capture(&self) -> std::sync::MutexGuard<'_, Capture> {
        // A panic while holding the lock cannot leave the maps half-updated in a way a later
        // caller could not handle (every update is idempotent), so poisoning is ignored.
        self.capture
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the pod with `uid` is enrolled here.
    pub async fn is_enrolled(&self, uid: &PodUid) -> bool {
        self.pods.lock().await.contains_key(uid)
    }

    /// Stops serving every pod's listeners (shutdown or after a hand-over) without touching
    /// the capture or the records: pods stay enrolled, for this proxy's successor. Without a
    /// successor their new connections are refused (fail closed) until one starts.
    /// Connections already accepted go on (see [`marrow_mesh::drain`]).
    pub async fn stop_accepting(&self) -> usize {
        let mut pods = self.pods.lock().await;
        let stopped = pods.len();
        pods.clear();
        stopped
    }

    /// How many pods are enrolled.
    pub async fn len(&self) -> usize {
        self.pods.lock().await.len()
    }

    /// Is no pod enrolled?
    pub async fn is_empty(&self) -> bool {
        self.pods.lock().await.is_empty()
    }

    /// The records of the enrolled pods (for the admin API), in no particular order.
    pub async fn enrolled(&self) -> Vec<PodRecord> {
        let pods = self.pods.lock().await;
        pods.values().map(|p| p.record.clone()).collect()
    }
}

/// The key of a skipped pod's attachment: container and interface.
fn skip_key(attachment: &Attachment) -> String {
    format!("{}/{}", attachment.container_id, attachment.ifname)
}

fn find(pods: &HashMap<PodUid, EnrolledPod>, attachment: &Attachment) -> Option<PodUid> {
    pods.iter()
        .find(|(_, p)| &p.record.attachment == attachment)
        .map(|(uid, _)| uid.clone())
}

fn display_ips(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}
