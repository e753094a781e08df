//! The traffic-management model: what Istio's VirtualService and DestinationRule and the
//! Gateway API's HTTPRoute, GRPCRoute and TCPRoute say, in one vocabulary that both data paths
//! read (the waypoint at L7, the node proxy at L4). Wire formats stay in the parsers; these types
//! are already validated (a regex compiles, weights are not all zero, a subset exists).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A Service by namespace and name: what routes attach to and forward to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl ServiceName {
    /// A Service `namespace/name`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// `<name>.<namespace>.svc.cluster.local`, Istio's host for it.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.name, self.namespace)
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The kinds of route object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `gateway.networking.k8s.io` HTTPRoute.
    HttpRoute,
    /// `gateway.networking.k8s.io` GRPCRoute.
    GrpcRoute,
    /// `gateway.networking.k8s.io` TCPRoute.
    TcpRoute,
}

impl RouteKind {
    /// The Kubernetes kind: `VirtualService`, `HTTPRoute`, `GRPCRoute`, `TCPRoute`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::VirtualService => "VirtualService",
            RouteKind::HttpRoute => "HTTPRoute",
            RouteKind::GrpcRoute => "GRPCRoute",
            RouteKind::TcpRoute => "TCPRoute",
        }
    }
}

/// Which rule of which object decided: `kind`, `namespace/name`, the rule's index in its list
/// (`spec.http[i]` of a VirtualService, `spec.rules[i]` of a route).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteRef {
    /// The object's kind.
    pub kind: RouteKind,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The rule's index.
    pub rule: usize,
}

impl fmt::Display for RouteRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} rule {}",
            self.kind.as_str(),
            self.namespace,
            self.name,
            self.rule
        )
    }
}

/// A compiled regular expression that must match the whole value (Envoy's `safe_regex` is RE2,
/// full match; Rust's `regex` is linear-time like RE2, so a hostile pattern cannot blow up).
#[derive(Clone, Debug)]
pub struct FullRegex {
    source: String,
    compiled: regex::Regex,
    /// The same pattern unanchored, for a rewrite that replaces every match in a value
    /// (Envoy's `regex_rewrite` is RE2 `GlobalReplace`).
    search: regex::Regex,
}

impl FullRegex {
    /// Compiles `source`, anchored at both ends. The error is the regex crate's message.
    pub fn new(source: &str) -> Result<Self, String> {
        let compiled = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(1 << 20)
            .build()
            .map_err(|e| e.to_string())?;
        let search = regex::RegexBuilder::new(source)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            source: source.to_owned(),
            compiled,
            search,
        })
    }

    /// `value` with every match replaced by `substitution`, whose `\1`-style groups (RE2's,
    /// as Istio's `uriRegexRewrite` writes them) are filled in (envoy
    /// `source/common/router/config_impl.cc`, `regex_rewrite` → `RE2::GlobalReplace`).
    pub fn replace_all(&self, value: &str, substitution: &str) -> String {
        let mut template = String::with_capacity(substitution.len());
        let mut chars = substitution.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, chars.peek()) {
                ('\\', Some(d)) if d.is_ascii_digit() => {
                    template.push_str("${");
                    template.push(*d);
                    template.push('}');
                    chars.next();
                }
                ('$', _) => template.push_str("$$"),
                _ => template.push(c),
            }
        }
        self.search
            .replace_all(value, template.as_str())
            .into_owned()
    }

    /// Whether the whole of `value` matches.
    pub fn is_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for FullRegex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// How a string is matched (Istio's `StringMatch`; the Gateway API's Exact/RegularExpression).
#[derive(Clone, Debug, PartialEq)]
pub enum ValueMatch {
    /// Equal.
    Exact(String),
    /// Starts with (a plain string prefix).
    Prefix(String),
    /// The whole value matches.
    Regex(FullRegex),
}

/// How the request path is matched. The path matched is the normalized one, without its query.
#[derive(Clone, Debug, PartialEq)]
pub enum PathMatch {
    /// Equal.
    Exact(String),
    /// A plain string prefix (VirtualService `uri.prefix`).
    Prefix(String),
    /// A prefix of whole `/`-separated segments (Gateway API `PathPrefix`: `/foo` matches
    /// `/foo` and `/foo/bar`, not `/foobar`; a trailing `/` in the prefix is ignored).
    SegmentPrefix(String),
    /// The whole path matches.
    Regex(FullRegex),
}

