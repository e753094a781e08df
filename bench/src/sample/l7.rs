//! One sample of every L7 figure for one bed: requests/s at saturation over 1 and 16 keep-alive
//! connections, latency at a fixed 1,000 requests/s over 16 connections (as Istio publishes its
//! figures: 1 KiB requests, 1,000 req/s, 16 client connections) with the CPU it costs, and the
//! data plane's memory idle and after the load. `testpod http-load` in the client pod is the load
//! generator (`POST /` with a 1 KiB body, answered with 1 KiB).

use std::time::Instant;

use anyhow::bail;
use marrow_tests::testpod::HttpLoad;

use super::{CpuMeter, SETTLE, load};
use crate::Params;
use crate::figure::Figure;
use crate::procfs;
use crate::report::Samples;
use crate::setup::{Bed, L7Pair, RetryCount};
use crate::topology::SetUp;

/// Keep-alive connections of the saturation runs.
pub const L7_CONNECTIONS: [u64; 2] = [1, 16];
/// Requests per second of the fixed-rate run.
pub const L7_RATE: u64 = 1_000;
/// Connections of the fixed-rate run.
pub const L7_RATE_CONNECTIONS: u64 = 16;
/// Request and response body size.
pub const L7_BODY_BYTES: u64 = 1_024;

/// Runs every L7 figure on `bed` (an L7 set-up) and records one sample of each.
pub fn sample(bed: &mut Bed, params: &Params, samples: &mut Samples) -> anyhow::Result<()> {
    let setup = bed.setup();
    let mut pair = bed.l7_pair()?;
    let plane = plane_pids(bed, &pair);
    std::thread::sleep(SETTLE);
    if !plane.is_empty() {
        let mut idle = 0;
        for pid in &plane {
            idle += procfs::memory(*pid)?.rss_kib;
        }
        samples.record(Figure::L7RssIdle, setup, idle as f64 / 1024.0);
    }
    for (connections, figure) in L7_CONNECTIONS
        .into_iter()
        .zip([Figure::L7Rps1, Figure::L7Rps16])
    {
        std::thread::sleep(SETTLE);
        let before = pair.waypoint_retries()?;
        let run = http_load(&pair, params.l7_seconds, connections, None)?;
        check(bed, &mut pair, &run)?;
        // Over one connection the requests are serial: the retries per request, and so
        // the time a retry adds, are read without other requests' tries in between.
        if connections == 1
            && let (Some(before), Some(after)) = (before, pair.waypoint_retries()?)
        {
            record_retries(setup, before, after, samples)?;
        }
        println!(
            "    {:<8} http x{connections}: {:>8.0} req/s  p50 {} us  p99 {} us  errors {}  non-2xx {}",
            setup.name(),
            run.rps,
            run.p50_us,
            run.p99_us,
            run.errors,
            run.non_2xx
        );
        samples.record(figure, setup, run.rps);
        samples.add_errors(setup, run.errors + run.non_2xx, run.first_error);
    }
    std::thread::sleep(SETTLE);
    let meter = CpuMeter::start(plane.clone())?;
    let began = Instant::now();
    let run = http_load(
        &pair,
        params.l7_rate_seconds,
        L7_RATE_CONNECTIONS,
        Some(L7_RATE),
    )?;
    // The rate holds over the warm-up and the window alike, so CPU over the whole command's
    // wall time is the CPU of 1,000 requests/s.
    let wall = began.elapsed().as_secs_f64();
    let cpu = meter.stop(bed)?;
    check(bed, &mut pair, &run)?;
    let millicores = |cpu_seconds: f64| cpu_seconds / wall * 1000.0;
    println!(
        "    {:<8} http at {L7_RATE}/s: p50 {} us  p90 {}  p99 {}  max {}{}",
        setup.name(),
        run.p50_us,
        run.p90_us,
        run.p99_us,
        run.max_us,
        if cpu.has_plane {
            format!(
                "  data plane {:.0} millicores",
                millicores(cpu.plane_seconds)
            )
        } else {
            String::new()
        }
    );
    samples.record(Figure::L7P50, setup, run.p50_us as f64);
    samples.record(Figure::L7P90, setup, run.p90_us as f64);
    samples.record(Figure::L7P99, setup, run.p99_us as f64);
    samples.record_opt(
        Figure::L7PlaneCpu,
        setup,
        cpu.has_plane.then_some(millicores(cpu.plane_seconds)),
    );
    samples.add_errors(setup, run.errors + run.non_2xx, run.first_error);
    if !plane.is_empty() {
        let mut peak = 0;
        for pid in &plane {
            peak += procfs::peak_rss_kib(*pid)?;
        }
        samples.record(Figure::L7RssLoad, setup, peak as f64 / 1024.0);
    }
    if let Some(hop) = pair.hop_pid() {
        let peak = procfs::peak_rss_kib(hop)?;
        samples.record(Figure::L7HopRss, setup, peak as f64 / 1024.0);
    }
    if let Some(requests) = pair.hop_requests()? {
        if requests == 0 {
            bail!("{}: the L7 hop counted no answered request", setup.name());
        }
        println!(
            "    {:<8} the L7 hop answered {requests} requests 200",
            setup.name()
        );
    }
    if let Some(counted) = bed.counted()? {
        // Node 1's proxy carried the client's connections to the waypoint, node 2's the
        // waypoint's to the server: both as mutual TLS, or the bed is not what it claims.
        if counted.mtls_source == 0 || counted.mtls_destination == 0 {
            bail!(
                "{}: the node proxies counted {} mutual-TLS connections at the source and {} \
                 at the destination",
                setup.name(),
                counted.mtls_source,
                counted.mtls_destination
            );
        }
    }
    if let Some((count, first)) = pair.problems() {
        println!(
            "    {:<8} the L7 hop or sidecars logged {count} warnings or errors; first: {first}",
            setup.name()
        );
    }
    if let Some((count, first)) = bed.proxy_problems() {
        println!(
            "    {:<8} node-proxy logged {count} failed connections or warnings; first: {first}",
            setup.name()
        );
    }
    Ok(())
}

