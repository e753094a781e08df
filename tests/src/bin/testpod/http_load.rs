//! The L7 load generator and server of `cargo xtask bench` (waypoint, Envoy and direct alike).
//!
//! ```text
//! testpod http-serve --port P [--size B] [--name N] [--fail-percent P] [--delay-ms D] [--log]
//!     HTTP/1.1 keep-alive server on 0.0.0.0:P (a thread per connection); every request's body
//!     is read (Content-Length) and answered 200 with B bytes (default 1024); print
//!     "listening <addr>" once bound. For the traffic-management tests and the demo: --name
//!     answers with `x-served-by: N`; --fail-percent P answers 503 to P of every 100 requests,
//!     spread evenly in arrival order (exact, not random); --delay-ms D waits before answering; --log prints
//!     "request <method> <target> <header>=<value>..." per request.
//! testpod http-load <ip:port> --seconds S [--connections C] [--size B] [--rate R] [--timeout-ms N]
//!     C keep-alive connections (default 1), each its own thread, send `POST /` with a B-byte body
//!     (default 1024) and read each whole response before the next (HTTP/1.1, no pipelining).
//!     Without --rate: as fast as answers come (saturation). With --rate R (requests/s over all
//!     connections): each connection sends on a fixed schedule and a request's latency counts
//!     from when it was due, not when it went out, so a stall shows in the tail instead of
//!     hiding it (coordinated omission). After 1 s unrecorded warm-up, print {"ok":true,
//!     "requests":..,"errors":..,"non_2xx":..,"elapsed_ms":..,"rps":..,"p50_us":..,"p90_us":..,
//!     "p99_us":..,"max_us":..[,"first_error":..]}.
//!     With --echo the same schedule runs over plain TCP against `testpod serve` (the echo):
//!     each connection reads the greeting line once, then a request is B bytes written and
//!     the same B bytes read back (a TCP request/response, as fortio's tcp mode).
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::Flags;
use crate::json::{Json, object};

/// Unrecorded warm-up before measuring: pools, slow start, the first TLS handshakes.
const WARM_UP: Duration = Duration::from_secs(1);
/// Largest header block the server or client reads before giving up on the peer.
const MAX_HEAD: usize = 64 * 1024;

/// `http-serve` (see the module documentation).
pub fn serve(flags: &Flags) -> Result<ExitCode, String> {
    let port = flags.number("port")?.ok_or("--port is required")?;
    let port = u16::try_from(port).map_err(|_| format!("--port {port} is not a port"))?;
    let size = usize::try_from(flags.number("size")?.unwrap_or(1024)).unwrap_or(1024);
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind :{port}: {e}"))?;
    println!("listening 0.0.0.0:{port}");
    let behaviour = Behaviour {
        name: flags.values.get("name").cloned(),
        fail_percent: flags.number("fail-percent")?.unwrap_or(0).min(100),
        delay: Duration::from_millis(flags.number("delay-ms")?.unwrap_or(0)),
        log: flags.switches.iter().any(|s| s == "log"),
        size,
        served: std::sync::atomic::AtomicU64::new(0),
    };
    if behaviour.name.is_some()
        || behaviour.fail_percent > 0
        || !behaviour.delay.is_zero()
        || behaviour.log
    {
        let behaviour = std::sync::Arc::new(behaviour);
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let behaviour = std::sync::Arc::clone(&behaviour);
            std::thread::spawn(move || {
                let _ = serve_behaving(stream, &behaviour);
            });
        }
        return Ok(ExitCode::SUCCESS);
    }
    let body = vec![b'x'; size];
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n"
    );
    let mut response = head.into_bytes();
    response.extend_from_slice(&body);
    let response = std::sync::Arc::new(response);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let response = std::sync::Arc::clone(&response);
        std::thread::spawn(move || {
            let _ = serve_connection(stream, &response);
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn serve_connection(stream: TcpStream, response: &[u8]) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let length = content_length(&head).unwrap_or(0);
        io::copy(&mut (&mut reader).take(length), &mut io::sink())?;
        writer.write_all(response)?;
    }
}

/// How `http-serve` answers when told to name itself, fail, wait or log.
struct Behaviour {
    name: Option<String>,
    fail_percent: u64,
    delay: Duration,
    log: bool,
    size: usize,
    /// Requests answered, across connections: the failure schedule's position.
    served: std::sync::atomic::AtomicU64,
}

