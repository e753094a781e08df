//! The bodies the proxy wraps: a request body that counts its bytes ([`Counted`]) and a
//! response body that records its request's outcome when it ends ([`Recording`]).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use marrow_mesh::telemetry::{ResponseFlag, grpc_status};

use crate::balance::ActiveRequest;
use crate::body::BoxError;
use crate::context::Context;
use crate::outcome::RequestOutcome;
use crate::record::record;

/// A request body counting its bytes.
pub(super) struct Counted {
    pub(super) inner: Incoming,
    pub(super) count: Arc<AtomicU64>,
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that records its request's outcome when it ends: at its last frame, on an
/// upstream error (UC), or when dropped unfinished because the client went away (DC).
pub(super) struct Recording {
    pub(super) ctx: Arc<Context>,
    pub(super) inner: Incoming,
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

impl HttpBody for Recording {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
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
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        if self.outcome.is_some() {
            // An empty body may be dropped without a poll once hyper knows it is empty.
            let flag = (!self.inner.is_end_stream()).then_some(ResponseFlag::DownstreamTermination);
            self.finish(flag);
        }
    }
}
