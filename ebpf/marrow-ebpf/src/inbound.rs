//! Inbound capture: steers new TCP connections to an enrolled pod's addresses into the node
//! proxy's `:15006` listener inside that pod's netns (`sk_lookup`, attached per pod netns).
//!
//! Invariant: a connection to an address in `POD_ADDRS` reaches the proxy or is refused; it
//! never reaches the app directly. Exempt, and looked up as usual: HBONE (`:15008`, the
//! proxy's own mTLS listener), `:15006` itself, and whatever arrives on `lo` — the proxy's own
//! connections to the app carry mark `0x53a`, which the pod's routing sends through `lo`
//! (`node-proxy/src/inpod/routing.rs`). A test on the destination address alone would not do: a
//! connection to the pod's own IP arrives with the pod interface as `ingress_ifindex`.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use marrow_common::{HBONE_PORT, INBOUND_PORT};

use crate::{ctx::SkLookup, maps};

/// `ifindex` of `lo` in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// Assigns a new inbound TCP connection to the proxy's listener for its destination address.
#[sk_lookup]
pub fn inbound_lookup(ctx: SkLookupContext) -> u32 {
    match try_inbound_lookup(&ctx) {
        Ok(verdict) | Err(verdict) => verdict,
    }
}

/// `Ok` carries the verdict for a connection we steer or refuse, `Err` the verdict for one
/// that is not ours to touch.
fn try_inbound_lookup(ctx: &SkLookupContext) -> Result<u32, u32> {
    let lookup = SkLookup::new(ctx);
    if !lookup.is_tcp()
        || lookup.ingress_ifindex() == LOOPBACK_IFINDEX
        || matches!(lookup.local_port(), HBONE_PORT | INBOUND_PORT)
    {
        return Err(SK_PASS);
    }
    let key = lookup.local_addr().ok_or(SK_PASS)?;
    // SK_PASS with a socket assigned: the kernel delivers to that socket, whatever the port.
    if maps::INBOUND_SOCKS.redirect_sk_lookup(ctx, key, 0).is_ok() {
        return Ok(SK_PASS);
    }
    // No listener (proxy down or restarting), or it cannot take the connection. For an
    // enrolled pod, refusing (RST) is the only answer that keeps its policy.
    if maps::is_pod_addr(&key) {
        Ok(SK_DROP)
    } else {
        Err(SK_PASS)
    }
}
