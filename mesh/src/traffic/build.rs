//! The state's route objects and DestinationRules to one [`TrafficSet`]: parse each, refuse
//! the bad ones (each refusal names the object, the field and why), then settle which object
//! speaks for each Service and in what order its rules are evaluated.
//!
//! - DestinationRules: one per Service. With two, the oldest (creationTimestamp, then
//!   namespace/name) applies and the other is refused: istiod merges DestinationRules for one
//!   host only in cases marrow does not model (`pilot/pkg/model/destination_rule.go`,
//!   `mergeDestinationRule`: no workloadSelector, no overlapping subsets…), and the first by
//!   that order wins there too.
//! - VirtualServices: one per Service, the oldest, as istiod's waypoint takes the first that
//!   names the Service (`pilot/pkg/networking/core/listener_waypoint.go`,
//!   `getVirtualServiceForWaypoint`, over VirtualServices ordered by creation time), and only
//!   from the Service's own namespace. A subset a VirtualService names must be in the
//!   Service's DestinationRule, or the VirtualService is refused.
//! - HTTPRoutes and GRPCRoutes on a Service: all of their matches together, in the spec's
//!   precedence ([`super::gateway_api::Precedence`]), ties to the older route, then
//!   namespace/name, then rule and match order.
//! - A VirtualService and Gateway API routes on one Service: istiod turns the routes into one
//!   VirtualService for the Service and its waypoint still takes only the first by age, so the
//!   older side applies and the other is refused for that Service. The same for TCP.

use std::collections::{HashMap, HashSet};

use super::TrafficSet;
use super::destination::destination_rule;
use super::fields::{Invalid, Source};
use super::gateway_api::{self, GatewayRoute, Kind, Precedence};
use super::istio::{VirtualService, virtual_service};
use super::model::{DestinationPolicy, HttpRule, ServiceName, TcpRule};
use crate::objects::{RawKind, RawObject};

/// The age order of objects: older first, then namespace/name.
type Age = (String, String, String);

fn age(source: &Source) -> Age {
    (
        source.created.clone(),
        source.namespace.clone(),
        source.name.clone(),
    )
}

