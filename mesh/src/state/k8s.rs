//! Kubernetes API objects (k8s-openapi) to domain types, validating what the mesh relies on.
//!
//! The one adapter between the API's types and the state: the local file source and the API
//! server's watchers both use it, so both refuse the same objects for the same reasons.
//! k8s-openapi types stop here.
//!
//! Names that end up in SPIFFE IDs (namespace, service account) are checked against Kubernetes'
//! own rules, so a hand-written file cannot smuggle `/` into an identity.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace as K8sNamespace, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::ObjectError;
use super::model::{DEFAULT_SERVICE_ACCOUNT, Namespace, SIDECAR_STATUS_ANNOTATION, Workload};
use crate::objects::{ObjectRef, PodUid, RawKind, RawObject, WorkloadType};

/// The namespace of a namespaced object that names none, as `kubectl apply` assumes.
pub const DEFAULT_NAMESPACE: &str = "default";

const DNS_LABEL: &str = "a DNS label: 1-63 of [a-z0-9-], starting and ending alphanumeric";
const DNS_SUBDOMAIN: &str =
    "a DNS subdomain: 1-253 of [a-z0-9.-], starting and ending alphanumeric";
const UID: &str = "1-128 of [A-Za-z0-9._-], not starting with '.'";

/// A Namespace object as the mesh sees it.
pub fn namespace(ns: &K8sNamespace) -> Result<Namespace, ObjectError> {
    let name = required_name(&ns.metadata)?;
    check("metadata.name", name, is_dns_label(name), DNS_LABEL)?;
    Ok(Namespace {
        name: name.to_owned(),
        labels: ns.metadata.labels.clone().unwrap_or_default(),
    })
}

/// A Pod as a workload; `Ok(None)` for a pod that has finished (phase Succeeded or Failed):
/// its address may already belong to a new pod, so it is left out, as Istio does.
pub fn workload(pod: &Pod) -> Result<Option<Workload>, ObjectError> {
    let meta = &pod.metadata;
    let name = required_name(meta)?;
    check("metadata.name", name, is_dns_subdomain(name), DNS_SUBDOMAIN)?;
    let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
    check(
        "metadata.namespace",
        namespace,
        is_dns_label(namespace),
        DNS_LABEL,
    )?;
    let uid = match meta.uid.as_deref() {
        Some(uid) if !uid.is_empty() => {
            check("metadata.uid", uid, is_uid(uid), UID)?;
            PodUid::new(uid)
        }
        _ => PodUid::derived(namespace, name),
    };
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|sa| !sa.is_empty())
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    check(
        "spec.serviceAccountName",
        service_account,
        is_dns_subdomain(service_account),
        DNS_SUBDOMAIN,
    )?;
    let status = pod.status.as_ref();
    let mut ips: Vec<IpAddr> = Vec::new();
    let primary = status.and_then(|s| s.pod_ip.as_deref());
    let listed = status
        .and_then(|s| s.pod_ips.as_deref())
        .unwrap_or_default()
        .iter()
        .map(|p| p.ip.as_str());
    for text in primary.into_iter().chain(listed) {
        let ip = parse_pod_ip(text)?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return Ok(None);
    }
    let labels = meta.labels.clone().unwrap_or_default();
    let (workload_name, workload_type) = workload_name(meta, &labels, name);
    let canonical_service = first_label(
        &labels,
        &[
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ],
    )
    .unwrap_or(&workload_name)
    .to_owned();
    let canonical_revision = first_label(
        &labels,
        &[
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ],
    )
    .unwrap_or("latest")
    .to_owned();
    let sidecar = meta
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SIDECAR_STATUS_ANNOTATION));
    Ok(Some(Workload {
        uid,
        name: name.to_owned(),
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        node_name: spec
            .and_then(|s| s.node_name.clone())
            .filter(|n| !n.is_empty()),
        ips,
        labels,
        workload_name,
        workload_type,
        canonical_service,
        canonical_revision,
        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
        sidecar,
    }))
}

