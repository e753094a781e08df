//! Ping-pong latency with its whole distribution: 1-byte round trips on one `TCP_NODELAY`
//! connection to the server pod's echo (`testpod serve`), by the method of `testpod pingpong`
//! (read the server's greeting line, 100 unrecorded warm-up round trips, then `count`
//! measured ones, percentiles by nearest rank), but keeping a percentile ladder of every run
//! for the latency plot.
//!
//! The client runs inside the client pod (its namespace and cgroup, so capture sees it) as the
//! release build of this very binary: `marrow-bench --pingpong-client ADDR --pingpong-count N`
//! prints one JSON line, a [`Distribution`], which [`measure_in`] reads.

use std::io::{ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use marrow_tests::{Pod, binaries};
use serde::{Deserialize, Serialize};

/// Unrecorded round trips before measuring (first touch, slow start, CPU wake-up).
pub const WARM_UP: u64 = 100;
/// Ladder points per factor of ten in the tail: percentiles 0, 20.6, 36.9, …, 90, …, 99, ….
const STEPS_PER_NINE: u32 = 10;
/// Bound on connecting and on each read.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest greeting line the echo server sends.
const MAX_GREETING: usize = 256;

/// One run's round-trip times, microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Measured round trips.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// The slowest.
    pub max_us: f64,
    /// `[percentile, µs]` from the fastest (percentile 0) through the tail, evenly spaced in
    /// "nines" (`-log10(1 - p/100)`), as far as `count` resolves, then the maximum (100).
    pub ladder: Vec<[f64; 2]>,
}

impl Distribution {
    /// The distribution of `samples_ns` (sorted in place). `None` when empty.
    pub fn of(samples_ns: &mut [u64]) -> Option<Distribution> {
        if samples_ns.is_empty() {
            return None;
        }
        samples_ns.sort_unstable();
        let sorted = &*samples_ns;
        let us = |q: f64| quantile(sorted, q) as f64 / 1000.0;
        let count = sorted.len() as u64;
        let mut ladder: Vec<[f64; 2]> = ladder_quantiles(count)
            .into_iter()
            .map(|q| [(q * 100.0 * 1e4).round() / 1e4, us(q)])
            .collect();
        ladder.push([100.0, us(1.0)]);
        Some(Distribution {
            count,
            mean_us: sorted.iter().map(|&ns| ns as f64).sum::<f64>() / count as f64 / 1000.0,
            p50_us: us(0.50),
            p90_us: us(0.90),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: us(1.0),
            ladder,
        })
    }
}

/// The `q` quantile (0..=1) of ascending `sorted` by nearest rank (as `testpod`); 0 when
/// empty.
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `q = 1 - 10^(-k / STEPS_PER_NINE)` for k = 0, 1, … while at least one sample lies beyond
/// `q` (the ladder stops where `count` samples no longer tell quantiles apart).
fn ladder_quantiles(count: u64) -> Vec<f64> {
    (0..)
        .map(|k| 1.0 - 10f64.powf(-f64::from(k) / f64::from(STEPS_PER_NINE)))
        .take_while(|q| (1.0 - q) * count as f64 >= 1.0 - 1e-9)
        .collect()
}

/// `--pingpong-client`: measures `count` round trips to `addr` from this process's namespace
/// and prints the [`Distribution`] as one JSON line.
pub fn run_client(addr: SocketAddr, count: u64) -> anyhow::Result<()> {
    let distribution = client(addr, count)?;
    println!("{}", serde_json::to_string(&distribution)?);
    Ok(())
}

