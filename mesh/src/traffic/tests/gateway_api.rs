//! HTTPRoute, GRPCRoute and TCPRoute with a Service parent: each match kind matching and not,
//! the spec's precedence (each tie-breaker), backends and filters, and every bad input.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Req, build, forward, object, only_refusal, reviews, select};
use crate::objects::RawObject;
use crate::traffic::{HttpAction, PathRewrite, Percent, ServiceName};

fn parent() -> Value {
    json!([{"group": "", "kind": "Service", "name": "reviews"}])
}

fn http_route(name: &str, created: u64, rules: Value) -> RawObject {
    object(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        name,
        created,
        json!({"parentRefs": parent(), "rules": rules}),
    )
}

fn backend(name: &str) -> Value {
    json!([{"name": name, "port": 9080}])
}

#[test]
fn each_match_kind_matches_and_does_not() {
    let cases: Vec<(&str, Value, Req, Req)> = vec![
        (
            "path exact",
            json!({"path": {"type": "Exact", "value": "/a"}}),
            Req::get("/a?x=1"),
            Req::get("/a/"),
        ),
        (
            "path prefix by segment",
            json!({"path": {"type": "PathPrefix", "value": "/a"}}),
            Req::get("/a/b"),
            Req::get("/ab"),
        ),
        (
            "path prefix trailing slash",
            json!({"path": {"value": "/a/"}}),
            Req::get("/a"),
            Req::get("/b/a"),
        ),
        (
            "path regex",
            json!({"path": {"type": "RegularExpression", "value": "/a/[0-9]+"}}),
            Req::get("/a/7"),
            Req::get("/a/7/x"),
        ),
        (
            "header exact",
            json!({"headers": [{"name": "X-Canary", "value": "true"}]}),
            Req::get("/").header("x-canary", "true"),
            Req::get("/").header("x-canary", "yes"),
        ),
        (
            "header regex",
            json!({"headers": [{"type": "RegularExpression", "name": "x-v", "value": "v[12]"}]}),
            Req::get("/").header("x-v", "v1"),
            Req::get("/").header("x-v", "v10"),
        ),
        (
            "query exact",
            json!({"queryParams": [{"name": "v", "value": "2"}]}),
            Req::get("/?v=2"),
            Req::get("/?V=2"),
        ),
        (
            "query regex",
            json!({"queryParams": [{"type": "RegularExpression", "name": "v", "value": "[a-c]"}]}),
            Req::get("/?v=b"),
            Req::get("/?v=d"),
        ),
        (
            "method",
            json!({"method": "POST"}),
            Req {
                method: "POST",
                ..Req::get("/")
            },
            Req::get("/"),
        ),
    ];
    for (what, m, matching, other) in cases {
        let set = build(vec![http_route(
            "r",
            0,
            json!([{"matches": [m], "backendRefs": backend("reviews")}]),
        )]);
        assert!(set.refusals().is_empty(), "{what}: {:?}", set.refusals());
        assert_eq!(
            select(&set, &reviews(), &matching),
            "HTTPRoute shop/r rule 0",
            "{what} matches"
        );
        assert_eq!(
            select(&set, &reviews(), &other),
            "no match",
            "{what} does not: 404"
        );
    }
    let set = build(vec![http_route(
        "r",
        0,
        json!([{"backendRefs": backend("reviews")}]),
    )]);
    assert_eq!(
        select(&set, &reviews(), &Req::get("/anything")),
        "HTTPRoute shop/r rule 0",
        "no matches: prefix /"
    );
}

