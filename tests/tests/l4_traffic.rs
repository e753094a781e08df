//! Traffic management at L4, applied by the client's node proxy with no waypoint: a TCPRoute's
//! weighted split between backend Services, a failed connect retried once on another ready
//! endpoint, and an endpoint ejected by a DestinationRule's outlier detection after
//! consecutive connect failures, then back after its ejection time. There is no kube-proxy:
//! a connection to a VIP that works went through the proxy's choice.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use marrow_tests::binaries::testpod;
use marrow_tests::require_env;
use marrow_tests::state_file::PodRecord;
use marrow_tests::two_nodes::{APP_PORT, Mesh, eventually, namespaces};
use marrow_tests::{ClusterState, Pod};

/// A Service `name` at `vip`:80 whose endpoints are `pods` on [`APP_PORT`].
fn service(name: &str, vip: &str, pods: &[&Pod]) -> String {
    let mut endpoints = String::new();
    for pod in pods {
        endpoints += &format!("- addresses: [{}]\n", pod.ipv4());
    }
    format!(
        "apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: shop}}
spec:
  clusterIP: {vip}
  clusterIPs: [{vip}]
  ports: [{{name: tcp, port: 80, targetPort: {APP_PORT}, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-x1
  namespace: shop
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: tcp, port: {APP_PORT}, protocol: TCP}}]
endpoints:
{endpoints}---
"
    )
}

/// Port 80 at the VIP `ip`.
fn vip(ip: [u8; 4]) -> SocketAddr {
    SocketAddr::from((ip, 80))
}

/// The value of the sample of `name` whose line has every one of `labels`, if any.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_tcp_route_splits_connections_80_20_between_backend_services() {
    require_env!();
    let mesh = Mesh::start("l4split");
    let client = mesh.n1.add_pod("client", "shop", true);
    let v1 = mesh.n2.add_pod("v1", "shop", true);
    let v2 = mesh.n2.add_pod("v2", "shop", true);
    let _apps = [v1.serve(APP_PORT), v2.serve(APP_PORT)];
    let state: ClusterState = namespaces()
        .pod(&client, "client")
        .pod(&v1, "v1")
        .pod(&v2, "v2");
    let mut extra = service("front", "10.96.7.1", &[]);
    extra += &service("v1", "10.96.7.2", &[&v1]);
    extra += &service("v2", "10.96.7.3", &[&v2]);
    extra += "apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: canary, namespace: shop}
spec:
  parentRefs:
  - {group: \"\", kind: Service, name: front, port: 80}
  rules:
  - backendRefs:
    - {name: v1, port: 80, weight: 80}
    - {name: v2, port: 80, weight: 20}
";
    mesh.apply_with(&state, &extra);

    const N: usize = 2000;
    let mut reached: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..N {
        let outcome = client.connect(vip([10, 96, 7, 1]), &format!("c{i}"));
        let connected = outcome.connected();
        *reached
            .entry(connected.greeting.local.ip().to_string())
            .or_default() += 1;
    }
    let to_v1 = reached.get(&v1.ipv4().to_string()).copied().unwrap_or(0);
    let to_v2 = reached.get(&v2.ipv4().to_string()).copied().unwrap_or(0);
    println!("tcp route split over {N} connections: v1 {to_v1}, v2 {to_v2}");
    assert_eq!(to_v1 + to_v2, N, "only the backends served: {reached:?}");
    // Within ±3 % of 2,000 (the bound): 60 connections, 3.4σ of Binomial(2000, 0.8).
    let off = (to_v1 as f64 - 0.8 * N as f64).abs();
    assert!(
        off <= 0.03 * N as f64,
        "v1 got {to_v1} of {N} (expected 1600 ± 60)"
    );
    // destination_service is the backend chosen, as Istio reports a weighted TCP route.
    let m1 = mesh.p1.metrics();
    assert!(
        sample(
            &m1,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"v2.shop.svc.cluster.local\""]
        )
        .is_some(),
        "{m1}"
    );
}

