//! Production identity end to end: node proxies without a CA key, taking their pods'
//! certificates from `node-proxy ca serve` over Istio's CA protocol. Two nodes, each with its
//! own replay API server (the replay-apiserver crate, the same objects in both) and a `--kube`
//! proxy; the CA runs in node 1's network namespace and cgroup on the underlay address, checks
//! each proxy's token with a TokenReview of node 1's replay server (the token is bound to that
//! node's node-proxy pod) and signs only identities of pods on the caller's node.
//!
//! One test walks through the life of the mesh's identity: issuance (mTLS between the nodes,
//! `/certificates`, the CA's grants), a CA outage (cached certificates keep serving, readiness
//! and metrics say renewals fail, a restarted CA heals it) and a root rotation (old + new roots,
//! a new signing CA, new roots only) under a stream of new connections, none of which may fail.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use marrow_tests::binaries::node_proxy;
use marrow_tests::metrics::sum;
use marrow_tests::process::{kill_and_reap, print_tail, strip_ansi, tail};
use marrow_tests::proxy::READINESS_PORT;
use marrow_tests::{
    ConnectOutcome, Conversation, MeshCa, Node, NodeLink, NodeOptions, Pod, Proxy, ProxyOptions,
    require_env, spiffe_id,
};
use replay_apiserver::{ApiServer, objects};
use serde_json::Value;

const APP_PORT: u16 = 8080;
/// The proxy's admin API inside each node (its default `--admin-addr`).
const ADMIN_PORT: u16 = 15000;
/// Where the CA listens on node 1's underlay address (istiod's port).
const CA_PORT: u16 = 15012;
/// The name the CA's serving certificate carries, and the proxies check.
const CA_NAME: &str = "marrow-ca.marrow-system.svc";
/// The node proxies' ServiceAccount, which the CA lets ask for their pods' identities.
const PROXY_NAMESPACE: &str = "marrow-system";
const PROXY_ACCOUNT: &str = "node-proxy";
/// The audience of the proxies' tokens.
const AUDIENCE: &str = "istio-ca";
/// Lifetime of node 1's workload certificates: renewed at half-life (every 2–3 s), expired
/// after 6 s. Node 2's live longer (`CERT_TTL_SECS_TWO`), so the two sides renew at different
/// instants and, during a root rotation, tunnels pair an old-CA with a new-CA certificate.
const CERT_TTL_SECS: u64 = 6;
/// Lifetime of node 2's workload certificates.
const CERT_TTL_SECS_TWO: u64 = 9;
/// Bound on every wait.
const WITHIN: Duration = Duration::from_secs(30);
const OPENED: &str = "istio_tcp_connections_opened_total";
const RENEWAL_FAILURES: &str = "marrow_certificate_renewal_failures";
const FETCH_FAILURES: &str = "marrow_certificate_fetch_failures_total";
const LOG_TAIL_LINES: usize = 80;

/// A node with its replay API server, the files its proxy is given, and the proxy.
struct IdentityNode {
    proxy: Option<Proxy>,
    api: ApiServer,
    roots: PathBuf,
    node: Node,
}

impl IdentityNode {
    fn proxy(&self) -> &Proxy {
        self.proxy.as_ref().expect("the proxy was started")
    }
}

/// `node-proxy ca serve` in a node (its netns and cgroup); killed on drop.
struct CaServer {
    node: Node,
    args: Vec<String>,
    kubeconfig: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl CaServer {
    /// Starts the CA on `listen` with the CA files of `ca_dir`, asking the API server that
    /// `kubeconfig` names; returns once it has loaded its CA.
    fn start(node: &Node, listen: SocketAddr, ca_dir: &Path, kubeconfig: PathBuf) -> CaServer {
        // Temporary paths hold no spaces.
        let args = format!(
            "ca serve --listen {listen} --ca-dir {} --trust-domain cluster.local \
             --node-proxy-accounts {PROXY_NAMESPACE}/{PROXY_ACCOUNT} --audience {AUDIENCE} \
             --serving-names {CA_NAME} --max-cert-ttl-secs 60 \
             --metrics-addr 127.0.0.1:15114 --readiness-addr 127.0.0.1:15121",
            ca_dir.display()
        );
        let args = args.split_whitespace().map(str::to_owned).collect();
        let mut ca = CaServer {
            node: node.clone(),
            args,
            kubeconfig,
            log: node.log_dir().join("ca.log"),
            child: None,
        };
        ca.spawn();
        ca
    }

    /// Starts the process (its log appended to) and waits until it has loaded its CA.
    fn spawn(&mut self) {
        let loaded_before = self.log().matches("ca loaded").count();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the CA's log");
        let stderr = log.try_clone().expect("duplicate the log file");
        let child = self
            .node
            .command(node_proxy())
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .expect("start node-proxy ca serve");
        self.child = Some(child);
        let started = Instant::now();
        while self.log().matches("ca loaded").count() == loaded_before {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && started.elapsed() < WITHIN,
                "the CA did not load its files (exit: {exited:?}); log tail:\n{}",
                tail(&self.log, LOG_TAIL_LINES)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: the CA is gone at once, as when its pod is lost.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
    }

    /// The whole log, without colour codes.
    fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for CaServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            print_tail("node-proxy ca serve log", &self.log, LOG_TAIL_LINES);
        }
    }
}

