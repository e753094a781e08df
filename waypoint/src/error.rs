//! Why the waypoint could not start; each names the step (and setting) that failed. Errors of
//! the data path live with their modules ([`crate::target::TargetError`],
//! [`crate::upstream::UpstreamError`]) and end as a status and a response flag, never here.

use marrow_mesh::program::StartError;

/// A failed start of the waypoint.
#[derive(Debug, thiserror::Error)]
pub enum WaypointError {
    /// A setting has a value that cannot work.
    #[error("setting {setting} = {value:?}: expected {expected}")]
    Setting {
        /// The flag.
        setting: &'static str,
        /// The value given.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// The async runtime could not be built.
    #[error("building the runtime")]
    Runtime(#[source] std::io::Error),
    /// A part every program shares (a listener, the certificate or state source) cannot
    /// start; the error names its setting.
    #[error(transparent)]
    Start(#[from] StartError),
    /// The tracer cannot be set up from `--tracing-*`.
    #[error("--tracing-collector/--tracing-sampling")]
    Tracing(#[source] marrow_mesh::trace::TraceError),
}