#[test]
fn a_dead_endpoint_is_retried_on_a_live_one() {
    require_env!();
    let mesh = Mesh::start("l4retry");
    let client = mesh.n1.add_pod("client", "shop", true);
    let live = mesh.n2.add_pod("live", "shop", true);
    // Enrolled and ready in the state, but nothing listens: its node proxy answers 503.
    let dead = mesh.n2.add_pod("dead", "shop", true);
    let _app = live.serve(APP_PORT);
    let state = namespaces()
        .pod(&client, "client")
        .pod(&live, "api")
        .pod(&dead, "api");
    mesh.apply_with(&state, &service("api", "10.96.7.10", &[&live, &dead]));

    const N: usize = 40;
    for i in 0..N {
        let outcome = client.connect(vip([10, 96, 7, 10]), &format!("r{i}"));
        let connected = outcome.connected();
        assert_eq!(connected.greeting.local.ip(), live.ipv4(), "connection {i}");
    }
    // Round robin sent every other connection to the dead endpoint first.
    println!("{N} of {N} connections reached the live endpoint");
    eventually("the retries counted", || {
        let m1 = mesh.p1.metrics();
        let retries = sample(
            &m1,
            "marrow_retries_total",
            &[
                "reporter=\"source\"",
                "destination_service=\"api.shop.svc.cluster.local\"",
                "retry_on=\"connect-failure\"",
            ],
        )
        .unwrap_or(0.0);
        // About half: a retry's pick does not take the next connection's turn, so the dead
        // endpoint is not tried first by every connection after its first failure.
        if (N / 2 - 2) as f64 <= retries && retries <= (N / 2 + 2) as f64 {
            Ok(())
        } else {
            Err(format!("{retries} retries:\n{m1}"))
        }
    });
    // A pod-addressed connection is never sent elsewhere.
    let direct: SocketAddr = SocketAddr::new(dead.ipv4().into(), APP_PORT);
    assert!(!client.connect(direct, "direct").is_ok());
}

#[test]
fn consecutive_connect_failures_eject_an_endpoint_until_its_time_is_up() {
    require_env!();
    let mesh = Mesh::start("l4eject");
    let client = mesh.n1.add_pod("client", "shop", true);
    let live = mesh.n2.add_pod("live", "shop", true);
    let dead = mesh.n2.add_pod("dead", "shop", true);
    let _app = live.serve(APP_PORT);
    let state = namespaces()
        .pod(&client, "client")
        .pod(&live, "api")
        .pod(&dead, "api");
    let mut extra = service("api", "10.96.7.20", &[&live, &dead]);
    extra += "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.shop.svc.cluster.local
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 2s
      maxEjectionPercent: 100
";
    mesh.apply_with(&state, &extra);

    let gauge = format!("endpoint=\"{}:{APP_PORT}\"", dead.ipv4());
    let ejected = |metrics: &str| {
        sample(
            metrics,
            "marrow_endpoint_ejected",
            &["destination_service=\"api.shop.svc.cluster.local\"", &gauge],
        )
    };
    // Two failed connects to the dead endpoint (each retried on the live one) eject it.
    for i in 0..6 {
        let outcome = client.connect(vip([10, 96, 7, 20]), &format!("e{i}"));
        assert_eq!(outcome.connected().greeting.local.ip(), live.ipv4());
    }
    let m1 = mesh.p1.metrics();
    assert_eq!(ejected(&m1), Some(1.0), "{m1}");
    let ejected_at = Instant::now();
    assert!(
        sample(
            &m1,
            "marrow_outlier_ejections_total",
            &["reason=\"consecutive_5xx\""]
        )
        .is_some_and(|n| n >= 1.0),
        "{m1}"
    );
    // While ejected, no connection tries it: no retry more.
    let retries = |m: &str| sample(m, "marrow_retries_total", &[]).unwrap_or(0.0);
    let before = retries(&m1);
    for i in 0..6 {
        let outcome = client.connect(vip([10, 96, 7, 20]), &format!("s{i}"));
        assert_eq!(outcome.connected().greeting.local.ip(), live.ipv4());
    }
    assert_eq!(
        retries(&mesh.p1.metrics()),
        before,
        "an ejected endpoint was tried"
    );
    // Back after baseEjectionTime (2 s × 1st ejection).
    eventually("the endpoint back in service", || {
        let m1 = mesh.p1.metrics();
        match ejected(&m1) {
            Some(0.0) => Ok(()),
            other => Err(format!("gauge {other:?}")),
        }
    });
    println!("ejected endpoint back after {:?}", ejected_at.elapsed());
    assert!(
        ejected_at.elapsed() >= Duration::from_millis(1500),
        "back too soon: {:?}",
        ejected_at.elapsed()
    );
}

