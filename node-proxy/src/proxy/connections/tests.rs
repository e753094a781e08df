//! The connection table: registration and removal through the guard (also on abort and
//! panic), byte counters, the gauge, and the access-log line.

use super::*;
use std::sync::atomic::Ordering::Relaxed;

fn info(reporter: Reporter) -> ConnectionInfo {
    let pod = PodIdentity {
        uid: "u".into(),
        namespace: "shop".into(),
        name: "client-1".into(),
        service_account: None,
    };
    let td = crate::identity::TrustDomain::default();
    let client = SpiffeId::new(&td, "shop", "client").unwrap();
    let server = SpiffeId::new(&td, "shop", "web").unwrap();
    ConnectionInfo {
        src_workload: Some("shop/client".into()),
        ..ConnectionInfo::new(
            reporter,
            &pod,
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.1.1:8080".parse().unwrap(),
        )
        .with_mutual_tls(&client, &server)
    }
}

fn open_gauge(table: &ConnectionTable, reporter: Reporter) -> i64 {
    table.gauge().get_or_create(&OpenLabels { reporter }).get()
}

#[test]
fn labels_become_the_entry_with_unknowns_left_out() {
    let td = crate::identity::TrustDomain::default();
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
    let i = ConnectionInfo::from_labels(&labels, &pod, src, dst);
    assert_eq!(i.src_workload, None, "known only by its namespace");
    assert_eq!(i.dst_workload.as_deref(), Some("shop/web-1"));
    assert_eq!(i.src_identity, Some(client.to_string()));
    assert_eq!(i.dst_identity, Some(web.to_string()));
    assert_eq!(i.security, Security::MutualTls);
    assert_eq!(
        (i.direction(), i.reporter_name()),
        ("inbound", "destination")
    );
    let plain = ConnectionLabels::unknown(Reporter::Source);
    let i = ConnectionInfo::from_labels(&plain, &pod, src, dst);
    assert_eq!((i.src_identity, i.dst_workload), (None, None));
    assert_eq!(i.security, Security::None);
}

#[test]
fn mutual_tls_sets_both_identities() {
    let i = info(Reporter::Source);
    assert_eq!(i.pod, "shop/client-1");
    assert_eq!(
        i.src_identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/client")
    );
    assert_eq!(
        i.dst_identity.as_deref(),
        Some("spiffe://cluster.local/ns/shop/sa/web")
    );
    assert_eq!(i.security, Security::MutualTls);
    assert_eq!((i.direction(), i.reporter_name()), ("outbound", "source"));
}

#[test]
fn a_guard_registers_its_connection_until_dropped() {
    let table = Arc::new(ConnectionTable::default());
    assert!(table.is_empty());
    let a = table.open(info(Reporter::Source));
    let b = table.open(info(Reporter::Destination));
    assert_eq!(table.len(), 2);
    assert_eq!(open_gauge(&table, Reporter::Source), 1);
    assert_eq!(open_gauge(&table, Reporter::Destination), 1);
    let ids: Vec<u64> = table.snapshot().iter().map(|v| v.id).collect();
    assert_eq!(ids, vec![a.id(), b.id()], "oldest first");
    drop(a);
    assert_eq!(table.len(), 1);
    assert_eq!(table.snapshot()[0].id, b.id());
    assert_eq!(open_gauge(&table, Reporter::Source), 0);
    drop(b);
    assert!(table.is_empty());
    assert_eq!(open_gauge(&table, Reporter::Destination), 0);
}

