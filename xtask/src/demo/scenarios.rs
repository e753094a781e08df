//! The demo's scenarios, one function each, run in order against one [`Cluster`].
//!
//! Every check reads a real outcome: what `testpod` printed inside the pods (the connection's
//! result, the server's greeting, `getpeername()`), the proxy's `/metrics`, and its log.
//! Counters are compared before and after each action, so a scenario never assumes what an
//! earlier one left behind.

use std::net::IpAddr;
use std::time::Duration;

use marrow_tests::{ConnectErrorKind, ConnectOutcome, Connected};

use super::cluster::Cluster;
use super::observe::{Metrics, Series, restored_count};
use super::report::Report;
use super::stop::Stop;

/// How long a connection attempt may take while the proxy is down (it should be refused at
/// once; waiting longer would only slow a failing demo down).
const DOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// The metrics whose samples the excerpt of `/metrics` shows, in order.
const EXCERPT_METRICS: [&str; 3] = [
    "istio_tcp_connections_opened_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
];
/// At most this many sample lines are shown from `/metrics`.
const EXCERPT_LINES: usize = 8;
/// Lines of the proxy's log shown when a check failed.
const LOG_TAIL_LINES: usize = 25;

/// Sets up the cluster, runs every scenario and tears the cluster down (also on error).
///
/// # Errors
/// When set-up fails, `/metrics` cannot be read, or a signal interrupts the demo.
pub fn run(stop: &Stop, report: &mut Report<'_>) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(stop)?;
    let result = run_all(&mut cluster, stop, report);
    if report.any_failed() {
        let log = cluster.proxy_log_since_start();
        let tail: Vec<&str> = log.lines().rev().take(LOG_TAIL_LINES).collect();
        println!("\nThe node proxy's log (last {LOG_TAIL_LINES} lines), to see why:");
        for line in tail.iter().rev() {
            println!("   | {line}");
        }
    }
    result
}

/// The scenarios in order.
fn run_all(cluster: &mut Cluster, stop: &Stop, report: &mut Report<'_>) -> anyhow::Result<()> {
    enrolled_to_enrolled(cluster, stop, report)?;
    unenrolled_to_enrolled(cluster, stop, report)?;
    metrics_excerpt(cluster, report)?;
    proxy_down_fails_closed(cluster, stop, report)?;
    restart_readopts(cluster, stop, report)?;
    Ok(())
}

/// Client → web, both enrolled: it works, the proxy counts it at both ends, and neither app
/// can tell (web sees client's own IP; client's `getpeername()` shows web).
fn enrolled_to_enrolled(
    cluster: &Cluster,
    stop: &Stop,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    report.section("Two enrolled pods talk: the node proxy carries the connection");
    let out_of_client = Series::opened(&[("reporter", "source"), ("source_workload", "client")]);
    let into_web = Series::opened(&[("reporter", "destination"), ("destination_workload", "web")]);
    let before = cluster.metrics()?;
    let web = cluster.web_addr();
    report.action(format!(
        "from shop/client ({}), connect to shop/web at {web} and send \"hello\"",
        cluster.client.ipv4()
    ));
    let outcome = cluster.client.connect(web, "hello");
    stop.check()?;
    if let Some(conn) = connected(report, &outcome, "hello")? {
        report.check(
            conn.greeting.peer.ip() == IpAddr::V4(cluster.client.ipv4()),
            format!(
                "web saw the call come from {}: client's own pod IP, not the proxy's",
                conn.greeting.peer
            ),
        )?;
        report.check(
            conn.peername == web,
            format!(
                "client's getpeername() says {}: the detour through the proxy is invisible to the app",
                conn.peername
            ),
        )?;
    }
    count_grew(
        cluster,
        stop,
        report,
        "the proxy counted it leaving client",
        &out_of_client,
        &before,
        1,
    )?;
    count_grew(
        cluster,
        stop,
        report,
        "the proxy counted it arriving at web",
        &into_web,
        &before,
        1,
    )?;
    Ok(())
}

/// Batch (not enrolled) → web: batch's outbound is not captured, web's inbound still is.
fn unenrolled_to_enrolled(
    cluster: &Cluster,
    stop: &Stop,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    report
        .section("A pod outside the mesh calls an enrolled pod: only the enrolled end is captured");
    let any_outbound = Series::opened(&[("reporter", "source")]);
    let into_web = Series::opened(&[("reporter", "destination"), ("destination_workload", "web")]);
    let before = cluster.metrics()?;
    let web = cluster.web_addr();
    report.action(format!(
        "from legacy/batch ({}), connect to shop/web at {web} and send \"hi from batch\"",
        cluster.batch.ipv4()
    ));
    let outcome = cluster.batch.connect(web, "hi from batch");
    stop.check()?;
    if let Some(conn) = connected(report, &outcome, "hi from batch")? {
        report.check(
            conn.greeting.peer.ip() == IpAddr::V4(cluster.batch.ipv4()),
            format!(
                "web saw the call come from {}: batch's own pod IP",
                conn.greeting.peer
            ),
        )?;
    }
    // Wait for the inbound count first: once it is there, a (wrongly) captured outbound
    // would have been counted too.
    count_grew(
        cluster,
        stop,
        report,
        "the proxy counted it arriving at web",
        &into_web,
        &before,
        1,
    )?;
    count_grew(
        cluster,
        stop,
        report,
        "batch's side was not captured: no outbound count",
        &any_outbound,
        &before,
        0,
    )?;
    Ok(())
}

