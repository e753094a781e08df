//! What the `testpod` app prints, parsed: the outcome of `testpod connect` and `testpod bulk`,
//! and of the load generators `connect-rate`, `send`, `pingpong` and `hold`.
//!
//! Each prints exactly one JSON line: `{"ok":true,…}` on success, or
//! `{"ok":false,"error":"refused|reset|timeout|other","detail":"…"}` (and exit 1).

use std::net::SocketAddr;

use serde::Deserialize;

/// Why a `testpod connect` or `bulk` failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// Connection refused (a RST answered the SYN).
    Refused,
    /// Reset or closed by the peer before the exchange finished.
    Reset,
    /// No answer in time (dropped SYN, or a silent peer).
    Timeout,
    /// Anything else; see the detail.
    Other,
}

impl ConnectErrorKind {
    fn parse(s: &str) -> ConnectErrorKind {
        match s {
            "refused" => ConnectErrorKind::Refused,
            "reset" => ConnectErrorKind::Reset,
            "timeout" => ConnectErrorKind::Timeout,
            _ => ConnectErrorKind::Other,
        }
    }
}

/// A failed connection attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectFailure {
    /// The class of failure.
    pub kind: ConnectErrorKind,
    /// The OS error or other explanation.
    pub detail: String,
}

/// The server's greeting line `peer=<ip>:<port> local=<ip>:<port>`, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Greeting {
    /// The client address as the server saw it (`getpeername` on the accepted socket).
    pub peer: SocketAddr,
    /// The server's local address (`getsockname`: the original destination).
    pub local: SocketAddr,
}

impl Greeting {
    /// Parses `peer=<addr> local=<addr>`.
    ///
    /// # Errors
    /// When the line has another shape.
    pub fn parse(line: &str) -> Result<Greeting, String> {
        let mut peer = None;
        let mut local = None;
        for field in line.split_whitespace() {
            match field.split_once('=') {
                Some(("peer", v)) => peer = v.parse().ok(),
                Some(("local", v)) => local = v.parse().ok(),
                _ => return Err(format!("unexpected field {field:?} in greeting {line:?}")),
            }
        }
        match (peer, local) {
            (Some(peer), Some(local)) => Ok(Greeting { peer, local }),
            _ => Err(format!("greeting {line:?} lacks a valid peer= or local=")),
        }
    }
}

/// A successful `testpod connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connected {
    /// `getpeername()` of the client socket (what the app believes it connected to).
    pub peername: SocketAddr,
    /// `getsockname()` of the client socket.
    pub sockname: SocketAddr,
    /// The server's greeting line, parsed.
    pub greeting: Greeting,
    /// What the server echoed back.
    pub echo: String,
}

/// The outcome of `testpod connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectOutcome {
    /// Connected, greeted and echoed.
    Connected(Connected),
    /// It failed.
    Failed(ConnectFailure),
}

impl ConnectOutcome {
    /// Whether it connected.
    pub fn is_ok(&self) -> bool {
        matches!(self, ConnectOutcome::Connected(_))
    }

    /// The failure class, if it failed.
    pub fn error_kind(&self) -> Option<ConnectErrorKind> {
        match self {
            ConnectOutcome::Connected(_) => None,
            ConnectOutcome::Failed(f) => Some(f.kind),
        }
    }

    /// The connection, or a panic that shows why it failed.
    ///
    /// # Panics
    /// When it failed.
    pub fn connected(&self) -> &Connected {
        match self {
            ConnectOutcome::Connected(c) => c,
            ConnectOutcome::Failed(f) => panic!("connection failed: {:?}: {}", f.kind, f.detail),
        }
    }
}

/// A successful `testpod bulk`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Bytes sent and received back intact.
    pub bytes: u64,
    /// Wall time from connect to the last echoed byte.
    pub elapsed_ms: u64,
}

/// The outcome of `testpod connect-rate`: closed loops of connect → greeting → close.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ConnectRate {
    /// Connections that completed (greeting read).
    pub connections: u64,
    /// Attempts that failed (each counted, none fatal).
    pub errors: u64,
    /// The measured duration (connections done after it are not counted).
    pub elapsed_ms: u64,
    /// Median time from `connect()` to the greeting's newline.
    pub p50_us: u64,
    /// 99th percentile of the same.
    pub p99_us: u64,
    /// The slowest completed connection (a SYN retransmitted after 1 s shows here).
    #[serde(default)]
    pub max_us: u64,
    /// The first failure's OS error, if any failed.
    #[serde(default)]
    pub first_error: Option<String>,
}

