//! Typed access to the contexts the kernel hands marrow's programs and to the sockets they
//! point to.
//!
//! This module owns every raw read and write of `bpf_sk_lookup`, `bpf_sock_addr`,
//! `bpf_sockopt`, `bpf_sock_ops` and `bpf_sock`, and every byte-order conversion of their
//! fields, as `include/uapi/linux/bpf.h` documents them: callers see ports in host order and
//! addresses as [`IpKey`]s (IPv4 mapped), never raw kernel fields.
//!
//! Invariant: each field access is one volatile load or store of exactly the field's width.
//! The verifier rewrites context accesses field by field: it rejects an access that spans two
//! fields, and `sk_lookup`, `sock_ops` and `bpf_sock` accept only full 4-byte reads of their
//! `u32` fields. Plain Rust accesses let LLVM merge neighbouring fields into one 8-byte access
//! (the spike saw `optlen` and `retval` fused into one store), so none are used here.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::{SkLookupContext, SockAddrContext, SockOpsContext, SockoptContext},
};
use marrow_common::{FAMILY_V4, FAMILY_V6, IpKey};

/// `IPPROTO_TCP`, as in the contexts' `protocol` fields.
const IPPROTO_TCP: u32 = 6;

/// Reads one field with a single volatile load of its width.
macro_rules! load {
    ($base:expr, $($field:tt)+) => {
        // SAFETY: `$base` is the context the kernel passed to the running program, or the
        // `bpf_sock` it points to; both stay valid for the whole run. The verifier checks at
        // load time that this program type may read the field.
        unsafe { read_volatile(&raw const (*$base).$($field)+) }
    };
}

/// Reads a `__u32[4]` address field (network order) with four 4-byte volatile loads.
macro_rules! load_ip6 {
    ($base:expr, $field:ident) => {
        // SAFETY: as in `load!`; the four words are the elements of the array field.
        unsafe {
            let w = (&raw const (*$base).$field).cast::<u32>();
            IpKey::from_v6_be([
                read_volatile(w),
                read_volatile(w.add(1)),
                read_volatile(w.add(2)),
                read_volatile(w.add(3)),
            ])
        }
    };
}

/// Writes one context field with a single volatile store of its width.
macro_rules! store {
    ($base:expr, $field:ident, $value:expr) => {{
        let value = $value;
        // SAFETY: `$base` is the context the kernel passed to the running program, valid for
        // the whole run; the verifier checks at load time that this program type may write it.
        unsafe { write_volatile(&raw mut (*$base).$field, value) }
    }};
}

/// The address family of a socket or lookup, narrowed to the width of `FAMILY_V4`/`FAMILY_V6`
/// (the kernel's `AF_*` values all fit).
fn family(raw: u32) -> u16 {
    raw as u16
}

/// Picks the form of an address that `family` uses.
///
/// Callers read both forms, whatever the family, and choose afterwards. Had each arm of a
/// `match` read only its own field, LLVM would sink the two loads into one whose offset depends
/// on the family, and the verifier rejects variable-offset context access. The unused form
/// reads as zero (`sk_lookup`) or as stale bytes of the socket, harmlessly.
fn pick(family: u16, ip4_be: u32, ip6: IpKey) -> Option<IpKey> {
    match family {
        FAMILY_V4 => Some(IpKey::from_v4_be(ip4_be)),
        FAMILY_V6 => Some(ip6),
        _ => None,
    }
}

/// The cookie of the socket the program runs for (`bpf_get_socket_cookie`), unique per socket
/// for the kernel's uptime.
pub fn socket_cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: the helper only reads the context the kernel passed in; the verifier admits it
    // only in program types whose context carries a socket.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The cookie of the network namespace the program runs in (`bpf_get_netns_cookie`), as the
/// proxy reads it with `SO_NETNS_COOKIE`.
pub fn netns_cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: as for `socket_cookie`.
    unsafe { bpf_get_netns_cookie(ctx.as_ptr()) }
}

/// The socket lookup an `sk_lookup` program may steer (`struct bpf_sk_lookup`).
pub struct SkLookup<'a>(&'a SkLookupContext);

impl<'a> SkLookup<'a> {
    /// Wraps the program's context.
    pub fn new(ctx: &'a SkLookupContext) -> Self {
        Self(ctx)
    }

