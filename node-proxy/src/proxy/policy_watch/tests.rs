//! The one decision and the watcher: a connection is revoked exactly when a new connection with
//! its facts would be refused, once, and others are left alone.

use std::path::Path;
use std::time::Duration;

use marrow_wire::enrollment::PodIdentity;

use super::*;
use crate::proxy::connections::ConnectionFacts;
use crate::proxy::record::ConnectionRecord;
use marrow_mesh::identity::TrustDomain;
use marrow_mesh::state::file::parse;

const PODS: &str = include_str!("../../../../mesh/testdata/two-pods.yaml");

const ALLOW_CLIENT: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
---
"#;

const DENY_PORT_9090: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-9090, namespace: shop}
spec:
  action: DENY
  rules:
  - to: [{operation: {ports: ["9090"]}}]
---
"#;

const STRICT: &str = r#"apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
"#;

fn store(docs: &[&str]) -> Arc<StateStore> {
    let store = Arc::new(StateStore::new());
    apply(&store, docs);
    store
}

fn apply(store: &StateStore, docs: &[&str]) {
    let yaml: String = std::iter::once(PODS).chain(docs.iter().copied()).collect();
    store.apply(parse(Path::new("state.yaml"), yaml.as_bytes()).unwrap());
}

fn principal(sa: &str) -> SpiffeId {
    SpiffeId::new(&TrustDomain::default(), "shop", sa).unwrap()
}

/// A connection to web (10.0.2.2) from `principal` (or plaintext) on `port`.
fn to_web(principal: Option<SpiffeId>, port: u16) -> PolicySubject {
    PolicySubject {
        pod_ips: vec!["10.0.2.2".parse().unwrap()].into_boxed_slice(),
        source_principal: principal,
        source: "10.0.1.2:40000".parse().unwrap(),
        destination: SocketAddr::new("10.0.2.2".parse().unwrap(), port),
    }
}

fn open(table: &Arc<ConnectionTable>, subject: PolicySubject) -> (ConnectionRecord, Arc<Watched>) {
    let pod = PodIdentity {
        uid: "u2".into(),
        namespace: "shop".into(),
        name: "web".into(),
        service_account: None,
    };
    let guard = ConnectionRecord::open(
        table,
        &Arc::default(),
        ConnectionFacts::plain(
            marrow_mesh::telemetry::Reporter::Destination,
            &pod,
            subject.source,
            subject.destination,
        ),
    );
    let watched = guard.follow_policy(subject);
    (guard, watched)
}

#[test]
fn decide_allows_and_denies_as_the_policies_say() {
    let snap = store(&[ALLOW_CLIENT, DENY_PORT_9090]).snapshot();
    let allowed = decide(&snap, &to_web(Some(principal("client")), 8080)).unwrap();
    assert!(allowed.unwrap().contains("web-from-client"));
    let other = decide(&snap, &to_web(Some(principal("batch")), 8080)).unwrap_err();
    assert_eq!(other.reason, DenialReason::NoAllowMatch);
    let port = decide(&snap, &to_web(Some(principal("client")), 9090)).unwrap_err();
    assert_eq!(port.reason, DenialReason::DenyPolicy);
    assert!(port.explanation.contains("shop/no-9090"), "{port:?}");
}

#[test]
fn decide_refuses_plaintext_under_strict_only() {
    let permissive = store(&[]).snapshot();
    assert!(decide(&permissive, &to_web(None, 8080)).is_ok());
    let strict = store(&[STRICT]).snapshot();
    let denial = decide(&strict, &to_web(None, 8080)).unwrap_err();
    assert_eq!(denial.reason, DenialReason::MtlsRequired);
    assert!(
        decide(&strict, &to_web(Some(principal("client")), 8080)).is_ok(),
        "mTLS is not refused by STRICT"
    );
}

#[test]
fn decide_leaves_pods_the_state_does_not_know_alone() {
    let snap = store(&[STRICT]).snapshot();
    let mut subject = to_web(None, 8080);
    subject.pod_ips = vec!["10.9.9.9".parse().unwrap()].into_boxed_slice();
    assert_eq!(decide(&snap, &subject), Ok(None));
}

