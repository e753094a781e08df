//! The connection table: the facts of an entry, registration and removal with its record
//! (also on abort and panic), byte counters and the gauge.

use super::*;
use crate::proxy::record::ConnectionRecord;
use marrow_mesh::identity::SpiffeId;
use std::sync::atomic::Ordering::Relaxed;

/// An mTLS connection from `shop/client` (the workload known) to an unknown server workload.
pub(crate) fn facts(reporter: Reporter) -> ConnectionFacts {
    let pod = PodIdentity {
        uid: "u".into(),
        namespace: "shop".into(),
        name: "client-1".into(),
        service_account: None,
    };
    let td = marrow_mesh::identity::TrustDomain::default();
    let client = SpiffeId::new(&td, "shop", "client").unwrap();
    let server = SpiffeId::new(&td, "shop", "web").unwrap();
    let source = PeerLabels {
        workload: LabelValue::new("client"),
        namespace: LabelValue::new("shop"),
        ..PeerLabels::default()
    };
    let peers =
        ConnectionLabels::between(reporter, Some(source), None).with_mutual_tls(&client, &server);
    ConnectionFacts::new(
        peers,
        &pod,
        "10.0.0.1:40000".parse().unwrap(),
        "10.0.1.1:8080".parse().unwrap(),
    )
}

fn open(table: &Arc<ConnectionTable>, reporter: Reporter) -> ConnectionRecord {
    ConnectionRecord::open(table, &Arc::default(), facts(reporter))
}

fn open_gauge(metrics: &Metrics, reporter: Reporter) -> i64 {
    metrics
        .connections_open
        .get_or_create(&OpenLabels { reporter })
        .get()
}

#[test]
fn labels_become_the_facts_with_unknowns_left_out() {
    let td = marrow_mesh::identity::TrustDomain::default();
    let client = SpiffeId::new(&td, "shop", "client").unwrap();
    let web = SpiffeId::new(&td, "shop", "web").unwrap();
    let cluster = LabelValue::fixed("Kubernetes");
    let labels = ConnectionLabels::between(
        Reporter::Destination,
        Some(PeerLabels::namespace_only(&client)),
        Some(PeerLabels::pod("web-1", "shop", &cluster)),
    )
    .with_mutual_tls(&client, &web);
    let pod = PodIdentity {
        uid: "u".into(),
        namespace: "shop".into(),
        name: "web-1".into(),
        service_account: None,
    };
    let src = "10.0.0.1:40000".parse().unwrap();
    let dst = "10.0.1.1:8080".parse().unwrap();
    let f = ConnectionFacts::new(labels, &pod, src, dst);
    assert_eq!(f.src_workload(), None, "known only by its namespace");
    assert_eq!(f.dst_workload().as_deref(), Some("shop/web-1"));
    assert_eq!(f.src_identity(), Some(client.as_str()));
    assert_eq!(f.dst_identity(), Some(web.as_str()));
    assert_eq!(f.security(), Security::MutualTls);
    assert_eq!(
        (f.direction(), f.reporter().as_str()),
        ("inbound", "destination")
    );
    let f = ConnectionFacts::plain(Reporter::Source, &pod, src, dst);
    assert_eq!((f.src_identity(), f.dst_workload()), (None, None));
    assert_eq!(f.security(), Security::None);
}

#[test]
fn mutual_tls_sets_both_identities() {
    let f = facts(Reporter::Source);
    assert_eq!(&*f.pod, "shop/client-1");
    assert_eq!(
        f.src_identity(),
        Some("spiffe://cluster.local/ns/shop/sa/client")
    );
    assert_eq!(
        f.dst_identity(),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    assert_eq!(f.security(), Security::MutualTls);
    assert_eq!(
        (f.direction(), f.reporter().as_str()),
        ("outbound", "source")
    );
}

#[test]
fn a_record_registers_its_connection_until_dropped() {
    let metrics = Metrics::default();
    let table = Arc::new(ConnectionTable::new(&metrics));
    assert!(table.is_empty());
    let a = open(&table, Reporter::Source);
    let b = open(&table, Reporter::Destination);
    assert_eq!(table.len(), 2);
    assert_eq!(open_gauge(&metrics, Reporter::Source), 1);
    assert_eq!(open_gauge(&metrics, Reporter::Destination), 1);
    let ids: Vec<u64> = table.entries().iter().map(|c| c.id()).collect();
    assert_eq!(ids, vec![a.id(), b.id()], "oldest first");
    drop(a);
    assert_eq!(table.len(), 1);
    assert_eq!(table.entries()[0].id(), b.id());
    assert_eq!(open_gauge(&metrics, Reporter::Source), 0);
    drop(b);
    assert!(table.is_empty());
    assert_eq!(open_gauge(&metrics, Reporter::Destination), 0);
}

#[test]
fn the_gauge_is_exported_with_the_metrics() {
    let metrics = Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let table = Arc::new(ConnectionTable::new(&metrics));
    let _open = open(&table, Reporter::Source);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("marrow_connections_open{reporter=\"source\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("marrow_connections_open{reporter=\"destination\"} 0"),
        "{text}"
    );
}

#[test]
fn byte_counters_show_in_the_entries_while_open() {
    let table = Arc::new(ConnectionTable::default());
    let record = open(&table, Reporter::Source);
    record.bytes().to_upstream.fetch_add(300, Relaxed);
    record.bytes().to_client.fetch_add(5, Relaxed);
    record.bytes().to_upstream.fetch_add(12, Relaxed);
    let entry = &table.entries()[0];
    assert_eq!(entry.bytes().get(), (312, 5));
    assert_eq!(entry.facts().src.to_string(), "10.0.0.1:40000");
    assert_eq!(entry.facts().direction(), "outbound");
    assert_eq!(entry.facts().dst_workload(), None);
}

#[tokio::test]
async fn an_aborted_task_leaves_the_table() {
    let metrics = Metrics::default();
    let table = Arc::new(ConnectionTable::new(&metrics));
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let table = table.clone();
        async move {
            let _record = open(&table, Reporter::Destination);
            let _ = opened_tx.send(());
            std::future::pending::<()>().await;
        }
    });
    opened_rx.await.unwrap();
    assert_eq!(table.len(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(table.is_empty());
    assert_eq!(open_gauge(&metrics, Reporter::Destination), 0);
}

#[tokio::test]
async fn a_panicking_task_leaves_the_table() {
    let table = Arc::new(ConnectionTable::default());
    let task = tokio::spawn({
        let table = table.clone();
        async move {
            let _record = open(&table, Reporter::Source);
            panic!("relay bug");
        }
    });
    assert!(task.await.unwrap_err().is_panic());
    assert!(table.is_empty());
}
