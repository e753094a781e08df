//! `sockops`: moves each connect-time record to the key the proxy can look up, and removes
//! records once nothing can ask for them.
//!
//! `connect4`/`connect6` can key a record only by socket cookie, because the app's port is
//! not chosen yet. When the kernel has bound it (`TCP_CONNECT_CB`, before the SYN leaves, so
//! before the proxy can accept), this program copies the record into `ORIG_DST` under
//! `OrigKey { netns, app address, app port }`: exactly the peer of the socket the proxy
//! accepts on `:15001`. `ACTIVE_ESTABLISHED_CB` writes it again, in case LRU pressure evicted
//! it in between.
//!
//! Lifetimes (via `STATE_CB`, requested on exactly these two kinds of sockets):
//! - the cookie record serves `getpeername()` on the app's socket, so it goes when the app's
//!   socket reaches `TCP_CLOSE`;
//! - the address record serves the proxy's `SO_ORIGINAL_DST`, so it goes when the proxy's
//!   accepted socket reaches `TCP_CLOSE` — not the app's: an app that writes and closes at once
//!   reaches `TCP_CLOSE` as soon as its FIN is acknowledged, possibly before the proxy has even
//!   accepted, and iptables' conntrack would still answer then.
//!
//! This needs the program attached where it sees the proxy's sockets too: the cgroup2 root.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE,
    },
    macros::sock_ops,
    programs::SockOpsContext,
};
use marrow_common::OUTBOUND_PORT;

use crate::{
    ctx::{SockOps, netns_cookie, socket_cookie},
    maps,
};

/// What a `sockops` program returns when it has no reply to give.
const DONE: u32 = 1;

/// Keeps `ORIG_DST` in step with the connections the capture redirected.
#[sock_ops]
pub fn outbound_sockops(ctx: SockOpsContext) -> u32 {
    // Only reply-bearing events read the return value, and none of ours is one.
    let _handled = try_outbound_sockops(&ctx);
    DONE
}

/// `Some` when the event concerned a captured connection.
fn try_outbound_sockops(ctx: &SockOpsContext) -> Option<()> {
    let ops = SockOps::new(ctx);
    match ops.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB | BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_connect(ctx, &ops),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => on_accept(ctx, &ops),
        BPF_SOCK_OPS_STATE_CB if ops.new_state() == BPF_TCP_CLOSE => on_close(ctx, &ops),
        _ => None,
    }
}

/// An app socket is connecting: if it was redirected, record its destination by its address.
fn on_connect(ctx: &SockOpsContext, ops: &SockOps<'_>) -> Option<()> {
    let orig = maps::orig_dst_by_cookie(socket_cookie(ctx))?;
    let key = maps::orig_key(orig.netns_cookie, ops.local_addr()?, ops.local_port());
    // Should this fail, the proxy gets no answer to SO_ORIGINAL_DST and refuses the
    // connection: still closed, so there is nothing better to do here.
    let _ = maps::ORIG_DST.insert(key, orig, 0);
    // Without the callback the records would only go by eviction: harmless, hence ignored.
    let _ = ops.request_callbacks(BPF_SOCK_OPS_STATE_CB_FLAG);
    Some(())
}

/// A socket was accepted: if it is the proxy's outbound listener in an enrolled pod, watch it
/// close. Every other socket on the node keeps its callbacks off.
fn on_accept(ctx: &SockOpsContext, ops: &SockOps<'_>) -> Option<()> {
    if ops.local_port() != OUTBOUND_PORT || !maps::is_enrolled(netns_cookie(ctx)) {
        return None;
    }
    let _ = ops.request_callbacks(BPF_SOCK_OPS_STATE_CB_FLAG);
    Some(())
}

/// A watched socket is closing: drop the record it kept alive.
fn on_close(ctx: &SockOpsContext, ops: &SockOps<'_>) -> Option<()> {
    if ops.local_port() == OUTBOUND_PORT {
        // The proxy's end: nobody will ask for this connection's destination any more.
        let key = maps::orig_key(netns_cookie(ctx), ops.remote_addr()?, ops.remote_port());
        let _ = maps::ORIG_DST.remove(key);
    } else {
        // The app's end: getpeername() fails on a closed socket, so the record has no use.
        let _ = maps::ORIG_DST_BY_COOKIE.remove(socket_cookie(ctx));
    }
    Some(())
}
