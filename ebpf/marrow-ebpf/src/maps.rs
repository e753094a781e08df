//! The maps the programs share with each other and with the node proxy.
//!
//! Names, key and value layouts are `marrow_common::maps`' contract. Every map is pinned by
//! name, so a proxy that loads the object with the same pin directory re-uses the live state
//! (enrolled pods, listeners, records of open connections) instead of starting empty.
//!
//! The two record maps are LRU maps whose entries `sockops` removes when the sockets they
//! describe close; eviction only bounds what escapes that (a connect refused before `sockops`
//! ran, a pod deleted mid-connection), so a full map never blocks a new connection.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, LruHashMap, SockHash},
};
use marrow_common::{IpKey, OrigDst, OrigKey};

/// Network namespace cookie → `1` for every enrolled pod. Written by the proxy.
#[map]
pub static ENROLLED: HashMap<u64, u32> = HashMap::pinned(1024, 0);

/// Pod address → `1` for every enrolled pod's addresses. Written by the proxy; inbound
/// connections to these fail closed when the pod's listener is missing.
#[map]
pub static POD_ADDRS: HashMap<IpKey, u32> = HashMap::pinned(2048, 0);

/// Pod address → the proxy's inbound (`:15006`) listener inside that pod's netns. Written by
/// the proxy.
#[map]
pub static INBOUND_SOCKS: SockHash<IpKey> = SockHash::pinned(2048, 0);

/// App socket cookie → where its redirected connection was going. Written by
/// `connect4`/`connect6`; read by `sockops` and `getpeername4`/`6`.
#[map]
pub static ORIG_DST_BY_COOKIE: LruHashMap<u64, OrigDst> = LruHashMap::pinned(65536, 0);

/// (netns cookie, app's address and port) → where that connection was going. Written by
/// `sockops`; read by `getsockopt` for the proxy, and by the proxy itself.
#[map]
pub static ORIG_DST: LruHashMap<OrigKey, OrigDst> = LruHashMap::pinned(65536, 0);

/// The `ORIG_DST` key of the connection from `client_addr`:`client_port` (host order) in the
/// network namespace with cookie `netns_cookie`.
pub fn orig_key(netns_cookie: u64, client_addr: IpKey, client_port: u16) -> OrigKey {
    // Spelled out rather than `[0; 3]`: a repeat expression becomes a `memset` call, which
    // bpf-linker links in as a BPF-to-BPF call instead of three stores.
    OrigKey {
        netns_cookie,
        client_addr,
        client_port,
        _pad: [0, 0, 0],
    }
}

/// Whether the network namespace with this cookie belongs to an enrolled pod.
pub fn is_enrolled(netns_cookie: u64) -> bool {
    ENROLLED.get_ptr(netns_cookie).is_some()
}

/// Whether `addr` is an enrolled pod's address.
pub fn is_pod_addr(addr: &IpKey) -> bool {
    POD_ADDRS.get_ptr(addr).is_some()
}

/// The record `connect4`/`connect6` made for the app socket with this cookie.
pub fn orig_dst_by_cookie(socket_cookie: u64) -> Option<OrigDst> {
    // SAFETY: the value is copied out at once. A concurrent writer could tear the copy only
    // by reusing this element for another key (LRU eviction while the map is full), which at
    // worst yields a wrong record for a connection that is being evicted anyway.
    unsafe { ORIG_DST_BY_COOKIE.get(socket_cookie) }.copied()
}

/// The record `sockops` made for the connection from this client address.
pub fn orig_dst(key: &OrigKey) -> Option<OrigDst> {
    // SAFETY: as in `orig_dst_by_cookie`.
    unsafe { ORIG_DST.get(key) }.copied()
}
