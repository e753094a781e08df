//! The process's log output: stderr, as text or JSON lines, through a filter (`RUST_LOG`,
//! default `info`) that the admin API can replace at run time.

use std::sync::Arc;

use crate::admin::{LogControl, ReloadableFilter};

/// Installs the global subscriber; returns its filter, for the admin API's `/logging`. Call
/// once, first thing.
pub fn init(json: bool) -> Arc<dyn LogControl> {
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let format = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let format = if json {
        format.json().boxed()
    } else {
        format.boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
    Arc::new(ReloadableFilter::new(handle))
}
