//! The data plane's memory by pod count: for each mesh set-up that ran and each pod count N
//! ([`Params::memory_pods`]), a fresh bed with a client pod and N - 1 idle pods on node 1 and
//! a server pod (on node 2 across nodes), all enrolled (marrow) or each with its Envoy
//! (sidecars). Read from `/proc/PID/smaps_rollup`, summed over the data plane's processes:
//!
//! - node 1 idle: marrow's node-proxy, or every Envoy on node 1 (one per pod);
//! - node 1 with `held` connections open from the client to the server's echo (`testpod
//!   hold`: every hop established, nothing sent): through the sidecars they run through the
//!   client pod's Envoy (and the server pod's on node 2); through marrow, through node 1's
//!   proxy (and node 2's);
//! - node 1 after they closed (what the allocator keeps), and node 2 idle, while they were
//!   open and after they closed;
//! - on the fewest-pods bed, before they close, [`Params::held_connections_many`] held in all
//!   (10,000 in a full run), read on both nodes: each node proxy's RSS and KiB per connection
//!   at that scale ([`Many`]).
//!
//! Holding 10,000 connections takes more descriptors than the usual limit of 1,024 or so: the
//! bench raises its own open-files limit first ([`OPEN_FILES`]), which the proxies, Envoys
//! and pods it starts inherit, and holds fewer when a process still may not open enough
//! (printed).
//!
//! The data plane's CPU while the largest bed idles with its connections open is read over
//! [`Params::idle_cpu_seconds`]. direct has no data plane: 0 by definition, nothing measured.
//! Every bed starts fresh, so no figure inherits another's heap.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use marrow_tests::testpod::{Held, parse_load_output};
use marrow_tests::{PodProcess, binaries};
use serde_json::{Value, json};

use super::Params;
use super::procfs::{self, Memory};
use super::setup::{Bed, PodPair, SetUp};

/// Pause before reading memory, so that the step's allocations have settled.
const SETTLE: Duration = Duration::from_millis(500);
/// Extra pause after many held connections closed, before reading what stays.
const CLOSE_SETTLE: Duration = Duration::from_secs(2);
/// How long `testpod hold` may take to open its connections.
const HOLD_READY: Duration = Duration::from_secs(120);
/// The open-files limit the bench asks for before the memory beds: room for 10,000 held
/// connections at [`SOCKETS_PER_CONNECTION`] each, with slack.
const OPEN_FILES: u64 = 65_536;

/// One bed's readings (see the module documentation).
#[derive(Clone, Debug)]
pub struct Step {
    /// Pods on node 1 (the client and the idle ones).
    pub pods: u64,
    /// Data-plane processes on node 1.
    pub processes: usize,
    /// Node 1, idle.
    pub idle: Memory,
    /// Connections held open.
    pub held: u64,
    /// Node 1 with them open.
    pub with_held: Memory,
    /// Node 1 after they closed.
    pub after_close: Memory,
    /// Node 2 with them open (cross-node set-ups).
    pub server_with_held: Option<Memory>,
    /// Node 2 idle (cross-node set-ups).
    pub server_idle: Option<Memory>,
    /// Node 2 after every held connection closed (cross-node set-ups).
    pub server_after_close: Option<Memory>,
    /// The readings with more connections held (the fewest-pods bed only).
    pub many: Option<Many>,
    /// Node 1's data-plane CPU, milliseconds per second, with the connections open and
    /// nothing sent (the largest bed only).
    pub idle_cpu_ms_per_s: Option<f64>,
}

/// Both nodes with [`Params::held_connections_many`] connections held.
#[derive(Clone, Copy, Debug)]
pub struct Many {
    /// Connections held open.
    pub held: u64,
    /// Node 1 with them open.
    pub client: Memory,
    /// Node 2 with them open (cross-node set-ups).
    pub server: Option<Memory>,
}

impl Step {
    /// KiB of RSS per held connection on node 1.
    pub fn rss_kib_per_connection(&self) -> f64 {
        per(self.with_held.rss_kib, self.idle.rss_kib, self.held)
    }

    /// KiB of node 1's RSS per connection with [`Many::held`] open.
    pub fn many_kib_per_connection(&self) -> Option<f64> {
        let many = self.many?;
        Some(per(many.client.rss_kib, self.idle.rss_kib, many.held))
    }

