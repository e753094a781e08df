//! The demo's scenarios, one function each, run in order against one [`Cluster`]: allowed with
//! identities, denied by policy, plaintext refused by STRICT, no plaintext on the wire,
//! `/metrics`, and a Service behind a waypoint (L7, in `super::waypoint`).
//!
//! Every check reads a real outcome: what `testpod` printed inside the pods, the proxies'
//! `/metrics` and `/explain`, and packets captured on the link between the nodes. The SPIFFE
//! IDs shown are the labels node 2's proxy put on the connection it accepted, not the config.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use marrow_tests::mesh::HBONE_PORT;
use marrow_tests::metrics::matching;
use marrow_tests::sniff::{TLS_APPLICATION_DATA, TLS_HANDSHAKE, tls_records};
use marrow_tests::{Capture, ConnectOutcome, spiffe_id};

use super::cluster::{API_PORT, Cluster};
use super::observe::since_last_start;
use super::report::Report;
use marrow_tests::stop::Stop;

/// The metric whose labels carry the connection's identities.
const OPENED: &str = "istio_tcp_connections_opened_total";
/// The metrics whose samples the excerpt of `/metrics` shows, in order.
const EXCERPT_METRICS: [&str; 3] = [
    OPENED,
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
];
/// At most this many sample lines are shown from `/metrics`.
const EXCERPT_LINES: usize = 6;
/// Lines of each proxy's log shown when a check failed.
const LOG_TAIL_LINES: usize = 15;
/// How long a proxy may take to count a connection the client has already seen end.
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets up the cluster, runs every scenario and tears the cluster down (also on error), or
/// leaves it running with `keep` when the scenarios ran (even if a check failed).
///
/// # Errors
/// When set-up fails, a proxy's pages cannot be read, or a signal interrupts the demo.
pub fn run(stop: &Stop, report: &mut Report<'_>, keep: bool) -> anyhow::Result<()> {
    let cluster = Cluster::start(stop)?;
    let result = run_all(&cluster, stop, report);
    if report.any_failed() || result.is_err() {
        for (n, proxy) in [(1, &cluster.proxy1), (2, &cluster.proxy2)] {
            let log = proxy.log();
            let tail: Vec<&str> = since_last_start(&log)
                .lines()
                .rev()
                .take(LOG_TAIL_LINES)
                .collect();
            println!("\nNode {n}'s proxy log (last {LOG_TAIL_LINES} lines), to see why:");
            for line in tail.iter().rev() {
                println!("   | {line}");
            }
        }
    }
    if keep && result.is_ok() {
        return super::keep::keep(cluster);
    }
    result
}

/// The scenarios in order.
fn run_all(cluster: &Cluster, stop: &Stop, report: &mut Report<'_>) -> anyhow::Result<()> {
    let capture = allowed_with_identities(cluster, stop, report)?;
    denied_by_policy(cluster, stop, report)?;
    plaintext_refused(cluster, stop, report)?;
    no_plaintext_on_the_wire(cluster, &capture, report)?;
    metrics_excerpt(cluster, report)?;
    super::waypoint::through_a_waypoint(cluster, stop, report)?;
    super::canary::canary(cluster, stop, report)?;
    Ok(())
}

