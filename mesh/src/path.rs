//! Request path normalization, applied by the waypoint before it matches a path against policy
//! and before it forwards the request, so what is checked is what the backend receives.
//!
//! What it does follows Envoy's `normalize_path` + `merge_slashes` (Istio's `MERGE_SLASHES`
//! setting; Envoy's `source/common/http/path_utility.cc`, `canonicalPath` then `mergeSlashes`):
//! percent-encoded unreserved characters (RFC 3986 `ALPHA DIGIT - . _ ~`) are decoded, the
//! other escapes are kept with their hex digits uppercased, `\` reads as `/` (as Chromium's URL
//! canonicalizer, which Envoy uses, reads it), dot segments are removed (RFC 3986 §5.2.4; a
//! `..` above the root is dropped), then runs of `/` are merged. The query (from the first `?`)
//! is kept untouched.
//!
//! `%2F` and `%5C` stay escaped: Envoy's `path_with_escaped_slashes_action`, which Istio leaves
//! at its default (`KEEP_UNCHANGED`), so `/admin%2Fx` is one segment `admin%2Fx`, not
//! `/admin/x`. A backend that decodes them itself sees a path policy did not match; a DENY
//! meant to cover that must say `/admin%2F*` too (as with Istio).
//!
//! Refused, as Envoy answers 400: a path that does not start with `/` (except `*`, the
//! asterisk form of OPTIONS), an escape that is not `%` and two hex digits, `%00`, control
//! characters and a fragment (`#`). Other characters a path may not hold (space, `"`, `<`, …,
//! non-ASCII bytes) are percent-encoded, as Chromium's canonicalizer does.

use std::fmt;

/// Why a request path was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is neither `*` nor starts with `/`.
    #[error("path {path:?} does not start with /")]
    NotAbsolute {
        /// The path as received (cut to 64 bytes).
        path: String,
    },
    /// A `%` not followed by two hex digits.
    #[error("path {path:?} has an invalid percent escape at byte {at}")]
    InvalidEscape {
        /// The path as received (cut to 64 bytes).
        path: String,
        /// Where the `%` is.
        at: usize,
    },
    /// `%00` or a raw NUL: the backend may cut the path there.
    #[error("path {path:?} encodes a NUL byte")]
    Nul {
        /// The path as received (cut to 64 bytes).
        path: String,
    },
    /// A control character or `#` in the path.
    #[error("path {path:?} has a control character or fragment at byte {at}")]
    InvalidCharacter {
        /// The path as received (cut to 64 bytes).
        path: String,
        /// Where the character is.
        at: usize,
    },
}

/// A normalized request target: the path (normalized) and the query (as received).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NormalizedPath {
    /// Path and query, as forwarded.
    full: String,
    /// Where the query starts in `full` (its length when there is none).
    path_len: usize,
}

impl NormalizedPath {
    /// The normalized path without the query: what policy matches (Istio matches paths without
    /// the query string).
    pub fn path(&self) -> &str {
        self.full.get(..self.path_len).unwrap_or(&self.full)
    }

    /// The query with its `?`, as received; empty when there is none.
    pub fn query(&self) -> &str {
        self.full.get(self.path_len..).unwrap_or("")
    }

    /// Path and query: what the waypoint forwards.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for NormalizedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

/// Normalizes a request target's path and query (see the module's notes). `*` comes back as
/// it is: the caller refuses it for any method but OPTIONS.
pub fn normalize(raw: &str) -> Result<NormalizedPath, PathError> {
    if raw == "*" {
        return Ok(NormalizedPath {
            full: raw.to_owned(),
            path_len: 1,
        });
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute { path: shown(raw) });
    }
    let (path, query) = match raw.find('?') {
        Some(at) => raw.split_at(at),
        None => (raw, ""),
    };
    let decoded = decode(raw, path)?;
    let mut out = String::with_capacity(raw.len());
    // Dot segments first, then merged slashes: Envoy's order (`canonicalPath`, then
    // `mergeSlashes`), so `/a//../b` is `/a/b` here as there.
    let segments = remove_dot_segments(&decoded);
    let last = segments.len().saturating_sub(1);
    for (i, segment) in segments.iter().enumerate() {
        if segment.is_empty() && i != last {
            continue;
        }
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() {
        out.push('/');
    }
    let path_len = out.len();
    out.push_str(query);
    Ok(NormalizedPath {
        full: out,
        path_len,
    })
}

/// The path with unreserved escapes decoded, other escapes uppercased, `\` as `/`, and
/// characters a path may not hold percent-encoded.
fn decode(raw: &str, path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|h| (*h as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(PathError::InvalidEscape {
                        path: shown(raw),
                        at: i,
                    });
                };
                let value = u8::try_from(hi * 16 + lo).unwrap_or(0);
                if value == 0 {
                    return Err(PathError::Nul { path: shown(raw) });
                }
                if is_unreserved(value) {
                    out.push(char::from(value));
                } else {
                    push_escape(&mut out, value);
                }
                i += 3;
                continue;
            }
            0 => return Err(PathError::Nul { path: shown(raw) }),
            b'#' | 0x01..=0x1f | 0x7f => {
                return Err(PathError::InvalidCharacter {
                    path: shown(raw),
                    at: i,
                });
            }
            b'\\' => out.push('/'),
            b if is_path_char(b) => out.push(char::from(b)),
            other => push_escape(&mut out, other),
        }
        i += 1;
    }
    Ok(out)
}

