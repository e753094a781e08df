//! Traffic management at the waypoint, end to end on namespaced nodes through the real CNI
//! chain: curl in a client pod on node 1 calls Services that use the waypoint `shop/wp` (the
//! real `waypoint` binary in a pod on node 2); VirtualServices and DestinationRules in the state
//! file split, pin, retry, time out, inject faults, mirror, eject and limit; `testpod http-serve`
//! apps name themselves (`x-served-by`), fail or stall on demand. Counts are statistical where
//! the data path draws at random: each tolerance is more than 3.5 standard deviations wide.

use std::time::{Duration, Instant};

use marrow_tests::metrics::{count, matching};
use marrow_tests::peers::{self, curl, curl_many};
use marrow_tests::process::PodProcess;
use marrow_tests::state_file::{ClusterState, PodRecord};
use marrow_tests::two_nodes::{Mesh, eventually, namespaces};
use marrow_tests::waypoint::{ADMIN_PORT, Waypoint, bound_service, gateway_objects};
use marrow_tests::{Pod, binaries, require_env};

const WAYPOINT_VIP: &str = "10.96.0.71";
/// Service VIPs, all on port 80.
const REVIEWS: &str = "10.96.0.72";
const FLAKY: &str = "10.96.0.73";
const SLOW: &str = "10.96.0.74";
const MIRROR: &str = "10.96.0.75";
const PAIR: &str = "10.96.0.76";

/// The apps' ports: v1 serves `reviews` (8080), `flaky` (8081, 503 to every other request) and
/// `slow` (8082, answers after 1.5 s); v2 serves `reviews` (8080), `mirror` (8083, logs each
/// request) and the failing half of `pair` (8084, 503 to everything).
const OK: u16 = 8080;
const FLAKY_PORT: u16 = 8081;
const SLOW_PORT: u16 = 8082;
const MIRROR_PORT: u16 = 8083;
const BROKEN_PORT: u16 = 8084;

/// One bed: two nodes, a client, the two app pods, the waypoint.
struct Bed {
    mesh: Mesh,
    client: Pod,
    v1: Pod,
    v2: Pod,
    wp: Pod,
    state: ClusterState,
}

impl Bed {
    fn start(test: &str) -> Bed {
        let mesh = Mesh::start(test);
        let client = mesh.n1.add_pod("client", "shop", true);
        let v1 = mesh.n1.add_pod("reviews-v1", "shop", true);
        let v2 = mesh.n2.add_pod("reviews-v2", "shop", true);
        let wp = mesh.n2.add_pod("wp-0", "shop", false);
        let app = |pod: &Pod, version: &str| {
            PodRecord::of(pod, "reviews")
                .with_label("app", "reviews")
                .with_label("version", version)
        };
        let state = namespaces()
            .pod(&client, "client")
            .with_pod(app(&v1, "v1"))
            .with_pod(app(&v2, "v2"))
            .with_pod(
                PodRecord::of(&wp, "wp")
                    .with_label("gateway.networking.k8s.io/gateway-name", "wp")
                    .with_label("istio.io/dataplane-mode", "none"),
            );
        Bed {
            mesh,
            client,
            v1,
            v2,
            wp,
            state,
        }
    }

