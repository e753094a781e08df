use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use marrow_mesh::hbone::{self, Baggage, ConnectRequest, Forwarded, HboneClient, TraceParent};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::chunks::{MAX_READ, Source, TcpSource};
use super::*;

async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

/// Bytes and FIN one way, then the other, through a TCP to TCP relay run with `tcp`.
async fn tcp_relay_carries(tcp: TcpCopy) {
    let (mut app_client, mut proxy_client_side) = pair().await;
    let (mut proxy_upstream_side, mut app_server) = pair().await;
    let counters = Arc::new(ByteCounters::default());
    let relay = tokio::spawn({
        let counters = counters.clone();
        async move {
            copy_both_ways(
                &mut proxy_client_side,
                &mut proxy_upstream_side,
                &counters,
                tcp,
            )
            .await
        }
    });

    let payload = vec![7u8; 3_000_000];
    app_client.write_all(&payload).await.unwrap();
    app_client.shutdown().await.unwrap();
    let mut got = Vec::new();
    app_server.read_to_end(&mut got).await.unwrap();
    assert!(
        got == payload,
        "client bytes and FIN reach the server ({tcp:?})"
    );
    assert_eq!(
        counters.get(),
        (3_000_000, 0),
        "counted while the relay still runs ({tcp:?})"
    );

    app_server.write_all(b"reply").await.unwrap();
    app_server.shutdown().await.unwrap();
    let mut reply = Vec::new();
    app_client.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"reply");

    relay.await.unwrap().unwrap();
    assert_eq!(counters.get(), (3_000_000, 5), "{tcp:?}");
}

#[tokio::test]
async fn spliced_bytes_and_half_close_pass_both_ways() {
    tcp_relay_carries(TcpCopy::Splice).await;
}

#[tokio::test]
async fn buffered_bytes_and_half_close_pass_both_ways() {
    tcp_relay_carries(TcpCopy::Buffer).await;
}

fn connect_request() -> ConnectRequest {
    ConnectRequest {
        authority: "10.0.0.2:8080".parse().unwrap(),
        forwarded: Forwarded::default(),
        baggage: Baggage::default(),
        traceparent: TraceParent::random(),
    }
}

/// More than a stream's flow-control window, so the relays must give window back as they
/// write, and odd-sized so chunks do not line up with reads.
const TUNNELLED: usize = hbone::STREAM_WINDOW as usize * 2 + 12_345;

/// app client → relay (TCP to HTTP/2) → HTTP/2 on loopback → relay (HTTP/2 to TCP) → app
/// server, and back: both chunk paths of both relays, as the outbound and inbound proxies
/// run them (without TLS, which is below HTTP/2 and not the relay's business).
#[tokio::test]
async fn tunnelled_bytes_keep_flow_control_and_counts() {
    let (mut app_client, mut outbound_client_side) = pair().await;
    let (h2_client_io, h2_server_io) = pair().await;
    let (app_listener_client, mut app_server) = pair().await;
    let inbound_counters = Arc::new(ByteCounters::default());
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let done_tx = Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let app_side = Arc::new(std::sync::Mutex::new(Some(app_listener_client)));
    tokio::spawn({
        let counters = inbound_counters.clone();
        hbone::serve(
            h2_server_io,
            std::time::Duration::from_secs(5),
            std::future::pending(),
            move |incoming| {
                let counters = counters.clone();
                let done = done_tx.lock().unwrap().take();
                let app = app_side.lock().unwrap().take();
                async move {
                    let (Some(done), Some(mut app)) = (done, app) else {
                        return;
                    };
                    let mut stream = incoming.accept().unwrap();
                    let result =
                        copy_both_ways(&mut stream, &mut app, &counters, TcpCopy::Splice).await;
                    let _ = done.send(result.is_ok());
                }
            },
        )
    });
    let client = HboneClient::handshake(h2_client_io).await.unwrap();
    let mut tunnel = client.connect(&connect_request()).await.unwrap();
    let outbound_counters = Arc::new(ByteCounters::default());
    let outbound = tokio::spawn({
        let counters = outbound_counters.clone();
        async move {
            copy_both_ways(
                &mut outbound_client_side,
                &mut tunnel,
                &counters,
                TcpCopy::Splice,
            )
            .await
        }
    });

    let payload: Vec<u8> = (0..TUNNELLED).map(|i| (i % 251) as u8).collect();
    let writer = tokio::spawn({
        let payload = payload.clone();
        async move {
            app_client.write_all(&payload).await.unwrap();
            app_client.shutdown().await.unwrap();
            app_client
        }
    });
    let mut got = Vec::new();
    app_server.read_to_end(&mut got).await.unwrap();
    let mut app_client = writer.await.unwrap();
    assert!(got == payload, "the bytes arrive whole and in order");
    assert_eq!(outbound_counters.get(), (TUNNELLED as u64, 0));
    assert_eq!(inbound_counters.get(), (TUNNELLED as u64, 0));

    let reply: Vec<u8> = payload.iter().rev().copied().collect();
    let writer = tokio::spawn(async move {
        app_server.write_all(&reply).await.unwrap();
        app_server.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    app_client.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert!(
        back.iter().eq(payload.iter().rev()),
        "the reply arrives whole"
    );

    outbound.await.unwrap().unwrap();
    assert!(done_rx.await.unwrap(), "the inbound relay ended cleanly");
    let both = (TUNNELLED as u64, TUNNELLED as u64);
    assert_eq!(outbound_counters.get(), both);
    assert_eq!(inbound_counters.get(), both);
}

fn poll_once(source: &mut TcpSource<'_>) -> Poll<Option<usize>> {
    let mut cx = Context::from_waker(Waker::noop());
    source
        .poll_chunk(&mut cx)
        .map(|r| r.unwrap().map(|chunk| chunk.len()))
}

/// A TCP source holds no buffer while nothing is to be read, starts small, grows while reads
/// fill it (up to the frame-sized maximum) and shrinks back.
#[tokio::test]
async fn read_buffer_is_released_when_idle_and_sized_by_the_reads() {
    let (mut writer, mut reader) = pair().await;
    let mut source = TcpSource::new(reader.split().0);
    assert_eq!(poll_once(&mut source), Poll::Pending);
    assert_eq!(source.held(), 0, "idle: no buffer");

    writer.write_all(&vec![1u8; 4 * MAX_READ]).await.unwrap();
    let mut sizes = Vec::new();
    let mut total = 0;
    while total < 4 * MAX_READ {
        match poll_once(&mut source) {
            Poll::Ready(Some(n)) => {
                sizes.push(n);
                total += n;
            }
            Poll::Ready(None) => panic!("early end"),
            Poll::Pending => tokio::task::yield_now().await,
        }
    }
    assert!(sizes[0] <= 4096, "the first read is small: {sizes:?}");
    assert!(
        sizes.contains(&MAX_READ) && sizes.iter().all(|&n| n <= MAX_READ),
        "reads grow for bulk, up to the maximum: {sizes:?}"
    );
    assert_eq!(poll_once(&mut source), Poll::Pending);
    assert_eq!(source.held(), 0, "idle again: the buffer is given back");

    drop(writer);
    loop {
        match poll_once(&mut source) {
            Poll::Ready(None) => break,
            Poll::Ready(Some(n)) => panic!("{n} unexpected bytes"),
            Poll::Pending => tokio::task::yield_now().await,
        }
    }
}