fn serve_behaving(stream: TcpStream, behaviour: &Behaviour) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(head) = read_head(&mut reader)? else {
            return Ok(());
        };
        let length = content_length(&head).unwrap_or(0);
        io::copy(&mut (&mut reader).take(length), &mut io::sink())?;
        let n = behaviour
            .served
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if behaviour.log {
            let mut lines = head.lines();
            let request_line = lines.next().unwrap_or_default();
            let mut parts = request_line.split_whitespace();
            let (method, target) = (parts.next().unwrap_or("-"), parts.next().unwrap_or("-"));
            let headers: Vec<String> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| format!("{}={}", k.trim().to_ascii_lowercase(), v.trim()))
                .collect();
            let mut out = io::stdout().lock();
            writeln!(out, "request {method} {target} {}", headers.join(" "))?;
            out.flush()?;
        }
        if !behaviour.delay.is_zero() {
            std::thread::sleep(behaviour.delay);
        }
        // Spread evenly: request n fails when it carries the running share of failures past
        // a whole one (50 % is every other request, 10 % every tenth).
        let p = behaviour.fail_percent;
        let status = if (n + 1) * p / 100 > n * p / 100 {
            "503 Service Unavailable"
        } else {
            "200 OK"
        };
        let served_by = behaviour
            .name
            .as_deref()
            .map(|name| format!("x-served-by: {name}\r\n"))
            .unwrap_or_default();
        let mut response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/octet-stream\r\n{served_by}content-length: {}\r\n\r\n",
            behaviour.size
        )
        .into_bytes();
        response.resize(response.len() + behaviour.size, b'x');
        writer.write_all(&response)?;
    }
}

/// Reads one message head (through the blank line); `None` at a clean EOF before it.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let before = head.len();
        if reader.read_line(&mut head)? == 0 {
            return if head.is_empty() {
                Ok(None)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "EOF inside a message head",
                ))
            };
        }
        let line = &head[before..];
        if line == "\r\n" || line == "\n" {
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "message head too long",
            ));
        }
    }
}

