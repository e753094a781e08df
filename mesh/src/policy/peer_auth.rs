//! PeerAuthentication: which mTLS mode applies to a workload's port, with Istio's precedence
//! (workload selector over namespace over mesh-wide, a port-level override over its policy's
//! mode, UNSET inheriting from the level above, PERMISSIVE when nothing is set).
//!
//! As in Istio, `portLevelMtls` counts only in a policy with a selector, and a selector policy in
//! the root namespace is ignored. Among several policies at one level the oldest wins, as in
//! Istio, then the first by name (and one without a creation time counts as newest).

use std::collections::BTreeMap;
use std::fmt;

use super::PolicySet;
use super::eval::Destination;
use super::model::PolicyRef;

/// A mode as written in a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeSetting {
    /// `UNSET` or absent: inherit from the level above.
    Unset,
    /// `STRICT`: mTLS only.
    Strict,
    /// `PERMISSIVE`: mTLS or plaintext.
    Permissive,
    /// `DISABLE`: treated as PERMISSIVE (the node proxy always accepts HBONE).
    Disable,
}

impl ModeSetting {
    /// Istio's spelling; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "UNSET" | "" => Some(Self::Unset),
            "STRICT" => Some(Self::Strict),
            "PERMISSIVE" => Some(Self::Permissive),
            "DISABLE" => Some(Self::Disable),
            _ => None,
        }
    }

    /// The effective mode, `None` for UNSET.
    fn effective(self) -> Option<MtlsMode> {
        match self {
            Self::Unset => None,
            Self::Strict => Some(MtlsMode::Strict),
            Self::Permissive | Self::Disable => Some(MtlsMode::Permissive),
        }
    }
}

/// The mode in force for one port of one workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// Plaintext is refused.
    Strict,
    /// Plaintext is accepted.
    Permissive,
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Strict => "STRICT",
            Self::Permissive => "PERMISSIVE",
        })
    }
}

/// A `security.istio.io` PeerAuthentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAuthentication {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.selector.matchLabels`; `None` (or empty) covers the namespace.
    pub selector: Option<BTreeMap<String, String>>,
    /// `spec.mtls.mode`.
    pub mode: ModeSetting,
    /// `spec.portLevelMtls`, by port.
    pub port_level: BTreeMap<u16, ModeSetting>,
    /// `metadata.creationTimestamp` (RFC 3339, so it sorts as text); the oldest policy wins
    /// among several at one level, as in Istio.
    pub created: Option<String>,
    /// What could not be read as written, and was read as STRICT (see the parser).
    pub findings: Vec<super::model::Finding>,
}

impl PeerAuthentication {
    /// The policy's `ns/name`.
    pub fn reference(&self) -> PolicyRef {
        PolicyRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }
}

/// Why a plaintext connection was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MtlsError {
    /// The port is STRICT.
    #[error("plaintext refused: {workload} port {port} is STRICT ({})", by.as_ref().map_or_else(|| "no policy".to_owned(), |p| format!("set by PeerAuthentication {p}")))]
    StrictRefusesPlaintext {
        /// The destination workload, `ns/name`.
        workload: String,
        /// The destination port.
        port: u16,
        /// The policy that set STRICT.
        by: Option<PolicyRef>,
    },
}

/// The mode in force for `port` of `dst`, and the policy that set it (`None`: the default).
pub fn resolve_mtls(
    set: &PolicySet,
    dst: &Destination<'_>,
    port: u16,
) -> (MtlsMode, Option<PolicyRef>) {
    let root = set.root_namespace();
    let mut mesh = None;
    let mut namespace = None;
    let mut workload = None;
    for pa in set.peer_authentications() {
        let level = match &pa.selector {
            None if pa.namespace == root => &mut mesh,
            None if pa.namespace == dst.namespace => &mut namespace,
            Some(labels)
                if pa.namespace == dst.namespace
                    && pa.namespace != root
                    && dst.selected_by(labels) =>
            {
                &mut workload
            }
            _ => continue,
        };
        // Policies come sorted by name, so only a strictly older one replaces the first.
        if level.is_none_or(|held: &PeerAuthentication| older(pa, held)) {
            *level = Some(pa);
        }
    }
    if let Some(pa) = workload {
        let port_mode = pa.port_level.get(&port).and_then(|m| m.effective());
        if let Some(mode) = port_mode.or_else(|| pa.mode.effective()) {
            return (mode, Some(pa.reference()));
        }
    }
    for pa in [namespace, mesh].into_iter().flatten() {
        if let Some(mode) = pa.mode.effective() {
            return (mode, Some(pa.reference()));
        }
    }
    (MtlsMode::Permissive, None)
}

/// Whether `a` was created before `b`; a missing creation time counts as newest.
fn older(a: &PeerAuthentication, b: &PeerAuthentication) -> bool {
    match (&a.created, &b.created) {
        (Some(a), Some(b)) => a < b,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// The mode in force for `port` of `dst`.
pub fn mtls_mode(set: &PolicySet, dst: &Destination<'_>, port: u16) -> MtlsMode {
    resolve_mtls(set, dst, port).0
}

/// Whether a plaintext connection may reach `port` of `dst`.
pub fn plaintext_allowed(
    set: &PolicySet,
    dst: &Destination<'_>,
    port: u16,
) -> Result<(), MtlsError> {
    match resolve_mtls(set, dst, port) {
        (MtlsMode::Permissive, _) => Ok(()),
        (MtlsMode::Strict, by) => Err(MtlsError::StrictRefusesPlaintext {
            workload: format!("{}/{}", dst.namespace, dst.name),
            port,
            by,
        }),
    }
}
