//! The plugin's errors and their CNI error codes, and the error JSON printed on stdout.
//!
//! Every [`CniError`] variant has one code (the proxy's refusals one per
//! [`ErrorKind`](marrow_wire::enrollment::ErrorKind)):
//!
//! | code | meaning |
//! | ---: | --- |
//! | 1 | `cniVersion` absent, unsupported, or older than the command (CHECK 0.4.0, STATUS/GC 1.1) |
//! | 4 | `CNI_COMMAND` missing or unknown; a required `CNI_*` variable missing or invalid |
//! | 4 | a malformed `CNI_ARGS` pair; `K8S_POD_NAMESPACE`, `_NAME` or `_UID` missing on ADD |
//! | 4 | `CNI_NETNS` is not a network namespace, or is the plugin's own |
//! | 5 | reading stdin, or opening `CNI_NETNS`, failed |
//! | 6 | stdin is not a JSON object |
//! | 7 | a bad setting: `name`, `proxySocket`, `proxyTimeoutMs`, `cni.dev/valid-attachments` |
//! | 7 | `prevResult` absent on ADD/CHECK, malformed, or without a pod address |
//! | 11 | try again later: the proxy is unreachable, slow, hung up, or not ready (not on DEL) |
//! | 50 | STATUS: the node proxy is unreachable, not ready, or failed the check |
//! | 100 | the proxy refused the request as malformed (plugin and proxy versions differ) |
//! | 101 | the proxy refused the pod's metadata |
//! | 102 | the proxy could not enter or identify the pod's network namespace |
//! | 103 | the proxy could not open the in-pod listeners or set up routing |
//! | 104 | the proxy could not update the eBPF maps or attach the pod's program |
//! | 105 | the proxy could not record the enrollment |
//! | 106 | CHECK: the pod is not enrolled |
//! | 107 | the proxy's answer could not be decoded (plugin and proxy versions differ) |
//! | 108 | the request exceeds the protocol's size limit |

use std::io;

use marrow_wire::enrollment::{ErrorKind, ProtocolError};

use super::{CniVersion, Command};

/// CNI well-known error code: incompatible CNI version.
pub const INCOMPATIBLE_VERSION: u32 = 1;
/// CNI well-known error code: invalid necessary environment variables.
pub const INVALID_ENV: u32 = 4;
/// CNI well-known error code: I/O failure.
pub const IO_FAILURE: u32 = 5;
/// CNI well-known error code: failed to decode content.
pub const DECODE_FAILURE: u32 = 6;
/// CNI well-known error code: invalid network configuration.
pub const INVALID_CONFIG: u32 = 7;
/// CNI well-known error code: try again later.
pub const TRY_AGAIN_LATER: u32 = 11;
/// CNI well-known error code: the plugin is not available (STATUS).
pub const NOT_AVAILABLE: u32 = 50;
/// Plugin code: the proxy's answer could not be decoded.
pub const PROXY_ANSWER: u32 = 107;
/// Plugin code: the request exceeds the protocol's size limit.
pub const REQUEST_TOO_LARGE: u32 = 108;

/// The code for a refusal of the node proxy (see the module's table).
pub fn refusal_code(kind: ErrorKind) -> u32 {
    match kind {
        ErrorKind::Malformed => 100,
        ErrorKind::InvalidPod => 101,
        ErrorKind::Netns => 102,
        ErrorKind::PodNetwork => 103,
        ErrorKind::Capture => 104,
        ErrorKind::State => 105,
        ErrorKind::NotEnrolled => 106,
        // Starting or draining: transient, exactly what the spec's "try again later" means.
        ErrorKind::NotReady => TRY_AGAIN_LATER,
    }
}

