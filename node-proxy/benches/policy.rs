//! Time per L4 decision with many policies in force: `cargo bench -p node-proxy --bench policy`.
//!
//! 1,000 AuthorizationPolicies spread over 100 namespaces (ALLOW by principal with a port, DENY by
//! ipBlock, selector-scoped and namespace-wide), the decision for one connection to a workload in
//! one of those namespaces, for an allowed and a denied connection.
#![expect(clippy::unwrap_used, reason = "benchmark set-up")]

use std::collections::BTreeMap;

use divan::Bencher;
use marrow_mesh::identity::SpiffeId;
use marrow_mesh::policy::{
    ConnectionAttrs, Destination, PolicySet, authorization_policy, evaluate,
};

fn main() {
    divan::main();
}

fn policies(count: usize) -> PolicySet {
    let mut set = PolicySet::default();
    for i in 0..count {
        let ns = format!("ns{}", i % 100);
        let doc = if i % 2 == 0 {
            serde_json::json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": format!("allow-{i}"), "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": format!("app{}", i % 7)}},
                    "action": "ALLOW",
                    "rules": [{"from": [{"source": {"principals": [format!("cluster.local/ns/{ns}/sa/client{}", i % 13)]}}],
                               "to": [{"operation": {"ports": ["8080", "9090"]}}]}]}
            })
        } else {
            serde_json::json!({
                "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
                "metadata": {"name": format!("deny-{i}"), "namespace": ns},
                "spec": {"action": "DENY",
                    "rules": [{"from": [{"source": {"ipBlocks": [format!("192.0.{}.0/24", i % 250)]}}]}]}
            })
        };
        set.insert_authorization(authorization_policy(&doc).unwrap());
    }
    set
}

#[divan::bench(args = [1_000])]
fn decision_allowed(bencher: Bencher, count: usize) {
    let set = policies(count);
    let labels: BTreeMap<String, String> = [("app".to_owned(), "app0".to_owned())].into();
    let dst = Destination {
        namespace: "ns0",
        name: "web",
        labels: &labels,
    };
    let conn = ConnectionAttrs {
        source_principal: Some(
            SpiffeId::parse("spiffe://cluster.local/ns/ns0/sa/client0").unwrap(),
        ),
        source_ip: "10.0.0.9".parse().unwrap(),
        destination_ip: "10.0.1.2".parse().unwrap(),
        destination_port: 8080,
    };
    assert!(evaluate(&set, &dst, &conn).is_allowed());
    bencher.bench_local(|| evaluate(divan::black_box(&set), &dst, &conn));
}

#[divan::bench(args = [1_000])]
fn decision_denied(bencher: Bencher, count: usize) {
    let set = policies(count);
    let labels: BTreeMap<String, String> = [("app".to_owned(), "app0".to_owned())].into();
    let dst = Destination {
        namespace: "ns1",
        name: "web",
        labels: &labels,
    };
    let conn = ConnectionAttrs {
        source_principal: None,
        source_ip: "192.0.1.7".parse().unwrap(),
        destination_ip: "10.0.1.2".parse().unwrap(),
        destination_port: 8080,
    };
    assert!(!evaluate(&set, &dst, &conn).is_allowed());
    bencher.bench_local(|| evaluate(divan::black_box(&set), &dst, &conn));
}

/// The state for [`recheck_open_connections`]: one node's 100 pods (`shop/web-<i>`,
/// 10.1.0.<i>) and `count` policies as [`policies`] writes them, plus an ALLOW for `web-0`.
fn state_yaml(count: usize) -> String {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}\n",
    );
    for i in 0..100 {
        yaml += &format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, namespace: shop, uid: u{i}, labels: {{app: app{}}}}}\nspec: {{nodeName: n1, serviceAccountName: web}}\nstatus: {{phase: Running, podIP: 10.1.0.{i}, podIPs: [{{ip: 10.1.0.{i}}}]}}\n",
            i % 7
        );
    }
    for i in 0..count {
        let ns = if i % 10 == 0 {
            "shop".to_owned()
        } else {
            format!("ns{}", i % 100)
        };
        yaml += &if i % 2 == 0 {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{i}, namespace: {ns}}}\nspec: {{selector: {{matchLabels: {{app: app{}}}}}, action: ALLOW, rules: [{{from: [{{source: {{principals: [cluster.local/ns/{ns}/sa/client{}]}}}}], to: [{{operation: {{ports: [\"8080\"]}}}}]}}]}}\n",
                i % 7,
                i % 13
            )
        } else {
            format!(
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-{i}, namespace: {ns}}}\nspec: {{action: DENY, rules: [{{from: [{{source: {{ipBlocks: [192.0.{}.0/24]}}}}]}}]}}\n",
                i % 250
            )
        };
    }
    yaml
}

/// What a policy change costs the open connections: [`recheck`] of 10,000 watched inbound
/// connections (100 per pod) against 1,000 policies — the work of one state change.
#[divan::bench(args = [10_000])]
fn recheck_open_connections(bencher: Bencher, connections: usize) {
    use std::sync::Arc;

    use marrow_mesh::state::StateStore;
    use node_proxy::proxy::connections::{ConnectionFacts, ConnectionTable};
    use node_proxy::proxy::policy_watch::{PolicySubject, recheck};
    use node_proxy::proxy::record::ConnectionRecord;

    let store = StateStore::new();
    let update = marrow_mesh::state::file::parse(
        std::path::Path::new("bench.yaml"),
        state_yaml(1_000).as_bytes(),
    )
    .unwrap();
    let snap = store.apply(update);
    let table = Arc::new(ConnectionTable::default());
    let metrics = Arc::default();
    let pod = marrow_wire::enrollment::PodIdentity {
        uid: "u".into(),
        namespace: "shop".into(),
        name: "web".into(),
        service_account: None,
    };
    let guards: Vec<_> = (0..connections)
        .map(|i| {
            let dst: std::net::SocketAddr = format!("10.1.0.{}:8080", i % 100).parse().unwrap();
            let src: std::net::SocketAddr = format!("10.2.{}.{}:40000", i / 250, i % 250)
                .parse()
                .unwrap();
            let guard = ConnectionRecord::open(
                &table,
                &metrics,
                ConnectionFacts::plain(
                    marrow_mesh::telemetry::Reporter::Destination,
                    &pod,
                    src,
                    dst,
                ),
            );
            let principal = SpiffeId::parse(&format!(
                "spiffe://cluster.local/ns/shop/sa/client{}",
                i % 13
            ))
            .unwrap();
            let _watched = guard.follow_policy(PolicySubject {
                pod_ips: vec![dst.ip()].into_boxed_slice(),
                source_principal: Some(principal),
                source: src,
                destination: dst,
            });
            guard
        })
        .collect();
    bencher.bench_local(|| recheck(divan::black_box(&snap), &table));
    drop(guards);
}
