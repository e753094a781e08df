//! Outbound capture: sends an enrolled pod's TCP connections to the proxy's `:15001` listener
//! in the pod's netns (`cgroup/connect4`, `cgroup/connect6`), and hides that from the app
//! (`cgroup/getpeername4`, `cgroup/getpeername6`).
//!
//! Each redirected connection leaves a record of its original destination in
//! `ORIG_DST_BY_COOKIE`, keyed by the app socket's cookie; `sockops` takes it from there.
//! Not captured: other protocols, sockets outside enrolled pods, the proxy's own sockets
//! (marked `0x539`/`0x53a`), and destinations on the pod's own host (loopback, unspecified).
//!
//! Invariant: a connection that should be captured is either redirected with its record
//! written, or refused. If the record cannot be written, the proxy could not learn where the
//! connection was going, and letting it out directly would bypass the mesh, so `connect()`
//! fails with `EPERM` instead (fail closed; the app sees an ordinary connect error).

use aya_ebpf::{macros::cgroup_sock_addr, programs::SockAddrContext};
use marrow_common::{
    FAMILY_V4, FAMILY_V6, IpKey, OUTBOUND_PORT, OrigDst, PROXY_INBOUND_MARK, PROXY_OUTBOUND_MARK,
};

use crate::{
    addr::{self, LOOPBACK_V4, LOOPBACK_V4_MAPPED, LOOPBACK_V6},
    ctx::{SockAddr, netns_cookie, socket_cookie},
    maps,
};

/// `sock_addr` verdict: the call proceeds (with the address as the program left it).
const PROCEED: i32 = 1;
/// `sock_addr` verdict: the call fails with `EPERM`.
const REFUSE: i32 = 0;

/// Redirects an enrolled pod's IPv4 TCP connect to `127.0.0.1:15001`.
#[cgroup_sock_addr(connect4)]
pub fn outbound_connect4(ctx: SockAddrContext) -> i32 {
    match try_connect4(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// `Ok` carries the verdict for a connection we capture, `Err` the verdict for one we leave
/// alone or cannot capture.
fn try_connect4(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = SockAddr::new(ctx);
    let dst = sa.ip4();
    if addr::is_local_v4(dst) {
        return Err(PROCEED);
    }
    let netns_cookie = captured_netns(ctx, &sa).ok_or(PROCEED)?;
    let orig = OrigDst {
        netns_cookie,
        addr: IpKey::from_v4_be(dst),
        port: sa.port(),
        family: FAMILY_V4,
        _pad: 0,
    };
    record(ctx, &orig)?;
    sa.set_ip4(LOOPBACK_V4);
    sa.set_port(OUTBOUND_PORT);
    Ok(PROCEED)
}

/// Redirects an enrolled pod's IPv6 TCP connect to `[::1]:15001`, or, for an IPv4-mapped
/// destination, to `[::ffff:127.0.0.1]:15001`.
#[cgroup_sock_addr(connect6)]
pub fn outbound_connect6(ctx: SockAddrContext) -> i32 {
    match try_connect6(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// As [`try_connect4`].
fn try_connect6(ctx: &SockAddrContext) -> Result<i32, i32> {
    let sa = SockAddr::new(ctx);
    let dst = sa.ip6();
    if addr::is_local_v6(&dst) {
        return Err(PROCEED);
    }
    let netns_cookie = captured_netns(ctx, &sa).ok_or(PROCEED)?;
    // A dual-stack socket that names an IPv4-mapped peer makes an IPv4 connection (and
    // `connect4` never sees it): send it to the IPv4 listener and record an IPv4 destination,
    // so the proxy handles it exactly like one from an IPv4 socket.
    let (family, proxy) = match addr::v4_of_mapped(&dst) {
        Some(_) => (FAMILY_V4, LOOPBACK_V4_MAPPED),
        None => (FAMILY_V6, LOOPBACK_V6),
    };
    let orig = OrigDst {
        netns_cookie,
        addr: dst,
        port: sa.port(),
        family,
        _pad: 0,
    };
    record(ctx, &orig)?;
    sa.set_ip6(proxy);
    sa.set_port(OUTBOUND_PORT);
    Ok(PROCEED)
}

/// The netns cookie of a connect that must be captured: TCP, from an enrolled pod, and not
/// one of the proxy's own sockets (which carry a proxy mark and must leave as they are).
fn captured_netns(ctx: &SockAddrContext, sa: &SockAddr<'_>) -> Option<u64> {
    if !sa.is_tcp()
        || matches!(
            sa.sock_mark(),
            Some(PROXY_OUTBOUND_MARK | PROXY_INBOUND_MARK)
        )
    {
        return None;
    }
    let netns = netns_cookie(ctx);
    maps::is_enrolled(netns).then_some(netns)
}

/// Records where the app socket's connection was going; `Err(REFUSE)` if that fails (see the
/// module's invariant).
fn record(ctx: &SockAddrContext, orig: &OrigDst) -> Result<(), i32> {
    maps::ORIG_DST_BY_COOKIE
        .insert(socket_cookie(ctx), orig, 0)
        .map_err(|_| REFUSE)
}

/// Shows a redirected IPv4 socket's original destination as its peer, not `127.0.0.1:15001`.
#[cgroup_sock_addr(getpeername4)]
pub fn outbound_getpeername4(ctx: SockAddrContext) -> i32 {
    // getpeername programs may only rewrite the address: the verifier demands `1`.
    let _rewritten = try_getpeername4(&ctx);
    PROCEED
}

/// `Some` when the peer was rewritten.
fn try_getpeername4(ctx: &SockAddrContext) -> Option<()> {
    let sa = SockAddr::new(ctx);
    if sa.ip4() != LOOPBACK_V4 || sa.port() != OUTBOUND_PORT {
        return None;
    }
    let orig = maps::orig_dst_by_cookie(socket_cookie(ctx))?;
    sa.set_ip4(addr::v4_of_mapped(&orig.addr)?);
    sa.set_port(orig.port);
    Some(())
}

/// Shows a redirected IPv6 socket's original destination as its peer, not `[::1]:15001` (or
/// `[::ffff:127.0.0.1]:15001`).
#[cgroup_sock_addr(getpeername6)]
pub fn outbound_getpeername6(ctx: SockAddrContext) -> i32 {
    // As in `outbound_getpeername4`.
    let _rewritten = try_getpeername6(&ctx);
    PROCEED
}

/// `Some` when the peer was rewritten.
fn try_getpeername6(ctx: &SockAddrContext) -> Option<()> {
    let sa = SockAddr::new(ctx);
    let peer = sa.ip6();
    if (peer != LOOPBACK_V6 && peer != LOOPBACK_V4_MAPPED) || sa.port() != OUTBOUND_PORT {
        return None;
    }
    let orig = maps::orig_dst_by_cookie(socket_cookie(ctx))?;
    // The recorded address is the one the app named: IPv6, or IPv4-mapped from this socket.
    sa.set_ip6(orig.addr);
    sa.set_port(orig.port);
    Some(())
}
