//! Node-side reconcile: pods of this node that belong in the mesh but were never enrolled —
//! they started before marrow was installed on the node, or before their namespace was
//! labelled `istio.io/dataplane-mode=ambient` — are enrolled without a CNI call.
//!
//! The pod's network namespace is found through its processes: kubelet puts every container of
//! a pod in a cgroup whose path names the pod's UID (`pod<uid>` with the cgroupfs driver,
//! `pod<uid with _>` with systemd), so `/proc/<pid>/cgroup` leads to the pod and
//! `/proc/<pid>/ns/net` to its namespace. The namespace is used only if it really holds the
//! pod's address (a process of the pod that entered another namespace must not redirect the
//! wrong one).
//!
//! Runs with the API server source only (`--kube`), where the state lists this node's pods as
//! the kubelet runs them. A state file describes pods a test created on purpose without
//! redirect-cni; those stay uncaptured.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use marrow_wire::enrollment::{AddPod, Attachment, PodIdentity};
use tracing::{debug, info, warn};

use super::Registry;
use crate::netns::{HostNetns, PodNetns};
use crate::proxy::context::MeshContext;
use marrow_mesh::state::Workload;

/// How often the reconcile looks, besides after each state change.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(10);

/// Where enrolled-by-reconcile pods' attachments are named: no CNI call gave them one.
pub const RECONCILED_CONTAINER_PREFIX: &str = "reconciled-";

/// Enrolls the mesh pods of `node` that are not enrolled, until aborted.
pub async fn run(
    registry: Arc<Registry>,
    mesh: Arc<MeshContext>,
    host: Arc<HostNetns>,
    node: String,
    proc_root: PathBuf,
    every: Duration,
) {
    let mut changes = mesh.state.subscribe();
    // Pods looked for and not found: logged once, looked for again on the next pass.
    let mut missing: HashSet<String> = HashSet::new();
    loop {
        pass(&registry, &mesh, &host, &node, &proc_root, &mut missing).await;
        let _ = tokio::time::timeout(every, changes.changed()).await;
    }
}

/// One look at every pod of the node.
async fn pass(
    registry: &Registry,
    mesh: &MeshContext,
    host: &Arc<HostNetns>,
    node: &str,
    proc_root: &Path,
    missing: &mut HashSet<String>,
) {
    let snap = mesh.state.snapshot();
    let wanted: Vec<Arc<Workload>> = snap
        .workloads()
        .filter(|w| w.node_name.as_deref() == Some(node) && !w.ips.is_empty() && snap.in_mesh(w))
        .cloned()
        .collect();
    for workload in wanted {
        if registry.is_enrolled(&workload.uid).await {
            continue;
        }
        let uid = workload.uid.as_str().to_owned();
        let ip = workload.ips[0];
        let root = proc_root.to_path_buf();
        let host = host.clone();
        let found =
            tokio::task::spawn_blocking(move || find_pod_netns(&root, &uid, ip, &host)).await;
        let who = format!("{}/{}", workload.namespace, workload.name);
        let (path, fd) = match found {
            Ok(Some(found)) => found,
            Ok(None) => {
                if missing.insert(who.clone()) {
                    debug!(pod = %who, "not enrolled, and no process of it found on this node yet");
                }
                continue;
            }
            Err(error) => {
                warn!(pod = %who, %error, "looking for a pod's network namespace failed");
                continue;
            }
        };
        missing.remove(&who);
        let add = AddPod {
            pod: PodIdentity {
                uid: workload.uid.as_str().to_owned(),
                namespace: workload.namespace.clone(),
                name: workload.name.clone(),
                service_account: Some(workload.service_account.clone()),
            },
            attachment: Attachment {
                container_id: format!("{RECONCILED_CONTAINER_PREFIX}{}", workload.uid),
                ifname: "eth0".into(),
            },
            netns_path: path.display().to_string(),
            ips: workload.ips.clone(),
        };
        match registry.add(add, fd).await {
            Ok(detail) => {
                info!(pod = %who, netns = %path.display(), %detail, "running pod enrolled by the node-side reconcile")
            }
            Err(error) => warn!(pod = %who, %error, "cannot enroll a running pod"),
        }
    }
}

/// The network namespace of the pod with `uid`: that of a process in the pod's cgroup, if it
/// holds `ip`. Returns the namespace's `/proc` path and a descriptor.
fn find_pod_netns(
    proc_root: &Path,
    uid: &str,
    ip: IpAddr,
    host: &Arc<HostNetns>,
) -> Option<(PathBuf, OwnedFd)> {
    let markers = [format!("pod{uid}"), format!("pod{}", uid.replace('-', "_"))];
    let entries = std::fs::read_dir(proc_root).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else {
            continue;
        };
        if !cgroups
            .lines()
            .any(|line| markers.iter().any(|m| line.contains(m.as_str())))
        {
            continue;
        }
        let path = proc_root.join(pid).join("ns").join("net");
        let Ok(netns) = PodNetns::open(&path, host.clone()) else {
            continue;
        };
        if netns.cookie() == host.cookie() {
            continue;
        }
        if netns.run(|| has_address(ip)).ok() == Some(true) {
            let fd = netns.fd().try_clone_to_owned().ok()?;
            return Some((path, fd));
        }
    }
    None
}

/// Whether an interface of the current thread's network namespace has `ip`.
fn has_address(ip: IpAddr) -> bool {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head to `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&raw mut list) } != 0 {
        return false;
    }
    let mut found = false;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list getifaddrs returned, not yet freed.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: ifa_addr points to a sockaddr of the family it names.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            let address = match family {
                libc::AF_INET => {
                    // SAFETY: an AF_INET address is a sockaddr_in.
                    let sin = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in>() };
                    Some(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()))
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 address is a sockaddr_in6.
                    let sin6 = unsafe { &*entry.ifa_addr.cast::<libc::sockaddr_in6>() };
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            };
            if address == Some(ip) {
                found = true;
                break;
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(list) };
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address_and_not_others() {
        assert!(has_address("127.0.0.1".parse().unwrap()));
        assert!(!has_address("192.0.2.77".parse().unwrap()));
    }

    #[test]
    fn a_pod_is_found_by_its_uid_in_a_cgroup_path() {
        // A fake /proc: pid 42's cgroup names the pod (systemd driver's underscores).
        let root = tempfile::tempdir().unwrap();
        let pid = root.path().join("42");
        std::fs::create_dir_all(pid.join("ns")).unwrap();
        std::fs::write(
            pid.join("cgroup"),
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_abcd.slice/cri-containerd-9.scope\n",
        )
        .unwrap();
        // Its "netns" is this process's own, which is the host's here: refused.
        std::os::unix::fs::symlink("/proc/self/ns/net", pid.join("ns").join("net")).unwrap();
        let host = HostNetns::current().unwrap();
        assert!(
            find_pod_netns(
                root.path(),
                "1234-abcd",
                "127.0.0.1".parse().unwrap(),
                &host
            )
            .is_none()
        );
        assert!(find_pod_netns(root.path(), "9999", "127.0.0.1".parse().unwrap(), &host).is_none());
    }
}
