//! The trace context parsers (good and bad headers of each format), which format wins, the
//! sampling decision, injection round trips, the span's attributes and the settings' checks.

use http::{HeaderMap, HeaderValue};

use super::context::{parse_b3_multi, parse_b3_single, parse_traceparent};
use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";
const PARENT: &str = "a3ce929d0e0e4736";

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

fn get<'h>(map: &'h HeaderMap, name: &str) -> Option<&'h str> {
    map.get(name).map(|v| v.to_str().unwrap())
}

#[test]
fn traceparent_version_00_is_read() {
    let parsed = parse_traceparent(&format!("00-{TRACE}-{SPAN}-01")).unwrap();
    assert_eq!(parsed.trace_id.to_string(), TRACE);
    assert_eq!(parsed.span_id.to_string(), SPAN);
    assert!(parsed.sampled);
    let unsampled = parse_traceparent(&format!("00-{TRACE}-{SPAN}-00")).unwrap();
    assert!(!unsampled.sampled);
    // Other flag bits do not make it sampled.
    assert!(
        !parse_traceparent(&format!("00-{TRACE}-{SPAN}-02"))
            .unwrap()
            .sampled
    );
}

#[test]
fn traceparent_of_a_later_version_is_read_by_its_first_55_characters() {
    let later = format!("01-{TRACE}-{SPAN}-01-whatever");
    assert!(parse_traceparent(&later).unwrap().sampled);
    // Version 00 has no room for more.
    assert!(parse_traceparent(&format!("00-{TRACE}-{SPAN}-01-x")).is_err());
    // A later version still needs a '-' after the flags.
    assert!(parse_traceparent(&format!("01-{TRACE}-{SPAN}-01x")).is_err());
}

