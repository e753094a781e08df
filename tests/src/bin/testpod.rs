//! testpod: the application the integration tests run inside pods (std and libc only).
//!
//! ```text
//! testpod serve --port P [--v6] [--sink]
//!     listen on 0.0.0.0:P (or [::]:P, which takes IPv4 too); print "listening <addr>" once bound;
//!     per connection (one thread each) write "peer=<ip>:<port> local=<ip>:<port>\n", then echo
//!     until EOF; with --sink read and discard until EOF, then answer "received=<bytes>\n".
//! testpod connect <ip:port> [--send TEXT] [--timeout-ms N]
//!     print {"ok":true,"peername":..,"sockname":..,"greeting":..,"echo":..}
//!     or {"ok":false,"error":"refused|reset|timeout|other","detail":..} and exit 1.
//! testpod bulk <ip:port> --bytes N [--timeout-ms N]
//!     send N pseudo-random bytes while reading the echo; verify count and checksum;
//!     print {"ok":true,"bytes":N,"elapsed_ms":..} (or a failure as for connect).
//! testpod connect-rate | send | pingpong | hold …
//!     load generators for `cargo xtask bench`: see the `load` module.
//! testpod converse <ip:port> [--timeout-ms N]
//!     one connection driven line by line from stdin: see the `converse` module.
//! testpod http-serve | http-load …
//!     the L7 server and load generator of the bench: see the `http_load` module.
//! ```
//! Addresses are printed canonically (an IPv4-mapped IPv6 peer shows as plain IPv4).

use std::collections::HashMap;
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use json::{Json, object};

// A binary's root resolves modules beside itself; these live in `testpod/`.
#[path = "testpod/bulk.rs"]
mod bulk;
#[path = "testpod/converse.rs"]
mod converse;
#[path = "testpod/http_load.rs"]
mod http_load;
#[path = "testpod/json.rs"]
mod json;
#[path = "testpod/load.rs"]
mod load;

const USAGE: &str = "usage: testpod serve --port P [--v6] [--sink]
       testpod connect <ip:port> [--send TEXT] [--timeout-ms N]
       testpod bulk <ip:port> --bytes N [--timeout-ms N]
       testpod connect-rate <ip:port> --seconds S [--threads T] [--timeout-ms N]
       testpod send <ip:port> --bytes N [--streams P] [--timeout-ms N]
       testpod pingpong <ip:port> --count N [--size B] [--timeout-ms N]
       testpod hold <ip:port> --connections N [--seconds S] [--timeout-ms N]
       testpod converse <ip:port> [--timeout-ms N]
       testpod http-serve --port P [--size B] [--name N] [--fail-percent P] [--delay-ms D] [--log]
       testpod http-load <ip:port> --seconds S [--connections C] [--size B] [--rate R] [--echo] [--timeout-ms N]";
