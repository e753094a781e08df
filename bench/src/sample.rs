//! One sample of every per-round figure for one set-up: connection rate with one and eight
//! client threads, bulk throughput over one and four parallel streams with its CPU cost,
//! ping-pong latency with its distribution, and (across nodes) 1 KiB request/response latency
//! at a fixed rate ([`fixed_rate`]).
//!
//! Each connection-rate run starts from a fresh client and server pod (new namespaces), so no
//! run inherits the TIME_WAIT sockets of the one before. The load generators are `testpod`
//! subcommands (the ping-pong: this binary's [`latency`] client) run inside the client pod;
//! their one JSON line is the measurement. The data plane's CPU is the bed's node proxies'
//! plus the measured pair's sidecars'.

use std::time::Duration;

use anyhow::{Context as _, bail};
use marrow_tests::testpod::{ConnectRate, LoadOutcome, Throughput, parse_load_output};
use marrow_tests::{Pod, binaries};

use super::Params;
use super::figure::Figure;
use super::latency;
use super::procfs;
use super::report::Samples;
use super::setup::{Bed, PodPair, SetUp};
use super::topology::Topology;

mod fixed_rate;
mod l7;
pub use fixed_rate::{RATE, RATE_BYTES, RATE_CONNECTIONS};
pub use l7::{L7_BODY_BYTES, L7_CONNECTIONS, L7_RATE, L7_RATE_CONNECTIONS};

/// Pause before each measurement, so the previous step's clean-up (namespace teardown runs
/// in kernel workers) is not measured with it.
const SETTLE: Duration = Duration::from_millis(300);

/// Bytes per GB (decimal, as throughput is quoted).
const GB: f64 = 1e9;
/// Parallel streams of the multi-stream bulk run (iperf's -P4).
pub const BULK_STREAMS: u64 = 4;

