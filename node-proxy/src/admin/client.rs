//! The client side of the admin API, for `node-proxy admin`: one HTTP/1.1 request over a plain
//! TCP connection, and the replies rendered as aligned tables.
//!
//! Blocking on purpose: the command makes one request and exits, so it needs no runtime.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use super::Endpoint;

/// Bound on connecting, and on each read and write.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of talking to the admin API; each names the address.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers at the address.
    #[error(
        "cannot reach the admin API at {addr}: {source} (is node-proxy running there? see --addr and --admin-addr)"
    )]
    Unreachable {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The connection broke mid-request.
    #[error("talking to the admin API at {addr}: {source}")]
    Io {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// What came back is not an HTTP response with a JSON body.
    #[error("the admin API at {addr} answered something unexpected: {reason}")]
    Malformed {
        /// The address.
        addr: SocketAddr,
        /// What is wrong.
        reason: String,
    },
    /// The API answered with an error.
    #[error("the admin API at {addr} answered {status}: {message}")]
    Status {
        /// The address.
        addr: SocketAddr,
        /// HTTP status.
        status: u16,
        /// Its `error` field (or the body).
        message: String,
    },
}

/// `method path` on the admin API at `addr`; the JSON body of a 2xx reply.
pub fn request(addr: SocketAddr, method: &str, path: &str) -> Result<Value, ClientError> {
    let io = |source| ClientError::Io { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|source| ClientError::Unreachable { addr, source })?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io)?;
    let (status, body) =
        parse_response(&raw).map_err(|reason| ClientError::Malformed { addr, reason })?;
    let json: Value = serde_json::from_slice(body).map_err(|e| ClientError::Malformed {
        addr,
        reason: format!("status {status}, body is not JSON: {e}"),
    })?;
    if !(200..300).contains(&status) {
        let message = json
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| json.to_string(), str::to_owned);
        return Err(ClientError::Status {
            addr,
            status,
            message,
        });
    }
    Ok(json)
}

/// `value` escaped for a query string: everything but unreserved characters as `%XX`.
pub fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The status and body of a raw HTTP/1.x response (`Content-Length` or up to EOF).
fn parse_response(raw: &[u8]) -> Result<(u16, &[u8]), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete HTTP header in {} bytes", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(v), Some(status)) if v.starts_with("HTTP/1.") => status,
        _ => return Err(format!("bad status line {status_line:?}")),
    };
    let body = &raw[split + 4..];
    let length = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())
            .flatten()
    });
    match length {
        Some(n) if n <= body.len() => Ok((status, &body[..n])),
        Some(n) => Err(format!("body cut short: {} of {n} bytes", body.len())),
        None => Ok((status, body)),
    }
}

