//! How many connections the data plane's processes can hold: each process's open-files limit
//! against the descriptors it spends per held connection.

use anyhow::bail;

use super::Plane;
use crate::procfs;

/// Descriptors a data-plane process uses besides the held connections' (listeners, maps,
/// netns, logs).
const FD_SLACK: u64 = 512;
/// Sockets one held connection may cost one data-plane process before any is measured: a
/// same-node proxy carries both ends (the client's outbound and the server's inbound, two
/// sockets each).
const SOCKETS_PER_CONNECTION: u64 = 4;

/// The descriptors each data-plane process has open, by pid.
pub(super) fn open_fds(plane: &Plane) -> anyhow::Result<Vec<(u32, u64)>> {
    plane
        .node1
        .iter()
        .chain(&plane.node2)
        .map(|pid| Ok((*pid, procfs::open_fds(*pid)?)))
        .collect()
}

/// `wanted`, or fewer when a data-plane process's open-files limit would not take them at the
/// descriptors per connection it took for the `held` open now (against `before`, each
/// process's count before they opened); the reduction is printed with the process and its
/// limit.
pub(super) fn fd_room(before: &[(u32, u64)], held: u64, wanted: u64) -> anyhow::Result<u64> {
    let mut room = wanted;
    for (pid, idle) in before {
        let limit = procfs::open_files_limit(*pid)?;
        let now = procfs::open_fds(*pid)?;
        let per_connection = (now.saturating_sub(*idle) as f64 / held.max(1) as f64).max(0.01);
        let free = limit.saturating_sub(now + FD_SLACK);
        let allowed = held + (free as f64 / per_connection) as u64;
        if allowed < room {
            println!(
                "    process {pid} may open {limit} files and holds {per_connection:.2} per \
                 connection: holding {allowed} connections, not {wanted}"
            );
            room = allowed;
        }
    }
    Ok(room)
}

/// `wanted`, or fewer when a data-plane process's open-files limit does not allow
/// [`SOCKETS_PER_CONNECTION`] per held connection (the reduction is printed).
pub(super) fn fd_budget(plane: &Plane, wanted: u64) -> anyhow::Result<u64> {
    let mut budget = wanted;
    for pid in plane.node1.iter().chain(&plane.node2) {
        let limit = procfs::open_files_limit(*pid)?;
        let allowed = limit.saturating_sub(FD_SLACK) / SOCKETS_PER_CONNECTION;
        if allowed == 0 {
            bail!("data-plane process {pid} may open only {limit} files");
        }
        if allowed < budget {
            println!(
                "    process {pid} may open {limit} files: holding {allowed} connections, not {wanted}"
            );
            budget = allowed;
        }
    }
    Ok(budget)
}