/// Everything that makes the plugin fail; each variant maps to one CNI error code.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    /// `CNI_COMMAND` is unset or empty.
    #[error("CNI_COMMAND is not set; expected ADD, DEL, CHECK, VERSION, STATUS or GC")]
    MissingCommand,
    /// `CNI_COMMAND` names no CNI operation.
    #[error("unknown CNI_COMMAND {0:?}; expected ADD, DEL, CHECK, VERSION, STATUS or GC")]
    UnknownCommand(String),
    /// Variables the command requires are unset or empty.
    #[error("{command} requires environment variables that are missing: {}", vars.join(", "))]
    MissingEnv {
        /// The command.
        command: Command,
        /// The missing variables.
        vars: Vec<&'static str>,
    },
    /// A variable has a value the spec does not allow.
    #[error("{var}={value:?} is invalid; expected {expected}")]
    InvalidEnv {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should look like.
        expected: &'static str,
    },
    /// A `CNI_ARGS` segment is not `KEY=VALUE`.
    #[error("CNI_ARGS has a malformed pair {pair:?}; expected KEY=VALUE pairs separated by ';'")]
    MalformedArg {
        /// The segment.
        pair: String,
    },
    /// `CNI_ARGS` lacks pod metadata that ADD needs.
    #[error("CNI_ARGS lacks {}: ADD needs the pod's namespace, name and uid", keys.join(", "))]
    MissingArgs {
        /// The missing keys.
        keys: Vec<&'static str>,
    },
    /// Reading stdin failed.
    #[error("reading the network configuration from stdin failed")]
    Stdin(#[source] io::Error),
    /// stdin is not JSON.
    #[error("the network configuration on stdin is not valid JSON")]
    Decode(#[source] serde_json::Error),
    /// stdin is JSON but not an object.
    #[error("the network configuration on stdin is not a JSON object")]
    NotAnObject,
    /// `cniVersion` is absent or names a version this plugin does not speak.
    #[error("unsupported cniVersion {version}; supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0")]
    UnsupportedVersion {
        /// The version given.
        version: String,
    },
    /// The configuration's version predates the command.
    #[error("cniVersion {version} does not allow {command}; it needs {minimum} or later")]
    VersionTooOld {
        /// The command.
        command: Command,
        /// The configuration's version.
        version: CniVersion,
        /// The first version with the command.
        minimum: CniVersion,
    },
    /// A configuration setting has a bad value.
    #[error("invalid network configuration: {setting} = {value}; expected {expected}")]
    InvalidConfig {
        /// The setting, as a JSON path.
        setting: String,
        /// Its value, as JSON, or `<absent>`.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// ADD or CHECK without `prevResult`.
    #[error(
        "{command} needs prevResult: redirect-cni is a chained plugin and must follow an \
         interface/IPAM plugin in the network's plugin list"
    )]
    NoPrevResult {
        /// The command.
        command: Command,
    },
    /// `prevResult` carries no address of the pod.
    #[error(
        "prevResult has no pod IP address: redirect-cni must follow an interface/IPAM plugin \
         that assigns the pod's addresses"
    )]
    NoPodIps,
    /// `CNI_NETNS` could not be opened.
    #[error("cannot open CNI_NETNS {path}")]
    NetnsOpen {
        /// The path.
        path: String,
        /// Cause.
        source: io::Error,
    },
    /// `CNI_NETNS` is not a network namespace.
    #[error("CNI_NETNS {path} is not a network namespace")]
    NotANetns {
        /// The path.
        path: String,
    },
    /// `CNI_NETNS` is the plugin's own network namespace.
    #[error("CNI_NETNS {path} is the plugin's own network namespace; refusing to capture the host")]
    HostNetns {
        /// The path.
        path: String,
    },
    /// The node proxy could not be reached, or closed without answering.
    #[error("cannot reach the marrow node proxy at {socket}{}", consequence(*command))]
    ProxyUnreachable {
        /// The command.
        command: Command,
        /// The proxy's socket.
        socket: String,
        /// Cause.
        source: ProtocolError,
    },
    /// The node proxy did not answer in time.
    #[error(
        "the marrow node proxy at {socket} did not answer within {timeout_ms} ms{}",
        consequence(*command)
    )]
    ProxyTimeout {
        /// The command.
        command: Command,
        /// The proxy's socket.
        socket: String,
        /// The configured timeout.
        timeout_ms: u128,
    },
    /// STATUS: the node proxy cannot serve ADD.
    #[error("the marrow node proxy at {socket} is not available: {reason}")]
    ProxyUnavailable {
        /// The proxy's socket.
        socket: String,
        /// Why, as the underlying error said it.
        reason: String,
    },
    /// The node proxy answered with a refusal.
    #[error("{}", refusal_message(*command, *kind, message))]
    ProxyRefused {
        /// The command.
        command: Command,
        /// The proxy's reason.
        kind: ErrorKind,
        /// The proxy's message.
        message: String,
    },
    /// The node proxy's answer could not be decoded.
    #[error("the answer of the marrow node proxy at {socket} could not be understood")]
    ProxyAnswer {
        /// The proxy's socket.
        socket: String,
        /// Cause.
        source: ProtocolError,
    },
    /// The request exceeds the protocol's size limit.
    #[error("the request to the marrow node proxy is too large")]
    RequestTooLarge(#[source] ProtocolError),
}