/// A condition on a header (names are lowercase).
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderMatch {
    /// The header name, lowercase.
    pub name: String,
    /// `None`: the header must be present, any value.
    pub value: Option<ValueMatch>,
    /// VirtualService `withoutHeaders`, or `invertMatch`: the condition must not hold.
    pub invert: bool,
}

/// A condition on a query parameter.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryMatch {
    /// The parameter name (case-sensitive).
    pub name: String,
    /// `None`: present with any value.
    pub value: Option<ValueMatch>,
}

/// One match block: every condition set must hold (AND). A rule's blocks are ORed; a rule with
/// no block matches every request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestMatch {
    /// The path.
    pub path: Option<PathMatch>,
    /// The method, exactly (uppercase as sent).
    pub method: Option<String>,
    /// Headers; for gRPC, also its `:path` service/method (as a path match).
    pub headers: Vec<HeaderMatch>,
    /// Query parameters.
    pub query: Vec<QueryMatch>,
    /// The authority (VirtualService `authority`).
    pub authority: Option<ValueMatch>,
    /// The destination port (VirtualService `port`; Gateway API `parentRefs[].port`).
    pub port: Option<u16>,
    /// Labels the source workload must have (VirtualService `sourceLabels`).
    pub source_labels: BTreeMap<String, String>,
    /// The source workload's namespace (VirtualService `sourceNamespace`).
    pub source_namespace: Option<String>,
}

/// Header edits, applied remove → set → add (Envoy's order in a route's header mutation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HeaderOps {
    /// Replace (or create) these headers.
    pub set: Vec<(String, String)>,
    /// Append these values.
    pub add: Vec<(String, String)>,
    /// Remove these headers.
    pub remove: Vec<String>,
}

impl HeaderOps {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// One weighted destination of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct Backend {
    /// The Service.
    pub service: ServiceName,
    /// The service port; `None`: the port the request came to.
    pub port: Option<u16>,
    /// A DestinationRule subset of the Service.
    pub subset: Option<String>,
    /// The relative weight (0 receives nothing).
    pub weight: u32,
    /// Header edits on requests sent to this backend.
    pub request_headers: HeaderOps,
    /// Header edits on responses from this backend.
    pub response_headers: HeaderOps,
}

/// A path rewrite.
#[derive(Clone, Debug, PartialEq)]
pub enum PathRewrite {
    /// Replace the whole path.
    Full(String),
    /// Replace the matched prefix (the rule's prefix match) with this.
    Prefix(String),
    /// Replace what the rule's regex matched (VirtualService `uriRegexRewrite`).
    Regex {
        /// The pattern.
        pattern: FullRegex,
        /// The substitution (`\1` groups).
        substitution: String,
    },
}

/// Rewrites before forwarding.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rewrite {
    /// The path.
    pub path: Option<PathRewrite>,
    /// The authority (`Host`/`:authority`).
    pub authority: Option<String>,
}

/// Which failures are retried (Envoy's `retry_on`, as Istio's `retryOn` names them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// `5xx`: any 5xx, a reset or a connect failure.
    pub five_xx: bool,
    /// `gateway-error`: 502, 503, 504.
    pub gateway_error: bool,
    /// `connect-failure`.
    pub connect_failure: bool,
    /// `refused-stream`: an HTTP/2 REFUSED_STREAM.
    pub refused_stream: bool,
    /// `reset`: a reset or disconnect before the response head.
    pub reset: bool,
    /// `retriable-4xx`: 409.
    pub retriable_4xx: bool,
    /// `retriable-status-codes`: the codes in [`RetryPolicy::status_codes`].
    pub retriable_status_codes: bool,
    /// gRPC `cancelled`.
    pub grpc_cancelled: bool,
    /// gRPC `deadline-exceeded`.
    pub grpc_deadline_exceeded: bool,
    /// gRPC `resource-exhausted`.
    pub grpc_resource_exhausted: bool,
    /// gRPC `unavailable`.
    pub grpc_unavailable: bool,
}

