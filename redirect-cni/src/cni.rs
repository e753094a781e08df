//! The CNI plugin: turns one CNI exec-protocol invocation (spec 1.1: environment + network
//! configuration on stdin) into one enrollment-protocol call to the node proxy.
//!
//! Invariants:
//! - ADD succeeds only after the node proxy acknowledged the enrollment, so a pod never starts
//!   uncaptured; every failure on ADD is an error, "try again later" (11) when the proxy is
//!   unreachable or slow.
//! - DEL never fails because the proxy is away: the proxy reconciles on restart, and GC
//!   removes leftovers.
//! - On error, stdout holds exactly one CNI error JSON object and the exit code is 1;
//!   diagnostics go to stderr only.
//!
//! Parsing ([`Invocation`], [`NetConf`]), choosing the request ([`plan`]) and judging the
//! answer ([`interpret`]) are pure; [`Plugin::run`] adds the I/O around them.

mod config;
mod env;
mod error;
mod netns;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

pub use config::{
    CniVersion, DEFAULT_TIMEOUT_MS, NetConf, PrevResult, TIMEOUT_RANGE_MS, VALID_ATTACHMENTS,
    parse_cidr_address, reply_version, version_reply,
};
pub use env::{CniArgs, Command, Env, Invocation, Op, ProcessEnv};
pub use error::{CniError, refusal_code};
pub use netns::NetnsId;

use marrow_wire::enrollment::{
    self, AddPod, ErrorKind, PROTOCOL_VERSION, ProtocolError, Request, Response,
};

/// What the process prints on stdout and how it exits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The JSON to print on stdout, if any.
    pub stdout: Option<String>,
    /// 0 on success, 1 on error.
    pub exit_code: u8,
}

/// The plugin, with what it needs from its host.
pub struct Plugin<'a> {
    env: &'a dyn Env,
    host_netns: Option<NetnsId>,
}

impl<'a> Plugin<'a> {
    /// A plugin reading its variables from `env`.
    pub fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            host_netns: None,
        }
    }

    /// Refuses an ADD whose `CNI_NETNS` is `host` (the plugin's own namespace).
    pub fn refusing_netns(mut self, host: NetnsId) -> Self {
        self.host_netns = Some(host);
        self
    }

    /// Runs one invocation: reads stdin, talks to the proxy, and says what to print.
    pub fn run(&self, stdin: &mut dyn Read, log: &mut dyn Write) -> Outcome {
        let mut input = Vec::new();
        let result = match stdin.read_to_end(&mut input) {
            Ok(_) => self.execute(&input, log),
            Err(err) => Err(CniError::Stdin(err)),
        };
        match result {
            Ok(stdout) => Outcome {
                stdout,
                exit_code: 0,
            },
            Err(err) => {
                let code = err.code();
                log_line(
                    log,
                    "error",
                    "command failed",
                    &[("code", &code), ("error", &err)],
                );
                let details = err.details();
                if !details.is_empty() {
                    log_line(log, "error", "cause", &[("details", &details)]);
                }
                Outcome {
                    stdout: Some(err.to_result(reply_version(&input))),
                    exit_code: 1,
                }
            }
        }
    }

    fn execute(&self, stdin: &[u8], log: &mut dyn Write) -> Result<Option<String>, CniError> {
        let op = match Invocation::from_env(self.env)? {
            Invocation::Version => return Ok(Some(version_reply(stdin))),
            Invocation::Op(op) => op,
        };
        let conf = NetConf::parse(stdin)?;
        let plan = plan(&op, &conf)?;
        let netns = match &plan.netns {
            Some(path) => Some(netns::open(path, self.host_netns)?),
            None => None,
        };
        let fd = netns.as_ref().map(AsFd::as_fd);
        let answer = enrollment::call(&conf.proxy_socket, &plan.request, fd, conf.proxy_timeout);
        let handled = interpret(op.command(), &conf, answer)?;
        let container = op.attachment().map_or("", |a| a.container_id.as_str());
        let op_name = plan.request.op();
        match handled {
            Handled::Done(detail) => log_line(
                log,
                "info",
                "node proxy acknowledged",
                &[
                    ("op", &op_name),
                    ("container_id", &container),
                    ("detail", &detail),
                ],
            ),
            Handled::Tolerated(reason) => log_line(
                log,
                "warn",
                "node proxy failure tolerated; it reconciles on restart",
                &[
                    ("op", &op_name),
                    ("container_id", &container),
                    ("reason", &reason),
                ],
            ),
        }
        Ok(plan.reply)
    }
}

/// The request for one operation, with the namespace to attach and the reply on success.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// What to send to the node proxy.
    pub request: Request,
    /// `CNI_NETNS`, to open and send along (ADD only).
    pub netns: Option<String>,
    /// What to print on stdout once the proxy agreed.
    pub reply: Option<String>,
}

