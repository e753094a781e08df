//! A Gateway of the waypoint class read as a [`Waypoint`]: its traffic type, names, allowed
//! namespaces (`makeAllowedRoutes`, istio `pilot/pkg/serviceregistry/ambient/waypoints.go`) and
//! instances.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde_json::Value;

use super::{
    NAME_OVERRIDE_ANNOTATION, SERVICE_ACCOUNT_ANNOTATION, TrafficType, WAYPOINT_CLASS,
    WAYPOINT_FOR_LABEL, WAYPOINT_HBONE_PORT, Waypoint, WaypointName,
};
use crate::objects::RawKind;
use crate::state::services::ServiceTarget;
use crate::state::{Snapshot, Workload};

/// Which namespaces may attach to a waypoint: its HBONE listener's `allowedRoutes.namespaces`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum AllowedRoutes {
    /// Its own namespace only (the default).
    Same,
    /// Any namespace.
    All,
    /// Namespaces whose labels match.
    Selector(LabelSelector),
}

/// A `metav1.LabelSelector`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct LabelSelector {
    labels: BTreeMap<String, String>,
    expressions: Vec<(String, Operator, Vec<String>)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl AllowedRoutes {
    /// Whether an object of `namespace` (with `labels`) may use a waypoint of `own`.
    pub(super) fn permits(
        &self,
        own: &str,
        namespace: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        match self {
            AllowedRoutes::Same => own == namespace,
            AllowedRoutes::All => true,
            AllowedRoutes::Selector(selector) => {
                selector.matches(labels.unwrap_or(&BTreeMap::new()))
            }
        }
    }
}

