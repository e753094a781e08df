//! Addresses the capture programs compare against or rewrite to, and pure predicates on them.
//!
//! Everything here is in the kernel's layout: IPv4 as a network-order `u32` (`user_ip4`), IPv6
//! and IPv4-mapped addresses as an [`IpKey`] of four network-order words.

use marrow_common::IpKey;

/// `127.0.0.1` in network byte order (its octets as they sit in memory): where the proxy's
/// outbound listener is.
pub const LOOPBACK_V4: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// `::1`: where the proxy's IPv6 outbound listener is.
pub const LOOPBACK_V6: IpKey = IpKey::from_octets([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

/// `::ffff:127.0.0.1`: the proxy's IPv4 listener as a dual-stack IPv6 socket reaches it.
pub const LOOPBACK_V4_MAPPED: IpKey = IpKey::from_v4_be(LOOPBACK_V4);

/// The word that marks an IPv4-mapped address (`::ffff:0:0/96`), as the third word of an
/// [`IpKey`]; taken from `IpKey::from_v4_be` so the two can never disagree.
const V4_MAPPED_PREFIX_WORD: u32 = IpKey::from_v4_be(0).addr[2];

/// Whether an IPv4 destination (network order) stays on the pod's own host: `127.0.0.0/8`, or
/// `0.0.0.0`, which Linux connects to as `127.0.0.1`. Such traffic is not mesh traffic.
pub fn is_local_v4(ip4_be: u32) -> bool {
    let ip = u32::from_be(ip4_be);
    ip >> 24 == 127 || ip == 0
}

/// The IPv4 address (network order) inside an IPv4-mapped [`IpKey`], or `None` for a genuine
/// IPv6 address.
pub fn v4_of_mapped(addr: &IpKey) -> Option<u32> {
    let [a, b, c, d] = addr.addr;
    (a == 0 && b == 0 && c == V4_MAPPED_PREFIX_WORD).then_some(d)
}

/// Whether an IPv6 destination stays on the pod's own host: `::1`, `::`, or an IPv4-mapped
/// address for which [`is_local_v4`] holds.
pub fn is_local_v6(addr: &IpKey) -> bool {
    match v4_of_mapped(addr) {
        Some(ip4) => is_local_v4(ip4),
        None => *addr == LOOPBACK_V6 || addr.addr == [0; 4],
    }
}