/// A route's retries.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Retries after the first try (Istio's `attempts`).
    pub attempts: u32,
    /// Each try's deadline; `None`: only the route's timeout.
    pub per_try_timeout: Option<Duration>,
    /// What is retried.
    pub retry_on: RetryOn,
    /// Status codes retried under `retriable-status-codes` (and numbers given in `retryOn`).
    pub status_codes: Vec<u16>,
}

/// A percentage, 0 to 100 (fractions allowed).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Percent(pub f64);

/// What an injected abort answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortStatus {
    /// An HTTP status.
    Http(u16),
    /// A gRPC status (HTTP 200 with `grpc-status`).
    Grpc(u32),
}

/// Injected faults (VirtualService `fault`), each drawn per request.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Fault {
    /// Delay this long, for this share of requests.
    pub delay: Option<(Duration, Percent)>,
    /// Answer this, for this share of requests, without forwarding.
    pub abort: Option<(AbortStatus, Percent)>,
}

/// A copy of the request sent elsewhere; its answer is dropped.
#[derive(Clone, Debug, PartialEq)]
pub struct Mirror {
    /// Where (service, port, subset; weight unused).
    pub backend: Backend,
    /// The share of requests mirrored.
    pub percent: Percent,
}

/// An answer of a redirect instead of forwarding.
#[derive(Clone, Debug, PartialEq)]
pub struct Redirect {
    /// `http`/`https`; `None`: the request's.
    pub scheme: Option<String>,
    /// The host; `None`: the request's.
    pub hostname: Option<String>,
    /// The port; `None`: as the spec derives it.
    pub port: Option<u16>,
    /// The path; `None`: the request's.
    pub path: Option<PathRewrite>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// An answer made by the proxy (VirtualService `directResponse`).
#[derive(Clone, Debug, PartialEq)]
pub struct DirectResponse {
    /// The status.
    pub status: u16,
    /// The body.
    pub body: Option<String>,
}

/// What a matched HTTP rule does.
#[derive(Clone, Debug, PartialEq)]
pub enum HttpAction {
    /// Forward to weighted backends.
    Forward(Box<Forward>),
    /// Answer with a redirect.
    Redirect(Redirect),
    /// Answer directly.
    Respond(DirectResponse),
}

/// Forwarding, with its policies.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Forward {
    /// Weighted backends. Empty: the rule has none (Gateway API: 500).
    pub backends: Vec<Backend>,
    /// Rewrites.
    pub rewrite: Rewrite,
    /// Header edits on the request.
    pub request_headers: HeaderOps,
    /// Header edits on the response.
    pub response_headers: HeaderOps,
    /// The whole request's deadline (VirtualService `timeout`, HTTPRoute `timeouts.request`).
    pub timeout: Option<Duration>,
    /// Retries.
    pub retries: Option<RetryPolicy>,
    /// Injected faults.
    pub fault: Option<Fault>,
    /// Mirrors.
    pub mirrors: Vec<Mirror>,
    /// Indexes into `backends` of those that cannot be resolved (a Gateway API backendRef to a
    /// Service the state lacks, of another kind, or in another namespace): they keep their
    /// share of the weight, and a request that draws one answers 500 (the Gateway API spec).
    pub invalid_backends: Vec<usize>,
}

impl Forward {
    /// Whether `backend` (one of `self.backends`, as [`super::pick_weighted`] returns it) is
    /// one that cannot be resolved: its share answers 500.
    pub fn is_invalid(&self, backend: &Backend) -> bool {
        self.invalid_backends.iter().any(|&i| {
            self.backends
                .get(i)
                .is_some_and(|b| std::ptr::eq(b, backend))
        })
    }
}

/// One HTTP rule, as evaluated: its match blocks and what it does.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpRule {
    /// Where it comes from.
    pub route: RouteRef,
    /// ORed match blocks; empty matches every request.
    pub matches: Vec<RequestMatch>,
    /// What it does.
    pub action: HttpAction,
}

/// One TCP rule (TCPRoute; VirtualService `tcp` routes).
#[derive(Clone, Debug, PartialEq)]
pub struct TcpRule {
    /// Where it comes from.
    pub route: RouteRef,
    /// The destination port it applies to (`None`: every port).
    pub port: Option<u16>,
    /// Weighted backends.
    pub backends: Vec<Backend>,
}

