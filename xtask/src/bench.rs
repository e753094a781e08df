//! `cargo xtask bench`: marrow against the direct path, on nodes and pods made of network
//! namespaces, by the method of DESIGN.md §9.
//!
//! - Release binaries (`target/release`) and the release eBPF object, built first.
//! - The load average is printed before anything runs: a busy machine makes every figure noisy.
//! - Two topologies, each a baseline and a mesh set-up (see [`SetUp`]): same node (direct,
//!   marrow: plain TCP through one node proxy) and cross node (direct-x, hbone: mTLS + HTTP/2
//!   CONNECT between two nodes' proxies). All four run in one schedule: each round runs every
//!   set-up twice in mirrored order (direct, marrow, direct-x, hbone, hbone, direct-x, marrow,
//!   direct), each time on freshly built nodes; each topology's table shows medians over all
//!   samples and the mesh set-up's ratio to its own baseline (latency also as added
//!   microseconds, the steadier figure on this VM). `--setups` runs a subset (baselines are
//!   added). An HBONE bed fails unless its proxies counted mutual-TLS connections on both
//!   sides and nothing else, so a fallback to plaintext cannot pass as HBONE.
//! - Connection rate: `testpod connect-rate` (closed loops of connect → greeting → close) with 1
//!   and 8 client threads (through HBONE each is a new HTTP/2 stream on a pooled mTLS
//!   connection, not a new handshake), each run from fresh pods so no TIME_WAIT is inherited; every bench
//!   pod gets ephemeral ports 1024–65535 so a 3 s run does not run out of them. Failed attempts
//!   are counted and reported, not fatal (each stalls its client thread up to the 2 s timeout).
//! - Bulk: `testpod send` to a sink (`serve --sink`: read and discard, then acknowledge the
//!   byte count), one stream; Gbit/s, host CPU-s per GB (from /proc/stat: senders, receivers,
//!   proxies and kernel together) and node-proxy CPU-s per GB (/proc/PID/stat, every proxy of
//!   the bed summed: both nodes' in a cross-node bed).
//! - Latency: `testpod pingpong`, 1-byte round trips on one TCP_NODELAY connection to the echo.
//! - TLS handshakes (once per run, after the rounds): the TLS stack alone, in process, in the
//!   release build (see [`handshake`]); 1 and 4 concurrent clients.
//! - Memory (once per run, when marrow runs; same node): node-proxy RSS/PSS fresh with 1 enrolled pod, with 50,
//!   and with 1,000 idle connections held through it (`testpod hold`), twice: on the fresh heap,
//!   then on the heap the first ones left behind.
//!
//! Nothing is asserted about speed: a run fails only when something breaks (a set-up step, a
//! load generator, a proxy exiting, a mesh bed whose proxies counted no connection). Everything
//! it creates is named `bench-*` and removed by
//! the fixtures' drops; the run ends by checking that nothing is left.

mod figure;
mod handshake;
mod memory;
mod procfs;
mod report;
mod sample;
mod setup;
mod topology;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::process::{self, seconds, timed};
use report::{Report, Samples};
use setup::Bed;
use topology::SetUp;

/// Pause after each set-up is removed, before the next is built.
const TEARDOWN: Duration = Duration::from_secs(1);

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// One round and shorter runs (1 s of connections, 256 MiB bulk, 5,000 round trips, 1 s of
    /// TLS handshakes): checks the method in under two minutes once the binaries are built.
    #[arg(long)]
    pub quick: bool,
    /// The set-ups to run, comma-separated (each one's baseline is added). Default: all.
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
    /// Enrolled idle pods in the memory figures.
    memory_pods: u64,
    /// Connections held open in the memory figures.
    held_connections: u64,
    /// Seconds of each TLS handshake run.
    handshake_seconds: u64,
}

impl Params {
    fn new(options: &Options) -> Params {
        let (rounds, connect_seconds, bulk_bytes, pingpong_count, handshake_seconds) =
            if options.quick {
                (1, 1, 256 << 20, 5_000, 1)
            } else {
                (3, 3, 1 << 30, 20_000, 3)
            };
        Params {
            quick: options.quick,
            rounds: options.rounds.unwrap_or(rounds).max(1),
            connect_seconds,
            bulk_bytes,
            pingpong_count,
            memory_pods: 50,
            held_connections: 1_000,
            handshake_seconds,
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
            "pingpong_bytes": 1,
            "memory_pods": self.memory_pods,
            "held_connections": self.held_connections,
            "handshake_seconds": self.handshake_seconds,
            "handshake_clients": handshake::CLIENTS,
        })
    }
}

