//! The plugin's process environment: `CNI_COMMAND` and the other `CNI_*` variables, and the
//! `K=V;K=V` pairs of `CNI_ARGS`.
//!
//! The environment is read through the [`Env`] trait so tests pass a map instead of mutating
//! the process environment. Parsing checks, per command, every variable the CNI spec makes
//! mandatory, and reports all missing ones at once.

use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;

use marrow_wire::enrollment::{Attachment, PodIdentity};

use super::CniError;

/// Where the plugin reads its environment variables from.
pub trait Env {
    /// The value of `name`, or `None` when it is unset.
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        // Lossy on purpose: a non-UTF-8 value then fails validation naming the variable, rather
        // than looking unset.
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl<S: BuildHasher> Env for HashMap<String, String, S> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// `CNI_COMMAND`.
pub const CNI_COMMAND: &str = "CNI_COMMAND";
/// `CNI_CONTAINERID`.
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
/// `CNI_NETNS`.
pub const CNI_NETNS: &str = "CNI_NETNS";
/// `CNI_IFNAME`.
pub const CNI_IFNAME: &str = "CNI_IFNAME";
/// `CNI_ARGS`.
pub const CNI_ARGS: &str = "CNI_ARGS";

/// `CNI_ARGS` key of the pod's namespace.
pub const K8S_POD_NAMESPACE: &str = "K8S_POD_NAMESPACE";
/// `CNI_ARGS` key of the pod's name.
pub const K8S_POD_NAME: &str = "K8S_POD_NAME";
/// `CNI_ARGS` key of the pod's uid.
pub const K8S_POD_UID: &str = "K8S_POD_UID";
/// `CNI_ARGS` key of the pod's service account (not every runtime passes it).
pub const K8S_POD_SERVICE_ACCOUNT: &str = "K8S_POD_SERVICE_ACCOUNT";

/// A CNI operation, as named by `CNI_COMMAND`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Enroll the new attachment.
    Add,
    /// Remove the attachment's enrollment.
    Del,
    /// Verify the attachment is enrolled.
    Check,
    /// Report the supported spec versions.
    Version,
    /// Report whether the plugin can serve ADD.
    Status,
    /// Forget attachments the runtime no longer knows.
    Gc,
}

impl Command {
    /// Parses a `CNI_COMMAND` value; the spec's names are upper case and matched exactly.
    pub fn parse(value: &str) -> Result<Self, CniError> {
        match value {
            "ADD" => Ok(Self::Add),
            "DEL" => Ok(Self::Del),
            "CHECK" => Ok(Self::Check),
            "VERSION" => Ok(Self::Version),
            "STATUS" => Ok(Self::Status),
            "GC" => Ok(Self::Gc),
            other => Err(CniError::UnknownCommand(other.to_owned())),
        }
    }

    /// The spec's name of the command.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the runtime asked for, with the variables that command needs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invocation {
    /// `VERSION`: needs nothing but stdin.
    Version,
    /// Any command that talks to the node proxy.
    Op(Op),
}

/// A command that talks to the node proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `ADD`.
    Add {
        /// `CNI_CONTAINERID` and `CNI_IFNAME`.
        attachment: Attachment,
        /// `CNI_NETNS`.
        netns: String,
        /// `CNI_ARGS`.
        args: CniArgs,
    },
    /// `DEL`; `CNI_NETNS` may be absent (the namespace may already be gone).
    Del {
        /// `CNI_CONTAINERID` and `CNI_IFNAME`.
        attachment: Attachment,
    },
    /// `CHECK`.
    Check {
        /// `CNI_CONTAINERID` and `CNI_IFNAME`.
        attachment: Attachment,
    },
    /// `STATUS`.
    Status,
    /// `GC`.
    Gc,
}

impl Op {
    /// The command this operation answers.
    pub fn command(&self) -> Command {
        match self {
            Self::Add { .. } => Command::Add,
            Self::Del { .. } => Command::Del,
            Self::Check { .. } => Command::Check,
            Self::Status => Command::Status,
            Self::Gc => Command::Gc,
        }
    }

    /// The attachment the operation concerns, if any.
    pub fn attachment(&self) -> Option<&Attachment> {
        match self {
            Self::Add { attachment, .. }
            | Self::Del { attachment }
            | Self::Check { attachment } => Some(attachment),
            Self::Status | Self::Gc => None,
        }
    }
}

