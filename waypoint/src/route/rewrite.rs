//! What a rule changes in a request or answers instead: path rewrites (full, prefix, regex),
//! header edits, and a redirect's `Location`. Pure functions; authorization and matching saw
//! the request before any of this.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use marrow_mesh::traffic::{HeaderOps, PathMatch, PathRewrite, Redirect};

/// The path prefix the rule matched on (a prefix match of its first block that holds), what a
/// prefix rewrite replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchedPrefix<'a> {
    /// A plain string prefix (VirtualService `uri.prefix`).
    Plain(&'a str),
    /// Whole segments (Gateway API `PathPrefix`).
    Segments(&'a str),
}

impl<'a> MatchedPrefix<'a> {
    /// The prefix of a path match, if it is one.
    pub fn of(path: Option<&'a PathMatch>) -> Option<Self> {
        match path? {
            PathMatch::Prefix(prefix) => Some(MatchedPrefix::Plain(prefix)),
            PathMatch::SegmentPrefix(prefix) => Some(MatchedPrefix::Segments(prefix)),
            PathMatch::Exact(_) | PathMatch::Regex(_) => None,
        }
    }
}

/// `path` (no query) rewritten. A prefix rewrite without a matched prefix replaces nothing
/// but a leading `/` (Istio's `uri` rewrite on a rule with no prefix match).
pub fn rewrite_path(
    rewrite: &PathRewrite,
    path: &str,
    matched: Option<MatchedPrefix<'_>>,
) -> String {
    match rewrite {
        PathRewrite::Full(full) => full.clone(),
        PathRewrite::Regex {
            pattern,
            substitution,
        } => pattern.replace_all(path, substitution),
        PathRewrite::Prefix(replacement) => match matched {
            // Envoy's `prefix_rewrite`: the matched characters are replaced as they are.
            Some(MatchedPrefix::Plain(prefix)) => match path.strip_prefix(prefix) {
                Some(rest) => format!("{replacement}{rest}"),
                None => path.to_owned(),
            },
            // Gateway API ReplacePrefixMatch: whole segments, and no doubled or missing `/` at
            // the seam (`/foo` → `/` turns `/foo/bar` into `/bar`, `/foo` into `/`).
            Some(MatchedPrefix::Segments(prefix)) => {
                let prefix = prefix.trim_end_matches('/');
                let Some(rest) = path.strip_prefix(prefix) else {
                    return path.to_owned();
                };
                let head = replacement.trim_end_matches('/');
                let joined = if rest.is_empty() {
                    head.to_owned()
                } else {
                    format!("{head}{rest}")
                };
                if joined.is_empty() {
                    "/".to_owned()
                } else {
                    joined
                }
            }
            None => format!(
                "{}{}",
                replacement.trim_end_matches('/'),
                if path.is_empty() { "/" } else { path }
            ),
        },
    }
}

/// `path` rewritten, its query (if any) kept: what a rewritten request carries.
pub fn rewrite_path_and_query(
    rewrite: &PathRewrite,
    path_and_query: &str,
    matched: Option<MatchedPrefix<'_>>,
) -> String {
    let (path, query) = match path_and_query.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (path_and_query, None),
    };
    let path = rewrite_path(rewrite, path, matched);
    match query {
        // A full path that brings its own query replaces the request's (Envoy's
        // `path_redirect` note); otherwise the query is kept.
        Some(_) if path.contains('?') => path,
        Some(query) => format!("{path}?{query}"),
        None => path,
    }
}

/// Applies `ops` to `headers`: remove, then set, then add (Envoy's header mutation order).
/// Names or values that are no valid header are skipped (the parser refuses them first).
pub fn apply_header_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    for name in &ops.remove {
        headers.remove(name.as_str());
    }
    for (name, value) in &ops.set {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &ops.add {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
}

/// The request a redirect answers.
#[derive(Clone, Copy, Debug)]
pub struct Redirected<'a> {
    /// The request's scheme (`http` at the waypoint).
    pub scheme: &'a str,
    /// `Host`/`:authority`, maybe with a port.
    pub authority: &'a str,
    /// The port the request came to (the Service port: a waypoint's "listener").
    pub port: u16,
    /// The normalized path with its query.
    pub path_and_query: &'a str,
    /// The prefix the rule matched, for a prefix replacement.
    pub matched: Option<MatchedPrefix<'a>>,
}

