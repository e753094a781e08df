//! Time per L4 decision with many policies in force: `cargo bench -p node-proxy --bench policy`.
//!
//! 1,000 AuthorizationPolicies spread over 100 namespaces (ALLOW by principal with a port, DENY by
//! ipBlock, selector-scoped and namespace-wide), the decision for one connection to a workload in
//! one of those namespaces, for an allowed and a denied connection.
#![expect(clippy::unwrap_used, reason = "benchmark set-up")]

use std::collections::BTreeMap;

use divan::Bencher;
use node_proxy::identity::SpiffeId;
use node_proxy::policy::{ConnectionView, PolicySet, WorkloadView, authorization_policy, evaluate};

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
    let dst = WorkloadView {
        namespace: "ns0",
        name: "web",
        labels: &labels,
    };
    let conn = ConnectionView {
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
    let dst = WorkloadView {
        namespace: "ns1",
        name: "web",
        labels: &labels,
    };
    let conn = ConnectionView {
        source_principal: None,
        source_ip: "192.0.1.7".parse().unwrap(),
        destination_ip: "10.0.1.2".parse().unwrap(),
        destination_port: 8080,
    };
    assert!(!evaluate(&set, &dst, &conn).is_allowed());
    bencher.bench_local(|| evaluate(divan::black_box(&set), &dst, &conn));
}