#[test]
fn recheck_revokes_only_the_connections_now_denied_and_only_once() {
    let state = store(&[]);
    let table = Arc::new(ConnectionTable::default());
    let (_client, client) = open(&table, to_web(Some(principal("client")), 8080));
    let (_batch, batch) = open(&table, to_web(Some(principal("batch")), 8080));
    let (_plain, plain) = open(&table, to_web(None, 8080));
    let unwatched = ConnectionRecord::open(
        &table,
        &Arc::default(),
        ConnectionFacts::plain(
            marrow_mesh::telemetry::Reporter::Source,
            &PodIdentity {
                uid: "u1".into(),
                namespace: "shop".into(),
                name: "client".into(),
                service_account: None,
            },
            "10.0.1.2:40001".parse().unwrap(),
            "10.0.2.2:8080".parse().unwrap(),
        ),
    );
    assert_eq!(
        table.watched().len(),
        3,
        "outbound connections are not watched"
    );

    assert_eq!(recheck(&state.snapshot(), &table), 0, "nothing denied yet");
    apply(&state, &[ALLOW_CLIENT]);
    assert_eq!(recheck(&state.snapshot(), &table), 2);
    assert!(!client.token.is_cancelled(), "still allowed");
    assert!(batch.token.is_cancelled() && plain.token.is_cancelled());
    assert_eq!(
        batch.denial.get().map(|d| d.reason),
        Some(DenialReason::NoAllowMatch)
    );
    assert_eq!(
        recheck(&state.snapshot(), &table),
        0,
        "a revoked connection is not revoked again"
    );
    drop(unwatched);
}

#[tokio::test]
async fn follow_revokes_after_a_published_state() {
    let state = store(&[]);
    let table = Arc::new(ConnectionTable::default());
    let (_guard, watched) = open(&table, to_web(Some(principal("batch")), 8080));
    let task = tokio::spawn(follow(state.clone(), table.clone()));
    tokio::task::yield_now().await;
    apply(&state, &[DENY_PORT_9090]);
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watched.revoked())
            .await
            .is_err(),
        "an unrelated DENY revokes nothing"
    );
    apply(&state, &[ALLOW_CLIENT]);
    let denial = tokio::time::timeout(Duration::from_secs(5), watched.revoked())
        .await
        .expect("revoked after the new ALLOW policy");
    assert_eq!(denial.reason, DenialReason::NoAllowMatch);
    task.abort();
}

#[test]
fn a_closed_connection_leaves_the_watch() {
    let table = Arc::new(ConnectionTable::default());
    let (guard, _watched) = open(&table, to_web(None, 8080));
    assert_eq!(table.watched().len(), 1);
    drop(guard);
    assert!(table.watched().is_empty());
}

#[test]
fn an_unchanged_decision_is_not_taken_again_but_a_relabelled_workload_is() {
    let state = store(&[ALLOW_CLIENT]);
    let table = Arc::new(ConnectionTable::default());
    let (_batch, batch) = open(&table, to_web(Some(principal("batch")), 8080));
    let before = state.snapshot();
    // The same policies, the same workload: skipped — even though `decide` would deny it now
    // (it was admitted under an earlier state; the skip is what keeps big tables cheap).
    apply(&state, &[ALLOW_CLIENT]);
    assert_eq!(recheck_since(Some(&before), &state.snapshot(), &table), 0);
    assert!(!batch.token.is_cancelled());
    // A changed policy set: re-checked.
    let before = state.snapshot();
    apply(&state, &[ALLOW_CLIENT, DENY_PORT_9090]);
    assert_eq!(recheck_since(Some(&before), &state.snapshot(), &table), 1);
    assert!(batch.token.is_cancelled());
}

