//! The node-local HTTP endpoints: `/metrics` (15020) and `/healthz/ready` (15021).

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
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// Marks the proxy ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Is the proxy ready?
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Serves `/metrics` from `registry` on `listener` until the task is dropped.
pub async fn serve_metrics(listener: TcpListener, registry: Arc<Registry>) {
    serve(listener, move |req| {
        if req.uri().path() != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "not found\n".into());
        }
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &registry) {
            Ok(()) => Response::builder()
                .header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(text)))
                .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
            Err(_) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding failed\n".into(),
            ),
        }
    })
    .await
}

/// Serves `/healthz/ready` on `listener` until the task is dropped.
pub async fn serve_readiness(listener: TcpListener, readiness: Arc<Readiness>) {
    serve(listener, move |req| match req.uri().path() {
        "/healthz/ready" if readiness.is_ready() => reply(StatusCode::OK, "ready\n".into()),
        "/healthz/ready" => reply(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into()),
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    })
    .await
}

/// What the admin endpoint reads: the state in force and the trust domain.
pub struct AdminState {
    /// The state, when the proxy runs with a state file.
    pub state: Option<Arc<crate::state::StateStore>>,
    /// The mesh's trust domain.
    pub trust_domain: crate::identity::TrustDomain,
}

/// Serves the admin API on `listener` (node-local; 15000 as ztunnel): today `/explain`.
pub async fn serve_admin(listener: TcpListener, admin: Arc<AdminState>) {
    serve(listener, move |req| match req.uri().path() {
        "/explain" => explain(&admin, req.uri().query().unwrap_or_default()),
        _ => reply(StatusCode::NOT_FOUND, "not found\n".into()),
    })
    .await
}

/// `/explain?from=ns/pod|ip:ADDR&to=ns/pod&port=N`: the same answer as `node-proxy explain
/// --json`, from the state in force.
fn explain(admin: &AdminState, query: &str) -> Response<Full<Bytes>> {
    use crate::policy::explain::{self as ex, ExplainSource};
    let Some(state) = &admin.state else {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "no state file: policy is not in use\n".into(),
        );
    };
    let param = |key: &str| {
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == key).then(|| percent_decode(v))
        })
    };
    let answer = (|| {
        let from: ExplainSource = param("from")
            .ok_or("missing from=")?
            .parse()
            .map_err(|e: ex::ExplainError| e.to_string())?;
        let to = param("to").ok_or("missing to=")?;
        let (ns, name) = ex::workload_ref(&to, "destination").map_err(|e| e.to_string())?;
        let port: u16 = param("port")
            .ok_or("missing port=")?
            .parse()
            .map_err(|_| "port= is not a port number".to_owned())?;
        ex::explain(
            &state.snapshot(),
            &admin.trust_domain,
            &from,
            (&ns, &name),
            port,
        )
        .map_err(|e| e.to_string())
    })();
    match answer.map(|a| serde_json::to_string(&a)) {
        Ok(Ok(json)) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json + "\n")))
            .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))),
        Ok(Err(e)) => reply(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        Err(reason) => reply(StatusCode::BAD_REQUEST, format!("{reason}\n")),
    }
}

/// Decodes `%XX` escapes and `+` in a query value; malformed escapes are kept as they are.
fn percent_decode(value: &str) -> String {
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

/// Binds a node-local endpoint.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
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
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(percent_decode("shop%2Fweb"), "shop/web");
        assert_eq!(percent_decode("ip%3A10.0.0.1"), "ip:10.0.0.1");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
        assert_eq!(percent_decode("end%4"), "end%4");
        assert_eq!(percent_decode("plain/shop"), "plain/shop");
    }
}
