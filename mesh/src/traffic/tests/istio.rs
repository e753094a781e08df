//! VirtualService: each match kind matching and not, first match wins, the policies read, and
//! every bad input refusing the whole object with its field and reason.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Req, build, forward, object, only_refusal, reviews, select};
use crate::traffic::{
    AbortStatus, HttpAction, PathRewrite, Percent, RetryOn, ServiceName, default_retries,
};

fn vs(name: &str, created: u64, spec: Value) -> crate::objects::RawObject {
    object(
        "networking.istio.io/v1",
        "VirtualService",
        name,
        created,
        spec,
    )
}

fn dr(name: &str, created: u64, spec: Value) -> crate::objects::RawObject {
    object(
        "networking.istio.io/v1",
        "DestinationRule",
        name,
        created,
        spec,
    )
}

/// A VirtualService whose rule 0 has `block` and rule 1 takes the rest.
fn with_match(block: Value) -> crate::traffic::TrafficSet {
    build(vec![vs(
        "reviews",
        0,
        json!({"hosts": ["reviews"], "http": [
            {"match": [block], "route": [{"destination": {"host": "reviews"}}]},
            {"route": [{"destination": {"host": "ratings"}}]}]}),
    )])
}

#[test]
fn each_match_kind_matches_and_does_not() {
    let labels = |v: &str| Some(BTreeMap::from([("app".to_owned(), v.to_owned())]));
    let ns = |n: &'static str| {
        let mut r = Req::get("/");
        r.source_namespace = Some(n);
        r
    };
    let cases: Vec<(&str, Value, Req, Req)> = vec![
        (
            "uri exact",
            json!({"uri": {"exact": "/a"}}),
            Req::get("/a"),
            Req::get("/a/b"),
        ),
        (
            "uri prefix",
            json!({"uri": {"prefix": "/a"}}),
            Req::get("/ab?x=1"),
            Req::get("/b"),
        ),
        (
            "uri regex",
            json!({"uri": {"regex": "/a/[0-9]+"}}),
            Req::get("/a/12"),
            Req::get("/a/x"),
        ),
        (
            "ignoreUriCase exact",
            json!({"uri": {"exact": "/A.b"}, "ignoreUriCase": true}),
            Req::get("/a.B"),
            Req::get("/aXb"),
        ),
        (
            "ignoreUriCase prefix",
            json!({"uri": {"prefix": "/API"}, "ignoreUriCase": true}),
            Req::get("/api/v1"),
            Req::get("/ap"),
        ),
        (
            "header exact",
            json!({"headers": {"x-canary": {"exact": "true"}}}),
            Req::get("/").header("x-canary", "true"),
            Req::get("/").header("x-canary", "false"),
        ),
        (
            "header prefix",
            json!({"headers": {"user-agent": {"prefix": "curl/"}}}),
            Req::get("/").header("user-agent", "curl/8"),
            Req::get("/").header("user-agent", "wget"),
        ),
        (
            "header regex",
            json!({"headers": {"x-v": {"regex": "v[12]"}}}),
            Req::get("/").header("x-v", "v2"),
            Req::get("/").header("x-v", "v3"),
        ),
        (
            "header present",
            json!({"headers": {"x-debug": {}}}),
            Req::get("/").header("x-debug", ""),
            Req::get("/"),
        ),
        (
            "header name case",
            json!({"headers": {"X-Canary": {"exact": "1"}}}),
            Req::get("/").header("x-canary", "1"),
            Req::get("/"),
        ),
        (
            "withoutHeaders",
            json!({"withoutHeaders": {"x-debug": {}}}),
            Req::get("/"),
            Req::get("/").header("x-debug", "1"),
        ),
        (
            "queryParams exact",
            json!({"queryParams": {"v": {"exact": "2"}}}),
            Req::get("/?v=2"),
            Req::get("/?v=3"),
        ),
        (
            "queryParams regex",
            json!({"queryParams": {"v": {"regex": "[0-9]+"}}}),
            Req::get("/?a=b&v=12"),
            Req::get("/?v=x"),
        ),
        (
            "queryParams present",
            json!({"queryParams": {"debug": {}}}),
            Req::get("/?debug"),
            Req::get("/?other=1"),
        ),
        (
            "method",
            json!({"method": {"exact": "GET"}}),
            Req::get("/"),
            Req {
                method: "POST",
                ..Req::get("/")
            },
        ),
        (
            "authority",
            json!({"authority": {"exact": "reviews:9080"}}),
            Req::get("/"),
            Req {
                authority: "other",
                ..Req::get("/")
            },
        ),
        (
            "port",
            json!({"port": 9080}),
            Req::get("/"),
            Req {
                port: 8080,
                ..Req::get("/")
            },
        ),
        (
            "sourceLabels",
            json!({"sourceLabels": {"app": "web"}}),
            Req {
                labels: labels("web"),
                ..Req::get("/")
            },
            Req {
                labels: labels("db"),
                ..Req::get("/")
            },
        ),
        (
            "sourceNamespace",
            json!({"sourceNamespace": "front"}),
            ns("front"),
            ns("back"),
        ),
        (
            "two conditions AND",
            json!({"uri": {"prefix": "/a"}, "headers": {"x": {"exact": "1"}}}),
            Req::get("/a").header("x", "1"),
            Req::get("/a"),
        ),
    ];
    for (what, block, matching, other) in cases {
        let set = with_match(block);
        assert!(set.refusals().is_empty(), "{what}: {:?}", set.refusals());
        assert_eq!(
            select(&set, &reviews(), &matching),
            "VirtualService shop/reviews rule 0",
            "{what} matches"
        );
        assert_eq!(
            select(&set, &reviews(), &other),
            "VirtualService shop/reviews rule 1",
            "{what} does not"
        );
    }
}

