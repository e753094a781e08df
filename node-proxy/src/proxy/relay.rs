//! Copying bytes both ways between two byte streams (TCP, or an HBONE tunnel), with half-close
//! propagated, counting bytes as they pass so the connection table shows them while the
//! connection lives.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::connections::ByteCounters;
use super::record::{Failure, Side};
use marrow_mesh::telemetry::ResponseFlag;

/// Each direction starts with a small buffer, so thousands of idle connections cost little…
const INITIAL_BUF: usize = 2 * 1024;
/// …and grows (×4) whenever a read fills it, up to this, so bulk transfers are not
/// syscall-bound. At most three growths per direction: nothing is allocated per chunk.
const MAX_BUF: usize = 64 * 1024;

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

/// Copies until both directions finished (each end's FIN is passed on as a write shutdown),
/// adding each chunk to `counters` once written. On an error both streams are dropped, which
/// closes them.
///
/// # Errors
/// The first read or write that failed, by the side it was on.
pub async fn copy_both_ways<C, U>(
    client: C,
    upstream: U,
    counters: &ByteCounters,
) -> Result<(), RelayError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let up = async {
        copy_half(&mut cr, &mut uw, &counters.to_upstream)
            .await
            .map_err(|e| match e {
                HalfError::Read(e) => RelayError::Downstream(e),
                HalfError::Write(e) => RelayError::Upstream(e),
            })
    };
    let down = async {
        copy_half(&mut ur, &mut cw, &counters.to_client)
            .await
            .map_err(|e| match e {
                HalfError::Read(e) => RelayError::Upstream(e),
                HalfError::Write(e) => RelayError::Downstream(e),
            })
    };
    tokio::try_join!(up, down).map(|_| ())
}

async fn copy_half<R, W>(
    reader: &mut R,
    writer: &mut W,
    counter: &AtomicU64,
) -> Result<(), HalfError>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; INITIAL_BUF];
    loop {
        let n = reader.read(&mut buf).await.map_err(HalfError::Read)?;
        if n == 0 {
            writer.shutdown().await.map_err(HalfError::Write)?;
            return Ok(());
        }
        writer
            .write_all(&buf[..n])
            .await
            .map_err(HalfError::Write)?;
        // Relaxed: a reader of the table wants a recent count, not an ordering with the data.
        counter.fetch_add(n as u64, Ordering::Relaxed);
        if n == buf.len() && buf.len() < MAX_BUF {
            buf.resize((buf.len() * 4).min(MAX_BUF), 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn bytes_and_half_close_pass_both_ways() {
        let (mut app_client, proxy_client_side) = pair().await;
        let (proxy_upstream_side, mut app_server) = pair().await;
        let counters = std::sync::Arc::new(ByteCounters::default());
        let relay = tokio::spawn({
            let counters = counters.clone();
            async move { copy_both_ways(proxy_client_side, proxy_upstream_side, &counters).await }
        });

        let payload = vec![7u8; 300_000];
        app_client.write_all(&payload).await.unwrap();
        app_client.shutdown().await.unwrap();
        let mut got = Vec::new();
        app_server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload, "client bytes and FIN reach the server");
        assert_eq!(
            counters.get(),
            (300_000, 0),
            "counted while the relay still runs"
        );

        app_server.write_all(b"reply").await.unwrap();
        app_server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        app_client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply");

        relay.await.unwrap().unwrap();
        assert_eq!(counters.get(), (300_000, 5));
    }
}