    /// KiB of node 2's RSS per connection with [`Many::held`] open.
    pub fn many_server_kib_per_connection(&self) -> Option<f64> {
        let many = self.many?;
        Some(per(
            many.server?.rss_kib,
            self.server_idle?.rss_kib,
            many.held,
        ))
    }

    fn json(&self) -> Value {
        let m = |m: &Memory| json!({ "rss_kib": m.rss_kib, "pss_kib": m.pss_kib });
        json!({
            "pods": self.pods,
            "processes": self.processes,
            "idle": m(&self.idle),
            "held_connections": self.held,
            "with_held": m(&self.with_held),
            "rss_kib_per_connection": self.rss_kib_per_connection(),
            "after_close": m(&self.after_close),
            "server_node_with_held": self.server_with_held.as_ref().map(m),
            "server_node_idle": self.server_idle.as_ref().map(m),
            "server_node_after_close": self.server_after_close.as_ref().map(m),
            "many": self.many.map(|many| json!({
                "held_connections": many.held,
                "with_held": m(&many.client),
                "rss_kib_per_connection": self.many_kib_per_connection(),
                "server_node_with_held": many.server.as_ref().map(m),
                "server_rss_kib_per_connection": self.many_server_kib_per_connection(),
            })),
            "idle_cpu_ms_per_s": self.idle_cpu_ms_per_s,
        })
    }
}

/// What [`measure`] found: per set-up, one [`Step`] per pod count.
#[derive(Clone, Debug, Default)]
pub struct MemoryFigures {
    /// Connections each step tried to hold.
    pub held: u64,
    /// The steps of each measured set-up, fewest pods first.
    pub steps: BTreeMap<SetUp, Vec<Step>>,
}

/// A row of the memory table: its label and a value per set-up (`None`: not measured).
pub type Row = (String, BTreeMap<SetUp, f64>);

impl MemoryFigures {
    /// The pod counts measured (those of the first set-up).
    fn pod_counts(&self) -> Vec<u64> {
        self.steps
            .values()
            .next()
            .map(|steps| steps.iter().map(|s| s.pods).collect())
            .unwrap_or_default()
    }

    /// KiB of node-1 RSS per idle pod added, from the fewest pods to the most.
    pub fn rss_kib_per_pod(steps: &[Step]) -> Option<f64> {
        let (first, last) = (steps.first()?, steps.last()?);
        (last.pods > first.pods).then(|| {
            per(
                last.idle.rss_kib,
                first.idle.rss_kib,
                last.pods - first.pods,
            )
        })
    }

    /// KiB of node-1 PSS per idle pod added, from the fewest pods to the most.
    pub fn pss_kib_per_pod(steps: &[Step]) -> Option<f64> {
        let (first, last) = (steps.first()?, steps.last()?);
        (last.pods > first.pods).then(|| {
            per(
                last.idle.pss_kib,
                first.idle.pss_kib,
                last.pods - first.pods,
            )
        })
    }

