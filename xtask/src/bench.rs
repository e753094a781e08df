//! `cargo xtask bench`: builds the bench harness (the `marrow-bench` crate in `bench/`) and runs
//! it with the same arguments; `cargo xtask bench --help` lists them. The harness builds what
//! it measures itself (`cargo xtask build-ebpf`, then the release binaries) unless
//! `--no-build`, and writes `target/bench/` (and BENCHMARKS.md, `docs/bench/`) as before.

use marrow_tests::command;
use marrow_tests::stop;

/// Arguments of `cargo xtask bench`: everything after `bench`, passed on unread.
#[derive(clap::Args)]
pub struct Options {
    /// The bench's arguments (`--quick`, `--setups`, …; `--help` lists them).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// Builds and runs `marrow-bench` (a debug build drives the run, as `cargo xtask` itself is
/// one; the pods and the TLS figures run its release build), exiting with its exit code.
pub fn run(options: &Options) -> anyhow::Result<()> {
    let root = crate::workspace_root()?;
    let mut cmd = command::workspace_cargo(&root);
    // From the caller's directory, as `cargo xtask` itself runs: a relative `--json FILE`
    // lands where it did when the bench was part of xtask.
    cmd.current_dir(std::env::current_dir()?)
        .arg("run")
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(["--package", "marrow-bench", "-j2", "--"])
        .args(&options.args);
    // The bench stops cleanly on Ctrl-C (exit code 130): wait for it, and exit as it did.
    let code = stop::run_in_foreground(&mut cmd)?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