    /// The Gateway, the five Services bound to it, and `routes`.
    fn objects(&self, routes: &str) -> String {
        let (v1, v2) = (self.v1.ipv4().to_string(), self.v2.ipv4().to_string());
        let service = |name: &str, vip: &str, port: u16, endpoints: &[&String]| {
            let endpoints: Vec<String> = endpoints.iter().map(|e| (*e).clone()).collect();
            bound_service(("shop", name), vip, "wp", &[("http", 80, port)], &endpoints)
        };
        let gateway = gateway_objects("shop", "wp", WAYPOINT_VIP, &[self.wp.ipv4().to_string()]);
        let mut out = format!("{gateway}---\n");
        for part in [
            service("reviews", REVIEWS, OK, &[&v1, &v2]),
            service("flaky", FLAKY, FLAKY_PORT, &[&v1]),
            service("slow", SLOW, SLOW_PORT, &[&v1]),
            service("mirror", MIRROR, MIRROR_PORT, &[&v2]),
        ] {
            out.push_str(&part);
            out.push_str("---\n");
        }
        // `pair`: one healthy endpoint (v1's 8080) and one that always fails (v2's 8084): two
        // target ports, so two slices of one port name each.
        out.push_str(&format!(
            "apiVersion: v1
kind: Service
metadata: {{name: pair, namespace: shop, labels: {{istio.io/use-waypoint: wp}}}}
spec:
  clusterIP: {PAIR}
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: pair-1, namespace: shop, labels: {{kubernetes.io/service-name: pair}}}}
addressType: IPv4
ports: [{{name: http, port: {OK}, protocol: TCP}}]
endpoints: [{{addresses: [{v1}]}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: pair-2, namespace: shop, labels: {{kubernetes.io/service-name: pair}}}}
addressType: IPv4
ports: [{{name: http, port: {BROKEN_PORT}, protocol: TCP}}]
endpoints: [{{addresses: [{v2}]}}]
---
{routes}"
        ));
        out
    }

    /// The apps (see the port constants).
    fn apps(&self) -> Vec<PodProcess> {
        vec![
            serve(&self.v1, OK, "v1", &[]),
            serve(&self.v1, FLAKY_PORT, "flaky", &["--fail-percent", "50"]),
            serve(&self.v1, SLOW_PORT, "slow", &["--delay-ms", "1500"]),
            serve(&self.v2, OK, "v2", &[]),
            serve(&self.v2, MIRROR_PORT, "mirror", &["--log"]),
            serve(&self.v2, BROKEN_PORT, "broken", &["--fail-percent", "100"]),
        ]
    }

    /// Writes the state with `routes` and waits until the waypoint's `/routes` for `probe`
    /// (`HOST:PORT`) shows `weights`: it has read the file.
    fn apply(&self, waypoint: &Waypoint<'_>, routes: &str, probe: &str, weights: &[u64]) {
        self.mesh.apply_with(&self.state, &self.objects(routes));
        let path = format!("/routes?to={probe}&from=shop%2Fclient");
        eventually("the waypoint to apply the routes", || {
            let answer = waypoint
                .get(ADMIN_PORT, &path)
                .ok()
                .and_then(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
                .unwrap_or_default();
            let seen: Vec<u64> = answer["backends"]
                .as_array()
                .map(|b| b.iter().filter_map(|b| b["weight"].as_u64()).collect())
                .unwrap_or_default();
            if seen == weights {
                Ok(())
            } else {
                Err(answer.to_string())
            }
        });
    }
}

fn serve(pod: &Pod, port: u16, name: &str, extra: &[&str]) -> PodProcess {
    let port = port.to_string();
    let mut args = vec![
        "http-serve",
        "--port",
        &port,
        "--name",
        name,
        "--size",
        "16",
    ];
    args.extend_from_slice(extra);
    let app = pod.spawn(binaries::testpod(), &args);
    app.wait_for_line("listening", Duration::from_secs(10));
    app
}

const SUBSETS: &str = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
";