/// Records the waypoint's retries per client request between `before` and `after` (the
/// 1-connection saturation run); fails when the retry set-up made none (it would measure nothing).
fn record_retries(
    setup: SetUp,
    before: RetryCount,
    after: RetryCount,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let requests = after.requests.saturating_sub(before.requests);
    let retries = after.retries.saturating_sub(before.retries);
    if requests == 0 {
        bail!("{}: the waypoint counted no request", setup.name());
    }
    if setup == SetUp::WaypointRetry && retries == 0 {
        bail!(
            "{}: the waypoint made no retry over {requests} requests",
            setup.name()
        );
    }
    let per_request = retries as f64 / requests as f64;
    println!(
        "    {:<8} the waypoint made {retries} retries for {requests} requests ({per_request:.2} each)",
        setup.name()
    );
    samples.record(Figure::L7RetriesPerRequest, setup, per_request);
    Ok(())
}

/// The bed's node proxies and the pair's hop and sidecars.
fn plane_pids(bed: &Bed, pair: &L7Pair) -> Vec<u32> {
    let mut pids = bed.proxy_pids();
    pids.extend(pair.plane_pids());
    pids
}

/// `testpod http-load` against the pair's target: `seconds` measured after the warm-up, over
/// `connections`, at saturation or at `rate` requests/s.
fn http_load(
    pair: &L7Pair,
    seconds: u64,
    connections: u64,
    rate: Option<u64>,
) -> anyhow::Result<HttpLoad> {
    let mut args = vec![
        "http-load".to_owned(),
        pair.target().to_string(),
        "--seconds".to_owned(),
        seconds.to_string(),
        "--connections".to_owned(),
        connections.to_string(),
        "--size".to_owned(),
        L7_BODY_BYTES.to_string(),
    ];
    if let Some(rate) = rate {
        args.extend(["--rate".to_owned(), rate.to_string()]);
    }
    load(pair.client(), &args)
}

/// Fails when a process of the data plane exited, or a run answered nothing.
fn check(bed: &mut Bed, pair: &mut L7Pair, run: &HttpLoad) -> anyhow::Result<()> {
    bed.check_alive()?;
    pair.check_alive()?;
    if run.requests == 0 {
        bail!(
            "{}: no request was answered ({} errors, first: {})",
            bed.setup().name(),
            run.errors,
            run.first_error.as_deref().unwrap_or("none")
        );
    }
    Ok(())
}