impl CniError {
    /// The CNI error code (see the module's table).
    pub fn code(&self) -> u32 {
        match self {
            Self::UnsupportedVersion { .. } | Self::VersionTooOld { .. } => INCOMPATIBLE_VERSION,
            Self::MissingCommand
            | Self::UnknownCommand(_)
            | Self::MissingEnv { .. }
            | Self::InvalidEnv { .. }
            | Self::MalformedArg { .. }
            | Self::MissingArgs { .. }
            | Self::NotANetns { .. }
            | Self::HostNetns { .. } => INVALID_ENV,
            Self::Stdin(_) | Self::NetnsOpen { .. } => IO_FAILURE,
            Self::Decode(_) | Self::NotAnObject => DECODE_FAILURE,
            Self::InvalidConfig { .. } | Self::NoPrevResult { .. } | Self::NoPodIps => {
                INVALID_CONFIG
            }
            Self::ProxyUnreachable { .. } | Self::ProxyTimeout { .. } => TRY_AGAIN_LATER,
            Self::ProxyUnavailable { .. } => NOT_AVAILABLE,
            Self::ProxyRefused { kind, .. } => refusal_code(*kind),
            Self::ProxyAnswer { .. } => PROXY_ANSWER,
            Self::RequestTooLarge(_) => REQUEST_TOO_LARGE,
        }
    }

    /// The causes of the error, outermost first, joined with `: ` (empty when there are none);
    /// for a refusal, the proxy's error kind.
    pub fn details(&self) -> String {
        if let Self::ProxyRefused { kind, .. } = self {
            return format!("node proxy error kind {kind:?}");
        }
        let mut parts: Vec<String> = Vec::new();
        let mut cause = std::error::Error::source(self);
        while let Some(err) = cause {
            let text = err.to_string();
            // Some causes repeat their own cause in their message; say it once.
            if !parts.iter().any(|p| p.contains(&text)) {
                parts.push(text);
            }
            cause = err.source();
        }
        parts.join(": ")
    }

    /// The CNI error result: `{"cniVersion", "code", "msg", "details"}`.
    pub fn to_result(&self, version: CniVersion) -> String {
        let mut result = serde_json::json!({
            "cniVersion": version.as_str(),
            "code": self.code(),
            "msg": self.to_string(),
        });
        let details = self.details();
        if !details.is_empty() {
            result["details"] = details.into();
        }
        result.to_string()
    }
}

/// What failing to reach the proxy means for the command, appended to the message.
fn consequence(command: Command) -> &'static str {
    match command {
        Command::Add => "; the pod must not start uncaptured, try again later",
        Command::Check | Command::Gc => "; try again later",
        // DEL tolerates it, STATUS reports it as such, VERSION never calls the proxy.
        Command::Del | Command::Status | Command::Version => "",
    }
}

fn refusal_message(command: Command, kind: ErrorKind, message: &str) -> String {
    match kind {
        ErrorKind::NotEnrolled => format!("the pod is not enrolled with the node proxy: {message}"),
        _ => format!("the marrow node proxy refused {command}: {message}"),
    }
}
