//! The enrolled pods passed between proxies in an upgrade: the old proxy hands each pod's
//! record, netns and very listening sockets over ([`Registry::hand_over`], with the workload
//! certificates it holds), and the new one adopts them ([`Registry::adopt`]) before the old one
//! stops accepting, so no connection waiting in a listen queue is lost.

use std::os::fd::OwnedFd;

use super::*;

/// One of a pod's in-pod listeners: which port and family, and the socket.
#[derive(Debug)]
pub struct PodListener {
    /// What it accepts (15001, 15006 or 15008).
    pub direction: Direction,
    /// `[::]`/`[::1]` rather than IPv4.
    pub ipv6: bool,
    /// The listening socket.
    pub socket: std::net::TcpListener,
}

/// An enrolled pod as the proxy being replaced hands it to its successor: the record, the
/// pod's netns and the very listening sockets (so no connection waiting in their queues is
/// lost and the `sk_lookup` map keeps pointing at live sockets).
#[derive(Debug)]
pub struct HandedPod {
    /// The enrollment record.
    pub record: PodRecord,
    /// The pod's network namespace.
    pub netns: OwnedFd,
    /// Its in-pod listeners.
    pub listeners: Vec<PodListener>,
}

impl Registry {
    /// Upgrade, old side: the enrolled pods with second descriptors of their netns and
    /// listeners, for the successor. Nothing changes here: the accept loops go on until
    /// [`Registry::stop_accepting`], so the sockets are served without a gap.
    ///
    /// # Errors
    /// When a descriptor cannot be duplicated (the process is out of descriptors).
    pub async fn hand_over(&self) -> std::io::Result<Vec<HandedPod>> {
        let pods = self.pods.lock().await;
        pods.values()
            .map(|pod| {
                let listeners = pod
                    .listeners
                    .iter()
                    .map(|l| {
                        Ok(PodListener {
                            direction: l.direction,
                            ipv6: l.ipv6,
                            socket: l.socket.try_clone()?,
                        })
                    })
                    .collect::<std::io::Result<Vec<_>>>()?;
                Ok(HandedPod {
                    record: pod.record.clone(),
                    netns: pod.netns.fd().try_clone_to_owned()?,
                    listeners,
                })
            })
            .collect()
    }

    /// Upgrade, old side: the valid workload certificates held now, for the successor.
    pub fn certificates(&self) -> Vec<marrow_mesh::identity::HandedCertificate> {
        self.mesh
            .as_ref()
            .map(|mesh| {
                mesh.certs
                    .current()
                    .iter()
                    .map(|cert| marrow_mesh::identity::HandedCertificate::of(cert))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Upgrade, new side: keeps the certificates the previous proxy held, so this one needs
    /// no CA until their half-life; returns how many were taken. One that fails the checks is
    /// logged and skipped (its identity is fetched as usual).
    pub fn adopt_certificates(&self, handed: &[marrow_mesh::identity::HandedCertificate]) -> usize {
        let Some(mesh) = &self.mesh else {
            return 0;
        };
        let mut taken = 0;
        for cert in handed {
            match mesh.certs.adopt(cert) {
                Ok(id) => {
                    tracing::debug!(id = %id, "handed-over certificate kept");
                    taken += 1;
                }
                Err(error) => tracing::warn!(%error, "handed-over certificate not used"),
            }
        }
        taken
    }

    /// Upgrade, new side: serves a pod handed over by the previous proxy on the very sockets
    /// it was served on. The capture is re-applied (idempotent: same sockets, same netns).
    ///
    /// # Errors
    /// When the netns is not the recorded one or the pod cannot be served; the capture is then
    /// left as it was (the previous proxy still serves it until it stops accepting, and
    /// [`Registry::restore`] retries the pod with new listeners).
    pub async fn adopt(&self, handed: HandedPod) -> Result<(), EnrollError> {
        let HandedPod {
            record,
            netns,
            listeners,
        } = handed;
        let who = format!("pod {}/{}", record.pod.namespace, record.pod.name);
        let netns = PodNetns::new(netns, self.host.clone()).map_err(|e| {
            EnrollError::new(ErrorKind::Netns, format!("{who}: handed-over netns: {e}"))
        })?;
        if netns.cookie() != record.netns_cookie {
            return Err(EnrollError::new(
                ErrorKind::Netns,
                format!("{who}: the handed-over netns is not the recorded one"),
            ));
        }
        let uid = record.uid();
        let enrolled = self.capture_pod(record, netns, Some(listeners)).await?;
        let mut pods = self.pods.lock().await;
        pods.insert(uid, enrolled);
        self.metrics.enrolled_pods.set(pods.len() as i64);
        Ok(())
    }
}
