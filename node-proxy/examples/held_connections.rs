//! Memory of held connections through the node proxy's real data path on loopback (the
//! harness of `tests/held/mod.rs`: both node proxies in one process, in a private network
//! namespace): heap bytes per connection and the process RSS fresh, with N held and after they
//! close, over a few rounds — under the allocator the features pick (`jemalloc`, `mimalloc`,
//! else the system's), and with `dhat-heap` a heap profile (`dhat-heap.json`, sites of the
//! bytes live at the peak).
//!
//! `cargo run --release -p node-proxy --example held_connections [--features jemalloc] -- 4000 3`

#[path = "../tests/held/mod.rs"]
mod held;

use std::time::Duration;

#[path = "../tests/held/counting.rs"]
mod counting;

use counting::Counting;

/// jemalloc's settings, as the node proxy's (main.rs).
#[cfg(feature = "jemalloc")]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static MALLOC_CONF: &[u8] = node_proxy::JEMALLOC_CONF;

/// The allocator under test, counted (jemalloc, mimalloc or the system's, by feature).
#[cfg(all(feature = "jemalloc", not(feature = "dhat-heap")))]
#[global_allocator]
static ALLOCATOR: Counting<tikv_jemallocator::Jemalloc> = Counting(tikv_jemallocator::Jemalloc);
#[cfg(all(
    feature = "mimalloc",
    not(feature = "jemalloc"),
    not(feature = "dhat-heap")
))]
#[global_allocator]
static ALLOCATOR: Counting<mimalloc::MiMalloc> = Counting(mimalloc::MiMalloc);
#[cfg(not(any(feature = "jemalloc", feature = "mimalloc", feature = "dhat-heap")))]
#[global_allocator]
static ALLOCATOR: Counting<std::alloc::System> = Counting(std::alloc::System);

/// With `dhat-heap`, dhat's allocator (counted too), which records every site.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOCATOR: Counting<dhat::Alloc> = Counting(dhat::Alloc);

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let held_count = args.first().copied().unwrap_or(4_000);
    let rounds = args.get(1).copied().unwrap_or(3);
    if let Some(reason) = held::skip_reason() {
        anyhow::bail!("cannot run: {reason}");
    }
    held::enter_private_netns()?;
    held::production_logging();
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(rounds_of(held_count, rounds))
}

/// Each round: a fresh mesh (both pods), `n` connections held, closed, then the mesh stopped
/// (its pooled HBONE connections with it): what the allocator gives back shows in the RSS.
async fn rounds_of(n: usize, rounds: usize) -> anyhow::Result<()> {
    let limit = Duration::from_secs(300);
    let app = held::App::start()?;
    let allocator = if cfg!(feature = "jemalloc") {
        "jemalloc"
    } else if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else {
        "system"
    };
    println!("allocator {allocator}, {n} held connections; heap in use, process RSS");
    println!(
        "| round | idle RSS | held: heap per conn | RSS | closed: heap | RSS | stopped: heap | RSS | 10 s later | trimmed (glibc) |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for round in 1..=rounds {
        let mesh = held::Mesh::start().await?;
        let table = mesh.connections.clone();
        let first = held::open_clients(1)?;
        held::wait_for("the first connection", limit, || {
            app.count() == 1 && table.len() == 2
        })
        .await?;
        drop(first);
        app.close_all();
        held::wait_for("the first connection to close", limit, || table.is_empty()).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let idle_heap = counting::live();
        let idle_rss = counting::rss_kib();
        let clients = tokio::task::spawn_blocking(move || held::open_clients(n)).await??;
        held::wait_for("every connection", limit, || {
            app.count() == n && table.len() == 2 * n
        })
        .await?;
        let heap = counting::live();
        let rss = counting::rss_kib();
        drop(clients);
        app.close_all();
        held::wait_for("every connection to close", limit, || table.is_empty()).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (closed_heap, closed_rss) = (counting::live(), counting::rss_kib());
        mesh.stop();
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (stopped_heap, stopped_rss) = (counting::live(), counting::rss_kib());
        // jemalloc returns freed pages after its decay time; glibc only when trimmed.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let later_rss = counting::rss_kib();
        #[cfg(not(any(feature = "jemalloc", feature = "mimalloc")))]
        // SAFETY: malloc_trim only releases free memory of glibc's arenas.
        unsafe {
            libc::malloc_trim(0);
        }
        println!(
            "| {round} | {idle_rss} KiB | {} B | {rss} KiB | {} KiB | {closed_rss} KiB | {} KiB | {stopped_rss} KiB | {later_rss} KiB | {} KiB |",
            heap.saturating_sub(idle_heap) / n,
            closed_heap / 1024,
            stopped_heap / 1024,
            counting::rss_kib()
        );
    }
    Ok(())
}