/// Sets a flag when dropped (also while a test panics), so a background loop ends.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Replaces `path` as a mounted Secret or ConfigMap changes: a new file renamed over it.
fn replace_file(path: &Path, contents: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).expect("write the new file");
    std::fs::rename(&tmp, path).expect("rename the new file into place");
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read a CA file")
}

/// The name of node `node`'s node-proxy pod.
fn proxy_pod_name(node: &Node) -> String {
    format!("node-proxy-{}", node.name())
}

/// The node-proxy pod of `node` (host network, on the underlay address `ip`).
fn proxy_pod(node: &Node, ip: IpAddr) -> Value {
    let name = proxy_pod_name(node);
    let mut pod = objects::pod(
        PROXY_NAMESPACE,
        &name,
        node.name(),
        &ip.to_string(),
        PROXY_ACCOUNT,
    );
    pod["metadata"]["uid"] = Value::String(format!("uid-{name}"));
    pod["spec"]["hostNetwork"] = Value::Bool(true);
    pod
}

/// Starts `node`'s replay API server holding the namespaces and both node-proxy pods, knowing
/// both proxies' tokens; writes its proxy's token, the roots and the kubeconfig.
fn start_api(
    runtime: &tokio::runtime::Runtime,
    node: Node,
    nodes: [(&Node, IpAddr); 2],
    roots_pem: &[u8],
) -> IdentityNode {
    let listener = node
        .netns()
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind in the node's netns");
    let api = {
        let _entered = runtime.enter();
        ApiServer::start_on(listener)
    };
    api.seed([
        objects::namespace("shop", true),
        objects::namespace(PROXY_NAMESPACE, false),
    ]);
    for (each, ip) in nodes {
        api.apply(proxy_pod(each, ip));
        let name = proxy_pod_name(each);
        let uid = format!("uid-{name}");
        api.add_token(
            &token_of(each),
            &[AUDIENCE],
            objects::service_account_user(
                PROXY_NAMESPACE,
                PROXY_ACCOUNT,
                Some((&name, &uid, each.name())),
            ),
        );
    }
    std::fs::write(node.temp_dir().join("kubeconfig"), api.kubeconfig()).expect("kubeconfig");
    std::fs::write(node.temp_dir().join("token"), token_of(&node)).expect("token");
    let roots = node.temp_dir().join("roots.pem");
    std::fs::write(&roots, roots_pem).expect("roots");
    IdentityNode {
        proxy: None,
        api,
        roots,
        node,
    }
}

fn token_of(node: &Node) -> String {
    format!("projected-token-of-{}", node.name())
}

/// Starts the `--kube` proxy of `n`, with certificates from the CA at `ca`.
fn start_proxy(n: &mut IdentityNode, ca: SocketAddr, cert_ttl_secs: u64) {
    let dir = n.node.temp_dir();
    let args = format!(
        "--kube --node-name {} --ca-address https://{ca} --ca-server-name {CA_NAME} \
         --ca-roots {} --ca-token-file {} --ca-roots-poll-ms 200 --cert-ttl-secs {cert_ttl_secs}",
        n.node.name(),
        n.roots.display(),
        dir.join("token").display()
    );
    let mut proxy = n.node.start_proxy_with(ProxyOptions {
        extra_args: args.split_whitespace().map(str::to_owned).collect(),
        env: vec![(
            "KUBECONFIG".into(),
            dir.join("kubeconfig").display().to_string(),
        )],
        ..ProxyOptions::default()
    });
    proxy
        .wait_ready(WITHIN)
        .expect("a proxy with a remote CA gets ready");
    n.proxy = Some(proxy);
}

