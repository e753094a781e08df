//! The node proxy's memory: RSS and PSS freshly started with one enrolled pod, with many idle
//! enrolled pods, and with many idle connections held open through it.
//!
//! One held connection is two relays on a single node (the client's outbound and the server's
//! inbound), i.e. four proxy sockets, so "per held connection" is per end-to-end connection.
//! The connections are held twice: first on the proxy's fresh heap (pages the allocator has
//! never handed out are not resident until written), then, after they closed, again on the
//! heap they left behind (a reused block is cleared by `calloc`, so it is resident whole) —
//! the figure a long-running proxy lives with.

use std::time::Duration;

use anyhow::{Context as _, bail};
use marrow_tests::binaries;
use marrow_tests::testpod::{Held, parse_load_output};
use serde_json::{Value, json};

use super::Params;
use super::procfs::{self, Memory};
use super::setup::{Bed, PodPair, SetUp};

/// How long the proxy's CPU is sampled with the connections held and nothing sent.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(5);
/// Pause before reading memory, so that the step's allocations have settled.
const SETTLE: Duration = Duration::from_millis(500);
/// How long `testpod hold` may take to open its connections.
const HOLD_READY: Duration = Duration::from_secs(120);
/// Descriptors the proxy uses besides the held connections' (listeners, maps, netns, logs).
const PROXY_FD_SLACK: u64 = 512;

/// What [`measure`] found.
#[derive(Clone, Debug)]
pub struct MemoryFigures {
    /// With one enrolled pod, freshly started.
    pub fresh: Memory,
    /// Enrolled pods in the second step.
    pub pods: u64,
    /// With `pods` idle enrolled pods.
    pub with_pods: Memory,
    /// Just before opening the held connections (`pods` + the client and server pod).
    pub before_held: Memory,
    /// Connections held.
    pub held: u64,
    /// With `held` idle connections open through the proxy.
    pub with_held: Memory,
    /// After those connections closed.
    pub after_close: Memory,
    /// With `held` connections open again, on the reused heap.
    pub with_held_again: Memory,
    /// The proxy's CPU (user + system) while `pods` pods are enrolled and `held` idle
    /// connections are open: milliseconds per second over [`IDLE_CPU_WINDOW`].
    pub idle_cpu_ms_per_s: f64,
}

impl MemoryFigures {
    /// KiB of RSS per enrolled pod beyond the first.
    pub fn rss_per_pod_kib(&self) -> f64 {
        per(
            self.with_pods.rss_kib,
            self.fresh.rss_kib,
            self.pods.saturating_sub(1),
        )
    }

    /// KiB of RSS per held connection.
    pub fn rss_per_connection_kib(&self) -> f64 {
        per(self.with_held.rss_kib, self.before_held.rss_kib, self.held)
    }

    /// KiB of PSS per held connection.
    pub fn pss_per_connection_kib(&self) -> f64 {
        per(self.with_held.pss_kib, self.before_held.pss_kib, self.held)
    }

    /// KiB of RSS per held connection the second time, over the same baseline.
    pub fn rss_per_connection_again_kib(&self) -> f64 {
        per(
            self.with_held_again.rss_kib,
            self.before_held.rss_kib,
            self.held,
        )
    }

    /// Table rows: label, value.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mib = |kib: u64| format!("{:.1}", kib as f64 / 1024.0);
        vec![
            (
                "node-proxy RSS MiB, fresh, 1 enrolled pod".to_owned(),
                mib(self.fresh.rss_kib),
            ),
            ("  PSS MiB".to_owned(), mib(self.fresh.pss_kib)),
            (
                format!("node-proxy RSS MiB, {} enrolled pods", self.pods),
                mib(self.with_pods.rss_kib),
            ),
            ("  PSS MiB".to_owned(), mib(self.with_pods.pss_kib)),
            (
                "  KiB RSS per enrolled pod".to_owned(),
                format!("{:.1}", self.rss_per_pod_kib()),
            ),
            (
                format!("node-proxy RSS MiB, {} held connections", self.held),
                mib(self.with_held.rss_kib),
            ),
            ("  PSS MiB".to_owned(), mib(self.with_held.pss_kib)),
            (
                "  KiB RSS per held connection".to_owned(),
                format!("{:.1}", self.rss_per_connection_kib()),
            ),
            (
                "  RSS MiB after they closed".to_owned(),
                mib(self.after_close.rss_kib),
            ),
            (
                format!("node-proxy RSS MiB, {} held again (heap reused)", self.held),
                mib(self.with_held_again.rss_kib),
            ),
            (
                "  KiB RSS per held connection (heap reused)".to_owned(),
                format!("{:.1}", self.rss_per_connection_again_kib()),
            ),
            (
                format!(
                    "node-proxy CPU ms/s, {} pods + {} idle connections",
                    self.pods, self.held
                ),
                format!("{:.2}", self.idle_cpu_ms_per_s),
            ),
        ]
    }

    /// The figures as JSON (KiB).
    pub fn json(&self) -> Value {
        let m = |m: &Memory| json!({ "rss_kib": m.rss_kib, "pss_kib": m.pss_kib });
        json!({
            "fresh_1_pod": m(&self.fresh),
            "pods": self.pods,
            "with_pods": m(&self.with_pods),
            "rss_kib_per_pod": self.rss_per_pod_kib(),
            "before_held": m(&self.before_held),
            "held_connections": self.held,
            "with_held": m(&self.with_held),
            "rss_kib_per_connection": self.rss_per_connection_kib(),
            "pss_kib_per_connection": self.pss_per_connection_kib(),
            "after_close": m(&self.after_close),
            "with_held_again": m(&self.with_held_again),
            "idle_cpu_ms_per_s": self.idle_cpu_ms_per_s,
            "rss_kib_per_connection_heap_reused": self.rss_per_connection_again_kib(),
        })
    }
}

