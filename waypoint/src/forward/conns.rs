//! The upstream HTTP connections of one client tunnel: HTTP/1.1 ones pooled per endpoint while
//! idle, one HTTP/2 one per endpoint carrying every request; each over a pooled HBONE tunnel
//! that carries the client's `forwarded`/`baggage`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::PoisonError;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use marrow_mesh::telemetry::ResponseFlag;

use super::Downstream;
use crate::body::Body;
use crate::upstream::UpstreamError;

/// HTTP/1.1 upstream connections kept per endpoint and client tunnel.
const MAX_H1_PER_ENDPOINT: usize = 16;

/// Upstream HTTP connections of one tunnel, by endpoint.
#[derive(Default)]
pub(super) struct Conns {
    pub(super) h1: HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>,
    pub(super) h2: HashMap<SocketAddr, http2::SendRequest<Body>>,
}

impl Downstream {
    /// Sends `req` to `endpoint` on a pooled or new upstream connection.
    pub(super) async fn send(
        &self,
        endpoint: SocketAddr,
        use_h2: bool,
        upgrade: bool,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, (String, ResponseFlag)> {
        let failed = |e: UpstreamError| (e.to_string(), e.flag());
        // The causes too: an HTTP/2 stream refused (REFUSED_STREAM) says so only in them.
        let terminated = |e: hyper::Error| (with_causes(&e), ResponseFlag::UpstreamTermination);
        if use_h2 {
            let mut sender = match self.idle_h2(endpoint) {
                Some(sender) => sender,
                None => {
                    let sender = self.open_h2(endpoint).await.map_err(failed)?;
                    self.lock().h2.insert(endpoint, sender.clone());
                    sender
                }
            };
            return sender.send_request(req).await.map_err(terminated);
        }
        let mut sender = match self.idle_h1(endpoint) {
            Some(sender) => sender,
            None => self.open_h1(endpoint).await.map_err(failed)?,
        };
        let response = sender.send_request(req);
        // Back to the pool at once: it reports ready again only once this response is read.
        // A switched connection belongs to the upgrade and never comes back.
        if !upgrade {
            let mut conns = self.lock();
            let list = conns.h1.entry(endpoint).or_default();
            // A burst of HTTP/2 client streams over HTTP/1 upstream opens one connection per
            // stream; only so many are kept for reuse afterwards.
            if list.len() < MAX_H1_PER_ENDPOINT {
                list.push(sender);
            }
        }
        response.await.map_err(terminated)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conns> {
        // Each critical section leaves the map consistent.
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn idle_h1(&self, endpoint: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut conns = self.lock();
        let list = conns.h1.get_mut(&endpoint)?;
        list.retain(|s| !s.is_closed());
        let ready = list.iter().position(http1::SendRequest::is_ready)?;
        Some(list.swap_remove(ready))
    }

    fn idle_h2(&self, endpoint: SocketAddr) -> Option<http2::SendRequest<Body>> {
        let mut conns = self.lock();
        match conns.h2.get(&endpoint) {
            Some(sender) if !sender.is_closed() => Some(sender.clone()),
            Some(_) => {
                conns.h2.remove(&endpoint);
                None
            }
            None => None,
        }
    }

    async fn open_h1(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let stream = self.tunnel(endpoint).await?;
        let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Http { endpoint, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.with_upgrades().await {
                tracing::debug!(%error, %endpoint, "upstream http/1 connection ended");
            }
        });
        sender
            .ready()
            .await
            .map_err(|source| UpstreamError::Http { endpoint, source })?;
        Ok(sender)
    }

    async fn open_h2(
        &self,
        endpoint: SocketAddr,
    ) -> Result<http2::SendRequest<Body>, UpstreamError> {
        let stream = self.tunnel(endpoint).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| UpstreamError::Http { endpoint, source })?;
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::debug!(%error, %endpoint, "upstream http/2 connection ended");
            }
        });
        Ok(sender)
    }

    async fn tunnel(
        &self,
        endpoint: SocketAddr,
    ) -> Result<marrow_mesh::hbone::pool::PooledStream, UpstreamError> {
        let snap = self.ctx.state.snapshot();
        self.ctx
            .upstreams
            .tunnel(&snap, endpoint, &self.client, self.dest.service_host())
            .await
    }
}

/// An error's text followed by its causes', `: `-separated.
fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}