fn canary(v1: u32, v2: u32) -> String {
    format!(
        "{SUBSETS}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  http:
  - match: [{{headers: {{x-canary: {{exact: \"true\"}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: reviews, subset: v2}}, weight: {v2}}}
"
    )
}

#[test]
fn weights_split_headers_pin_and_an_edit_applies_to_the_next_request() {
    require_env!();
    if let Some(tool) = peers::missing_tool() {
        println!("SKIPPED: {tool} is not installed; run `cargo xtask setup`");
        return;
    }
    let bed = Bed::start("trfw");
    let _apps = bed.apps();
    bed.mesh.apply_with(&bed.state, &bed.objects(""));
    let mut waypoint =
        Waypoint::start(&bed.wp, &bed.mesh.ca, &bed.mesh.state2, ("shop", "wp"), &[]);
    waypoint.wait_ready();
    let url = format!("http://{REVIEWS}/");
    bed.apply(&waypoint, &canary(90, 10), "reviews.shop%3A80", &[90, 10]);

    // 90/10 over 5,000 requests: v2's share within 10 ± 2 % (4.7 standard deviations).
    let split = curl_many(&bed.client, &url, 5000, &[]);
    assert_eq!(split.status(200), 5000, "{split:?}");
    let v2 = split.share("v2") * 100.0;
    assert!((8.0..=12.0).contains(&v2), "v2 got {v2:.2} %: {split:?}");

    // The header rule comes first: every tester goes to v2.
    let pinned = curl_many(&bed.client, &url, 200, &["-H", "x-canary: true"]);
    assert_eq!(pinned.server("v2"), 200, "{pinned:?}");

    // An edit (everything to v2) applies to the next request, with no restart.
    let pid = waypoint.pid();
    bed.apply(&waypoint, &canary(0, 100), "reviews.shop%3A80", &[0, 100]);
    let after = curl_many(&bed.client, &url, 50, &[]);
    assert_eq!(after.server("v2"), 50, "{after:?}");
    assert_eq!(waypoint.pid(), pid, "the same waypoint process");

    // No route matches: 404 with Envoy's NR flag.
    let strict = format!(
        "{SUBSETS}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /api}}}}]
    route: [{{destination: {{host: reviews, subset: v1}}}}]
"
    );
    // With it, a broken VirtualService (a regex that does not compile): refused, reported,
    // and the rest of the state applies.
    let broken = "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [flaky]
  http:
  - match: [{uri: {regex: \"(unclosed\"}}]
    route: [{destination: {host: flaky}}]
";
    bed.mesh
        .apply_with(&bed.state, &bed.objects(&format!("{strict}{broken}")));
    eventually("404 for a path no rule matches", || {
        let reply = curl(&bed.client, &[&url]);
        (reply.status == 404)
            .then_some(())
            .ok_or(format!("{}", reply.status))
    });
    let metrics = waypoint.metrics();
    assert!(
        count(
            &metrics,
            "istio_requests_total",
            &[("response_code", "404"), ("response_flags", "NR")]
        ) >= 1,
        "{metrics}"
    );
    assert_eq!(
        count(
            &metrics,
            "marrow_config_refused",
            &[("kind", "VirtualService")]
        ),
        1,
        "{metrics}"
    );
    let routes = waypoint
        .get(ADMIN_PORT, "/routes?to=flaky.shop%3A80")
        .unwrap()
        .body;
    assert!(
        routes.contains("VirtualService shop/broken refused") && routes.contains("regex"),
        "{routes}"
    );
}

#[test]
fn retries_hide_a_flaky_backend_timeouts_answer_504_and_faults_hit_their_share() {
    require_env!();
    if let Some(tool) = peers::missing_tool() {
        println!("SKIPPED: {tool} is not installed; run `cargo xtask setup`");
        return;
    }
    let bed = Bed::start("trfr");
    let _apps = bed.apps();
    bed.mesh.apply_with(&bed.state, &bed.objects(""));
    let mut waypoint =
        Waypoint::start(&bed.wp, &bed.mesh.ca, &bed.mesh.state2, ("shop", "wp"), &[]);
    waypoint.wait_ready();
    let routes = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky, namespace: shop}
spec:
  hosts: [flaky]
  http:
  - route: [{destination: {host: flaky}}]
    retries: {attempts: 3, retryOn: 5xx}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow, namespace: shop}
spec:
  hosts: [slow]
  http:
  - match: [{headers: {x-case: {exact: per-try}}}]
    route: [{destination: {host: slow}}]
    timeout: 3s
    retries: {attempts: 2, perTryTimeout: 200ms, retryOn: 5xx}
  - route: [{destination: {host: slow}}]
    timeout: 500ms
    retries: {attempts: 0}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-case: {exact: abort}}}]
    route: [{destination: {host: reviews}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 50}}}
  - match: [{headers: {x-case: {exact: delay}}}]
    route: [{destination: {host: reviews}}]
    fault: {delay: {fixedDelay: 1ms, percentage: {value: 50}}}
";
    bed.apply(&waypoint, routes, "flaky.shop%3A80", &[100]);

    // Every other answer of flaky is 503; 3 retries make the client's success ≥ 99 %.
    let flaky = curl_many(&bed.client, &format!("http://{FLAKY}/"), 1000, &[]);
    assert!(flaky.status(200) >= 990, "{flaky:?}");
    let metrics = waypoint.metrics();
    let retries = count(&metrics, "marrow_retries_total", &[]);
    assert!(
        retries >= 400,
        "about one retry per two requests; {retries}:\n{metrics}"
    );

    // The route timeout: 504 UT at 500 ms, long before the app's 1.5 s.
    let started = Instant::now();
    let timed_out = curl(&bed.client, &[&format!("http://{SLOW}/")]);
    let took = started.elapsed();
    assert_eq!(timed_out.status, 504, "{timed_out:?}");
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_millis(1400),
        "answered after {took:?}"
    );
    // Per try: three tries of 200 ms each, then 504 UT, still before the app answers.
    let started = Instant::now();
    let per_try = curl(
        &bed.client,
        &["-H", "x-case: per-try", &format!("http://{SLOW}/")],
    );
    let took = started.elapsed();
    assert_eq!(per_try.status, 504, "{per_try:?}");
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1400),
        "{took:?}"
    );
    let metrics = waypoint.metrics();
    assert!(
        count(
            &metrics,
            "istio_requests_total",
            &[
                ("destination_service_name", "slow"),
                ("response_flags", "UT")
            ]
        ) >= 2,
        "{metrics}"
    );

    // Faults at 50 % over 4,000 requests each: within ± 3 % (3.8 standard deviations).
    let url = format!("http://{REVIEWS}/");
    let aborted = curl_many(&bed.client, &url, 4000, &["-H", "x-case: abort"]);
    let share = aborted.status(418) as f64 / 40.0;
    assert!(
        (47.0..=53.0).contains(&share),
        "{share:.2} % aborted: {aborted:?}"
    );
    assert_eq!(
        aborted.status(418) + aborted.status(200),
        4000,
        "{aborted:?}"
    );
    let delayed = curl_many(&bed.client, &url, 4000, &["-H", "x-case: delay"]);
    assert_eq!(delayed.status(200), 4000, "{delayed:?}");
    let metrics = waypoint.metrics();
    let di = count(
        &metrics,
        "istio_requests_total",
        &[
            ("destination_service_name", "reviews"),
            ("response_flags", "DI"),
        ],
    );
    let share = di as f64 / 40.0;
    assert!(
        (47.0..=53.0).contains(&share),
        "{share:.2} % delayed (DI):\n{metrics}"
    );
    let fi = count(
        &metrics,
        "istio_requests_total",
        &[("response_code", "418"), ("response_flags", "FI")],
    );
    assert_eq!(fi, aborted.status(418) as u64, "each abort counted FI");
}

#[test]
fn mirrors_get_copies_outliers_are_ejected_and_back_and_a_full_pool_overflows() {
    require_env!();
    if let Some(tool) = peers::missing_tool() {
        println!("SKIPPED: {tool} is not installed; run `cargo xtask setup`");
        return;
    }
    let bed = Bed::start("trfm");
    let apps = bed.apps();
    bed.mesh.apply_with(&bed.state, &bed.objects(""));
    let mut waypoint =
        Waypoint::start(&bed.wp, &bed.mesh.ca, &bed.mesh.state2, ("shop", "wp"), &[]);
    waypoint.wait_ready();
    let routes = format!(
        "{SUBSETS}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
    mirror: {{host: mirror}}
    mirrorPercentage: {{value: 100}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: pair, namespace: shop}}
spec:
  hosts: [pair]
  http:
  - route: [{{destination: {{host: pair}}}}]
    retries: {{attempts: 3, retryOn: 5xx}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: pair, namespace: shop}}
spec:
  host: pair
  trafficPolicy:
    outlierDetection: {{consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 3s, maxEjectionPercent: 50}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: slow, namespace: shop}}
