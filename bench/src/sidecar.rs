//! The sidecar baseline: one Envoy per pod, in the pod's network namespace and cgroup (so its
//! CPU and memory are the pod's, and the pod's cgroup kills it), configured by a static
//! bootstrap written here — Istio's sidecar data path for TCP, minus the iptables REDIRECT.
//!
//! Every sidecar has, for each [`Route`] (an app port of the server pod):
//! - an outbound listener on `127.0.0.1:<outbound>`, a `tcp_proxy` to the peer pod's
//!   `<inbound>` port over mTLS (`UpstreamTlsContext`: the pod's certificate, the peer's SPIFFE
//!   ID required as a URI SAN, the mesh CA as the only trust anchor);
//! - an inbound listener on `0.0.0.0:<inbound>` that requires and verifies a client
//!   certificate (`DownstreamTlsContext`: the mesh CA, any SPIFFE ID of the trust domain, as
//!   Istio's inbound does) and `tcp_proxy`s to `127.0.0.1:<app>`.
//!
//! TLS 1.3 only; certificates are ECDSA P-256 with SPIFFE URI SANs from the same kind of mesh
//! CA marrow uses. The admin interface is on `127.0.0.1:15000` in the pod (`/ready`,
//! `/stats`). Envoy runs with `--concurrency 2` (Istio's sidecar default) and
//! `--disable-hot-restart` (no shared memory between the many Envoys of one host).

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use marrow_tests::workload_cert::CertFiles;
use marrow_tests::{Pod, PodProcess};
use serde_json::{Value, json};

/// Envoy's admin port, on 127.0.0.1 in each pod.
pub const ADMIN_PORT: u16 = 15000;
/// Worker threads of every Envoy: Istio's sidecar default (`proxy.istio.io/config`
/// `concurrency: 2`).
pub const CONCURRENCY: u32 = 2;
/// How long an Envoy may take to report ready (many start at once on two cores).
const READY: Duration = Duration::from_secs(60);
/// Bound on one admin request.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Lines of an Envoy log quoted when it fails.
const LOG_TAIL: usize = 30;
/// Envoy's types, as `@type` URLs.
const TCP_PROXY: &str =
    "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";

/// One app port reached through the sidecars (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The app's port in the server pod.
    pub app: u16,
    /// The client Envoy's listener on 127.0.0.1, what the load generator connects to.
    pub outbound: u16,
    /// The server Envoy's mTLS listener on the pod's address.
    pub inbound: u16,
}

/// What one Envoy is configured with.
pub struct Bootstrap<'a> {
    /// The app ports, each with an outbound and an inbound listener.
    pub routes: &'a [Route],
    /// This pod's certificate and key.
    pub identity: &'a CertFiles,
    /// The mesh CA certificate, the only trust anchor.
    pub ca_cert: &'a Path,
    /// The pod the outbound listeners go to.
    pub peer: Ipv4Addr,
    /// The SPIFFE ID that pod must present.
    pub peer_id: &'a str,
    /// Inbound clients must present a SPIFFE ID of this trust domain.
    pub trust_domain: &'a str,
}

impl Bootstrap<'_> {
    /// The static bootstrap, as JSON (which Envoy reads as the YAML subset it is).
    pub fn json(&self) -> Value {
        let peer = self.peer.to_string();
        let mut listeners = Vec::new();
        let mut clusters = Vec::new();
        for route in self.routes {
            let out = format!("outbound_{}", route.app);
            listeners.push(json!({
                "name": out,
                "address": config::address("127.0.0.1", route.outbound),
                "filter_chains": [tcp_proxy(&out)],
            }));
            let mut upstream = config::static_cluster(&out, &peer, route.inbound);
            upstream["transport_socket"] =
                config::upstream_mtls(self.identity, self.ca_cert, self.peer_id);
            clusters.push(upstream);

            let inbound = format!("inbound_{}", route.app);
            let mut chain = tcp_proxy(&inbound);
            chain["transport_socket"] =
                config::downstream_mtls(self.identity, self.ca_cert, self.trust_domain);
            listeners.push(json!({
                "name": inbound,
                "address": config::address("0.0.0.0", route.inbound),
                "filter_chains": [chain],
            }));
            clusters.push(config::static_cluster(&inbound, "127.0.0.1", route.app));
        }
        config::bootstrap(listeners, clusters)
    }
}