/// A route in a precedence case: name, age, rules.
type Route = (&'static str, u64, Value);

#[test]
fn precedence_follows_the_spec_tie_by_tie() {
    let rule = |m: Value| json!({"matches": [m], "backendRefs": backend("reviews")});
    let name = |kind: &str, route: &str, n: usize| format!("{kind} shop/{route} rule {n}");
    // Each case: routes (name, created, rules), a request, the route and rule that win.
    let cases: Vec<(&str, Vec<Route>, Req, String)> = vec![
        (
            "exact beats prefix",
            vec![
                (
                    "old",
                    0,
                    json!([rule(
                        json!({"path": {"type": "PathPrefix", "value": "/a/b"}})
                    )]),
                ),
                (
                    "new",
                    9,
                    json!([rule(json!({"path": {"type": "Exact", "value": "/a/b"}}))]),
                ),
            ],
            Req::get("/a/b"),
            name("HTTPRoute", "new", 0),
        ),
        (
            "longest prefix",
            vec![(
                "r",
                0,
                json!([
                    rule(json!({"path": {"value": "/a"}})),
                    rule(json!({"path": {"value": "/a/b"}}))
                ]),
            )],
            Req::get("/a/b/c"),
            name("HTTPRoute", "r", 1),
        ),
        (
            "prefix beats regex",
            vec![(
                "r",
                0,
                json!([
                    rule(json!({"path": {"type": "RegularExpression", "value": "/a/.*"}})),
                    rule(json!({"path": {"value": "/a"}}))
                ]),
            )],
            Req::get("/a/b"),
            name("HTTPRoute", "r", 1),
        ),
        (
            "method beats headers",
            vec![(
                "r",
                0,
                json!([
                    rule(json!({"headers": [{"name": "x", "value": "1"}]})),
                    rule(json!({"method": "GET"}))
                ]),
            )],
            Req::get("/").header("x", "1"),
            name("HTTPRoute", "r", 1),
        ),
        (
            "most headers",
            vec![(
                "r",
                0,
                json!([
                    rule(json!({"headers": [{"name": "x", "value": "1"}]})),
                    rule(
                        json!({"headers": [{"name": "x", "value": "1"}, {"name": "y", "value": "2"}]})
                    )
                ]),
            )],
            Req::get("/").header("x", "1").header("y", "2"),
            name("HTTPRoute", "r", 1),
        ),
        (
            "most query params",
            vec![(
                "r",
                0,
                json!([
                    rule(json!({"queryParams": [{"name": "a", "value": "1"}]})),
                    rule(
                        json!({"queryParams": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}]})
                    )
                ]),
            )],
            Req::get("/?a=1&b=2"),
            name("HTTPRoute", "r", 1),
        ),
        (
            "oldest route",
            vec![
                (
                    "a-newer",
                    5,
                    json!([rule(json!({"path": {"value": "/x"}}))]),
                ),
                (
                    "b-older",
                    1,
                    json!([rule(json!({"path": {"value": "/x"}}))]),
                ),
            ],
            Req::get("/x"),
            name("HTTPRoute", "b-older", 0),
        ),
        (
            "name order at the same age",
            vec![
                ("b", 1, json!([rule(json!({"path": {"value": "/x"}}))])),
                ("a", 1, json!([rule(json!({"path": {"value": "/x"}}))])),
            ],
            Req::get("/x"),
            name("HTTPRoute", "a", 0),
        ),
        (
            "rule order within a route",
            vec![(
                "r",
                0,
                json!([
                    rule(json!({"path": {"value": "/x"}})),
                    rule(json!({"path": {"value": "/x"}}))
                ]),
            )],
            Req::get("/x"),
            name("HTTPRoute", "r", 0),
        ),
        (
            "per match, not per rule",
            vec![(
                "r",
                0,
                json!([
                {"matches": [{"path": {"value": "/"}}, {"path": {"type": "Exact", "value": "/deep"}}], "backendRefs": backend("reviews")},
                rule(json!({"path": {"value": "/deep"}}))]),
            )],
            Req::get("/deep"),
            name("HTTPRoute", "r", 0),
        ),
    ];
    for (what, routes, req, want) in cases {
        let objects = routes
            .into_iter()
            .map(|(n, c, rules)| http_route(n, c, rules))
            .collect();
        let set = build(objects);
        assert!(set.refusals().is_empty(), "{what}: {:?}", set.refusals());
        assert_eq!(select(&set, &reviews(), &req), want, "{what}");
    }
}

