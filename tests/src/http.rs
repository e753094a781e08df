//! A tiny HTTP/1.0 GET client over `std::net::TcpStream`, for the proxy's readiness and
//! metrics endpoints, run inside a namespace with [`Netns::run`].
//!
//! HTTP/1.0 with `Connection: close` means the body is everything up to EOF: no chunked
//! decoding is needed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use crate::netns::Netns;

/// A parsed HTTP response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, lossily decoded as UTF-8.
    pub body: String,
}

/// `GET path` on `addr`, from the calling thread's network namespace.
///
/// # Errors
/// On a connect, I/O or timeout error, or a response without a status line.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("writing request to {addr}"))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading response from {addr}"))?;
    parse_response(&raw)
}

/// `GET path` on `addr` from inside `netns`.
///
/// # Errors
/// As [`get`].
pub fn get_in(
    netns: &Netns,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<HttpResponse> {
    netns.run(|| get(addr, path, timeout))
}

/// Parses a raw HTTP/1.x response.
///
/// # Errors
/// When there is no complete header block or no valid status line.
pub fn parse_response(raw: &[u8]) -> anyhow::Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("response has no end of headers ({} bytes)", raw.len()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        bail!("bad status line {status_line:?}");
    }
    let status = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&raw[split + 4..]).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nready\n").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ready\n");
    }

    #[test]
    fn rejects_bad_responses() {
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"SSH-2.0-x\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.0 abc\r\n\r\n").is_err());
    }
}