impl ConnectRate {
    /// Completed connections per second.
    pub fn per_second(&self) -> f64 {
        self.connections as f64 / (self.elapsed_ms.max(1) as f64 / 1000.0)
    }
}

/// The outcome of `testpod send` against `testpod serve --sink`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Throughput {
    /// Bytes the sink acknowledged.
    pub bytes: u64,
    /// From the first write to the sink's acknowledgement of the last byte.
    pub elapsed_us: u64,
}

impl Throughput {
    /// Gigabits per second of application payload.
    pub fn gbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / (self.elapsed_us.max(1) as f64 * 1000.0)
    }
}

/// The outcome of `testpod pingpong`: round-trip times in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct PingPong {
    /// Round trips measured (after the warm-up).
    pub count: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// The line `testpod hold` prints once every connection is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct Held {
    /// Connections open (each greeted by the server).
    pub held: u64,
    /// How long opening them took.
    pub elapsed_ms: u64,
}

/// The outcome of `testpod http-load`: keep-alive HTTP/1.1 requests, at saturation or at a fixed
/// rate (latency then counted from when each request was due).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct HttpLoad {
    /// Requests answered in the measured window.
    pub requests: u64,
    /// Requests that failed (connection errors, timeouts), each counted, none fatal.
    pub errors: u64,
    /// Answers outside 2xx.
    pub non_2xx: u64,
    /// The measured window.
    pub elapsed_ms: u64,
    /// Requests answered per second.
    pub rps: f64,
    /// Median latency.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// The slowest.
    pub max_us: u64,
    /// The first failure, if any failed.
    #[serde(default)]
    pub first_error: Option<String>,
}

#[derive(Deserialize)]
struct Raw {
    ok: bool,
    peername: Option<String>,
    sockname: Option<String>,
    greeting: Option<String>,
    echo: Option<String>,
    error: Option<String>,
    detail: Option<String>,
    bytes: Option<u64>,
    elapsed_ms: Option<u64>,
}

fn parse_raw(stdout: &str) -> Result<Raw, String> {
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("testpod printed {stdout:?}: {e}"))
}

fn failure(raw: &Raw) -> ConnectFailure {
    ConnectFailure {
        kind: ConnectErrorKind::parse(raw.error.as_deref().unwrap_or_default()),
        detail: raw.detail.clone().unwrap_or_default(),
    }
}

fn addr(field: &str, v: Option<&String>) -> Result<SocketAddr, String> {
    v.ok_or_else(|| format!("missing {field}"))?
        .parse()
        .map_err(|e| format!("bad {field} {v:?}: {e}"))
}

/// Parses the stdout of `testpod connect`.
///
/// # Errors
/// When it is not the JSON line `testpod` prints.
pub fn parse_connect_output(stdout: &str) -> Result<ConnectOutcome, String> {
    let raw = parse_raw(stdout)?;
    if !raw.ok {
        return Ok(ConnectOutcome::Failed(failure(&raw)));
    }
    Ok(ConnectOutcome::Connected(Connected {
        peername: addr("peername", raw.peername.as_ref())?,
        sockname: addr("sockname", raw.sockname.as_ref())?,
        greeting: Greeting::parse(raw.greeting.as_deref().unwrap_or_default())?,
        echo: raw.echo.unwrap_or_default(),
    }))
}

/// Parses the stdout of `testpod bulk`: `Ok(Ok(outcome))`, `Ok(Err(failure))`.
///
/// # Errors
/// When it is not the JSON line `testpod` prints.
pub fn parse_bulk_output(stdout: &str) -> Result<Result<BulkOutcome, ConnectFailure>, String> {
    let raw = parse_raw(stdout)?;
    if !raw.ok {
        return Ok(Err(failure(&raw)));
    }
    Ok(Ok(BulkOutcome {
        bytes: raw.bytes.ok_or("missing bytes")?,
        elapsed_ms: raw.elapsed_ms.ok_or("missing elapsed_ms")?,
    }))
}

/// The outcome of a load generator: [`ConnectRate`], [`Throughput`], [`PingPong`], [`Held`],
/// [`HttpLoad`].
pub trait LoadOutcome: serde::de::DeserializeOwned {}