    /// Whether a TCP connection is being looked up.
    pub fn is_tcp(&self) -> bool {
        load!(self.0.lookup, protocol) == IPPROTO_TCP
    }

    /// The interface the packet arrived on; `1` is `lo`.
    pub fn ingress_ifindex(&self) -> u32 {
        load!(self.0.lookup, ingress_ifindex)
    }

    /// The destination port. The kernel keeps `local_port` in host order in a `u32`.
    pub fn local_port(&self) -> u16 {
        load!(self.0.lookup, local_port) as u16
    }

    /// The destination address, or `None` for a family other than IPv4/IPv6.
    pub fn local_addr(&self) -> Option<IpKey> {
        let family = family(load!(self.0.lookup, family));
        pick(
            family,
            load!(self.0.lookup, local_ip4),
            load_ip6!(self.0.lookup, local_ip6),
        )
    }
}

/// The address of a `connect()` or `getpeername()` call (`struct bpf_sock_addr`).
pub struct SockAddr<'a>(&'a SockAddrContext);

impl<'a> SockAddr<'a> {
    /// Wraps the program's context.
    pub fn new(ctx: &'a SockAddrContext) -> Self {
        Self(ctx)
    }

    /// Whether the socket is a TCP socket.
    pub fn is_tcp(&self) -> bool {
        load!(self.0.sock_addr, protocol) == IPPROTO_TCP
    }

    /// `SO_MARK` of the socket, or `None` if the kernel gave no socket.
    pub fn sock_mark(&self) -> Option<u32> {
        Sock::new(load!(self.0.sock_addr, __bindgen_anon_1.sk)).map(|sk| sk.mark())
    }

    /// The IPv4 address (`user_ip4`, network order).
    pub fn ip4(&self) -> u32 {
        load!(self.0.sock_addr, user_ip4)
    }

    /// Replaces the IPv4 address (network order).
    pub fn set_ip4(&self, ip4_be: u32) {
        store!(self.0.sock_addr, user_ip4, ip4_be);
    }

    /// The IPv6 address (`user_ip6`).
    pub fn ip6(&self) -> IpKey {
        load_ip6!(self.0.sock_addr, user_ip6)
    }

    /// Replaces the IPv6 address, one 4-byte word at a time.
    pub fn set_ip6(&self, addr: IpKey) {
        // SAFETY: as in `store!`; the four words are the elements of `user_ip6`.
        unsafe {
            let w = (&raw mut (*self.0.sock_addr).user_ip6).cast::<u32>();
            write_volatile(w, addr.addr[0]);
            write_volatile(w.add(1), addr.addr[1]);
            write_volatile(w.add(2), addr.addr[2]);
            write_volatile(w.add(3), addr.addr[3]);
        }
    }

    /// The port. `user_port` holds the network-order port in its low 16 bits.
    pub fn port(&self) -> u16 {
        u16::from_be(load!(self.0.sock_addr, user_port) as u16)
    }

    /// Replaces the port (given in host order).
    pub fn set_port(&self, port: u16) {
        store!(self.0.sock_addr, user_port, u32::from(port.to_be()));
    }
}

/// A socket as programs see it through a context's `sk` pointer (`struct bpf_sock`).
pub struct Sock(*const bpf_sock);

impl Sock {
    /// Wraps a context's `sk` pointer, or `None` if it is null.
    fn new(sk: *mut bpf_sock) -> Option<Self> {
        (!sk.is_null()).then_some(Self(sk))
    }

    /// `SO_MARK`.
    pub fn mark(&self) -> u32 {
        load!(self.0, mark)
    }

    /// The socket's own port. `src_port` is a host-order `u32`.
    pub fn local_port(&self) -> u16 {
        load!(self.0, src_port) as u16
    }

    /// The peer's port. `dst_port` is a `__be16`.
    pub fn remote_port(&self) -> u16 {
        u16::from_be(load!(self.0, dst_port))
    }

    /// The socket's address family (`FAMILY_V4`, `FAMILY_V6`, or another `AF_*`).
    pub fn family(&self) -> u16 {
        family(load!(self.0, family))
    }

    /// The peer's address. An IPv6 socket talking IPv4 reports it IPv4-mapped, as the kernel
    /// stores it.
    pub fn remote_addr(&self) -> Option<IpKey> {
        pick(
            self.family(),
            load!(self.0, dst_ip4),
            load_ip6!(self.0, dst_ip6),
        )
    }
}