/// frontend → api across the nodes: it works, over mutual TLS, and node 2's proxy labels it
/// with both ends' SPIFFE IDs. Returns the underlay capture taken meanwhile (for section 4).
fn allowed_with_identities(
    cluster: &Cluster,
    stop: &Stop,
    report: &mut Report<'_>,
) -> anyhow::Result<Capture> {
    report.section("frontend calls api on the other node: allowed, and both ends are identified");
    let api = cluster.api_addr();
    let secret = secret_marker();
    report.action(format!(
        "from shop/frontend ({}, node 1), connect to shop/api at {api} (node 2) and send {secret:?}",
        cluster.frontend.ipv4()
    ));
    let sniffer = cluster.sniff();
    let outcome = cluster.frontend.connect(api, &secret);
    let capture = sniffer.stop();
    stop.check()?;
    match &outcome {
        ConnectOutcome::Connected(conn) => {
            report.check(
                conn.echo == secret
                    && conn.greeting.peer.ip() == IpAddr::V4(cluster.frontend.ipv4()),
                format!(
                    "connected; api saw the call come from {} (frontend's own IP) and echoed {:?}",
                    conn.greeting.peer, conn.echo
                ),
            )?;
        }
        ConnectOutcome::Failed(f) => {
            report.check(
                false,
                format!("the connection failed ({:?}): {}", f.kind, f.detail),
            )?;
        }
    }
    report.action("read node 2's /metrics: who did its proxy say connected, and how?");
    let want = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
    ];
    let (frontend_id, api_id) = (spiffe_id("shop", "frontend"), spiffe_id("shop", "api"));
    let deadline = Instant::now() + COUNT_TIMEOUT;
    let found = loop {
        stop.check()?;
        let text = cluster.metrics2()?.into_text();
        let found = matching(&text, OPENED, &want)
            .into_iter()
            .find(|s| s.labels.get("source_principal") == Some(&frontend_id));
        if found.is_some() || Instant::now() >= deadline {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    match found {
        Some(sample) => {
            let label = |k: &str| sample.labels.get(k).cloned().unwrap_or_default();
            report.check(
                label("destination_principal") == api_id,
                format!(
                    "node 2 counted a mutual_tls connection: source_principal=\"{}\", destination_principal=\"{}\"",
                    label("source_principal"),
                    label("destination_principal")
                ),
            )?;
            report.note("(each proxy presented a certificate for its pod's service account, signed by the mesh CA)");
        }
        None => report.check(
            false,
            format!("node 2 has no {OPENED} sample with connection_security_policy=\"mutual_tls\" and source_principal=\"{frontend_id}\""),
        )?,
    }
    Ok(capture)
}

/// batch → api: batch is in the mesh, but the policy only lets frontend in.
fn denied_by_policy(cluster: &Cluster, stop: &Stop, report: &mut Report<'_>) -> anyhow::Result<()> {
    report.section("batch calls api: refused, because the policy only admits frontend");
    let api = cluster.api_addr();
    report.action(format!(
        "from shop/batch ({}, node 1, service account batch), connect to {api} and send \"order 66\"",
        cluster.batch.ipv4()
    ));
    let outcome = cluster.batch.connect(api, "order 66");
    stop.check()?;
    refused(report, &outcome, "batch")?;
    explain(cluster, report, "from=shop/batch&to=shop/api&port=8080")
}

/// legacy/old (no proxy, plaintext) → api: STRICT refuses it.
fn plaintext_refused(
    cluster: &Cluster,
    stop: &Stop,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    report.section("old, outside the mesh, calls api in plaintext: refused by STRICT mTLS");
    let api = cluster.api_addr();
    report.action(format!(
        "from legacy/old ({}, no proxy, no certificate), connect to {api} and send \"hello?\"",
        cluster.old.ipv4()
    ));
    let outcome = cluster.old.connect(api, "hello?");
    stop.check()?;
    refused(report, &outcome, "old")?;
    explain(
        cluster,
        report,
        &format!("from=ip:{}&to=shop/api&port={API_PORT}", cluster.old.ipv4()),
    )
}

/// Section 1's capture: only TLS to port 15008 crossed the underlay, never the secret.
fn no_plaintext_on_the_wire(
    cluster: &Cluster,
    capture: &Capture,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    report.section("Proof of encryption: what crossed the wire between the nodes in section 1");
    report.action(format!(
        "capture every packet on node 1's end of the link ({}) while frontend talked to api",
        cluster.link.a_ifname
    ));
    let hbone = capture.flows_to_port(HBONE_PORT);
    let first = hbone.first().map(|flow| capture.stream(*flow).bytes);
    let records = first.as_deref().map(tls_records);
    match records {
        Some(Ok(records)) => {
            let data = records
                .iter()
                .filter(|r| r.content_type == TLS_APPLICATION_DATA)
                .count();
            report.check(
                records.first().is_some_and(|r| r.content_type == TLS_HANDSHAKE) && data > 0,
                format!(
                    "{} connection(s) to port {HBONE_PORT} (HBONE): a TLS handshake, then {data} encrypted application-data records",
                    hbone.len()
                ),
            )?;
        }
        Some(Err(e)) => report.check(
            false,
            format!("the flow to port {HBONE_PORT} is not TLS: {e}"),
        )?,
        None => report.check(
            false,
            format!(
                "no connection to port {HBONE_PORT} on the link:\n{}",
                capture.summary()
            ),
        )?,
    }
    let secret = secret_marker();
    report.check(
        !capture.contains(secret.as_bytes()),
        format!("the text {secret:?} appears nowhere in the captured bytes"),
    )?;
    let plain = capture.flows_with_port(API_PORT);
    report.check(
        plain.is_empty(),
        format!(
            "no packet went to or from port {API_PORT} in the clear ({} flows)",
            plain.len()
        ),
    )?;
    Ok(())
}

/// A few `istio_tcp_*` lines of node 2's `/metrics`, as Prometheus (and Grafana, Kiali) read them.
fn metrics_excerpt(cluster: &Cluster, report: &mut Report<'_>) -> anyhow::Result<()> {
    report.section("What the proxies export: Istio's metric names and labels");
    report.action("GET http://127.0.0.1:15020/metrics on node 2, and show the connection counts");
    let metrics = cluster.metrics2()?;
    let samples = metrics.count_with_prefix("istio_tcp_");
    let deny = matching(
        metrics.text(),
        OPENED,
        &[("reporter", "destination"), ("response_flags", "DENY")],
    )
    .len();
    report.check(
        samples > 0 && deny > 0,
        format!("/metrics has {samples} istio_tcp_* samples, {deny} of them opened connections denied (response_flags=\"DENY\"):"),
    )?;
    let excerpt = EXCERPT_METRICS
        .iter()
        .flat_map(|metric| metrics.samples(metric))
        .take(EXCERPT_LINES);
    for line in excerpt {
        report.note(abbreviate(line, &SHOWN_LABELS));
    }
    report.note(format!(
        "(labels shown: {}; each sample carries Istio's other standard labels too)",
        SHOWN_LABELS.join(", ")
    ));
    Ok(())
}

/// The labels of a sample the excerpt shows; a sample has 23, too many for a terminal line.
const SHOWN_LABELS: [&str; 5] = [
    "reporter",
    "source_principal",
    "destination_principal",
    "connection_security_policy",
    "response_flags",
];

/// `name{a="x",b="y",…} value` with only the labels `shown`, in that order (the demo's metric
/// excerpts: the L4 ones here, the waypoint's request sample).
pub(super) fn abbreviate(line: &str, shown: &[&str]) -> String {
    let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
        return line.to_owned();
    };
    let labels = &line[open + 1..close];
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut rest = labels;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some(end) = after.find('"') else { break };
        pairs.push((key.trim_start_matches(','), &after[..end]));
        rest = &after[end + 1..];
    }
    let shown: Vec<String> = shown
        .iter()
        .filter_map(|name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(key, value)| format!("{key}=\"{value}\""))
        })
        .collect();
    format!(
        "{}{{{}}}{}",
        &line[..open],
        shown.join(","),
        &line[close + 1..]
    )
}