/// Runs the bench.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let started = Instant::now();
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
        return finish(
            options,
            &report(Vec::new(), Samples::default(), None, handshakes),
            started,
        );
    }
    if let Some(reason) = marrow_tests::skip_reason() {
        bail!("cargo xtask bench cannot run here: {reason}");
    }
    let root = crate::workspace_root()?;
    if !options.no_build {
        build(&root)?;
    }
    use_release_binaries(&root)?;
    if !options.no_build {
        // The build's output would otherwise be written back during the first runs.
        process::run(&mut Command::new("sync"))?;
        let [one, five, fifteen] = procfs::load_average()?;
        println!("load average {one:.2} {five:.2} {fifteen:.2} after the build");
    }

    let order = schedule(params.rounds, &selected(&options.setups));
    let measured =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(&params, &order)))
            .unwrap_or_else(|panic| {
                Err(anyhow::anyhow!(
                    "a fixture failed: {}",
                    panic_message(&panic)
                ))
            });
    let leftovers = leftovers();
    let (samples, memory, handshakes) = measured?;
    if !leftovers.is_empty() {
        bail!("the run left these behind: {}", leftovers.join(", "));
    }
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
    finish(options, &report, started)
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

/// The set-ups named with `--setups` and their baselines (all when none is named), in
/// [`SetUp::ALL`] order.
fn selected(named: &[SetUp]) -> Vec<SetUp> {
    SetUp::ALL
        .into_iter()
        .filter(|s| named.is_empty() || named.iter().any(|n| n == s || n.baseline() == *s))
        .collect()
}

/// Every round runs the set-ups forwards then backwards (A B B A), so drift over the run
/// (thermal, page cache, background load) weighs on each set-up alike.
fn schedule(rounds: u32, setups: &[SetUp]) -> Vec<SetUp> {
    (0..rounds)
        .flat_map(|_| setups.iter().chain(setups.iter().rev()).copied())
        .collect()
}

/// What [`measure`] returns: the per-round samples, the memory figures (when marrow ran) and
/// the TLS handshake figures.
type Measured = (
    Samples,
    Option<memory::MemoryFigures>,
    handshake::HandshakeFigures,
);

/// The per-round samples in `order`, then the memory figures (when marrow ran), then the TLS
/// handshake figures.
fn measure(params: &Params, order: &[SetUp]) -> anyhow::Result<Measured> {
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
        timed(&step, || {
            let mut bed = Bed::new(*setup, &format!("bench-{}-{}", setup.name(), i + 1))?;
            sample::sample(&mut bed, params, &mut samples)
        })?;
        // The bed's namespaces are torn down by kernel workers after the drop.
        std::thread::sleep(TEARDOWN);
    }
    let memory = if order.contains(&SetUp::Marrow) {
        Some(timed("node-proxy memory", || memory::measure(params))?)
    } else {
        None
    };
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
        crate::build_ebpf::run(&crate::build_ebpf::Options::default()).map(|_| ())
    })?;
    timed("build the release binaries", || {
        process::run(process::workspace_cargo(root).args([
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
    for name in ["node-proxy", "redirect-cni", "testpod", "xtask"] {
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
/// temporary directories named after the bench's nodes.
fn leftovers() -> Vec<String> {
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
mod tests {
    use super::*;

    #[test]
    fn rounds_mirror_the_order() {
        use SetUp::{Direct, DirectX, Hbone, Marrow};
        let all = selected(&[]);
        assert_eq!(
            schedule(1, &all),
            [
                Direct, Marrow, DirectX, Hbone, Hbone, DirectX, Marrow, Direct
            ]
        );
        assert_eq!(schedule(2, &all).len(), 16);
        let same = [Direct, Marrow];
        assert_eq!(&schedule(3, &same)[4..8], [Direct, Marrow, Marrow, Direct]);
    }

    #[test]
    fn named_set_ups_bring_their_baselines() {
        use SetUp::{Direct, DirectX, Hbone, Marrow};
        assert_eq!(selected(&[]), SetUp::ALL);
        assert_eq!(selected(&[Hbone]), [DirectX, Hbone]);
        assert_eq!(selected(&[Hbone, Direct]), [Direct, DirectX, Hbone]);
        assert_eq!(selected(&[Marrow, Marrow]), [Direct, Marrow]);
    }
}
