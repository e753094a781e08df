//! The process's log output: stderr, as text or JSON lines, through a filter (`RUST_LOG`,
//! default `info`) that the admin API can replace at run time.

use std::sync::Arc;

use crate::admin::{LogControl, ReloadableFilter};

/// Installs the global subscriber; returns its filter, for the admin API's `/logging`. Call
/// once, first thing.
pub fn init(json: bool) -> Arc<dyn LogControl> {
    Arc::new(ReloadableFilter::new(marrow_mesh::program::init_logging(
        json,
    )))
}
