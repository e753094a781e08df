//! The new proxy's side of an upgrade, as the start sequence uses it: take a running proxy's
//! pods, certificates and enrollment socket ([`crate::upgrade`] speaks the protocol), confirm
//! once serving, and at exit remove only the socket files no successor has replaced.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::AppError;
use crate::config::Config;
use crate::inpod::Registry;
use crate::inpod::server::EnrollmentServer;
use crate::upgrade;

/// Asks a node proxy already running here to hand over its pods and sockets (an upgrade); if
/// there is none, or the hand-off fails, binds the enrollment socket afresh. Returns the
/// enrollment server and, after a take-over, what to [`confirm`] to the previous proxy.
///
/// # Errors
/// When the enrollment socket can be neither taken over nor bound.
pub async fn take_over_or_bind(
    config: &Config,
    registry: &Arc<Registry>,
) -> Result<(EnrollmentServer, Option<(upgrade::TakeOver, usize)>), AppError> {
    let path = config.state_dir.join(upgrade::HANDOFF_SOCKET);
    let asked = tokio::task::spawn_blocking(move || upgrade::take_over(&path))
        .await
        .map_err(AppError::TakeOverTask)?;
    let mut takeover = match asked {
        Ok(Some(takeover)) => takeover,
        Ok(None) => return Ok((EnrollmentServer::bind(&config.cni_socket)?, None)),
        Err(error) => {
            tracing::warn!(%error, "a running node proxy did not hand over; starting afresh beside it");
            return Ok((EnrollmentServer::bind(&config.cni_socket)?, None));
        }
    };
    // Certificates first: the pods' first connections then find them.
    let certificates = registry.adopt_certificates(&takeover.certificates);
    tracing::info!(
        certificates,
        offered = takeover.certificates.len(),
        "workload certificates taken over"
    );
    let mut adopted = 0;
    for pod in std::mem::take(&mut takeover.pods) {
        let who = format!("{}/{}", pod.record.pod.namespace, pod.record.pod.name);
        match registry.adopt(pod).await {
            Ok(()) => adopted += 1,
            // restore() retries it from its record with new listeners.
            Err(error) => tracing::error!(pod = %who, %error, "cannot serve a handed-over pod"),
        }
    }
    let server = match takeover.enrollment.take() {
        Some(fd) => EnrollmentServer::from_listening(fd, &config.cni_socket)?,
        None => EnrollmentServer::bind(&config.cni_socket)?,
    };
    Ok((server, Some((takeover, adopted))))
}

/// Tells the previous proxy that `adopted` pods are served here: from then on it stops
/// accepting (both served the same sockets so far). A failure is logged, not fatal.
pub async fn confirm(takeover: upgrade::TakeOver, adopted: usize) {
    let confirmed = tokio::task::spawn_blocking(move || takeover.confirm(adopted)).await;
    match confirmed {
        Ok(Ok(())) => tracing::info!(adopted, "took over from the previous node proxy"),
        Ok(Err(error)) => {
            tracing::warn!(%error, "the previous node proxy did not hear the confirmation")
        }
        Err(error) => tracing::warn!(%error, "confirming the take-over failed"),
    }
}

/// The socket files this process serves, by inode: at exit it removes them only if no
/// successor has bound its own since (a failed hand-off leaves both running for a while).
#[derive(Debug)]
pub struct OwnSockets(Vec<(PathBuf, Option<u64>)>);

impl OwnSockets {
    /// Notes the files at `paths` as they are now.
    pub fn record<const N: usize>(paths: [&PathBuf; N]) -> Self {
        Self(paths.iter().map(|p| ((*p).clone(), inode(p))).collect())
    }

    /// Removes each file that is still the one noted.
    pub fn remove_unreplaced(&self) {
        for (path, bound) in &self.0 {
            if bound.is_some() && inode(path) == *bound {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// The inode of the file at `path`, if there is one.
fn inode(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|meta| meta.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_files_not_replaced_since_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, replaced) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
        std::fs::write(&kept, "").unwrap();
        std::fs::write(&replaced, "").unwrap();
        let own = OwnSockets::record([&kept, &replaced]);
        // A successor binds its own file at the same path (a new inode).
        let other = dir.path().join("c.sock");
        std::fs::write(&other, "").unwrap();
        std::fs::rename(&other, &replaced).unwrap();
        own.remove_unreplaced();
        assert!(!kept.exists(), "ours is removed");
        assert!(replaced.exists(), "the successor's stays");
    }
}
