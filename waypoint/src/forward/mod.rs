//! The HTTP proxy over one accepted tunnel: hyper serves HTTP/1.1 or HTTP/2 (told apart by the
//! preface) to the client; each request is checked, authorized ([`crate::authz`]), routed
//! ([`crate::route`]; the tries, timeouts and mirrors in `attempts`), sent to an endpoint
//! chosen least-request over a pooled HBONE tunnel, and its response streamed back
//! (trailers included); one [`RequestOutcome`] per request is recorded at its end. HTTP/1 bytes
//! pass [`crate::guard_io`] first (both lengths, slow heads, idle connections).
//!
//! Upstream HTTP connections ([`conns`]) belong to the client's tunnel: they carry that client's
//! `forwarded`/`baggage` on their CONNECT, and go when it goes. HTTP/1.1 ones are reused while
//! idle (keep-alive); an HTTP/2 one per endpoint carries every request.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::authz::{self, AuthzRequest};
use crate::body::{Body, full};
use crate::client::OriginalClient;
use crate::context::Context;
use crate::headers;
use crate::outcome::RequestOutcome;
use crate::record::{Pending, record};
use crate::route;
use crate::target::Destination;
use marrow_mesh::drain::Drain;
use marrow_mesh::path::{self, NormalizedPath};
use marrow_mesh::state::protocol::Protocol;
use marrow_mesh::telemetry::ResponseFlag;
use marrow_mesh::telemetry::{RequestProtocol, grpc_status};
use marrow_mesh::trace;

mod attempts;
mod bodies;
mod conns;
mod replay;

use attempts::{Outgoing, Template, Tried};
use bodies::{Answered, Counted, Recording, Watched};
use conns::Conns;
use replay::Replay;

use crate::guard_io::{ConnWatch, GuardIo, Timeouts};

/// The request target as matched and forwarded: normalized (RFC 3986 dot segments, merged
/// slashes, unreserved escapes decoded; see [`marrow_mesh::path`]), so `//admin` or `/%61dmin`
/// cannot slip past a rule on `/admin`. `*` only for OPTIONS, as HTTP allows.
fn normalize_target(method: &http::Method, uri: &http::Uri) -> Result<NormalizedPath, String> {
    let raw = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let path = path::normalize(raw).map_err(|e| e.to_string())?;
    if path.as_str() == "*" && method != http::Method::OPTIONS {
        return Err(format!("the target * is only for OPTIONS, not {method}"));
    }
    Ok(path)
}

/// One client tunnel's HTTP side.
pub struct Downstream {
    ctx: Arc<Context>,
    dest: Destination,
    client: OriginalClient,
    conns: Mutex<Conns>,
}

