//! 1 KiB TCP request/response at a fixed 1,000 requests/s over 16 connections, the shape of
//! Istio's published latency figures (fortio at 1,000 qps, 16 connections, 1 KiB payloads), on
//! the cross-node topology: `testpod http-load --echo` in the client pod against the server's
//! echo. The schedule is open-loop and each request is timed from when it was due, not when it
//! went out, so a stall shows in the tail instead of delaying the requests behind it
//! (coordinated omission).

use marrow_tests::testpod::HttpLoad;

use super::{SETTLE, load};
use crate::Params;
use crate::figure::Figure;
use crate::report::Samples;
use crate::setup::{Bed, PodPair};

/// Requests per second over all connections.
pub const RATE: u64 = 1_000;
/// Connections the rate is spread over.
pub const RATE_CONNECTIONS: u64 = 16;
/// Bytes of each request, echoed back as the response.
pub const RATE_BYTES: u64 = 1_024;

/// Runs the fixed-rate figure on `pair` and records its p50, p90 and p99.
pub fn sample(
    bed: &mut Bed,
    params: &Params,
    pair: &mut PodPair,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let setup = bed.setup();
    std::thread::sleep(SETTLE);
    let run: HttpLoad = load(
        pair.client(),
        &[
            "http-load".to_owned(),
            pair.echo().to_string(),
            "--echo".to_owned(),
            "--seconds".to_owned(),
            params.rate_seconds.to_string(),
            "--connections".to_owned(),
            RATE_CONNECTIONS.to_string(),
            "--rate".to_owned(),
            RATE.to_string(),
            "--size".to_owned(),
            RATE_BYTES.to_string(),
        ],
    )?;
    bed.check_alive()?;
    pair.check_alive()?;
    println!(
        "    {:<8} 1 KiB at {RATE}/s: {:>6.0} req/s  p50 {} us  p90 {} us  p99 {} us  max {} us  errors {}",
        setup.name(),
        run.rps,
        run.p50_us,
        run.p90_us,
        run.p99_us,
        run.max_us,
        run.errors
    );
    samples.record(Figure::RateP50, setup, run.p50_us as f64);
    samples.record(Figure::RateP90, setup, run.p90_us as f64);
    samples.record(Figure::RateP99, setup, run.p99_us as f64);
    samples.add_errors(setup, run.errors, run.first_error);
    Ok(())
}
