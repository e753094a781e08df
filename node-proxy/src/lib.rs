//! marrow's node proxy, one program over the shared core (`marrow_mesh`: identity, TLS, HBONE,
//! policy, state, telemetry): eBPF capture of enrolled pods, their in-pod listeners and the
//! data path between them.
//!
//! [`app`] assembles the program from its [`config`] and runs it (start, serve, drain).
//! [`capture`] loads the kernel programs and maps; [`netns`] and [`socket`] enter pods'
//! network namespaces; [`inpod`] enrolls pods (the CNI's requests) and starts their listeners;
//! [`proxy`] is the data path (outbound, inbound, the relay, one record per connection);
//! [`upgrade`] and [`handoff`] hand the enrolled pods to a new proxy; [`metrics`] and [`admin`]
//! are what operators scrape and ask; [`cni_install`] chains redirect-cni into the node's CNI
//! config. The binary also runs a second program, `node-proxy ca serve`
//! (the mesh CA, crate `marrow-ca`).

pub mod admin;
pub mod app;
pub mod capture;
pub mod cni_install;
pub mod config;
pub mod handoff;
pub mod inpod;
pub mod metrics;
pub mod netns;
pub mod proxy;
pub mod socket;
pub mod upgrade;

/// jemalloc's settings when it is the allocator (feature `jemalloc`), as ztunnel's
/// (`src/main.rs`): a background thread returns freed pages after 5 s (`dirty_decay_ms`,
/// `muzzy_decay_ms`) without waiting for the next allocation; no transparent huge pages, which
/// would keep whole 2 MiB pages resident for a few live bytes.
pub const JEMALLOC_CONF: &[u8] =
    b"background_thread:true,dirty_decay_ms:5000,muzzy_decay_ms:5000,thp:never\0";