fn per(after: u64, before: u64, count: u64) -> f64 {
    (after as f64 - before as f64) / count.max(1) as f64
}

/// Builds a marrow node and measures the proxy at each step.
pub fn measure(params: &Params) -> anyhow::Result<MemoryFigures> {
    let mut bed = Bed::new(SetUp::Marrow, "bench-memory")?;
    let pid = bed.proxy_pid().context("the marrow set-up runs a proxy")?;
    let read = |what: &str| -> anyhow::Result<Memory> {
        std::thread::sleep(SETTLE);
        let m = procfs::memory(pid).with_context(|| format!("node-proxy memory {what}"))?;
        println!(
            "    node-proxy {what}: RSS {} KiB, PSS {} KiB",
            m.rss_kib, m.pss_kib
        );
        Ok(m)
    };
    let mut idle = vec![bed.add_pod("idle1")];
    let fresh = read("fresh, 1 enrolled pod")?;
    for n in 2..=params.memory_pods {
        idle.push(bed.add_pod(&format!("idle{n}")));
    }
    let with_pods = read(&format!("with {} enrolled pods", params.memory_pods))?;
    bed.check_alive()?;

    let held = fd_budget(pid, params.held_connections)?;
    let pair = bed.pod_pair()?;
    let before_held = read("before holding connections")?;
    let (held, with_held) = hold(&mut bed, &pair, held, &read, "", || idle_cpu(pid))?;
    let after_close = read("after they closed")?;
    let mut idle_cpu_ms_per_s = f64::NAN;
    let (_, with_held_again) = hold(&mut bed, &pair, held, &read, " again", || {
        idle_cpu_ms_per_s = idle_cpu(pid)?;
        Ok(idle_cpu_ms_per_s)
    })?;
    Ok(MemoryFigures {
        fresh,
        pods: params.memory_pods,
        with_pods,
        before_held,
        held,
        with_held,
        after_close,
        with_held_again,
        idle_cpu_ms_per_s,
    })
}

/// The proxy's CPU milliseconds per second over [`IDLE_CPU_WINDOW`].
fn idle_cpu(pid: u32) -> anyhow::Result<f64> {
    let before = procfs::cpu_ticks(pid)?;
    std::thread::sleep(IDLE_CPU_WINDOW);
    let ticks = procfs::cpu_ticks(pid)?.saturating_sub(before);
    let ms = ticks as f64 * 1000.0 / procfs::clock_ticks_per_second() as f64;
    Ok(ms / IDLE_CPU_WINDOW.as_secs_f64())
}

/// Holds `wanted` connections from the pair's client to its echo server and reads the proxy's
/// memory while they are open; they close when this returns.
fn hold(
    bed: &mut Bed,
    pair: &PodPair,
    wanted: u64,
    read: &dyn Fn(&str) -> anyhow::Result<Memory>,
    again: &str,
    mut while_held: impl FnMut() -> anyhow::Result<f64>,
) -> anyhow::Result<(u64, Memory)> {
    let mut holder = pair.client().spawn(
        binaries::testpod(),
        &[
            "hold",
            &pair.echo().to_string(),
            "--connections",
            &wanted.to_string(),
            "--seconds",
            "600",
        ],
    );
    let line = holder.next_line(HOLD_READY).unwrap_or_default();
    let outcome = parse_load_output::<Held>(&line)
        .map_err(anyhow::Error::msg)
        .and_then(|o| o.map_err(|f| anyhow::anyhow!("{:?}: {}", f.kind, f.detail)))
        .with_context(|| format!("testpod hold: {}", holder.log()))?;
    println!(
        "    {} connections held{again} (opened in {} ms)",
        outcome.held, outcome.elapsed_ms
    );
    let memory = read(&format!("with {} held connections{again}", outcome.held))?;
    let cpu = while_held()?;
    println!(
        "    node-proxy CPU with {} idle connections held{again}: {cpu:.2} ms/s",
        outcome.held
    );
    bed.check_alive()?;
    holder.kill();
    Ok((outcome.held, memory))
}

/// `wanted`, or fewer when the proxy's open-files limit does not allow four sockets per held
/// connection (the reduction is printed).
fn fd_budget(pid: u32, wanted: u64) -> anyhow::Result<u64> {
    let limit = procfs::open_files_limit(pid)?;
    let budget = limit.saturating_sub(PROXY_FD_SLACK) / 4;
    if budget == 0 {
        bail!("node-proxy may open only {limit} files; it cannot hold connections");
    }
    if budget < wanted {
        println!(
            "    node-proxy may open {limit} files: holding {budget} connections, not {wanted}"
        );
    }
    Ok(budget.min(wanted))
}
