//! How much memory the API server source keeps per remote pod: a replay server holding N pods
//! of another node (real API JSON, ~2.5 KiB each), the source lists them, then the server is
//! dropped and the heap still in use is counted (a counting allocator: RSS would include the
//! allocator's free pages and the server's copy).
//!
//! `cargo run --release -p node-proxy --example remote_pods_memory -- 10000 100000`

use std::alloc::System;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_mesh::apiserver::KubeSource;
use marrow_mesh::state::StateStore;

#[path = "../tests/held/counting.rs"]
mod counting;

#[global_allocator]
static ALLOCATOR: counting::Counting<System> = counting::Counting(System);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let counts: Vec<usize> = match std::env::args().skip(1).map(|a| a.parse()).collect() {
        Ok(counts) => counts,
        Err(e) => {
            eprintln!("usage: remote_pods_memory [POD_COUNT...]: {e}");
            std::process::exit(2);
        }
    };
    let counts = if counts.is_empty() {
        vec![10_000, 100_000]
    } else {
        counts
    };
    println!(
        "| remote pods | heap kept by the source | per pod | list → state | process RSS after |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    for n in counts {
        let baseline = counting::live();
        let server = replay_apiserver::ApiServer::start().await;
        server.seed([replay_apiserver::objects::namespace("shop", true)]);
        server.seed((0..n).map(|i| {
            let ip = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
            replay_apiserver::objects::pod("shop", &format!("pod-{i}"), "node-b", &ip, "sa")
        }));
        let store = Arc::new(StateStore::new());
        let started = Instant::now();
        let watch = KubeSource::new(server.client(), Some("node-a".into()), "istio-system")
            .start(store.clone());
        while store.snapshot().workload_count() < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = started.elapsed();
        drop(server);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let kept = counting::live().saturating_sub(baseline);
        println!(
            "| {n} | {:.1} MiB | {:.0} B | {:.1} s | {:.1} MiB |",
            kept as f64 / 1048576.0,
            kept as f64 / n as f64,
            took.as_secs_f64(),
            counting::rss_kib() as f64 / 1024.0
        );
        drop(watch);
        drop(store);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