/// DestinationRule `loadBalancer`.
#[derive(Clone, Debug, PartialEq)]
pub enum LoadBalancer {
    /// `ROUND_ROBIN`.
    RoundRobin,
    /// `LEAST_REQUEST` (Envoy's default, two random choices).
    LeastRequest,
    /// `RANDOM`.
    Random,
    /// `consistentHash`: requests with the same key go to the same endpoint.
    ConsistentHash(HashKey),
}

/// What a consistent hash is taken over.
#[derive(Clone, Debug, PartialEq)]
pub enum HashKey {
    /// A request header (lowercase name).
    Header(String),
    /// A cookie; generated with this TTL when absent and a TTL is given.
    Cookie {
        /// The cookie name.
        name: String,
        /// Its TTL when the proxy sets it.
        ttl: Option<Duration>,
        /// Its path.
        path: Option<String>,
    },
    /// The source IP.
    SourceIp,
    /// A query parameter.
    QueryParameter(String),
}

/// DestinationRule `connectionPool`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConnectionPool {
    /// `tcp.maxConnections`: connections to the destination, all endpoints together.
    pub max_connections: Option<u32>,
    /// `tcp.connectTimeout`.
    pub connect_timeout: Option<Duration>,
    /// `http.http1MaxPendingRequests`: requests waiting for a connection.
    pub http1_max_pending_requests: Option<u32>,
    /// `http.http2MaxRequests`: requests in flight.
    pub http2_max_requests: Option<u32>,
    /// `http.maxRequestsPerConnection`.
    pub max_requests_per_connection: Option<u32>,
    /// `http.maxRetries`: retries in flight.
    pub max_retries: Option<u32>,
}

/// DestinationRule `outlierDetection`.
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetection {
    /// `consecutive5xxErrors`: 5xx answers (and connect failures) in a row that eject.
    pub consecutive_5xx: Option<u32>,
    /// `consecutiveGatewayErrors`: 502/503/504 (and connect failures) in a row that eject.
    pub consecutive_gateway_errors: Option<u32>,
    /// `interval`: how often ejections are reconsidered.
    pub interval: Duration,
    /// `baseEjectionTime`: times the number of ejections is how long one lasts.
    pub base_ejection_time: Duration,
    /// `maxEjectionPercent`: never more of the endpoints ejected at once.
    pub max_ejection_percent: u32,
    /// `minHealthPercent`: below this share of healthy endpoints, nothing is ejected.
    pub min_health_percent: u32,
}

/// A DestinationRule `trafficPolicy` (top level, per port or per subset); unset fields inherit.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficPolicy {
    /// `loadBalancer`.
    pub load_balancer: Option<LoadBalancer>,
    /// `connectionPool`.
    pub connection_pool: Option<ConnectionPool>,
    /// `outlierDetection`.
    pub outlier_detection: Option<OutlierDetection>,
}

/// A DestinationRule `subsets[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Subset {
    /// `name`.
    pub name: String,
    /// `labels`: the endpoints whose pods have all of them.
    pub labels: BTreeMap<String, String>,
    /// Its own `trafficPolicy` (overrides the top level's, field by field).
    pub policy: TrafficPolicy,
    /// Its per-port overrides.
    pub port_policies: Vec<(u16, TrafficPolicy)>,
}

/// A DestinationRule, for one Service.
#[derive(Clone, Debug, PartialEq)]
pub struct DestinationPolicy {
    /// The DestinationRule's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The Service it is for.
    pub service: ServiceName,
    /// Top-level `trafficPolicy`.
    pub policy: TrafficPolicy,
    /// `trafficPolicy.portLevelSettings`.
    pub port_policies: Vec<(u16, TrafficPolicy)>,
    /// `subsets`.
    pub subsets: Vec<Subset>,
}

/// A route object, or part of one, refused: it is left out, the rest applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The object's kind (`VirtualService`, `DestinationRule`, `HTTPRoute`, …).
    pub kind: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The field at fault, as a path (`spec.http[0].match[1].uri.regex`).
    pub field: String,
    /// Why.
    pub reason: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}/{} refused: {}: {}",
            self.kind, self.namespace, self.name, self.field, self.reason
        )
    }
}
