//! redirect-cni: a chained CNI plugin that enrolls pods with the marrow node proxy.
//!
//! The library half holds the enrollment protocol ([`protocol`]), which the node proxy's
//! enrollment server shares, and the plugin logic ([`cni`]); the binary is a thin `main`.

pub mod cni;
pub mod protocol;
