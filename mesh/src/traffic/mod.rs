//! Traffic management with Istio's and the Gateway API's semantics: `networking.istio.io`
//! VirtualService and DestinationRule, `gateway.networking.k8s.io` HTTPRoute, GRPCRoute and
//! TCPRoute with a Service parent (GAMMA), parsed from Kubernetes JSON into one [`TrafficSet`]
//! and evaluated as pure functions of it: which rule a request takes ([`TrafficSet::select_http`]),
//! which backend a connection takes ([`TrafficSet::tcp_rule`], [`pick_weighted`]), and the
//! DestinationRule policy in force for a backend ([`DestinationPolicy::resolve`]).
//!
//! The waypoint applies the HTTP rules at L7; the node proxy applies TCPRoutes and the
//! DestinationRules' connection policies at L4; `node-proxy routes` explains both with these
//! same functions.
//!
//! Invariants: a rule in the set is valid (its regexes compile, its weights are not all zero,
//! its subsets exist); an object that is not is refused and recorded in
//! [`TrafficSet::refusals`] with its kind, name, field and reason, and the rest of the set
//! applies. Each Service's HTTP rules are held in evaluation order, so selection is a scan that
//! stops at the first match.

mod build;
mod destination;
mod fields;
mod gateway_api;
mod istio;
mod matching;
mod model;
mod report;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

pub use istio::default_retries;
pub use matching::{RouteRequest, pick_weighted};
pub use model::{
    AbortStatus, Backend, ConnectionPool, DestinationPolicy, DirectResponse, Fault, Forward,
    FullRegex, HashKey, HeaderMatch, HeaderOps, HttpAction, HttpRule, LoadBalancer, Mirror,
    OutlierDetection, PathMatch, PathRewrite, Percent, QueryMatch, Redirect, Refusal, RequestMatch,
    RetryOn, RetryPolicy, Rewrite, RouteKind, RouteRef, ServiceName, Subset, TcpRule,
    TrafficPolicy, ValueMatch,
};
pub use report::{REFUSABLE_KINDS, RefusalMetrics, RefusedLabels};

/// Which HTTP rule a request takes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HttpSelection<'a> {
    /// No route object applies to the Service: forward to the Service itself.
    NoRoutes,
    /// This rule matched.
    Matched(&'a HttpRule),
    /// Routes apply but no rule matches: 404 with Envoy's `NR` flag.
    NoMatch,
}

/// Every route and DestinationRule in force, by the Service they are for.
#[derive(Clone, Debug, Default)]
pub struct TrafficSet {
    /// Each Service's HTTP rules, in evaluation order.
    http: HashMap<ServiceName, Vec<HttpRule>>,
    /// Each Service's TCP rules, in evaluation order.
    tcp: HashMap<ServiceName, Vec<TcpRule>>,
    /// Each Service's DestinationRule.
    destinations: HashMap<ServiceName, DestinationPolicy>,
    /// What was left out, and why.
    refusals: Vec<Refusal>,
}

impl TrafficSet {
    /// An empty set: every Service is forwarded to as it is.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `service`'s HTTP rules, already in evaluation order.
    pub fn insert_http(&mut self, service: ServiceName, rules: Vec<HttpRule>) {
        self.http.insert(service, rules);
    }

    /// Sets `service`'s TCP rules, already in evaluation order.
    pub fn insert_tcp(&mut self, service: ServiceName, rules: Vec<TcpRule>) {
        self.tcp.insert(service, rules);
    }

    /// Sets the DestinationRule for its Service.
    pub fn insert_destination(&mut self, policy: DestinationPolicy) {
        self.destinations.insert(policy.service.clone(), policy);
    }

    /// Records an object (or part of one) left out.
    pub fn refuse(&mut self, refusal: Refusal) {
        self.refusals.push(refusal);
    }

    /// `service`'s HTTP rules in evaluation order (empty when no route applies).
    pub fn http_rules(&self, service: &ServiceName) -> &[HttpRule] {
        self.http.get(service).map_or(&[], Vec::as_slice)
    }

    /// The rule `request` to `service` takes: the first in evaluation order with a match block
    /// that holds (or no block at all).
    pub fn select_http(
        &self,
        service: &ServiceName,
        request: &RouteRequest<'_>,
    ) -> HttpSelection<'_> {
        let Some(rules) = self.http.get(service) else {
            return HttpSelection::NoRoutes;
        };
        rules
            .iter()
            .find(|rule| request.matches_any(&rule.matches))
            .map_or(HttpSelection::NoMatch, HttpSelection::Matched)
    }

    /// The TCP rule for a connection to `service` at `port`: the first whose port is unset or
    /// equal.
    pub fn tcp_rule(&self, service: &ServiceName, port: u16) -> Option<&TcpRule> {
        self.tcp
            .get(service)?
            .iter()
            .find(|rule| rule.port.is_none_or(|p| p == port))
    }

    /// The DestinationRule for `service`.
    pub fn destination_policy(&self, service: &ServiceName) -> Option<&DestinationPolicy> {
        self.destinations.get(service)
    }

    /// Every Service with HTTP rules.
    pub fn http_services(&self) -> impl Iterator<Item = &ServiceName> {
        self.http.keys()
    }

    /// What was left out, and why.
    pub fn refusals(&self) -> &[Refusal] {
        &self.refusals
    }

    /// The refusals counted by kind, for a gauge.
    pub fn refusal_counts(&self) -> BTreeMap<String, i64> {
        let mut counts = BTreeMap::new();
        for refusal in &self.refusals {
            *counts.entry(refusal.kind.clone()).or_insert(0) += 1;
        }
        counts
    }
}

impl DestinationPolicy {
    /// The subset called `name`.
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The policy in force for traffic to `port` of `subset`, as istiod merges it (istio/istio
    /// `pilot/pkg/networking/util/util.go`, `MergeSubsetTrafficPolicy` and
    /// `GetPortLevelTrafficPolicy`):
    /// - a port-level setting for `port` replaces its level's policy whole: a field it leaves
    ///   unset is the default, not the level's (the API's documented rule);
    /// - the subset's policy (its port-level one for `port` if any, taken whole, every field)
    ///   then overrides the top level's, field by field — or, when it is port-level, entirely.
    pub fn resolve(&self, port: u16, subset: Option<&str>) -> TrafficPolicy {
        let at_port = |ports: &[(u16, TrafficPolicy)]| {
            ports
                .iter()
                .find(|(p, _)| *p == port)
                .map(|(_, policy)| policy.clone())
        };
        let top = at_port(&self.port_policies).unwrap_or_else(|| self.policy.clone());
        let Some(subset) = subset.and_then(|name| self.subset(name)) else {
            return top;
        };
        if let Some(whole) = at_port(&subset.port_policies) {
            return whole;
        }
        let own = &subset.policy;
        TrafficPolicy {
            load_balancer: own.load_balancer.clone().or(top.load_balancer),
            connection_pool: own.connection_pool.clone().or(top.connection_pool),
            outlier_detection: own.outlier_detection.clone().or(top.outlier_detection),
        }
    }
}