impl LoadOutcome for ConnectRate {}
impl LoadOutcome for Throughput {}
impl LoadOutcome for PingPong {}
impl LoadOutcome for Held {}
impl LoadOutcome for HttpLoad {}

/// Parses the line of a load generator (`connect-rate`, `send`, `pingpong`, `hold`) into `T`:
/// `Ok(Ok(outcome))`, or `Ok(Err(failure))` when it printed `"ok":false`.
///
/// # Errors
/// When it is not such a JSON line or lacks a field of `T`.
pub fn parse_load_output<T: LoadOutcome>(
    stdout: &str,
) -> Result<Result<T, ConnectFailure>, String> {
    let raw = parse_raw(stdout)?;
    if !raw.ok {
        return Ok(Err(failure(&raw)));
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default();
    serde_json::from_str(line)
        .map(Ok)
        .map_err(|e| format!("testpod printed {stdout:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_success() {
        let out = r#"{"ok":true,"peername":"10.244.1.3:8080","sockname":"10.244.1.2:40000","greeting":"peer=10.244.1.2:40000 local=10.244.1.3:8080","echo":"hi"}"#;
        let c = parse_connect_output(out).unwrap();
        let c = c.connected();
        assert_eq!(c.peername, "10.244.1.3:8080".parse().unwrap());
        assert_eq!(c.greeting.peer, "10.244.1.2:40000".parse().unwrap());
        assert_eq!(c.echo, "hi");
    }

    #[test]
    fn parses_ipv6_greeting() {
        let g = Greeting::parse("peer=[fd00:1::2]:5 local=[fd00:1::3]:80").unwrap();
        assert_eq!(g.local.port(), 80);
    }

    #[test]
    fn parses_failure() {
        let out = "{\"ok\":false,\"error\":\"refused\",\"detail\":\"Connection refused\"}\n";
        let c = parse_connect_output(out).unwrap();
        assert_eq!(c.error_kind(), Some(ConnectErrorKind::Refused));
        let b = parse_bulk_output(out).unwrap();
        assert_eq!(b.unwrap_err().kind, ConnectErrorKind::Refused);
    }

    #[test]
    fn rejects_bad_output() {
        assert!(parse_connect_output("").is_err());
        assert!(parse_connect_output("hello").is_err());
        assert!(parse_connect_output(r#"{"ok":true}"#).is_err());
        assert!(
            parse_connect_output(
                r#"{"ok":true,"peername":"x","sockname":"1.2.3.4:5","greeting":""}"#
            )
            .is_err()
        );
        assert!(Greeting::parse("peer=1.2.3.4:5").is_err());
        assert!(Greeting::parse("peer=1.2.3.4:5 local=1.2.3.4:6 extra").is_err());
        assert!(parse_bulk_output(r#"{"ok":true,"bytes":5}"#).is_err());
    }

    #[test]
    fn parses_load_generators() {
        let rate: ConnectRate = parse_load_output(
            r#"{"ok":true,"connections":3000,"errors":2,"elapsed_ms":1000,"p50_us":250,"p99_us":900,"first_error":"Cannot assign requested address"}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(rate.errors, 2);
        assert!((rate.per_second() - 3000.0).abs() < 1e-9);
        assert!(rate.first_error.is_some());

        let t: Throughput =
            parse_load_output(r#"{"ok":true,"bytes":1000000000,"elapsed_us":1000000}"#)
                .unwrap()
                .unwrap();
        assert!((t.gbit_per_s() - 8.0).abs() < 1e-9);

        let p: PingPong = parse_load_output(
            r#"{"ok":true,"count":5,"p50_us":20.5,"p90_us":30.0,"p99_us":40.0,"p999_us":50.0,"mean_us":22.1}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.count, 5);

        let h: Held = parse_load_output("{\"ok\":true,\"held\":1000,\"elapsed_ms\":80}\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.held, 1000);
    }

    #[test]
    fn load_generator_failures_and_bad_output() {
        let out = r#"{"ok":false,"error":"reset","detail":"after 10 connections: reset"}"#;
        let failed = parse_load_output::<Held>(out).unwrap().unwrap_err();
        assert_eq!(failed.kind, ConnectErrorKind::Reset);
        assert!(parse_load_output::<Held>("").is_err());
        assert!(parse_load_output::<Held>(r#"{"ok":true,"held":1}"#).is_err());
        assert!(parse_load_output::<PingPong>(r#"{"ok":true,"count":"x"}"#).is_err());
    }
}
