//! A measurement, not a test of behaviour (ignored; run it by hand in a release build):
//! `cargo test --release -p node-proxy --lib relay::loopback -- --ignored --nocapture`.
//!
//! The relays on loopback, in one process: an app client sends through an outbound relay (TCP
//! to an HBONE stream), HTTP/2 in mutual TLS over loopback TCP, an inbound relay (HBONE stream
//! to TCP), to a sink; and 1-byte round trips the same way; then the same for a TCP to TCP
//! relay. Each figure is taken with this module's relay and with the copy loop it replaced
//! (`old_copy_both_ways`, kept here only for the comparison), in A B B A order. The apps run
//! on plain threads, the relays on a two-worker runtime (the node proxy's default).

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_mesh::hbone::{self, Baggage, ConnectRequest, Forwarded, HboneClient, TraceParent};
use marrow_mesh::identity::{LocalCa, LocalCaOptions, SpiffeId, TrustDomain, create_ca};
use marrow_mesh::tls::{self, KeyExchange};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Relay {
    /// The copy loop this module replaced.
    Old,
    /// This module's.
    New(TcpCopy),
}

/// The replaced relay: a 2 KiB buffer per direction growing ×4 to 64 KiB, over `AsyncRead` /
/// `AsyncWrite` (so every write to HTTP/2 was copied into a new `Bytes`).
async fn old_copy_both_ways<C, U>(client: C, upstream: U)
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    async fn half<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(r: &mut R, w: &mut W) {
        let mut buf = vec![0u8; 2048];
        loop {
            let n = r.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                let _ = w.shutdown().await;
                return;
            }
            if w.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if n == buf.len() && buf.len() < 64 * 1024 {
                buf.resize((buf.len() * 4).min(64 * 1024), 0);
            }
        }
    }
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut ur, mut uw) = tokio::io::split(upstream);
    tokio::join!(half(&mut cr, &mut uw), half(&mut ur, &mut cw));
}

async fn run<
    C: Endpoint + AsyncRead + AsyncWrite + Unpin,
    U: Endpoint + AsyncRead + AsyncWrite + Unpin,
>(
    relay: Relay,
    mut client: C,
    mut upstream: U,
) {
    match relay {
        Relay::Old => old_copy_both_ways(client, upstream).await,
        Relay::New(tcp) => {
            let counters = ByteCounters::default();
            let _ = copy_both_ways(&mut client, &mut upstream, &counters, tcp).await;
        }
    }
}

/// A listener whose accepted connections are relayed (through HBONE when `tunnel`) to
/// `app`; returns the address apps connect to.
async fn proxy_to(app: std::net::SocketAddr, relay: Relay, tunnel: bool) -> std::net::SocketAddr {
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = front.local_addr().unwrap();
    if !tunnel {
        tokio::spawn(async move {
            loop {
                let (client, _) = front.accept().await.unwrap();
                let _ = client.set_nodelay(true);
                tokio::spawn(async move {
                    let upstream = TcpStream::connect(app).await.unwrap();
                    let _ = upstream.set_nodelay(true);
                    run(relay, client, upstream).await;
                });
            }
        });
        return front_addr;
    }
    let dir = tempfile::tempdir().unwrap();
    let files = create_ca(
        dir.path(),
        &TrustDomain::default(),
        Duration::from_secs(600),
    )
    .unwrap();
    let ca = LocalCa::load(&files, TrustDomain::default(), LocalCaOptions::default()).unwrap();
    let server_id = SpiffeId::parse("spiffe://cluster.local/ns/b/sa/server").unwrap();
    let client_id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/client").unwrap();
    let server_config =
        tls::server_config(&ca.issue(&server_id).unwrap(), KeyExchange::default()).unwrap();
    let client_config = tls::client_config(
        &ca.issue(&client_id).unwrap(),
        server_id,
        KeyExchange::default(),
    )
    .unwrap();
    // The inbound proxy: HBONE in, TCP to the app.
    let hbone_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hbone_addr = hbone_listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = hbone_listener.accept().await.unwrap();
            let _ = tcp.set_nodelay(true);
            let config = server_config.clone();
            tokio::spawn(async move {
                let tls = tls::accept(config, tcp).await.unwrap();
                let _ = hbone::serve(
                    tls,
                    Duration::from_secs(5),
                    std::future::pending(),
                    move |incoming| async move {
                        let stream = incoming.accept().unwrap();
                        let upstream = TcpStream::connect(app).await.unwrap();
                        let _ = upstream.set_nodelay(true);
                        run(relay, stream, upstream).await;
                    },
                )
                .await;
            });
        }
    });
    // The outbound proxy: TCP in, one HBONE connection out, a stream per client.
    let tcp = TcpStream::connect(hbone_addr).await.unwrap();
    let _ = tcp.set_nodelay(true);
    let tls = tls::connect(client_config, hbone_addr.ip(), tcp)
        .await
        .unwrap();
    let h2 = Arc::new(HboneClient::handshake(tls).await.unwrap());
    tokio::spawn(async move {
        let _dir = dir;
        loop {
            let (client, _) = front.accept().await.unwrap();
            let _ = client.set_nodelay(true);
            let h2 = h2.clone();
            tokio::spawn(async move {
                let request = ConnectRequest {
                    authority: app,
                    forwarded: Forwarded::default(),
                    baggage: Baggage::default(),
                    traceparent: TraceParent::random(),
                };
                let stream = h2.connect(&request).await.unwrap();
                run(relay, client, stream).await;
            });
        }
    });
    front_addr
}

