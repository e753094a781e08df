//! A request's way to its endpoint once authorized: the route's plan ([`Downstream::plan`]:
//! the rule, its backend, or an answer made here), the request as forwarded ([`Template`],
//! rewritten and with its header edits), its tries ([`Downstream::attempts`]: per-try and route
//! timeouts, retries with back-off to fresh endpoints) and its mirrors ([`Downstream::mirror`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use marrow_mesh::path::NormalizedPath;
use marrow_mesh::resilience::{Destination, LimitGuard, ResilienceError, Resource};
use marrow_mesh::state::Snapshot;
use marrow_mesh::telemetry::{ResponseFlag, grpc_status};
use marrow_mesh::traffic::{Backend, Forward, HttpAction, HttpRule, RetryPolicy, RouteRequest};
use tokio::time::Instant;

use super::Downstream;
use super::replay::Replay;
use crate::balance::ActiveRequest;
use crate::body::{Body, full};
use crate::route::retry::{self, Attempt, Backoff};
use crate::route::rewrite::{self, MatchedPrefix, Redirected};
use crate::route::{self, Decision, Target, fault};
use crate::upstream::ChoiceRequest;

/// How long a mirrored request may take before it is given up (its permit freed).
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// An answer made here instead of forwarding (no route, redirect, direct response, a rule
/// whose backend is missing).
pub(super) struct Early {
    pub(super) response: Response<Body>,
    pub(super) flag: Option<ResponseFlag>,
}

impl Early {
    fn new(status: StatusCode, body: Bytes, flag: Option<ResponseFlag>) -> Box<Self> {
        let mut response = Response::new(full(body));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain"),
        );
        Box::new(Self { response, flag })
    }
}

/// Where a request goes and under which rule.
pub(super) struct Plan<'a> {
    /// The rule's forwarding, when a rule matched.
    pub(super) forward: Option<&'a Forward>,
    /// The rule.
    pub(super) rule: Option<&'a HttpRule>,
    /// The backend picked.
    pub(super) backend: Option<&'a Backend>,
    /// Its endpoints.
    pub(super) target: Target,
    /// The path prefix the rule matched, for a prefix rewrite.
    pub(super) matched: Option<MatchedPrefix<'a>>,
}

/// Istio's default retry policy, for a Service no route applies to.
static DEFAULT_RETRIES: std::sync::LazyLock<RetryPolicy> =
    std::sync::LazyLock::new(marrow_mesh::traffic::default_retries);

impl Plan<'_> {
    /// The retries in force: the rule's; for a Service no route applies to, Istio's default
    /// (2 retries on connect-failure, refused-stream, unavailable, cancelled and 503), which
    /// istiod gives the default route of every Service (`pilot/pkg/networking/core/route/
    /// route.go`, `BuildDefaultHTTPOutboundRoute`: `retry.DefaultPolicy()`), so an app sees
    /// the same retries under marrow as under Istio; none for a workload addressed directly.
    pub(super) fn retries(&self) -> Option<&RetryPolicy> {
        match self.forward {
            Some(forward) => forward.retries.as_ref(),
            None if self.target.service().is_some() => Some(&DEFAULT_RETRIES),
            None => None,
        }
    }
}

/// The request as every try sends it (a body apart).
#[derive(Clone, Debug)]
pub(super) struct Template {
    pub(super) method: Method,
    pub(super) authority: String,
    pub(super) path_and_query: String,
    pub(super) headers: HeaderMap,
    pub(super) use_h2: bool,
    pub(super) upgrade: bool,
}

