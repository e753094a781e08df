//! Pooled HBONE connections, keyed by (source identity, destination pod address): tunnels
//! from the same workload to the same pod share an HTTP/2 connection; a new one opens when
//! every pooled connection is at its stream limit; connections idle longer than the timeout
//! are closed. With reuse off ([`PoolSettings::reuse`]) every tunnel gets a connection of its
//! own, closed when the tunnel ends (what ztunnel does with POOL_MAX_STREAMS_PER_CONNECTION=1,
//! src/proxy/h2/client.rs `will_be_at_max_streamcount`): it measures brand-new mTLS connections.
//!
//! The pool knows nothing of TLS or namespaces: a [`Connector`] makes connections, with the
//! [`Connector::Credential`] the caller already holds (the node proxy's: the source workload's
//! certificate, looked up once per connection), handed through untouched.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{ConnectRequest, H2Stream, HboneClient, HboneError};
use crate::identity::SpiffeId;

/// What a pooled connection is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The source workload's identity (the client certificate).
    pub source: SpiffeId,
    /// The destination pod's HBONE address (`pod_ip:15008`).
    pub destination: SocketAddr,
    /// The identity the destination must present: a pod address re-used by another workload
    /// gets a new connection.
    pub server: SpiffeId,
    /// The client certificate's not-after (Unix seconds): after a renewal, new tunnels get a
    /// new connection with the new certificate while the old one drains.
    pub certificate_epoch: u64,
}

/// Makes a new HBONE connection for a key (TCP from the source pod, TLS, HTTP/2 handshake).
pub trait Connector: Send + Sync + 'static {
    /// What a tunnel's caller already holds and a new connection needs (a workload
    /// certificate), so the connector need not look it up again; it must match the key's
    /// source (and `certificate_epoch`).
    type Credential: Send + Sync;

    /// Connects for `key` with `credential`.
    fn connect(
        &self,
        key: &PoolKey,
        credential: &Self::Credential,
    ) -> Pin<Box<dyn Future<Output = Result<HboneClient, HboneError>> + Send + '_>>;
}

/// Pool settings.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Most streams opened on one connection (the peer's limit applies too).
    pub max_streams: usize,
    /// Connections without streams for this long are closed.
    pub idle_timeout: Duration,
    /// Whether a connection carries more than one tunnel. Off, each tunnel dials its own
    /// connection (TCP, TLS, HTTP/2 handshakes), which is never pooled and closes with it.
    pub reuse: bool,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_streams: 100,
            idle_timeout: Duration::from_secs(60),
            reuse: true,
        }
    }
}

struct Pooled {
    client: HboneClient,
    /// Set when the connection refused a new stream (GOAWAY): it carries its open streams to
    /// their end but gets no new ones.
    retired: AtomicBool,
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Pooled {
    fn has_room(&self, cap: usize) -> bool {
        !self.client.is_closed()
            && !self.retired.load(Ordering::Acquire)
            && self.active.load(Ordering::Acquire) < cap.min(self.client.max_streams().max(1))
    }
}

/// The pool, over one kind of connector.
pub struct Pool<C: Connector> {
    connector: Arc<C>,
    settings: PoolSettings,
    conns: Mutex<HashMap<PoolKey, Vec<Arc<Pooled>>>>,
    /// Serialises connection set-up per key, so a burst opens one connection, not one per
    /// tunnel.
    dialing: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
}

impl<C: Connector> Pool<C> {
    /// A pool over `connector`; call [`Pool::run_reaper`] to close idle connections.
    pub fn new(connector: Arc<C>, settings: PoolSettings) -> Arc<Self> {
        Arc::new(Self {
            connector,
            settings,
            conns: Mutex::new(HashMap::new()),
            dialing: Mutex::new(HashMap::new()),
        })
    }

