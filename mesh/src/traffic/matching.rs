//! Matching a request against a rule's match blocks, and the weighted choice of a backend.
//! Pure functions: the waypoint, the node proxy and `node-proxy routes` call the same ones.

use std::collections::BTreeMap;

use super::model::{Backend, HeaderMatch, PathMatch, QueryMatch, RequestMatch, ValueMatch};

/// What a rule can match on in a request.
#[derive(Clone, Copy, Debug)]
pub struct RouteRequest<'a> {
    /// The destination (service) port.
    pub port: u16,
    /// The method, as sent.
    pub method: &'a str,
    /// The normalized path with its query (`/a/b?x=1`).
    pub path_and_query: &'a str,
    /// `:authority` or `Host`.
    pub authority: &'a str,
    /// The request headers.
    pub headers: &'a http::HeaderMap,
    /// The source workload's namespace, when it is known.
    pub source_namespace: Option<&'a str>,
    /// The source workload's labels, when it is known.
    pub source_labels: Option<&'a BTreeMap<String, String>>,
}

impl RouteRequest<'_> {
    /// The path without its query.
    pub fn path(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or(self.path_and_query, |(path, _)| path)
    }

    /// The query string (after `?`), empty when none.
    pub fn query(&self) -> &str {
        self.path_and_query
            .split_once('?')
            .map_or("", |(_, query)| query)
    }

    /// Whether one of `blocks` holds; no block at all holds for every request.
    pub fn matches_any(&self, blocks: &[RequestMatch]) -> bool {
        blocks.is_empty() || blocks.iter().any(|block| self.matches(block))
    }

    /// Whether every condition of `block` holds.
    pub fn matches(&self, block: &RequestMatch) -> bool {
        block.port.is_none_or(|port| port == self.port)
            && block
                .method
                .as_deref()
                .is_none_or(|method| method == self.method)
            && block
                .path
                .as_ref()
                .is_none_or(|path| path_matches(path, self.path()))
            && block
                .authority
                .as_ref()
                .is_none_or(|m| value_matches(m, self.authority))
            && block.headers.iter().all(|h| self.header_holds(h))
            && block.query.iter().all(|q| self.query_holds(q))
            && block
                .source_namespace
                .as_deref()
                .is_none_or(|ns| self.source_namespace == Some(ns))
            && (block.source_labels.is_empty()
                || self.source_labels.is_some_and(|labels| {
                    block
                        .source_labels
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                }))
    }

    /// A header condition: some value of the header matches (or, with no value match, the
    /// header is present); inverted when the condition says so.
    fn header_holds(&self, condition: &HeaderMatch) -> bool {
        let mut values = self.headers.get_all(condition.name.as_str()).iter();
        let held = match &condition.value {
            None => values.next().is_some(),
            Some(m) => values.any(|v| v.to_str().is_ok_and(|v| value_matches(m, v))),
        };
        held != condition.invert
    }

    /// A query condition: the first parameter of that name (Envoy's query matcher reads the
    /// first), its value percent-decoded no further than the request carried it.
    fn query_holds(&self, condition: &QueryMatch) -> bool {
        let found = self.query().split('&').find_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (name == condition.name).then_some(value)
        });
        match (&condition.value, found) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(m), Some(value)) => value_matches(m, value),
        }
    }
}

/// Whether `value` matches.
pub(super) fn value_matches(m: &ValueMatch, value: &str) -> bool {
    match m {
        ValueMatch::Exact(exact) => value == exact,
        ValueMatch::Prefix(prefix) => value.starts_with(prefix.as_str()),
        ValueMatch::Regex(regex) => regex.is_match(value),
    }
}

/// Whether `path` (no query) matches.
pub(super) fn path_matches(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(exact) => path == exact,
        PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
        PathMatch::SegmentPrefix(prefix) => {
            let prefix = prefix.trim_end_matches('/');
            prefix.is_empty()
                || path
                    .strip_prefix(prefix)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        }
        PathMatch::Regex(regex) => regex.is_match(path),
    }
}

/// The backend a draw in `0..u64::MAX` lands on, in proportion to the weights; `None` when
/// every weight is 0 (or there is no backend). The same draw always lands on the same backend.
pub fn pick_weighted(backends: &[Backend], draw: u64) -> Option<&Backend> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut point = draw % total;
    backends.iter().find(|backend| {
        let weight = u64::from(backend.weight);
        if point < weight {
            true
        } else {
            point -= weight;
            false
        }
    })
}
