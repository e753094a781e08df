//! `cargo xtask bench` (being written).

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct Options {}

/// Runs the task.
pub fn run(_options: &Options) -> anyhow::Result<()> {
    anyhow::bail!("cargo xtask bench is not written yet")
}
