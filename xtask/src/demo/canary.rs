//! The demo's canary section: shipping a new version safely, with the YAML teams already write.
//! For the section only, node 2 gets `shop/reviews-v1` and `shop/reviews-v2` (HTTP apps that
//! name themselves in `x-served-by`) behind the Service `reviews`, which uses the waypoint
//! `shop/waypoint` (a pod of its own, unenrolled). A DestinationRule names the subsets by the
//! pods' `version` label; a VirtualService moves the weights 95/5 → 50/50 → 0/100 while
//! frontend keeps calling, each step measured over a few hundred requests; `x-canary: true` is
//! pinned to v2. Then v2 starts failing every request: retries keep frontend at 100 % success
//! and outlier detection ejects v2, as the waypoint's metrics show. Everything it added is
//! removed at its end.

use std::time::{Duration, Instant};

use marrow_tests::Pod;
use marrow_tests::binaries;
use marrow_tests::metrics::matching;
use marrow_tests::peers::{self, Tally, curl_many};
use marrow_tests::process::PodProcess;
use marrow_tests::state_file::{ClusterState, PodRecord};
use marrow_tests::stop::Stop;
use marrow_tests::waypoint::{ADMIN_PORT, Waypoint, bound_service, gateway_objects};

use super::cluster::{Cluster, add_pod};
use super::report::Report;

/// The Service `reviews`' ClusterIP.
const REVIEWS_VIP: &str = "10.96.0.60";
/// The waypoint's own Service's ClusterIP.
const WAYPOINT_VIP: &str = "10.96.0.61";
/// The port the apps listen on.
const APP_PORT: u16 = 8080;
/// Requests per weight step.
const STEP_REQUESTS: usize = 400;
/// How long the waypoint may take to read a new state file.
const APPLIED: Duration = Duration::from_secs(15);

/// The DestinationRule: subsets by version; outlier detection that ejects after 3 straight 5xx.
const DESTINATION_RULE: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
";