const CHUNK: usize = 64 * 1024;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let flags = match Flags::parse(rest) {
        Ok(flags) => flags,
        Err(e) => {
            eprintln!("testpod: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    load::raise_nofile_limit();
    let result = match command.as_str() {
        "serve" => serve(&flags),
        "connect" => client(&flags, connect),
        "bulk" => client(&flags, bulk::bulk),
        "connect-rate" => load::connect_rate(&flags),
        "send" => client(&flags, load::send),
        "pingpong" => client(&flags, load::pingpong),
        "hold" => load::hold(&flags),
        "converse" => converse::converse(&flags),
        "http-serve" => http_load::serve(&flags),
        "http-load" => http_load::load(&flags),
        other => Err(format!("unknown command {other:?}")),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testpod: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Positional arguments and `--flag [value]` pairs.
struct Flags {
    positional: Vec<String>,
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Flags {
    fn parse(args: &[String]) -> Result<Flags, String> {
        let mut flags = Flags {
            positional: Vec::new(),
            values: HashMap::new(),
            switches: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.strip_prefix("--") {
                Some(name @ ("v6" | "sink" | "log" | "echo")) => {
                    flags.switches.push(name.to_owned())
                }
                Some(
                    name @ ("port" | "send" | "timeout-ms" | "bytes" | "seconds" | "threads"
                    | "count" | "size" | "connections" | "rate" | "name" | "fail-percent"
                    | "delay-ms" | "streams"),
                ) => {
                    let value = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                    flags.values.insert(name.to_owned(), value.clone());
                }
                Some(name) => return Err(format!("unknown flag --{name}")),
                None => flags.positional.push(arg.clone()),
            }
        }
        Ok(flags)
    }

    fn number(&self, name: &str) -> Result<Option<u64>, String> {
        self.values
            .get(name)
            .map(|v| v.parse().map_err(|e| format!("--{name} {v:?}: {e}")))
            .transpose()
    }
}

fn serve(flags: &Flags) -> Result<ExitCode, String> {
    let port = flags.number("port")?.ok_or("serve needs --port")?;
    let port = u16::try_from(port).map_err(|_| format!("--port {port} is out of range"))?;
    let sink = flags.switches.iter().any(|s| s == "sink");
    let bind: SocketAddr = if flags.switches.iter().any(|s| s == "v6") {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    let listener = TcpListener::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let mut out = io::stdout().lock();
    writeln!(out, "listening {local}")
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    drop(out);
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || {
                    let served = greeting(&stream).and_then(|greeting| {
                        if sink {
                            load::sink(stream, &greeting)
                        } else {
                            echo(stream, &greeting)
                        }
                    });
                    if let Err(e) = served {
                        eprintln!("testpod serve: connection: {e}");
                    }
                });
            }
            Err(e) => eprintln!("testpod serve: accept: {e}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The greeting line for an accepted connection: `peer=<ip>:<port> local=<ip>:<port>\n`.
fn greeting(stream: &TcpStream) -> io::Result<String> {
    let peer = canonical(stream.peer_addr()?);
    let local = canonical(stream.local_addr()?);
    Ok(format!("peer={peer} local={local}\n"))
}

fn echo(mut stream: TcpStream, greeting: &str) -> io::Result<()> {
    // Ping-pong latency must not wait for Nagle; bulk echo writes whole chunks anyway.
    stream.set_nodelay(true)?;
    stream.write_all(greeting.as_bytes())?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        stream.write_all(&buf[..n])?;
    }
    stream.shutdown(Shutdown::Both)
}

/// A failure reported as `{"ok":false,...}`.
struct Failure {
    kind: &'static str,
    detail: String,
}

impl Failure {
    fn io(what: &str, e: &io::Error) -> Failure {
        let kind = match e.kind() {
            ErrorKind::ConnectionRefused => "refused",
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => "reset",
            ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout",
            _ => "other",
        };
        Failure {
            kind,
            detail: format!("{what}: {e}"),
        }
    }
}

type Client = fn(&Flags, TcpStream, String) -> Result<Vec<(&'static str, Json)>, Failure>;

/// Connects to the positional address, reads the greeting, hands over to `body`, and prints
/// the one JSON line.
fn client(flags: &Flags, body: Client) -> Result<ExitCode, String> {
    let target = flags.positional.first().ok_or("missing <ip:port>")?;
    let addr: SocketAddr = target
        .parse()
        .map_err(|e| format!("bad address {target:?}: {e}"))?;
    let default_ms = if flags.values.contains_key("bytes") {
        60_000
    } else {
        5_000
    };
    let timeout = Duration::from_millis(flags.number("timeout-ms")?.unwrap_or(default_ms).max(1));
    let outcome = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| Failure::io("connect", &e))
        .and_then(|stream| {
            stream
                .set_read_timeout(Some(timeout))
                .and_then(|()| stream.set_write_timeout(Some(timeout)))
                .map_err(|e| Failure::io("set timeouts", &e))?;
            let mut fields = vec![
                ("peername", peer_field(stream.peer_addr())),
                ("sockname", peer_field(stream.local_addr())),
            ];
            let greeting = read_line(&stream)?;
            fields.extend(body(flags, stream, greeting)?);
            Ok(fields)
        });
    match outcome {
        Ok(fields) => {
            let mut all = vec![("ok", Json::Bool(true))];
            all.extend(fields);
            println!("{}", object(&all));
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            let all = [
                ("ok", Json::Bool(false)),
                ("error", Json::Str(f.kind.to_owned())),
                ("detail", Json::Str(f.detail)),
            ];
            println!("{}", object(&all));
            Ok(ExitCode::from(1))
        }
    }
}

fn peer_field(addr: io::Result<SocketAddr>) -> Json {
    Json::Str(addr.map_or_else(|e| format!("error: {e}"), |a| canonical(a).to_string()))
}

/// Reads the greeting line one byte at a time, so nothing after it is consumed.
fn read_line(mut stream: &TcpStream) -> Result<String, Failure> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => {
                return Err(Failure {
                    kind: "reset",
                    detail: format!(
                        "connection closed before the greeting line (got {:?})",
                        String::from_utf8_lossy(&line)
                    ),
                });
            }
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::io("reading the greeting", &e)),
        }
    }
}

fn connect(
    flags: &Flags,
    mut stream: TcpStream,
    greeting: String,
) -> Result<Vec<(&'static str, Json)>, Failure> {
    let text = flags.values.get("send").cloned().unwrap_or_default();
    stream
        .write_all(text.as_bytes())
        .map_err(|e| Failure::io("sending", &e))?;
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| Failure::io("half-closing", &e))?;
    let mut echoed = Vec::new();
    BufReader::new(&stream)
        .read_to_end(&mut echoed)
        .map_err(|e| Failure::io("reading the echo", &e))?;
    Ok(vec![
        ("greeting", Json::Str(greeting)),
        (
            "echo",
            Json::Str(String::from_utf8_lossy(&echoed).into_owned()),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_flags() {
        let args: Vec<String> = ["1.2.3.4:5", "--send", "hi", "--v6"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let f = Flags::parse(&args).unwrap();
        assert_eq!(f.positional, ["1.2.3.4:5"]);
        assert_eq!(f.values["send"], "hi");
        assert_eq!(f.switches, ["v6"]);
    }

    #[test]
    fn rejects_bad_flags() {
        let bad = |a: &[&str]| Flags::parse(&a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert!(bad(&["--send"]).is_err());
        assert!(bad(&["--nope"]).is_err());
        let f = bad(&["--port", "x"]).unwrap();
        assert!(f.number("port").is_err());
    }
}
