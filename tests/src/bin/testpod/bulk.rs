//! `testpod bulk`: the echo check that a connection carries every byte intact, both ways.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use crate::json::Json;
use crate::{CHUNK, Failure, Flags};

/// xorshift64*: the same byte stream on both sides of the checksum.
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// FNV-1a over a stream of chunks.
struct Checksum(u64);

impl Checksum {
    fn new() -> Checksum {
        Checksum(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `bulk`: the body after the greeting (see the crate documentation).
pub fn bulk(
    flags: &Flags,
    stream: TcpStream,
    greeting: String,
) -> Result<Vec<(&'static str, Json)>, Failure> {
    let total = flags
        .number("bytes")
        .map_err(|detail| Failure {
            kind: "other",
            detail,
        })?
        .unwrap_or(0);
    let started = Instant::now();
    let mut writer = stream.try_clone().map_err(|e| Failure::io("cloning", &e))?;
    let sender = std::thread::spawn(move || -> io::Result<u64> {
        let mut stream_bytes = Bytes(0x9e37_79b9_7f4a_7c15);
        let mut sum = Checksum::new();
        let mut buf = vec![0u8; CHUNK];
        let mut left = total;
        while left > 0 {
            let n = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
            stream_bytes.fill(&mut buf[..n]);
            sum.update(&buf[..n]);
            writer.write_all(&buf[..n])?;
            left -= n as u64;
        }
        writer.shutdown(Shutdown::Write)?;
        Ok(sum.0)
    });
    let mut reader = &stream;
    let mut sum = Checksum::new();
    let mut received: u64 = 0;
    let mut buf = vec![0u8; CHUNK];
    let read_result = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                sum.update(&buf[..n]);
                received += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let elapsed = started.elapsed();
    let sent = sender.join().map_err(|_| Failure {
        kind: "other",
        detail: "sender thread panicked".to_owned(),
    })?;
    let expected = sent.map_err(|e| Failure::io("sending", &e))?;
    read_result.map_err(|e| Failure::io("reading the echo", &e))?;
    if received != total || sum.0 != expected {
        return Err(Failure {
            kind: "other",
            detail: format!(
                "echo mismatch: sent {total} bytes (checksum {expected:016x}), got {received} (checksum {:016x})",
                sum.0
            ),
        });
    }
    Ok(vec![
        ("greeting", Json::Str(greeting)),
        ("bytes", Json::Num(total)),
        (
            "elapsed_ms",
            Json::Num(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_stream_is_reproducible() {
        let (mut a, mut b) = (Bytes(1), Bytes(1));
        let (mut x, mut y) = ([0u8; 13], [0u8; 13]);
        a.fill(&mut x);
        b.fill(&mut y);
        assert_eq!(x, y);
        assert_ne!(x, [0u8; 13]);
    }
}