/// An aligned text table.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are empty).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cell = |row: &[String], i: usize| row.get(i).map_or("", String::as_str).to_owned();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| cell(r, i).chars().count())
                    .chain([self.headers[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let text = cell(row, i);
                if i + 1 == widths.len() {
                    line.push_str(&text);
                } else {
                    let _ = write!(line, "{text:<width$}  ");
                }
            }
            writeln!(f, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// The request line's target for `endpoint` with the query `params` (values escaped).
pub fn target(endpoint: Endpoint, params: &[(&str, &str)]) -> String {
    let mut target = endpoint.path().to_owned();
    for (i, (key, value)) in params.iter().enumerate() {
        let sep = if i == 0 { '?' } else { '&' };
        let _ = write!(target, "{sep}{key}={}", query_escape(value));
    }
    target
}

/// The reply of `endpoint` as text for a terminal.
pub fn render(endpoint: Endpoint, reply: &Value) -> String {
    match endpoint {
        Endpoint::Workloads => workloads(reply),
        Endpoint::Services => services(reply),
        Endpoint::Policies => policies(reply),
        Endpoint::Certificates => certificates(reply),
        Endpoint::Connections => connections(reply),
        Endpoint::ConfigDump => config(reply),
        Endpoint::Logging => format!("log level: {}\n", text(&reply["level"])),
        Endpoint::Index => items(reply, "endpoints")
            .iter()
            .map(|e| format!("{}\n", text(e)))
            .collect(),
        Endpoint::Explain => {
            let mut out = format!(
                "decision: {}\npolicy:   {}\nrule:     {}\nreason:   {}\n",
                text(&reply["decision"]),
                or_none(&reply["policy"]),
                text(&reply["rule"]),
                text(&reply["reason"]),
            );
            for note in items(reply, "notes") {
                out.push_str(&format!("note:     {}\n", text(&note)));
            }
            out
        }
        Endpoint::Routes => routes(reply),
    }
}

/// `routes`: the rule, its backends and the policies in force, one line each.
fn routes(reply: &Value) -> String {
    let route = &reply["route"];
    let route = if route.is_null() {
        "none".to_owned()
    } else {
        format!(
            "{} {} rule {}",
            text(&route["kind"]),
            text(&route["name"]),
            text(&route["rule"])
        )
    };
    let mut out = format!(
        "service:  {}:{}\nlayer:    {}\nroute:    {route}\naction:   {}\n",
        text(&reply["service"]),
        text(&reply["port"]),
        text(&reply["layer"]),
        text(&reply["action"]),
    );
    for b in items(reply, "backends") {
        out.push_str(&format!(
            "backend:  {} subset {} port {} weight {}\n",
            text(&b["service"]),
            text(&b["subset"]),
            text(&b["port"]),
            text(&b["weight"])
        ));
    }
    let timeout = &reply["timeout_ms"];
    out.push_str(&format!(
        "timeout:  {}\n",
        if timeout.is_null() {
            "none".to_owned()
        } else {
            format!("{} ms", text(timeout))
        }
    ));
    let retries = &reply["retries"];
    if retries.is_null() {
        out.push_str("retries:  none\n");
    } else {
        out.push_str(&format!(
            "retries:  {} attempts, per try {} ms, on {}{}\n",
            text(&retries["attempts"]),
            text(&retries["per_try_timeout_ms"]),
            text(&retries["retry_on"]),
            match retries["status_codes"].as_array() {
                Some(codes) if !codes.is_empty() =>
                    format!(" (codes {})", text(&retries["status_codes"])),
                _ => String::new(),
            }
        ));
    }
    let fault = &reply["fault"];
    if fault.is_null() {
        out.push_str("fault:    none\n");
    } else {
        out.push_str(&format!(
            "fault:    delay {} ms at {}%, abort {}{} at {}%\n",
            text(&fault["delay_ms"]),
            text(&fault["delay_percent"]),
            text(&fault["abort_http_status"]),
            if fault["abort_grpc_status"].is_null() {
                String::new()
            } else {
                format!(" grpc {}", text(&fault["abort_grpc_status"]))
            },
            text(&fault["abort_percent"])
        ));
    }
    for note in items(reply, "notes") {
        out.push_str(&format!("note:     {}\n", text(&note)));
    }
    out
}

fn items(reply: &Value, key: &str) -> Vec<Value> {
    reply[key].as_array().cloned().unwrap_or_default()
}

/// A cell: strings bare, numbers and booleans as JSON, null and absent as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(text).collect::<Vec<_>>().join(","),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{k}={}", text(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

fn or_none(value: &Value) -> String {
    if value.is_null() {
        "none".to_owned()
    } else {
        text(value)
    }
}

fn yes_no(value: &Value) -> String {
    if value.as_bool() == Some(true) {
        "yes".to_owned()
    } else {
        "no".to_owned()
    }
}

fn workloads(reply: &Value) -> String {
    let mut table = Table::new(&[
        "NAMESPACE",
        "NAME",
        "IPS",
        "SERVICE-ACCOUNT",
        "NODE",
        "IN-MESH",
        "ENROLLED",
        "SPIFFE-ID",
    ]);
    for w in items(reply, "workloads") {
        table.row(vec![
            text(&w["namespace"]),
            text(&w["name"]),
            text(&w["ips"]),
            text(&w["service_account"]),
            text(&w["node"]),
            yes_no(&w["in_mesh"]),
            yes_no(&w["enrolled_here"]),
            text(&w["spiffe_id"]),
        ]);
    }
    let mut out = format!(
        "WORKLOADS (state generation {})\n{table}",
        text(&reply["generation"])
    );
    let mut enrolled = Table::new(&["NAMESPACE", "NAME", "UID", "IPS", "IN-STATE"]);
    for p in items(reply, "enrolled") {
        enrolled.row(vec![
            text(&p["namespace"]),
            text(&p["name"]),
            text(&p["uid"]),
            text(&p["ips"]),
            yes_no(&p["in_state"]),
        ]);
    }
    let _ = write!(out, "\nENROLLED ON THIS NODE\n{enrolled}");
    out
}

fn services(reply: &Value) -> String {
    let mut table = Table::new(&["KIND", "NAMESPACE", "NAME"]);
    for (kind, key) in [
        ("Service", "services"),
        ("EndpointSlice", "endpoint_slices"),
    ] {
        for s in items(reply, key) {
            table.row(vec![
                kind.to_owned(),
                text(&s["namespace"]),
                text(&s["name"]),
            ]);
        }
    }
    format!("{table}({})\n", text(&reply["note"]))
}

fn policies(reply: &Value) -> String {
    let mut authz = Table::new(&[
        "NAMESPACE",
        "NAME",
        "ACTION",
        "SELECTOR",
        "RULES",
        "ENFORCED",
    ]);
    for p in items(reply, "authorization_policies") {
        authz.row(vec![
            text(&p["namespace"]),
            text(&p["name"]),
            text(&p["action"]),
            text(&p["selector"]),
            text(&p["rules"]),
            yes_no(&p["enforced"]),
        ]);
    }
    let mut peer = Table::new(&["NAMESPACE", "NAME", "SELECTOR", "MODE", "PORTS"]);
    for p in items(reply, "peer_authentications") {
        peer.row(vec![
            text(&p["namespace"]),
            text(&p["name"]),
            text(&p["selector"]),
            text(&p["mode"]),
            text(&p["port_level"]),
        ]);
    }
    let mut out = format!(
        "AUTHORIZATION POLICIES (root namespace {})\n{authz}\nPEER AUTHENTICATIONS\n{peer}",
        text(&reply["root_namespace"])
    );
    let warnings = items(reply, "warnings");
    if !warnings.is_empty() {
        out.push_str("\nWARNINGS\n");
        for w in warnings {
            let _ = writeln!(out, "- {}", text(&w));
        }
    }
    out
}

fn certificates(reply: &Value) -> String {
    let mut table = Table::new(&[
        "IDENTITY",
        "STATE",
        "NOT-BEFORE",
        "NOT-AFTER",
        "LEFT",
        "SERIAL",
        "FAILS",
        "ROOTS",
        "ERROR",
    ]);
    for c in items(reply, "certificates") {
        table.row(vec![
            text(&c["identity"]),
            text(&c["state"]),
            text(&c["not_before"]),
            text(&c["not_after"]),
            c["seconds_left"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), duration),
            text(&c["serial"]),
            c["consecutive_failures"].as_u64().unwrap_or(0).to_string(),
            c["trusted_roots"]
                .as_array()
                .map_or(0, Vec::len)
                .to_string(),
            text(&c["last_error"]),
        ]);
    }
    table.to_string()
}

fn connections(reply: &Value) -> String {
    let mut table = Table::new(&[
        "DIR", "SRC", "DST", "SRC-ID", "DST-ID", "SENT", "RECV", "AGE",
    ]);
    for c in items(reply, "connections") {
        table.row(vec![
            text(&c["direction"]),
            text(&c["src"]),
            text(&c["dst"]),
            text(&c["src_identity"]),
            text(&c["dst_identity"]),
            text(&c["bytes_sent"]),
            text(&c["bytes_received"]),
            c["age_ms"]
                .as_i64()
                .map_or_else(|| "-".to_owned(), |ms| duration(ms / 1000)),
        ]);
    }
    format!("{table}{} open\n", text(&reply["count"]))
}

fn config(reply: &Value) -> String {
    let mut table = Table::new(&["SETTING", "VALUE"]);
    if let Some(settings) = reply["config"].as_object() {
        for (key, value) in settings {
            table.row(vec![key.clone(), text(value)]);
        }
    }
    for key in ["state_generation", "mesh", "connections_open", "version"] {
        table.row(vec![key.to_owned(), text(&reply[key])]);
    }
    for item in items(reply, "unsupported") {
        table.row(vec![
            "unsupported".to_owned(),
            format!(
                "{} {}/{} ({})",
                text(&item["kind"]),
                text(&item["namespace"]),
                text(&item["name"]),
                text(&item["reason"])
            ),
        ]);
    }
    for name in items(reply, "dry_run_policies") {
        table.row(vec!["dry_run".to_owned(), text(&name)]);
    }
    table.to_string()
}

/// `1d2h`, `3h4m`, `5m6s`, `7s`; negative as `expired 5m6s ago`.
fn duration(secs: i64) -> String {
    if secs < 0 {
        return format!("expired {} ago", duration(-secs));
    }
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}
