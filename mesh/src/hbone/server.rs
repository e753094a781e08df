//! The server half: accepts CONNECT streams on one HTTP/2 connection and hands each, validated,
//! to the caller, who accepts it (200) or refuses it (400/401/503).

use std::future::Future;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{
    CONNECTION_WINDOW, ConnectTarget, H2Stream, HboneError, MAX_FRAME, MAX_HEADER_LIST, Refusal,
    STREAM_WINDOW, TransportFailure, parse_connect,
};

/// A validated CONNECT waiting for the caller's decision.
pub struct IncomingConnect {
    /// Target and metadata.
    pub target: ConnectTarget,
    respond: SendResponse<Bytes>,
    body: RecvStream,
}

impl std::fmt::Debug for IncomingConnect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncomingConnect")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl IncomingConnect {
    /// Answers 200 and returns the tunnel.
    pub fn accept(mut self) -> Result<H2Stream, HboneError> {
        let response = http::Response::builder()
            .status(http::StatusCode::OK)
            .body(())?;
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.body))
    }

    /// Answers with the refusal's status and ends the stream.
    pub fn refuse(mut self, refusal: Refusal) {
        respond_status(&mut self.respond, refusal);
    }
}

fn respond_status(respond: &mut SendResponse<Bytes>, refusal: Refusal) {
    if let Ok(response) = http::Response::builder().status(refusal.status()).body(()) {
        let _ = respond.send_response(response, true);
    }
}

/// Serves one HTTP/2 connection until the peer closes it: every well-formed CONNECT is passed
/// to `on_connect` on its own task; malformed requests are answered 400 here. A peer that does
/// not complete the HTTP/2 handshake (preface and settings) within `handshake_timeout` is
/// dropped. When `shutdown` completes (the proxy drains), the peer gets a GOAWAY and the
/// connection ends once its open streams have.
pub async fn serve<T, F, Fut, S>(
    io: T,
    handshake_timeout: std::time::Duration,
    shutdown: S,
    on_connect: F,
) -> Result<(), HboneError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    F: Fn(IncomingConnect) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
    S: Future<Output = ()>,
{
    let connection = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .handshake::<_, Bytes>(io);
    let mut connection = tokio::time::timeout(handshake_timeout, connection)
        .await
        .map_err(|_| HboneError::Transport {
            failure: TransportFailure::HandshakeTimeout,
            step: "http/2 handshake".into(),
            source: std::io::ErrorKind::TimedOut.into(),
        })??;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut going_away = false;
    loop {
        // poll_fn rather than select!: this future lives as long as the connection, once per
        // HBONE connection, so its size counts (see proxy's per_connection_futures_stay_small).
        let accepted = std::future::poll_fn(|cx| {
            if !going_away && shutdown.as_mut().poll(cx).is_ready() {
                // GOAWAY: the peer opens no new stream here (its pool dials a fresh
                // connection, to whichever proxy now serves the pod); streams in flight go on
                // and accept returns None once they are done.
                tracing::debug!("draining: sending GOAWAY");
                connection.graceful_shutdown();
                going_away = true;
            }
            connection.poll_accept(cx)
        })
        .await;
        let Some(accepted) = accepted else { break };
        let (request, mut respond) = accepted?;
        match parse_connect(&request) {
            Ok(target) => {
                let incoming = IncomingConnect {
                    target,
                    respond,
                    body: request.into_body(),
                };
                tokio::spawn(on_connect(incoming));
            }
            Err(reason) => {
                tracing::info!(%reason, "malformed hbone request; answering 400");
                respond_status(&mut respond, Refusal::BadRequest);
            }
        }
    }
    Ok(())
}