/// A few `istio_tcp_*` lines of `/metrics`, as Prometheus (and Grafana, Kiali) read them.
fn metrics_excerpt(cluster: &Cluster, report: &mut Report<'_>) -> anyhow::Result<()> {
    report.section("What the proxy exports: Istio's metric names and labels");
    report.action("GET http://127.0.0.1:15020/metrics in the node, and show the connection counts");
    let metrics = cluster.metrics()?;
    let samples = metrics.count_with_prefix("istio_tcp_");
    report.check(
        samples > 0,
        format!(
            "/metrics has {samples} istio_tcp_* samples; connections opened, and bytes each way:"
        ),
    )?;
    let excerpt = EXCERPT_METRICS
        .iter()
        .flat_map(|metric| metrics.samples(metric))
        .take(EXCERPT_LINES);
    for line in excerpt {
        report.note(line);
    }
    Ok(())
}

/// Kill the proxy: client → web is refused, not sent around it, and web takes no inbound
/// connection either.
fn proxy_down_fails_closed(
    cluster: &mut Cluster,
    stop: &Stop,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    report.section(
        "The proxy goes down: enrolled pods fail closed; a restarted proxy takes them back",
    );
    let web = cluster.web_addr();
    report.action(format!(
        "kill the node proxy (SIGKILL, pid {}), then connect from shop/client to {web} again",
        cluster.proxy.pid().unwrap_or_default()
    ));
    cluster.proxy.kill();
    let outcome = cluster
        .client
        .connect_timeout(web, "while down", DOWN_TIMEOUT);
    stop.check()?;
    report.check(
        outcome.error_kind() == Some(ConnectErrorKind::Refused),
        match &outcome {
            ConnectOutcome::Failed(f) if f.kind == ConnectErrorKind::Refused => {
                format!(
                    "refused ({}): client's traffic does not bypass the missing proxy",
                    f.detail
                )
            }
            ConnectOutcome::Failed(f) => {
                format!("expected a refusal, got {:?}: {}", f.kind, f.detail)
            }
            ConnectOutcome::Connected(_) => {
                "it CONNECTED without the proxy: the traffic bypassed the mesh".to_owned()
            }
        },
    )?;
    report.action("connect from legacy/batch to web too (inbound to an enrolled pod)");
    let outcome = cluster
        .batch
        .connect_timeout(web, "while down", DOWN_TIMEOUT);
    stop.check()?;
    report.check(
        !outcome.is_ok(),
        match &outcome {
            ConnectOutcome::Failed(f) => format!(
                "failed too ({}): web accepts nothing the proxy has not seen",
                f.detail
            ),
            ConnectOutcome::Connected(_) => {
                "it CONNECTED: web's inbound bypassed the proxy".to_owned()
            }
        },
    )?;

    Ok(())
}

/// Restart the proxy: it re-adopts the enrolled pods from its own records (no CNI call), and
/// client → web works again.
fn restart_readopts(
    cluster: &mut Cluster,
    stop: &Stop,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    let web = cluster.web_addr();
    report.action("start the node proxy again; the CNI is not run again for any pod");
    let ready_after = cluster.restart_proxy(stop)?;
    let log = cluster.proxy_log_since_start();
    let restored = restored_count(&log);
    report.check(
        restored == Some(2),
        match restored {
            Some(n) => format!(
                "ready after {}; its log says it re-adopted {n} pods from its records",
                crate::process::seconds(ready_after)
            ),
            None => "its log does not say how many pods it re-adopted".to_owned(),
        },
    )?;
    let enrolled = cluster.metrics()?.gauge("marrow_enrolled_pods");
    report.check(
        enrolled == Some(2.0),
        format!(
            "marrow_enrolled_pods = {}",
            enrolled.map_or_else(|| "(absent)".to_owned(), |v| v.to_string())
        ),
    )?;

    let out_of_client = Series::opened(&[("reporter", "source"), ("source_workload", "client")]);
    let before = cluster.metrics()?;
    report.action(format!("connect from shop/client to {web} once more"));
    let outcome = cluster.client.connect(web, "back again");
    stop.check()?;
    if let Some(conn) = connected(report, &outcome, "back again")? {
        report.check(
            conn.greeting.peer.ip() == IpAddr::V4(cluster.client.ipv4()),
            format!("web saw the call come from {} again", conn.greeting.peer),
        )?;
    }
    count_grew(
        cluster,
        stop,
        report,
        "the new proxy counted it",
        &out_of_client,
        &before,
        1,
    )?;
    Ok(())
}

/// Checks that a `testpod connect` got through and was echoed; the connection when it did.
fn connected<'o>(
    report: &mut Report<'_>,
    outcome: &'o ConnectOutcome,
    sent: &str,
) -> anyhow::Result<Option<&'o Connected>> {
    match outcome {
        ConnectOutcome::Connected(conn) => {
            report.check(
                conn.echo == sent,
                format!("connected; web greeted it and echoed {:?}", conn.echo),
            )?;
            Ok(Some(conn))
        }
        ConnectOutcome::Failed(f) => {
            report.check(
                false,
                format!("the connection failed ({:?}): {}", f.kind, f.detail),
            )?;
            Ok(None)
        }
    }
}

/// Checks that `series` grew by exactly `by` since `before` (waiting for the proxy to count).
fn count_grew(
    cluster: &Cluster,
    stop: &Stop,
    report: &mut Report<'_>,
    claim: &str,
    series: &Series,
    before: &Metrics,
    by: u64,
) -> anyhow::Result<()> {
    let was = before.sum(series);
    let now = cluster.wait_for_count(stop, series, was + by)?;
    let change = if now == was {
        format!("stayed at {now}")
    } else {
        format!("{was} -> {now}")
    };
    report.check(now == was + by, format!("{claim}: {series} {change}"))?;
    Ok(())
}
