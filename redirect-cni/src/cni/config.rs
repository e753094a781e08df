//! The network configuration on stdin: spec version, plugin settings, the previous plugin's
//! result and GC's list of valid attachments.
//!
//! Unknown keys are ignored (runtimes add `runtimeConfig`, `args`, …). `prevResult` and
//! `cni.dev/valid-attachments` are kept as JSON and validated only by the command that uses
//! them, so a DEL is never refused over a result it does not need. `prevResult` is echoed with
//! every field it came with, whatever this plugin understands of it.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};

pub use marrow_wire::cni_version::CniVersion;
use marrow_wire::enrollment::{Attachment, DEFAULT_SOCKET_PATH};

use super::{CniError, Command};

/// Default of `proxyTimeoutMs`.
pub const DEFAULT_TIMEOUT_MS: u64 = 5000;
/// Accepted values of `proxyTimeoutMs`.
pub const TIMEOUT_RANGE_MS: RangeInclusive<u64> = 100..=60_000;
/// Key of GC's list of attachments still in use.
pub const VALID_ATTACHMENTS: &str = "cni.dev/valid-attachments";
/// Longest Unix socket path (`sun_path` holds 108 bytes with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The plugin's network configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: CniVersion,
    /// `name`: the network.
    pub name: String,
    /// `proxySocket`: the node proxy's enrollment socket.
    pub proxy_socket: PathBuf,
    /// `proxyTimeoutMs`: how long to wait for the node proxy, per step.
    pub proxy_timeout: Duration,
    prev_result: Option<Value>,
    valid_attachments: Option<Value>,
}

impl NetConf {
    /// Parses stdin: not JSON → code 6; bad or unsupported `cniVersion` → 1; bad settings → 7.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let doc = decode(stdin)?;
        let cni_version = match doc.get("cniVersion") {
            None | Some(Value::Null) => {
                return Err(CniError::UnsupportedVersion {
                    version: "<absent>".into(),
                });
            }
            Some(Value::String(v)) => CniVersion::parse(v)
                .ok_or_else(|| CniError::UnsupportedVersion { version: v.clone() })?,
            Some(other) => return Err(invalid("cniVersion", other, "a version string")),
        };
        let name = match opt_str(&doc, "name")? {
            Some(name) if valid_network_name(name) => name.to_owned(),
            Some(name) => return Err(invalid("name", &name.into(), NETWORK_NAME_RULE)),
            None => return Err(absent("name", NETWORK_NAME_RULE)),
        };
        let proxy_socket = match opt_str(&doc, "proxySocket")? {
            Some(path) if path.starts_with('/') && path.len() <= MAX_SOCKET_PATH => {
                PathBuf::from(path)
            }
            Some(path) => return Err(invalid("proxySocket", &path.into(), SOCKET_RULE)),
            None => PathBuf::from(DEFAULT_SOCKET_PATH),
        };
        let timeout_ms = match doc.get("proxyTimeoutMs") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT_MS,
            Some(value) => value
                .as_u64()
                .filter(|ms| TIMEOUT_RANGE_MS.contains(ms))
                .ok_or_else(|| invalid("proxyTimeoutMs", value, TIMEOUT_RULE))?,
        };
        Ok(Self {
            cni_version,
            name,
            proxy_socket,
            proxy_timeout: Duration::from_millis(timeout_ms),
            prev_result: doc.get("prevResult").filter(|v| !v.is_null()).cloned(),
            valid_attachments: doc.get(VALID_ATTACHMENTS).filter(|v| !v.is_null()).cloned(),
        })
    }

    /// Refuses `command` under a config version older than the one that introduced it.
    pub fn allows(&self, command: Command) -> Result<(), CniError> {
        let minimum = introducing(command);
        if self.cni_version < minimum {
            return Err(CniError::VersionTooOld {
                command,
                version: self.cni_version,
                minimum,
            });
        }
        Ok(())
    }

    /// `prevResult`, which ADD and CHECK require: this plugin follows an interface plugin.
    pub fn prev_result(&self, command: Command) -> Result<PrevResult, CniError> {
        match &self.prev_result {
            None => Err(CniError::NoPrevResult { command }),
            Some(Value::Object(map)) => Ok(PrevResult(map.clone())),
            Some(other) => Err(invalid("prevResult", other, "a CNI result object")),
        }
    }

    /// `cni.dev/valid-attachments`, which GC requires: without it every enrollment would look
    /// stale, so its absence is an error rather than an empty list.
    pub fn valid_attachments(&self) -> Result<Vec<Attachment>, CniError> {
        const RULE: &str = "a list of {\"containerID\": string, \"ifname\": string}";
        let list = match &self.valid_attachments {
            None => return Err(absent(VALID_ATTACHMENTS, RULE)),
            Some(Value::Array(list)) => list,
            Some(other) => return Err(invalid(VALID_ATTACHMENTS, other, RULE)),
        };
        let field = |i: usize, entry: &Value, key: &str| -> Result<String, CniError> {
            match entry.get(key) {
                Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                Some(other) => Err(invalid(
                    &format!("{VALID_ATTACHMENTS}[{i}].{key}"),
                    other,
                    "a non-empty string",
                )),
                None => Err(absent(
                    &format!("{VALID_ATTACHMENTS}[{i}].{key}"),
                    "a string",
                )),
            }
        };
        list.iter()
            .enumerate()
            .map(|(i, entry)| {
                Ok(Attachment {
                    container_id: field(i, entry, "containerID")?,
                    ifname: field(i, entry, "ifname")?,
                })
            })
            .collect()
    }
}