#[test]
fn a_workload_whose_labels_change_is_rechecked() {
    let state = store(&[ALLOW_CLIENT]);
    // web loses `app: web`: the selector-scoped ALLOW no longer selects it.
    let relabelled = PODS.replace("labels: {app: web}", "labels: {app: other}");
    let table = Arc::new(ConnectionTable::default());
    let (_guard, watched) = open(&table, to_web(Some(principal("batch")), 8080));
    let before = store(&[]).snapshot();
    let after = state.snapshot();
    // Policies differ from `before` (none): re-checked and denied by the ALLOW.
    assert_eq!(recheck_since(Some(&before), &after, &table), 1);
    assert!(watched.token.is_cancelled());
    // Same policies, labels changed: not skipped.
    let yaml = format!("{relabelled}{ALLOW_CLIENT}");
    let moved = StateStore::new();
    moved.apply(parse(Path::new("s.yaml"), yaml.as_bytes()).unwrap());
    assert!(!same_workload(
        &after,
        &moved.snapshot(),
        &["10.0.2.2".parse().unwrap()]
    ));
    assert!(same_workload(
        &after,
        &after,
        &["10.0.2.2".parse().unwrap()]
    ));
}

/// Service `web` (endpoint 10.0.2.2) uses waypoint `shop/wp`, whose pod runs as `shop/wp`.
const WEB_BEHIND_WAYPOINT: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: wp-0
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: wp, istio.io/dataplane-mode: none}
spec: {nodeName: n1, serviceAccountName: wp}
status: {phase: Running, podIP: 10.0.9.1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {istio.io/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.1, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.2.2]}]
---
"#;

#[test]
fn a_workload_behind_a_waypoint_admits_only_the_waypoint() {
    let snap = store(&[WEB_BEHIND_WAYPOINT]).snapshot();
    assert!(
        decide(&snap, &to_web(Some(principal("wp")), 8080)).is_ok(),
        "the waypoint's identity"
    );
    let client = decide(&snap, &to_web(Some(principal("client")), 8080)).unwrap_err();
    assert_eq!(client.reason, DenialReason::NotFromWaypoint);
    assert!(
        client.explanation.contains("waypoint shop/wp")
            && client.explanation.contains("ns/shop/sa/client is not it"),
        "{}",
        client.explanation
    );
    let plaintext = decide(&snap, &to_web(None, 8080)).unwrap_err();
    assert_eq!(plaintext.reason, DenialReason::NotFromWaypoint);
    // L4 policy then sees the waypoint as the client.
    let with_policy = store(&[WEB_BEHIND_WAYPOINT, ALLOW_CLIENT]).snapshot();
    let waypoint = decide(&with_policy, &to_web(Some(principal("wp")), 8080)).unwrap_err();
    assert_eq!(waypoint.reason, DenialReason::NoAllowMatch);
    // Without the binding, the client is admitted as before.
    let unbound = store(&[&WEB_BEHIND_WAYPOINT.replace("istio.io/use-waypoint: wp", "a: b")]);
    assert!(
        decide(
            &unbound.snapshot(),
            &to_web(Some(principal("client")), 8080)
        )
        .is_ok()
    );
}

#[test]
fn a_workload_put_behind_a_waypoint_has_its_other_clients_revoked() {
    let unbound = WEB_BEHIND_WAYPOINT.replace("istio.io/use-waypoint: wp", "a: b");
    let state = store(&[&unbound]);
    let table = Arc::new(ConnectionTable::default());
    let (_client, client) = open(&table, to_web(Some(principal("client")), 8080));
    let (_waypoint, waypoint) = open(&table, to_web(Some(principal("wp")), 8080));
    let before = state.snapshot();
    // The same (no) policies, the same workload: only the waypoint binding moved.
    apply(&state, &[WEB_BEHIND_WAYPOINT]);
    assert_eq!(recheck_since(Some(&before), &state.snapshot(), &table), 1);
    assert_eq!(
        client.denial.get().map(|d| d.reason),
        Some(DenialReason::NotFromWaypoint)
    );
    assert!(!waypoint.token.is_cancelled());
}
