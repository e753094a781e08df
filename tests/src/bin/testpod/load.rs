//! The load generators `cargo xtask bench` drives, and the sink server they measure against.
//!
//! ```text
//! testpod connect-rate <ip:port> --seconds S [--threads T] [--timeout-ms N]
//!     T threads each loop connect → read the greeting line → close until S seconds passed;
//!     print {"ok":true,"connections":..,"errors":..,"elapsed_ms":..,"p50_us":..,"p99_us":..,
//!     "max_us":..[,"first_error":..]} (latency = connect + greeting). Only connections done
//!     by the deadline count, over elapsed_ms = S s (an attempt stalled across the deadline
//!     does not stretch it); errors (default timeout 2 s) are counted, not fatal.
//! testpod send <ip:port> --bytes N [--streams P] [--timeout-ms N]   (against `serve --sink`)
//!     send N zero bytes, half-close, wait for the sink's "received=<n>" line;
//!     print {"ok":true,"bytes":N,"elapsed_us":..}: the time until the app had every byte.
//!     With --streams P (iperf's -P): P connections, all greeted before the clock starts,
//!     each a thread sending N / P bytes at once; elapsed_us runs until the last sink
//!     acknowledged its share.
//! testpod pingpong <ip:port> --count N [--size B] [--timeout-ms N]   (against `serve`)
//!     after 100 unrecorded warm-up exchanges, N round trips of B bytes (default 1) on one
//!     TCP_NODELAY connection; print {"ok":true,"count":N,"p50_us":..,"p90_us":..,"p99_us":..,
//!     "p999_us":..,"mean_us":..}.
//! testpod hold <ip:port> --connections N [--seconds S] [--timeout-ms N]
//!     open N connections one by one, reading each greeting (so every hop is established);
//!     print {"ok":true,"held":N,"elapsed_ms":..} once all are open, keep them S seconds
//!     (default 3600, or until killed), then exit.
//! ```

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::json::{Json, object};
use crate::{Failure, Flags, read_line};

/// Read/write size of `send` and the sink: large enough that syscalls are not the bottleneck.
const BULK_CHUNK: usize = 128 * 1024;
/// Unrecorded round trips before `pingpong` measures (first-touch, slow start, CPU wake-up).
const WARM_UP: u64 = 100;

/// Raises the soft open-files limit to the hard one: `hold` and a server facing it need more
/// than the usual 1,024 descriptors. Failure only means the default limit stays.
pub fn raise_nofile_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The sink side of `serve --sink`: greets, reads and discards until EOF, then answers
/// `received=<bytes>` and closes.
pub fn sink(mut stream: TcpStream, greeting: &str) -> io::Result<()> {
    stream.write_all(greeting.as_bytes())?;
    let mut buf = vec![0u8; BULK_CHUNK];
    let mut received: u64 = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.write_all(format!("received={received}\n").as_bytes())?;
    stream.shutdown(Shutdown::Both)
}

fn flag_failure(detail: String) -> Failure {
    Failure {
        kind: "other",
        detail,
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The `q` quantile (0..=1) of ascending `sorted` by nearest rank; 0 when empty.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `send`: the body after the greeting (see the module documentation).
pub fn send(
    flags: &Flags,
    stream: TcpStream,
    _greeting: String,
) -> Result<Vec<(&'static str, Json)>, Failure> {
    let total = flags.number("bytes").map_err(flag_failure)?.unwrap_or(0);
    let streams = flags.number("streams").map_err(flag_failure)?.unwrap_or(1);
    let streams = streams.clamp(1, 64);
    let mut connections = vec![stream];
    if streams > 1 {
        let addr = stream_peer(&connections[0])?;
        let timeout = connections[0]
            .read_timeout()
            .ok()
            .flatten()
            .unwrap_or(Duration::from_secs(60));
        for _ in 1..streams {
            let extra = TcpStream::connect_timeout(&addr, timeout)
                .map_err(|e| Failure::io("connect", &e))?;
            extra
                .set_read_timeout(Some(timeout))
                .and_then(|()| extra.set_write_timeout(Some(timeout)))
                .map_err(|e| Failure::io("set timeouts", &e))?;
            read_line(&extra)?;
            connections.push(extra);
        }
    }
    // Every stream gets an equal share; the first takes the remainder.
    let share = total / streams;
    let started = Instant::now();
    let workers: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, stream)| {
            let bytes = if i == 0 {
                total - share * (streams - 1)
            } else {
                share
            };
            std::thread::spawn(move || send_one(stream, bytes))
        })
        .collect();
    for worker in workers {
        worker
            .join()
            .map_err(|_| flag_failure("a sending thread panicked".to_owned()))??;
    }
    let elapsed = started.elapsed();
    Ok(vec![
        ("bytes", Json::Num(total)),
        ("streams", Json::Num(streams)),
        ("elapsed_us", Json::Num(micros(elapsed))),
    ])
}

