//! Trace context on the wire: W3C Trace Context (`traceparent`, `tracestate`) and B3 (the
//! `x-b3-*` headers and the single `b3` header), read from a request ([`extract`]) and written
//! onto the request sent upstream ([`inject`]).
//!
//! Which formats: both are read; the ids come from `traceparent` when it is valid, else from
//! `b3`, else from `x-b3-*` (B3's rule: the single header wins over the multiple ones). What is
//! written is what came: every valid format that arrived is written again with the new span,
//! and W3C alone when none came. Envoy's OpenTelemetry tracer reads and writes W3C only; its
//! Zipkin tracer reads B3 and, with `USE_B3_WITH_W3C_PROPAGATION`, writes both; marrow answers
//! each client in the formats it spoke, so a B3-only app behind the waypoint keeps its traces.
//!
//! Validation is W3C's, stricter than Envoy's (`span_context_extractor.cc` in
//! `source/extensions/tracers/opentelemetry/` accepts uppercase hex and any version): a
//! `traceparent` is exactly `00-<32 lowercase hex>-<16 lowercase hex>-<2 hex>` (a later version
//! with the same first 55 characters is read as version 00; version `ff` is invalid), ids are
//! never all zeros, and an invalid `traceparent` discards `tracestate` too. B3 accepts either
//! case (as Envoy's and Brave's do) and 64-bit trace ids, which are widened to 128 bits with
//! zeros in front and written back in 64 bits.

use std::fmt::{self, Write as _};

use http::{HeaderMap, HeaderName, HeaderValue};

use super::TraceError;

