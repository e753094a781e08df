//! Tables for the parsers: each match kind matching and not, first match for VirtualServices,
//! the Gateway API's precedence ties, subset resolution, DestinationRule layers, and every bad
//! input (kind, name, field, reason). Objects are built as JSON, as both sources keep them.

mod destination;
mod gateway_api;
mod istio;
mod refusals;
mod sources;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{HttpAction, HttpSelection, RouteRequest, ServiceName, TrafficSet};
use crate::objects::{ObjectRef, RawKind, RawObject};

/// A raw object from its JSON (namespace `shop` unless it names one).
pub(super) fn raw(body: Value) -> RawObject {
    let api_version = body["apiVersion"].as_str().unwrap_or_default();
    let kind_name = body["kind"].as_str().unwrap_or_default();
    let kind = RawKind::of(api_version, kind_name).expect("a raw kind");
    RawObject {
        kind,
        object: ObjectRef {
            kind: kind_name.into(),
            namespace: Some(
                body["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("shop")
                    .into(),
            ),
            name: body["metadata"]["name"].as_str().unwrap_or_default().into(),
        },
        body,
    }
}

/// A Service `shop/<name>` (only its name matters to routes).
pub(super) fn service(name: &str) -> RawObject {
    raw(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 9080}]}}))
}

/// An object of `kind` called `name` in `shop` with `spec`, created at `created` (seconds).
pub(super) fn object(
    api_version: &str,
    kind: &str,
    name: &str,
    created: u64,
    spec: Value,
) -> RawObject {
    raw(json!({"apiVersion": api_version, "kind": kind,
        "metadata": {"name": name, "namespace": "shop",
            "creationTimestamp": crate::objects::timestamp(1_800_000_000 + created)},
        "spec": spec}))
}

/// The set built from `objects` plus the Services `reviews`, `ratings` and `details`.
pub(super) fn build(objects: Vec<RawObject>) -> TrafficSet {
    let mut all = vec![service("reviews"), service("ratings"), service("details")];
    all.extend(objects);
    TrafficSet::from_objects(all.iter())
}

pub(super) fn reviews() -> ServiceName {
    ServiceName::new("shop", "reviews")
}

/// A request to describe.
#[derive(Clone, Debug)]
pub(super) struct Req {
    pub method: &'static str,
    pub path: &'static str,
    pub headers: Vec<(&'static str, &'static str)>,
    pub port: u16,
    pub authority: &'static str,
    pub source_namespace: Option<&'static str>,
    pub labels: Option<BTreeMap<String, String>>,
}

impl Req {
    pub fn get(path: &'static str) -> Req {
        Req {
            method: "GET",
            path,
            headers: Vec::new(),
            port: 9080,
            authority: "reviews:9080",
            source_namespace: None,
            labels: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: &'static str) -> Req {
        self.headers.push((name, value));
        self
    }
}

/// What `set` does with `req` to `service`: `none`, `no match`, or `<Kind> ns/name rule N`.
pub(super) fn select(set: &TrafficSet, service: &ServiceName, req: &Req) -> String {
    let mut headers = http::HeaderMap::new();
    for (name, value) in &req.headers {
        headers.append(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        );
    }
    let request = RouteRequest {
        port: req.port,
        method: req.method,
        path_and_query: req.path,
        authority: req.authority,
        headers: &headers,
        source_namespace: req.source_namespace,
        source_labels: req.labels.as_ref(),
    };
    match set.select_http(service, &request) {
        HttpSelection::NoRoutes => "none".into(),
        HttpSelection::NoMatch => "no match".into(),
        HttpSelection::Matched(rule) => rule.route.to_string(),
    }
}

/// The only refusal, as `(kind, ns/name, field, reason)`; fails when there is not exactly one.
pub(super) fn only_refusal(set: &TrafficSet) -> (String, String, String, String) {
    match set.refusals() {
        [r] => (
            r.kind.clone(),
            format!("{}/{}", r.namespace, r.name),
            r.field.clone(),
            r.reason.clone(),
        ),
        other => panic!("expected one refusal, got {other:?}"),
    }
}

/// The forward of `service`'s rule `index`.
pub(super) fn forward(set: &TrafficSet, service: &ServiceName, index: usize) -> super::Forward {
    match &set.http_rules(service)[index].action {
        HttpAction::Forward(f) => (**f).clone(),
        other => panic!("not a forward: {other:?}"),
    }
}
