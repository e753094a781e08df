//! The `node-proxy` command: which programs and commands exist. Each arm hands its parsed
//! flags to the program's entry — the node proxy ([`node_proxy::app::run`]), the mesh CA
//! ([`marrow_ca::run`]) — or to a one-shot command ([`commands`]).

mod commands;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use commands::{AdminArgs, CaCommand, CniCommand, ExplainArgs, RoutesArgs};
use marrow_settings::{Flags, ProcessEnv};
use node_proxy::config::Config;

#[derive(Parser)]
#[command(name = "node-proxy", version, about = "marrow's per-node proxy")]
struct Cli {
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "MARROW_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the capture, serve enrollment and proxy enrolled pods.
    Run(Flags<Config>),
    /// Explain the L4 decision for a connection (or, with --method/--path/--host/--header, the
    /// waypoint's for a request), from a state file: allow or deny, the deciding policy and
    /// rule, and why.
    Explain(ExplainArgs),
    /// The route that applies to a request or connection to a Service (VirtualService,
    /// HTTPRoute, GRPCRoute or TCPRoute rule), its weighted backends and its timeout, retry and
    /// fault policy, from a state file.
    Routes(RoutesArgs),
    /// The local mesh CA (demos, tests, small clusters).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Ask a running node proxy (its node-local admin API): workloads, services, policies,
    /// certificates, open connections, configuration, log level, or a policy decision.
    Admin(AdminArgs),
    /// Remove this proxy's pinned eBPF maps and links: capture ends for every pod on the node.
    Cleanup {
        /// The proxy's bpffs directory.
        #[arg(long, env = "MARROW_BPFFS_DIR", default_value = "/sys/fs/bpf/marrow")]
        bpffs_dir: PathBuf,
    },
    /// Put redirect-cni on this node and chain it into the primary CNI network, or take it
    /// out (the DaemonSet's installer container).
    #[command(subcommand)]
    Cni(CniCommand),
}

/// The allocator (feature `jemalloc`, on by default). Measured with
/// `examples/held_connections.rs` (4,000 held connections through both proxies in one process,
/// then closed and the pods stopped): glibc 12.0 MiB idle, 93.7 MiB held, 94.1 MiB ten seconds
/// after everything closed (2.7 MiB of heap in use: nothing returned; 34 MiB after a
/// `malloc_trim`); jemalloc 13.3 / 97.1 / 25.7 MiB (freed pages returned by its background
/// thread); mimalloc 24.0 / 129.8 / 103.7 MiB. The same heap in every case (~20.5 KB per
/// connection): only what is given back differs. ztunnel moved to jemalloc for the same reason.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings ([`node_proxy::JEMALLOC_CONF`]), read by jemalloc at its start under
/// its prefixed name.
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = node_proxy::JEMALLOC_CONF;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let logging = node_proxy::app::logging::init(cli.log_json);
    match cli.command {
        Command::Run(flags) => {
            let config = flags.load(&ProcessEnv)?;
            node_proxy::app::run(config, Some(logging))?;
            Ok(())
        }
        Command::Explain(args) => commands::explain(&args),
        Command::Routes(args) => commands::routes(&args),
        Command::Admin(args) => commands::admin(&args),
        Command::Ca(CaCommand::Create {
            dir,
            trust_domain,
            days,
        }) => commands::ca_create(&dir, &trust_domain, days),
        Command::Ca(CaCommand::Serve(flags)) => {
            let config = flags.load(&ProcessEnv)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("building the runtime")?;
            runtime.block_on(marrow_ca::run(config))?;
            Ok(())
        }
        Command::Cleanup { bpffs_dir } => commands::cleanup(&bpffs_dir),
        Command::Cni(command) => commands::cni(command),
    }
}
