//! The heap one held connection costs the node proxy, cross node, through its real data path
//! (see `held/mod.rs`): this fails when a change grows it. Its own test binary, without the
//! libtest harness, because the counting allocator is global and the private network namespace
//! must be entered before any thread exists.
//!
//! One process stands for both node proxies, so the figure is the outbound (node 1) and the
//! inbound (node 2) ends together: the outbound task, its record and labels, its share of the
//! pooled HBONE connection and its HTTP/2 stream, the inbound stream task, its record, and the
//! relays on both sides.

#[path = "held/mod.rs"]
mod held;

use std::alloc::System;
use std::process::ExitCode;
use std::time::Duration;

/// Held connections measured; 100 per pooled HBONE connection, so 10 of those.
const HELD: usize = 1_000;

/// Heap bytes per held connection, both proxies: the measured value rounded up (see
/// `main`'s output). Lower it when a change shrinks the cost; never raise it without a reason
/// in the commit.
/// Measured: 28,682 (release) before the outbound task was sized for itself and the labels
/// shared, 20,481-20,866 after (release and debug; the h2 slabs' growth varies a little),
/// of which ~7.7 KB were the relays' four 2 KiB buffers; 11,629-11,718 since an idle relay
/// holds no buffer.
const BOUND_PER_CONNECTION: usize = 12 * 1024 + 512;

/// Heap still held once every connection closed, beyond the idle figure (measured 3.2-3.9
/// MB): the capacity the 1,000 streams grew and that stays until the pooled HBONE connections
/// close at their idle timeout (h2's stream and frame slabs, ~2 KB per stream once held at a
/// time), tracing's span slab, the table's map. No connection's own state may stay.
const BOUND_AFTER_CLOSE: usize = 5 * 1024 * 1024;

#[path = "held/counting.rs"]
mod counting;

#[global_allocator]
static ALLOCATOR: counting::Counting<System> = counting::Counting(System);

fn main() -> ExitCode {
    if let Some(reason) = held::skip_reason() {
        eprintln!("conn_memory skipped: {reason}");
        return ExitCode::SUCCESS;
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("conn_memory failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    held::enter_private_netns()?;
    held::production_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(measure())
}

async fn measure() -> anyhow::Result<()> {
    let mesh = held::Mesh::start().await?;
    let app = held::App::start()?;
    let table = mesh.connections.clone();
    let limit = Duration::from_secs(120);
    // Warm-up: certificates issued, TLS configurations built, lazy statics made.
    let first = held::open_clients(1)?;
    held::wait_for("the first connection", limit, || {
        app.count() == 1 && table.len() == 2
    })
    .await?;
    drop(first);
    app.close_all();
    held::wait_for("the first connection to close", limit, || table.is_empty()).await?;
    let idle = counting::live();

    let clients = held::open_clients(HELD)?;
    held::wait_for("every connection", limit, || {
        app.count() == HELD && table.len() == 2 * HELD
    })
    .await?;
    let held_bytes = counting::live();
    let per_connection = held_bytes.saturating_sub(idle) / HELD;

    drop(clients);
    app.close_all();
    held::wait_for("every connection to close", limit, || table.is_empty()).await?;
    // The tasks end just after their records: let them.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = counting::live();
    println!(
        "heap: idle {idle} B, {HELD} held {held_bytes} B ({per_connection} B per connection, both \
         proxies), after they closed {after} B"
    );
    mesh.stop();
    anyhow::ensure!(
        per_connection <= BOUND_PER_CONNECTION,
        "{per_connection} heap bytes per held connection (bound {BOUND_PER_CONNECTION})"
    );
    let kept = after.saturating_sub(idle);
    anyhow::ensure!(
        kept <= BOUND_AFTER_CLOSE,
        "{kept} heap bytes kept after every connection closed (bound {BOUND_AFTER_CLOSE})"
    );
    Ok(())
}