/// The ping-pong itself (see the module documentation).
fn client(addr: SocketAddr, count: u64) -> anyhow::Result<Distribution> {
    if count == 0 {
        bail!("--pingpong-count must be at least 1");
    }
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.set_nodelay(true).context("setting TCP_NODELAY")?;
    read_greeting(&mut stream).with_context(|| format!("reading the greeting of {addr}"))?;
    let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let mut byte = [0u8; 1];
    for i in 0..WARM_UP + count {
        let started = Instant::now();
        stream
            .write_all(b"*")
            .with_context(|| format!("sending ping {i} to {addr}"))?;
        stream
            .read_exact(&mut byte)
            .with_context(|| format!("reading echo {i} from {addr}"))?;
        if i >= WARM_UP {
            samples.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    Distribution::of(&mut samples).context("no round trip was measured")
}

/// Reads the echo server's first line (`peer=… local=…\n`), byte by byte so that nothing of
/// the echo is consumed with it.
fn read_greeting(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut byte = [0u8; 1];
    for _ in 0..MAX_GREETING {
        match stream.read(&mut byte) {
            Ok(0) => bail!("the server closed before its greeting"),
            Ok(_) if byte[0] == b'\n' => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    bail!("no end of line in the first {MAX_GREETING} bytes")
}

/// Runs the client in `pod` against `addr` (the release build of this binary, from the
/// fixtures' binary directory) and parses its line.
pub fn measure_in(pod: &Pod, addr: SocketAddr, count: u64) -> anyhow::Result<Distribution> {
    let binary = binaries::bin_dir().join(crate::BINARY);
    let line = format!("marrow-bench --pingpong-client {addr} --pingpong-count {count}");
    let out = pod
        .command(&binary)
        .args(["--pingpong-client", &addr.to_string()])
        .args(["--pingpong-count", &count.to_string()])
        .output()
        .with_context(|| format!("running `{line}` in pod {}", pod.name()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "`{line}` in pod {} failed ({}): {}",
            pod.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_line(&stdout).with_context(|| format!("`{line}` in pod {}", pod.name()))
}

/// The [`Distribution`] in the client's last non-empty line, checked for sense.
fn parse_line(stdout: &str) -> anyhow::Result<Distribution> {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .with_context(|| format!("printed nothing ({stdout:?})"))?;
    let d: Distribution =
        serde_json::from_str(last).with_context(|| format!("printed {last:?}"))?;
    let ordered = [d.p50_us, d.p90_us, d.p99_us, d.p999_us, d.max_us]
        .windows(2)
        .all(|w| w[0] <= w[1]);
    let ladder_ordered = d
        .ladder
        .windows(2)
        .all(|w| w[0][0] < w[1][0] && w[0][1] <= w[1][1]);
    if d.count == 0 || d.ladder.is_empty() || !ordered || !ladder_ordered || d.p50_us <= 0.0 {
        bail!("printed a distribution that makes no sense: {last}");
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_match_testpods() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&[], 0.5), 0);
    }

    #[test]
    fn the_ladder_stops_where_the_samples_do() {
        let q = ladder_quantiles(1000);
        assert_eq!(
            q.len(),
            31,
            "0 through 99.9: three nines of ten steps, and 0"
        );
        assert!((q[10] - 0.9).abs() < 1e-12);
        assert!((q[30] - 0.999).abs() < 1e-12);
        assert_eq!(ladder_quantiles(1), [0.0]);
        assert_eq!(ladder_quantiles(0), Vec::<f64>::new());
    }

    #[test]
    fn distributions() {
        let mut ns: Vec<u64> = (1..=10_000).rev().map(|i| i * 1000).collect();
        let d = Distribution::of(&mut ns).unwrap();
        assert_eq!((d.count, d.p50_us, d.p90_us), (10_000, 5000.0, 9000.0));
        assert_eq!((d.p99_us, d.p999_us, d.max_us), (9900.0, 9990.0, 10_000.0));
        assert!((d.mean_us - 5000.5).abs() < 1e-9);
        assert_eq!(d.ladder.first(), Some(&[0.0, 1.0]));
        assert_eq!(d.ladder.last(), Some(&[100.0, 10_000.0]));
        assert_eq!(d.ladder.len(), 42, "0 through 99.99, then the maximum");
        assert!(Distribution::of(&mut []).is_none());
        assert_eq!(d.ladder[11][0], 92.0567, "percentiles to four decimals");
        let line = serde_json::to_string(&d).unwrap();
        let back = parse_line(&format!("\n{line}\n\n")).unwrap();
        assert_eq!(
            (back.count, back.p999_us, back.max_us),
            (d.count, d.p999_us, d.max_us)
        );
        assert_eq!(back.ladder.len(), d.ladder.len());
    }

    #[test]
    fn client_lines_that_make_no_sense_are_refused() {
        assert!(parse_line("").is_err());
        assert!(parse_line("not json").is_err());
        let good = Distribution::of(&mut [1000, 2000, 3000]).unwrap();
        let mut zero = good.clone();
        zero.count = 0;
        let mut inverted = good.clone();
        inverted.p99_us = good.p50_us / 2.0;
        let mut ladder = good.clone();
        ladder.ladder.reverse();
        for bad in [zero, inverted, ladder] {
            let line = serde_json::to_string(&bad).unwrap();
            assert!(parse_line(&line).is_err(), "{line}");
        }
    }

    #[test]
    fn a_real_echo_round_trip() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"peer=1 local=2\n").unwrap();
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&buf[..n]).unwrap(),
                }
            }
        });
        let d = client(addr, 50).unwrap();
        assert_eq!(d.count, 50);
        assert!(d.p50_us > 0.0 && d.p50_us <= d.max_us);
        server.join().unwrap();
        assert!(client(addr, 1).is_err(), "nothing listens any more");
        assert!(client(addr, 0).is_err());
    }
}
