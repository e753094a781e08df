//! `cargo xtask`: marrow's developer tasks that cargo alone cannot express.
//!
//! - `setup` installs what building and testing marrow needs, skipping what is present.
//! - `build-ebpf` builds the kernel-side object (`ebpf/marrow-ebpf`, outside the workspace
//!   because it targets `bpfel-unknown-none`) and copies it to `target/marrow-ebpf.o`.
//!
//! Every task prints each step and how long it took, and fails with a message that says what
//! to do about it.

mod bench;
mod build_ebpf;
mod demo;
mod image;
#[cfg(test)]
mod layout;
mod setup;
mod test;
mod toolchain;

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "marrow's developer tasks"
)]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// The tasks.
#[derive(Subcommand)]
enum Task {
    /// Install the toolchain and test tools that are missing (apt packages, rust-src,
    /// bpf-linker). Safe to run again.
    Setup,
    /// Build the eBPF object and copy it to target/marrow-ebpf.o.
    BuildEbpf(build_ebpf::Options),
    /// Set up, build everything and run the whole test suite (README's test command).
    Test(test::Options),
    /// Run the demo: pods on a node made of network namespaces, captured by marrow.
    Demo(demo::Options),
    /// Measure marrow against the direct path on namespaced nodes: builds and runs the
    /// bench harness (`bench/`) with these arguments (`cargo xtask bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench(bench::Options),
    /// Lay out the node proxy image's contents in target/image (--check: verify them).
    Image(image::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::BuildEbpf(options) => {
            let object = build_ebpf::run(&options)?;
            println!("{}", object.display());
            Ok(())
        }
        Task::Test(options) => test::run(&options),
        Task::Demo(options) => demo::run(&options),
        Task::Bench(options) => bench::run(&options),
        Task::Image(options) => image::run(&options).map(|_| ()),
    }
}

/// The workspace root: the parent of this crate's directory.
fn workspace_root() -> anyhow::Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("xtask's manifest directory has no parent (expected <workspace>/xtask)")
}
