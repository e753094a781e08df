//! Copying bytes both ways between two byte streams (TCP, or an HBONE tunnel), with half-close
//! propagated, counting bytes as they pass so the connection table shows them while the
//! connection lives.
//!
//! TCP to TCP is spliced in the kernel ([`splice`]); TCP to HTTP/2 and back moves `Bytes`
//! chunks that neither side copies ([`chunks`]). Measured with `cargo xtask bench` (same
//! node, data-plane CPU per GB 1.06–1.13 s before, 0.65 s spliced) and on loopback
//! (`loopback.rs`). kTLS, which would take AES-GCM off this process, needs the kernel's
//! CONFIG_TLS (the `tls` upper-layer protocol); the kernel measured on has none.

mod chunks;
mod splice;

use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};

pub use chunks::Endpoint;
use chunks::{Sink, Source};

use super::connections::ByteCounters;
use super::record::{Failure, Side};
use marrow_mesh::telemetry::ResponseFlag;

/// How a TCP to TCP relay moves bytes (setting `no-splice`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TcpCopy {
    /// splice(2) through a pipe per direction, in the kernel; copies when pipes cannot be had.
    #[default]
    Splice,
    /// Through a user-space buffer (the fallback, forced).
    Buffer,
}

/// Why a relay ended before both sides closed: reading from or writing to one of the two.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// Reading from or writing to the client failed.
    #[error("{0}")]
    Downstream(#[source] std::io::Error),
    /// Reading from or writing to the upstream (the app, the peer, the tunnel) failed.
    #[error("{0}")]
    Upstream(#[source] std::io::Error),
}

impl Failure for RelayError {
    fn side(&self) -> Side {
        match self {
            RelayError::Downstream(_) => Side::Downstream,
            RelayError::Upstream(_) => Side::Upstream,
        }
    }

    /// None: the connection was carried; a reset midway is logged as the access log's
    /// `error`, its `response_flags` stay `-` (marrow's behaviour so far; Envoy would write
    /// `DC`/`UC`, which the waypoint will).
    fn response_flag(&self) -> Option<ResponseFlag> {
        None
    }
}

/// Which end of one copying direction failed.
enum HalfError {
    Read(std::io::Error),
    Write(std::io::Error),
}

impl HalfError {
    /// The relay's error, for the direction that reads from `source`.
    fn on(self, source: Side) -> RelayError {
        match (self, source) {
            (HalfError::Read(e), Side::Downstream) | (HalfError::Write(e), Side::Upstream) => {
                RelayError::Downstream(e)
            }
            (HalfError::Read(e), _) | (HalfError::Write(e), _) => RelayError::Upstream(e),
        }
    }
}

/// Copies until both directions finished (each end's FIN is passed on as a write shutdown),
/// adding each chunk to `counters` once written. On an error the caller drops both streams,
/// which closes them.
///
/// Bytes move without a copy in user space where the ends allow it: TCP to TCP is spliced
/// (unless `tcp` says [`TcpCopy::Buffer`]); bytes read from TCP go to HTTP/2 as they were read,
/// and HTTP/2's received `Bytes` are written to TCP as they came.
///
/// # Errors
/// The first read or write that failed, by the side it was on.
pub async fn copy_both_ways<C, U>(
    client: &mut C,
    upstream: &mut U,
    counters: &ByteCounters,
    tcp: TcpCopy,
) -> Result<(), RelayError>
where
    C: Endpoint,
    U: Endpoint,
{
    if tcp == TcpCopy::Splice
        && let (Some(client), Some(upstream)) = (client.as_tcp(), upstream.as_tcp())
    {
        match (splice::Pipe::new(), splice::Pipe::new()) {
            (Ok(up), Ok(down)) => {
                // Boxed: beside the buffered path it would enlarge every connection's future.
                let spliced = Box::pin(splice_both_ways(client, upstream, counters, up, down));
                return spliced.await;
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::debug!(%error, "no pipe for splice; copying through a buffer");
            }
        }
    }
    // The halves live here once; each direction borrows them (futures that own their
    // arguments keep a second copy, and this future is held by every connection).
    let (mut cr, mut cw) = client.halves();
    let (mut ur, mut uw) = upstream.halves();
    tokio::try_join!(
        copy_half(&mut cr, &mut uw, &counters.to_upstream, Side::Downstream),
        copy_half(&mut ur, &mut cw, &counters.to_client, Side::Upstream),
    )
    .map(|_| ())
}

/// [`copy_both_ways`] for two TCP sockets, through the kernel.
async fn splice_both_ways(
    client: &mut tokio::net::TcpStream,
    upstream: &mut tokio::net::TcpStream,
    counters: &ByteCounters,
    up_pipe: splice::Pipe,
    down_pipe: splice::Pipe,
) -> Result<(), RelayError> {
    let (cr, cw) = client.split();
    let (ur, uw) = upstream.split();
    let up = async {
        splice::copy_half(cr, uw, up_pipe, &counters.to_upstream)
            .await
            .map_err(|e| e.on(Side::Downstream))
    };
    let down = async {
        splice::copy_half(ur, cw, down_pipe, &counters.to_client)
            .await
            .map_err(|e| e.on(Side::Upstream))
    };
    tokio::try_join!(up, down).map(|_| ())
}

/// One direction: chunks from `source` written to `sink` until the end of stream, which is
/// passed on. The source learns of every byte written (an HTTP/2 source gives that much window
/// back then, not before: the sender is held to what the next hop took). `from` is the side
/// `source` is on, for the error.
async fn copy_half<S, K>(
    source: &mut S,
    sink: &mut K,
    counter: &AtomicU64,
    from: Side,
) -> Result<(), RelayError>
where
    S: Source,
    K: Sink,
{
    let read_failed = |e| HalfError::Read(e).on(from);
    let write_failed = |e| HalfError::Write(e).on(from);
    loop {
        let chunk = poll_fn(|cx| source.poll_chunk(cx))
            .await
            .map_err(read_failed)?;
        let Some(mut chunk) = chunk else {
            poll_fn(|cx| sink.poll_finish(cx))
                .await
                .map_err(write_failed)?;
            return Ok(());
        };
        while !chunk.is_empty() {
            let n = poll_fn(|cx| sink.poll_send(cx, &mut chunk))
                .await
                .map_err(write_failed)?;
            source.passed_on(n);
            // Relaxed: a reader of the table wants a recent count, not an ordering with the data.
            counter.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod loopback;
#[cfg(test)]
mod tests;
