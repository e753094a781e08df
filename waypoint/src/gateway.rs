//! The waypoint Gateway a proxy serves, named once for the modules that bind policies,
//! targets and telemetry to it.

/// The waypoint Gateway a proxy serves: `metadata.namespace` and `metadata.name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
}