/// Serves HTTP on an accepted tunnel until the client closes it, or gracefully once `drain`
/// starts.
pub async fn serve<IO>(
    io: IO,
    ctx: Arc<Context>,
    dest: Destination,
    client: OriginalClient,
    drain: Drain,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = ctx.limits;
    let downstream = Arc::new(Downstream {
        ctx,
        dest,
        client,
        conns: Mutex::new(Conns::default()),
    });
    // The watch follows HTTP/1 framing for what hyper hides (a head with both lengths) or
    // cannot answer (408 to a slow head); see `guard_io`.
    let watch = Arc::new(ConnWatch::default());
    let io = GuardIo::new(
        io,
        watch.clone(),
        Timeouts {
            header: limits.header_read_timeout,
            idle: limits.idle_timeout,
            max_head: limits.max_header_bytes,
        },
    );
    let service = {
        let (downstream, watch) = (downstream.clone(), watch.clone());
        hyper::service::service_fn(move |req| {
            // Counted here, when hyper hands the request over, not when it is first polled.
            let both_lengths = watch.dispatch();
            let downstream = downstream.clone();
            let watch = watch.clone();
            async move {
                let response = downstream.handle(req, both_lengths).await;
                Ok::<_, Infallible>(response.map(|inner| Answered { inner, watch }))
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The watch times heads from their first byte and answers 408; hyper's own timer
        // starts before any byte and closes without an answer.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_local_error_reset_streams(Some(1024));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = drain.started() => {
            // Draining: HTTP/1 closes after the request in flight, HTTP/2 sends GOAWAY; both
            // finish what they carry (up to the drain deadline).
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "http connection ended with an error");
    }
    if watch.timed_out() {
        // The 408 is a request too, for the metrics and the access log (no method or path).
        let mut outcome = downstream.outcome();
        outcome.protocol = "HTTP/1.1";
        outcome.status = StatusCode::REQUEST_TIMEOUT.as_u16();
        record(&downstream.ctx, outcome);
    }
}

/// The `:authority` or `Host` of a request.
fn authority_of<B>(req: &Request<B>) -> String {
    req.uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

impl Downstream {
    /// The request's span; none (and nothing built for it) while tracing is off.
    fn start_span(
        &self,
        req: &Request<Incoming>,
        outcome: &RequestOutcome,
        host: &str,
    ) -> Option<trace::ActiveSpan> {
        let tracer = self.ctx.telemetry.tracer();
        if !tracer.is_on() {
            return None;
        }
        let name = match self.dest.service() {
            Some(service) => format!("{}:{}/*", service.host(), service.vip.port()),
            None => format!("{}/*", self.dest.authority()),
        };
        let cluster = outcome.upstream_cluster();
        Some(tracer.start(
            req.headers(),
            &trace::RequestAttrs {
                name: &name,
                method: req.method().as_str(),
                scheme: "http",
                authority: host,
                path: req.uri().path(),
                protocol: outcome.protocol,
                user_agent: outcome.user_agent.as_deref(),
                request_id: outcome.request_id.as_deref(),
                downstream_cluster: None,
                peer: Some(self.client.addr.ip()),
                upstream_cluster: cluster.as_deref(),
            },
        ))
    }

    /// A new outcome of a request on this tunnel.
    fn outcome(&self) -> RequestOutcome {
        RequestOutcome::start(
            Some(self.client.identity.clone()),
            Some(self.client.addr),
            self.dest.authority(),
            self.dest.service().cloned(),
            self.ctx.trust_domain.clone(),
        )
    }

    /// One request; `both_lengths` when its HTTP/1 head had both `content-length` and
    /// `transfer-encoding` (which hyper does not show).
    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        both_lengths: bool,
    ) -> Response<Body> {
        let mut outcome = Pending::new(self.ctx.clone(), self.outcome());
        let version = req.version();
        outcome.method = req.method().to_string();
        outcome.protocol = if version == Version::HTTP_2 {
            "HTTP/2"
        } else {
            "HTTP/1.1"
        };
        let host = authority_of(&req);
        outcome.authority = host.clone();
        outcome.request_protocol = RequestProtocol::of(req.headers());
        let text = |name: http::header::HeaderName| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        outcome.user_agent = text(http::header::USER_AGENT);
        // Envoy's connection manager gives every request an id (`generate_request_id`), which
        // the access log, the span's guid and the app all see.
        let request_id = text(X_REQUEST_ID).unwrap_or_else(new_request_id);
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            req.headers_mut().insert(X_REQUEST_ID, value);
        }
        outcome.request_id = Some(request_id);
        // The span starts before policy, as Envoy's connection manager traces before its RBAC
        // filter: a denied request is traced too.
        outcome.span = self.start_span(&req, &outcome, &host);
        let framing = if both_lengths {
            // Envoy refuses this unless `allow_chunked_length` is set
            // (source/common/http/http1/codec_impl.cc); hyper would let chunked win.
            Err("content-length together with transfer-encoding")
        } else if version != Version::HTTP_2 {
            headers::check_framing(req.headers())
        } else {
            Ok(())
        };
        if let Err(reason) = framing {
            tracing::info!(client = %self.client.addr, reason, "malformed request; answering 400");
            return local(
                &self.ctx,
                outcome.finish(),
                StatusCode::BAD_REQUEST,
                reason,
                None,
                true,
            );
        }
        let path = match normalize_target(req.method(), req.uri()) {
            Ok(path) => path,
            Err(reason) => {
                outcome.path = req.uri().path().to_owned();
                tracing::info!(client = %self.client.addr, reason, "invalid request path; answering 400");
                return local(
                    &self.ctx,
                    outcome.finish(),
                    StatusCode::BAD_REQUEST,
                    "Bad Request",
                    None,
                    true,
                );
            }
        };
        outcome.path = path.path().to_owned();
        let grpc = authz::is_grpc(req.headers());
        let decision = authz::decide(
            self.ctx.state.snapshot().policies(),
            &self.ctx.gateway,
            &AuthzRequest {
                client: &self.client,
                destination: &self.dest,
                method: req.method(),
                path: &path,
                host: &host,
                headers: req.headers(),
            },
        );
        if !decision.is_allowed() {
            let policy = decision.policy.as_ref().map(ToString::to_string);
            tracing::info!(
                client = %self.client.identity,
                path = path.path(),
                policy = policy.as_deref().unwrap_or("-"),
                rule = ?decision.rule,
                reason = %decision.reason,
                "request denied"
            );
            let response = authz::denied(grpc);
            outcome.status = response.status().as_u16();
            outcome.grpc_status = grpc.then_some(7);
            outcome.flag = Some(ResponseFlag::Deny);
            record(&self.ctx, outcome.finish());
            return response;
        }
        let limit = self.ctx.limits.max_request_body_bytes;
        // The declared length (`content-length`, either version), known before any byte.
        let declared = hyper::body::Body::size_hint(req.body()).lower();
        if let Some(limit) = limit
            && declared > limit
        {
            tracing::info!(client = %self.client.addr, limit, declared, "request body over the limit; answering 413");
            return too_large(&self.ctx, outcome.finish(), version);
        }
        let snap = self.ctx.state.snapshot();
        let plan = match self.plan(&snap, &req, &path, &host) {
            Ok(plan) => plan,
            Err(early) => {
                outcome.status = early.response.status().as_u16();
                outcome.flag = early.flag;
                record(&self.ctx, outcome.finish());
                return early.response;
            }
        };
        if let Some(fault) = plan.forward.and_then(|f| f.fault.as_ref()) {
            if let Some((delay, percent)) = fault.delay
                && route::fault::hit(percent)
            {
                tokio::time::sleep(delay).await;
                outcome.flag = Some(ResponseFlag::FaultDelay);
            }
            if let Some((status, percent)) = fault.abort
                && route::fault::hit(percent)
            {
                let (response, status, grpc) = route::fault::abort_response(status);
                outcome.status = status;
                outcome.grpc_status = grpc;
                outcome.flag = Some(ResponseFlag::FaultAbort);
                record(&self.ctx, outcome.finish());
                return response;
            }
        }
        if plan.forward.is_some() {
            // The routed backend is the destination the metrics name (Envoy's upstream cluster).
            outcome.service = plan.target.service().cloned();
        }
        let upgrade = version != Version::HTTP_2 && headers::is_upgrade(req.headers());
        // Istio's upstream protocol (pilot/pkg/networking/core/cluster_builder.go): HTTP/2 for
        // ports declared http2/grpc, HTTP/1.1 for ports declared http whatever the client
        // spoke, and the client's own (`USE_DOWNSTREAM_PROTOCOL`) where nothing is declared.
        let protocol = plan
            .target
            .service()
            .map_or_else(|| self.dest.protocol(), |s| s.protocol());
        let use_h2 = !upgrade
            && match protocol {
                Protocol::Http2 | Protocol::Grpc => true,
                Protocol::Unspecified => version == Version::HTTP_2,
                _ => false,
            };
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let bytes_in = Arc::new(AtomicU64::new(0));
        let (mut template, body) =
            self.prepare(req, &host, &path, use_h2, upgrade, bytes_in.clone());
        template.apply(&plan);
        if let Some(span) = &outcome.span {
            span.inject(&mut template.headers);
        }
        // A body is kept for another try or a mirror only when the rule may need one.
        let keep = !upgrade
            && (plan.retries().is_some_and(|r| r.attempts > 0)
                || plan.forward.is_some_and(|f| !f.mirrors.is_empty()));
        let mut body = if keep {
            Outgoing::Replay(Replay::new(body, route::REPLAY_LIMIT))
        } else {
            Outgoing::Once(Some(body))
        };
        let tried = self
            .attempts(&plan, &template, &mut body, &mut outcome)
            .await;
        self.mirror(&snap, &plan, &template, &body);
        let (mut response, endpoint, active) = match tried {
            Tried::Answered {
                response,
                endpoint,
                active,
                flag,
            } => {
                outcome.flag = flag.or(outcome.flag);
                (response, endpoint, active)
            }
            Tried::Failed {
                status,
                message,
                flag,
            } => {
                outcome.bytes_in = bytes_in.load(Ordering::Relaxed);
                if let Some(limit) = limit
                    && outcome.bytes_in > limit
                {
                    // The body ran past the limit before the upstream answered: Envoy's
                    // answer to a request over its buffer limit
                    // (source/common/http/filter_manager.cc, `PayloadTooLarge`).
                    tracing::info!(client = %self.client.addr, limit, "request body over the limit; answering 413");
                    return too_large(&self.ctx, outcome.finish(), version);
                }
                return local(&self.ctx, outcome.finish(), status, message, flag, false);
            }
        };
        outcome.status = response.status().as_u16();
        outcome.grpc_status = grpc_status(response.headers());
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(splice(client_upgrade, upstream_upgrade, endpoint));
        }
        let (mut parts, body) = response.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers, switching);
        if let Some(forward) = plan.forward {
            if let Some(backend) = plan.backend {
                route::rewrite::apply_header_ops(&mut parts.headers, &backend.response_headers);
            }
            route::rewrite::apply_header_ops(&mut parts.headers, &forward.response_headers);
        }
        let watch = Recording {
            ctx: self.ctx.clone(),
            outcome: Some(outcome.finish()),
            bytes_in,
            bytes_out: 0,
            _active: active,
        };
        let body = Watched { inner: body, watch };
        Response::from_parts(parts, body.boxed())
    }

    /// The request as the endpoint gets it: hop-by-hop headers gone, the client appended to
    /// the forwarding headers, the normalized path, HTTP/2 (absolute URI, `te: trailers` kept
    /// for gRPC) or HTTP/1.1 (origin form, `Host`); its body counted and held to the limit.
    fn prepare(
        &self,
        req: Request<Incoming>,
        host: &str,
        path: &NormalizedPath,
        use_h2: bool,
        upgrade: bool,
        bytes_in: Arc<AtomicU64>,
    ) -> (Template, Body) {
        let (mut parts, body) = req.into_parts();
        let trailers_wanted = parts
            .headers
            .get_all(http::header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        headers::strip_hop_by_hop(&mut parts.headers, upgrade);
        headers::append_client(&mut parts.headers, self.client.addr);
        if use_h2 {
            parts.headers.remove(http::header::HOST);
            if trailers_wanted {
                parts
                    .headers
                    .insert(http::header::TE, HeaderValue::from_static("trailers"));
            }
        }
        let watch = Counted {
            count: bytes_in,
            limit: self.ctx.limits.max_request_body_bytes.unwrap_or(u64::MAX),
        };
        let body = Watched { inner: body, watch };
        let template = Template {
            method: parts.method,
            authority: host.to_owned(),
            path_and_query: path.as_str().to_owned(),
            headers: parts.headers,
            use_h2,
            upgrade,
        };
        (template, body.boxed())
    }
}

