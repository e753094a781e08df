//! The connection record: what it counts, when, with which flag, and its one access-log line.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use super::*;
use crate::metrics::DenialReason;
use crate::proxy::connections::tests::facts;
use crate::proxy::policy_watch::{Denial, PolicyError};
use marrow_mesh::telemetry::Reporter;

/// A failure with a chosen flag.
#[derive(Debug)]
struct Refused(Option<ResponseFlag>, &'static str);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.1)
    }
}

impl Failure for Refused {
    fn side(&self) -> Side {
        Side::Upstream
    }

    fn response_flag(&self) -> Option<ResponseFlag> {
        self.0
    }
}

fn denial(explanation: &str) -> Denial {
    Denial {
        reason: DenialReason::DenyPolicy,
        explanation: explanation.into(),
    }
}

/// (opened, closed, sent bytes) of the series with `flag`.
fn counted(metrics: &Metrics, flag: Option<ResponseFlag>) -> (u64, u64, Option<u64>) {
    let mut labels = facts(Reporter::Source).peers;
    labels.response_flags = flag;
    let sent = {
        // Reading a series creates it: look for it in the exposition first.
        let mut registry = prometheus_client::registry::Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let flag = format!("response_flags=\"{}\"", ResponseFlag::label(flag));
        text.lines()
            .any(|l| l.starts_with("istio_tcp_sent_bytes_total") && l.contains(&flag))
            .then(|| metrics.sent_bytes.get_or_create(&labels).get())
    };
    (
        metrics.opened.get_or_create(&labels).get(),
        metrics.closed.get_or_create(&labels).get(),
        sent,
    )
}

fn open(metrics: &Arc<Metrics>) -> ConnectionRecord {
    let table = Arc::new(ConnectionTable::new(metrics));
    ConnectionRecord::open(&table, metrics, facts(Reporter::Source))
}

#[test]
fn a_relayed_connection_counts_opened_when_established_and_closed_with_its_bytes() {
    let metrics = Arc::new(Metrics::default());
    let mut record = open(&metrics);
    assert_eq!(counted(&metrics, None).0, 0, "not yet established");
    record.established();
    assert_eq!(counted(&metrics, None), (1, 0, None));
    record.bytes().to_upstream.fetch_add(10, Relaxed);
    record.finish(Ok::<(), Refused>(()));
    assert_eq!(counted(&metrics, None), (1, 1, Some(10)));
}

#[test]
fn a_failure_with_a_flag_counts_opened_and_closed_with_it() {
    let metrics = Arc::new(Metrics::default());
    let flag = Some(ResponseFlag::UpstreamFailure);
    open(&metrics).finish(Err(Refused(flag, "connection refused")));
    assert_eq!(counted(&metrics, flag), (1, 1, None), "no bytes moved");
    assert_eq!(counted(&metrics, None), (0, 0, None));
}

#[test]
fn a_failure_without_a_flag_before_the_relay_is_not_counted() {
    let metrics = Arc::new(Metrics::default());
    open(&metrics).finish(Err(Refused(None, "a recursive call to the proxy")));
    assert_eq!(counted(&metrics, None), (0, 0, None));
}

#[test]
fn a_revoked_connection_closes_with_deny() {
    let metrics = Arc::new(Metrics::default());
    let mut record = open(&metrics);
    record.established();
    record.finish(Err(PolicyError::Revoked(denial("denied by shop/no"))));
    let deny = Some(ResponseFlag::Deny);
    assert_eq!(counted(&metrics, None), (1, 0, None));
    assert_eq!(counted(&metrics, deny), (0, 1, Some(0)));
}

#[test]
fn a_record_dropped_mid_relay_still_counts_its_close() {
    let metrics = Arc::new(Metrics::default());
    let mut record = open(&metrics);
    record.established();
    record.bytes().to_client.fetch_add(4, Relaxed);
    drop(record);
    assert_eq!(counted(&metrics, None), (1, 1, Some(0)));
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
    let metrics = Arc::new(Metrics::default());
    let lines = access_lines(|| {
        let denied = ConnectionRecord::open(&table, &metrics, facts(Reporter::Destination));
        let explanation = "denied by DENY policy shop/no rule 0: the rule matches";
        denied.finish(Err(PolicyError::Denied(denial(explanation))));
        let mut relayed = ConnectionRecord::open(&table, &metrics, facts(Reporter::Source));
        relayed.allow(Some("allowed: no policy applies".into()));
        relayed.established();
        relayed.bytes().to_upstream.fetch_add(10, Relaxed);
        relayed.bytes().to_client.fetch_add(4, Relaxed);
        relayed.finish(Ok::<(), Refused>(()));
        let failed = ConnectionRecord::open(&table, &metrics, facts(Reporter::Source));
        failed.finish(Err(Refused(
            Some(ResponseFlag::UpstreamFailure),
            "connection refused",
        )));
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
    assert_eq!(denied.get("error"), None, "a denial is a decision");
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