fn source_of(kind: &'static str, object: &RawObject) -> Source {
    let created = object.body["metadata"]["creationTimestamp"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Source {
        kind,
        namespace: object.object.namespace.clone().unwrap_or_default(),
        name: object.object.name.clone(),
        created,
    }
}

/// The rules one object gives one Service, with the object's age.
struct Claim<T> {
    age: Age,
    source: Source,
    rules: T,
}

impl TrafficSet {
    /// Parses every VirtualService, DestinationRule, HTTPRoute, GRPCRoute and TCPRoute among
    /// `objects` (Services are read to resolve backendRefs); what cannot apply is in
    /// [`TrafficSet::refusals`].
    pub fn from_objects<'a>(objects: impl IntoIterator<Item = &'a RawObject>) -> TrafficSet {
        let objects: Vec<&RawObject> = objects.into_iter().collect();
        let services: HashSet<ServiceName> = objects
            .iter()
            .filter(|o| o.kind == RawKind::Service)
            .map(|o| {
                ServiceName::new(
                    o.object.namespace.clone().unwrap_or_default(),
                    o.object.name.clone(),
                )
            })
            .collect();
        let mut set = TrafficSet::new();
        let of = |kind: RawKind| objects.iter().filter(move |o| o.kind == kind);

        // DestinationRules first: VirtualServices are checked against their subsets.
        let mut rules: Vec<(Age, Source, DestinationPolicy)> = Vec::new();
        for object in of(RawKind::DestinationRule) {
            let source = source_of("DestinationRule", object);
            match destination_rule(&source, &object.body) {
                Ok(policy) => rules.push((age(&source), source, policy)),
                Err(invalid) => set.refuse(source.refusal(invalid)),
            }
        }
        rules.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, source, policy) in rules {
            if let Some(first) = set.destination_policy(&policy.service) {
                let reason = format!(
                    "{} already has the DestinationRule {}/{} (older, or first by name); istiod would not merge these",
                    policy.service, first.namespace, first.name
                );
                set.refuse(source.refusal(Invalid {
                    field: "spec.host".into(),
                    reason,
                }));
                continue;
            }
            set.insert_destination(policy);
        }

        let mut http: HashMap<ServiceName, Vec<Claim<Vec<HttpRule>>>> = HashMap::new();
        let mut tcp: HashMap<ServiceName, Vec<Claim<Vec<TcpRule>>>> = HashMap::new();
        for object in of(RawKind::VirtualService) {
            let source = source_of("VirtualService", object);
            let parsed =
                virtual_service(&source, &object.body).and_then(|vs| subsets_defined(&set, vs));
            let vs = match parsed {
                Ok(vs) => vs,
                Err(invalid) => {
                    set.refuse(source.refusal(invalid));
                    continue;
                }
            };
            for partial in vs.partial {
                set.refuse(source.refusal(partial));
            }
            if !vs.mesh {
                // Bound to gateways only (issue 19's ingress): no Service's routes here.
                continue;
            }
            for (i, service) in vs.hosts.iter().enumerate() {
                if service.namespace != source.namespace {
                    set.refuse(source.refusal(Invalid {
                        field: format!("spec.hosts[{i}]"),
                        reason: format!(
                            "{service} is in another namespace; a waypoint takes VirtualServices from the Service's own namespace"
                        ),
                    }));
                    continue;
                }
                if !vs.http.is_empty() {
                    http.entry(service.clone()).or_default().push(Claim {
                        age: age(&source),
                        source: source.clone(),
                        rules: vs.http.clone(),
                    });
                }
                if !vs.tcp.is_empty() {
                    tcp.entry(service.clone()).or_default().push(Claim {
                        age: age(&source),
                        source: source.clone(),
                        rules: vs.tcp.clone(),
                    });
                }
            }
        }

        // Gateway API routes: every route's matches on a Service, gathered, then ordered.
        let mut routes: HashMap<ServiceName, Vec<(Precedence, Age, Source, HttpRule)>> =
            HashMap::new();
        for (raw, kind, name) in [
            (RawKind::HttpRoute, Kind::Http, "HTTPRoute"),
            (RawKind::GrpcRoute, Kind::Grpc, "GRPCRoute"),
            (RawKind::TcpRoute, Kind::Tcp, "TCPRoute"),
        ] {
            for object in of(raw) {
                let source = source_of(name, object);
                let route: GatewayRoute =
                    match gateway_api::route(&source, &object.body, kind, &services) {
                        Ok(route) => route,
                        Err(invalid) => {
                            set.refuse(source.refusal(invalid));
                            continue;
                        }
                    };
                for partial in route.partial {
                    set.refuse(source.refusal(partial));
                }
                for (service, port) in &route.parents {
                    if let Some(rule) = &route.tcp {
                        tcp.entry(service.clone()).or_default().push(Claim {
                            age: age(&source),
                            source: source.clone(),
                            rules: vec![TcpRule {
                                port: *port,
                                ..rule.clone()
                            }],
                        });
                    }
                    for (precedence, rule) in &route.http {
                        let mut rule = rule.clone();
                        for m in &mut rule.matches {
                            m.port = *port;
                        }
                        routes.entry(service.clone()).or_default().push((
                            *precedence,
                            age(&source),
                            source.clone(),
                            rule,
                        ));
                    }
                }
            }
        }
        for (service, mut matches) in routes {
            // Stable: equal precedence keeps age order, then rule and match order.
            matches.sort_by(|a, b| a.1.cmp(&b.1));
            matches.sort_by_key(|m| std::cmp::Reverse(m.0));
            let Some(oldest) = matches.iter().map(|m| m.1.clone()).min() else {
                continue;
            };
            let source = matches
                .iter()
                .find(|m| m.1 == oldest)
                .map(|m| m.2.clone())
                .unwrap_or_else(|| matches[0].2.clone());
            http.entry(service).or_default().push(Claim {
                age: oldest,
                source,
                rules: matches.into_iter().map(|m| m.3).collect(),
            });
        }

        for (service, claims) in http {
            if let Some(rules) = settle(&mut set, &service, claims) {
                set.insert_http(service, rules);
            }
        }
        for (service, claims) in tcp {
            if let Some(rules) = settle(&mut set, &service, claims) {
                set.insert_tcp(service, rules);
            }
        }
        set
    }
}

/// The claim that speaks for `service`: the oldest. Every other is refused for it.
fn settle<T>(set: &mut TrafficSet, service: &ServiceName, mut claims: Vec<Claim<T>>) -> Option<T> {
    claims.sort_by(|a, b| a.age.cmp(&b.age));
    let mut claims = claims.into_iter();
    let first = claims.next()?;
    for other in claims {
        set.refuse(other.source.refusal(Invalid {
            field: "spec".into(),
            reason: format!(
                "{service} is routed by the older {} {}/{}; one route object speaks for a Service (as istiod's waypoint takes one)",
                first.source.kind, first.source.namespace, first.source.name
            ),
        }));
    }
    Some(first.rules)
}

/// Refuses `vs` when a subset it names is not in the Service's DestinationRule.
fn subsets_defined(set: &TrafficSet, vs: VirtualService) -> Result<VirtualService, Invalid> {
    for used in &vs.subsets {
        let reason = match set.destination_policy(&used.service) {
            None => format!(
                "subset {:?}: no DestinationRule defines subsets for {}",
                used.subset, used.service
            ),
            Some(dr) if dr.subset(&used.subset).is_none() => format!(
                "subset {:?} is not in the DestinationRule {}/{} for {}",
                used.subset, dr.namespace, dr.name, used.service
            ),
            Some(_) => continue,
        };
        return Err(Invalid {
            field: used.field.clone(),
            reason,
        });
    }
    Ok(vs)
}
