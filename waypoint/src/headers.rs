//! Request and response headers at the proxy: request framing that could smuggle a second
//! request past the waypoint is refused; hop-by-hop headers are not forwarded (RFC 9110
//! §7.6.1); the original client is appended to `x-forwarded-for` and `forwarded`, as Envoy's
//! HTTP connection manager does.

use std::net::SocketAddr;

use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, TRANSFER_ENCODING, UPGRADE};
use http::{HeaderMap, HeaderValue};

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1, plus the non-standard
/// `keep-alive` and `proxy-connection` that Envoy also removes).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
];

/// Why an HTTP/1 request's framing is refused (answered 400, connection closed). A second line
/// behind hyper's parser, which already refuses differing lengths and a transfer-encoding not
/// ending in chunked; given both headers hyper drops the length, so that case is caught before
/// hyper by [`crate::guard_io`]: whatever framing reaches the proxy is checked again before it
/// is forwarded.
pub fn check_framing(headers: &HeaderMap) -> Result<(), &'static str> {
    let has_te = headers.contains_key(TRANSFER_ENCODING);
    let lengths: Vec<&HeaderValue> = headers.get_all(CONTENT_LENGTH).iter().collect();
    // RFC 9112 §6.1: a request with both is a smuggling attempt or a broken client; Envoy
    // refuses it unless told otherwise, and so do we.
    if has_te && !lengths.is_empty() {
        return Err("content-length together with transfer-encoding");
    }
    // Only `chunked` alone: hyper refuses a transfer-encoding that does not end in chunked,
    // but takes `gzip, chunked` and undoes only the chunks; the coding under them would reach
    // the upstream undeclared (transfer-encoding is hop-by-hop). Envoy's HTTP/1 codec also
    // takes no coding but chunked (source/common/http/http1/codec_impl.cc).
    if has_te {
        let mut codings = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|c| !c.is_empty());
        let only_chunked = codings
            .next()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
            && codings.next().is_none();
        if !only_chunked {
            return Err("transfer-encoding other than chunked");
        }
    }
    if let Some(first) = lengths.first()
        && lengths.iter().any(|v| v != first)
    {
        return Err("content-length given twice with different values");
    }
    Ok(())
}

/// Whether an HTTP/1 request asks to switch protocols (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(UPGRADE) && connection_tokens(headers).any(|t| t == "upgrade")
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers and those `Connection` names; with `keep_upgrade`, `Upgrade` and
/// `Connection: upgrade` stay (a protocol switch travels end to end). Duplicate identical
/// `Content-Length` values become one.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let upgrade = headers.get(UPGRADE).cloned();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade && let Some(upgrade) = upgrade {
        headers.insert(UPGRADE, upgrade);
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if headers.get_all(CONTENT_LENGTH).iter().count() > 1
        && let Some(length) = headers.get(CONTENT_LENGTH).cloned()
    {
        headers.insert(CONTENT_LENGTH, length);
    }
}

/// Appends the original client to `x-forwarded-for` (its IP) and `forwarded`
/// (`for="ip:port";proto=http`), and sets `x-forwarded-proto` when absent.
pub fn append_client(headers: &mut HeaderMap, client: SocketAddr) {
    let ip = client.ip().to_canonical().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {ip}"),
        _ => ip,
    };
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", value);
    }
    let client = SocketAddr::new(client.ip().to_canonical(), client.port());
    let element = format!("for=\"{client}\";proto=http");
    let forwarded = match headers.get("forwarded").and_then(|v| v.to_str().ok()) {
        Some(existing) if !existing.trim().is_empty() => format!("{existing}, {element}"),
        _ => element,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded) {
        headers.insert("forwarded", value);
    }
    if !headers.contains_key("x-forwarded-proto") {
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert!(check_framing(&map(&[("content-length", "5")])).is_ok());
        assert!(check_framing(&map(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(
            check_framing(&map(&[("content-length", "5"), ("content-length", "5")])).is_ok(),
            "identical duplicates are one length"
        );
        assert!(
            check_framing(&map(&[
                ("content-length", "5"),
                ("transfer-encoding", "chunked")
            ]))
            .is_err()
        );
        assert!(check_framing(&map(&[("content-length", "5"), ("content-length", "6")])).is_err());
        assert!(check_framing(&map(&[("transfer-encoding", "Chunked ")])).is_ok());
        for coding in ["gzip, chunked", "chunked, chunked", "gzip", ""] {
            assert!(
                check_framing(&map(&[("transfer-encoding", coding)])).is_err(),
                "{coding:?}"
            );
        }
        assert!(
            check_framing(&map(&[
                ("transfer-encoding", "gzip"),
                ("transfer-encoding", "chunked")
            ]))
            .is_err(),
            "codings over two lines"
        );
    }

    #[test]
    fn hop_by_hop_headers_stay_on_their_hop() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("te", "trailers"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");

        let mut ws = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&ws));
        strip_hop_by_hop(&mut ws, true);
        assert_eq!(ws["upgrade"], "websocket");
        assert_eq!(ws["connection"], "upgrade");
        assert!(
            !is_upgrade(&map(&[("upgrade", "websocket")])),
            "no Connection: upgrade"
        );
    }

    #[test]
    fn the_client_is_appended() {
        let mut h = map(&[("x-forwarded-for", "192.0.2.1")]);
        append_client(&mut h, "10.0.0.5:4000".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.0.0.5");
        assert_eq!(h["forwarded"], "for=\"10.0.0.5:4000\";proto=http");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut v6 = HeaderMap::new();
        append_client(&mut v6, "[fd00::5]:4000".parse().unwrap());
        assert_eq!(v6["forwarded"], "for=\"[fd00::5]:4000\";proto=http");
    }
}
