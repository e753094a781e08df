//! `cargo xtask test`: README's test command. Does its own set-up, builds everything the
//! integration tests run (the eBPF object, node-proxy, redirect-cni, testpod), then runs the
//! workspace's tests. The namespace tests need root; without it they print `SKIPPED`.

use marrow_tests::command::{self, timed};

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup` (the tools are known to be installed).
    #[arg(long)]
    pub no_setup: bool,
    /// Skip `cargo fmt --check` and clippy (which run by default, as in CI).
    #[arg(long)]
    pub no_lint: bool,
    /// Extra arguments for the test binaries (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub test_args: Vec<String>,
}

/// Runs the whole suite.
pub fn run(options: &Options) -> anyhow::Result<()> {
    if !options.no_setup {
        crate::setup::run()?;
    }
    timed("build the eBPF object", || {
        crate::build_ebpf::run(&crate::build_ebpf::Options::default()).map(|_| ())
    })?;
    let root = crate::workspace_root()?;
    timed("build the binaries", || {
        command::run(command::workspace_cargo(&root).args([
            "build",
            "--workspace",
            "--bins",
            "-j2",
        ]))
    })?;
    if !options.no_lint {
        timed("cargo fmt --check", || {
            command::run(command::workspace_cargo(&root).args(["fmt", "--all", "--check"]))
        })?;
        timed("cargo clippy", || {
            command::run(command::workspace_cargo(&root).args([
                "clippy",
                "--workspace",
                "--all-targets",
                "-j2",
                "--",
                "-D",
                "warnings",
            ]))
        })?;
    }
    timed("cargo test", || {
        // Two test threads: the namespace tests are light, and the machine has two cores.
        let mut cmd = command::workspace_cargo(&root);
        cmd.args(["test", "--workspace", "-j2", "--", "--test-threads=2"]);
        cmd.args(&options.test_args);
        command::run(&mut cmd)
    })
}