#[test]
fn grpc_methods_match_as_paths() {
    let grpc = |m: Value| {
        object(
            "gateway.networking.k8s.io/v1",
            "GRPCRoute",
            "g",
            0,
            json!({"parentRefs": parent(), "rules": [{"matches": [m], "backendRefs": backend("reviews")}]}),
        )
    };
    let post = |path: &'static str| Req {
        method: "POST",
        ..Req::get(path)
    };
    let cases: Vec<(&str, Value, &'static str, &'static str)> = vec![
        (
            "service and method",
            json!({"method": {"service": "shop.Reviews", "method": "Get"}}),
            "/shop.Reviews/Get",
            "/shop.Reviews/List",
        ),
        (
            "service only",
            json!({"method": {"service": "shop.Reviews"}}),
            "/shop.Reviews/List",
            "/shop.Ratings/Get",
        ),
        (
            "method only",
            json!({"method": {"method": "Get"}}),
            "/any.Service/Get",
            "/any.Service/Put",
        ),
        (
            "regex",
            json!({"method": {"type": "RegularExpression", "service": "shop\\..*", "method": "Get|List"}}),
            "/shop.X/List",
            "/other.X/List",
        ),
        (
            "header",
            json!({"headers": [{"name": "x-tenant", "value": "a"}]}),
            "/s/m",
            "/s/m?no-header",
        ),
    ];
    for (what, m, matching, other) in cases {
        let set = build(vec![grpc(m)]);
        assert!(set.refusals().is_empty(), "{what}: {:?}", set.refusals());
        let with_tenant = |r: Req| r.header("x-tenant", "a");
        assert_eq!(
            select(&set, &reviews(), &with_tenant(post(matching))),
            "GRPCRoute shop/g rule 0",
            "{what}"
        );
        let other_req = if what == "header" {
            post(other)
        } else {
            with_tenant(post(other))
        };
        assert_eq!(
            select(&set, &reviews(), &other_req),
            "no match",
            "{what} does not"
        );
    }
}

#[test]
fn backends_weights_and_unresolvable_refs() {
    let set = build(vec![http_route(
        "r",
        0,
        json!([{"backendRefs": [
        {"name": "reviews", "port": 9080, "weight": 90},
        {"name": "ratings", "port": 9080},
        {"name": "details", "port": 9080, "weight": 0},
        {"name": "gone", "port": 9080, "weight": 5},
        {"group": "example.com", "kind": "Bucket", "name": "b", "port": 1, "weight": 5},
        {"name": "reviews", "namespace": "other", "port": 9080, "weight": 5}]}]),
    )]);
    assert!(set.refusals().is_empty(), "{:?}", set.refusals());
    let f = forward(&set, &reviews(), 0);
    let names: Vec<(&str, u32)> = f
        .backends
        .iter()
        .map(|b| (b.service.name.as_str(), b.weight))
        .collect();
    assert_eq!(
        names,
        [
            ("reviews", 90),
            ("ratings", 1),
            ("gone", 5),
            ("b", 5),
            ("reviews", 5)
        ],
        "weight 0 gets nothing; default 1"
    );
    assert_eq!(
        f.invalid_backends,
        [2, 3, 4],
        "a missing Service, another kind, another namespace: 500"
    );
    assert!(f.is_invalid(&f.backends[2]) && !f.is_invalid(&f.backends[0]));
    let copy = f.backends[2].clone();
    assert!(
        !f.is_invalid(&copy),
        "by identity, as pick_weighted returns them"
    );
    assert_eq!(
        f.retries,
        Some(crate::traffic::default_retries()),
        "the standard has none: Istio's default, as for a VirtualService route without retries"
    );
    let set = build(vec![http_route(
        "r",
        0,
        json!([{"backendRefs": [{"name": "reviews", "port": 9080, "weight": 0}]}]),
    )]);
    assert!(
        forward(&set, &reviews(), 0).backends.is_empty(),
        "all weight 0: an empty forward, 500"
    );
}

#[test]
fn filters_and_timeouts_are_read() {
    let set = build(vec![http_route(
        "r",
        0,
        json!([
        {"matches": [{"path": {"value": "/api"}}],
         "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-A", "value": "1"}], "remove": ["x-b"]}},
            {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"add": [{"name": "x-c", "value": "2"}]}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "ratings", "port": 9080}, "fraction": {"numerator": 1, "denominator": 4}}},
            {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "details", "port": 9080}, "percent": 10}}],
         "backendRefs": [{"name": "reviews", "port": 9080, "filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "x-backend", "value": "v1"}]}}]}],
         "timeouts": {"request": "10s", "backendRequest": "1500ms"}},
        {"matches": [{"path": {"type": "Exact", "value": "/old"}}],
         "filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]}]),
    )]);
    assert!(set.refusals().is_empty(), "{:?}", set.refusals());
    let f = forward(&set, &reviews(), 1);
    assert_eq!(f.request_headers.set, [("x-a".to_owned(), "1".to_owned())]);
    assert_eq!(f.request_headers.remove, ["x-b"]);
    assert_eq!(f.response_headers.add, [("x-c".to_owned(), "2".to_owned())]);
    assert_eq!(f.rewrite.path, Some(PathRewrite::Prefix("/v2".into())));
    assert_eq!(f.rewrite.authority.as_deref(), Some("internal"));
    let mirrors: Vec<(&str, Percent)> = f
        .mirrors
        .iter()
        .map(|m| (m.backend.service.name.as_str(), m.percent))
        .collect();
    assert_eq!(
        mirrors,
        [("ratings", Percent(25.0)), ("details", Percent(10.0))]
    );
    assert_eq!(
        f.backends[0].request_headers.set,
        [("x-backend".to_owned(), "v1".to_owned())]
    );
    assert_eq!(
        f.timeout,
        Some(Duration::from_millis(1500)),
        "the one try: the shorter"
    );
    match &set.http_rules(&reviews())[0].action {
        HttpAction::Redirect(r) => {
            assert_eq!(
                (r.status, r.scheme.as_deref()),
                (302, Some("https")),
                "302 by default"
            );
            assert_eq!(r.path, Some(PathRewrite::Full("/new".into())));
        }
        other => panic!("exact /old first: {other:?}"),
    }
}