    /// The table's rows; direct is the 0 of a node without a data plane.
    pub fn rows(&self) -> Vec<Row> {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let mut rows: Vec<Row> = Vec::new();
        let mut row = |label: String, value: &dyn Fn(&[Step]) -> Option<f64>| {
            let mut values: BTreeMap<SetUp, f64> = self
                .steps
                .iter()
                .filter_map(|(setup, steps)| Some((*setup, value(steps)?)))
                .collect();
            if !values.is_empty() {
                values.insert(SetUp::Direct, 0.0);
                rows.push((label, values));
            }
        };
        let counts = self.pod_counts();
        for (i, pods) in counts.iter().enumerate() {
            let at = move |steps: &[Step]| steps.get(i).filter(|s| s.pods == *pods).cloned();
            row(
                format!("data-plane RSS MiB on node 1, {}, idle", pods_label(*pods)),
                &|s| at(s).map(|s| mib(s.idle.rss_kib)),
            );
            row("  PSS MiB, idle".to_owned(), &|s| {
                at(s).map(|s| mib(s.idle.pss_kib))
            });
            row(
                format!("  RSS MiB with {} open connections", self.held),
                &|s| at(s).map(|s| mib(s.with_held.rss_kib)),
            );
        }
        if let (Some(first), Some(last)) = (counts.first(), counts.last())
            && last > first
        {
            row(
                format!("RSS KiB per added idle pod ({first} → {last} pods)"),
                &|s| MemoryFigures::rss_kib_per_pod(s),
            );
            row(
                format!("PSS KiB per added idle pod ({first} → {last} pods)"),
                &|s| MemoryFigures::pss_kib_per_pod(s),
            );
        }
        if let Some(first) = counts.first() {
            row(
                format!("RSS KiB per open connection ({})", pods_label(*first)),
                &|s| s.first().map(Step::rss_kib_per_connection),
            );
            row(
                format!(
                    "RSS MiB after every held connection closed ({})",
                    pods_label(*first)
                ),
                // With many held, the per-node block below carries it.
                &|s| {
                    s.first()
                        .filter(|s| s.many.is_none())
                        .map(|s| mib(s.after_close.rss_kib))
                },
            );
            row(
                format!(
                    "server node's data-plane RSS MiB, {} open connections",
                    self.held
                ),
                &|s| s.first()?.server_with_held.map(|m| mib(m.rss_kib)),
            );
            self.many_rows(&mut row);
        }
        if let Some(last) = counts.last() {
            row(
                format!("data-plane processes on node 1, {last} pods"),
                &|s| s.last().map(|s| s.processes as f64),
            );
            row(
                format!(
                    "data-plane CPU ms/s on node 1, {last} pods + {} idle connections",
                    self.held
                ),
                &|s| s.last()?.idle_cpu_ms_per_s,
            );
        }
        rows
    }

    /// Each node's data plane fresh idle, with [`Params::held_connections_many`] held and
    /// after they closed, and its KiB per held connection (the fewest-pods bed).
    fn many_rows(&self, row: &mut impl FnMut(String, &dyn Fn(&[Step]) -> Option<f64>)) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        let Some(held) = self
            .steps
            .values()
            .filter_map(|steps| steps.first()?.many.map(|m| m.held))
            .max()
        else {
            return;
        };
        let n = thousands(held);
        row("node 1 RSS MiB, fresh idle".to_owned(), &|s| {
            s.first().map(|s| mib(s.idle.rss_kib))
        });
        row(format!("node 1 RSS MiB with {n} held connections"), &|s| {
            s.first()?.many.map(|m| mib(m.client.rss_kib))
        });
        row(
            "node 1 RSS MiB after every held connection closed".to_owned(),
            &|s| s.first().map(|s| mib(s.after_close.rss_kib)),
        );
        row(format!("node 1 RSS KiB per held connection ({n})"), &|s| {
            s.first()?.many_kib_per_connection()
        });
        row("node 2 RSS MiB, fresh idle".to_owned(), &|s| {
            s.first()?.server_idle.map(|m| mib(m.rss_kib))
        });
        row(format!("node 2 RSS MiB with {n} held connections"), &|s| {
            s.first()?.many?.server.map(|m| mib(m.rss_kib))
        });
        row(
            "node 2 RSS MiB after every held connection closed".to_owned(),
            &|s| s.first()?.server_after_close.map(|m| mib(m.rss_kib)),
        );
        row(format!("node 2 RSS KiB per held connection ({n})"), &|s| {
            s.first()?.many_server_kib_per_connection()
        });
    }

    /// The figures as JSON (KiB).
    pub fn json(&self) -> Value {
        let setups: serde_json::Map<String, Value> = self
            .steps
            .iter()
            .map(|(setup, steps)| {
                let entry = json!({
                    "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
                    "rss_kib_per_pod": MemoryFigures::rss_kib_per_pod(steps),
                    "pss_kib_per_pod": MemoryFigures::pss_kib_per_pod(steps),
                });
                (setup.name().to_owned(), entry)
            })
            .collect();
        json!({
            "pod_counts": self.pod_counts(),
            "held_connections": self.held,
            "held_connections_many": self.steps.values().filter_map(|s| s.first()?.many.map(|m| m.held)).max(),
            "setups": setups,
            "direct": "no data plane: 0",
        })
    }
}

