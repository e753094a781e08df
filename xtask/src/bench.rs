//! `cargo xtask bench`: marrow against the direct path, on nodes and pods made of network
//! namespaces, by the method of DESIGN.md §9.
//!
//! - Release binaries (`target/release`) and the release eBPF object, built first.
//! - The load average is printed before anything runs: a busy machine makes every figure noisy.
//! - Each round runs every set-up twice in mirrored order (direct, marrow, marrow, direct), each
//!   time on a freshly built node; tables show medians over all samples and each set-up's ratio
//!   to direct (latency also as added microseconds, the steadier figure on this VM).
//! - Connection rate: `testpod connect-rate` (closed loops of connect → greeting → close) with 1
//!   and 8 client threads, each run from fresh pods so no TIME_WAIT is inherited; every bench
//!   pod gets ephemeral ports 1024–65535 so a 3 s run does not run out of them. Failed attempts
//!   are counted and reported, not fatal (each stalls its client thread up to the 2 s timeout).
//! - Bulk: `testpod send` to a sink (`serve --sink`: read and discard, then acknowledge the
//!   byte count), one stream; Gbit/s, host CPU-s per GB (from /proc/stat: senders, receivers,
//!   proxy and kernel together) and node-proxy CPU-s per GB (/proc/PID/stat).
//! - Latency: `testpod pingpong`, 1-byte round trips on one TCP_NODELAY connection to the echo.
//! - Memory (once per run, marrow only): node-proxy RSS/PSS fresh with 1 enrolled pod, with 50,
//!   and with 1,000 idle connections held through it (`testpod hold`), twice: on the fresh heap,
//!   then on the heap the first ones left behind.
//!
//! Nothing is asserted about speed: a run fails only when something breaks (a set-up step, a
//! load generator, the proxy exiting). Everything it creates is named `bench-*` and removed by
//! the fixtures' drops; the run ends by checking that nothing is left.

mod figure;
mod memory;
mod procfs;
mod report;
mod sample;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::process::{self, seconds, timed};
use report::{Report, Samples};
use setup::{Bed, SetUp};

/// Pause after each set-up is removed, before the next is built.
const TEARDOWN: Duration = Duration::from_secs(1);

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {
    /// One round and shorter runs (1 s of connections, 256 MiB bulk, 5,000 round trips): checks
    /// the method in under two minutes once the binaries are built.
    #[arg(long)]
    pub quick: bool,
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
}

impl Params {
    fn new(options: &Options) -> Params {
        let (rounds, connect_seconds, bulk_bytes, pingpong_count) = if options.quick {
            (1, 1, 256 << 20, 5_000)
        } else {
            (3, 3, 1 << 30, 20_000)
        };
        Params {
            rounds: options.rounds.unwrap_or(rounds).max(1),
            connect_seconds,
            bulk_bytes,
            pingpong_count,
            memory_pods: 50,
            held_connections: 1_000,
        }
    }

    fn json(&self, quick: bool) -> Value {
        json!({
            "quick": quick,
            "rounds": self.rounds,
            "connect_seconds": self.connect_seconds,
            "connect_threads": [1, 8],
            "bulk_bytes": self.bulk_bytes,
            "pingpong_count": self.pingpong_count,
            "pingpong_bytes": 1,
            "memory_pods": self.memory_pods,
            "held_connections": self.held_connections,
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

    let order = schedule(params.rounds);
    let measured =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| measure(&params, &order)))
            .unwrap_or_else(|panic| {
                Err(anyhow::anyhow!(
                    "a fixture failed: {}",
                    panic_message(&panic)
                ))
            });
    let leftovers = leftovers();
    let (samples, memory) = measured?;
    if !leftovers.is_empty() {
        bail!("the run left these behind: {}", leftovers.join(", "));
    }

    let report = Report {
        load_average,
        cpus,
        parameters: params.json(options.quick),
        order,
        samples,
        memory: Some(memory),
    };
    println!("\nset-ups:");
    for setup in SetUp::ALL {
        println!("  {}: {}", setup.name(), setup.describe());
    }
    println!("\n{}", report.table());
    if let Some(path) = &options.json {
        let text = serde_json::to_string_pretty(&report.json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    println!("bench done in {}", seconds(started.elapsed()));
    Ok(())
}

/// Every round runs the set-ups forwards then backwards (A B B A), so drift over the run
/// (thermal, page cache, background load) weighs on each set-up alike.
fn schedule(rounds: u32) -> Vec<SetUp> {
    (0..rounds)
        .flat_map(|_| SetUp::ALL.into_iter().chain(SetUp::ALL.into_iter().rev()))
        .collect()
}

/// The per-round samples in `order`, then the memory figures.
fn measure(params: &Params, order: &[SetUp]) -> anyhow::Result<(Samples, memory::MemoryFigures)> {
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
    let memory = timed("node-proxy memory", || memory::measure(params))?;
    Ok((samples, memory))
}

/// Builds the release eBPF object and the workspace's binaries with the release profile.
fn build(root: &Path) -> anyhow::Result<()> {
    timed("build the eBPF object", || {
        crate::build_ebpf::run(&crate::build_ebpf::Options::default()).map(|_| ())
    })?;
    timed("build the release binaries", || {
        process::run(Command::new("cargo").current_dir(root).args([
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
    for name in ["node-proxy", "redirect-cni", "testpod"] {
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
        use SetUp::{Direct, Marrow};
        assert_eq!(schedule(1), [Direct, Marrow, Marrow, Direct]);
        assert_eq!(schedule(2).len(), 8);
        assert_eq!(&schedule(3)[4..8], [Direct, Marrow, Marrow, Direct]);
    }
}
