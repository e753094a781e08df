//! Rule matching for an HTTP request at a waypoint: the L4 fields against the original
//! client's connection, plus `to.operation` hosts/methods/paths, `from.source.remoteIpBlocks`
//! and the `when` keys only an L7 proxy reads.
//!
//! Invariant: matching a request allocates nothing (a header with several values is joined
//! with `,` as Envoy's `getAllOfHeaderAsString` does; that one case allocates), and every
//! pattern was parsed once with the policy.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, Method};

use super::matcher::{IpBlock, Match, StringMatch};
use super::model::{Action, ConnectionAttrs, Operation, Rule, Source, join};
use crate::path::NormalizedPath;

/// An HTTP request as policy sees it at a waypoint.
#[derive(Clone, Copy, Debug)]
pub struct RequestAttrs<'a> {
    /// The ORIGINAL client (its identity from the tunnel, its address from `forwarded`) and the
    /// destination it asked for (the CONNECT target).
    pub conn: &'a ConnectionAttrs,
    /// The authority without its port, lowercase (see [`request_host`]).
    pub host: &'a str,
    /// The method.
    pub method: &'a Method,
    /// The normalized path; its query is not matched (Istio matches paths without it).
    pub path: &'a NormalizedPath,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The TLS server name the client sent, if the request came over TLS.
    pub sni: Option<&'a str>,
}

/// `authority` as `hosts` match it: without the port, lowercase (allocates only when it has
/// uppercase letters). `[v6]:port` keeps its brackets.
pub fn request_host(authority: &str) -> Cow<'_, str> {
    let host = match authority.rfind(':') {
        Some(at) if !authority[at..].contains(']') => &authority[..at],
        _ => authority,
    };
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// A `when` condition only an L7 proxy reads.
#[derive(Clone, Debug, PartialEq)]
pub enum RequestCondition {
    /// `request.headers[name]`: the header's value (several values joined with `,`); `*` is
    /// presence, even of an empty value, as Envoy's `present_match`.
    Header {
        /// The header (lowercase).
        name: HeaderName,
        /// The values.
        values: Match<StringMatch>,
    },
    /// `remote.ip`: the original client's address.
    RemoteIp(Match<IpBlock>),
    /// `connection.sni`.
    Sni(Match<StringMatch>),
}

impl RequestCondition {
    /// Whether the condition holds for `req`.
    pub fn matches(&self, req: &RequestAttrs<'_>) -> bool {
        match self {
            Self::Header { name, values } => {
                let value = header(req.headers, name);
                let value = value.as_deref();
                // `*` matches a present header, empty or not; the rest as Istio's strings.
                let positive = values.any_of.is_empty()
                    || value.is_some_and(|v| values.any_of.iter().any(|p| header_is(p, v)));
                let negative =
                    value.is_none_or(|v| !values.none_of.iter().any(|p| header_is(p, v)));
                positive && negative
            }
            Self::RemoteIp(m) => m.matches(Some(&req.conn.source_ip)),
            Self::Sni(m) => m.matches(req.sni),
        }
    }

    fn explain(&self, req: &RequestAttrs<'_>, out: &mut Vec<String>) {
        match self {
            Self::Header { name, values } => {
                let value = header(req.headers, name);
                let field = format!("when request.headers[{name}]");
                values.explain(&field, value.as_deref(), out);
            }
            Self::RemoteIp(m) => m.explain("when remote.ip", Some(&req.conn.source_ip), out),
            Self::Sni(m) => m.explain("when connection.sni", req.sni, out),
        }
    }
}

/// A header pattern: `*` is presence (an empty value counts).
fn header_is(pattern: &StringMatch, value: &str) -> bool {
    matches!(pattern, StringMatch::Presence) || pattern.matches(value)
}

/// The header's value as Envoy's matchers see it: all values joined with `,`.
fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<Cow<'h, str>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let mut text = String::from_utf8_lossy(first.as_bytes());
    for more in values {
        let joined = text.to_mut();
        joined.push(',');
        joined.push_str(&String::from_utf8_lossy(more.as_bytes()));
    }
    Some(text)
}

impl Rule {
    /// Istio's rule semantics for a request at a waypoint under `action`: an ALLOW rule with
    /// anything the waypoint does not check never matches; a DENY or CUSTOM rule is checked
    /// without it.
    pub fn matches_request(&self, action: Action, req: &RequestAttrs<'_>) -> bool {
        if action == Action::Allow && !self.unchecked_at_waypoint.is_empty() {
            return false;
        }
        (self.from.is_empty() || self.from.iter().any(|s| s.matches_request(req)))
            && (self.to.is_empty() || self.to.iter().any(|o| o.matches_request(req)))
            && self.when.iter().all(|c| c.matches(req.conn))
            && self.request_when.iter().all(|c| c.matches(req))
    }

    /// What made a matching rule match a request, for the decision's reason.
    pub fn explain_request(&self, req: &RequestAttrs<'_>) -> String {
        let mut parts = Vec::new();
        if let Some(source) = self.from.iter().find(|s| s.matches_request(req)) {
            source.explain(req.conn, &mut parts);
            source
                .remote_ip_blocks
                .explain("remote.ip", Some(&req.conn.source_ip), &mut parts);
        }
        if let Some(op) = self.to.iter().find(|o| o.matches_request(req)) {
            let port = req.conn.destination_port;
            op.ports
                .explain("destination.port", Some(&port), &mut parts);
            op.hosts.explain("request.host", Some(req.host), &mut parts);
            op.methods
                .explain("request.method", Some(req.method.as_str()), &mut parts);
            op.paths
                .explain("request.path", Some(req.path.path()), &mut parts);
        }
        for condition in &self.when {
            condition.explain(req.conn, &mut parts);
        }
        for condition in &self.request_when {
            condition.explain(req, &mut parts);
        }
        let mut text = if parts.is_empty() {
            "the rule matches every request".to_owned()
        } else {
            parts.join(", ")
        };
        if !self.unchecked_at_waypoint.is_empty() {
            text.push_str(&format!(
                " (not checked: {})",
                join(&self.unchecked_at_waypoint)
            ));
        }
        text
    }
}

impl Source {
    /// Whether every set field matches the request's original client.
    pub fn matches_request(&self, req: &RequestAttrs<'_>) -> bool {
        self.matches(req.conn) && self.remote_ip_blocks.matches(Some(&req.conn.source_ip))
    }
}

impl Operation {
    /// Whether port, host, method and path match.
    pub fn matches_request(&self, req: &RequestAttrs<'_>) -> bool {
        self.matches(req.conn)
            && self.hosts.matches(Some(req.host))
            && self.methods.matches(Some(req.method.as_str()))
            && self.paths.matches(Some(req.path.path()))
    }
}
