//! Which application protocol a Service port speaks, chosen as Istio chooses it, so a port
//! named or annotated for Istio means the same to marrow.
//!
//! Follows istio/istio `pkg/config/kube/conversion.go` (`ConvertProtocol`) and
//! `pkg/config/protocol/instance.go` (`Parse`): `appProtocol` when set, used *instead of* the
//! port name (the name is then not consulted at all); Kubernetes' own `kubernetes.io/h2c`,
//! `kubernetes.io/ws` and `kubernetes.io/wss`; a `grpc-web` prefix; else the text up to the
//! first `-`, case-insensitively; nothing recognised → sniffed, except the well-known ports
//! 25, 53, 3306 and 27017, which are TCP.

/// What the waypoint does with a port's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 (Istio's `HTTP`, and `http_proxy`, `kubernetes.io/ws`).
    Http,
    /// HTTP/2 with prior knowledge (Istio's `HTTP2`, `kubernetes.io/h2c`).
    Http2,
    /// gRPC: HTTP/2 (Istio's `GRPC`, `GRPC-Web` is HTTP/1.1 or 2 and counted here too).
    Grpc,
    /// Opaque bytes: relayed at L4 (TCP, TLS, HTTPS, mongo, redis, mysql: nothing the
    /// waypoint can read).
    Tcp,
    /// UDP: never carried in HBONE.
    Udp,
    /// Not declared: sniff the first bytes.
    Unspecified,
}

impl Protocol {
    /// Whether the waypoint proxies it as HTTP (of either version).
    pub fn is_http(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Whether upstream connections speak HTTP/2 with prior knowledge.
    pub fn is_http2(self) -> bool {
        matches!(self, Protocol::Http2 | Protocol::Grpc)
    }

    /// Istio's name of the protocol (`request_protocol`-like; `unknown` when unspecified).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Grpc => "grpc",
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Unspecified => "unknown",
        }
    }
}

/// Ports Istio treats as TCP when nothing else is declared (SMTP, DNS, MySQL, MongoDB: server
/// first, so sniffing would only wait).
const WELL_KNOWN_TCP: [u16; 4] = [25, 53, 3306, 27017];

/// The protocol of a TCP service port with `app_protocol`, `name` and number `port`.
pub fn of_port(app_protocol: Option<&str>, name: &str, port: u16) -> Protocol {
    let text = match app_protocol.filter(|p| !p.is_empty()) {
        Some("kubernetes.io/h2c") => return Protocol::Http2,
        Some("kubernetes.io/ws") => return Protocol::Http,
        Some("kubernetes.io/wss") => return Protocol::Tcp,
        Some(declared) => declared,
        None => name,
    };
    match parse(text) {
        Protocol::Unspecified if WELL_KNOWN_TCP.contains(&port) => Protocol::Tcp,
        protocol => protocol,
    }
}

/// Istio's `protocol.Parse` of a name or appProtocol: a `grpc-web` prefix, else the text up
/// to the first `-`, case-insensitive.
fn parse(text: &str) -> Protocol {
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("grpc-web") {
        return Protocol::Grpc;
    }
    let prefix = lower.split('-').next().unwrap_or_default();
    match prefix {
        "http" | "http_proxy" => Protocol::Http,
        "http2" => Protocol::Http2,
        "grpc" => Protocol::Grpc,
        "tcp" | "https" | "tls" | "mongo" | "redis" | "mysql" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => Protocol::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_get_istios_protocol() {
        use Protocol::*;
        let cases: &[(Option<&str>, &str, u16, Protocol)] = &[
            // By name prefix, case-insensitive, cut at the first '-'.
            (None, "http", 80, Http),
            (None, "HTTP-web", 80, Http),
            (None, "http2", 80, Http2),
            (None, "http2-api", 80, Http2),
            (None, "grpc", 9000, Grpc),
            (None, "grpc-web", 9000, Grpc),
            (None, "tcp-db", 5432, Tcp),
            (None, "https", 443, Tcp),
            (None, "tls-x", 443, Tcp),
            (None, "redis", 6379, Tcp),
            (None, "http_proxy", 3128, Http),
            // Not a prefix match: "httpx" is no protocol, nor is a bare suffix.
            (None, "httpx", 80, Unspecified),
            (None, "web-http", 80, Unspecified),
            (None, "", 8080, Unspecified),
            // The well-known server-first ports are TCP when nothing is declared...
            (None, "", 3306, Tcp),
            (None, "db", 27017, Tcp),
            (None, "", 25, Tcp),
            (None, "", 53, Tcp),
            // ...but a declaration wins.
            (None, "http", 3306, Http),
            // appProtocol replaces the name entirely.
            (Some("http"), "tcp", 80, Http),
            (Some("tcp"), "http", 80, Tcp),
            (Some("kubernetes.io/h2c"), "tcp", 80, Http2),
            (Some("kubernetes.io/ws"), "", 80, Http),
            (Some("kubernetes.io/wss"), "http", 443, Tcp),
            (Some("grpc"), "", 80, Grpc),
            (Some("unknown-thing"), "http", 80, Unspecified),
            // An empty appProtocol counts as unset.
            (Some(""), "http", 80, Http),
            (None, "udp-dns", 5353, Udp),
        ];
        for (app, name, port, want) in cases {
            assert_eq!(
                of_port(*app, name, *port),
                *want,
                "appProtocol {app:?}, name {name:?}, port {port}"
            );
        }
    }

    #[test]
    fn http_kinds() {
        assert!(Protocol::Grpc.is_http() && Protocol::Grpc.is_http2());
        assert!(Protocol::Http.is_http() && !Protocol::Http.is_http2());
        assert!(!Protocol::Tcp.is_http() && !Protocol::Unspecified.is_http());
    }
}