impl Template {
    /// A request of this template with `body`: HTTP/2 with an absolute URI, or HTTP/1.1 in
    /// origin form with `Host`.
    pub(super) fn request(&self, body: Body) -> Request<Body> {
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.headers_mut() = self.headers.clone();
        if self.use_h2 {
            *req.version_mut() = Version::HTTP_2;
            if let Ok(uri) = format!("http://{}{}", self.authority, self.path_and_query).parse() {
                *req.uri_mut() = uri;
            }
        } else {
            *req.version_mut() = Version::HTTP_11;
            if let Ok(uri) = http::Uri::try_from(self.path_and_query.as_str()) {
                *req.uri_mut() = uri;
            }
            if let Ok(value) = HeaderValue::from_str(&self.authority) {
                req.headers_mut().insert(http::header::HOST, value);
            }
        }
        req
    }

    /// The rule's rewrites and request header edits (the backend's, then the rule's).
    pub(super) fn apply(&mut self, plan: &Plan<'_>) {
        let Some(forward) = plan.forward else {
            return;
        };
        if let Some(path) = &forward.rewrite.path {
            self.path_and_query =
                rewrite::rewrite_path_and_query(path, &self.path_and_query, plan.matched);
        }
        if let Some(authority) = &forward.rewrite.authority {
            authority.clone_into(&mut self.authority);
        }
        if let Some(backend) = plan.backend {
            rewrite::apply_header_ops(&mut self.headers, &backend.request_headers);
        }
        rewrite::apply_header_ops(&mut self.headers, &forward.request_headers);
    }
}

/// Where a request body comes from for each try.
pub(super) enum Outgoing {
    /// Streamed once: no retry.
    Once(Option<Body>),
    /// Kept for tries and mirrors (up to [`route::REPLAY_LIMIT`]).
    Replay(Replay),
}

impl Outgoing {
    /// The body of the next try; `None` when it cannot be sent again.
    fn next(&mut self) -> Option<Body> {
        match self {
            Outgoing::Once(body) => body.take(),
            Outgoing::Replay(replay) => replay.again().map(BodyExt::boxed),
        }
    }
}

/// How a request's tries ended.
pub(super) enum Tried {
    /// An endpoint answered (the last try's answer).
    Answered {
        response: Response<Incoming>,
        endpoint: SocketAddr,
        active: ActiveRequest,
        flag: Option<ResponseFlag>,
    },
    /// No answer; this is the client's.
    Failed {
        status: StatusCode,
        message: &'static str,
        flag: Option<ResponseFlag>,
    },
}

