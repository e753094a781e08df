//! The HTTP echo app of the loopback mesh's pods, and the log of what the apps got.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Tasks, local};

/// One request an echo app got: the app's address, the `Host`/`:authority`, the path.
#[derive(Clone, Debug)]
pub struct Served {
    pub app: SocketAddr,
    pub authority: String,
    pub path: String,
}

/// Every request the echo apps got.
pub type ServedLog = Arc<Mutex<Vec<Served>>>;

type EchoBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The echo app: HTTP/1.1 and h2 (by preface).
///
/// - any path: 200, the request body back; headers `x-served-by` (the app's address),
///   `x-echo-method`, `x-echo-path` (with the query), `x-echo-traceparent`,
///   `x-echo-request-id`, `x-echo-xff`, `x-echo-forwarded`, `x-echo-version`;
/// - `/slow`: the same after 300 ms;
/// - `/grpc`: a gRPC-style stream of 3 messages 50 ms apart, then trailers `grpc-status: 0`;
/// - `/ws` with `Upgrade: websocket`: 101, then every byte echoed;
/// - on demand, by request header: `x-fail-on: <app addr>|all` answers `x-fail-status`
///   (default 503) there, or with `x-fail-grpc: <code>` a trailers-only gRPC answer of
///   that status; `x-slow-on: <app addr>|all` answers after 300 ms there; request
///   headers `x-t-*` come back in `x-echo-headers` (`name=value;…`, sorted).
///
/// Every request is logged in `served`.
pub(super) async fn serve_echo(addr: SocketAddr, tasks: &Tasks, served: &ServedLog) {
    let listener = TcpListener::bind(local(addr)).await.unwrap();
    let served = served.clone();
    tasks.spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let served = served.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req| echo(addr, req, served.clone()));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
}

async fn echo(
    addr: SocketAddr,
    mut req: Request<Incoming>,
    served: ServedLog,
) -> Result<Response<EchoBody>, Infallible> {
    let here = |name: &str| {
        req.headers().get(name).is_some_and(|v| {
            v.to_str()
                .unwrap_or_default()
                .split(',')
                .any(|a| a.trim() == "all" || a.trim() == addr.to_string())
        })
    };
    let (fail, slow) = (here("x-fail-on"), here("x-slow-on"));
    let mut echoed: Vec<String> = req
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-t-"))
        .map(|(name, value)| format!("{name}={}", value.to_str().unwrap_or_default()))
        .collect();
    echoed.sort();
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| {
            req.headers()
                .get("host")
                .map(|h| h.to_str().unwrap_or_default().to_owned())
        })
        .unwrap_or_default();
    served.lock().unwrap().push(Served {
        app: addr,
        authority,
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_owned(),
    });
    if slow {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if fail && let Some(code) = req.headers().get("x-fail-grpc").cloned() {
        // A trailers-only gRPC answer: HTTP 200, the status in the head.
        return Ok(Response::builder()
            .header("x-served-by", addr.to_string())
            .header("content-type", "application/grpc")
            .header("grpc-status", code)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    if fail {
        let status = req
            .headers()
            .get("x-fail-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(503u16);
        return Ok(Response::builder()
            .status(status)
            .header("x-served-by", addr.to_string())
            .body(Full::new(Bytes::from_static(b"failing on demand")).boxed())
            .unwrap());
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .unwrap_or_default()
    };
    let (xff, forwarded) = (header("x-forwarded-for"), header("forwarded"));
    let (traceparent, request_id) = (header("traceparent"), header("x-request-id"));
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let version = format!("{:?}", req.version());
    let mut builder = Response::builder()
        .header("x-served-by", addr.to_string())
        .header("x-echo-method", &method)
        .header("x-echo-path", &path)
        .header("x-echo-xff", xff)
        .header("x-echo-forwarded", forwarded)
        .header("x-echo-traceparent", traceparent)
        .header("x-echo-request-id", request_id)
        .header("x-echo-version", version)
        .header("x-echo-headers", echoed.join(";"));
    if path == "/ws" {
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        return Ok(builder
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap());
    }
    if path == "/grpc" {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
        tokio::spawn(async move {
            for i in 0..3u8 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                // A length-prefixed gRPC message of one byte.
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from(vec![0, 0, 0, 0, 1, i]))))
                    .await;
            }
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "done".parse().unwrap());
            let _ = tx.send(Ok(Frame::trailers(trailers))).await;
        });
        let stream = tokio_stream_from(rx);
        builder = builder.header("content-type", "application/grpc");
        return Ok(builder.body(StreamBody::new(stream).boxed()).unwrap());
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(builder.body(Full::new(body).boxed()).unwrap())
}

/// A receiver as a stream of frames.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