/// An object of a raw kind, from its JSON body (`metadata.name` required, namespace
/// defaulted; none for a cluster-scoped kind).
pub fn raw_object(
    kind: RawKind,
    kind_name: &str,
    body: serde_json::Value,
) -> Result<RawObject, ObjectError> {
    let meta = &body["metadata"];
    let name = meta["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        return Err(ObjectError::MissingName);
    }
    let namespace = (!kind.cluster_scoped()).then(|| {
        meta["namespace"]
            .as_str()
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_owned()
    });
    let object = ObjectRef {
        kind: kind_name.to_owned(),
        namespace,
        name: name.to_owned(),
    };
    Ok(RawObject { kind, object, body })
}

fn required_name(meta: &ObjectMeta) -> Result<&str, ObjectError> {
    meta.name
        .as_deref()
        .filter(|n| !n.is_empty())
        .ok_or(ObjectError::MissingName)
}

fn check(
    field: &'static str,
    value: &str,
    ok: bool,
    expected: &'static str,
) -> Result<(), ObjectError> {
    if ok {
        Ok(())
    } else {
        Err(ObjectError::InvalidName {
            field,
            value: value.to_owned(),
            expected,
        })
    }
}

fn parse_pod_ip(text: &str) -> Result<IpAddr, ObjectError> {
    let ip: IpAddr = text.parse().map_err(|_| ObjectError::InvalidIp {
        value: text.to_owned(),
    })?;
    let unusable = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
        || matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if unusable {
        return Err(ObjectError::UnusableIp { ip });
    }
    Ok(ip)
}

/// Istio's workload name: a ReplicaSet's Deployment (the ReplicaSet name less its
/// `-<pod-template-hash>`), else the controller's name, else the pod's; and its kind as Istio's
/// ambient index types it (`workloadNameAndType`): deployment, job, cronjob, else pod.
fn workload_name(
    meta: &ObjectMeta,
    labels: &BTreeMap<String, String>,
    pod: &str,
) -> (String, WorkloadType) {
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or(owners.first());
    let deployment = |o: &OwnerReference| {
        labels
            .get("pod-template-hash")
            .and_then(|hash| o.name.strip_suffix(hash.as_str()))
            .and_then(|rest| rest.strip_suffix('-'))
            .map(str::to_owned)
    };
    match owner {
        Some(o) if o.kind == "ReplicaSet" => match deployment(o) {
            Some(name) => (name, WorkloadType::Deployment),
            None => (o.name.clone(), WorkloadType::Pod),
        },
        Some(o) if o.kind == "Job" => (o.name.clone(), WorkloadType::Job),
        Some(o) if o.kind == "CronJob" => (o.name.clone(), WorkloadType::CronJob),
        Some(o) => (o.name.clone(), WorkloadType::Pod),
        None => (pod.to_owned(), WorkloadType::Pod),
    }
}

fn first_label<'a>(labels: &'a BTreeMap<String, String>, keys: &[&str]) -> Option<&'a str> {
    keys.iter()
        .find_map(|k| labels.get(*k))
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_part(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_part)
}

fn is_dns_part(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_uid(s: &str) -> bool {
    s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules_match_kubernetes() {
        for ok in ["a", "web-1", "a0", &"x".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", "a/b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        for ok in ["a.b", "web-7d9f8b6c5-x2x9q", "sa.example"] {
            assert!(is_dns_subdomain(ok), "{ok}");
        }
        for bad in ["a..b", ".a", "a.", "a/b", "Sa", "a b"] {
            assert!(!is_dns_subdomain(bad), "{bad}");
        }
        assert!(is_uid("0b5f4c1e-8d52-4f6a-9d7e-1f2e3d4c5b6a"));
        assert!(!is_uid("../x") && !is_uid("a/b"));
    }

    #[test]
    fn unusable_pod_ips_are_refused() {
        for bad in [
            "0.0.0.0",
            "127.0.0.1",
            "::1",
            "224.0.0.1",
            "255.255.255.255",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                matches!(parse_pod_ip(bad), Err(ObjectError::UnusableIp { .. })),
                "{bad}"
            );
        }
        assert!(matches!(
            parse_pod_ip("10.0.0.300"),
            Err(ObjectError::InvalidIp { .. })
        ));
        assert!(parse_pod_ip("fd00::5").is_ok());
    }
}