#[test]
fn parents_gateway_ones_pass_silently_and_ports_narrow_matches() {
    let route = object(
        "gateway.networking.k8s.io/v1beta1",
        "HTTPRoute",
        "r",
        0,
        json!({
        "parentRefs": [{"name": "ingress"}, {"kind": "Service", "group": "", "name": "reviews", "port": 9080},
            {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "ext"}],
        "rules": [{"backendRefs": backend("reviews")}]}),
    );
    let set = build(vec![route]);
    let (kind, name, field, reason) = only_refusal(&set);
    assert_eq!(
        (kind.as_str(), name.as_str(), field.as_str()),
        ("HTTPRoute", "shop/r", "spec.parentRefs[2]")
    );
    assert!(reason.contains("\"ServiceEntry\""), "{reason}");
    assert_eq!(
        select(&set, &reviews(), &Req::get("/")),
        "HTTPRoute shop/r rule 0"
    );
    assert_eq!(
        select(
            &set,
            &reviews(),
            &Req {
                port: 9081,
                ..Req::get("/")
            }
        ),
        "no match",
        "parentRef port"
    );
    let only_gateway = object(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "edge",
        0,
        json!({"parentRefs": [{"name": "ingress"}], "rules": [{"backendRefs": backend("reviews")}]}),
    );
    let set = build(vec![only_gateway]);
    assert!(
        set.refusals().is_empty() && set.http_services().next().is_none(),
        "issue 19's, not ours"
    );
}

#[test]
fn tcp_routes_split_connections_by_weight() {
    let tcp = object(
        "gateway.networking.k8s.io/v1alpha2",
        "TCPRoute",
        "t",
        0,
        json!({
        "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9000}],
        "rules": [{"backendRefs": [{"name": "reviews", "port": 9000, "weight": 80}, {"name": "ratings", "port": 9000, "weight": 20}]}]}),
    );
    let set = build(vec![tcp]);
    assert!(set.refusals().is_empty(), "{:?}", set.refusals());
    let rule = set.tcp_rule(&reviews(), 9000).expect("on its parent port");
    assert_eq!(rule.route.to_string(), "TCPRoute shop/t rule 0");
    assert_eq!(
        rule.backends
            .iter()
            .map(|b| (b.service.name.as_str(), b.weight))
            .collect::<Vec<_>>(),
        [("reviews", 80), ("ratings", 20)]
    );
    assert!(set.tcp_rule(&reviews(), 9080).is_none());
    assert!(
        set.tcp_rule(&ServiceName::new("shop", "ratings"), 9000)
            .is_none()
    );
}

#[test]
fn a_virtual_service_and_routes_on_one_service_the_older_applies() {
    let vs = |created| {
        object(
            "networking.istio.io/v1",
            "VirtualService",
            "vs",
            created,
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        )
    };
    let route = |created| http_route("hr", created, json!([{"backendRefs": backend("reviews")}]));
    let set = build(vec![vs(1), route(2)]);
    assert_eq!(
        select(&set, &reviews(), &Req::get("/")),
        "VirtualService shop/vs rule 0"
    );
    let (kind, name, field, reason) = only_refusal(&set);
    assert_eq!(
        (kind.as_str(), name.as_str(), field.as_str()),
        ("HTTPRoute", "shop/hr", "spec")
    );
    assert!(
        reason.contains("routed by the older VirtualService shop/vs"),
        "{reason}"
    );
    let set = build(vec![vs(3), route(2)]);
    assert_eq!(
        select(&set, &reviews(), &Req::get("/")),
        "HTTPRoute shop/hr rule 0"
    );
    assert_eq!(only_refusal(&set).0, "VirtualService");
}