/// A filter chain that relays bytes to `cluster` (`tcp_proxy`).
fn tcp_proxy(cluster: &str) -> Value {
    json!({ "filters": [{
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": { "@type": TCP_PROXY, "stat_prefix": cluster, "cluster": cluster },
    }]})
}

/// The command-line flags of every sidecar Envoy, after `-c <bootstrap>`.
pub fn flags() -> Vec<String> {
    [
        "--concurrency",
        &CONCURRENCY.to_string(),
        "--disable-hot-restart",
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// A running sidecar Envoy; killed on drop (and with its pod's cgroup).
pub struct Sidecar {
    process: PodProcess,
}

impl Sidecar {
    /// Writes `bootstrap` (a sidecar's [`Bootstrap::json`], or the L7 hop's
    /// [`l7_hop::L7Hop::json`]) to `dir/envoy.json` and starts `envoy` in `pod` (namespace and
    /// cgroup); [`Sidecar::wait_ready`] waits until it serves.
    pub fn start(
        pod: &Pod,
        envoy: &Path,
        bootstrap: &Value,
        dir: &Path,
    ) -> anyhow::Result<Sidecar> {
        let config = dir.join("envoy.json");
        let text = serde_json::to_string_pretty(bootstrap)?;
        std::fs::write(&config, text + "\n")
            .with_context(|| format!("writing {}", config.display()))?;
        let config = config.display().to_string();
        let mut args = vec!["-c".to_owned(), config];
        args.extend(flags());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Ok(Sidecar {
            process: pod.spawn(envoy, &args),
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Waits until `GET /ready` on its admin port answers 200 (every listener is up).
    pub fn wait_ready(&mut self, pod: &Pod) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY;
        loop {
            self.check_alive(pod)?;
            let last = match admin_get(pod, "/ready") {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => format!("/ready answered {status} {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "envoy in pod {} was not ready within {READY:?} ({last}); log tail:\n{}",
                    pod.name(),
                    marrow_tests::process::tail(self.process.log_path(), LOG_TAIL)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails when it has exited, quoting its log.
    pub fn check_alive(&mut self, pod: &Pod) -> anyhow::Result<()> {
        if let Some(status) = self.process.try_wait() {
            bail!(
                "envoy in pod {} exited ({status}); log tail:\n{}",
                pod.name(),
                marrow_tests::process::tail(self.process.log_path(), LOG_TAIL)
            );
        }
        Ok(())
    }

    /// Its counters and gauges (`GET /stats`).
    pub fn stats(&self, pod: &Pod) -> anyhow::Result<Stats> {
        let (status, body) = admin_get(pod, "/stats")
            .with_context(|| format!("reading the stats of the envoy in pod {}", pod.name()))?;
        if status != 200 {
            bail!(
                "GET /stats of the envoy in pod {} answered {status}",
                pod.name()
            );
        }
        parse_stats(&body)
            .with_context(|| format!("parsing the stats of the envoy in pod {}", pod.name()))
    }

    /// Lines of its log at warning level or worse, how many and the first (a sidecar that
    /// drops connections under load says why here).
    pub fn problems(&self) -> Option<(usize, String)> {
        let log = self.process.log();
        let mut lines = log.lines().filter(|l| {
            l.contains("][warning][") || l.contains("][error][") || l.contains("][critical][")
        });
        let first = lines.next()?.to_owned();
        Some((lines.count() + 1, first))
    }
}

/// `GET path` on the admin port of the Envoy in `pod`: HTTP/1.1 (Envoy answers HTTP/1.0
/// with 426), `Connection: close`, so the response ends at EOF. Returns status and body.
fn admin_get(pod: &Pod, path: &str) -> anyhow::Result<(u16, String)> {
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT));
    pod.netns().run(|| {
        let mut stream = TcpStream::connect_timeout(&admin, ADMIN_TIMEOUT)
            .with_context(|| format!("connecting to {admin}"))?;
        stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
        stream.set_write_timeout(Some(ADMIN_TIMEOUT))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .with_context(|| format!("sending GET {path}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .with_context(|| format!("reading the answer to GET {path}"))?;
        parse_http11(&raw).with_context(|| format!("the answer to GET {path}"))
    })
}

/// Status and body of an HTTP/1.1 response read to EOF, chunked or not.
fn parse_http11(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("no end of headers in {} bytes", raw.len()))?;
    let head = std::str::from_utf8(&raw[..split]).context("headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.split_whitespace();
    let status = match (words.next(), words.next().map(str::parse::<u16>)) {
        (Some(v), Some(Ok(status))) if v.starts_with("HTTP/1.") => status,
        _ => bail!("bad status line {status_line:?}"),
    };
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let mut body = &raw[split + 4..];
    if !chunked {
        return Ok((status, String::from_utf8_lossy(body).into_owned()));
    }
    let mut out = Vec::new();
    loop {
        let end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("a chunk size line without an end")?;
        let line = std::str::from_utf8(&body[..end]).context("a chunk size is not UTF-8")?;
        let hex = line.split(';').next().unwrap_or_default().trim();
        let size =
            usize::from_str_radix(hex, 16).with_context(|| format!("bad chunk size {line:?}"))?;
        body = &body[end + 2..];
        if size == 0 {
            return Ok((status, String::from_utf8_lossy(&out).into_owned()));
        }
        if body.len() < size + 2 || &body[size..size + 2] != b"\r\n" {
            bail!("a chunk of {size} bytes is cut short");
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Envoy's counters and gauges by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats(BTreeMap<String, u64>);

impl Stats {
    /// The sum of every stat whose name starts with `prefix` and ends with `suffix`.
    pub fn sum(&self, prefix: &str, suffix: &str) -> u64 {
        self.0
            .iter()
            .filter(|(name, _)| name.starts_with(prefix) && name.ends_with(suffix))
            .map(|(_, value)| value)
            .sum()
    }

    /// mTLS handshakes this Envoy completed as a client (its outbound clusters) and as a
    /// server (its listeners), and how many of all of them resumed a session.
    pub fn tls(&self) -> TlsCounts {
        TlsCounts {
            as_client: self.sum("cluster.outbound_", ".ssl.handshake"),
            as_server: self.sum("listener.", ".ssl.handshake"),
            resumed: self.sum("cluster.outbound_", ".ssl.session_reused")
                + self.sum("listener.", ".ssl.session_reused"),
        }
    }
}

/// TLS handshakes an Envoy counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlsCounts {
    /// Completed on its outbound clusters.
    pub as_client: u64,
    /// Completed on its listeners.
    pub as_server: u64,
    /// Of both, the resumed ones.
    pub resumed: u64,
}

/// Parses the text of `GET /stats`: one `name: value` per line. Counters and gauges are
/// integers; histograms (`P0(…) P25(…) …`, or `No recorded values`) are left out.
pub fn parse_stats(text: &str) -> anyhow::Result<Stats> {
    let mut stats = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (name, value) = line
            .split_once(": ")
            .with_context(|| format!("line {}: {line:?} is not `name: value`", n + 1))?;
        if name.is_empty() || name.contains(char::is_whitespace) {
            bail!("line {}: bad stat name {name:?}", n + 1);
        }
        let value = value.trim();
        match value.parse::<u64>() {
            Ok(v) => {
                stats.insert(name.to_owned(), v);
            }
            Err(_) if value.starts_with("P0(") || value == "No recorded values" => {}
            Err(_) => bail!("line {}: {name} has the value {value:?}", n + 1),
        }
    }
    if stats.is_empty() {
        bail!("no counters in {} bytes", text.len());
    }
    Ok(Stats(stats))
}

mod config;
pub mod l7_hop;
#[cfg(test)]
mod tests;