#[test]
fn match_blocks_are_ored_and_the_first_rule_that_matches_wins() {
    let set = build(vec![vs(
        "reviews",
        0,
        json!({"hosts": ["reviews.shop.svc.cluster.local"], "http": [
            {"match": [{"uri": {"prefix": "/a"}}, {"headers": {"x-canary": {"exact": "true"}}}],
             "route": [{"destination": {"host": "reviews"}}]},
            {"match": [{"uri": {"prefix": "/a/b"}}], "route": [{"destination": {"host": "ratings"}}]},
            {"match": [{"uri": {"prefix": "/c"}}], "route": [{"destination": {"host": "ratings"}}]}]}),
    )]);
    let rule = |n| format!("VirtualService shop/reviews rule {n}");
    assert_eq!(
        select(&set, &reviews(), &Req::get("/a/b")),
        rule(0),
        "first wins, not the longer prefix"
    );
    assert_eq!(
        select(&set, &reviews(), &Req::get("/z").header("x-canary", "true")),
        rule(0),
        "second block"
    );
    assert_eq!(select(&set, &reviews(), &Req::get("/c")), rule(2));
    assert_eq!(
        select(&set, &reviews(), &Req::get("/z")),
        "no match",
        "no rule matches: 404 NR"
    );
    let other = ServiceName::new("shop", "ratings");
    assert_eq!(
        select(&set, &other, &Req::get("/a")),
        "none",
        "no route object for ratings"
    );
}