/// Chooses the request for `op` under `conf`, checking what the operation needs.
pub fn plan(op: &Op, conf: &NetConf) -> Result<Plan, CniError> {
    let command = op.command();
    conf.allows(command)?;
    let version = PROTOCOL_VERSION;
    let plan = match op {
        Op::Add {
            attachment,
            netns,
            args,
        } => {
            let prev = conf.prev_result(command)?;
            let ips = prev.pod_ips()?;
            let pod = args.pod_identity()?;
            let add = AddPod {
                pod,
                attachment: attachment.clone(),
                netns_path: netns.clone(),
                ips,
            };
            Plan {
                request: Request::Add { version, add },
                netns: Some(netns.clone()),
                reply: Some(prev.to_result(conf.cni_version)),
            }
        }
        Op::Check { attachment } => {
            conf.prev_result(command)?;
            Plan {
                request: Request::Check {
                    version,
                    attachment: attachment.clone(),
                },
                netns: None,
                reply: None,
            }
        }
        Op::Del { attachment } => Plan {
            request: Request::Del {
                version,
                attachment: attachment.clone(),
            },
            netns: None,
            reply: None,
        },
        Op::Status => Plan {
            request: Request::Status { version },
            netns: None,
            reply: None,
        },
        Op::Gc => Plan {
            request: Request::Gc {
                version,
                valid: conf.valid_attachments()?,
            },
            netns: None,
            reply: None,
        },
    };
    Ok(plan)
}

/// How an answer of the node proxy was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled {
    /// The proxy did it; its summary.
    Done(String),
    /// DEL only: the proxy failed or was away, and the deletion goes ahead anyway; why.
    Tolerated(String),
}

/// Judges the proxy's answer (or the failure to get one) for `command`.
///
/// - STATUS: anything but `Ok` means "not available" (50).
/// - DEL: an absent, slow or confused proxy, "not enrolled" and "not ready" are tolerated (the
///   proxy reconciles on restart and GC removes leftovers); a refusal of any other kind is an
///   error, so the runtime retries the DEL.
/// - ADD, CHECK, GC: `Ok` or an error (see [`error`'s table](CniError::code)).
pub fn interpret(
    command: Command,
    conf: &NetConf,
    answer: Result<Response, ProtocolError>,
) -> Result<Handled, CniError> {
    let socket = conf.proxy_socket.display().to_string();
    let result = match answer {
        Ok(Response::Ok { detail }) => return Ok(Handled::Done(detail)),
        Ok(Response::Error { kind, message }) => {
            let tolerated = matches!(kind, ErrorKind::NotEnrolled | ErrorKind::NotReady);
            if command == Command::Del && tolerated {
                return Ok(Handled::Tolerated(format!("{kind:?}: {message}")));
            }
            CniError::ProxyRefused {
                command,
                kind,
                message,
            }
        }
        Err(err) => {
            let err = transport_error(command, &conf.proxy_socket, conf.proxy_timeout, err);
            if command == Command::Del {
                return Ok(Handled::Tolerated(Reason(&err).to_string()));
            }
            err
        }
    };
    match command {
        Command::Status => Err(CniError::ProxyUnavailable {
            socket,
            reason: Reason(&result).to_string(),
        }),
        _ => Err(result),
    }
}

/// Classifies a failure to get an answer.
fn transport_error(
    command: Command,
    socket: &Path,
    timeout: Duration,
    err: ProtocolError,
) -> CniError {
    let socket = socket.display().to_string();
    match err {
        ProtocolError::Send(ref e) | ProtocolError::Receive(ref e) if is_timeout(e) => {
            CniError::ProxyTimeout {
                command,
                socket,
                timeout_ms: timeout.as_millis(),
            }
        }
        ProtocolError::Decode(_) => CniError::ProxyAnswer {
            socket,
            source: err,
        },
        ProtocolError::Limit(_) => CniError::RequestTooLarge(err),
        ProtocolError::Connect { .. }
        | ProtocolError::Send(_)
        | ProtocolError::Receive(_)
        | ProtocolError::NoAnswer => CniError::ProxyUnreachable {
            command,
            socket,
            source: err,
        },
    }
}

fn is_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// An error with its causes, on one line.
struct Reason<'e>(&'e CniError);

impl fmt::Display for Reason<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let details = self.0.details();
        if !details.is_empty() {
            write!(f, " ({details})")?;
        }
        Ok(())
    }
}

/// Writes one logfmt line: `redirect-cni: level=… msg="…" key="value" …`.
///
/// Logging is best effort: a broken stderr must not change the plugin's answer.
fn log_line(log: &mut dyn Write, level: &str, msg: &str, fields: &[(&str, &dyn fmt::Display)]) {
    let mut line = format!("redirect-cni: level={level} msg={msg:?}");
    for (key, value) in fields {
        line.push_str(&format!(" {key}={:?}", value.to_string()));
    }
    line.push('\n');
    if log.write_all(line.as_bytes()).is_err() {
        // Nowhere left to report it.
    }
}