#[test]
fn traceparent_is_refused_when_it_breaks_w3c_rules() {
    let zero_trace = "0".repeat(32);
    let zero_span = "0".repeat(16);
    for bad in [
        // wrong lengths
        format!("00-{TRACE}-{SPAN}-1"),
        format!("00-{}-{SPAN}-01", &TRACE[..30]),
        format!("00-{TRACE}-{}-01", &SPAN[..14]),
        format!("00-{TRACE}a-{SPAN}-01"),
        String::new(),
        // all-zero ids
        format!("00-{zero_trace}-{SPAN}-01"),
        format!("00-{TRACE}-{zero_span}-01"),
        // uppercase hex
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
        // version ff
        format!("ff-{TRACE}-{SPAN}-01"),
        // not hex, wrong separators, not ASCII
        format!("0g-{TRACE}-{SPAN}-01"),
        format!("00_{TRACE}_{SPAN}_01"),
        format!("00-{TRACE}-{SPAN}-0é"),
    ] {
        assert!(parse_traceparent(&bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn b3_single_header_with_and_without_parent() {
    let with = parse_b3_single(&format!("{TRACE}-{SPAN}-1-{PARENT}")).unwrap();
    assert_eq!(
        with.ids.map(|(t, s)| (t.to_string(), s.to_string())),
        Some((TRACE.into(), SPAN.into()))
    );
    assert_eq!(
        with.parent_span_id.map(|p| p.to_string()),
        Some(PARENT.into())
    );
    assert_eq!(with.sampled, Some(true));

    let without = parse_b3_single(&format!("{TRACE}-{SPAN}-0")).unwrap();
    assert_eq!(without.parent_span_id, None);
    assert_eq!(without.sampled, Some(false));

    let undecided = parse_b3_single(&format!("{TRACE}-{SPAN}")).unwrap();
    assert_eq!(undecided.sampled, None);

    let debug = parse_b3_single(&format!("{TRACE}-{SPAN}-d")).unwrap();
    assert_eq!(debug.sampled, Some(true));
}

#[test]
fn b3_single_header_may_carry_a_decision_alone() {
    let deny = parse_b3_single("0").unwrap();
    assert_eq!((deny.ids, deny.sampled), (None, Some(false)));
    assert_eq!(parse_b3_single("1").unwrap().sampled, Some(true));
    assert_eq!(parse_b3_single("d").unwrap().sampled, Some(true));
    assert!(parse_b3_single("2").is_err());
}

#[test]
fn b3_64_bit_trace_ids_are_widened_and_uppercase_is_accepted() {
    let short = parse_b3_single(&format!("{PARENT}-{SPAN}-1")).unwrap();
    let (trace, _) = short.ids.unwrap();
    assert_eq!(trace.to_string(), format!("{}{PARENT}", "0".repeat(16)));
    assert!(short.short_trace_id);
    let upper = parse_b3_single(&format!("{}-{}", TRACE.to_uppercase(), SPAN.to_uppercase()));
    assert_eq!(upper.unwrap().ids.unwrap().0.to_string(), TRACE);
}

#[test]
fn b3_single_header_is_refused_when_malformed() {
    let zero_trace = "0".repeat(32);
    for bad in [
        format!("{}-{SPAN}-1", &TRACE[..20]),
        format!("{TRACE}-{}-1", &SPAN[..15]),
        format!("{zero_trace}-{SPAN}-1"),
        format!("{TRACE}-{}-1", "0".repeat(16)),
        format!("{TRACE}-{SPAN}-x"),
        format!("{TRACE}-{SPAN}-1-{}", &PARENT[..3]),
        format!("{TRACE}-{SPAN}-1-{PARENT}-extra"),
        format!("{TRACE}-zzzzzzzzzzzzzzzz"),
        String::new(),
    ] {
        assert!(parse_b3_single(&bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn b3_multiple_headers_are_read() {
    let all = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-parentspanid", PARENT),
        ("x-b3-sampled", "1"),
    ]);
    let b3 = parse_b3_multi(&all).unwrap().unwrap();
    assert_eq!(b3.ids.unwrap().1.to_string(), SPAN);
    assert_eq!(b3.sampled, Some(true));
    let flags = headers(&[
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
        ("x-b3-flags", "1"),
    ]);
    assert_eq!(parse_b3_multi(&flags).unwrap().unwrap().sampled, Some(true));
    let no = headers(&[("x-b3-sampled", "false")]);
    let decision = parse_b3_multi(&no).unwrap().unwrap();
    assert_eq!((decision.ids, decision.sampled), (None, Some(false)));
    assert_eq!(parse_b3_multi(&HeaderMap::new()).unwrap(), None);
}

#[test]
fn b3_multiple_headers_are_refused_when_malformed() {
    for bad in [
        headers(&[("x-b3-traceid", TRACE)]),
        headers(&[("x-b3-spanid", SPAN)]),
        headers(&[("x-b3-traceid", TRACE), ("x-b3-spanid", &SPAN[..8])]),
        headers(&[("x-b3-traceid", &"0".repeat(32)), ("x-b3-spanid", SPAN)]),
        headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-sampled", "yes"),
        ]),
        headers(&[
            ("x-b3-traceid", TRACE),
            ("x-b3-spanid", SPAN),
            ("x-b3-parentspanid", "12"),
        ]),
    ] {
        assert!(parse_b3_multi(&bad).is_err(), "{bad:?} was accepted");
    }
}

#[test]
fn traceparent_wins_over_b3_and_both_are_written_back() {
    let other_trace = "11111111111111111111111111111111";
    let both = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("tracestate", "vendor=opaque"),
        ("x-b3-traceid", other_trace),
        ("x-b3-spanid", PARENT),
        ("x-b3-sampled", "0"),
    ]);
    let incoming = extract(&both);
    assert_eq!(incoming.parent.unwrap().0.to_string(), TRACE);
    assert_eq!(incoming.sampled, Some(true));
    assert!(incoming.formats.w3c && incoming.formats.b3_multi);

    let child = SpanContext::child_of(&incoming, true);
    let mut out = HeaderMap::new();
    inject(&child, &mut out);
    let span = child.span_id.to_string();
    assert_eq!(
        get(&out, "traceparent"),
        Some(format!("00-{TRACE}-{span}-01").as_str())
    );
    assert_eq!(get(&out, "tracestate"), Some("vendor=opaque"));
    assert_eq!(get(&out, "x-b3-traceid"), Some(TRACE));
    assert_eq!(get(&out, "x-b3-spanid"), Some(span.as_str()));
    assert_eq!(get(&out, "x-b3-parentspanid"), Some(SPAN));
    assert_eq!(get(&out, "x-b3-sampled"), Some("1"));
    assert_eq!(get(&out, "b3"), None);
}

#[test]
fn an_invalid_traceparent_drops_tracestate_and_falls_back_to_b3() {
    let mixed = headers(&[
        (
            "traceparent",
            &format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        ),
        ("tracestate", "vendor=opaque"),
        ("b3", &format!("{PARENT}-{SPAN}-0")),
    ]);
    let incoming = extract(&mixed);
    assert!(!incoming.formats.w3c && incoming.formats.b3_single && incoming.formats.b3_64bit);
    assert_eq!(incoming.trace_state, None);
    assert_eq!(incoming.sampled, Some(false));
    let child = SpanContext::child_of(&incoming, false);
    let mut out = mixed.clone();
    inject(&child, &mut out);
    // Only B3 came valid: only B3 is written (64-bit, as it came); the stale headers stay as
    // the client sent them.
    let span = child.span_id.to_string();
    assert_eq!(
        get(&out, "b3"),
        Some(format!("{PARENT}-{span}-0-{SPAN}").as_str())
    );
    assert!(
        get(&out, "traceparent")
            .unwrap()
            .contains(&TRACE.to_uppercase())
    );
}

#[test]
fn a_request_without_context_starts_a_trace_written_as_w3c() {
    let incoming = extract(&HeaderMap::new());
    assert_eq!(incoming, Incoming::default());
    let root = SpanContext::child_of(&incoming, true);
    assert_eq!(root.parent_span_id, None);
    let mut out = HeaderMap::new();
    inject(&root, &mut out);
    let written = get(&out, "traceparent").unwrap().to_owned();
    assert_eq!(written, root.traceparent());
    assert!(get(&out, "x-b3-traceid").is_none() && get(&out, "b3").is_none());
    // The written header reads back as the same span.
    let again = extract(&out);
    assert_eq!(again.parent, Some((root.trace_id, root.span_id)));
    assert_eq!(again.sampled, Some(true));
}

#[test]
fn b3_round_trips_through_inject_and_extract() {
    let incoming = extract(&headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]));
    let child = SpanContext::child_of(&incoming, true);
    let mut out = HeaderMap::new();
    inject(&child, &mut out);
    let back = extract(&out);
    assert_eq!(back.parent, Some((child.trace_id, child.span_id)));
    assert!(back.formats.b3_single && !back.formats.w3c);
    assert!(get(&out, "traceparent").is_none());
}

