//! `cargo xtask demo` (being written).

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Options {}

/// Runs the task.
pub fn run(_options: &Options) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask demo is not written yet")
}