/// The address `stream` is connected to (a sidecar's loopback listener or the server).
fn stream_peer(stream: &TcpStream) -> Result<SocketAddr, Failure> {
    stream
        .peer_addr()
        .map_err(|e| Failure::io("reading the peer address", &e))
}

/// Sends `total` zero bytes on one greeted connection, half-closes, and checks the sink's
/// acknowledgement.
fn send_one(mut stream: TcpStream, total: u64) -> Result<(), Failure> {
    let buf = vec![0u8; BULK_CHUNK];
    let mut left = total;
    while left > 0 {
        let n = usize::try_from(left.min(BULK_CHUNK as u64)).unwrap_or(BULK_CHUNK);
        stream
            .write_all(&buf[..n])
            .map_err(|e| Failure::io("sending", &e))?;
        left -= n as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| Failure::io("half-closing", &e))?;
    let reply = read_line(&stream)?;
    let received = reply
        .strip_prefix("received=")
        .and_then(|n| n.parse::<u64>().ok());
    if received != Some(total) {
        return Err(flag_failure(format!(
            "sent {total} bytes but the sink answered {reply:?}"
        )));
    }
    Ok(())
}

/// `pingpong`: the body after the greeting (see the module documentation).
pub fn pingpong(
    flags: &Flags,
    mut stream: TcpStream,
    _greeting: String,
) -> Result<Vec<(&'static str, Json)>, Failure> {
    let count = flags.number("count").map_err(flag_failure)?.unwrap_or(1000);
    let size = flags.number("size").map_err(flag_failure)?.unwrap_or(1);
    let size = usize::try_from(size.clamp(1, 1 << 20)).unwrap_or(1);
    stream
        .set_nodelay(true)
        .map_err(|e| Failure::io("setting TCP_NODELAY", &e))?;
    let out = vec![0x2au8; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for i in 0..WARM_UP + count {
        let started = Instant::now();
        stream
            .write_all(&out)
            .map_err(|e| Failure::io("sending a ping", &e))?;
        stream
            .read_exact(&mut back)
            .map_err(|e| Failure::io("reading the echo", &e))?;
        if i >= WARM_UP {
            samples.push(u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX));
        }
    }
    samples.sort_unstable();
    let us = |ns: u64| ns as f64 / 1000.0;
    let mean = samples.iter().sum::<u64>() as f64 / samples.len().max(1) as f64;
    Ok(vec![
        ("count", Json::Num(count)),
        ("p50_us", Json::Float(us(quantile(&samples, 0.50)))),
        ("p90_us", Json::Float(us(quantile(&samples, 0.90)))),
        ("p99_us", Json::Float(us(quantile(&samples, 0.99)))),
        ("p999_us", Json::Float(us(quantile(&samples, 0.999)))),
        ("mean_us", Json::Float(mean / 1000.0)),
    ])
}

/// One connection of `connect-rate`: connect, read the greeting line, close.
fn connect_once(addr: &SocketAddr, timeout: Duration) -> io::Result<()> {
    fn context(what: &'static str) -> impl Fn(io::Error) -> io::Error {
        move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
    }
    let mut stream = TcpStream::connect_timeout(addr, timeout).map_err(context("connect"))?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(context("set timeouts"))?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    while !buf[..got].contains(&b'\n') {
        if got == buf.len() {
            return Err(io::Error::other("greeting longer than 256 bytes"));
        }
        match stream.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(context("reading the greeting")(
                    ErrorKind::UnexpectedEof.into(),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(context("reading the greeting")(e)),
        }
    }
    Ok(())
}

/// What one `connect-rate` thread saw.
#[derive(Default)]
struct RateThread {
    latencies_us: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// `testpod connect-rate` (see the module documentation).
pub fn connect_rate(flags: &Flags) -> Result<ExitCode, String> {
    let addr = target(flags)?;
    let seconds = flags
        .number("seconds")?
        .ok_or("connect-rate needs --seconds")?;
    let threads = flags.number("threads")?.unwrap_or(1).clamp(1, 256);
    let timeout = Duration::from_millis(flags.number("timeout-ms")?.unwrap_or(2_000).max(1));
    let start = Arc::new(Barrier::new(usize::try_from(threads).unwrap_or(1) + 1));
    let duration = Duration::from_secs(seconds);
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                let deadline = Instant::now() + duration;
                let mut seen = RateThread::default();
                while Instant::now() < deadline {
                    let began = Instant::now();
                    match connect_once(&addr, timeout) {
                        Ok(()) if Instant::now() <= deadline => {
                            seen.latencies_us.push(micros(began.elapsed()));
                        }
                        Ok(()) => {}
                        Err(e) => {
                            seen.errors += 1;
                            seen.first_error.get_or_insert_with(|| e.to_string());
                        }
                    }
                }
                seen
            })
        })
        .collect();
    start.wait();
    let mut all = RateThread::default();
    for worker in workers {
        let seen = worker.join().map_err(|_| "a client thread panicked")?;
        all.latencies_us.extend(seen.latencies_us);
        all.errors += seen.errors;
        all.first_error = all.first_error.or(seen.first_error);
    }
    all.latencies_us.sort_unstable();
    let mut fields = vec![
        ("ok", Json::Bool(true)),
        ("connections", Json::Num(all.latencies_us.len() as u64)),
        ("errors", Json::Num(all.errors)),
        ("elapsed_ms", Json::Num(millis(duration))),
        ("p50_us", Json::Num(quantile(&all.latencies_us, 0.50))),
        ("p99_us", Json::Num(quantile(&all.latencies_us, 0.99))),
        ("max_us", Json::Num(quantile(&all.latencies_us, 1.0))),
    ];
    if let Some(e) = all.first_error {
        fields.push(("first_error", Json::Str(e)));
    }
    println!("{}", object(&fields));
    Ok(ExitCode::SUCCESS)
}