#[test]
fn connections_over_max_connections_are_refused_with_uo() {
    require_env!();
    let mesh = Mesh::start("l4limit");
    let client = mesh.n1.add_pod("client", "shop", true);
    let api = mesh.n2.add_pod("api", "shop", true);
    let _app = api.serve(APP_PORT);
    let state = namespaces().pod(&client, "client").pod(&api, "api");
    let mut extra = service("api", "10.96.7.30", &[&api]);
    extra += "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.shop.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 2, connectTimeout: 500ms}
";
    mesh.apply_with(&state, &extra);

    let target = vip([10, 96, 7, 30]).to_string();
    // Two connections held open take this node's two.
    let holder = client.spawn(
        testpod(),
        &["hold", &target, "--connections", "2", "--seconds", "60"],
    );
    holder.wait_for_line("{\"ok\":true", Duration::from_secs(10));
    let refused = client.connect(vip([10, 96, 7, 30]), "third");
    assert!(!refused.is_ok(), "a third connection: {refused:?}");
    eventually("the overflow counted with UO", || {
        let m1 = mesh.p1.metrics();
        sample(
            &m1,
            "istio_tcp_connections_opened_total",
            &[
                "response_flags=\"UO\"",
                "destination_service=\"api.shop.svc.cluster.local\"",
            ],
        )
        .map(|_| ())
        .ok_or(m1)
    });
    // Once they close, connections go through again.
    drop(holder);
    eventually("a connection after the holder left", || {
        let outcome = client.connect(vip([10, 96, 7, 30]), "again");
        if outcome.is_ok() {
            Ok(())
        } else {
            Err(format!("{outcome:?}"))
        }
    });
}

#[test]
fn connect_timeout_bounds_the_connect_to_an_endpoint_that_never_answers() {
    require_env!();
    let mesh = Mesh::start("l4ctimeout");
    let client = mesh.n1.add_pod("client", "shop", true);
    let live = mesh.n2.add_pod("live", "shop", true);
    let _app = live.serve(APP_PORT);
    // A pod the state places on node 2 at an address nobody has: a connect to it hangs
    // (no neighbour answers) until a timeout.
    let [a, b, c, _] = live.ipv4().octets();
    let ghost_ip = std::net::Ipv4Addr::new(a, b, c, 250);
    let ghost = PodRecord {
        name: "ghost".to_owned(),
        uid: "l4ctimeout-ghost-uid".to_owned(),
        ips: vec![ghost_ip.into()],
        ..PodRecord::of(&live, "api")
    };
    let state = namespaces()
        .pod(&client, "client")
        .pod(&live, "api")
        .with_pod(ghost);
    let mut extra = service("api", "10.96.7.40", &[&live]);
    extra = extra.replace(
        "endpoints:\n",
        &format!("endpoints:\n- addresses: [{ghost_ip}]\n"),
    );
    extra += "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: shop}
spec:
  host: api.shop.svc.cluster.local
  trafficPolicy:
    connectionPool:
      tcp: {connectTimeout: 300ms}
";
    mesh.apply_with(&state, &extra);

    // Every other connection tries the ghost first: 300 ms, then the retry on the live one
    // (the global 10 s connect timeout, or the neighbour's 3 s failure, would show).
    for i in 0..4 {
        let started = Instant::now();
        let outcome = client.connect(vip([10, 96, 7, 40]), &format!("t{i}"));
        let took = started.elapsed();
        assert_eq!(
            outcome.connected().greeting.local.ip(),
            live.ipv4(),
            "connection {i}"
        );
        println!("connection {i} took {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "connection {i} took {took:?}"
        );
    }
}
