//! The ClusterRole in manifests/ca.yaml grants the controller exactly the calls in
//! `CONTROLLER_ACCESS` and `CONTROLLER_NAMED_ACCESS` (with their `resourceNames`), no more and
//! no fewer, and it is bound to the account the CA runs as.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "tests: a failed step must fail the test loudly"
)]

use std::collections::BTreeSet;

use marrow_controller::access::{CONTROLLER_ACCESS, CONTROLLER_NAMED_ACCESS};
use serde::Deserialize;
use serde_json::Value;

/// (group, resource, verb, resourceNames joined by `,`; empty: every object).
type Triples = BTreeSet<(String, String, String, String)>;

fn documents() -> Vec<Value> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/ca.yaml"))
            .unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the manifest"))
}

/// (group, resource, verb, names) for every rule of a ClusterRole.
fn granted(role: &Value) -> Triples {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let mut triples = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        let names = if rule["resourceNames"].is_null() {
            String::new()
        } else {
            strings(&rule["resourceNames"]).join(",")
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    triples.insert((group.clone(), resource.clone(), verb, names.clone()));
                }
            }
        }
    }
    triples
}

fn wanted() -> Triples {
    let everything = CONTROLLER_ACCESS.iter().map(|a| (a, String::new()));
    let named = CONTROLLER_NAMED_ACCESS
        .iter()
        .map(|(a, names)| (a, names.join(",")));
    everything
        .chain(named)
        .flat_map(|(a, names)| {
            a.verbs.iter().map(move |v| {
                (
                    a.group.to_owned(),
                    a.resource.to_owned(),
                    (*v).to_owned(),
                    names.clone(),
                )
            })
        })
        .collect()
}

#[test]
fn the_role_grants_exactly_what_the_controller_calls() {
    let docs = documents();
    let role = find(&docs, "ClusterRole", "marrow-waypoint-controller");
    assert_eq!(granted(role), wanted());
    // Nothing the controller never needs: no delete but of the bindings it made (the rest go
    // by owner references), `bind` on one role only, no Secrets, no pods.
    for (group, resource, verb, names) in granted(role) {
        if verb == "delete" {
            assert_eq!(resource, "clusterrolebindings", "{group}/{resource}");
        }
        if verb == "bind" {
            assert_eq!(
                (resource.as_str(), names.as_str()),
                ("clusterroles", "marrow-waypoint")
            );
        }
        assert!(
            !["secrets", "pods"].contains(&resource.as_str()),
            "{resource}"
        );
    }
}

#[test]
fn the_role_waypoints_are_bound_to_exists() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/rbac.yaml"
    ))
    .unwrap();
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .collect();
    find(
        &docs,
        "ClusterRole",
        marrow_controller::binding::WAYPOINT_ROLE,
    );
}

#[test]
fn a_drift_either_way_is_caught() {
    let docs = documents();
    let mut role = find(&docs, "ClusterRole", "marrow-waypoint-controller").clone();
    role["rules"][0]["verbs"]
        .as_array_mut()
        .unwrap()
        .push("get".into());
    assert_ne!(granted(&role), wanted(), "an extra verb");
    role["rules"][0]["verbs"] = serde_json::json!(["list"]);
    assert_ne!(granted(&role), wanted(), "a missing verb");
    // `bind` on every ClusterRole instead of the one is a drift too.
    let mut role = find(&docs, "ClusterRole", "marrow-waypoint-controller").clone();
    for rule in role["rules"].as_array_mut().unwrap() {
        rule.as_object_mut().unwrap().remove("resourceNames");
    }
    assert_ne!(granted(&role), wanted(), "bind on every role");
}

#[test]
fn the_role_is_bound_to_the_cas_account() {
    let docs = documents();
    let binding = find(&docs, "ClusterRoleBinding", "marrow-waypoint-controller");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], "marrow-waypoint-controller");
    let deployment = find(&docs, "Deployment", "marrow-ca");
    let account = &deployment["spec"]["template"]["spec"]["serviceAccountName"];
    let subjects = binding["subjects"].as_array().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(&subjects[0]["name"], account);
    assert_eq!(
        subjects[0]["namespace"],
        deployment["metadata"]["namespace"]
    );
}
