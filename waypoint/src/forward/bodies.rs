//! The bodies the proxy wraps: hyper's bodies read through a [`Watch`] ([`Watched`]) — a
//! request body that counts its bytes and holds them to the body limit ([`Counted`]), a
//! response body that records its request's outcome when it ends ([`Recording`]) — and our
//! answer, which tells the tunnel's watch when hyper is done with it ([`Answered`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use marrow_mesh::telemetry::{ResponseFlag, grpc_status};

use crate::balance::ActiveRequest;
use crate::body::{Body, BoxError};
use crate::context::Context;
use crate::guard_io::ConnWatch;
use crate::outcome::RequestOutcome;
use crate::record::record;

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The client sent more than `--max-request-body-bytes`.
    #[error("request body over the limit of {limit} bytes (--max-request-body-bytes)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
}

/// What a wrapped body does with each poll's result and when it is dropped; the wrapping
/// itself ([`Watched`]) is written once for the three bodies.
pub(super) trait Watch: Send + Unpin + 'static {
    /// Sees a poll's result; an error returned ends the body with it instead.
    fn polled(&mut self, polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>)
    -> Option<BoxError>;

    /// The body is dropped; `ended`: the inner body had ended.
    fn dropped(&mut self, _ended: bool) {}
}

/// `inner` (the client's or the endpoint's body), read through `watch`: frames, end and size
/// hint pass through unchanged.
pub(super) struct Watched<W: Watch> {
    pub(super) inner: Incoming,
    pub(super) watch: W,
}

impl<W: Watch> HttpBody for Watched<W> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx).map_err(Into::into);
        match this.watch.polled(&polled) {
            Some(error) => Poll::Ready(Some(Err(error))),
            None => polled,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<W: Watch> Drop for Watched<W> {
    fn drop(&mut self) {
        self.watch.dropped(self.inner.is_end_stream());
    }
}

/// A request body's watch: counts its bytes; past `limit` it ends the body with
/// [`BodyError::TooLarge`], so the upstream request fails (HTTP/1: its connection closes;
/// HTTP/2: its stream is reset).
pub(super) struct Counted {
    pub(super) count: Arc<AtomicU64>,
    pub(super) limit: u64,
}

impl Watch for Counted {
    fn polled(
        &mut self,
        polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>,
    ) -> Option<BoxError> {
        if let Poll::Ready(Some(Ok(frame))) = polled
            && let Some(data) = frame.data_ref()
        {
            let len = data.len() as u64;
            let total = self.count.fetch_add(len, Ordering::Relaxed) + len;
            if total > self.limit {
                let limit = self.limit;
                return Some(BodyError::TooLarge { limit }.into());
            }
        }
        None
    }
}

/// A response body's watch that records its request's outcome when it ends: at its last
/// frame, on an upstream error (UC), or when dropped unfinished because the client went away
/// (DC).
pub(super) struct Recording {
    pub(super) ctx: Arc<Context>,
    pub(super) outcome: Option<RequestOutcome>,
    pub(super) bytes_in: Arc<AtomicU64>,
    pub(super) bytes_out: u64,
    pub(super) _active: ActiveRequest,
}

impl Recording {
    fn finish(&mut self, flag: Option<ResponseFlag>) {
        if let Some(mut outcome) = self.outcome.take() {
            outcome.bytes_in = self.bytes_in.load(Ordering::Relaxed);
            outcome.bytes_out = self.bytes_out;
            if outcome.flag.is_none() {
                outcome.flag = flag;
            }
            record(&self.ctx, outcome);
        }
    }
}

impl Watch for Recording {
    fn polled(
        &mut self,
        polled: &Poll<Option<Result<Frame<Bytes>, BoxError>>>,
    ) -> Option<BoxError> {
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes_out += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(status) = grpc_status(trailers)
                    && let Some(outcome) = self.outcome.as_mut()
                {
                    outcome.grpc_status = Some(status);
                }
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Ready(Some(Err(_))) => self.finish(Some(ResponseFlag::UpstreamTermination)),
            Poll::Pending => {}
        }
        None
    }

    fn dropped(&mut self, ended: bool) {
        if self.outcome.is_some() {
            // An empty body may be dropped without a poll once hyper knows it is empty.
            let flag = (!ended).then_some(ResponseFlag::DownstreamTermination);
            self.finish(flag);
        }
    }
}

/// A response body that counts, when hyper drops it, one more answered request on the tunnel's
/// [`ConnWatch`] (which must not write a 408 while a response is on its way).
pub(super) struct Answered {
    pub(super) inner: Body,
    pub(super) watch: Arc<ConnWatch>,
}

impl HttpBody for Answered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Answered {
    fn drop(&mut self) {
        self.watch.answered();
    }
}
