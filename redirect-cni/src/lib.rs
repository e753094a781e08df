//! redirect-cni: a chained CNI plugin that enrolls pods with the marrow node proxy.
//!
//! The library holds the plugin logic ([`cni`]); the enrollment protocol it speaks to the node
//! proxy lives in `marrow-wire` (`marrow_wire::enrollment`), shared with the proxy. The binary
//! is a thin `main`.

pub mod cni;
