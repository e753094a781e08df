//! `cargo xtask demo`: README's first command. Shows, on this machine, marrow's whole job: two
//! nodes made of network namespaces, four pods wired by a real CNI chain, a node proxy per node
//! carrying pods' TCP between the nodes over mutual TLS (HBONE) with SPIFFE identities, an
//! AuthorizationPolicy and a STRICT PeerAuthentication enforced, no plaintext on the wire, and
//! metrics with Istio's names.
//!
//! It does its own set-up (tools, the eBPF object, the binaries) with each step timed, needs
//! root, and prints a report a newcomer can follow: for each step what it does and, marked
//! `[ok]` or `[FAIL]`, what it saw. It exits non-zero when a check failed.
//!
//! Invariant: the demo leaves nothing behind, also when a step fails or Ctrl-C interrupts it.
//! The fixtures remove what they created when dropped (also while unwinding from a panic); the
//! SIGINT/SIGTERM handler only sets a flag, so the demo stops at the next step by returning an
//! error and the fixtures drop. At the end the demo looks for leftovers and reports them.

mod canary;
mod cluster;
mod keep;
mod observe;
mod report;
mod scenarios;
mod waypoint;

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::time::Instant;

use marrow_tests::{BpffsDir, Cgroup};

use marrow_tests::command::{self, timed};
use marrow_tests::stop::{self, Stop};
use report::Report;

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup` (the tools are known to be installed).
    #[arg(long)]
    pub no_setup: bool,
    /// Leave the cluster running at the end and print how to reach its pods and proxies.
    #[arg(long, conflicts_with = "down")]
    pub keep: bool,
    /// Remove a cluster left running by `--keep`, then check that nothing is left.
    #[arg(long)]
    pub down: bool,
}

/// Runs the demo.
pub fn run(options: &Options) -> anyhow::Result<()> {
    require_root()?;
    if options.down {
        keep::down();
        let stop = Stop::install()?;
        let mut report = Report::new(&stop);
        check_nothing_left(&mut report);
        return report.finish();
    }
    let stop = Stop::install()?;
    println!("marrow demo: a two-node service mesh on this machine, made of network namespaces\n");
    let started = Instant::now();
    prepare(options, &stop).map_err(|e| stop.blame(e))?;
    let prepared = started.elapsed();
    explain();
    let mut report = Report::new(&stop);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        scenarios::run(&stop, &mut report, options.keep)
    }))
    .unwrap_or_else(|panic| {
        Err(anyhow::anyhow!(
            "a demo step failed: {}",
            panic_message(&*panic)
        ))
    })
    .map_err(|e| stop.blame(e));
    // Every fixture has been dropped by now, whatever happened, unless kept on purpose.
    if !(options.keep && outcome.is_ok()) {
        check_nothing_left(&mut report);
    }
    println!(
        "The demo took {} (set-up and builds {}, the nodes and their checks {}).",
        command::seconds(started.elapsed()),
        command::seconds(prepared),
        command::seconds(started.elapsed().saturating_sub(prepared))
    );
    if let Err(error) = outcome {
        if let Some(interrupted) = error.downcast_ref::<stop::Interrupted>() {
            // Not a failure of the demo: say so without an error trace, and exit as a shell
            // does for a command stopped by SIGINT.
            println!("Stopped: {interrupted}.");
            std::process::exit(stop::EXIT_INTERRUPTED);
        }
        return Err(error);
    }
    report.finish()
}

/// What a service mesh is and what marrow does, in three lines, for someone who never saw one.
fn explain() {
    println!(
        "\nA service mesh puts a proxy in the path of the connections between apps, to count, secure \
         and\ncontrol them without changing the apps. marrow runs one proxy per node; eBPF programs \
         in the\nkernel steer the connections of every pod in the mesh to it, and the apps cannot tell.\n\
         Between nodes the proxies speak mutual TLS, each proving its pod's identity (a SPIFFE ID\n\
         such as spiffe://cluster.local/ns/shop/sa/frontend), so policies can name who may call whom."
    );
}

/// Refuses to start without root, saying why it is needed.
fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "cargo xtask demo needs root: it creates network namespaces and cgroups and loads \
             eBPF programs.\nRun it as root, e.g.: sudo -E env \"PATH=$PATH\" cargo xtask demo"
        );
    }
    Ok(())
}

/// Installs the tools, builds the eBPF object and the binaries, each step timed.
fn prepare(options: &Options, stop: &Stop) -> anyhow::Result<()> {
    // setup and build-ebpf announce and time their own steps.
    if !options.no_setup {
        println!("==> checking the tools (cargo xtask setup)");
        crate::setup::run()?;
        stop.check()?;
    }
    crate::build_ebpf::run(&crate::build_ebpf::Options::default())?;
    stop.check()?;
    let root = crate::workspace_root()?;
    timed(
        "building node-proxy, redirect-cni and testpod (debug)",
        || {
            command::run(command::workspace_cargo(&root).args([
                "build",
                "--workspace",
                "--bins",
                "-j2",
            ]))
        },
    )?;
    stop.check()?;
    if let Some(reason) = marrow_tests::skip_reason() {
        anyhow::bail!("this machine cannot run the demo: {reason}");
    }
    Ok(())
}

/// Reports anything of the demo's nodes that is still there after clean-up.
fn check_nothing_left(report: &mut Report<'_>) {
    let namespaces: Vec<String> = std::fs::read_dir(marrow_tests::netns::NETNS_RUN_DIR)
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    let mut left = Vec::new();
    for node in cluster::NODE_NAMES {
        let prefix = format!("mt-{node}");
        left.extend(
            namespaces
                .iter()
                .filter(|name| **name == prefix || name.starts_with(&format!("{prefix}.")))
                .map(|name| format!("network namespace {name}")),
        );
        if Cgroup::exists(node) {
            left.push(format!("cgroup marrow-test-{node}"));
        }
        let pins = BpffsDir::path_for(node);
        if Path::exists(&pins) {
            left.push(format!("bpffs directory {}", pins.display()));
        }
    }
    left.extend(keep::ca_left());
    let names = cluster::NODE_NAMES.join(", ");
    report.record(
        left.is_empty(),
        if left.is_empty() {
            format!(
                "nothing left of nodes {names}: no namespace mt-*, no cgroup or eBPF pins \
                 marrow-test-*, no demo CA, no demo processes (they were in those cgroups)"
            )
        } else {
            format!("left behind: {}", left.join(", "))
        },
    );
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "(no message)".to_owned())
}