/// `traceparent`.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// `b3`, B3's single header.
pub const B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub const X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub const X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub const X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub const X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags` (`1`: debug, which implies sampled).
pub const X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A 128-bit trace id, never all zeros.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span id, never all zeros.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random id (never all zeros).
    pub fn random() -> Self {
        let id = fastrand::u128(1..);
        Self(id.to_be_bytes())
    }
}

impl SpanId {
    /// A random id (never all zeros).
    pub fn random() -> Self {
        Self(fastrand::u64(1..).to_be_bytes())
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

fn write_hex(out: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(out, "{b:02x}"))
}

/// Which formats a request carried, so the request sent on carries the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Formats {
    /// A valid `traceparent`.
    pub w3c: bool,
    /// A valid `b3`.
    pub b3_single: bool,
    /// Valid `x-b3-*` headers.
    pub b3_multi: bool,
    /// The B3 trace id had 64 bits (written back in 64).
    pub b3_64bit: bool,
}

/// The trace context a request arrived with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's span: trace id and span id, when a format carried valid ids.
    pub parent: Option<(TraceId, SpanId)>,
    /// The caller's sampling decision, when one came (with or without ids: B3 allows `b3: 0`
    /// or `x-b3-sampled` alone).
    pub sampled: Option<bool>,
    /// `tracestate`, passed on unchanged (only with a valid `traceparent`).
    pub trace_state: Option<HeaderValue>,
    /// The formats that came.
    pub formats: Formats,
}

/// One span's context: what is written on the request sent upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// The caller's span, when the request came with one.
    pub parent_span_id: Option<SpanId>,
    /// Whether the trace is recorded.
    pub sampled: bool,
    /// `tracestate`, passed on.
    pub trace_state: Option<HeaderValue>,
    /// The formats to write.
    pub formats: Formats,
}

impl SpanContext {
    /// A new span under `incoming`'s caller (a child span) or, without one, the root of a new
    /// trace; `sampled` is the decision already taken ([`super::Sampler`]).
    pub fn child_of(incoming: &Incoming, sampled: bool) -> Self {
        let (trace_id, parent_span_id) = match incoming.parent {
            Some((trace, span)) => (trace, Some(span)),
            None => (TraceId::random(), None),
        };
        Self {
            trace_id,
            span_id: SpanId::random(),
            parent_span_id,
            sampled,
            trace_state: incoming.trace_state.clone(),
            formats: incoming.formats,
        }
    }

    /// The `traceparent` value of this span.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id, self.span_id)
    }
}

/// Reads the trace context of a request. Invalid headers are ignored (each format on its own):
/// a request with nothing valid starts a new trace.
pub fn extract(headers: &HeaderMap) -> Incoming {
    let mut incoming = Incoming::default();
    if let Some(Ok(parent)) = header(headers, &TRACEPARENT).map(parse_traceparent) {
        incoming.parent = Some((parent.trace_id, parent.span_id));
        incoming.sampled = Some(parent.sampled);
        incoming.formats.w3c = true;
        incoming.trace_state = headers.get(&TRACESTATE).cloned();
    }
    let b3 = match header(headers, &B3).map(parse_b3_single) {
        Some(Ok(b3)) => {
            incoming.formats.b3_single = true;
            Some(b3)
        }
        _ => match parse_b3_multi(headers) {
            Ok(Some(b3)) => {
                incoming.formats.b3_multi = true;
                Some(b3)
            }
            Ok(None) | Err(_) => None,
        },
    };
    if let Some(b3) = b3 {
        incoming.formats.b3_64bit = b3.short_trace_id;
        // `traceparent` wins when both came; B3 only fills what it left empty.
        if incoming.parent.is_none() {
            incoming.parent = b3.ids;
        }
        incoming.sampled = incoming.sampled.or(b3.sampled);
    }
    incoming
}

/// Writes `context` onto a request in the formats it came with (W3C when none came),
/// replacing any trace headers already there.
pub fn inject(context: &SpanContext, headers: &mut HeaderMap) {
    let formats = context.formats;
    let any_b3 = formats.b3_single || formats.b3_multi;
    let sampled = if context.sampled { "1" } else { "0" };
    let trace = if formats.b3_64bit {
        let mut short = String::with_capacity(16);
        let _ = write_hex(&mut short, &context.trace_id.0[8..]);
        short
    } else {
        context.trace_id.to_string()
    };
    if formats.w3c || !any_b3 {
        put(headers, TRACEPARENT, context.traceparent());
        match &context.trace_state {
            Some(state) => {
                headers.insert(TRACESTATE, state.clone());
            }
            None => {
                headers.remove(TRACESTATE);
            }
        }
    }
    if formats.b3_single {
        let mut value = format!("{trace}-{}-{sampled}", context.span_id);
        if let Some(parent) = context.parent_span_id {
            let _ = write!(value, "-{parent}");
        }
        put(headers, B3, value);
    }
    if formats.b3_multi {
        put(headers, X_B3_TRACEID, trace);
        put(headers, X_B3_SPANID, context.span_id.to_string());
        match context.parent_span_id {
            Some(parent) => put(headers, X_B3_PARENTSPANID, parent.to_string()),
            None => {
                headers.remove(X_B3_PARENTSPANID);
            }
        }
        put(headers, X_B3_SAMPLED, sampled.to_owned());
    }
}

fn put(headers: &mut HeaderMap, name: HeaderName, value: String) {
    // Hex digits and dashes: always a valid header value.
    if let Ok(value) = HeaderValue::try_from(value) {
        headers.insert(name, value);
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &HeaderName) -> Option<&'h str> {
    headers.get(name).map(|v| v.to_str().unwrap_or(""))
}

/// A parsed `traceparent`.
#[derive(Debug, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// Flag bit 0.
    pub sampled: bool,
}

/// Parses a `traceparent` value by W3C's rules (see the module's documentation).
pub fn parse_traceparent(value: &str) -> Result<TraceParent, TraceError> {
    let bad = |reason: &'static str| TraceError::Traceparent { reason };
    if !value.is_ascii() {
        return Err(bad("not ASCII"));
    }
    let bytes = value.as_bytes();
    // Version 00 is exactly 55 characters; a later version may append `-…` fields.
    if bytes.len() < 55 || (bytes.len() > 55 && bytes[55] != b'-') {
        return Err(bad("not 55 characters"));
    }
    let version = lower_hex::<1>(&value[0..2]).ok_or(bad("version is not 2 lowercase hex"))?;
    if version[0] == 0xff {
        return Err(bad("version ff is invalid"));
    }
    if version[0] == 0 && bytes.len() != 55 {
        return Err(bad("version 00 is exactly 55 characters"));
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return Err(bad("fields are not separated by '-'"));
    }
    let trace = lower_hex::<16>(&value[3..35]).ok_or(bad("trace id is not 32 lowercase hex"))?;
    let span = lower_hex::<8>(&value[36..52]).ok_or(bad("parent id is not 16 lowercase hex"))?;
    let flags = lower_hex::<1>(&value[53..55]).ok_or(bad("flags are not 2 lowercase hex"))?;
    Ok(TraceParent {
        trace_id: nonzero_trace(trace).ok_or(bad("trace id is all zeros"))?,
        span_id: nonzero_span(span).ok_or(bad("parent id is all zeros"))?,
        sampled: flags[0] & 1 == 1,
    })
}

/// What a B3 format carried.
#[derive(Debug, PartialEq, Eq)]
pub struct B3Context {
    /// Trace and span id; none for a sampling decision alone.
    pub ids: Option<(TraceId, SpanId)>,
    /// The caller's parent span (kept for completeness; the new span's parent is `ids.1`).
    pub parent_span_id: Option<SpanId>,
    /// `1`/`true`/`d` → sampled, `0`/`false` → not, absent → the proxy decides.
    pub sampled: Option<bool>,
    /// The trace id had 16 hex digits.
    pub short_trace_id: bool,
}

/// Parses a single `b3` header: `{trace}-{span}[-{sampled}[-{parent}]]`, or a sampling
/// decision alone (`0`, `1`, `d`).
pub fn parse_b3_single(value: &str) -> Result<B3Context, TraceError> {
    let bad = |reason: &'static str| TraceError::B3 { reason };
    let parts: Vec<&str> = value.split('-').collect();
    if let [state] = parts[..] {
        return Ok(B3Context {
            ids: None,
            parent_span_id: None,
            sampled: Some(b3_state(state).ok_or(bad("sampling state is not 0, 1 or d"))?),
            short_trace_id: false,
        });
    }
    let (trace, span, state, parent) = match parts[..] {
        [trace, span] => (trace, span, None, None),
        [trace, span, state] => (trace, span, Some(state), None),
        [trace, span, state, parent] => (trace, span, Some(state), Some(parent)),
        _ => return Err(bad("more than 4 fields")),
    };
    let (trace_id, short_trace_id) = b3_trace_id(trace)?;
    Ok(B3Context {
        ids: Some((trace_id, b3_span_id(span)?)),
        parent_span_id: parent.map(b3_span_id).transpose()?,
        sampled: state
            .map(|s| b3_state(s).ok_or(bad("sampling state is not 0, 1 or d")))
            .transpose()?,
        short_trace_id,
    })
}

/// Parses the `x-b3-*` headers; `Ok(None)` when none of them came.
pub fn parse_b3_multi(headers: &HeaderMap) -> Result<Option<B3Context>, TraceError> {
    let bad = |reason: &'static str| TraceError::B3 { reason };
    let trace = header(headers, &X_B3_TRACEID);
    let span = header(headers, &X_B3_SPANID);
    let debug = header(headers, &X_B3_FLAGS) == Some("1");
    let sampled = match header(headers, &X_B3_SAMPLED) {
        None => None,
        Some("1" | "true") => Some(true),
        Some("0" | "false") => Some(false),
        Some(_) => return Err(bad("x-b3-sampled is not 0, 1, true or false")),
    };
    // Debug implies sampled (B3's rule; Envoy's Zipkin extractor does the same).
    let sampled = if debug { Some(true) } else { sampled };
    let (ids, short_trace_id) = match (trace, span) {
        (None, None) if sampled.is_none() => return Ok(None),
        (None, None) => (None, false),
        (Some(trace), Some(span)) => {
            let (trace_id, short) = b3_trace_id(trace)?;
            (Some((trace_id, b3_span_id(span)?)), short)
        }
        _ => return Err(bad("x-b3-traceid and x-b3-spanid come together")),
    };
    let parent_span_id = header(headers, &X_B3_PARENTSPANID)
        .map(b3_span_id)
        .transpose()?;
    Ok(Some(B3Context {
        ids,
        parent_span_id,
        sampled,
        short_trace_id,
    }))
}

fn b3_state(state: &str) -> Option<bool> {
    match state {
        "1" | "d" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

fn b3_trace_id(text: &str) -> Result<(TraceId, bool), TraceError> {
    let bad = |reason: &'static str| TraceError::B3 { reason };
    let id = match text.len() {
        32 => any_hex::<16>(text),
        16 => any_hex::<8>(text).map(|low| {
            let mut id = [0; 16];
            id[8..].copy_from_slice(&low);
            id
        }),
        _ => return Err(bad("trace id is not 16 or 32 hex")),
    };
    let id = id.ok_or(bad("trace id is not hex"))?;
    let id = nonzero_trace(id).ok_or(bad("trace id is all zeros"))?;
    Ok((id, text.len() == 16))
}

fn b3_span_id(text: &str) -> Result<SpanId, TraceError> {
    let bad = |reason: &'static str| TraceError::B3 { reason };
    if text.len() != 16 {
        return Err(bad("span id is not 16 hex"));
    }
    let id = any_hex::<8>(text).ok_or(bad("span id is not hex"))?;
    nonzero_span(id).ok_or(bad("span id is all zeros"))
}

fn nonzero_trace(id: [u8; 16]) -> Option<TraceId> {
    (id != [0; 16]).then_some(TraceId(id))
}

fn nonzero_span(id: [u8; 8]) -> Option<SpanId> {
    (id != [0; 8]).then_some(SpanId(id))
}

/// `text` (2·N lowercase hex digits) as N bytes.
fn lower_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    text.bytes()
        .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        .then(|| any_hex::<N>(text))
        .flatten()
}

/// `text` (2·N hex digits, either case) as N bytes.
fn any_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let high = char::from(pair[0]).to_digit(16)?;
        let low = char::from(pair[1]).to_digit(16)?;
        *byte = u8::try_from(high << 4 | low).ok()?;
    }
    Some(out)
}
