//! The `waypoint` command: marrow's L7 proxy for the Services (or workloads) that a Gateway of
//! class `istio-waypoint` serves. Reads its [`Config`](marrow_waypoint::config::Config) and
//! hands it to [`marrow_waypoint::app::run`].

use clap::Parser;
use marrow_settings::{Flags, ProcessEnv};
use marrow_waypoint::config::Config;

#[derive(Parser)]
#[command(
    name = "waypoint",
    version,
    about = "marrow's waypoint (L7 proxy over HBONE)"
)]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, env = "MARROW_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    flags: Flags<Config>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The waypoint has no admin endpoint that changes the level: the filter stays as set.
    let _filter = marrow_mesh::program::init_logging(cli.log_json);
    let config = cli.flags.load(&ProcessEnv)?;
    marrow_waypoint::app::run(config)?;
    Ok(())
}
