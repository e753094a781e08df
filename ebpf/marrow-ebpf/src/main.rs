//! marrow's kernel side: the eBPF object that captures an enrolled pod's TCP traffic into the
//! node proxy's in-pod sockets (`docs/architecture.md`, "Capture (eBPF)").
//!
//! The object owns seven programs and the five maps they share; names, key and value layouts are
//! the contract in `marrow-common`, and every map is pinned by name so a restarted proxy finds
//! the same state:
//!
//! - inbound ([`inbound`]): `sk_lookup` assigns a new connection to a pod address to the proxy's
//!   `:15006` listener, and refuses it when the pod is enrolled but that listener is gone.
//! - outbound ([`outbound`]): `cgroup/connect4`/`connect6` send an enrolled pod's connections to
//!   the proxy's `:15001` and record where they were going; `cgroup/getpeername4`/`6` keep the
//!   redirect invisible to the app.
//! - [`sockops`]: re-keys that record by the app's address once the connection has one, and
//!   drops the records when the sockets they serve close.
//! - [`orig_dst`]: `cgroup/getsockopt` answers the proxy's `SO_ORIGINAL_DST` from the record, as
//!   iptables' conntrack would.
//!
//! Invariants: the programs never hold a lock and never loop; a capture decision that cannot be
//! carried out fails closed (the connection is refused), never open, because an uncaptured
//! connection would bypass the mesh's policy. Raw context access lives only in [`ctx`].
#![no_std]
#![no_main]

mod addr;
mod ctx;
mod inbound;
mod maps;
mod orig_dst;
mod outbound;
mod sockops;

/// Required by `no_std`. The verifier rejects any program with a reachable call to it (an
/// endless loop has no bounded exit), so a panicking path fails at load time, not at run time.
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The object's license, read by the kernel at load time: GPL-compatible, so GPL-only helpers
/// stay available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