/// `x-request-id`.
const X_REQUEST_ID: http::header::HeaderName =
    http::header::HeaderName::from_static("x-request-id");

/// A random UUID (version 4), as Envoy's request ids.
fn new_request_id() -> String {
    // Version 4 in bits 76..80, variant 0b10 in bits 62..64.
    let bits = fastrand::u128(..);
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let hex = format!("{bits:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// 413 for a request body over `--max-request-body-bytes`; HTTP/1 closes the connection (the
/// rest of the body is not read).
fn too_large(ctx: &Context, outcome: RequestOutcome, version: Version) -> Response<Body> {
    local(
        ctx,
        outcome,
        StatusCode::PAYLOAD_TOO_LARGE,
        "Payload Too Large",
        None,
        version != Version::HTTP_2,
    )
}

/// A response made here (refusals, failures), recorded at once.
fn local(
    ctx: &Context,
    mut outcome: RequestOutcome,
    status: StatusCode,
    message: &'static str,
    flag: Option<ResponseFlag>,
    close: bool,
) -> Response<Body> {
    outcome.status = status.as_u16();
    outcome.flag = flag;
    record(ctx, outcome);
    let mut response = Response::new(full(Bytes::from_static(message.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    if close {
        response
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Copies bytes both ways between a switched client and upstream connection (WebSocket).
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    endpoint: SocketAddr,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(error) => {
            tracing::debug!(%error, %endpoint, "protocol switch failed");
            return;
        }
    };
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((up, down)) => tracing::debug!(%endpoint, up, down, "upgraded connection closed"),
        Err(error) => tracing::debug!(%error, %endpoint, "upgraded connection failed"),
    }
}