/// The Pod object of a pod the CNI chain created.
fn pod_object(pod: &Pod, service_account: &str) -> Value {
    let mut object = objects::pod(
        pod.namespace(),
        pod.name(),
        pod.node().name(),
        &pod.ipv4().to_string(),
        service_account,
    );
    object["metadata"]["uid"] = Value::String(pod.uid().to_owned());
    object
}

/// Connections from `source` to `destination` in mutual TLS, as `n`'s proxy (the
/// destination's) counts them.
fn mtls_opened(n: &IdentityNode, source: &str, destination: &str) -> f64 {
    let labels = [
        ("reporter", "destination"),
        ("connection_security_policy", "mutual_tls"),
        ("source_principal", source),
        ("destination_principal", destination),
    ];
    sum(&n.proxy().metrics(), OPENED, &labels)
}

/// Retries `attempt` until it holds.
fn until(what: &str, mut attempt: impl FnMut() -> bool) {
    let started = Instant::now();
    while !attempt() {
        assert!(started.elapsed() < WITHIN, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/certificates` of the node's proxy (empty while it cannot be read).
fn certificates(node: &Node) -> Vec<Value> {
    node.http_get(ADMIN_PORT, "/certificates")
        .ok()
        .filter(|r| r.status == 200)
        .and_then(|r| serde_json::from_str::<Value>(&r.body).ok())
        .and_then(|v| v["certificates"].as_array().cloned())
        .unwrap_or_default()
}

/// The node's certificate of `identity`, if it holds one.
fn certificate(node: &Node, identity: &str) -> Option<Value> {
    certificates(node)
        .into_iter()
        .find(|c| c["identity"] == identity)
}

/// How many roots every certificate of the node trusts, if they all agree.
fn trusted_roots(node: &Node) -> Option<usize> {
    let counts: Vec<usize> = certificates(node)
        .iter()
        .map(|c| c["trusted_roots"].as_array().map_or(0, Vec::len))
        .collect();
    let first = *counts.first()?;
    counts.iter().all(|c| *c == first).then_some(first)
}

/// `/healthz/ready`: asserts it answers 200 (a proxy serving cached certificates is ready) and
/// returns the body.
fn readiness(node: &Node) -> Option<String> {
    let r = node.http_get(READINESS_PORT, "/healthz/ready").ok()?;
    assert_eq!(r.status, 200, "{}: readiness {}", node.name(), r.body);
    Some(r.body)
}

/// `key=value` of a log line (quotes removed), if present.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
        .map(|v| v.trim_matches('"'))
}

/// The `(node, identity)` of every certificate the CA issued, as its log says.
fn grants(ca_log: &str) -> Vec<(String, String)> {
    ca_log
        .lines()
        .filter(|l| l.contains("certificate issued"))
        .map(|l| {
            (
                field(l, "node").unwrap_or("-").to_owned(),
                field(l, "identity").unwrap_or("-").to_owned(),
            )
        })
        .collect()
}

/// Connects once from `client` to `addr`; whether `text` came back.
fn echoes(client: &Pod, addr: SocketAddr, text: &str) -> Result<(), String> {
    match client.connect(addr, text) {
        ConnectOutcome::Connected(c) if c.echo == text => Ok(()),
        other => Err(format!("{text}: {other:?}")),
    }
}

#[test]
fn proxies_take_certificates_from_the_ca_through_outage_and_root_rotation() {
    require_env!();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let old_ca = MeshCa::create("ident-e2e-old");
    let new_ca = MeshCa::create("ident-e2e-new");
    let options = |index| NodeOptions {
        dual_stack: false,
        index: Some(index),
    };
    let node_one = Node::with_options("ident-e2e-1", options(1));
    let node_two = Node::with_options("ident-e2e-2", options(2));
    let link = NodeLink::between(&node_one, &node_two);
    let nodes = [(&node_one, link.a_ip), (&node_two, link.b_ip)];
    let old_pem = read(&old_ca.cert_path());
    let mut one = start_api(&runtime, node_one.clone(), nodes, &old_pem);
    let mut two = start_api(&runtime, node_two.clone(), nodes, &old_pem);

    // The CA in node 1, with its own copy of the CA files (the mounted Secret).
    let ca_dir = one.node.temp_dir().join("ca");
    std::fs::create_dir(&ca_dir).expect("the CA's directory");
    replace_file(&ca_dir.join("ca-cert.pem"), &old_pem);
    replace_file(&ca_dir.join("ca-key.pem"), &read(&old_ca.key_path()));
    let ca_addr = SocketAddr::new(link.a_ip, CA_PORT);
    let mut ca = CaServer::start(
        &one.node,
        ca_addr,
        &ca_dir,
        one.node.temp_dir().join("kubeconfig"),
    );
    start_proxy(&mut one, ca_addr, CERT_TTL_SECS);
    start_proxy(&mut two, ca_addr, CERT_TTL_SECS_TWO);

    let client = one.node.add_pod("client", "shop", true);
    let server = two.node.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    for api in [&one.api, &two.api] {
        api.apply(pod_object(&client, "client"));
        api.apply(pod_object(&server, "server"));
    }
    let addr = SocketAddr::new(server.ipv4().into(), APP_PORT);
    let client_id = spiffe_id("shop", "client");
    let server_id = spiffe_id("shop", "server");

    // Issuance: mTLS between the nodes with both identities from the CA.
    until("an mTLS connection with certificates from the CA", || {
        echoes(&client, addr, "hello").is_ok() && mtls_opened(&two, &client_id, &server_id) > 0.0
    });
    for (n, id) in [(&one, &client_id), (&two, &server_id)] {
        let cert = certificate(&n.node, id).unwrap_or_else(|| {
            panic!("{}: no certificate for {id}", n.node.name());
        });
        assert_eq!(cert["state"], "valid", "{cert}");
        assert_eq!(cert["trusted_roots"].as_array().map(Vec::len), Some(1));
        assert_eq!(certificates(&n.node).len(), 1, "only the node's own pod");
    }
    check_grants(&ca, &[(&one.node, &client_id), (&two.node, &server_id)]);

    // Outage: cached certificates keep serving, readiness and metrics say renewal fails.
    let mut held =
        Conversation::open(&client, addr).unwrap_or_else(|f| panic!("the held connection: {f:?}"));
    ca.kill();
    assert_eq!(held.say("ca down").expect("held, CA down"), "ca down");
    let cached = echoes(&client, addr, "cached certificates");
    assert!(
        cached.is_ok(),
        "a new connection on cached certificates: {cached:?}"
    );
    // An upgrade during the outage: node 2's successor takes the certificates over with the
    // sockets and serves new connections without the CA.
    let replaced = two.proxy.take().expect("node 2's proxy");
    let mut successor = replaced.start_successor();
    successor
        .wait_for_log("took over from the previous node proxy", WITHIN)
        .expect("the successor takes over");
    let taken = successor
        .log()
        .lines()
        .find(|l| l.contains("workload certificates taken over"))
        .map(strip_ansi)
        .unwrap_or_default();
    assert!(
        taken.contains("certificates=1") && taken.contains("offered=1"),
        "{taken}"
    );
    two.proxy = Some(successor);
    let upgraded = echoes(&client, addr, "after an upgrade, CA down");
    assert!(
        upgraded.is_ok(),
        "a new connection to the successor, on the handed-over certificate: {upgraded:?}"
    );
    for (n, id) in [(&one, &client_id), (&two, &server_id)] {
        until(
            "readiness and metrics reporting the failed renewals",
            || {
                let failing = readiness(&n.node).is_some_and(|body| {
                    body.contains("certificates:") && body.contains("failing to renew")
                });
                let metrics = n.proxy().metrics();
                failing
                    && sum(&metrics, RENEWAL_FAILURES, &[("identity", id)]) > 0.0
                    && sum(&metrics, FETCH_FAILURES, &[("reason", "ca_unavailable")]) > 0.0
            },
        );
    }
    assert_eq!(held.say("still held").expect("held"), "still held");
    ca.spawn();
    for (n, id) in [(&one, &client_id), (&two, &server_id)] {
        until("renewals succeeding after the CA's restart", || {
            readiness(&n.node).is_some_and(|body| body.trim() == "ready")
                && sum(&n.proxy().metrics(), RENEWAL_FAILURES, &[("identity", id)]) == 0.0
                && certificate(&n.node, id).is_some_and(|c| c["state"] == "valid")
        });
    }
    let healed = echoes(&client, addr, "after the outage");
    assert!(healed.is_ok(), "{healed:?}");
    assert_eq!(held.say("after").expect("held"), "after");
    held.close().expect("a clean close");

    // Root rotation while new connections keep coming.
    let stop = AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            let (mut ok, mut failed) = (0_u32, Vec::new());
            while !stop.load(Ordering::SeqCst) {
                match echoes(&client, addr, &format!("rotation-{}", ok + 1)) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (ok, failed)
        });
        let stopper = StopOnDrop(&stop);
        rotate_roots(&one, &two, &ca, &ca_dir, &new_ca);
        drop(stopper);
        traffic
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    });
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:#?}",
        failed.len(),
        ok as usize + failed.len()
    );
    assert!(ok >= 30, "only {ok} connections during the rotation");
    println!("root rotation: {ok} new connections, none failed");
    check_grants(&ca, &[(&one.node, &client_id), (&two.node, &server_id)]);
    drop((ca, one, two, replaced));
}

/// Old + new roots, the CA switched to the new key, new roots only; each step waited for.
///
/// The client's certificates renew more often than the server's, and each client renewal opens
/// a new tunnel: after the switch, tunnels pair the client's new-CA certificate with the
/// server's old-CA one, which only the overlap lets both sides accept (trusting only the new
/// root before the server renewed fails connections: the test catches a premature switch).
fn rotate_roots(
    one: &IdentityNode,
    two: &IdentityNode,
    ca: &CaServer,
    ca_dir: &Path,
    new: &MeshCa,
) {
    let old_pem = std::fs::read(&one.roots).expect("the roots in force");
    let new_pem = read(&new.cert_path());
    let both = [old_pem.as_slice(), new_pem.as_slice()].concat();
    for n in [one, two] {
        replace_file(&n.roots, &both);
    }
    until("both proxies trusting old and new roots", || {
        [one, two].iter().all(|n| trusted_roots(&n.node) == Some(2))
    });

    let reloads = ca.log().matches("ca reloaded").count();
    replace_file(&ca_dir.join("ca-key.pem"), &read(&new.key_path()));
    replace_file(&ca_dir.join("ca-cert.pem"), &new_pem);
    until("the CA signing with the new key", || {
        ca.log().matches("ca reloaded").count() > reloads
    });
    // Every certificate issued from now on is the new CA's; seeing each identity's serial
    // change twice rules out one that was signed just before the reload.
    let holders: Vec<(&Node, String)> = [one, two]
        .into_iter()
        .flat_map(|n| {
            certificates(&n.node)
                .into_iter()
                .filter_map(move |c| Some((&n.node, c["identity"].as_str()?.to_owned())))
        })
        .collect();
    assert_eq!(holders.len(), 2, "one identity per node");
    wait_renewals(&holders, 2, "every identity renewed twice by the new CA");

    for n in [one, two] {
        replace_file(&n.roots, &new_pem);
    }
    until("both proxies trusting the new root only", || {
        [one, two].iter().all(|n| trusted_roots(&n.node) == Some(1))
    });
    // A changed bundle alone opens no new tunnel (the pool is keyed by the certificate); a
    // renewal does: then both sides handshake trusting the new root only.
    wait_renewals(&holders, 1, "a renewal under the new root only");
}

/// Waits until each `(node, identity)` of `holders` has had `times` new certificates (serials
/// seen changing while polling).
fn wait_renewals(holders: &[(&Node, String)], times: usize, what: &str) {
    let mut serials: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    until(what, || {
        for (i, (node, id)) in holders.iter().enumerate() {
            let serial =
                certificate(node, id).and_then(|c| c["serial"].as_str().map(str::to_owned));
            let seen = serials.entry(i).or_default();
            if let Some(serial) = serial
                && seen.last() != Some(&serial)
            {
                seen.push(serial);
            }
        }
        serials.len() == holders.len() && serials.values().all(|s| s.len() > times)
    });
}

/// Asserts the CA issued certificates only for `(node, identity)` pairs of `expected`, each at
/// least once, and refused nothing.
fn check_grants(ca: &CaServer, expected: &[(&Node, &String)]) {
    let log = ca.log();
    let grants = grants(&log);
    for (node, id) in expected {
        assert!(
            grants.iter().any(|(n, i)| n == node.name() && i == *id),
            "no grant of {id} to {}: {grants:?}",
            node.name()
        );
    }
    for (n, i) in &grants {
        assert!(
            expected
                .iter()
                .any(|(node, id)| n == node.name() && i == *id),
            "the CA granted {i} to node {n}:\n{log}"
        );
    }
    assert!(!log.contains("certificate refused"), "{log}");
}
