//! Source ports for the proxy's source-preserving connections to the app.
//!
//! An inbound connection `client:p → app:8080` sits on the proxy's :15006 socket in the pod's
//! netns; the proxy then connects `client:p' → app:8080` from the same netns. The two 4-tuples
//! mirror each other, so the kernel's uniqueness check at `connect()` cannot see a clash: if
//! `p' == p` for a live captured connection, the proxy's SYN lands on that connection (challenge
//! ACK, then a reset that kills it). With the kernel choosing `p'`, clashes are frequent under
//! churn, because the client's netns and the pod's netns draw ports from the same global hash
//! sequence for the same (client, app, port).
//!
//! So the proxy chooses `p'` itself: from a range disjoint from Linux's default ephemeral range
//! (where clients' `p` come from), skipping the ports of live captured connections it tracks.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Default range: below Linux's default ephemeral range (32768–60999), above the privileged
/// ports. Ports an app listens on are skipped at `bind()`.
pub const DEFAULT_RANGE: RangeInclusive<u16> = 1024..=32767;

/// A rotating cursor over a port range, shared by a pod's inbound connections.
#[derive(Debug)]
pub struct SourcePorts {
    first: u32,
    len: u32,
    cursor: AtomicU32,
}

impl SourcePorts {
    /// A cursor over `range`, starting at `seed` (spread so pods do not move in lockstep).
    pub fn new(range: RangeInclusive<u16>, seed: u32) -> Self {
        let first = u32::from(*range.start());
        let len = u32::from(*range.end()).saturating_sub(first) + 1;
        Self {
            first,
            len,
            cursor: AtomicU32::new(seed % len),
        }
    }

    /// The next port to try.
    pub fn next(&self) -> u16 {
        let step = self.cursor.fetch_add(1, Ordering::Relaxed) % self.len;
        // `first + step` is at most the range's end, a u16.
        u16::try_from(self.first + step).unwrap_or(u16::MAX)
    }
}

/// The live captured inbound connections of one pod: (client address, destination).
#[derive(Debug, Default)]
pub struct LiveInbound(Mutex<HashSet<(SocketAddr, SocketAddr)>>);

impl LiveInbound {
    /// Records a captured connection until the returned guard drops.
    pub fn track(&self, client: SocketAddr, dst: SocketAddr) -> Tracked<'_> {
        self.lock().insert((client, dst));
        Tracked {
            set: self,
            key: (client, dst),
        }
    }

    /// Would `client_ip:port → dst` clash with a live captured connection?
    pub fn clashes(&self, client_ip: IpAddr, port: u16, dst: SocketAddr) -> bool {
        self.lock()
            .contains(&(SocketAddr::new(client_ip, port), dst))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(SocketAddr, SocketAddr)>> {
        // The set stays consistent across a panic (single insert/remove calls).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Removes a tracked connection when the relay ends.
#[derive(Debug)]
pub struct Tracked<'a> {
    set: &'a LiveInbound,
    key: (SocketAddr, SocketAddr),
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_wraps_within_the_range() {
        let ports = SourcePorts::new(1024..=1026, 2);
        let got: Vec<u16> = (0..5).map(|_| ports.next()).collect();
        assert_eq!(got, vec![1026, 1024, 1025, 1026, 1024]);
    }

    #[test]
    fn live_connections_clash_until_they_end() {
        let live = LiveInbound::default();
        let client: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let guard = live.track(client, dst);
        assert!(live.clashes(client.ip(), 40000, dst));
        assert!(!live.clashes(client.ip(), 40001, dst), "another port");
        assert!(
            !live.clashes(client.ip(), 40000, "10.0.0.2:9090".parse().unwrap()),
            "another dst"
        );
        drop(guard);
        assert!(!live.clashes(client.ip(), 40000, dst));
    }
}