fn content_length(head: &str) -> Option<u64> {
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

fn status(head: &str) -> Option<u16> {
    head.split_whitespace().nth(1)?.parse().ok()
}

/// What one connection's thread measured.
#[derive(Default)]
struct Tally {
    /// Latencies of recorded requests, µs.
    samples: Vec<u64>,
    errors: u64,
    non_2xx: u64,
    first_error: Option<String>,
}

/// `http-load` (see the module documentation).
pub fn load(flags: &Flags) -> Result<ExitCode, String> {
    let addr: SocketAddr = flags
        .positional
        .first()
        .ok_or("an <ip:port> is required")?
        .parse()
        .map_err(|e| format!("<ip:port>: {e}"))?;
    let seconds = flags.number("seconds")?.ok_or("--seconds is required")?;
    let connections = flags.number("connections")?.unwrap_or(1).clamp(1, 1024);
    let size = usize::try_from(flags.number("size")?.unwrap_or(1024)).unwrap_or(1024);
    let rate = flags.number("rate")?;
    let timeout = Duration::from_millis(flags.number("timeout-ms")?.unwrap_or(2000));
    let per_connection =
        rate.map(|r| Duration::from_secs_f64(connections as f64 / r.max(1) as f64));
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + WARM_UP;
    let deadline = measure_from + Duration::from_secs(seconds);
    let echo = flags.switches.iter().any(|s| s == "echo");
    let request = if echo {
        std::sync::Arc::new(vec![b'y'; size])
    } else {
        let mut r = format!(
            "POST / HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/octet-stream\r\ncontent-length: {size}\r\n\r\n"
        )
        .into_bytes();
        r.extend(std::iter::repeat_n(b'y', size));
        std::sync::Arc::new(r)
    };
    let threads: Vec<_> = (0..connections)
        .map(|i| {
            let request = std::sync::Arc::clone(&request);
            // Spread the connections' schedules over one interval, not all at once.
            let offset = per_connection.map(|p| p.mul_f64(i as f64 / connections as f64));
            std::thread::spawn(move || {
                let mut tally = Tally::default();
                let plan = Plan {
                    addr,
                    timeout,
                    interval: per_connection,
                    first: start + offset.unwrap_or_default(),
                    measure_from,
                    deadline,
                    echo,
                };
                run_connection(&plan, &request, &mut tally);
                tally
            })
        })
        .collect();
    let mut all = Tally::default();
    for thread in threads {
        let tally = thread.join().map_err(|_| "a load thread panicked")?;
        all.samples.extend(tally.samples);
        all.errors += tally.errors;
        all.non_2xx += tally.non_2xx;
        if all.first_error.is_none() {
            all.first_error = tally.first_error;
        }
    }
    all.samples.sort_unstable();
    let requests = all.samples.len() as u64;
    let elapsed = Duration::from_secs(seconds);
    let q = |x: f64| Json::Num(crate::load::quantile(&all.samples, x));
    let mut fields = vec![
        ("ok", Json::Bool(requests > 0)),
        ("requests", Json::Num(requests)),
        ("errors", Json::Num(all.errors)),
        ("non_2xx", Json::Num(all.non_2xx)),
        ("elapsed_ms", Json::Num(elapsed.as_millis() as u64)),
        ("rps", Json::Float(requests as f64 / elapsed.as_secs_f64())),
        ("p50_us", q(0.50)),
        ("p90_us", q(0.90)),
        ("p99_us", q(0.99)),
        (
            "max_us",
            Json::Num(all.samples.last().copied().unwrap_or(0)),
        ),
    ];
    if requests == 0 {
        // As the other load generators fail: `error` and `detail` say why.
        fields.push(("error", Json::Str("no_answer".to_owned())));
        let detail = all
            .first_error
            .clone()
            .unwrap_or_else(|| "no request was answered in the window".to_owned());
        fields.push(("detail", Json::Str(detail)));
    }
    if let Some(error) = all.first_error {
        fields.push(("first_error", Json::Str(error)));
    }
    println!("{}", object(&fields));
    Ok(if requests > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

struct Plan {
    addr: SocketAddr,
    timeout: Duration,
    /// Time between this connection's requests at a fixed rate; `None` at saturation.
    interval: Option<Duration>,
    first: Instant,
    measure_from: Instant,
    deadline: Instant,
    /// Plain TCP against the echo (greeting, then B bytes out and the same B back) instead
    /// of HTTP/1.1.
    echo: bool,
}

/// One connection's loop, reconnecting after an error (counted) until the deadline.
fn run_connection(plan: &Plan, request: &[u8], tally: &mut Tally) {
    let mut due = plan.first;
    let mut conn: Option<(TcpStream, BufReader<TcpStream>)> = None;
    // The echo's answer, read into one buffer for the whole run.
    let mut echoed = vec![0u8; if plan.echo { request.len() } else { 0 }];
    sleep_until(plan.first);
    loop {
        if plan.interval.is_some() {
            sleep_until(due);
        }
        let began = Instant::now();
        if began >= plan.deadline {
            return;
        }
        let counted_from = if plan.interval.is_some() { due } else { began };
        let result = (|| -> io::Result<u16> {
            if conn.is_none() {
                let stream = TcpStream::connect_timeout(&plan.addr, plan.timeout)?;
                stream.set_nodelay(true)?;
                stream.set_read_timeout(Some(plan.timeout))?;
                let mut reader = BufReader::new(stream.try_clone()?);
                if plan.echo {
                    // The echo greets every connection with one line before echoing.
                    let mut greeting = String::new();
                    if reader.read_line(&mut greeting)? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "closed before the greeting",
                        ));
                    }
                }
                conn = Some((stream, reader));
            }
            let Some((writer, reader)) = conn.as_mut() else {
                return Err(io::Error::other("no connection"));
            };
            writer.write_all(request)?;
            if plan.echo {
                reader.read_exact(&mut echoed)?;
                return Ok(200);
            }
            let head = read_head(reader)?.ok_or_else(|| {
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed before answering")
            })?;
            let length = content_length(&head).unwrap_or(0);
            io::copy(&mut reader.take(length), &mut io::sink())?;
            status(&head).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no status"))
        })();
        let done = Instant::now();
        let record = counted_from >= plan.measure_from && done <= plan.deadline;
        match result {
            Ok(code) => {
                if record {
                    tally.samples.push(
                        u64::try_from(done.duration_since(counted_from).as_micros())
                            .unwrap_or(u64::MAX),
                    );
                    if !(200..300).contains(&code) {
                        tally.non_2xx += 1;
                    }
                }
            }
            Err(e) => {
                conn = None;
                if record {
                    tally.errors += 1;
                    tally.first_error.get_or_insert_with(|| e.to_string());
                }
                // Do not spin on a refusing peer.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(interval) = plan.interval {
            due += interval;
        }
    }
}

fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        std::thread::sleep(when - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_read_and_parsed() {
        let mut input: &[u8] =
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 12\r\n\r\nbody";
        let head = read_head(&mut input).unwrap().unwrap();
        assert_eq!(
            (status(&head), content_length(&head)),
            (Some(503), Some(12))
        );
        assert_eq!(input, b"body");
        let mut empty: &[u8] = b"";
        assert!(read_head(&mut empty).unwrap().is_none());
        let mut cut: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n";
        assert!(read_head(&mut cut).is_err());
        let long = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert!(read_head(&mut long.as_bytes()).is_err());
        assert_eq!(content_length("GET / HTTP/1.1\r\nhost: x\r\n\r\n"), None);
    }

    #[test]
    fn echo_requests_follow_the_schedule_over_plain_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let stream = stream.unwrap();
                std::thread::spawn(move || crate::echo(stream, "peer=x local=y\n"));
            }
        });
        let start = Instant::now();
        let plan = Plan {
            addr,
            timeout: Duration::from_secs(10),
            interval: Some(Duration::from_millis(5)),
            first: start,
            measure_from: start,
            deadline: start + Duration::from_millis(200),
            echo: true,
        };
        let request = vec![b'y'; 1024];
        let mut tally = Tally::default();
        run_connection(&plan, &request, &mut tally);
        assert_eq!(tally.errors, 0, "{:?}", tally.first_error);
        assert_eq!(tally.non_2xx, 0);
        // Requests are due every 5 ms for 200 ms: how many are answered inside the window
        // depends on the machine, but never more than were due (the schedule is open-loop).
        assert!(!tally.samples.is_empty());
        assert!(tally.samples.len() <= 40, "{}", tally.samples.len());
    }
}