/// Checks that a connection did not get through.
fn refused(report: &mut Report<'_>, outcome: &ConnectOutcome, who: &str) -> anyhow::Result<()> {
    report.check(
        !outcome.is_ok(),
        match outcome {
            ConnectOutcome::Failed(f) => format!("refused ({:?}): {}", f.kind, f.detail),
            ConnectOutcome::Connected(c) => {
                format!(
                    "it CONNECTED: {who} got through and api echoed {:?}",
                    c.echo
                )
            }
        },
    )?;
    Ok(())
}

/// Asks node 2's proxy why, and prints its decision, policy and reason.
fn explain(cluster: &Cluster, report: &mut Report<'_>, query: &str) -> anyhow::Result<()> {
    report.action(format!(
        "ask node 2's proxy why: GET http://127.0.0.1:15000/explain?{query}"
    ));
    let answer = cluster.explain(query)?;
    let field = |k: &str| match &answer[k] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "(none)".to_owned(),
        other => other.to_string(),
    };
    report.check(
        field("decision") == "deny",
        format!("decision: {}", field("decision")),
    )?;
    report.note(format!("policy:   {}", field("policy")));
    report.note(format!("reason:   {}", field("reason")));
    Ok(())
}

/// The text frontend sends in section 1, unique to this run so no old capture can match it.
fn secret_marker() -> String {
    format!("MARROW-DEMO-SECRET-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::{SHOWN_LABELS, abbreviate};

    #[test]
    fn the_excerpt_keeps_the_labels_a_newcomer_reads() {
        let line = "istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"a\",\
                    source_principal=\"spiffe://cluster.local/ns/shop/sa/a\",destination_principal=\"unknown\",\
                    request_protocol=\"tcp\",response_flags=\"DENY\",connection_security_policy=\"none\"} 3";
        assert_eq!(
            abbreviate(line, &SHOWN_LABELS),
            "istio_tcp_connections_opened_total{reporter=\"destination\",\
             source_principal=\"spiffe://cluster.local/ns/shop/sa/a\",destination_principal=\"unknown\",\
             connection_security_policy=\"none\",response_flags=\"DENY\"} 3"
        );
        assert_eq!(abbreviate("no_labels 1", &SHOWN_LABELS), "no_labels 1");
    }
}