/// The `Location` of `redirect` for `request`, per the Gateway API's RequestRedirect: the
/// scheme, host and path the filter sets or the request's; the port the filter sets, else the
/// scheme's well-known port when it sets a scheme, else the request's port; never `:80` with
/// `http` nor `:443` with `https` (gateway-api `apis/v1/httproute_types.go`,
/// `HTTPRequestRedirectFilter`; istio `pilot/pkg/networking/core/route/route.go`,
/// `translateRedirect`, for VirtualService `redirect` likewise).
pub fn location(redirect: &Redirect, request: &Redirected<'_>) -> String {
    let scheme = redirect.scheme.as_deref().unwrap_or(request.scheme);
    let (request_host, request_port) = split_authority(request.authority);
    let host = redirect.hostname.as_deref().unwrap_or(request_host);
    let port = match (redirect.port, &redirect.scheme) {
        (Some(port), _) => port,
        (None, Some(scheme)) => well_known_port(scheme),
        (None, None) => request_port.unwrap_or(request.port),
    };
    let path = match &redirect.path {
        Some(rewrite) => rewrite_path_and_query(rewrite, request.path_and_query, request.matched),
        None => request.path_and_query.to_owned(),
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    if port == well_known_port(scheme) {
        format!("{scheme}://{host}{path}")
    } else {
        format!("{scheme}://{host}:{port}{path}")
    }
}

/// 443 for `https`, else 80.
fn well_known_port(scheme: &str) -> u16 {
    if scheme.eq_ignore_ascii_case("https") {
        443
    } else {
        80
    }
}

/// An authority's host and port (`[v6]:port` included).
pub fn split_authority(authority: &str) -> (&str, Option<u16>) {
    if let Some(rest) = authority.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((host, tail)) => (host, tail.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (authority, None),
        };
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(port) => (host, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    }
}

/// `authority` with `-shadow` after its host, as Envoy names a mirrored request's host
/// (envoy `source/common/http/utility.cc`, `buildOriginalUri`/`shadowAppendedHost`).
pub fn shadow_authority(authority: &str) -> String {
    match split_authority(authority) {
        (host, Some(port)) if !authority.starts_with('[') => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marrow_mesh::traffic::FullRegex;

    fn redirect(scheme: Option<&str>, host: Option<&str>, port: Option<u16>) -> Redirect {
        Redirect {
            scheme: scheme.map(str::to_owned),
            hostname: host.map(str::to_owned),
            port,
            path: None,
            status: 302,
        }
    }

    fn request<'a>(authority: &'a str, path: &'a str) -> Redirected<'a> {
        Redirected {
            scheme: "http",
            authority,
            port: 8080,
            path_and_query: path,
            matched: None,
        }
    }

    #[test]
    fn location_follows_the_gateway_api() {
        let cases = [
            // Nothing set: the request's host and path, the listener (service) port.
            (
                redirect(None, None, None),
                "web.shop",
                "http://web.shop:8080/a?b=1",
            ),
            // The host's own port wins over the listener's.
            (
                redirect(None, None, None),
                "web.shop:80",
                "http://web.shop/a?b=1",
            ),
            (
                redirect(None, Some("other"), None),
                "web.shop",
                "http://other:8080/a?b=1",
            ),
            // A scheme set: its well-known port, left out.
            (
                redirect(Some("https"), None, None),
                "web.shop:8080",
                "https://web.shop/a?b=1",
            ),
            (
                redirect(Some("https"), None, Some(8443)),
                "web.shop",
                "https://web.shop:8443/a?b=1",
            ),
            (
                redirect(Some("http"), None, Some(80)),
                "web.shop",
                "http://web.shop/a?b=1",
            ),
        ];
        for (redirect, authority, want) in cases {
            assert_eq!(
                location(&redirect, &request(authority, "/a?b=1")),
                want,
                "{redirect:?}"
            );
        }
        let mut full = redirect(None, None, Some(80));
        full.path = Some(PathRewrite::Full("/new".into()));
        assert_eq!(
            location(&full, &request("web.shop", "/old/x?q=1")),
            "http://web.shop/new?q=1"
        );
        let mut prefix = full.clone();
        prefix.path = Some(PathRewrite::Prefix("/v2".into()));
        let mut matched = request("web.shop", "/v1/items");
        matched.matched = Some(MatchedPrefix::Segments("/v1"));
        assert_eq!(location(&prefix, &matched), "http://web.shop/v2/items");
    }

    #[test]
    fn path_rewrites() {
        let seg = |p| Some(MatchedPrefix::Segments(p));
        let prefix = |r: &str| PathRewrite::Prefix(r.into());
        assert_eq!(
            rewrite_path(&prefix("/bar"), "/foo/x", seg("/foo")),
            "/bar/x"
        );
        assert_eq!(rewrite_path(&prefix("/"), "/foo/x", seg("/foo")), "/x");
        assert_eq!(rewrite_path(&prefix("/"), "/foo", seg("/foo/")), "/");
        assert_eq!(rewrite_path(&prefix("/bar/"), "/foo", seg("/foo")), "/bar");
        assert_eq!(
            rewrite_path(&prefix("/b"), "/foo/x", Some(MatchedPrefix::Plain("/fo"))),
            "/bo/x",
            "a plain prefix is replaced character for character"
        );
        assert_eq!(
            rewrite_path(&prefix("/b"), "/other", seg("/foo")),
            "/other",
            "a path without the prefix stays"
        );
        assert_eq!(
            rewrite_path(&PathRewrite::Full("/z".into()), "/foo/x", None),
            "/z"
        );
        let regex = PathRewrite::Regex {
            pattern: FullRegex::new("^/service/([^/]+)(/.*)$").unwrap(),
            substitution: "\\2/instance/\\1".into(),
        };
        assert_eq!(
            rewrite_path(&regex, "/service/foo/v1/api", None),
            "/v1/api/instance/foo"
        );
        assert_eq!(
            rewrite_path_and_query(&PathRewrite::Full("/z".into()), "/a?x=1", None),
            "/z?x=1"
        );
    }

    #[test]
    fn header_ops_remove_set_add() {
        let mut headers = HeaderMap::new();
        headers.insert("x-gone", HeaderValue::from_static("1"));
        headers.insert("x-set", HeaderValue::from_static("old"));
        headers.insert("x-add", HeaderValue::from_static("a"));
        apply_header_ops(
            &mut headers,
            &HeaderOps {
                set: vec![("x-set".into(), "new".into())],
                add: vec![("x-add".into(), "b".into())],
                remove: vec!["x-gone".into()],
            },
        );
        assert!(!headers.contains_key("x-gone"));
        assert_eq!(headers["x-set"], "new");
        let added: Vec<_> = headers.get_all("x-add").iter().collect();
        assert_eq!(added, ["a", "b"]);
    }

    #[test]
    fn shadow_hosts() {
        assert_eq!(shadow_authority("web.shop"), "web.shop-shadow");
        assert_eq!(shadow_authority("web.shop:8080"), "web.shop-shadow:8080");
        assert_eq!(split_authority("[::1]:80"), ("::1", Some(80)));
    }
}