/// The VirtualService of a weight step: testers (`x-canary: true`) to v2, everyone else split.
fn weighted(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{x-canary: {{exact: \"true\"}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"
    )
}

/// The VirtualService while v2 fails: every version, 3 retries on 5xx to another endpoint.
const RESILIENT: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
";

/// The section (see the module documentation).
///
/// # Errors
/// When set-up fails or a signal interrupts the demo.
pub fn canary(cluster: &Cluster, stop: &Stop, report: &mut Report<'_>) -> anyhow::Result<()> {
    report.section(
        "a canary release of reviews v2: weights shifted live, testers pinned, a failing v2 \
         survived (VirtualService + DestinationRule at the waypoint)",
    );
    if let Some(tool) = peers::missing_tool() {
        report.check(
            false,
            format!("{tool} is not installed (run `cargo xtask setup`)"),
        )?;
        return Ok(());
    }
    let v1 = add_pod(&cluster.node2, "reviews-v1", "shop", true, stop)?;
    let v2 = add_pod(&cluster.node2, "reviews-v2", "shop", true, stop)?;
    let waypoint_pod = add_pod(&cluster.node2, "waypoint", "shop", false, stop)?;
    let v1_app = serve(&v1, "v1", &[]);
    let mut v2_app = serve(&v2, "v2", &[]);
    let (pods, services) = objects(cluster, &v1, &v2, &waypoint_pod);
    cluster.apply(&pods, &services, stop)?;
    let mut waypoint = Waypoint::start(
        &waypoint_pod,
        &cluster.ca,
        &cluster.state_files[1],
        ("shop", "waypoint"),
        &["--log-json"],
    );
    waypoint.wait_ready();
    stop.check()?;
    report.note(
        "(state: Service reviews → reviews-v1 and reviews-v2, through the waypoint \
         shop/waypoint; DestinationRule reviews with subsets v1 and v2 by the pods' version label)",
    );
    let apply = |routes: &str, weights: &[u32]| -> anyhow::Result<()> {
        cluster.apply(&pods, &format!("{services}---\n{routes}"), stop)?;
        wait_for_weights(&waypoint, weights, stop)
    };
    let url = format!("http://{REVIEWS_VIP}/reviews");
    for (v1, v2) in [(95, 5), (50, 50), (0, 100)] {
        report.action(format!(
            "apply VirtualService reviews: v1 {v1} %, v2 {v2} %; frontend sends {STEP_REQUESTS} \
             requests"
        ));
        apply(
            &format!("{DESTINATION_RULE}---\n{}", weighted(v1, v2)),
            &[v1, v2],
        )?;
        let tally = curl_many(&cluster.frontend, &url, STEP_REQUESTS, &[]);
        let share = tally.share("v2") * 100.0;
        // Wide enough never to fail by chance (more than 5 standard deviations at 400
        // requests), narrow enough to show the weights are honoured.
        let near = (share - f64::from(v2)).abs() <= 8.0;
        report.check(
            near && tally.status(200) == STEP_REQUESTS,
            format!(
                "v1 {} ({:.1} %), v2 {} ({share:.1} %), errors {}",
                tally.server("v1"),
                tally.share("v1") * 100.0,
                tally.server("v2"),
                errors(&tally)
            ),
        )?;
    }
    report.action(format!(
        "back to 95/5; frontend sends 100 requests with x-canary: true (curl -H 'x-canary: true' \
         {url})"
    ));
    apply(
        &format!("{DESTINATION_RULE}---\n{}", weighted(95, 5)),
        &[95, 5],
    )?;
    let testers = curl_many(&cluster.frontend, &url, 100, &["-H", "x-canary: true"]);
    report.check(
        testers.server("v2") == 100,
        format!(
            "all {} of them served by v2 (the VirtualService's first rule)",
            testers.server("v2")
        ),
    )?;
    report.action(
        "v2 starts failing every request (503); apply a route to every version with 3 retries \
         on 5xx; frontend sends 200 requests",
    );
    drop(v2_app);
    v2_app = serve(&v2, "v2", &["--fail-percent", "100"]);
    apply(&format!("{DESTINATION_RULE}---\n{RESILIENT}"), &[100])?;
    let survived = curl_many(&cluster.frontend, &url, 200, &[]);
    report.check(
        survived.status(200) == 200,
        format!(
            "{} of 200 succeeded, {} served by v1: v2's failures were retried",
            survived.status(200),
            survived.server("v1")
        ),
    )?;
    report_ejection(&waypoint, &v2, report)?;
    // Gone again: the waypoint and the apps, the pods (while the proxies run, for their CNI
    // DEL), then the objects.
    drop(waypoint);
    drop((v1_app, v2_app));
    drop((v1, v2, waypoint_pod));
    cluster.apply(&cluster.state, "", stop)
}

/// The waypoint's retries and v2's ejection, from its `/metrics`.
fn report_ejection(
    waypoint: &Waypoint<'_>,
    v2: &Pod,
    report: &mut Report<'_>,
) -> anyhow::Result<()> {
    report.action("GET the waypoint's /metrics: retries and the ejection");
    let metrics = waypoint.metrics();
    let retries: f64 = matching(&metrics, "marrow_retries_total", &[])
        .iter()
        .map(|s| s.value)
        .sum();
    let v2_ip = v2.ipv4().to_string();
    let ejected = matching(&metrics, "marrow_endpoint_ejected", &[])
        .iter()
        .any(|s| s.value >= 1.0 && s.labels.values().any(|v| v.contains(&v2_ip)));
    report.check(
        retries >= 1.0 && ejected,
        format!(
            "marrow_retries_total {retries}; v2's endpoint {v2_ip} ejected by outlier detection \
             (marrow_endpoint_ejected 1)"
        ),
    )?;
    for line in metrics.lines().filter(|l| {
        l.starts_with("marrow_endpoint_ejected{")
            || l.starts_with("marrow_outlier_ejections_total{")
    }) {
        report.note(line);
    }
    Ok(())
}

fn errors(tally: &Tally) -> usize {
    tally.total - tally.status(200)
}

/// `testpod http-serve` named `name` in `pod`, with `extra` flags.
fn serve(pod: &Pod, name: &str, extra: &[&str]) -> PodProcess {
    let testpod = binaries::testpod();
    let port = APP_PORT.to_string();
    let mut args = vec![
        "http-serve",
        "--port",
        &port,
        "--name",
        name,
        "--size",
        "64",
    ];
    args.extend_from_slice(extra);
    let app = pod.spawn(&testpod, &args);
    app.wait_for_line("listening", Duration::from_secs(10));
    app
}

/// The pods' records (with their `app` and `version` labels) and the section's Services: the
/// waypoint's, and `reviews` bound to it.
fn objects(cluster: &Cluster, v1: &Pod, v2: &Pod, waypoint_pod: &Pod) -> (ClusterState, String) {
    let app = |pod: &Pod, version: &str| {
        PodRecord::of(pod, "reviews")
            .with_label("app", "reviews")
            .with_label("version", version)
    };
    let pods = cluster
        .state
        .clone()
        .with_pod(app(v1, "v1"))
        .with_pod(app(v2, "v2"))
        .with_pod(
            PodRecord::of(waypoint_pod, "waypoint")
                .with_label("gateway.networking.k8s.io/gateway-name", "waypoint")
                .with_label("istio.io/dataplane-mode", "none"),
        );
    let gateway = gateway_objects(
        "shop",
        "waypoint",
        WAYPOINT_VIP,
        &[waypoint_pod.ipv4().to_string()],
    );
    let reviews = bound_service(
        ("shop", "reviews"),
        REVIEWS_VIP,
        "waypoint",
        &[("http", 80, APP_PORT)],
        &[v1.ipv4().to_string(), v2.ipv4().to_string()],
    );
    (pods, format!("{gateway}---\n{reviews}"))
}

/// Waits until the waypoint's `/routes` for `reviews` shows backends of these weights: it has
/// read the new state file.
fn wait_for_weights(waypoint: &Waypoint<'_>, weights: &[u32], stop: &Stop) -> anyhow::Result<()> {
    let started = Instant::now();
    let path = "/routes?to=reviews.shop%3A80&from=shop%2Ffrontend";
    loop {
        stop.check()?;
        let answer = waypoint
            .get(ADMIN_PORT, path)
            .ok()
            .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
            .unwrap_or_default();
        let seen: Vec<u64> = answer["backends"]
            .as_array()
            .map(|b| b.iter().filter_map(|b| b["weight"].as_u64()).collect())
            .unwrap_or_default();
        if seen
            .iter()
            .copied()
            .eq(weights.iter().map(|w| u64::from(*w)))
        {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < APPLIED,
            "the waypoint did not apply the routes within {APPLIED:?}: /routes says {answer}; its log:\n{}",
            waypoint.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