spec:
  host: slow
  trafficPolicy:
    connectionPool:
      tcp: {{maxConnections: 1}}
      http: {{http1MaxPendingRequests: 1, http2MaxRequests: 1}}
"
    );
    bed.apply(&waypoint, &routes, "reviews.shop%3A80", &[100]);

    // Mirror: the client sees only v1's answers; the mirror gets a copy of each request, its
    // Host suffixed -shadow.
    let mirrored = curl_many(&bed.client, &format!("http://{REVIEWS}/m"), 20, &[]);
    assert_eq!(mirrored.server("v1"), 20, "{mirrored:?}");
    let mirror_app = &apps[4];
    let mut copies = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    while copies < 20 && Instant::now() < deadline {
        if let Some(line) = mirror_app.next_line(Duration::from_millis(500))
            && line.starts_with("request GET /m ")
        {
            assert!(line.contains("-shadow"), "{line}");
            copies += 1;
        }
    }
    assert_eq!(copies, 20, "every request mirrored");

    // Outliers: pair's failing endpoint is ejected after 2 straight 5xx (the client never sees
    // them: retried), within two intervals, and back after baseEjectionTime.
    let pair = curl_many(&bed.client, &format!("http://{PAIR}/"), 20, &[]);
    assert_eq!(pair.status(200), 20, "{pair:?}");
    let broken = bed.v2.ipv4().to_string();
    let ejected = |metrics: &str| {
        matching(metrics, "marrow_endpoint_ejected", &[])
            .iter()
            .any(|s| s.value >= 1.0 && s.labels.values().any(|v| v.contains(&broken)))
    };
    let started = Instant::now();
    eventually("the failing endpoint ejected", || {
        let metrics = waypoint.metrics();
        ejected(&metrics).then_some(()).ok_or(metrics)
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "within two intervals"
    );
    let metrics = waypoint.metrics();
    assert!(
        count(&metrics, "marrow_outlier_ejections_total", &[]) >= 1,
        "{metrics}"
    );
    eventually("the ejected endpoint back", || {
        let metrics = waypoint.metrics();
        (!ejected(&metrics)).then_some(()).ok_or(metrics)
    });

    // The pool: one request in flight to slow (1.5 s each), one waiting; more overflow: 503 UO.
    let url = format!("http://{SLOW}/");
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let mut cmd = bed.client.command("curl");
            cmd.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                &url,
            ]);
            cmd.stdout(std::process::Stdio::piped()).spawn().unwrap()
        })
        .collect();
    let codes: Vec<String> = callers
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned())
        .collect();
    assert!(codes.iter().any(|c| c == "503"), "{codes:?}");
    assert!(codes.iter().any(|c| c == "200"), "{codes:?}");
    let metrics = waypoint.metrics();
    assert!(
        count(
            &metrics,
            "istio_requests_total",
            &[("response_code", "503"), ("response_flags", "UO")]
        ) >= 1,
        "{metrics}"
    );
}