/// Runs every per-round figure on `bed` and records one sample of each in `samples`.
pub fn sample(bed: &mut Bed, params: &Params, samples: &mut Samples) -> anyhow::Result<()> {
    if bed.setup().topology() == Topology::L7 {
        return l7::sample(bed, params, samples);
    }
    let setup = bed.setup();
    // Pairs live until the bed goes: tearing a namespace full of TIME_WAIT sockets down runs
    // in kernel workers, which would compete with the next measurement.
    let mut pairs: Vec<PodPair> = Vec::new();
    for (threads, rate, p50, p99) in [
        (
            1,
            Figure::ConnRate1,
            Figure::ConnP50Thread1,
            Figure::ConnP99Thread1,
        ),
        (
            8,
            Figure::ConnRate8,
            Figure::ConnP50Thread8,
            Figure::ConnP99Thread8,
        ),
    ] {
        let mut pair = bed.pod_pair()?;
        std::thread::sleep(SETTLE);
        let meter = CpuMeter::start(data_plane_pids(bed, &pair))?;
        let run: ConnectRate = load(
            pair.client(),
            &[
                "connect-rate".to_owned(),
                pair.echo().to_string(),
                "--seconds".to_owned(),
                params.connect_seconds.to_string(),
                "--threads".to_owned(),
                threads.to_string(),
            ],
        )?;
        let cpu = meter.stop(bed)?;
        bed.check_alive()?;
        pair.check_alive()?;
        if run.connections == 0 {
            bail!(
                "connect-rate with {threads} thread(s) completed no connection ({} errors, first: {})",
                run.errors,
                run.first_error.as_deref().unwrap_or("none")
            );
        }
        println!(
            "    {:<8} connect-rate x{threads}: {:>8.0}/s  p50 {} us  p99 {} us  max {} us  errors {}{}",
            setup.name(),
            run.per_second(),
            run.p50_us,
            run.p99_us,
            run.max_us,
            run.errors,
            run.first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        samples.record(rate, setup, run.per_second());
        samples.record(p50, setup, run.p50_us as f64);
        samples.record(p99, setup, run.p99_us as f64);
        samples.add_errors(setup, run.errors, run.first_error);
        if threads == 8 {
            let per_conn = |cpu_s: f64| cpu_s / run.connections as f64 * 1e6;
            samples.record(Figure::ConnHostCpu8, setup, per_conn(cpu.host_seconds));
            samples.record_opt(
                Figure::ConnProxyCpu8,
                setup,
                cpu.has_plane.then_some(per_conn(cpu.plane_seconds)),
            );
        }
        pairs.push(pair);
    }
    // The last pair serves bulk and ping-pong (TIME_WAIT does not matter to one connection).
    if let Some(pair) = pairs.last_mut()
        && !setup.connections_only()
    {
        bulk_and_latency(bed, params, pair, samples)?;
    }
    check_counted(bed, samples)?;
    check_sidecars(&pairs, samples)?;
    if let Some((count, first)) = bed.proxy_problems() {
        println!(
            "    {:<8} {} logged {count} failed connections or warnings; first: {first}",
            setup.name(),
            if setup == SetUp::Ztunnel {
                "ztunnel"
            } else {
                "node-proxy"
            }
        );
    }
    for pair in &pairs {
        if let Some((count, first)) = pair.sidecar_problems() {
            println!(
                "    {:<8} the sidecars logged {count} warnings or errors; first: {first}",
                setup.name()
            );
        }
    }
    Ok(())
}

/// Checks that the sidecars of every pair carried its connections as mutual TLS: the client
/// pod's Envoy completed TLS handshakes as a client and the server pod's as a server (its
/// listeners take nothing else). Records the mTLS connections the client Envoys opened.
fn check_sidecars(pairs: &[PodPair], samples: &mut Samples) -> anyhow::Result<()> {
    let (mut opened, mut resumed) = (0, 0);
    for (i, pair) in pairs.iter().enumerate() {
        let Some((client, server)) = pair.sidecar_tls()? else {
            return Ok(());
        };
        if client.as_client == 0 || server.as_server == 0 {
            bail!(
                "sidecars: pair {} went without mTLS (client Envoy {} handshakes as a client, \
                 server Envoy {} as a server)",
                i + 1,
                client.as_client,
                server.as_server
            );
        }
        opened += client.as_client;
        resumed += client.resumed;
    }
    println!(
        "    {:<8} mTLS connections between the Envoys: {opened} ({resumed} resumed sessions)",
        SetUp::Sidecars.name()
    );
    samples.record(Figure::Tunnels, SetUp::Sidecars, opened as f64);
    Ok(())
}

/// Checks that the mesh carried the bed's connections: a proxy that counted none was bypassed,
/// and an HBONE bed whose proxies counted no mutual-TLS connection on either side (or any
/// plaintext one) fell back to plaintext and must not pass as HBONE. Records how many mTLS
/// connections carried the streams.
fn check_counted(bed: &Bed, samples: &mut Samples) -> anyhow::Result<()> {
    let setup = bed.setup();
    let Some(counted) = bed.counted()? else {
        return Ok(());
    };
    if counted.opened == 0 {
        bail!("{}: the proxies counted no connection", setup.name());
    }
    if matches!(setup, SetUp::Hbone | SetUp::HboneUnpooled | SetUp::Ztunnel) {
        let plaintext =
            (counted.opened).saturating_sub(counted.mtls_source + counted.mtls_destination);
        if counted.mtls_source == 0 || counted.mtls_destination == 0 || plaintext > 0 {
            bail!(
                "{}: not every connection was mutual TLS (source {}, destination {}, \
                 other {plaintext})",
                setup.name(),
                counted.mtls_source,
                counted.mtls_destination
            );
        }
        // marrow's proxies count the mTLS connections they dial (ztunnel's metrics differ).
        let marrow = matches!(setup, SetUp::Hbone | SetUp::HboneUnpooled);
        // Without pooling every tunnel dials its own mTLS connection: fewer dials than
        // tunnels means streams were pooled after all, and the figure would not be what it
        // says.
        if setup == SetUp::HboneUnpooled && counted.tunnels < counted.mtls_source {
            bail!(
                "hbone-unpooled: {} tunnels rode {} mTLS connections (pooling is not off)",
                counted.mtls_source,
                counted.tunnels
            );
        }
        println!(
            "    {:<8} mutual_tls connections: {} opened at the source, {} at the destination{}",
            setup.name(),
            counted.mtls_source,
            counted.mtls_destination,
            if marrow {
                format!(", over {} mTLS connections", counted.tunnels)
            } else {
                String::new()
            }
        );
        if marrow {
            samples.record(Figure::Tunnels, setup, counted.tunnels as f64);
        }
    }
    Ok(())
}

/// Bulk throughput over one and four streams with its CPU cost, then ping-pong latency, then
/// (across nodes) latency at a fixed rate, on one pod pair.
fn bulk_and_latency(
    bed: &mut Bed,
    params: &Params,
    pair: &mut PodPair,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let setup = bed.setup();
    for (streams, [gbps, host, plane]) in [
        (
            1,
            [Figure::BulkGbps, Figure::BulkHostCpu, Figure::BulkPlaneCpu],
        ),
        (
            BULK_STREAMS,
            [
                Figure::Bulk4Gbps,
                Figure::Bulk4HostCpu,
                Figure::Bulk4PlaneCpu,
            ],
        ),
    ] {
        std::thread::sleep(SETTLE);
        let meter = CpuMeter::start(data_plane_pids(bed, pair))?;
        let bulk: Throughput = load(
            pair.client(),
            &[
                "send".to_owned(),
                pair.sink().to_string(),
                "--bytes".to_owned(),
                params.bulk_bytes.to_string(),
                "--streams".to_owned(),
                streams.to_string(),
            ],
        )?;
        let cpu = meter.stop(bed)?;
        bed.check_alive()?;
        pair.check_alive()?;
        let gb = bulk.bytes as f64 / GB;
        println!(
            "    {:<8} bulk x{streams}: {:>6.2} Gbit/s  host {:.2} CPU-s/GB{}",
            setup.name(),
            bulk.gbit_per_s(),
            cpu.host_seconds / gb,
            if cpu.has_plane {
                format!("  data plane {:.2} CPU-s/GB", cpu.plane_seconds / gb)
            } else {
                String::new()
            }
        );
        samples.record(gbps, setup, bulk.gbit_per_s());
        samples.record(host, setup, cpu.host_seconds / gb);
        samples.record_opt(
            plane,
            setup,
            cpu.has_plane.then_some(cpu.plane_seconds / gb),
        );
    }
    let pids = data_plane_pids(bed, pair);
    if !pids.is_empty() {
        let mut peak = 0;
        for pid in pids {
            peak += procfs::peak_rss_kib(pid)?;
        }
        samples.record(Figure::ProxyPeakRss, setup, peak as f64 / 1024.0);
    }

    std::thread::sleep(SETTLE);
    let ping = latency::measure_in(pair.client(), pair.echo(), params.pingpong_count)?;
    bed.check_alive()?;
    pair.check_alive()?;
    println!(
        "    {:<8} ping-pong: p50 {:.1} us  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.0}",
        setup.name(),
        ping.p50_us,
        ping.p90_us,
        ping.p99_us,
        ping.p999_us,
        ping.max_us
    );
    samples.record(Figure::PingP50, setup, ping.p50_us);
    samples.record(Figure::PingP90, setup, ping.p90_us);
    samples.record(Figure::PingP99, setup, ping.p99_us);
    samples.record(Figure::PingP999, setup, ping.p999_us);
    samples.add_distribution(setup, ping);
    if setup.topology() == Topology::CrossNode {
        fixed_rate::sample(bed, params, pair, samples)?;
    }
    Ok(())
}

/// The processes whose CPU and memory are the data plane's: the bed's node proxies and the
/// pair's sidecars.
fn data_plane_pids(bed: &Bed, pair: &PodPair) -> Vec<u32> {
    let mut pids = bed.proxy_pids();
    pids.extend(pair.sidecar_pids());
    pids
}

/// Runs `testpod args…` in `pod` and parses its line as `T`.
pub fn load<T: LoadOutcome>(pod: &Pod, args: &[String]) -> anyhow::Result<T> {
    let line = format!("testpod {}", args.join(" "));
    let out = pod
        .command(binaries::testpod())
        .args(args)
        .output()
        .with_context(|| format!("running `{line}` in pod {}", pod.name()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    match parse_load_output::<T>(&stdout) {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(failure)) => bail!(
            "`{line}` in pod {} failed ({:?}): {}",
            pod.name(),
            failure.kind,
            failure.detail
        ),
        Err(e) => bail!(
            "`{line}` in pod {} ({}): {e}; stderr: {}",
            pod.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// CPU time of the host and of the data plane's processes across one measurement.
struct CpuMeter {
    host: u64,
    plane: Vec<(u32, u64)>,
}

/// What a [`CpuMeter`] measured, in CPU seconds.
struct CpuUsed {
    host_seconds: f64,
    plane_seconds: f64,
    has_plane: bool,
}

impl CpuMeter {
    /// Starts measuring the host and the data-plane processes `plane`.
    fn start(plane: Vec<u32>) -> anyhow::Result<CpuMeter> {
        let plane = plane
            .into_iter()
            .map(|pid| Ok((pid, procfs::cpu_ticks(pid)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(CpuMeter {
            host: procfs::host_busy_ticks()?,
            plane,
        })
    }

    fn stop(self, bed: &Bed) -> anyhow::Result<CpuUsed> {
        let hz = procfs::clock_ticks_per_second() as f64;
        let host = procfs::host_busy_ticks()?.saturating_sub(self.host);
        let mut plane = 0;
        for (pid, before) in &self.plane {
            plane += procfs::cpu_ticks(*pid)
                .with_context(|| format!("data-plane process {pid} of {}", bed.setup().name()))?
                .saturating_sub(*before);
        }
        Ok(CpuUsed {
            host_seconds: host as f64 / hz,
            plane_seconds: plane as f64 / hz,
            has_plane: !self.plane.is_empty(),
        })
    }
}