/// `testpod hold` (see the module documentation).
pub fn hold(flags: &Flags) -> Result<ExitCode, String> {
    let addr = target(flags)?;
    let wanted = flags
        .number("connections")?
        .ok_or("hold needs --connections")?;
    let seconds = flags.number("seconds")?.unwrap_or(3600);
    let timeout = Duration::from_millis(flags.number("timeout-ms")?.unwrap_or(5_000).max(1));
    let started = Instant::now();
    let mut held = Vec::with_capacity(usize::try_from(wanted).unwrap_or(0));
    for _ in 0..wanted {
        let opened = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|e| Failure::io("connect", &e))
            .and_then(|stream| {
                stream
                    .set_read_timeout(Some(timeout))
                    .map_err(|e| Failure::io("set timeouts", &e))?;
                read_line(&stream)?;
                Ok(stream)
            });
        match opened {
            Ok(stream) => held.push(stream),
            Err(f) => {
                let detail = format!("after {} connections: {}", held.len(), f.detail);
                let all = [
                    ("ok", Json::Bool(false)),
                    ("error", Json::Str(f.kind.to_owned())),
                    ("detail", Json::Str(detail)),
                ];
                println!("{}", object(&all));
                return Ok(ExitCode::from(1));
            }
        }
    }
    let all = [
        ("ok", Json::Bool(true)),
        ("held", Json::Num(held.len() as u64)),
        ("elapsed_ms", Json::Num(millis(started.elapsed()))),
    ];
    let mut out = io::stdout().lock();
    writeln!(out, "{}", object(&all))
        .and_then(|()| out.flush())
        .map_err(|e| e.to_string())?;
    drop(out);
    std::thread::sleep(Duration::from_secs(seconds));
    drop(held);
    Ok(ExitCode::SUCCESS)
}

fn target(flags: &Flags) -> Result<SocketAddr, String> {
    let target = flags.positional.first().ok_or("missing <ip:port>")?;
    target
        .parse()
        .map_err(|e| format!("bad address {target:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.99), 990);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&v, 1.0), 1000);
        assert_eq!(quantile(&v, 0.0), 1);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(quantile(&[7], 0.999), 7);
    }

    #[test]
    fn send_splits_the_bytes_over_parallel_streams_and_checks_every_share() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let sinks: Vec<_> = listener
                .incoming()
                .take(4)
                .map(|stream| {
                    let stream = stream.unwrap();
                    std::thread::spawn(move || sink(stream, "hello\n").unwrap())
                })
                .collect();
            for sink in sinks {
                sink.join().unwrap();
            }
        });
        let args: Vec<String> = ["--bytes", "1000003", "--streams", "4"]
            .map(str::to_owned)
            .to_vec();
        let flags = Flags::parse(&args).unwrap();
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let greeting = read_line(&stream).unwrap_or_else(|f| panic!("{}", f.detail));
        let fields = send(&flags, stream, greeting).unwrap_or_else(|f| panic!("{}", f.detail));
        server.join().unwrap();
        let field = |name: &str| match fields.iter().find(|(k, _)| *k == name) {
            Some((_, Json::Num(n))) => *n,
            _ => panic!("no {name}"),
        };
        assert_eq!(field("bytes"), 1_000_003);
        assert_eq!(field("streams"), 4);
    }
}