/// The previous plugin's result, kept whole so it can be echoed unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct PrevResult(Map<String, Value>);

impl PrevResult {
    /// The pod's addresses: `ips[].address` without the prefix length, in order, without
    /// duplicates. An entry whose `interface` index names a host-side interface (one without
    /// `sandbox`) is skipped: that address is not the pod's.
    pub fn pod_ips(&self) -> Result<Vec<IpAddr>, CniError> {
        const RULE: &str = "an address in CIDR notation such as 10.0.0.2/24";
        let entries = match self.0.get("ips") {
            None | Some(Value::Null) => return Err(CniError::NoPodIps),
            Some(Value::Array(entries)) => entries,
            Some(other) => return Err(invalid("prevResult.ips", other, "a list of IP configs")),
        };
        let interfaces = self.0.get("interfaces").and_then(Value::as_array);
        let mut ips = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let setting = || format!("prevResult.ips[{i}].address");
            let ip = match entry.get("address") {
                Some(Value::String(address)) => parse_cidr_address(address)
                    .ok_or_else(|| invalid(&setting(), &address.as_str().into(), RULE))?,
                Some(other) => return Err(invalid(&setting(), other, RULE)),
                None => return Err(absent(&setting(), RULE)),
            };
            let host_side = entry
                .get("interface")
                .and_then(Value::as_u64)
                .and_then(|index| interfaces?.get(usize::try_from(index).ok()?))
                .is_some_and(|iface| {
                    iface
                        .get("sandbox")
                        .and_then(Value::as_str)
                        .is_none_or(str::is_empty)
                });
            if !host_side && !ips.contains(&ip) {
                ips.push(ip);
            }
        }
        if ips.is_empty() {
            return Err(CniError::NoPodIps);
        }
        Ok(ips)
    }

    /// The result to print after ADD: the previous result with every field kept, and
    /// `cniVersion` set to the configuration's (what a chained plugin passes on).
    pub fn to_result(&self, version: CniVersion) -> String {
        let mut map = self.0.clone();
        map.insert("cniVersion".into(), Value::String(version.as_str().into()));
        Value::Object(map).to_string()
    }
}

/// The address of a CIDR such as `10.0.0.2/24` or `fd00::2/64`; a bare address is accepted.
pub fn parse_cidr_address(cidr: &str) -> Option<IpAddr> {
    let (addr, prefix) = match cidr.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (cidr, None),
    };
    let ip: IpAddr = addr.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match prefix {
        None => Some(ip),
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => {
            p.parse::<u8>().ok().filter(|p| *p <= max).map(|_| ip)
        }
        Some(_) => None,
    }
}

/// The `cniVersion` to put in an error or VERSION reply: the input's when it is supported,
/// else the newest. Never fails: it runs on whatever stdin held.
pub fn reply_version(stdin: &[u8]) -> CniVersion {
    input_version(stdin)
        .and_then(|v| CniVersion::parse(&v))
        .unwrap_or(CniVersion::LATEST)
}

/// The VERSION reply. It echoes the input's `cniVersion` (whatever it is, as the spec asks)
/// or, with no usable input (runtimes may send none), the newest version.
pub fn version_reply(stdin: &[u8]) -> String {
    let version = input_version(stdin).unwrap_or_else(|| CniVersion::LATEST.as_str().into());
    let supported: Vec<&str> = CniVersion::SUPPORTED.iter().map(|v| v.as_str()).collect();
    serde_json::json!({ "cniVersion": version, "supportedVersions": supported }).to_string()
}

fn input_version(stdin: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(stdin).ok()?;
    doc.get("cniVersion")?.as_str().map(str::to_owned)
}

/// Parses stdin as a JSON object (code 6 otherwise).
fn decode(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice(stdin).map_err(CniError::Decode)? {
        Value::Object(map) => Ok(map),
        _ => Err(CniError::NotAnObject),
    }
}

const NETWORK_NAME_RULE: &str =
    "an alphanumeric followed by alphanumerics, '_', '.' or '-' (the spec's network name)";
const SOCKET_RULE: &str = "an absolute path of at most 107 bytes";
const TIMEOUT_RULE: &str = "an integer number of milliseconds from 100 to 60000";

fn valid_network_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A string setting, if present and not null.
fn opt_str<'a>(doc: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(invalid(key, other, "a string")),
    }
}

fn invalid(setting: &str, value: &Value, expected: &'static str) -> CniError {
    CniError::InvalidConfig {
        setting: setting.to_owned(),
        value: value.to_string(),
        expected,
    }
}

fn absent(setting: &str, expected: &'static str) -> CniError {
    CniError::InvalidConfig {
        setting: setting.to_owned(),
        value: "<absent>".into(),
        expected,
    }
}

/// The first version that defines `command` (libcni refuses it under older configs).
fn introducing(command: Command) -> CniVersion {
    match command {
        Command::Check => CniVersion::V0_4_0,
        Command::Status | Command::Gc => CniVersion::V1_1_0,
        Command::Add | Command::Del | Command::Version => CniVersion::V0_3_0,
    }
}
