//! The node-local HTTP endpoints: `/metrics` (15020) and `/healthz/ready` (15021), and the
//! HTTP/1 server loop they and the admin API ([`crate::admin`], 15000) share, and the decoding of
//! query strings.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Whether the proxy is ready to serve; false while starting and while draining.
pub struct Readiness {
    ready: AtomicBool,
    detail: std::sync::Mutex<Vec<DetailSource>>,
}

/// Says what degrades a ready proxy (e.g. the API server is unreachable), or `None`.
pub type DetailSource = Box<dyn Fn() -> Option<String> + Send + Sync>;

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("ready", &self.is_ready())
            .finish_non_exhaustive()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            ready: AtomicBool::new(false),
            detail: std::sync::Mutex::new(Vec::new()),
        }
    }
}

impl Readiness {
    /// Marks the proxy ready or not.
    pub fn set(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Is the proxy ready?
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Adds `source`'s line to every readiness answer (the status code does not change: a
    /// proxy serving its last known state is still ready).
    pub fn add_detail(&self, source: DetailSource) {
        self.detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(source);
    }

    /// The detail lines now, joined by `; `, if any source has one.
    pub fn detail(&self) -> Option<String> {
        let lines: Vec<String> = self
            .detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|source| source())
            .collect();
        (!lines.is_empty()).then(|| lines.join("; "))
    }
}

/// Serves `/metrics` from `registry` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, registry: Arc<Registry>) {
    serve(listener, move |req| {
        if req.uri().path() != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "not found\n".into());
        }
        // Prometheus asks for OpenMetrics; anything else (curl, promtool, older scrapers)
        // gets the classic text format 0.0.4.
        let openmetrics = req
            .headers()
            .get_all(hyper::header::ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .any(|value| value.contains("application/openmetrics-text"));
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &registry) {
            Ok(()) => Response::builder()
                .header(
                    "content-type",
                    if openmetrics {
                        "application/openmetrics-text; version=1.0.0; charset=utf-8"
                    } else {
                        "text/plain; version=0.0.4; charset=utf-8"
                    },
                )
                .body(Full::new(Bytes::from(if openmetrics {
                    text
                } else {
                    classic_text_format(&text)
                })))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
            ),
        }
    })
    .await
}

/// The OpenMetrics exposition in Prometheus' classic text format 0.0.4: there a counter
/// family is named like its samples (`x_total`, where OpenMetrics says `x`), and `# EOF` is not
/// part of it. Everything else is the same.
fn classic_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines().filter(|line| *line != "# EOF") {
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let (name, rest) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {rest}"))
        });
        text.push_str(renamed.as_deref().unwrap_or(line));
        text.push('\n');
    }
    text
}

/// Serves `/healthz/ready` on `listener` until the task is dropped.
pub async fn serve_readiness(listener: TcpListener, readiness: Arc<Readiness>) {
    serve(listener, move |req| match req.uri().path() {
        "/healthz/ready" => {
            let (status, word) = if readiness.is_ready() {
                (StatusCode::OK, "ready")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "not ready")
            };
            match readiness.detail() {
                Some(detail) => reply(status, format!("{word}; {detail}\n")),
                None => reply(status, format!("{word}\n")),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    })
    .await
}

/// Binds a node-local endpoint. `SO_REUSEPORT`: during an upgrade the new proxy binds the
/// same ports while the old one still serves them (see [`crate::upgrade`]); the old one closes
/// its listeners when it has handed over.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(
        domain,
        socket2::Type::STREAM.nonblocking().cloexec(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    TcpListener::from_std(socket.into())
}

fn reply(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

async fn serve<F>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    serve_async(listener, move |req| std::future::ready(handler(req))).await
}

/// Serves HTTP/1 on `listener` until the task is dropped, answering each request with
/// `handler`'s response.
pub async fn serve_async<F, R>(listener: TcpListener, handler: F)
where
    F: Fn(Request<Incoming>) -> R + Send + Sync + 'static,
    R: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "http accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = handler(req);
                async move { Ok::<_, Infallible>(response.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The (decoded) value of `key` in a query string.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query_params(query, key).into_iter().next()
}

/// Every (decoded) value of `key` in a query string, in order.
pub fn query_params(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes and `+` in a query value; malformed escapes are kept as they are.
pub fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod exposition_tests {
    use super::classic_text_format;

    #[test]
    fn openmetrics_counters_become_classic_text_format_families() {
        let openmetrics = "# HELP a_total_bytes Bytes.\n# TYPE a_total_bytes counter\n\
                           a_total_bytes_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\n\
                           g 1\n# EOF\n";
        assert_eq!(
            classic_text_format(openmetrics),
            "# HELP a_total_bytes_total Bytes.\n# TYPE a_total_bytes_total counter\n\
             a_total_bytes_total{x=\"1\"} 2\n# HELP g A gauge.\n# TYPE g gauge\ng 1\n"
        );
    }
}