/// `10,000`: a count with thousands separators, as the issue and the tables write them.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1 pod`, `10 pods`.
fn pods_label(pods: u64) -> String {
    if pods == 1 {
        "1 pod".to_owned()
    } else {
        format!("{pods} pods")
    }
}

fn per(after: u64, before: u64, count: u64) -> f64 {
    (after as f64 - before as f64) / count.max(1) as f64
}

/// Measures every set-up of `setups` that has a data plane, at every pod count.
pub fn measure(
    params: &Params,
    setups: &[SetUp],
    envoy: Option<&Path>,
) -> anyhow::Result<MemoryFigures> {
    let limit = procfs::raise_open_files_limit(OPEN_FILES);
    if limit < OPEN_FILES {
        println!(
            "    open-files limit {limit} (wanted {OPEN_FILES}): fewer connections may be held"
        );
    }
    let mut figures = MemoryFigures {
        held: params.held_connections,
        steps: BTreeMap::new(),
    };
    for setup in setups.iter().copied().filter(|s| s.meshed()) {
        let mut steps = Vec::new();
        for (i, pods) in params.memory_pods.iter().copied().enumerate() {
            let largest = i + 1 == params.memory_pods.len();
            let name = format!("bench-mem-{}-{pods}", setup.name());
            let step = marrow_tests::command::timed(
                &format!("{} memory, {} on node 1", setup.name(), pods_label(pods)),
                || {
                    let mut bed = Bed::new(setup, &name, envoy)?;
                    let step = measure_step(&mut bed, params, pods, (i == 0, largest))?;
                    drop(bed);
                    Ok(step)
                },
            )?;
            steps.push(step);
            // The bed's namespaces are torn down by kernel workers after the drop.
            std::thread::sleep(super::TEARDOWN);
        }
        figures.steps.insert(setup, steps);
    }
    Ok(figures)
}

/// The data-plane processes of each node of a bed.
pub(super) struct Plane {
    node1: Vec<u32>,
    node2: Vec<u32>,
}

/// One bed: `pods` pods on node 1, idle, then with connections held (and on the `first` bed
/// with more), then after they closed; the data plane's idle CPU on the `largest`.
fn measure_step(
    bed: &mut Bed,
    params: &Params,
    pods: u64,
    (first, largest): (bool, bool),
) -> anyhow::Result<Step> {
    let setup = bed.setup();
    let mut pair = bed.pod_pair()?;
    let idle_pods = bed.add_idle_pods(pods.saturating_sub(1))?;
    let proxies = bed.proxy_pids();
    let mut plane = Plane {
        node1: proxies.first().copied().into_iter().collect(),
        node2: if bed.cross_node() {
            proxies.get(1).copied().into_iter().collect()
        } else {
            Vec::new()
        },
    };
    plane.node1.extend(pair.client_sidecar_pid());
    plane
        .node1
        .extend(idle_pods.iter().filter_map(|p| p.sidecar_pid()));
    plane.node2.extend(pair.server_sidecar_pid());
    if plane.node1.is_empty() {
        bail!("{} has no data-plane process on node 1", setup.name());
    }
    let read = |pids: &[u32], what: &str| -> anyhow::Result<Memory> {
        std::thread::sleep(SETTLE);
        let m = sum_memory(pids).with_context(|| format!("{} memory {what}", setup.name()))?;
        println!(
            "    {:<8} {what}: RSS {} KiB, PSS {} KiB ({} processes)",
            setup.name(),
            m.rss_kib,
            m.pss_kib,
            pids.len()
        );
        Ok(m)
    };
    let idle = read(&plane.node1, &format!("node 1, {}, idle", pods_label(pods)))?;
    let server_idle = if plane.node2.is_empty() {
        None
    } else {
        Some(read(&plane.node2, "node 2, idle")?)
    };
    bed.check_alive()?;

    let wanted = fd_budget(&plane, params.held_connections)?;
    let fds_idle = open_fds(&plane)?;
    let (mut holder, outcome) = hold(&pair, wanted)?;
    println!(
        "    {:<8} {} connections held (opened in {} ms)",
        setup.name(),
        outcome.held,
        outcome.elapsed_ms
    );
    let with_held = read(&plane.node1, &format!("node 1, {} held", outcome.held))?;
    let server_with_held = if plane.node2.is_empty() {
        None
    } else {
        Some(read(
            &plane.node2,
            &format!("node 2, {} held", outcome.held),
        )?)
    };
    let idle_cpu_ms_per_s = if largest {
        let window = Duration::from_secs(params.idle_cpu_seconds);
        let cpu = idle_cpu(&plane.node1, window)?;
        println!(
            "    {:<8} node 1 data-plane CPU with {} idle connections: {cpu:.2} ms/s",
            setup.name(),
            outcome.held
        );
        Some(cpu)
    } else {
        None
    };
    bed.check_alive()?;
    pair.check_alive()?;
    let mut many = None;
    let mut more_holder = None;
    if first && params.held_connections_many > outcome.held {
        let room = fd_room(&fds_idle, outcome.held, params.held_connections_many)?;
        let more = room.saturating_sub(outcome.held);
        let (process, more_held) = hold(&pair, more)?;
        more_holder = Some(process);
        let held = outcome.held + more_held.held;
        println!(
            "    {:<8} {held} connections held ({} more opened in {} ms)",
            setup.name(),
            more_held.held,
            more_held.elapsed_ms
        );
        let client = read(&plane.node1, &format!("node 1, {held} held"))?;
        let server = if plane.node2.is_empty() {
            None
        } else {
            Some(read(&plane.node2, &format!("node 2, {held} held"))?)
        };
        bed.check_alive()?;
        pair.check_alive()?;
        many = Some(Many {
            held,
            client,
            server,
        });
    }
    holder.kill();
    if let Some(mut process) = more_holder {
        process.kill();
        // Thousands of closes reach the proxies (and their peers across HBONE) in a burst.
        std::thread::sleep(CLOSE_SETTLE);
    }
    let after_close = read(&plane.node1, "node 1, after they closed")?;
    let server_after_close = if plane.node2.is_empty() {
        None
    } else {
        Some(read(&plane.node2, "node 2, after they closed")?)
    };
    Ok(Step {
        pods,
        processes: plane.node1.len(),
        idle,
        held: outcome.held,
        with_held,
        after_close,
        server_with_held,
        server_idle,
        server_after_close,
        many,
        idle_cpu_ms_per_s,
    })
}