#[test]
fn hosts_name_services_in_every_form_and_wildcards_are_refused_alone() {
    let set = build(vec![vs(
        "many",
        0,
        json!({"hosts": ["reviews", "ratings.shop", "details.shop.svc", "*.shop.svc.cluster.local"],
            "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
    )]);
    for name in ["reviews", "ratings", "details"] {
        assert_eq!(
            set.http_rules(&ServiceName::new("shop", name)).len(),
            1,
            "{name}"
        );
    }
    let (kind, name, field, reason) = only_refusal(&set);
    assert_eq!(
        (kind.as_str(), name.as_str(), field.as_str()),
        ("VirtualService", "shop/many", "spec.hosts[3]")
    );
    assert!(reason.contains("wildcard"), "{reason}");
}

#[test]
fn gateway_only_virtual_services_do_not_route_services() {
    let gateway_only = vs(
        "edge",
        0,
        json!({"hosts": ["reviews", "shop.example.com"], "gateways": ["istio-system/ingress"],
        "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
    );
    let set = build(vec![gateway_only]);
    assert_eq!(select(&set, &reviews(), &Req::get("/")), "none");
    assert!(set.refusals().is_empty());
    let both = vs(
        "edge",
        0,
        json!({"hosts": ["reviews"], "gateways": ["istio-system/ingress", "mesh"],
        "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
    );
    let set = build(vec![both]);
    assert_eq!(
        select(&set, &reviews(), &Req::get("/")),
        "VirtualService shop/edge rule 0"
    );
}

#[test]
fn weights_retries_timeouts_faults_mirrors_rewrites_and_headers_are_read() {
    let set = build(vec![
        dr(
            "reviews",
            0,
            json!({"host": "reviews", "subsets": [
            {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}),
        ),
        vs(
            "reviews",
            0,
            json!({"hosts": ["reviews"], "http": [{
            "route": [
                {"destination": {"host": "reviews", "subset": "v1", "port": {"number": 9080}}, "weight": 90,
                 "headers": {"request": {"set": {"X-Version": "v1"}}}},
                {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}],
            "timeout": "1.5s",
            "retries": {"attempts": 3, "perTryTimeout": "100ms", "retryOn": "5xx,reset,409,503"},
            "fault": {"delay": {"fixedDelay": "2s", "percentage": {"value": 12.5}},
                      "abort": {"grpcStatus": "UNAVAILABLE", "percent": 5}},
            "mirror": {"host": "ratings"}, "mirrorPercentage": {"value": 25.0},
            "mirrors": [{"destination": {"host": "details"}}],
            "rewrite": {"uri": "/v2", "authority": "reviews.internal"},
            "headers": {"request": {"add": {"x-a": "1"}, "remove": ["X-Drop"]},
                        "response": {"set": {"x-served-by": "marrow"}}}}]}),
        ),
    ]);
    assert!(set.refusals().is_empty(), "{:?}", set.refusals());
    let f = forward(&set, &reviews(), 0);
    let weights: Vec<(Option<&str>, u32, Option<u16>)> = f
        .backends
        .iter()
        .map(|b| (b.subset.as_deref(), b.weight, b.port))
        .collect();
    assert_eq!(
        weights,
        [(Some("v1"), 90, Some(9080)), (Some("v2"), 10, None)]
    );
    assert_eq!(
        f.backends[0].request_headers.set,
        [("x-version".to_owned(), "v1".to_owned())]
    );
    assert_eq!(f.timeout, Some(Duration::from_millis(1500)));
    let retries = f.retries.expect("retries");
    assert_eq!(
        (retries.attempts, retries.per_try_timeout),
        (3, Some(Duration::from_millis(100)))
    );
    assert_eq!(
        retries.retry_on,
        RetryOn {
            five_xx: true,
            reset: true,
            retriable_status_codes: true,
            ..RetryOn::default()
        },
        "numbers are codes and imply retriable-status-codes; the default conditions are replaced"
    );
    assert_eq!(retries.status_codes, [409, 503]);
    let fault = f.fault.expect("fault");
    assert_eq!(fault.delay, Some((Duration::from_secs(2), Percent(12.5))));
    assert_eq!(fault.abort, Some((AbortStatus::Grpc(14), Percent(5.0))));
    let mirrors: Vec<(&str, f64)> = f
        .mirrors
        .iter()
        .map(|m| (m.backend.service.name.as_str(), m.percent.0))
        .collect();
    assert_eq!(mirrors, [("ratings", 25.0), ("details", 100.0)]);
    assert_eq!(f.rewrite.path, Some(PathRewrite::Prefix("/v2".into())));
    assert_eq!(f.rewrite.authority.as_deref(), Some("reviews.internal"));
    assert_eq!(f.request_headers.add, [("x-a".to_owned(), "1".to_owned())]);
    assert_eq!(f.request_headers.remove, ["x-drop"]);
    assert_eq!(
        f.response_headers.set,
        [("x-served-by".to_owned(), "marrow".to_owned())]
    );
}

#[test]
fn retries_default_to_istios_policy_and_attempts_zero_disables_them() {
    let route = |retries: Option<Value>| {
        let mut rule = json!({"route": [{"destination": {"host": "reviews"}}]});
        if let Some(r) = retries {
            rule["retries"] = r;
        }
        let set = build(vec![vs(
            "reviews",
            0,
            json!({"hosts": ["reviews"], "http": [rule]}),
        )]);
        assert!(set.refusals().is_empty(), "{:?}", set.refusals());
        let f = forward(&set, &reviews(), 0);
        assert_eq!(
            f.backends[0].weight, 100,
            "a lone destination takes everything"
        );
        f.retries
    };
    let default = route(None).expect("Istio's default");
    assert_eq!(default, default_retries());
    assert_eq!(
        (default.attempts, default.status_codes.as_slice()),
        (2, &[503][..])
    );
    assert!(default.retry_on.connect_failure && default.retry_on.refused_stream);
    assert!(default.retry_on.grpc_unavailable && default.retry_on.grpc_cancelled);
    assert!(default.retry_on.retriable_status_codes && !default.retry_on.five_xx);
    assert_eq!(
        route(Some(json!({"attempts": 0}))),
        None,
        "attempts 0 disables"
    );
    assert_eq!(
        route(Some(json!({}))),
        None,
        "no attempts disables too (istiod's ConvertPolicy)"
    );
    let only_attempts = route(Some(json!({"attempts": 5}))).expect("retries");
    assert_eq!(only_attempts.attempts, 5);
    assert_eq!(
        only_attempts.retry_on, default.retry_on,
        "no retryOn keeps the default conditions"
    );
}

#[test]
fn redirects_direct_responses_and_tcp_routes_are_read() {
    let set = build(vec![vs(
        "reviews",
        0,
        json!({"hosts": ["reviews"],
        "http": [
            {"match": [{"uri": {"exact": "/old"}}],
             "redirect": {"uri": "/new", "authority": "example.com", "redirectCode": 308}},
            {"directResponse": {"status": 503, "body": {"string": "down"}}}],
        "tcp": [{"match": [{"port": 9000}], "route": [
            {"destination": {"host": "reviews"}, "weight": 80},
            {"destination": {"host": "ratings"}, "weight": 20}]}]}),
    )]);
    assert!(set.refusals().is_empty(), "{:?}", set.refusals());
    match &set.http_rules(&reviews())[0].action {
        HttpAction::Redirect(r) => {
            assert_eq!(
                (r.status, r.hostname.as_deref()),
                (308, Some("example.com"))
            );
            assert_eq!(r.path, Some(PathRewrite::Full("/new".into())));
        }
        other => panic!("{other:?}"),
    }
    match &set.http_rules(&reviews())[1].action {
        HttpAction::Respond(d) => assert_eq!((d.status, d.body.as_deref()), (503, Some("down"))),
        other => panic!("{other:?}"),
    }
    let tcp = set.tcp_rule(&reviews(), 9000).expect("tcp rule on 9000");
    assert_eq!(
        tcp.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [80, 20]
    );
    assert!(set.tcp_rule(&reviews(), 9001).is_none(), "only its port");
}

#[test]
fn durations_are_go_style_and_at_least_a_millisecond() {
    for (text, want) in [
        ("100ms", Some(100)),
        ("0.5s", Some(500)),
        ("1m30s", Some(90_000)),
        ("2h", Some(7_200_000)),
        ("5 seconds", None),
        ("10", None),
        ("0s", None),
        ("1us", None),
        ("-1s", None),
    ] {
        let set = build(vec![vs(
            "reviews",
            0,
            json!({"hosts": ["reviews"],
            "http": [{"route": [{"destination": {"host": "reviews"}}], "timeout": text}]}),
        )]);
        match want {
            Some(ms) => assert_eq!(
                forward(&set, &reviews(), 0).timeout,
                Some(Duration::from_millis(ms)),
                "{text}"
            ),
            None => {
                let (_, _, field, reason) = only_refusal(&set);
                assert_eq!(field, "spec.http[0].timeout", "{text}");
                assert!(reason.contains(text), "{text}: {reason}");
            }
        }
    }
}

#[test]
fn a_subset_must_be_in_the_services_destination_rule() {
    let route = |subset: &str| {
        vs(
            "reviews",
            0,
            json!({"hosts": ["reviews"],
        "http": [{"route": [{"destination": {"host": "reviews", "subset": subset}}]}]}),
        )
    };
    let rule = dr(
        "reviews-dr",
        0,
        json!({"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}),
    );
    let set = build(vec![rule.clone(), route("v1")]);
    assert!(set.refusals().is_empty(), "{:?}", set.refusals());
    assert_eq!(
        forward(&set, &reviews(), 0).backends[0].subset.as_deref(),
        Some("v1")
    );
    let set = build(vec![rule, route("v2")]);
    let (_, _, field, reason) = only_refusal(&set);
    assert_eq!(field, "spec.http[0].route[0].destination.subset");
    assert_eq!(
        reason,
        "subset \"v2\" is not in the DestinationRule shop/reviews-dr for shop/reviews"
    );
}
