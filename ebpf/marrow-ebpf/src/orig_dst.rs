//! `cgroup/getsockopt`: answers the proxy's `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (and
//! `SOL_IPV6, IP6T_SO_ORIGINAL_DST`) on a connection it accepted on `:15001`, from the record
//! `sockops` made, so the proxy recovers the original destination exactly as it would under
//! iptables `REDIRECT`.
//!
//! Every other call passes through untouched, as does one whose buffer is too small for the
//! address or whose connection has no record: the kernel's own result stands (without a
//! conntrack entry, an error), and the proxy refuses such a connection.

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use marrow_common::{FAMILY_V4, FAMILY_V6, OUTBOUND_PORT, OrigDst};

use crate::{
    addr,
    ctx::{Sockopt, netns_cookie},
    maps,
};

/// `SOL_IP`.
const SOL_IP: i32 = 0;
/// `SOL_IPV6`.
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST`, which is also `IP6T_SO_ORIGINAL_DST`.
const SO_ORIGINAL_DST: i32 = 80;

/// `getsockopt` verdict: the call completes with the result as the program left it.
const PROCEED: i32 = 1;

/// `struct sockaddr_in`, the answer to `SO_ORIGINAL_DST`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn {
    /// `AF_INET`, host order.
    family: u16,
    /// Network order.
    port_be: u16,
    /// Network order.
    addr_be: u32,
    /// `sin_zero`.
    zero: [u8; 8],
}

/// `struct sockaddr_in6`, the answer to `IP6T_SO_ORIGINAL_DST`.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn6 {
    /// `AF_INET6`, host order.
    family: u16,
    /// Network order.
    port_be: u16,
    /// Always zero: a redirected connection has no flow label worth reporting.
    flowinfo: u32,
    /// Four network-order words.
    addr: [u32; 4],
    /// Always zero: mesh destinations are not link-local.
    scope_id: u32,
}

const _: () = assert!(size_of::<SockaddrIn>() == 16);
const _: () = assert!(size_of::<SockaddrIn6>() == 28);

/// Answers `SO_ORIGINAL_DST` for connections the capture redirected to the proxy.
#[cgroup_sockopt(getsockopt)]
pub fn orig_dst_getsockopt(ctx: SockoptContext) -> i32 {
    // `0` would fail every call with EPERM; the answer, if any, is already in the context.
    let _answered = try_orig_dst_getsockopt(&ctx);
    PROCEED
}

/// `Some` when the call was answered.
fn try_orig_dst_getsockopt(ctx: &SockoptContext) -> Option<()> {
    let so = Sockopt::new(ctx);
    if so.optname() != SO_ORIGINAL_DST {
        return None;
    }
    let sk = so.sock()?;
    let v6 = match (so.level(), sk.family()) {
        (SOL_IP, FAMILY_V4) => false,
        (SOL_IPV6, FAMILY_V6) => true,
        _ => return None,
    };
    if sk.local_port() != OUTBOUND_PORT {
        return None;
    }
    // The proxy's listener lives in the pod's netns, so this is the cookie connect4/6 saw.
    let key = maps::orig_key(netns_cookie(ctx), sk.remote_addr()?, sk.remote_port());
    let orig = maps::orig_dst(&key)?;
    if v6 {
        so.reply(&sockaddr_in6(&orig))
    } else {
        so.reply(&sockaddr_in(&orig)?)
    }
}

/// `orig` as a `sockaddr_in`, or `None` if it is a genuine IPv6 address (which an IPv4
/// socket cannot have been sent, as connect6 redirects those to `[::1]`).
fn sockaddr_in(orig: &OrigDst) -> Option<SockaddrIn> {
    Some(SockaddrIn {
        family: FAMILY_V4,
        port_be: orig.port.to_be(),
        addr_be: addr::v4_of_mapped(&orig.addr)?,
        zero: [0; 8],
    })
}

/// `orig` as a `sockaddr_in6`; an IPv4 destination comes out IPv4-mapped, as the kernel reports
/// IPv4 peers of IPv6 sockets.
fn sockaddr_in6(orig: &OrigDst) -> SockaddrIn6 {
    SockaddrIn6 {
        family: FAMILY_V6,
        port_be: orig.port.to_be(),
        flowinfo: 0,
        addr: orig.addr.addr,
        scope_id: 0,
    }
}