/// CPU seconds this process used so far (user + system, every thread).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

const BULK: usize = 2 << 30;
const ROUND_TRIPS: usize = 20_000;

/// (Gbit/s, CPU-s per GB of the whole process, p50 µs, p99 µs)
fn measure(rt: &tokio::runtime::Runtime, relay: Relay, tunnel: bool) -> (f64, f64, f64, f64) {
    // The sink: reads to the end, then answers 1-byte round trips (an echo).
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let app = sink.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in sink.incoming() {
            let mut conn = conn.unwrap();
            conn.set_nodelay(true).unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) if n == 1 && buf[0] == b'p' => {
                            let _ = conn.write_all(b"p");
                        }
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    let front = rt.block_on(proxy_to(app, relay, tunnel));
    // Bulk.
    let mut conn = std::net::TcpStream::connect(front).unwrap();
    conn.set_nodelay(true).unwrap();
    let chunk = vec![0x55u8; 256 * 1024];
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut sent = 0;
    while sent < BULK {
        conn.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let gb = BULK as f64 / 1e9;
    // Round trips.
    let mut conn = std::net::TcpStream::connect(front).unwrap();
    conn.set_nodelay(true).unwrap();
    let mut times = Vec::with_capacity(ROUND_TRIPS);
    let mut one = [0u8; 1];
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        conn.write_all(b"p").unwrap();
        conn.read_exact(&mut one).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    (gb * 8.0 / secs, cpu / gb, pct(0.5), pct(0.99))
}

#[test]
#[ignore = "a measurement: run by hand in a release build"]
fn relay_loopback_figures() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average before: {}", load.trim());
    let old = Relay::Old;
    let (splice, buffer) = (Relay::New(TcpCopy::Splice), Relay::New(TcpCopy::Buffer));
    // A B B A (A B C C B A); `RELAY_LOOPBACK=old|new` runs one HBONE figure only (to profile).
    let runs: Vec<(&str, bool, Relay)> = match std::env::var("RELAY_LOOPBACK").as_deref() {
        Ok("old") => vec![("hbone", true, old)],
        Ok("new") => vec![("hbone", true, splice)],
        _ => [old, splice, splice, old]
            .into_iter()
            .map(|r| ("hbone", true, r))
            .chain(
                [old, buffer, splice, splice, buffer, old]
                    .into_iter()
                    .map(|r| ("tcp", false, r)),
            )
            .collect(),
    };
    for (name, tunnel, relay) in runs {
        let (gbps, cpu, p50, p99) = measure(&rt, relay, tunnel);
        println!(
            "{name:<6} {:<7} {gbps:>6.2} Gbit/s {cpu:>5.2} CPU-s/GB  p50 {p50:>6.1} us  p99 {p99:>6.1} us",
            match relay {
                Relay::Old => "old",
                Relay::New(TcpCopy::Splice) => "splice",
                Relay::New(TcpCopy::Buffer) => "buffer",
            }
        );
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average after: {}", load.trim());
}
