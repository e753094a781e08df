//! marrow's integration-test harness: real "nodes" and "pods" built from network namespaces.
//!
//! A [`Node`] is a network namespace (the node's root netns, where the bridge CNI plugin creates
//! the node's bridge and where the node proxy runs), a cgroup2 directory, a bpffs pin directory
//! and a temporary directory. A [`Pod`] is a network namespace wired to its node by a real CNI
//! chain ([`CniChain`]: the Debian `bridge` + `host-local` plugins, optionally followed by
//! `redirect-cni`), with a child cgroup of the node's cgroup. [`Proxy`] runs the `node-proxy`
//! binary inside a node; the `testpod` binary is the application inside pods.
//!
//! For the mesh between nodes: [`link_nodes`]/[`NodeLink`] make the underlay, [`MeshCa`] and
//! [`ClusterState`] the CA and the state file a proxy is given ([`mesh`]), [`Sniffer`] records
//! the underlay's TCP segments ([`sniff`]), [`probe`] pokes HBONE ports from outside the mesh,
//! [`Conversation`] keeps a connection open across an event, [`metrics`] reads the
//! proxy's Prometheus text, and [`two_nodes`] is the HBONE suites' two-node fixture.
//!
//! For the programs that drive these fixtures by hand (`cargo xtask demo`, `marrow-bench`):
//! [`command`] runs and times their steps, [`stop`] turns Ctrl-C into a clean stop, and
//! [`envoy`] finds the Envoy that `cargo xtask setup` installed.
//!
//! Invariants: everything the harness creates is named after the test (`marrow-test-<name>`,
//! `mt-<name>…`), is removed on `Drop` even while a test panics, and leftovers of a crashed
//! earlier run with the same name are removed before being re-created. Tests only send traffic
//! to loopback or to addresses inside namespaces they created.
//!
//! Every test starts with [`require_env!`], which returns early with `SKIPPED: <reason>` when
//! the machine cannot run it (not root, no CNI plugins, no cgroup2).

#![expect(
    clippy::expect_used,
    reason = "test harness: a failed set-up step must fail the test loudly"
)]

pub mod binaries;
pub mod bpffs;
pub mod cgroup;
pub mod cni;
pub mod command;
pub mod conversation;
pub mod envoy;
pub mod host;
pub mod http;
pub mod mesh;
pub mod metrics;
pub mod names;
pub mod netns;
pub mod node;
pub mod peers;
pub mod pod;
pub mod probe;
pub mod process;
pub mod proxy;
pub mod sniff;
pub mod state_file;
pub mod stop;
pub mod testpod;
pub mod two_nodes;
pub mod waypoint;
pub mod workload_cert;

pub use bpffs::BpffsDir;
pub use cgroup::Cgroup;
pub use cni::{CniArgs, CniChain, CniCommand, CniError, CniErrorBody, PluginOutput};
pub use conversation::Conversation;
pub use host::skip_reason;
pub use http::HttpResponse;
pub use mesh::{MeshCa, spiffe_id};
pub use netns::Netns;
pub use node::{Node, NodeLink, NodeOptions, link_nodes};
pub use pod::Pod;
pub use process::PodProcess;
pub use proxy::{Proxy, ProxyOptions};
pub use sniff::{Capture, Sniffer};
pub use state_file::ClusterState;
pub use testpod::{
    BulkOutcome, ConnectErrorKind, ConnectFailure, ConnectOutcome, Connected, Greeting,
};

/// Returns early from the calling test, printing `SKIPPED: <reason>`, when this machine cannot
/// run namespace tests (see [`skip_reason`]).
///
/// `require_env!()` returns `()`; `require_env!(value)` returns `value` (e.g. `Ok(())`).
#[macro_export]
macro_rules! require_env {
    () => {
        if let Some(reason) = $crate::skip_reason() {
            println!("SKIPPED: {reason}");
            return;
        }
    };
    ($ret:expr) => {
        if let Some(reason) = $crate::skip_reason() {
            println!("SKIPPED: {reason}");
            return $ret;
        }
    };
}