#[test]
fn sampling_at_0_and_100_percent_and_the_callers_decision_wins() {
    let never = Sampler::new(0.0);
    let always = Sampler::new(100.0);
    for _ in 0..1000 {
        assert!(!never.decide(None));
        assert!(always.decide(None));
    }
    assert!(never.decide(Some(true)));
    assert!(!always.decide(Some(false)));
    let half = Sampler::new(50.0);
    let sampled = (0..10_000).filter(|_| half.decide(None)).count();
    assert!((4000..6000).contains(&sampled), "{sampled} of 10000 at 50%");
}

#[test]
fn settings_out_of_range_are_named() {
    let ok = TracerConfig {
        collector: Some("otel-collector.observability:4317".into()),
        ..TracerConfig::default()
    };
    assert!(ok.validate().is_ok());
    for (bad, setting) in [
        (
            TracerConfig {
                sampling_percent: 100.5,
                ..ok.clone()
            },
            "sampling_percent",
        ),
        (
            TracerConfig {
                sampling_percent: -1.0,
                ..ok.clone()
            },
            "sampling_percent",
        ),
        (
            TracerConfig {
                collector: Some("collector".into()),
                ..ok.clone()
            },
            "collector",
        ),
        (
            TracerConfig {
                collector: Some("http://c:4317".into()),
                ..ok.clone()
            },
            "collector",
        ),
        (
            TracerConfig {
                queue_capacity: 0,
                ..ok.clone()
            },
            "queue_capacity",
        ),
        (
            TracerConfig {
                max_batch: 0,
                ..ok.clone()
            },
            "max_batch",
        ),
    ] {
        let error = bad.validate().unwrap_err().to_string();
        assert!(error.contains(setting), "{error}");
    }
}

#[test]
fn a_tracer_without_collector_leaves_headers_alone() {
    let tracer = Tracer::new(&TracerConfig::default(), &mut Default::default()).unwrap();
    assert!(!tracer.is_on());
    let request = headers(&[("b3", &format!("{TRACE}-{SPAN}-1"))]);
    let span = tracer.start(&request, &RequestAttrs::default());
    let mut out = request.clone();
    span.inject(&mut out);
    assert_eq!(out, request);
    assert_eq!(span.trace_id(), None);
    span.finish(&SpanEnd::default());
}