/// A `getsockopt()` call a `cgroup/getsockopt` program may answer (`struct bpf_sockopt`).
pub struct Sockopt<'a>(&'a SockoptContext);

impl<'a> Sockopt<'a> {
    /// Wraps the program's context.
    pub fn new(ctx: &'a SockoptContext) -> Self {
        Self(ctx)
    }

    /// The option level (`SOL_*`).
    pub fn level(&self) -> i32 {
        load!(self.0.sockopt, level)
    }

    /// The option name.
    pub fn optname(&self) -> i32 {
        load!(self.0.sockopt, optname)
    }

    /// The socket the call is made on.
    pub fn sock(&self) -> Option<Sock> {
        Sock::new(load!(self.0.sockopt, __bindgen_anon_1.sk))
    }

    /// Makes the call succeed with `value` as the option's bytes, if the caller's buffer holds
    /// all of it; otherwise (`None`) the call's result is left as it was.
    pub fn reply<T: Copy>(&self, value: &T) -> Option<()> {
        let len = size_of::<T>();
        let start = load!(self.0.sockopt, __bindgen_anon_2.optval).cast::<u8>();
        let end = load!(self.0.sockopt, __bindgen_anon_3.optval_end).cast::<u8>();
        // The verifier only lets us write what this very comparison proves in bounds.
        if start.wrapping_add(len) > end {
            return None;
        }
        // SAFETY: [start, start + len) lies inside the kernel's copy of the caller's buffer
        // (checked just above); the buffer has no alignment guarantee, hence unaligned.
        unsafe { start.cast::<T>().write_unaligned(*value) };
        // Two separate stores: LLVM would otherwise fuse these neighbours into one 8-byte
        // store, which the verifier rejects ("invalid bpf_context access").
        store!(self.0.sockopt, optlen, len as i32);
        store!(self.0.sockopt, retval, 0);
        Some(())
    }
}

/// A TCP event a `sockops` program is called for (`struct bpf_sock_ops`).
pub struct SockOps<'a>(&'a SockOpsContext);

impl<'a> SockOps<'a> {
    /// Wraps the program's context.
    pub fn new(ctx: &'a SockOpsContext) -> Self {
        Self(ctx)
    }

    /// The event (`BPF_SOCK_OPS_*_CB`).
    pub fn op(&self) -> u32 {
        load!(self.0.ops, op)
    }

    /// For `BPF_SOCK_OPS_STATE_CB`: the state the socket moves to (`args[1]`).
    pub fn new_state(&self) -> u32 {
        load!(self.0.ops, __bindgen_anon_1.args[1])
    }

    /// The socket's address family.
    fn family(&self) -> u16 {
        family(load!(self.0.ops, family))
    }

    /// The socket's own address. A dual-stack IPv6 socket talking IPv4 reports it
    /// IPv4-mapped, the same key an IPv4 socket gets.
    pub fn local_addr(&self) -> Option<IpKey> {
        pick(
            self.family(),
            load!(self.0.ops, local_ip4),
            load_ip6!(self.0.ops, local_ip6),
        )
    }

    /// The socket's own port. `local_port` is a host-order `u32`.
    pub fn local_port(&self) -> u16 {
        load!(self.0.ops, local_port) as u16
    }

    /// The peer's address, mapped as in [`SockOps::local_addr`].
    pub fn remote_addr(&self) -> Option<IpKey> {
        pick(
            self.family(),
            load!(self.0.ops, remote_ip4),
            load_ip6!(self.0.ops, remote_ip6),
        )
    }

    /// The peer's port. Unlike `local_port`, `remote_port` is the whole `u32` in network order
    /// (the kernel shifts the `__be16` into the upper half on little-endian hosts).
    pub fn remote_port(&self) -> u16 {
        u32::from_be(load!(self.0.ops, remote_port)) as u16
    }

    /// Adds `flag` (`BPF_SOCK_OPS_*_CB_FLAG`) to the callbacks this socket makes, keeping
    /// those other programs asked for: the helper replaces the whole set.
    pub fn request_callbacks(&self, flag: u32) -> Result<(), i32> {
        let flags = load!(self.0.ops, bpf_sock_ops_cb_flags);
        if flags & flag == flag {
            return Ok(());
        }
        self.0.set_cb_flags((flags | flag) as i32)
    }
}
