//! The node proxy's `/metrics` as a real Prometheus sees it: `promtool check metrics` lints the
//! exposition, and a `prometheus` server in the destination node's namespace scrapes the proxy
//! and answers PromQL with Istio's labels and the proxy's health metrics.
//!
//! Needs Debian's `prometheus` package (`prometheus` and `promtool`, installed by `cargo xtask
//! setup`); without it the test prints `SKIPPED: …` and passes.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

use std::fs::File;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use marrow_tests::http::get_in;
use marrow_tests::mesh::STRICT_MESH_WIDE;
use marrow_tests::metrics::count;
use marrow_tests::names::PREFIX;
use marrow_tests::process::{kill_and_reap, tail};
use marrow_tests::state_file::PodRecord;
use marrow_tests::two_nodes::{APP_PORT, CLOSED, Mesh, eventually, namespaces, v4};
use marrow_tests::{Node, require_env, spiffe_id};
use serde_json::Value;

/// Bound on Prometheus answering a query with what the proxy counted (not a timing assertion:
/// it scrapes every second).
const SCRAPE_WAIT: Duration = Duration::from_secs(30);
/// The proxy's metrics port inside its node.
const METRICS_PORT: u16 = 15020;

#[test]
fn prometheus_scrapes_istio_labels_and_promtool_accepts_the_exposition() {
    require_env!();
    let (Some(prometheus), Some(promtool)) = (on_path("prometheus"), on_path("promtool")) else {
        println!(
            "SKIPPED: prometheus or promtool is not on PATH (install Debian's prometheus \
             package: cargo xtask setup)"
        );
        return;
    };
    let mesh = Mesh::start("prom-scrape");
    let client = mesh.n1.add_pod("client", "shop", true);
    let outsider = mesh.n1.add_pod("outsider", "legacy", false);
    let server = mesh.n2.add_pod("server", "shop", true);
    let _app = server.serve(APP_PORT);
    let web = PodRecord::of(&server, "web")
        .with_label("app", "web")
        .with_label("version", "v1");
    let state = namespaces()
        .pod(&client, "client")
        .pod(&outsider, "default")
        .with_pod(web);
    mesh.apply_with(&state, STRICT_MESH_WIDE);

    for i in 0..3 {
        let text = format!("hello-{i}");
        assert_eq!(
            client
                .connect(v4(&server, APP_PORT), &text)
                .connected()
                .echo,
            text
        );
    }
    let refused = outsider.connect(v4(&server, APP_PORT), "plaintext");
    assert!(
        !refused.is_ok(),
        "STRICT must refuse plaintext: {refused:?}"
    );
    let meshed = [
        ("reporter", "destination"),
        ("destination_workload", "server"),
        ("connection_security_policy", "mutual_tls"),
    ];
    eventually("node 2 counted the connections and the denial", || {
        let m = mesh.p2.metrics();
        let closed = count(&m, CLOSED, &meshed);
        let denials = count(&m, DENIALS, &[("reason", "mtls_required")]);
        if (closed, denials) == (3, 1) {
            Ok(())
        } else {
            Err(format!("closed {closed}, denials {denials}\n{m}"))
        }
    });

    // (a) promtool lints the exposition as served to a client that does not ask for
    // OpenMetrics (the classic text format, the only one promtool reads).
    let exposition = mesh.p2.metrics();
    assert!(
        exposition.contains("# TYPE istio_tcp_connections_opened_total counter"),
        "classic text format: counter families carry _total:\n{exposition}"
    );
    let lint = promtool_check_metrics(&promtool, &exposition);
    assert!(
        lint.status.success(),
        "promtool check metrics failed ({}):\n{}{}\nexposition:\n{exposition}",
        lint.status,
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // (b) a real Prometheus scrapes it and answers PromQL.
    let mut prom = PrometheusServer::start(&prometheus, &mesh.n2);
    prom.wait_ready(SCRAPE_WAIT);
    let opened = r#"sum(istio_tcp_connections_opened_total{reporter="destination",destination_workload="server",response_flags="-"})"#;
    let denied = r#"sum(istio_tcp_connections_opened_total{reporter="destination",destination_workload="server",response_flags="DENY"})"#;
    let denials = r#"marrow_policy_denials_total{reason="mtls_required"}"#;
    prom.wait_for_value(opened, 3.0, SCRAPE_WAIT);
    prom.wait_for_value(denied, 1.0, SCRAPE_WAIT);
    prom.wait_for_value(denials, 1.0, SCRAPE_WAIT);

    let series = prom
        .query(r#"istio_tcp_connections_opened_total{reporter="destination",response_flags="-"}"#)
        .expect("query the series");
    assert_eq!(series.len(), 1, "one series: {series:?}");
    let labels = &series[0]["metric"];
    let client_id = spiffe_id("shop", "client");
    let server_id = spiffe_id("shop", "web");
    for (name, want) in [
        ("source_workload", "client"),
        ("source_workload_namespace", "shop"),
        ("source_principal", client_id.as_str()),
        ("source_app", "client"),
        ("source_canonical_service", "client"),
        ("source_canonical_revision", "latest"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "server"),
        ("destination_workload_namespace", "shop"),
        ("destination_principal", server_id.as_str()),
        ("destination_app", "web"),
        ("destination_version", "v1"),
        ("destination_canonical_service", "web"),
        ("destination_canonical_revision", "v1"),
        ("destination_cluster", "Kubernetes"),
        ("destination_service", "unknown"),
        ("request_protocol", "tcp"),
        ("connection_security_policy", "mutual_tls"),
    ] {
        assert_eq!(labels[name], want, "{name} in {labels}");
    }
}

/// The name of the denial counter's samples.
const DENIALS: &str = "marrow_policy_denials_total";

/// `program` in a directory of `PATH`, if there is one.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// `promtool check metrics` with `text` on its stdin.
fn promtool_check_metrics(promtool: &Path, text: &str) -> std::process::Output {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start promtool");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write the exposition to promtool");
    child.wait_with_output().expect("wait for promtool")
}

/// A `prometheus` server in a node's namespace and cgroup, scraping the node proxy's
/// 127.0.0.1:15020 every second. Killed, and its directory (configuration, TSDB, log) removed,
/// on drop, also when the test fails; the node's cgroup kills it too.
struct PrometheusServer {
    child: Child,
    node: Node,
    addr: SocketAddr,
    log: PathBuf,
    /// Dropped after the process is dead (fields drop after `Drop::drop`).
    _dir: tempfile::TempDir,
}

impl PrometheusServer {
    fn start(binary: &Path, node: &Node) -> PrometheusServer {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-prometheus-", node.name()))
            .tempdir()
            .expect("create Prometheus' directory");
        let config = dir.path().join("prometheus.yml");
        let scrape = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: node-proxy\n    static_configs:\n\
             \x20     - targets: [\"127.0.0.1:{METRICS_PORT}\"]\n"
        );
        std::fs::write(&config, scrape).expect("write prometheus.yml");
        let port = node
            .netns()
            .run(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?.local_addr())
            .expect("a free port in the node")
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let log = dir.path().join("prometheus.log");
        let out = File::create(&log).expect("create the Prometheus log");
        let err = out.try_clone().expect("duplicate the log file");
        let child = node
            .command(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        PrometheusServer {
            child,
            node: node.clone(),
            addr,
            log,
            _dir: dir,
        }
    }

    fn get(&self, path: &str) -> anyhow::Result<marrow_tests::HttpResponse> {
        get_in(self.node.netns(), self.addr, path, Duration::from_secs(5))
    }

    /// Waits until `/-/ready` answers 200.
    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", tail(&self.log, 40));
            }
            let last = match self.get("/-/ready") {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("status {}: {}", r.status, r.body.trim()),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                Instant::now() < deadline,
                "prometheus not ready after {timeout:?} (last: {last}):\n{}",
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The `data.result` of an instant query.
    fn query(&self, promql: &str) -> anyhow::Result<Vec<Value>> {
        let response = self.get(&format!("/api/v1/query?query={}", url_encode(promql)))?;
        let body: Value = serde_json::from_str(&response.body)
            .with_context(|| format!("status {}: {}", response.status, response.body))?;
        if response.status != 200 || body["status"] != "success" {
            bail!("status {}: {body}", response.status);
        }
        match &body["data"]["result"] {
            Value::Array(result) => Ok(result.clone()),
            other => bail!("no result array: {other}"),
        }
    }

    /// Polls `promql` until its one sample is `want`.
    fn wait_for_value(&self, promql: &str, want: f64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.query(promql) {
                Ok(result) => {
                    let value = (result.len() == 1)
                        .then(|| result[0]["value"][1].as_str()?.parse::<f64>().ok())
                        .flatten();
                    if value == Some(want) {
                        return;
                    }
                    format!("{result:?}")
                }
                Err(e) => format!("{e:#}"),
            };
            assert!(
                Instant::now() < deadline,
                "Prometheus did not answer {want} to {promql} within {timeout:?} (last: \
                 {last}); targets: {}\nlog:\n{}",
                self.get("/api/v1/targets")
                    .map(|r| r.body)
                    .unwrap_or_default(),
                tail(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query parameter.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn url_encoding_of_queries() {
    assert_eq!(url_encode("a{b=\"c d\"}"), "a%7Bb%3D%22c%20d%22%7D");
}