#[test]
fn the_span_carries_envoys_attributes_and_is_an_error_on_5xx() {
    let request = RequestAttrs {
        name: "web.shop.svc.cluster.local:80/*",
        method: "GET",
        scheme: "http",
        authority: "web.shop",
        path: &format!("/api/{}", "x".repeat(300)),
        protocol: "HTTP/1.1",
        user_agent: Some("curl/8"),
        request_id: Some("rid-1"),
        downstream_cluster: None,
        peer: Some("10.0.0.7".parse().unwrap()),
        upstream_cluster: Some("outbound|80||web.shop.svc.cluster.local"),
    };
    let tags = [span::attr("istio.canonical_service", "waypoint")];
    let recording = span::Recording::start(&request, "node-1", &tags);
    let context = SpanContext::child_of(&extract(&HeaderMap::new()), true);
    let end = SpanEnd {
        status: Some(http::StatusCode::BAD_GATEWAY),
        request_size: 3,
        response_size: 21,
        response_flags: Some(crate::telemetry::ResponseFlag::UpstreamFailure),
        ..SpanEnd::default()
    };
    let otlp = recording.finish(&context, &end);
    let attr = |key: &str| {
        otlp.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                otlp::common::any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    };
    assert_eq!(attr("http.method").as_deref(), Some("GET"));
    let url = attr("http.url").unwrap();
    assert!(url.starts_with("http://web.shop/api/xxx"));
    assert_eq!(url.len(), "http://web.shop".len() + MAX_PATH_TAG_LENGTH);
    assert_eq!(attr("http.status_code").as_deref(), Some("502"));
    assert_eq!(attr("response_flags").as_deref(), Some("UF"));
    assert_eq!(attr("component").as_deref(), Some("proxy"));
    assert_eq!(attr("node_id").as_deref(), Some("node-1"));
    assert_eq!(attr("guid:x-request-id").as_deref(), Some("rid-1"));
    assert_eq!(attr("downstream_cluster").as_deref(), Some("-"));
    assert_eq!(attr("user_agent").as_deref(), Some("curl/8"));
    assert_eq!(attr("http.protocol").as_deref(), Some("HTTP/1.1"));
    assert_eq!(attr("peer.address").as_deref(), Some("10.0.0.7"));
    assert_eq!(attr("request_size").as_deref(), Some("3"));
    assert_eq!(attr("response_size").as_deref(), Some("21"));
    assert_eq!(attr("istio.canonical_service").as_deref(), Some("waypoint"));
    assert_eq!(attr("error").as_deref(), Some("true"));
    assert_eq!(otlp.kind, i32::from(otlp::trace::span::SpanKind::Server));
    let status = otlp.status.unwrap();
    assert_eq!(
        status.code,
        i32::from(otlp::trace::status::StatusCode::Error)
    );
    assert!(otlp.end_time_unix_nano >= otlp.start_time_unix_nano);

    // A 404 is not a server error.
    let recording = span::Recording::start(&request, "node-1", &[]);
    let fine = SpanEnd {
        status: Some(http::StatusCode::NOT_FOUND),
        ..SpanEnd::default()
    };
    let otlp = recording.finish(&context, &fine);
    assert!(otlp.attributes.iter().all(|kv| kv.key != "error"));
    assert_eq!(
        otlp.status.unwrap().code,
        i32::from(otlp::trace::status::StatusCode::Unset)
    );
}

#[tokio::test]
async fn a_swappable_tracer_changes_only_when_the_config_does() {
    let mut registry = Registry::default();
    let tracer = SwappableTracer::new(&TracerConfig::default(), &mut registry).unwrap();
    assert!(!tracer.current().is_on());
    // The same configuration: nothing rebuilt.
    assert!(!tracer.replace(TracerConfig::default()).await.unwrap());
    let on = TracerConfig {
        collector: Some("127.0.0.1:4317".to_owned()),
        sampling_percent: 10.0,
        ..TracerConfig::default()
    };
    assert!(tracer.replace(on.clone()).await.unwrap());
    assert!(tracer.current().is_on());
    assert_eq!(tracer.config(), on);
    // An invalid configuration is refused and the one in force stays.
    let bad = TracerConfig {
        sampling_percent: 101.0,
        ..on.clone()
    };
    assert!(tracer.replace(bad).await.is_err());
    assert_eq!(tracer.config(), on);
    assert!(tracer.replace(TracerConfig::default()).await.unwrap());
    assert!(!tracer.current().is_on());
    // The exporter's counters were registered once, before tracing was on.
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert_eq!(
        text.matches("# TYPE marrow_spans_exported counter").count(),
        1,
        "{text}"
    );
    tracer.shutdown().await;
}
