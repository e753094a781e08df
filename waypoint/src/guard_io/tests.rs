use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;

/// The framing of a whole head, line by line as the watch reads it.
fn framing(head: &[u8]) -> Framing {
    let mut info = HeadInfo::default();
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if !info.line(line) {
            return Framing::Lost;
        }
    }
    info.framing()
}

#[test]
fn framing_follows_hyper() {
    let cases: &[(&[u8], Framing)] = &[
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", Framing::Empty),
        (
            b"POST / HTTP/1.1\r\ncontent-length: 12\r\n\r\n",
            Framing::Length(12),
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            Framing::Length(3),
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            Framing::Chunked,
        ),
        // Both, either order.
        (
            b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            Framing::BothLengths,
        ),
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n",
            Framing::BothLengths,
        ),
        // What hyper refuses, or what is no HTTP/1 afterwards.
        (
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            Framing::Lost,
        ),
        (
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            Framing::Lost,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            Framing::Lost,
        ),
        (
            b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n",
            Framing::Lost,
        ),
        (
            b"GET /ws HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            Framing::Lost,
        ),
        (b"CONNECT a:80 HTTP/1.1\r\n\r\n", Framing::Lost),
        (b"PRI * HTTP/2.0\r\n\r\n", Framing::Lost),
    ];
    for (head, want) in cases {
        assert_eq!(framing(head), *want, "{}", String::from_utf8_lossy(head));
    }
}

fn timeouts(header_ms: u64, idle_ms: Option<u64>) -> Timeouts {
    Timeouts {
        header: Duration::from_millis(header_ms),
        idle: idle_ms.map(Duration::from_millis),
        max_head: 8192,
    }
}

fn guard(bytes: &[u8]) -> (Arc<ConnWatch>, GuardIo<DuplexStream>) {
    let watch = Arc::new(ConnWatch::default());
    let (_client, server) = tokio::io::duplex(64);
    let mut io = GuardIo::new(server, watch.clone(), timeouts(1000, None));
    io.observe(bytes);
    (watch, io)
}

#[tokio::test]
async fn heads_are_found_behind_bodies() {
    // A keep-alive stream: no body, a sized body, a chunked body (extension, trailer),
    // then a head with both lengths.
    let stream: &[u8] = b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
        POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n\
        POST /d HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    // Whole, and a byte at a time: the same heads.
    let (watch, io) = guard(stream);
    assert_eq!(io.heads, 4);
    assert_eq!(watch.both_lengths.load(Ordering::Relaxed), 3);
    assert_eq!(io.scan, Scan::Off, "nothing follows a head with both");
    let (watch, mut io) = guard(b"");
    for b in stream {
        io.observe(std::slice::from_ref(b));
    }
    assert_eq!(io.heads, 4);
    assert_eq!(watch.both_lengths.load(Ordering::Relaxed), 3);
    // The service sees request 3, not 0..2, as the one with both.
    let flags: Vec<bool> = (0..4).map(|_| watch.dispatch()).collect();
    assert_eq!(flags, [false, false, false, true]);

    // A head over the limit is not followed (hyper answers 431); one just under it is.
    let (_, io) = guard(format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(9000)).as_bytes());
    assert_eq!((io.heads, io.scan), (0, Scan::Off));
    let (_, io) = guard(format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(8000)).as_bytes());
    assert_eq!(
        (io.heads, io.scan),
        (1, GuardIo::<DuplexStream>::next_head())
    );

    // A body that only looks like a head is not one.
    let body: &[u8] = b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let mut bytes =
        format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    bytes.extend_from_slice(body);
    let (watch, io) = guard(&bytes);
    assert_eq!(io.heads, 1);
    assert_eq!(io.scan, GuardIo::<DuplexStream>::next_head());
    assert_eq!(watch.both_lengths.load(Ordering::Relaxed), NONE);
}

/// Reads as hyper would, until the end; what the client got back.
async fn drive(mut io: GuardIo<DuplexStream>) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    while let Ok(n) = io.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    started.elapsed()
}

#[tokio::test]
async fn a_slow_head_gets_408_and_an_idle_connection_none() {
    // Half a head: 408, then the end.
    let watch = Arc::new(ConnWatch::default());
    let (mut client, server) = tokio::io::duplex(1024);
    let io = GuardIo::new(server, watch.clone(), timeouts(100, Some(5000)));
    client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
    let waited = drive(io).await;
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(watch.timed_out());
    assert!(waited < Duration::from_secs(3), "{waited:?}");

    // Nothing sent: closed at the idle timeout, without a word.
    let watch = Arc::new(ConnWatch::default());
    let (mut client, server) = tokio::io::duplex(1024);
    let io = GuardIo::new(server, watch.clone(), timeouts(100, Some(300)));
    let waited = drive(io).await;
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    let mut answer = String::new();
    let _ = tokio::time::timeout(
        Duration::from_millis(200),
        client.read_to_string(&mut answer),
    )
    .await;
    assert_eq!(answer, "");
    assert!(!watch.timed_out());
}

#[tokio::test]
async fn no_408_cuts_into_an_owed_response() {
    // One request served and its response not done; a second head half there: the timer
    // waits for the response, then answers.
    let watch = Arc::new(ConnWatch::default());
    let (mut client, server) = tokio::io::duplex(1024);
    let io = GuardIo::new(server, watch.clone(), timeouts(100, None));
    client
        .write_all(b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert!(!watch.dispatch(), "request /a handed over");
    let answering = {
        let watch = watch.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            watch.answered();
        })
    };
    let waited = drive(io).await;
    answering.await.unwrap();
    assert!(waited >= Duration::from_millis(400), "{waited:?}");
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
}