    /// Opens a tunnel for `key`, on a pooled connection with room or on a new one (made with
    /// `credential`).
    pub async fn tunnel(
        &self,
        key: &PoolKey,
        credential: &C::Credential,
        request: &ConnectRequest,
    ) -> Result<PooledStream, HboneError> {
        let mut retried = false;
        loop {
            let conn = if !self.settings.reuse {
                self.dial_unpooled(key, credential).await?
            } else {
                match self.checkout(key) {
                    Some(conn) => conn,
                    None => self.dial(key, credential).await?,
                }
            };
            let guard = StreamGuard { conn: conn.clone() };
            match conn.client.connect(request).await {
                Ok(stream) => {
                    return Ok(PooledStream {
                        stream,
                        _guard: guard,
                    });
                }
                // The connection failed at the HTTP/2 layer before the tunnel existed: most
                // often the peer proxy sent GOAWAY (it is draining, e.g. replaced by an
                // upgrade) and refuses new streams. Nothing of the client's bytes was sent, so
                // one retry on a fresh connection is safe; this one takes no more streams.
                Err(HboneError::H2(error)) if !retried => {
                    tracing::debug!(%error, destination = %key.destination, "hbone connection refused a new stream; retrying on a new connection");
                    conn.retired.store(true, Ordering::Release);
                    retried = true;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// A pooled connection with room, its stream count already taken.
    fn checkout(&self, key: &PoolKey) -> Option<Arc<Pooled>> {
        let mut conns = self.lock_conns();
        let list = conns.get_mut(key)?;
        list.retain(|c| !c.client.is_closed());
        let conn = list
            .iter()
            .find(|c| c.has_room(self.settings.max_streams))?
            .clone();
        conn.active.fetch_add(1, Ordering::AcqRel);
        Some(conn)
    }

    async fn dial(
        &self,
        key: &PoolKey,
        credential: &C::Credential,
    ) -> Result<Arc<Pooled>, HboneError> {
        let gate = {
            let mut dialing = self
                .dialing
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            dialing.entry(key.clone()).or_default().clone()
        };
        let _one_at_a_time = gate.lock().await;
        // Someone else may have dialled while we waited.
        if let Some(conn) = self.checkout(key) {
            return Ok(conn);
        }
        let client = self.connector.connect(key, credential).await?;
        let conn = Arc::new(Pooled {
            client,
            retired: AtomicBool::new(false),
            active: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        self.lock_conns()
            .entry(key.clone())
            .or_default()
            .push(conn.clone());
        Ok(conn)
    }

    /// A connection for one tunnel, outside the pool: dropped (and so closed) with the
    /// tunnel's [`StreamGuard`].
    async fn dial_unpooled(
        &self,
        key: &PoolKey,
        credential: &C::Credential,
    ) -> Result<Arc<Pooled>, HboneError> {
        let client = self.connector.connect(key, credential).await?;
        Ok(Arc::new(Pooled {
            client,
            retired: AtomicBool::new(true),
            active: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        }))
    }

    /// Closes connections idle for longer than the timeout; runs until the pool is dropped.
    pub async fn run_reaper(self: Arc<Self>) {
        let weak = Arc::downgrade(&self);
        let period = self.settings.idle_timeout / 2;
        drop(self);
        loop {
            tokio::time::sleep(period.max(Duration::from_millis(10))).await;
            let Some(pool) = weak.upgrade() else { return };
            pool.reap(Instant::now());
        }
    }

    /// Drops every connection without streams idle since before `now - idle_timeout`.
    pub fn reap(&self, now: Instant) {
        let timeout = self.settings.idle_timeout;
        let mut conns = self.lock_conns();
        for list in conns.values_mut() {
            list.retain(|c| {
                let idle = c.active.load(Ordering::Acquire) == 0
                    && now.duration_since(
                        *c.idle_since
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner),
                    ) >= timeout;
                let retired_and_unused =
                    c.retired.load(Ordering::Acquire) && c.active.load(Ordering::Acquire) == 0;
                !c.client.is_closed() && !idle && !retired_and_unused
            });
        }
        conns.retain(|_, list| !list.is_empty());
    }

    /// Open connections, for metrics and the admin API.
    pub fn connections(&self) -> usize {
        self.lock_conns().values().map(Vec::len).sum()
    }

    fn lock_conns(&self) -> std::sync::MutexGuard<'_, HashMap<PoolKey, Vec<Arc<Pooled>>>> {
        // Every critical section leaves the map consistent, so poisoning is ignored.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Gives a stream's slot back to its connection when the tunnel ends.
struct StreamGuard {
    conn: Arc<Pooled>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.conn.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self
                .conn
                .idle_since
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
        }
    }
}

/// A tunnel on a pooled connection.
pub struct PooledStream {
    stream: H2Stream,
    _guard: StreamGuard,
}

impl std::fmt::Debug for PooledStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.stream.fmt(f)
    }
}

impl AsyncRead for PooledStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for PooledStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl PooledStream {
    /// The tunnel's receiving and sending half, for a relay that moves `Bytes` chunks (see
    /// [`H2Stream::split`]).
    pub fn split(&mut self) -> (super::H2Recv<'_>, super::H2Send<'_>) {
        self.stream.split()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hbone::{Baggage, Forwarded, IncomingConnect, TraceParent, serve};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const TEST_HANDSHAKE: Duration = Duration::from_secs(5);

    /// Plain-TCP connector to one server, counting dials; its credential is a number, the
    /// last one it dialled with kept.
    struct Counting {
        addr: SocketAddr,
        dials: AtomicUsize,
        credential: AtomicUsize,
    }

    impl Connector for Counting {
        type Credential = usize;

        fn connect(
            &self,
            _key: &PoolKey,
            credential: &usize,
        ) -> Pin<Box<dyn Future<Output = Result<HboneClient, HboneError>> + Send + '_>> {
            let credential = *credential;
            Box::pin(async move {
                self.dials.fetch_add(1, Ordering::SeqCst);
                self.credential.store(credential, Ordering::SeqCst);
                let io = TcpStream::connect(self.addr).await.map_err(|source| {
                    HboneError::Transport {
                        failure: crate::hbone::TransportFailure::Connect,
                        step: "connecting".into(),
                        source,
                    }
                })?;
                HboneClient::handshake(io).await
            })
        }
    }

    /// An HBONE echo server; returns its address and a counter of accepted connections.
    async fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
        echo_server_draining_first(tokio_util::sync::CancellationToken::new()).await
    }

    /// As [`echo_server`], but the first connection it accepts drains (GOAWAY) when `drain`
    /// is cancelled, as a proxy being replaced does.
    async fn echo_server_draining_first(
        drain: tokio_util::sync::CancellationToken,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (io, _) = listener.accept().await.unwrap();
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                let drain = drain.clone();
                let shutdown = async move {
                    if first {
                        drain.cancelled().await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::spawn(serve(
                    io,
                    TEST_HANDSHAKE,
                    shutdown,
                    |incoming: IncomingConnect| async move {
                        let mut t = incoming.accept().unwrap();
                        let mut buf = [0u8; 1024];
                        while let Ok(n) = t.read(&mut buf).await {
                            if n == 0 || t.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                        let _ = t.shutdown().await;
                    },
                ));
            }
        });
        (addr, accepted)
    }

    fn key(sa: &str) -> PoolKey {
        PoolKey {
            source: format!("spiffe://cluster.local/ns/shop/sa/{sa}")
                .parse()
                .unwrap(),
            destination: "10.0.0.2:15008".parse().unwrap(),
            server: "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap(),
            certificate_epoch: 1,
        }
    }

    fn req() -> ConnectRequest {
        ConnectRequest {
            authority: "10.0.0.2:8080".parse().unwrap(),
            forwarded: Forwarded {
                for_addr: Some("10.0.0.1:1234".parse().unwrap()),
                host: None,
            },
            baggage: Baggage::default(),
            traceparent: TraceParent::random(),
        }
    }

    async fn pool(settings: PoolSettings) -> (Arc<Pool<Counting>>, Arc<Counting>) {
        let (addr, _) = echo_server().await;
        let connector = Arc::new(Counting {
            addr,
            dials: AtomicUsize::new(0),
            credential: AtomicUsize::new(0),
        });
        (Pool::new(connector.clone(), settings), connector)
    }

    async fn ping(stream: &mut PooledStream) {
        stream.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        stream.read_exact(&mut b).await.unwrap();
    }

    #[tokio::test]
    async fn a_draining_peer_gets_no_new_streams_and_keeps_the_open_ones() {
        let drain = tokio_util::sync::CancellationToken::new();
        let (addr, _) = echo_server_draining_first(drain.clone()).await;
        let connector = Arc::new(Counting {
            addr,
            dials: AtomicUsize::new(0),
            credential: AtomicUsize::new(0),
        });
        let pool = Pool::new(connector.clone(), PoolSettings::default());
        let mut long_lived = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
        ping(&mut long_lived).await;
        drain.cancel();
        // Round trips on the open stream: the GOAWAY, sent before the echoes, has arrived.
        ping(&mut long_lived).await;
        ping(&mut long_lived).await;
        let mut fresh = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
        ping(&mut fresh).await;
        assert_eq!(
            connector.dials.load(Ordering::SeqCst),
            2,
            "the new stream went to a new connection"
        );
        ping(&mut long_lived).await;
        let mut again = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
        ping(&mut again).await;
        assert_eq!(
            connector.dials.load(Ordering::SeqCst),
            2,
            "the draining connection is not checked out again"
        );
    }

    #[tokio::test]
    async fn sequential_tunnels_reuse_one_connection() {
        let (pool, connector) = pool(PoolSettings::default()).await;
        for _ in 0..5 {
            let mut t = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
            ping(&mut t).await;
        }
        assert_eq!(connector.dials.load(Ordering::SeqCst), 1);
        assert_eq!(pool.connections(), 1);
    }

    #[tokio::test]
    async fn a_new_connection_opens_at_the_stream_limit() {
        let (pool, connector) = pool(PoolSettings {
            max_streams: 2,
            ..PoolSettings::default()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..5 {
            let mut t = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
            ping(&mut t).await;
            held.push(t);
        }
        assert_eq!(
            connector.dials.load(Ordering::SeqCst),
            3,
            "2 + 2 + 1 streams"
        );
        drop(held);
        let mut t = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
        ping(&mut t).await;
        assert_eq!(
            connector.dials.load(Ordering::SeqCst),
            3,
            "freed slots are reused"
        );
    }

    #[tokio::test]
    async fn the_callers_credential_makes_a_new_connection_only() {
        let (pool, connector) = pool(PoolSettings::default()).await;
        let mut first = pool.tunnel(&key("a"), &7, &req()).await.unwrap();
        ping(&mut first).await;
        assert_eq!(connector.credential.load(Ordering::SeqCst), 7);
        // A pooled connection is reused as is: the next caller's credential is not used.
        let mut second = pool.tunnel(&key("a"), &8, &req()).await.unwrap();
        ping(&mut second).await;
        assert_eq!(connector.dials.load(Ordering::SeqCst), 1);
        assert_eq!(connector.credential.load(Ordering::SeqCst), 7);
        let mut other = pool.tunnel(&key("b"), &9, &req()).await.unwrap();
        ping(&mut other).await;
        assert_eq!(connector.credential.load(Ordering::SeqCst), 9);
    }

    #[tokio::test]
    async fn without_reuse_every_tunnel_dials_its_own_connection() {
        let (addr, accepted) = echo_server().await;
        let connector = Arc::new(Counting {
            addr,
            dials: AtomicUsize::new(0),
            credential: AtomicUsize::new(0),
        });
        let pool = Pool::new(
            connector.clone(),
            PoolSettings {
                reuse: false,
                ..PoolSettings::default()
            },
        );
        let mut first = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
        let mut second = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
        ping(&mut first).await;
        ping(&mut second).await;
        drop(first);
        let mut third = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
        ping(&mut third).await;
        assert_eq!(connector.dials.load(Ordering::SeqCst), 3, "one per tunnel");
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.connections(), 0, "nothing is pooled");
    }

    #[tokio::test]
    async fn sources_do_not_share_connections() {
        let (pool, connector) = pool(PoolSettings::default()).await;
        let mut a = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
        let mut b = pool.tunnel(&key("b"), &1, &req()).await.unwrap();
        ping(&mut a).await;
        ping(&mut b).await;
        assert_eq!(connector.dials.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_burst_dials_once() {
        let (pool, connector) = pool(PoolSettings::default()).await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move {
                    let mut t = pool.tunnel(&key("a"), &1, &req()).await.unwrap();
                    ping(&mut t).await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(connector.dials.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn idle_connections_are_reaped_busy_ones_kept() {
        let settings = PoolSettings {
            idle_timeout: Duration::from_secs(30),
            ..PoolSettings::default()
        };
        let (pool, _) = pool(settings).await;
        let mut busy = pool.tunnel(&key("busy"), &1, &req()).await.unwrap();
        ping(&mut busy).await;
        drop(pool.tunnel(&key("idle"), &1, &req()).await.unwrap());
        assert_eq!(pool.connections(), 2);
        pool.reap(Instant::now() + Duration::from_secs(31));
        assert_eq!(pool.connections(), 1, "only the idle one went");
        ping(&mut busy).await;
    }
}
