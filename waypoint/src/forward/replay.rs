//! A request body that can be sent again: read once from the client, its frames kept (up to
//! [`crate::route::REPLAY_LIMIT`]) so a retry or a mirror replays them and then goes on reading
//! where the client is. Past the limit the kept frames are dropped and the body streams on,
//! no longer replayable (Envoy's retry buffer, router.cc).

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context as TaskContext, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};

/// What every reader of one request body shares.
struct Tape {
    /// The client's body, until it ends.
    inner: Body,
    /// The data frames read so far (while replayable).
    chunks: Vec<Bytes>,
    /// Bytes read so far.
    size: usize,
    limit: usize,
    /// The body ran past the limit, or failed: it cannot be sent again.
    spent: bool,
    /// The client's body ended.
    ended: bool,
    trailers: Option<HeaderMap>,
    hint: SizeHint,
}

/// One reader of a replayable body.
pub(super) struct Replay {
    tape: Arc<Mutex<Tape>>,
    /// The next kept frame this reader sends.
    pos: usize,
    trailers_sent: bool,
}

impl Replay {
    /// The first reader of `body`, keeping up to `limit` bytes for the next ones.
    pub(super) fn new(body: Body, limit: usize) -> Self {
        let hint = body.size_hint();
        let ended = body.is_end_stream();
        Self {
            tape: Arc::new(Mutex::new(Tape {
                inner: body,
                chunks: Vec::new(),
                size: 0,
                limit,
                spent: false,
                ended,
                trailers: None,
                hint,
            })),
            pos: 0,
            trailers_sent: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tape> {
        // Each critical section leaves the tape consistent.
        self.tape.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new reader from the start; `None` once the body cannot be sent again.
    pub(super) fn again(&self) -> Option<Self> {
        (!self.lock().spent).then(|| Self {
            tape: self.tape.clone(),
            pos: 0,
            trailers_sent: false,
        })
    }

    /// The whole body, once the client sent all of it within the limit (what a mirror sends).
    pub(super) fn complete(&self) -> Option<Bytes> {
        let tape = self.lock();
        if tape.spent || !tape.ended {
            return None;
        }
        let mut whole = BytesMut::with_capacity(tape.size);
        for chunk in &tape.chunks {
            whole.extend_from_slice(chunk);
        }
        Some(whole.freeze())
    }
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let tape = this.tape.clone();
        let mut tape = tape.lock().unwrap_or_else(PoisonError::into_inner);
        if !tape.spent && this.pos < tape.chunks.len() {
            this.pos += 1;
            return Poll::Ready(Some(Ok(Frame::data(tape.chunks[this.pos - 1].clone()))));
        }
        if tape.ended {
            if !this.trailers_sent
                && let Some(trailers) = tape.trailers.clone()
            {
                this.trailers_sent = true;
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut tape.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    tape.size += data.len();
                    if tape.spent {
                    } else if tape.size > tape.limit {
                        tape.spent = true;
                        tape.chunks = Vec::new();
                    } else {
                        tape.chunks.push(data.clone());
                        this.pos += 1;
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    tape.trailers = Some(trailers.clone());
                    this.trailers_sent = true;
                }
            }
            Poll::Ready(None) => tape.ended = true,
            Poll::Ready(Some(Err(_))) => tape.spent = true,
            Poll::Pending => {}
        }
        // A body that knows it is done is not polled again (hyper stops at `is_end_stream`).
        if tape.inner.is_end_stream() {
            tape.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let tape = self.lock();
        tape.ended
            && (tape.spent || self.pos >= tape.chunks.len())
            && (self.trailers_sent || tape.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.lock().hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_body_within_the_limit_replays() {
        let first = Replay::new(full(Bytes::from_static(b"hello")), 16);
        let second = first.again().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(second.complete().as_deref(), Some(&b"hello"[..]));
        assert_eq!(second.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn a_retry_reader_goes_on_where_the_client_is() {
        let first = Replay::new(full(Bytes::from_static(b"hello")), 16);
        // The first try failed before reading the body: the retry reads it from the client.
        let second = first.again().unwrap();
        drop(first);
        assert_eq!(second.collect().await.unwrap().to_bytes(), "hello");
    }

    #[tokio::test]
    async fn past_the_limit_it_streams_once() {
        let first = Replay::new(full(Bytes::from_static(b"too long for it")), 4);
        let probe = first.again().unwrap();
        assert_eq!(first.collect().await.unwrap().to_bytes(), "too long for it");
        assert!(probe.again().is_none(), "no second reader");
        assert!(probe.complete().is_none(), "nothing to mirror");
    }
}