impl LabelSelector {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(key, op, values)| {
                let value = labels.get(key);
                match op {
                    Operator::In => value.is_some_and(|v| values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Why a Gateway of the waypoint class cannot be used: a field and what it must be.
fn bad_field(field: &str, expected: &str) -> String {
    format!("{field} is not {expected}")
}

/// The waypoint a Gateway is; `Ok(None)` for a Gateway of another class.
pub(super) fn waypoint_of<'a>(
    snap: &Snapshot,
    body: &Value,
    class_label: impl Fn(&str) -> Option<&'a str>,
    warnings: &mut Vec<String>,
) -> Result<Option<Waypoint>, String> {
    let meta = &body["metadata"];
    let Some(class) = body["spec"]["gatewayClassName"].as_str() else {
        return Err(bad_field("spec.gatewayClassName", "a string"));
    };
    if class != WAYPOINT_CLASS {
        return Ok(None);
    }
    let name = WaypointName {
        namespace: meta["namespace"]
            .as_str()
            .unwrap_or(crate::state::k8s::DEFAULT_NAMESPACE)
            .to_owned(),
        name: meta["name"].as_str().unwrap_or_default().to_owned(),
    };
    let labels = labels_of(&meta["labels"]);
    let traffic_text = labels
        .get(WAYPOINT_FOR_LABEL)
        .map(String::as_str)
        .or_else(|| class_label(class))
        .unwrap_or("service");
    let traffic = TrafficType::parse(traffic_text).unwrap_or_else(|| {
        warnings.push(format!(
            "Gateway {name}: {WAYPOINT_FOR_LABEL} {traffic_text:?} is not service, workload, all \
             or none; it serves nothing"
        ));
        TrafficType::None
    });
    let annotation = |key: &str| {
        meta["annotations"][key]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let service_name = annotation(NAME_OVERRIDE_ANNOTATION).unwrap_or_else(|| name.name.clone());
    let service_account =
        annotation(SERVICE_ACCOUNT_ANNOTATION).unwrap_or_else(|| name.name.clone());
    let allowed = allowed_routes(&name, &body["spec"]["listeners"], warnings)?;
    let (hbone, instances) = instances(snap, &name.namespace, &service_name);
    Ok(Some(Waypoint {
        name,
        traffic,
        service_name,
        service_account,
        allowed,
        hbone,
        instances,
    }))
}

/// The HBONE listener's (protocol `HBONE`, port 15008) `allowedRoutes.namespaces`; `Same` when
/// there is none (`makeAllowedRoutes`). Another listener is only reported, as istiod flags it
/// in the listener status without refusing the Gateway.
fn allowed_routes(
    name: &WaypointName,
    listeners: &Value,
    warnings: &mut Vec<String>,
) -> Result<AllowedRoutes, String> {
    let listeners = match listeners {
        Value::Null => &[][..],
        Value::Array(listeners) => listeners.as_slice(),
        _ => {
            return Err(bad_field("spec.listeners", "a list"));
        }
    };
    let is_hbone = |l: &&Value| {
        l["protocol"].as_str() == Some("HBONE")
            && l["port"].as_u64() == Some(u64::from(WAYPOINT_HBONE_PORT))
    };
    if listeners.iter().any(|l| !is_hbone(&l)) || listeners.is_empty() {
        warnings.push(format!(
            "Gateway {name}: expected a single listener on port {WAYPOINT_HBONE_PORT} with \
             protocol \"HBONE\"; others are ignored"
        ));
    }
    let Some(listener) = listeners.iter().find(is_hbone) else {
        return Ok(AllowedRoutes::Same);
    };
    let namespaces = &listener["allowedRoutes"]["namespaces"];
    match namespaces["from"].as_str() {
        None | Some("Same") => Ok(AllowedRoutes::Same),
        Some("All") => Ok(AllowedRoutes::All),
        Some("Selector") => selector(&namespaces["selector"]).map(AllowedRoutes::Selector),
        Some(_) => Err(bad_field(
            "allowedRoutes.namespaces.from",
            "Same, All or Selector",
        )),
    }
}

fn selector(value: &Value) -> Result<LabelSelector, String> {
    let bad = || {
        bad_field(
            "allowedRoutes.namespaces.selector",
            "a label selector (matchLabels; matchExpressions with In, NotIn, Exists, \
             DoesNotExist)",
        )
    };
    let mut expressions = Vec::new();
    for expression in value["matchExpressions"].as_array().into_iter().flatten() {
        let op = match expression["operator"].as_str() {
            Some("In") => Operator::In,
            Some("NotIn") => Operator::NotIn,
            Some("Exists") => Operator::Exists,
            Some("DoesNotExist") => Operator::DoesNotExist,
            _ => return Err(bad()),
        };
        let Some(key) = expression["key"].as_str() else {
            return Err(bad());
        };
        let values = expression["values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        expressions.push((key.to_owned(), op, values));
    }
    Ok(LabelSelector {
        labels: labels_of(&value["matchLabels"]),
        expressions,
    })
}

/// Port 15008 of the Service `namespace/service` (its first VIP that has it) and the pods of
/// its ready endpoints.
fn instances(
    snap: &Snapshot,
    namespace: &str,
    service: &str,
) -> (Option<Arc<ServiceTarget>>, HashMap<IpAddr, Arc<Workload>>) {
    let body = snap.raw_objects().find(|o| {
        o.kind == RawKind::Service
            && o.object.name == service
            && o.object.namespace.as_deref() == Some(namespace)
    });
    let vips = body
        .map(|o| &o.body["spec"])
        .map(|spec| {
            let listed: Vec<&str> = spec["clusterIPs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if listed.is_empty() {
                spec["clusterIP"].as_str().into_iter().collect()
            } else {
                listed
            }
        })
        .unwrap_or_default();
    let hbone = vips
        .iter()
        .filter_map(|vip| vip.parse::<IpAddr>().ok())
        .find_map(|vip| {
            snap.services()
                .at(SocketAddr::new(vip, WAYPOINT_HBONE_PORT))
        })
        .cloned();
    let instances = hbone
        .iter()
        .flat_map(|t| t.endpoints.iter())
        .filter_map(|e| {
            let ip = e.ip().to_canonical();
            snap.workload_by_ip(ip).map(|w| (ip, w.clone()))
        })
        .collect();
    (hbone, instances)
}

pub(super) fn labels_of(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
        .collect()
}