impl Invocation {
    /// Reads and validates the variables `CNI_COMMAND` needs.
    ///
    /// ADD and CHECK need `CNI_CONTAINERID`, `CNI_NETNS` and `CNI_IFNAME`; DEL needs the
    /// container ID and interface name only. `CNI_PATH` is never required: this plugin
    /// delegates to no other plugin. `CNI_ARGS` is parsed for ADD only, so a DEL is never
    /// refused over pod metadata.
    pub fn from_env(env: &dyn Env) -> Result<Self, CniError> {
        let command = match non_empty(env, CNI_COMMAND) {
            Some(value) => Command::parse(&value)?,
            None => return Err(CniError::MissingCommand),
        };
        let required: &[&'static str] = match command {
            Command::Add | Command::Check => &[CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME],
            Command::Del => &[CNI_CONTAINERID, CNI_IFNAME],
            Command::Version | Command::Status | Command::Gc => &[],
        };
        let missing: Vec<&'static str> = required
            .iter()
            .copied()
            .filter(|name| non_empty(env, name).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::MissingEnv {
                command,
                vars: missing,
            });
        }
        let var = |name| non_empty(env, name).unwrap_or_default();
        let attachment = || -> Result<Attachment, CniError> {
            let container_id = var(CNI_CONTAINERID);
            validate_container_id(&container_id)?;
            let ifname = var(CNI_IFNAME);
            validate_ifname(&ifname)?;
            Ok(Attachment {
                container_id,
                ifname,
            })
        };
        let op = match command {
            Command::Version => return Ok(Self::Version),
            Command::Add => Op::Add {
                attachment: attachment()?,
                netns: var(CNI_NETNS),
                args: CniArgs::parse(&var(CNI_ARGS))?,
            },
            Command::Del => Op::Del {
                attachment: attachment()?,
            },
            Command::Check => Op::Check {
                attachment: attachment()?,
            },
            Command::Status => Op::Status,
            Command::Gc => Op::Gc,
        };
        Ok(Self::Op(op))
    }
}

/// The value of `name`, treating an empty value as unset (as libcni does).
fn non_empty(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).filter(|v| !v.is_empty())
}

/// A container ID: an alphanumeric, then alphanumerics, `_`, `.` or `-` (libcni's rule).
pub fn validate_container_id(value: &str) -> Result<(), CniError> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Ok(());
    }
    Err(CniError::InvalidEnv {
        var: CNI_CONTAINERID,
        value: value.to_owned(),
        expected: "an alphanumeric followed by alphanumerics, '_', '.' or '-'",
    })
}

/// An interface name the kernel accepts: 1 to 15 bytes, not `.` or `..`, no `/`, `:` or space.
pub fn validate_ifname(value: &str) -> Result<(), CniError> {
    const IFNAMSIZ: usize = 16;
    let ok = !value.is_empty()
        && value.len() < IFNAMSIZ
        && value != "."
        && value != ".."
        && !value
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        return Ok(());
    }
    Err(CniError::InvalidEnv {
        var: CNI_IFNAME,
        value: value.to_owned(),
        expected: "1 to 15 bytes without '/', ':' or whitespace, not '.' or '..'",
    })
}

/// The `KEY=VALUE` pairs of `CNI_ARGS`, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniArgs(Vec<(String, String)>);

impl CniArgs {
    /// Parses `K=V;K=V`. Empty segments (a trailing `;`) are skipped; a segment without `=` or
    /// with an empty key is refused, naming the segment. Unknown keys (`IgnoreUnknown`,
    /// `K8S_POD_INFRA_CONTAINER_ID`, …) are kept and ignored by the lookups.
    pub fn parse(raw: &str) -> Result<Self, CniError> {
        let mut pairs = Vec::new();
        for segment in raw.split(';').filter(|s| !s.is_empty()) {
            match segment.split_once('=') {
                Some((key, value)) if !key.is_empty() => {
                    pairs.push((key.to_owned(), value.to_owned()));
                }
                _ => {
                    return Err(CniError::MalformedArg {
                        pair: segment.to_owned(),
                    });
                }
            }
        }
        Ok(Self(pairs))
    }

    /// The last non-empty value given for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// The pod's identity; namespace, name and uid are required, the service account is not.
    pub fn pod_identity(&self) -> Result<PodIdentity, CniError> {
        let required = [K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID];
        let missing: Vec<&'static str> = required
            .into_iter()
            .filter(|key| self.get(key).is_none())
            .collect();
        if !missing.is_empty() {
            return Err(CniError::MissingArgs { keys: missing });
        }
        let value = |key| self.get(key).unwrap_or_default().to_owned();
        Ok(PodIdentity {
            uid: value(K8S_POD_UID),
            namespace: value(K8S_POD_NAMESPACE),
            name: value(K8S_POD_NAME),
            service_account: self.get(K8S_POD_SERVICE_ACCOUNT).map(str::to_owned),
        })
    }
}
