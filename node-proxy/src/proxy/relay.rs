//! Copying bytes both ways between two byte streams (TCP, or an HBONE tunnel), with half-close
//! propagated, counting bytes as they pass so the connection table shows them while the
//! connection lives.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::connections::ByteCounters;

/// Each direction starts with a small buffer, so thousands of idle connections cost little…
const INITIAL_BUF: usize = 2 * 1024;
/// …and grows (×4) whenever a read fills it, up to this, so bulk transfers are not
/// syscall-bound. At most three growths per direction: nothing is allocated per chunk.
const MAX_BUF: usize = 64 * 1024;

/// What a finished relay moved.
#[derive(Debug)]
pub struct RelayOutcome {
    /// Bytes from the client to the upstream.
    pub to_upstream: u64,
    /// Bytes from the upstream to the client.
    pub to_client: u64,
    /// The error that ended the relay, if it did not end with both sides closing.
    pub error: Option<std::io::Error>,
}

/// Copies until both directions finished (each end's FIN is passed on as a write shutdown),
/// adding each chunk to `counters` once written. On an error both streams are dropped, which
/// closes them.
pub async fn copy_both_ways<C, U>(client: C, upstream: U, counters: &ByteCounters) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    let result = {
        let up = copy_half(&mut cr, &mut uw, &counters.to_upstream);
        let down = copy_half(&mut ur, &mut cw, &counters.to_client);
        tokio::try_join!(up, down)
    };
    let (to_upstream, to_client) = counters.get();
    RelayOutcome {
        to_upstream,
        to_client,
        error: result.err(),
    }
}

async fn copy_half<R, W>(reader: &mut R, writer: &mut W, counter: &AtomicU64) -> std::io::Result<()>
where
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; INITIAL_BUF];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        writer.write_all(&buf[..n]).await?;
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

        let outcome = relay.await.unwrap();
        assert_eq!((outcome.to_upstream, outcome.to_client), (300_000, 5));
        assert!(outcome.error.is_none());
    }
}
