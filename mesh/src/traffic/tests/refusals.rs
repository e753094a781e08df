//! Every bad input: a VirtualService or a Gateway API route refused whole, with its kind,
//! name, field and reason.

use serde_json::{Value, json};

use super::{Req, build, object, only_refusal, reviews, select};
use crate::objects::RawObject;

fn vs(name: &str, created: u64, spec: Value) -> RawObject {
    object(
        "networking.istio.io/v1",
        "VirtualService",
        name,
        created,
        spec,
    )
}

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
fn every_bad_virtual_service_is_refused_whole_with_its_field_and_reason() {
    let route = json!([{"destination": {"host": "reviews"}}]);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "bad regex",
            json!([{"match": [{"uri": {"regex": "(unclosed"}}], "route": route}]),
            "spec.http[0].match[0].uri.regex",
            "not a valid regex",
        ),
        (
            "two path kinds",
            json!([{"match": [{"uri": {"exact": "/a", "prefix": "/a"}}], "route": route}]),
            "spec.http[0].match[0].uri",
            "more than one of exact, prefix and regex",
        ),
        (
            "query prefix",
            json!([{"match": [{"queryParams": {"v": {"prefix": "1"}}}], "route": route}]),
            "spec.http[0].match[0].queryParams.v.prefix",
            "not supported",
        ),
        (
            "method regex",
            json!([{"match": [{"method": {"regex": "GET|HEAD"}}], "route": route}]),
            "spec.http[0].match[0].method",
            "only an exact method",
        ),
        (
            "scheme",
            json!([{"match": [{"scheme": {"exact": "https"}}], "route": route}]),
            "spec.http[0].match[0].scheme",
            "not supported",
        ),
        (
            "weights not 100",
            json!([{"route": [{"destination": {"host": "reviews"}, "weight": 50}, {"destination": {"host": "ratings"}, "weight": 40}]}]),
            "spec.http[0].route",
            "total destination weight 90 != 100",
        ),
        (
            "weights all zero",
            json!([{"route": [{"destination": {"host": "reviews"}}, {"destination": {"host": "ratings"}}]}]),
            "spec.http[0].route",
            "total destination weight 0 != 100",
        ),
        (
            "weight over 100",
            json!([{"route": [{"destination": {"host": "reviews"}, "weight": 150}]}]),
            "spec.http[0].route[0].weight",
            "from 0 to 100",
        ),
        (
            "unknown subset",
            json!([{"route": [{"destination": {"host": "reviews", "subset": "v9"}}]}]),
            "spec.http[0].route[0].destination.subset",
            "no DestinationRule defines subsets for shop/reviews",
        ),
        (
            "not a service",
            json!([{"route": [{"destination": {"host": "api.example.com"}}]}]),
            "spec.http[0].route[0].destination.host",
            "names no Service",
        ),
        (
            "no destination",
            json!([{"route": [{"weight": 100}]}]),
            "spec.http[0].route[0].destination",
            "required",
        ),
        (
            "route and redirect",
            json!([{"route": route, "redirect": {"uri": "/x"}}]),
            "spec.http[0]",
            "both route and redirect",
        ),
        (
            "nothing to do",
            json!([{"match": [{"uri": {"prefix": "/"}}]}]),
            "spec.http[0]",
            "route, redirect or directResponse is required",
        ),
        (
            "bad redirect code",
            json!([{"redirect": {"uri": "/x", "redirectCode": 305}}]),
            "spec.http[0].redirect.redirectCode",
            "305 is not a redirect status",
        ),
        (
            "bad direct status",
            json!([{"directResponse": {"status": 99}}]),
            "spec.http[0].directResponse.status",
            "99 is not an HTTP status",
        ),
        (
            "bad percentage",
            json!([{"route": route, "fault": {"delay": {"fixedDelay": "1s", "percentage": {"value": 150}}}}]),
            "spec.http[0].fault.delay.percentage.value",
            "not a percentage from 0 to 100",
        ),
        (
            "negative percentage",
            json!([{"route": route, "mirror": {"host": "ratings"}, "mirrorPercentage": {"value": -1}}]),
            "spec.http[0].mirrorPercentage.value",
            "not a percentage",
        ),
        (
            "bad abort status",
            json!([{"route": route, "fault": {"abort": {"httpStatus": 99}}}]),
            "spec.http[0].fault.abort.httpStatus",
            "99 is not an HTTP status",
        ),
        (
            "bad grpc status",
            json!([{"route": route, "fault": {"abort": {"grpcStatus": "SORT_OF_OK"}}}]),
            "spec.http[0].fault.abort.grpcStatus",
            "not a gRPC status",
        ),
        (
            "delay without duration",
            json!([{"route": route, "fault": {"delay": {"percentage": {"value": 5}}}}]),
            "spec.http[0].fault.delay.fixedDelay",
            "needs fixedDelay",
        ),
        (
            "bad retryOn",
            json!([{"route": route, "retries": {"attempts": 2, "retryOn": "5xx,sometimes"}}]),
            "spec.http[0].retries.retryOn",
            "\"sometimes\" is not a valid retryOn policy",
        ),
        (
            "bad retry code",
            json!([{"route": route, "retries": {"attempts": 2, "retryOn": "700"}}]),
            "spec.http[0].retries.retryOn",
            "not an HTTP status code",
        ),
        (
            "bad perTryTimeout",
            json!([{"route": route, "retries": {"attempts": 2, "perTryTimeout": "soon"}}]),
            "spec.http[0].retries.perTryTimeout",
            "not a duration",
        ),
        (
            "two rewrites",
            json!([{"route": route, "rewrite": {"uri": "/a", "uriRegexRewrite": {"match": "x", "rewrite": "y"}}}]),
            "spec.http[0].rewrite",
            "only contain one of uri or uriRegexRewrite",
        ),
        (
            "bad rewrite regex",
            json!([{"route": route, "rewrite": {"uriRegexRewrite": {"match": "(", "rewrite": "y"}}}]),
            "spec.http[0].rewrite.uriRegexRewrite.match",
            "not a valid regex",
        ),
        (
            "delegate",
            json!([{"delegate": {"name": "other"}}]),
            "spec.http[0].delegate",
            "not supported",
        ),
        (
            "wrong type",
            json!([{"match": "everything", "route": route}]),
            "spec.http[0].match",
            "not a list",
        ),
    ];
    for (what, http, field, reason) in cases {
        let set = build(vec![vs(
            "bad",
            0,
            json!({"hosts": ["reviews"], "http": http}),
        )]);
        assert_eq!(set.refusals().len(), 1, "{what}");
        let (kind, name, got_field, got_reason) = only_refusal(&set);
        assert_eq!(
            (kind.as_str(), name.as_str()),
            ("VirtualService", "shop/bad"),
            "{what}"
        );
        assert_eq!(got_field, field, "{what}");
        assert!(got_reason.contains(reason), "{what}: {got_reason}");
        assert_eq!(
            select(&set, &reviews(), &Req::get("/")),
            "none",
            "{what}: refused whole"
        );
    }
    let set = build(vec![vs(
        "bad",
        0,
        json!({"http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
    )]);
    assert_eq!(only_refusal(&set).2, "spec.hosts");
}

#[test]
fn every_bad_route_is_refused_whole_with_its_field_and_reason() {
    let refs = backend("reviews");
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "bad path regex",
            json!([{"matches": [{"path": {"type": "RegularExpression", "value": "(a"}}], "backendRefs": refs}]),
            "spec.rules[0].matches[0].path.value",
            "not a valid regex",
        ),
        (
            "bad path type",
            json!([{"matches": [{"path": {"type": "Glob", "value": "/a*"}}], "backendRefs": refs}]),
            "spec.rules[0].matches[0].path.type",
            "not a path match type",
        ),
        (
            "relative path",
            json!([{"matches": [{"path": {"value": "a"}}], "backendRefs": refs}]),
            "spec.rules[0].matches[0].path.value",
            "does not start with /",
        ),
        (
            "bad header regex",
            json!([{"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "["}]}], "backendRefs": refs}]),
            "spec.rules[0].matches[0].headers[0].value",
            "not a valid regex",
        ),
        (
            "header without name",
            json!([{"matches": [{"headers": [{"value": "1"}]}], "backendRefs": refs}]),
            "spec.rules[0].matches[0].headers[0].name",
            "a name is required",
        ),
        (
            "bad timeout",
            json!([{"backendRefs": refs, "timeouts": {"request": "1.5s"}}]),
            "spec.rules[0].timeouts.request",
            "not a Gateway API duration",
        ),
        (
            "backend longer than request",
            json!([{"backendRefs": refs, "timeouts": {"request": "1s", "backendRequest": "2s"}}]),
            "spec.rules[0].timeouts.backendRequest",
            "cannot be longer",
        ),
        (
            "redirect and rewrite",
            json!([{"filters": [
            {"type": "RequestRedirect", "requestRedirect": {"hostname": "a"}},
            {"type": "URLRewrite", "urlRewrite": {"hostname": "b"}}]}]),
            "spec.rules[0].filters",
            "cannot both be given",
        ),
        (
            "bad redirect status",
            json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 307}}]}]),
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "307 is not 301 or 302",
        ),
        (
            "prefix rewrite on exact",
            json!([{"matches": [{"path": {"type": "Exact", "value": "/a"}}], "filters": [
            {"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}], "backendRefs": refs}]),
            "spec.rules[0].matches[0].path",
            "needs a PathPrefix",
        ),
        (
            "filter twice",
            json!([{"filters": [
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {}},
            {"type": "RequestHeaderModifier", "requestHeaderModifier": {}}], "backendRefs": refs}]),
            "spec.rules[0].filters[1].type",
            "given twice",
        ),
        (
            "unsupported filter",
            json!([{"filters": [{"type": "ExtensionRef", "extensionRef": {"name": "x"}}], "backendRefs": refs}]),
            "spec.rules[0].filters[0].type",
            "not supported",
        ),
        (
            "mirror percentage",
            json!([{"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "ratings", "port": 9080}, "percent": 150}}], "backendRefs": refs}]),
            "spec.rules[0].filters[0].requestMirror.percent",
            "from 0 to 100",
        ),
        (
            "mirror fraction",
            json!([{"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "ratings", "port": 9080}, "fraction": {"numerator": 5, "denominator": 4}}}], "backendRefs": refs}]),
            "spec.rules[0].filters[0].requestMirror.fraction",
            "numerator must be",
        ),
        (
            "mirror to nothing",
            json!([{"filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "gone", "port": 9080}}}], "backendRefs": refs}]),
            "spec.rules[0].filters[0].requestMirror.backendRef",
            "cannot be resolved",
        ),
        (
            "service ref without port",
            json!([{"backendRefs": [{"name": "reviews"}]}]),
            "spec.rules[0].backendRefs[0].port",
            "needs a port",
        ),
        (
            "negative weight",
            json!([{"backendRefs": [{"name": "reviews", "port": 9080, "weight": -1}]}]),
            "spec.rules[0].backendRefs[0].weight",
            "not a whole number",
        ),
    ];
    for (what, rules, field, reason) in cases {
        let set = build(vec![http_route("bad", 0, rules)]);
        let (kind, name, got_field, got_reason) = only_refusal(&set);
        assert_eq!(
            (kind.as_str(), name.as_str()),
            ("HTTPRoute", "shop/bad"),
            "{what}"
        );
        assert_eq!(got_field, field, "{what}");
        assert!(got_reason.contains(reason), "{what}: {got_reason}");
        assert_eq!(
            select(&set, &reviews(), &Req::get("/a")),
            "none",
            "{what}: refused whole"
        );
    }
    let grpc = object(
        "gateway.networking.k8s.io/v1",
        "GRPCRoute",
        "bad",
        0,
        json!({"parentRefs": parent(),
        "rules": [{"filters": [{"type": "URLRewrite", "urlRewrite": {}}], "backendRefs": refs}]}),
    );
    let (kind, _, field, reason) = only_refusal(&build(vec![grpc]));
    assert_eq!(
        (kind.as_str(), field.as_str()),
        ("GRPCRoute", "spec.rules[0].filters[0].type")
    );
    assert!(reason.contains("not a GRPCRoute filter"), "{reason}");
    let consumer = object(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        "c",
        0,
        json!({
        "parentRefs": [{"kind": "Service", "group": "", "name": "reviews", "namespace": "prod"}],
        "rules": [{"backendRefs": refs}]}),
    );
    let (_, _, field, reason) = only_refusal(&build(vec![consumer]));
    assert_eq!(field, "spec.parentRefs[0].namespace");
    assert!(reason.contains("consumer route"), "{reason}");
}
