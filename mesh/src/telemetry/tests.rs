//! How the label values are derived: a peer's labels from its workload (app and version
//! precedence, the owner's name), an enrolled pod without state, label value equality.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::*;
use crate::objects::{PodUid, WorkloadType};
use crate::state::Workload;

fn workload(name: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        uid: PodUid::new(format!("uid-{name}")),
        name: format!("{name}-7d9f8-x2x4l"),
        namespace: "shop".into(),
        service_account: name.into(),
        node_name: None,
        ips: vec![],
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        workload_name: name.into(),
        workload_type: WorkloadType::Deployment,
        canonical_service: name.into(),
        canonical_revision: "latest".into(),
        host_network: false,
        sidecar: false,
    }
}

#[test]
fn app_and_version_prefer_the_kubernetes_labels_then_the_bare_ones() {
    let cluster = LabelValue::fixed("east");
    let qualified = workload(
        "web",
        &[
            ("app", "bare"),
            ("app.kubernetes.io/name", "qualified"),
            ("version", "v1"),
            ("app.kubernetes.io/version", "1.2.3"),
        ],
    );
    let peer = PeerLabels::of(&qualified, &cluster);
    assert_eq!(
        (peer.app.as_str(), peer.version.as_str()),
        ("qualified", "1.2.3")
    );
    let bare = PeerLabels::of(
        &workload("web", &[("app", "bare"), ("version", "v1")]),
        &cluster,
    );
    assert_eq!((bare.app.as_str(), bare.version.as_str()), ("bare", "v1"));
    let none = PeerLabels::of(&workload("web", &[]), &cluster);
    assert_eq!(
        (none.app.as_str(), none.version.as_str()),
        ("unknown", "unknown")
    );
    assert_eq!(
        none.workload.as_str(),
        "web",
        "the owner's name, not the pod's"
    );
    assert_eq!(none.cluster.as_str(), "east");
}

#[test]
fn an_enrolled_pod_without_state_is_its_own_canonical_service() {
    let peer = PeerLabels::pod("client", "shop", &LabelValue::fixed("east"));
    assert_eq!(peer.workload.as_str(), "client");
    assert_eq!(peer.canonical_service.as_str(), "client");
    assert_eq!(peer.canonical_revision.as_str(), "latest");
    assert_eq!(peer.app, LabelValue::UNKNOWN);
}

#[test]
fn label_values_compare_by_text() {
    assert_eq!(LabelValue::new("unknown"), LabelValue::UNKNOWN);
    let labels = ConnectionLabels::unknown(Reporter::Source);
    let mut shared = labels.clone();
    shared.destination_principal = LabelValue::new("unknown");
    let family: Family<ConnectionLabels, Counter> = Family::default();
    family.get_or_create(&labels).inc();
    family.get_or_create(&shared).inc();
    assert_eq!(family.get_or_create(&labels).get(), 2, "one series");
    let unknown_peer = ConnectionLabels::between(Reporter::Source, Some(PeerLabels::UNKNOWN), None);
    family.get_or_create(&unknown_peer).inc();
    assert_eq!(family.get_or_create(&labels).get(), 3, "still one series");
}
