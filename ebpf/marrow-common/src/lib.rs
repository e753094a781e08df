//! Types and constants shared by marrow's eBPF programs and the node proxy.
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding and no `bool`, enum or
//! `Option` fields: the same bytes are read by the verifier-checked kernel programs and by user
//! space through the pinned maps, so the layout is the contract. Sizes are asserted below.
#![no_std]

/// `SO_MARK` on every socket the proxy opens towards an upstream (outbound connections and
/// HBONE); `connect4`/`connect6` never redirect a socket carrying it.
pub const PROXY_OUTBOUND_MARK: u32 = 0x539;
/// `SO_MARK` on the proxy's inbound connections to the app, which keep the client's source IP
/// (`IP_TRANSPARENT`). The pod netns routes this mark via `lo` (rule pref 10 → table 100), and
/// `tcp_fwmark_accept=1` lets the app's accepted socket inherit it so replies come back to us.
pub const PROXY_INBOUND_MARK: u32 = 0x53a;
/// Routing table that holds `local 0/0 dev lo` in an enrolled pod's netns.
pub const INBOUND_ROUTE_TABLE: u32 = 100;
/// Priority of the fwmark rule in an enrolled pod's netns (ahead of the `local` rule).
pub const INBOUND_RULE_PRIORITY: u32 = 10;
/// Priority the `local` table rule is moved to in an enrolled pod's netns.
pub const LOCAL_RULE_PRIORITY: u32 = 100;

/// Outbound capture port, listening on the pod's loopback address.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext capture port; `sk_lookup` assigns captured connections to it.
pub const INBOUND_PORT: u16 = 15006;
/// HBONE (mTLS + HTTP/2 CONNECT) port; never steered by `sk_lookup`.
pub const HBONE_PORT: u16 = 15008;

/// `AF_INET`, as stored in [`OrigDst::family`].
pub const FAMILY_V4: u16 = 2;
/// `AF_INET6`, as stored in [`OrigDst::family`].
pub const FAMILY_V6: u16 = 10;

/// Map names, as declared in the eBPF object and pinned in bpffs.
pub mod maps {
    /// `HashMap<u64 netns cookie, u32>`: network namespaces of enrolled pods.
    pub const ENROLLED: &str = "ENROLLED";
    /// `HashMap<IpKey, u32>`: addresses of enrolled pods; inbound to them fails closed when
    /// no proxy socket is present.
    pub const POD_ADDRS: &str = "POD_ADDRS";
    /// `SockHash<IpKey>`: the proxy's inbound (:15006) listener for each pod address.
    pub const INBOUND_SOCKS: &str = "INBOUND_SOCKS";
    /// `LruHashMap<u64 socket cookie, OrigDst>`: connect4/6 → sockops and getpeername.
    pub const ORIG_DST_BY_COOKIE: &str = "ORIG_DST_BY_COOKIE";
    /// `LruHashMap<OrigKey, OrigDst>`: sockops → the proxy's `SO_ORIGINAL_DST` lookup.
    pub const ORIG_DST: &str = "ORIG_DST";
}

/// Program names, as exported by the eBPF object.
pub mod programs {
    /// `sk_lookup`, attached per enrolled pod netns.
    pub const INBOUND_LOOKUP: &str = "inbound_lookup";
    /// `cgroup/connect4`.
    pub const CONNECT4: &str = "outbound_connect4";
    /// `cgroup/connect6`.
    pub const CONNECT6: &str = "outbound_connect6";
    /// `sockops`: records the original destination by client address once connected.
    pub const SOCKOPS: &str = "outbound_sockops";
    /// `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` / `IP6T_SO_ORIGINAL_DST`.
    pub const GETSOCKOPT: &str = "orig_dst_getsockopt";
    /// `cgroup/getpeername4`.
    pub const GETPEERNAME4: &str = "outbound_getpeername4";
    /// `cgroup/getpeername6`.
    pub const GETPEERNAME6: &str = "outbound_getpeername6";
}

/// An IP address in the layout the kernel uses for IPv6 (`__be32[4]`); IPv4 addresses are
/// stored IPv4-mapped (`::ffff:a.b.c.d`) so one map serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpKey {
    /// Four big-endian words, exactly as in `bpf_sock_addr.user_ip6`.
    pub addr: [u32; 4],
}

impl IpKey {
    /// The IPv4-mapped key of an address given as in `bpf_sock_addr.user_ip4` (network order).
    pub const fn from_v4_be(ip4_be: u32) -> Self {
        // 0x0000ffff in network byte order is the bytes 00 00 ff ff.
        Self {
            addr: [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), ip4_be],
        }
    }

    /// An IPv6 key from the kernel's `__be32[4]`.
    pub const fn from_v6_be(ip6_be: [u32; 4]) -> Self {
        Self { addr: ip6_be }
    }

    /// The key from the 16 octets of an IPv6 (or IPv4-mapped) address.
    pub const fn from_octets(o: [u8; 16]) -> Self {
        Self {
            addr: [
                u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
                u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
                u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
                u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
            ],
        }
    }

    /// The 16 octets of the address (IPv4 comes back IPv4-mapped).
    pub const fn octets(&self) -> [u8; 16] {
        let [a, b, c, d] = self.addr;
        let (a, b, c, d) = (
            a.to_ne_bytes(),
            b.to_ne_bytes(),
            c.to_ne_bytes(),
            d.to_ne_bytes(),
        );
        [
            a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1],
            d[2], d[3],
        ]
    }
}

/// The destination a captured outbound connection was headed for before `connect4`/`connect6`
/// rewrote it to the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    /// Netns cookie of the pod that made the connection.
    pub netns_cookie: u64,
    /// Original destination address (IPv4-mapped for IPv4).
    pub addr: IpKey,
    /// Original destination port, host byte order.
    pub port: u16,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u16,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// Key of [`maps::ORIG_DST`]: the client end of a redirected connection, as the proxy sees it
/// as the peer of the socket it accepted on [`OUTBOUND_PORT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigKey {
    /// Netns cookie of the pod (the proxy's listener lives in the same netns).
    pub netns_cookie: u64,
    /// Client address (IPv4-mapped for IPv4).
    pub client_addr: IpKey,
    /// Client port, host byte order.
    pub client_port: u16,
    /// Explicit padding; always zero.
    pub _pad: [u16; 3],
}

const _: () = assert!(core::mem::size_of::<IpKey>() == 16);
const _: () = assert!(core::mem::size_of::<OrigDst>() == 32);
const _: () = assert!(core::mem::size_of::<OrigKey>() == 32);

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `#[repr(C)]` data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::IpKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::OrigKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_keys_are_ipv4_mapped() {
        let ip = [10u8, 1, 2, 3];
        let key = IpKey::from_v4_be(u32::from_ne_bytes(ip));
        let mut mapped = [0u8; 16];
        mapped[10] = 0xff;
        mapped[11] = 0xff;
        mapped[12..].copy_from_slice(&ip);
        assert_eq!(key.octets(), mapped);
        assert_eq!(IpKey::from_octets(mapped), key);
    }

    #[test]
    fn v6_octets_round_trip() {
        let o = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42,
        ];
        assert_eq!(IpKey::from_octets(o).octets(), o);
    }
}
