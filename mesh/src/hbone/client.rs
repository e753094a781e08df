//! The client half: one HTTP/2 connection to a peer's HBONE port, many CONNECT streams.

use bytes::Bytes;
use h2::client::SendRequest;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;

use super::{
    CONNECTION_WINDOW, ConnectRequest, H2Stream, HboneError, MAX_FRAME, MAX_HEADER_LIST,
    STREAM_WINDOW,
};

/// An HTTP/2 connection to a peer, driven by a background task.
#[derive(Debug)]
pub struct HboneClient {
    send: SendRequest<Bytes>,
    driver: JoinHandle<()>,
}

impl HboneClient {
    /// Performs the HTTP/2 handshake on an established (TLS) transport.
    pub async fn handshake<T>(io: T) -> Result<Self, HboneError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME)
            .max_header_list_size(MAX_HEADER_LIST)
            .handshake::<_, Bytes>(io)
            .await?;
        let driver = tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "hbone client connection ended");
            }
        });
        Ok(Self { send, driver })
    }

    /// Opens a tunnel: sends the CONNECT and waits for the answer; 200 yields the stream.
    pub async fn connect(&self, request: &ConnectRequest) -> Result<H2Stream, HboneError> {
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(request.to_http()?, false)?;
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            return Err(HboneError::Refused(response.status()));
        }
        Ok(H2Stream::new(stream, response.into_body()))
    }

    /// Has the connection ended (peer gone, GOAWAY, or error)?
    pub fn is_closed(&self) -> bool {
        self.driver.is_finished()
    }

    /// How many streams the peer lets us open at once.
    pub fn max_streams(&self) -> usize {
        self.send.current_max_send_streams()
    }
}

impl Drop for HboneClient {
    fn drop(&mut self) {
        // Streams already handed out keep the connection alive through h2's shared state;
        // once the last is gone the driver ends. Aborting here would cut them.
    }
}