/// Starts `testpod hold` in the pair's client pod for `count` connections to its echo and
/// waits until they are all open.
fn hold(pair: &PodPair, count: u64) -> anyhow::Result<(PodProcess, Held)> {
    let holder = pair.client().spawn(
        binaries::testpod(),
        &[
            "hold",
            &pair.echo().to_string(),
            "--connections",
            &count.to_string(),
            "--seconds",
            "600",
        ],
    );
    let line = holder.next_line(HOLD_READY).unwrap_or_default();
    let outcome = parse_load_output::<Held>(&line)
        .map_err(anyhow::Error::msg)
        .and_then(|o| o.map_err(|f| anyhow::anyhow!("{:?}: {}", f.kind, f.detail)))
        .with_context(|| format!("testpod hold: {}", holder.log()))?;
    Ok((holder, outcome))
}

/// RSS and PSS of `pids`, summed.
fn sum_memory(pids: &[u32]) -> anyhow::Result<Memory> {
    let mut total = Memory {
        rss_kib: 0,
        pss_kib: 0,
    };
    for pid in pids {
        let m = procfs::memory(*pid)?;
        total.rss_kib += m.rss_kib;
        total.pss_kib += m.pss_kib;
    }
    Ok(total)
}

/// CPU milliseconds per second of `pids` together over `window`.
fn idle_cpu(pids: &[u32], window: Duration) -> anyhow::Result<f64> {
    let ticks = |pids: &[u32]| -> anyhow::Result<u64> {
        pids.iter().map(|pid| procfs::cpu_ticks(*pid)).sum()
    };
    let before = ticks(pids)?;
    std::thread::sleep(window);
    let used = ticks(pids)?.saturating_sub(before);
    let ms = used as f64 * 1000.0 / procfs::clock_ticks_per_second() as f64;
    Ok(ms / window.as_secs_f64())
}

mod fds;
use fds::{fd_budget, fd_room, open_fds};

#[cfg(test)]
mod tests;
