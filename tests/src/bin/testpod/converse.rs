//! `testpod converse`: one connection driven line by line from stdin, for tests that need a
//! connection to stay open across an event (a state reload, a certificate renewal) and then
//! prove it still carries bytes both ways.
//!
//! ```text
//! testpod converse <ip:port> [--timeout-ms N]
//!     connect, read the greeting, print {"ok":true,"peername":..,"sockname":..,"greeting":..};
//!     for each stdin line: send it with "\n", read one line back, print {"ok":true,"echo":..};
//!     at stdin EOF: half-close, read to EOF, print {"ok":true,"closed":true}.
//!     Any failure: {"ok":false,"error":..,"detail":..} and exit 1.
//! ```

use std::io::{self, BufRead, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use crate::json::{Json, object};
use crate::{Failure, Flags, peer_field, read_line};

/// `converse`: see the module documentation.
pub fn converse(flags: &Flags) -> Result<ExitCode, String> {
    let target = flags.positional.first().ok_or("missing <ip:port>")?;
    let addr: SocketAddr = target
        .parse()
        .map_err(|e| format!("bad address {target:?}: {e}"))?;
    let timeout = Duration::from_millis(flags.number("timeout-ms")?.unwrap_or(5_000).max(1));
    let outcome = talk(addr, timeout);
    if let Err(f) = outcome {
        print_line(&[
            ("ok", Json::Bool(false)),
            ("error", Json::Str(f.kind.to_owned())),
            ("detail", Json::Str(f.detail)),
        ]);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_line(fields: &[(&str, Json)]) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", object(fields)).and_then(|()| out.flush());
}

fn talk(addr: SocketAddr, timeout: Duration) -> Result<(), Failure> {
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|e| Failure::io("connect", &e))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| Failure::io("set timeouts", &e))?;
    let greeting = read_line(&stream)?;
    print_line(&[
        ("ok", Json::Bool(true)),
        ("peername", peer_field(stream.peer_addr())),
        ("sockname", peer_field(stream.local_addr())),
        ("greeting", Json::Str(greeting)),
    ]);
    for line in io::stdin().lock().lines() {
        let line = line.map_err(|e| Failure::io("reading stdin", &e))?;
        stream
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| Failure::io("sending", &e))?;
        let echo = read_line(&stream)?;
        print_line(&[("ok", Json::Bool(true)), ("echo", Json::Str(echo))]);
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| Failure::io("half-closing", &e))?;
    let mut rest = Vec::new();
    stream
        .read_to_end(&mut rest)
        .map_err(|e| Failure::io("reading to the end", &e))?;
    print_line(&[
        ("ok", Json::Bool(true)),
        ("closed", Json::Bool(true)),
        ("trailing", Json::Num(rest.len() as u64)),
    ]);
    Ok(())
}