#[test]
fn the_gauge_is_exported_with_the_metrics() {
    let metrics = crate::metrics::Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let _open = metrics.connections.open(info(Reporter::Source));
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
fn byte_counters_show_in_the_snapshot_while_open() {
    let table = Arc::new(ConnectionTable::default());
    let guard = table.open(info(Reporter::Source));
    guard.bytes().to_upstream.fetch_add(300, Relaxed);
    guard.bytes().to_client.fetch_add(5, Relaxed);
    guard.bytes().to_upstream.fetch_add(12, Relaxed);
    let view = &table.snapshot()[0];
    assert_eq!((view.bytes_sent, view.bytes_received), (312, 5));
    assert_eq!(view.src.to_string(), "10.0.0.1:40000");
    assert_eq!(view.direction, "outbound");
    let json = serde_json::to_value(view).unwrap();
    assert_eq!(json["security"], "mutual_tls");
    assert_eq!(json["dst"], "10.0.1.1:8080");
    assert_eq!(json["dst_workload"], serde_json::Value::Null);
}

#[tokio::test]
async fn an_aborted_task_leaves_the_table() {
    let table = Arc::new(ConnectionTable::default());
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn({
        let table = table.clone();
        async move {
            let _guard = table.open(info(Reporter::Destination));
            let _ = opened_tx.send(());
            std::future::pending::<()>().await;
        }
    });
    opened_rx.await.unwrap();
    assert_eq!(table.len(), 1);
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert!(table.is_empty());
    assert_eq!(open_gauge(&table, Reporter::Destination), 0);
}

#[tokio::test]
async fn a_panicking_task_leaves_the_table() {
    let table = Arc::new(ConnectionTable::default());
    let task = tokio::spawn({
        let table = table.clone();
        async move {
            let _guard = table.open(info(Reporter::Source));
            panic!("relay bug");
        }
    });
    assert!(task.await.unwrap_err().is_panic());
    assert!(table.is_empty());
}

/// A writer the JSON formatter writes into, for reading the lines back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// The `access` lines `run` logs, as `--log-json` writes them.
fn access_lines(run: impl FnOnce()) -> Vec<serde_json::Value> {
    let out = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(out.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, run);
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line["target"] == ACCESS_LOG_TARGET)
        .collect()
}

#[test]
fn every_connection_ends_with_one_access_line_saying_how() {
    let table = Arc::new(ConnectionTable::default());
    let lines = access_lines(|| {
        let mut denied = table.open(info(Reporter::Destination));
        denied.deny("denied by DENY policy shop/no rule 0: the rule matches".into());
        drop(denied);
        let mut relayed = table.open(info(Reporter::Source));
        relayed.allow(Some("allowed: no policy applies".into()));
        relayed.bytes().to_upstream.fetch_add(10, Relaxed);
        relayed.bytes().to_client.fetch_add(4, Relaxed);
        drop(relayed);
        let mut failed = table.open(info(Reporter::Source));
        failed.upstream_failed("connection refused".into());
    });
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let fields: Vec<&serde_json::Value> = lines.iter().map(|l| &l["fields"]).collect();
    for f in &fields {
        assert_eq!(f["message"], "connection");
        assert_eq!(f["src"], "10.0.0.1:40000");
        assert_eq!(f["dst"], "10.0.1.1:8080");
        assert_eq!(
            f["src_identity"],
            "spiffe://cluster.local/ns/shop/sa/client"
        );
        assert_eq!(f["dst_identity"], "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(f["src_workload"], "shop/client");
        assert_eq!(f["dst_workload"], "unknown");
        assert_eq!(f["security"], "mutual_tls");
        assert!(f["duration_ms"].is_u64(), "{f}");
    }
    let (denied, relayed, failed) = (fields[0], fields[1], fields[2]);
    assert_eq!(
        (&denied["decision"], &denied["response_flags"]),
        (&"deny".into(), &"DENY".into())
    );
    assert_eq!(denied["direction"], "inbound");
    assert!(denied["reason"].as_str().unwrap().contains("shop/no"));
    assert_eq!(
        (&relayed["bytes_sent"], &relayed["bytes_received"]),
        (&10.into(), &4.into())
    );
    assert_eq!(relayed["decision"], "allow");
    assert_eq!(relayed["response_flags"], "-");
    assert_eq!(
        relayed.get("error"),
        None,
        "no error field without an error"
    );
    assert_eq!(failed["response_flags"], "UF");
    assert_eq!(failed["error"], "connection refused");
    assert!(table.is_empty());
}
