//! A waypoint Gateway's `status`, as istiod reports it (pilot/pkg/config/kube/gateway/
//! conversion.go `reportGatewayStatus`, gatewaycommon/conversion.go `SetProgrammedCondition`):
//! Accepted, Programmed (with the Service it is assigned to) and ResolvedRefs conditions; one
//! status per listener, a listener other than 15008/HBONE flagged `UnsupportedProtocol`; the
//! Service's ClusterIPs and host name as `addresses`, only once the waypoint is ready, and never
//! taken away afterwards ("Do not report an address until we are ready. But once we are ready,
//! never remove the address.").
//!
//! Invariant: a condition whose status, reason, message and generation are unchanged keeps its
//! `lastTransitionTime`, so an unchanged Gateway renders the status it already has and nothing
//! is written.

use serde_json::{Value, json};

use crate::gateway::{HBONE_PORT, Waypoint};

/// What the controller knows about a waypoint's objects when writing its status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    /// The Deployment has at least one ready replica.
    pub ready: bool,
    /// The Service's ClusterIPs (`spec.clusterIPs`, else `spec.clusterIP`), if it exists.
    pub cluster_ips: Vec<String>,
}

impl Observed {
    /// Reads readiness from a Deployment and the addresses from a Service, as served.
    pub fn of(deployment: Option<&Value>, service: Option<&Value>) -> Observed {
        let ready = deployment
            .and_then(|d| d["status"]["readyReplicas"].as_u64())
            .is_some_and(|n| n > 0);
        let spec = service.map(|s| &s["spec"]);
        let listed: Vec<String> = spec
            .and_then(|s| s["clusterIPs"].as_array())
            .map(|ips| {
                ips.iter()
                    .filter_map(|ip| ip.as_str())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let cluster_ips = if listed.is_empty() {
            spec.and_then(|s| s["clusterIP"].as_str())
                .map(str::to_owned)
                .into_iter()
                .collect()
        } else {
            listed
        };
        let cluster_ips = cluster_ips
            .into_iter()
            .filter(|ip| !ip.is_empty() && ip != "None")
            .collect();
        Observed { ready, cluster_ips }
    }
}

/// A condition, keeping the time of the previous one of the same type when nothing changed.
fn condition(
    previous: &Value,
    generation: Option<i64>,
    (kind, status, reason, message): (&str, bool, &str, &str),
    now: &str,
) -> Value {
    let status = if status { "True" } else { "False" };
    let mut c = json!({"type": kind, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": now});
    let before = previous
        .as_array()
        .and_then(|list| list.iter().find(|p| p["type"] == kind));
    if let Some(before) = before
        && ["status", "reason", "message", "observedGeneration"]
            .iter()
            .all(|f| before[f] == c[f])
    {
        c["lastTransitionTime"] = before["lastTransitionTime"].clone();
    }
    c
}

/// The status the Gateway should have; `now` is the RFC 3339 time of a changed condition.
pub fn desired(w: &Waypoint, observed: &Observed, cluster_domain: &str, now: &str) -> Value {
    let host = w.host(cluster_domain);
    let generation = w.generation;
    let previous = &w.status;
    let ready = observed.ready && !observed.cluster_ips.is_empty();
    let programmed_message =
        format!("Resource programmed, assigned to service(s) {host}:{HBONE_PORT}");
    let not_programmed = format!(
        "Failed to assign to any requested addresses: no instances found for hostname {host:?}"
    );
    let programmed = if ready {
        (
            "Programmed",
            true,
            "Programmed",
            programmed_message.as_str(),
        )
    } else {
        (
            "Programmed",
            false,
            "AddressNotAssigned",
            not_programmed.as_str(),
        )
    };
    let conditions: Vec<Value> = [
        ("Accepted", true, "Accepted", "Resource accepted"),
        programmed,
        (
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All references resolved",
        ),
    ]
    .into_iter()
    .map(|c| condition(&previous["conditions"], generation, c, now))
    .collect();
    let listeners: Vec<Value> = w
        .listeners
        .iter()
        .map(|l| {
            let before = previous["listeners"]
                .as_array()
                .and_then(|list| list.iter().find(|p| p["name"] == l.name.as_str()))
                .map(|p| p["conditions"].clone())
                .unwrap_or(Value::Null);
            let accepted = if l.unexpected() {
                (
                    "Accepted",
                    false,
                    "UnsupportedProtocol",
                    r#"Expected a single listener on port 15008 with protocol "HBONE""#,
                )
            } else {
                ("Accepted", true, "Accepted", "No errors found")
            };
            let conditions: Vec<Value> = [
                accepted,
                ("Programmed", true, "Programmed", "No errors found"),
                ("Conflicted", false, "NoConflicts", "No errors found"),
                ("ResolvedRefs", true, "ResolvedRefs", "No errors found"),
            ]
            .into_iter()
            .map(|c| condition(&before, generation, c, now))
            .collect();
            json!({"name": l.name, "attachedRoutes": 0, "supportedKinds": [],
                "conditions": conditions})
        })
        .collect();
    let mut status = json!({"conditions": conditions, "listeners": listeners});
    if ready {
        // IPs first, then the host name, as istiod lists them (AddressType "" = both).
        let mut addresses: Vec<Value> = observed
            .cluster_ips
            .iter()
            .map(|ip| json!({"type": "IPAddress", "value": ip}))
            .collect();
        addresses.push(json!({"type": "Hostname", "value": host}));
        status["addresses"] = json!(addresses);
    } else if previous["addresses"]
        .as_array()
        .is_some_and(|a| !a.is_empty())
    {
        status["addresses"] = previous["addresses"].clone();
    }
    status
}

/// Whether the Gateway's current status already says what `desired` says (the API server may
/// order or add fields; only what the controller writes is compared).
pub fn unchanged(current: &Value, desired: &Value) -> bool {
    crate::render::contains(current, desired)
}