impl Downstream {
    /// The route's plan for a request, or the answer made here.
    pub(super) fn plan<'s>(
        &self,
        snap: &'s Snapshot,
        req: &Request<Incoming>,
        path: &NormalizedPath,
        host: &str,
    ) -> Result<Plan<'s>, Box<Early>> {
        let source = snap.workload_by_ip(self.client.addr.ip());
        let port = self.dest.authority().port();
        let request = RouteRequest {
            port,
            method: req.method().as_str(),
            path_and_query: path.as_str(),
            authority: host,
            headers: req.headers(),
            source_namespace: Some(
                source.map_or(self.client.identity.namespace(), |w| w.namespace.as_str()),
            ),
            source_labels: source.map(|w| &w.labels),
        };
        let service = route::service_name(&self.dest);
        let rule = match route::decide(snap, service.as_ref(), &request) {
            Decision::Unrouted => {
                return Ok(Plan {
                    forward: None,
                    rule: None,
                    backend: None,
                    target: Target::unrouted(snap, &self.dest, service.as_ref()),
                    matched: None,
                });
            }
            // Envoy's answer when no route matches: 404, empty, `NR`.
            Decision::NoRoute => {
                return Err(Early::new(
                    StatusCode::NOT_FOUND,
                    Bytes::new(),
                    Some(ResponseFlag::NoRoute),
                ));
            }
            Decision::Rule(rule) => rule,
        };
        let matched = route::matched_prefix(rule, &request);
        match &rule.action {
            HttpAction::Redirect(redirect) => {
                let location = rewrite::location(
                    redirect,
                    &Redirected {
                        scheme: "http",
                        authority: host,
                        port,
                        path_and_query: path.as_str(),
                        matched,
                    },
                );
                let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
                let mut early = Early::new(status, Bytes::new(), None);
                if let Ok(value) = HeaderValue::from_str(&location) {
                    early
                        .response
                        .headers_mut()
                        .insert(http::header::LOCATION, value);
                }
                Err(early)
            }
            HttpAction::Respond(direct) => Err(Early::new(
                StatusCode::from_u16(direct.status).unwrap_or(StatusCode::OK),
                Bytes::from(direct.body.clone().unwrap_or_default()),
                None,
            )),
            HttpAction::Forward(forward) => {
                match route::pick_backend(
                    snap,
                    &self.ctx.upstreams.subsets,
                    &rule.route,
                    forward,
                    port,
                ) {
                    Ok((backend, target)) => Ok(Plan {
                        forward: Some(forward),
                        rule: Some(rule),
                        backend: Some(backend),
                        target,
                        matched,
                    }),
                    Err(error) => {
                        tracing::info!(%error, "routed request not forwarded");
                        let (status, flag, message) = error.answer();
                        Err(Early::new(
                            status,
                            Bytes::from_static(message.as_bytes()),
                            flag,
                        ))
                    }
                }
            }
        }
    }

    /// Sends the request until an answer that is not retried, a failure that is not, the
    /// retries run out or the route's deadline passes.
    pub(super) async fn attempts(
        &self,
        plan: &Plan<'_>,
        template: &Template,
        body: &mut Outgoing,
        outcome: &mut crate::outcome::RequestOutcome,
    ) -> Tried {
        let retries: Option<&RetryPolicy> = plan.retries();
        let deadline = plan
            .forward
            .and_then(|f| f.timeout)
            .map(|t| Instant::now() + t);
        // Only routed requests are counted by try: the rest have one, in istio_requests_total.
        let routed = plan.forward.is_some();
        let service = match plan.target.service() {
            Some(service) if routed || retries.is_some() => service.host(),
            _ => String::new(),
        };
        let upstreams = &self.ctx.upstreams;
        // The DestinationRule's state (balancer, limits, detector), once per request.
        let generation = self.ctx.state.snapshot().generation();
        let destination = upstreams.destination(&plan.target, generation);
        let destination = destination.as_deref();
        let mut retrying: Option<LimitGuard> = None;
        let metrics = &self.ctx.telemetry.routing;
        let mut tried = Vec::new();
        let mut backoff = Backoff::default();
        loop {
            let choice = ChoiceRequest {
                headers: &template.headers,
                path_and_query: &template.path_and_query,
                client: self.client.addr,
            };
            let Some(endpoint) = upstreams.choose(&plan.target, destination, &choice, &tried)
            else {
                tracing::info!(service, "no upstream");
                return Tried::Failed {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "no healthy upstream",
                    flag: Some(ResponseFlag::NoHealthyUpstream),
                };
            };
            let Some(sent_body) = body.next() else {
                // Only a body that cannot be sent again ends here (checked before retrying).
                return Tried::Failed {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "request body cannot be sent again",
                    flag: Some(ResponseFlag::UpstreamRetryLimitExceeded),
                };
            };
            tried.push(endpoint);
            outcome.upstream = Some(endpoint);
            let active = upstreams.balancer.start(endpoint);
            let per_try = retries
                .and_then(|r| r.per_try_timeout)
                .map(|t| Instant::now() + t);
            let until = match (per_try, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let _slots = match destination {
                Some(d) if !d.limits.is_unlimited() => {
                    match take_slots(d, !template.use_h2, until).await {
                        Ok(slots) => slots,
                        Err(tried) => {
                            if routed {
                                metrics.attempt(&service, "overflow".to_owned());
                            }
                            return tried;
                        }
                    }
                }
                _ => Vec::new(),
            };
            let send = self.send(
                endpoint,
                template.use_h2,
                template.upgrade,
                template.request(sent_body),
            );
            let sent = match until {
                Some(until) => tokio::time::timeout_at(until, send).await.ok(),
                None => Some(send.await),
            };
            let (attempt, result) = match sent {
                None if deadline.is_some_and(|d| Instant::now() >= d) => {
                    if routed {
                        metrics.attempt(&service, "timeout".to_owned());
                    }
                    return upstream_timeout();
                }
                None => (Attempt::PerTryTimeout, None),
                Some(Ok(response)) => (
                    Attempt::Answered {
                        status: response.status().as_u16(),
                        grpc: grpc_status(response.headers()),
                    },
                    Some(Ok(response)),
                ),
                Some(Err((error, flag))) => {
                    tracing::info!(%error, %endpoint, "upstream request failed");
                    (classify(&error, flag), Some(Err(flag)))
                }
            };
            upstreams.report(&plan.target, destination, endpoint, &attempt);
            if routed {
                metrics.attempt(&service, attempt.label());
            }
            let retriable = retries.is_some_and(|r| retry::retriable(r, &attempt));
            let left = retries.is_some_and(|r| tried.len() <= r.attempts as usize);
            let replayable = match body {
                Outgoing::Once(_) => false,
                Outgoing::Replay(replay) => replay.again().is_some(),
            };
            // `http.maxRetries`: a retry past it is not made, the answer goes back as it is
            // (Envoy's `upstream_rq_retry_overflow`).
            let slot = (retriable && left && replayable)
                .then(|| destination.map(|d| d.limits.try_acquire(Resource::Retries)))
                .flatten();
            let overflow = matches!(slot, Some(Err(_)));
            if retriable && left && replayable && !overflow {
                retrying = slot.and_then(Result::ok);
                metrics.retry(&service, attempt.label());
                drop(result);
                drop(active);
                let wait = Instant::now() + backoff.wait();
                match deadline {
                    Some(deadline) if deadline <= wait => {
                        tokio::time::sleep_until(deadline).await;
                        return upstream_timeout();
                    }
                    _ => tokio::time::sleep_until(wait).await,
                }
                continue;
            }
            // Retries ran out on a failure they would have retried: Envoy's `URX`.
            let exhausted =
                (retriable && !overflow).then_some(ResponseFlag::UpstreamRetryLimitExceeded);
            drop(retrying.take());
            return match result {
                Some(Ok(response)) => Tried::Answered {
                    response,
                    endpoint,
                    active,
                    flag: exhausted,
                },
                // The last try timed out: 504 `UT`, whether retries ran out or there were none.
                None => upstream_timeout(),
                Some(Err(flag)) => Tried::Failed {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: if flag == ResponseFlag::UpstreamFailure {
                        "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
                    } else {
                        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
                    },
                    flag: exhausted.or(Some(flag)),
                },
            };
        }
    }

    /// Sends a copy of the request to each of the rule's mirrors its percentage picks, with
    /// `-shadow` after the host as Envoy's request mirror policy does; fire and forget: the
    /// answer is dropped, a failure only logged, and never more than
    /// [`route::MIRRORS_IN_FLIGHT`] at once. Sent once the primary's tries are over, when the
    /// body is whole (Envoy streams the shadow alongside; the mirror sees the same request, a
    /// little later). Only a body kept whole (within [`route::REPLAY_LIMIT`]) is mirrored.
    pub(super) fn mirror(
        self: &Arc<Self>,
        snap: &Snapshot,
        plan: &Plan<'_>,
        template: &Template,
        body: &Outgoing,
    ) {
        let (Some(forward), Some(rule)) = (plan.forward, plan.rule) else {
            return;
        };
        let metrics = &self.ctx.telemetry.routing;
        for mirror in &forward.mirrors {
            if !fault::hit(mirror.percent) {
                continue;
            }
            let label = mirror.backend.service.host();
            let bytes = match body {
                Outgoing::Replay(replay) => replay.complete(),
                Outgoing::Once(_) => None,
            };
            let port = self.dest.authority().port();
            let target = route::resolve(
                snap,
                &self.ctx.upstreams.subsets,
                &rule.route,
                &mirror.backend,
                port,
            );
            let permit = self.ctx.upstreams.mirrors.clone().try_acquire_owned();
            let (Some(bytes), Ok(target), Ok(permit)) = (bytes, target, permit) else {
                metrics.mirror(&label, "skipped");
                continue;
            };
            metrics.mirror(&label, "sent");
            let mut copy = template.clone();
            copy.authority = rewrite::shadow_authority(&template.authority);
            copy.upgrade = false;
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let choice = ChoiceRequest {
                    headers: &copy.headers,
                    path_and_query: &copy.path_and_query,
                    client: this.client.addr,
                };
                let Some(endpoint) = this.ctx.upstreams.choose(&target, None, &choice, &[]) else {
                    tracing::debug!(mirror = %label, "mirror has no endpoint");
                    return;
                };
                let _active = this.ctx.upstreams.balancer.start(endpoint);
                let sent = this.send(endpoint, copy.use_h2, false, copy.request(full(bytes)));
                match tokio::time::timeout(MIRROR_TIMEOUT, async {
                    let response = sent.await.map_err(|(error, _)| error)?;
                    // Read to its end (and dropped) so the connection can be used again.
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok::<_, String>(())
                })
                .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(mirror = %label, %error, "mirror failed"),
                    Err(_) => tracing::debug!(mirror = %label, "mirror timed out"),
                }
            });
        }
    }
}