/// The segments after the leading `/`, dot segments removed (RFC 3986 §5.2.4): `.` is dropped,
/// `..` drops the segment before it (none above the root), and a path ending in a dot segment
/// keeps its trailing `/` (an empty last segment).
fn remove_dot_segments(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    let mut parts = path.split('/').skip(1).peekable();
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => {}
            ".." => {
                out.pop();
            }
            other => {
                out.push(other);
                continue;
            }
        }
        if last {
            out.push("");
        }
    }
    out
}

/// RFC 3986 unreserved: `ALPHA DIGIT - . _ ~`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 `pchar` plus `/`: what a path holds unescaped.
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'/' | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// `%XX` with uppercase hex digits.
fn push_escape(out: &mut String, value: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(value >> 4)]));
    out.push(char::from(HEX[usize::from(value & 0xf)]));
}

/// At most 64 bytes of `raw`, for an error message.
fn shown(raw: &str) -> String {
    let mut end = raw.len().min(64);
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    raw[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> String {
        normalize(raw).unwrap().as_str().to_owned()
    }

    #[test]
    fn bypass_forms_of_admin_normalize_to_admin() {
        for raw in [
            "/admin",
            "//admin",
            "///admin",
            "/./admin",
            "/a/../admin",
            "/a/b/../../admin",
            "/../admin",
            "/%61dmin",
            "/%2e/admin",
            "/%2E%2E/admin",
            "/x/%2e%2e/admin",
            "/\\admin",
            "/.//admin",
        ] {
            assert_eq!(norm(raw), "/admin", "{raw}");
        }
    }

    #[test]
    fn what_stays_distinct_stays_distinct() {
        assert_eq!(norm("/admin/"), "/admin/");
        assert_eq!(norm("/ADMIN"), "/ADMIN");
        assert_eq!(norm("/admin%2Fx"), "/admin%2Fx");
        assert_eq!(norm("/admin%2fx"), "/admin%2Fx", "escapes uppercased");
        assert_eq!(norm("/admin%5cx"), "/admin%5Cx");
        assert_eq!(norm("/a/b/.."), "/a/");
        assert_eq!(norm("/a/."), "/a/");
        assert_eq!(norm("/"), "/");
        assert_eq!(norm("/.."), "/");
        assert_eq!(norm("/a b"), "/a%20b");
        assert_eq!(norm("/caf\u{e9}"), "/caf%C3%A9");
        assert_eq!(norm("*"), "*");
    }

    #[test]
    fn the_query_is_kept_and_left_out_of_the_path() {
        let p = normalize("//admin/./x?a=/../b&c=%2e").unwrap();
        assert_eq!(p.path(), "/admin/x");
        assert_eq!(p.query(), "?a=/../b&c=%2e");
        assert_eq!(p.as_str(), "/admin/x?a=/../b&c=%2e");
        assert_eq!(normalize("/a").unwrap().query(), "");
    }

    #[test]
    fn refused_paths_name_the_reason() {
        assert!(matches!(
            normalize("admin"),
            Err(PathError::NotAbsolute { .. })
        ));
        assert!(matches!(normalize(""), Err(PathError::NotAbsolute { .. })));
        for bad in ["/a%", "/a%4", "/a%zz", "/a%g1", "/%%61dmin"] {
            assert!(
                matches!(normalize(bad), Err(PathError::InvalidEscape { .. })),
                "{bad}"
            );
        }
        assert!(matches!(normalize("/a%00b"), Err(PathError::Nul { .. })));
        assert!(matches!(normalize("/a\0b"), Err(PathError::Nul { .. })));
        assert!(matches!(
            normalize("/a\nb"),
            Err(PathError::InvalidCharacter { at: 2, .. })
        ));
        assert!(matches!(
            normalize("/a#b"),
            Err(PathError::InvalidCharacter { .. })
        ));
        let long = format!("/{}%", "a".repeat(100));
        let text = normalize(&long).unwrap_err().to_string();
        assert!(text.len() < 120, "{text}");
    }

    #[test]
    fn an_overlong_utf8_escape_is_not_decoded_to_a_slash() {
        // `%C0%AF` is an overlong `/`: neither byte is unreserved, so both stay escaped.
        assert_eq!(norm("/admin%c0%afx"), "/admin%C0%AFx");
    }
}