/// The circuit-breaker slots a try holds (Envoy's cluster circuit breakers as Istio sets them
/// from `connectionPool`): a request in flight (`http2MaxRequests`), and to an HTTP/1.1
/// upstream, where a connection carries one request at a time, a connection
/// (`tcp.maxConnections`) — waited for as a pending request (`http1MaxPendingRequests`) while
/// all are busy, until `until`. Over a limit: 503 `UO`, as Envoy's overflow.
async fn take_slots(
    destination: &Destination,
    http1: bool,
    until: Option<Instant>,
) -> Result<Vec<LimitGuard>, Tried> {
    let limits = &destination.limits;
    let mut held = Vec::with_capacity(2);
    held.push(limits.try_acquire(Resource::Requests).map_err(overflowed)?);
    if http1 {
        match limits.try_acquire(Resource::Connections) {
            Ok(slot) => held.push(slot),
            Err(_) => {
                let _pending = limits
                    .try_acquire(Resource::PendingRequests)
                    .map_err(overflowed)?;
                loop {
                    // Rare (a limit set and reached): a short poll keeps the limits lock-free.
                    let next = Instant::now() + Duration::from_millis(5);
                    if until.is_some_and(|u| u <= next) {
                        return Err(upstream_timeout());
                    }
                    tokio::time::sleep_until(next).await;
                    if let Ok(slot) = limits.try_acquire(Resource::Connections) {
                        held.push(slot);
                        break;
                    }
                }
            }
        }
    }
    Ok(held)
}

fn overflowed(error: ResilienceError) -> Tried {
    tracing::info!(%error, "upstream overflow");
    Tried::Failed {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "upstream connect error or disconnect/reset before headers. reset reason: overflow",
        flag: Some(ResponseFlag::UpstreamOverflow),
    }
}

/// Envoy's answer when the route's timeout passes before the response head: 504 `UT`.
fn upstream_timeout() -> Tried {
    Tried::Failed {
        status: StatusCode::GATEWAY_TIMEOUT,
        message: "upstream request timeout",
        flag: Some(ResponseFlag::UpstreamTimeout),
    }
}

/// A failed send as retrying sees it: no tunnel is a connect failure; an HTTP/2
/// `REFUSED_STREAM` (h2's text of the reason) a refused stream; anything else a reset.
fn classify(error: &str, flag: ResponseFlag) -> Attempt {
    if flag == ResponseFlag::UpstreamFailure {
        Attempt::ConnectFailure
    } else if error.contains("refused stream") {
        Attempt::RefusedStream
    } else {
        Attempt::Reset
    }
}
