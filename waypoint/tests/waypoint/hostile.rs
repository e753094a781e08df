//! Hostile clients: each gets a clear 400/408/413/414/431 or a closed connection, and the next
//! well-behaved client is served as if nothing happened.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::AsyncWriteExt;

use crate::harness::{TestMesh, body_of, raw_exchange, vip};

async fn still_serves(mesh: &TestMesh) {
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(mesh.net), 80)).await;
    let request = Request::get("/after")
        .header("host", "web.shop")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = http.send_request(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the next client is served"
    );
}

/// The waypoint's `istio_requests_total` with `response_code` `code`, once it reaches `want`
/// (requests are recorded when their connection or response ends), or after a second.
async fn requests_with_code(mesh: &TestMesh, code: u16, want: f64) -> f64 {
    let label = format!("response_code=\"{code}\"");
    let mut total = 0.0;
    for _ in 0..50 {
        let metrics = body_of(mesh.waypoint.metrics_addr, "/metrics").await;
        total = metrics
            .lines()
            .filter(|l| l.starts_with("istio_requests_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if total >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    total
}

async fn raw(mesh: &TestMesh, bytes: &[u8]) -> String {
    let (_c, mut stream) = mesh
        .tunnel(SocketAddr::new(vip(mesh.net), 80))
        .await
        .unwrap();
    raw_exchange(&mut stream, bytes, Duration::from_secs(3)).await
}

#[tokio::test]
async fn a_connect_to_no_service_is_refused_with_400() {
    let mesh = TestMesh::start(20, &[1]).await;
    let nowhere: SocketAddr = "10.1.2.3:80".parse().unwrap();
    match mesh.tunnel(nowhere).await {
        Err(marrow_mesh::hbone::HboneError::Refused(status)) => {
            assert_eq!(status, StatusCode::BAD_REQUEST)
        }
        other => panic!("expected a 400 refusal, got {:?}", other.map(|_| ())),
    }
    // A known Service's VIP on a port it does not have is no target either.
    let wrong_port = SocketAddr::new(vip(20), 8443);
    assert!(mesh.tunnel(wrong_port).await.is_err());
    // Nor is a Service that does not use this waypoint: the waypoint is no open relay.
    let not_ours = SocketAddr::new(crate::harness::opted_out_vip(20), 80);
    match mesh.tunnel(not_ours).await {
        Err(marrow_mesh::hbone::HboneError::Refused(status)) => {
            assert_eq!(status, StatusCode::BAD_REQUEST)
        }
        other => panic!("expected a 400 refusal, got {:?}", other.map(|_| ())),
    }
    still_serves(&mesh).await;
}

#[tokio::test]
async fn request_smuggling_is_refused() {
    let mesh = TestMesh::start(21, &[1]).await;
    let cases: &[(&str, &[u8])] = &[
        (
            "differing content-lengths",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: one\r\n two\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let answer = raw(&mesh, bytes).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "{what}: one answer, the connection closed: {answer}"
        );
    }
    // Content-Length with Transfer-Encoding, either order: 400 and close, as Envoy answers;
    // nothing goes upstream, and the bytes after the chunked body never become a request.
    let both_orders: [&[u8]; 2] = [
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-length: 40\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for bytes in both_orders {
        let upstream_before = mesh.connects().len();
        let answer = raw(&mesh, bytes).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "one answer: {answer}"
        );
        assert!(answer.contains("connection: close"), "{answer}");
        assert_eq!(
            mesh.connects().len(),
            upstream_before,
            "nothing reached the upstream"
        );
    }
    // Behind a served chunked request on the same keep-alive connection: found all the same.
    let answer = raw(
        &mesh,
        b"POST /first HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
          5;x=1\r\nhello\r\n0\r\n\r\n\
          POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
          0\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i..i + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 200", "HTTP/1.1 400"], "{answer}");
    // Recorded like any other local 400 (the two hyper refuses above never reach the service).
    assert_eq!(requests_with_code(&mesh, 400, 3.0).await, 3.0);
    // A chunked body alone is served.
    let answer = raw(
        &mesh,
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("hello"), "{answer}");
    still_serves(&mesh).await;
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_are_refused() {
    let mesh = TestMesh::start(25, &[1]).await;
    // hyper refuses the first three (chunked not last); the waypoint the last (a coding under
    // the chunks would reach the upstream undeclared).
    for coding in ["gzip", "chunked, identity", "xchunked", "gzip, chunked"] {
        let request =
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n");
        let upstream_before = mesh.connects().len();
        let answer = raw(&mesh, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400 "), "{coding}: {answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{coding}: {answer}");
        assert_eq!(mesh.connects().len(), upstream_before, "{coding}");
    }
    still_serves(&mesh).await;
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let mesh = TestMesh::start(22, &[1]).await;
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70 * 1024));
    let answer = raw(&mesh, long_line.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431") || answer.starts_with("HTTP/1.1 414"),
        "overlong request line: {answer:.80}"
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70 * 1024)
    );
    let answer = raw(&mesh, big_header.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "oversized header: {answer:.80}"
    );
    let mut many = String::from("GET / HTTP/1.1\r\nHost: a\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = raw(&mesh, many.as_bytes()).await;
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "too many headers: {answer:.80}"
    );
    still_serves(&mesh).await;
}

#[tokio::test]
async fn a_slow_head_is_cut_off() {
    let mesh = TestMesh::start_with(23, &[1], |c| {
        c.header_read_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_secs(1);
    })
    .await;
    let target = SocketAddr::new(vip(23), 80);

    // Half a head, then nothing: 408, then the tunnel closes.
    let (_c, mut stream) = mesh.tunnel(target).await.unwrap();
    let started = std::time::Instant::now();
    let answer = raw_exchange(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ",
        Duration::from_secs(5),
    )
    .await;
    let waited = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    assert!(
        waited < Duration::from_secs(3),
        "closed by the header timeout, not the test's: {waited:?}"
    );

    // One request served on a keep-alive connection, then half a head: the same.
    let (_c, mut stream) = mesh.tunnel(target).await.unwrap();
    stream
        .write_all(b"GET /first HTTP/1.1\r\nHost: web.shop\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = raw_exchange(&mut stream, b"GET /second HTT", Duration::from_secs(5)).await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i..i + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 200", "HTTP/1.1 408"], "{answer}");

    // Pipelined behind a slow response: the 408 waits for the response, never cuts into it.
    let (_c, mut stream) = mesh.tunnel(target).await.unwrap();
    let answer = raw_exchange(
        &mut stream,
        b"GET /slow HTTP/1.1\r\nHost: web.shop\r\n\r\nGET /next HTTP/1.1\r\nHo",
        Duration::from_secs(5),
    )
    .await;
    let statuses: Vec<&str> = answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i..i + 12])
        .collect();
    assert_eq!(statuses, ["HTTP/1.1 200", "HTTP/1.1 408"], "{answer}");
    assert!(answer.contains("x-echo-path: /slow"), "{answer}");

    // An idle connection (nothing sent, or nothing after a served request) gets no 408: it is
    // closed quietly at the idle timeout.
    let (_c, mut stream) = mesh.tunnel(target).await.unwrap();
    let started = std::time::Instant::now();
    let answer = raw_exchange(&mut stream, b"", Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert_eq!(answer, "", "no answer to an idle connection");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "closed by the idle timeout, not the header timeout: {waited:?}"
    );
    let (_c, mut stream) = mesh.tunnel(target).await.unwrap();
    let answer = raw_exchange(
        &mut stream,
        b"GET / HTTP/1.1\r\nHost: web.shop\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(!answer.contains("408"), "{answer}");
    assert_eq!(
        requests_with_code(&mesh, 408, 3.0).await,
        3.0,
        "each 408 is a request in the metrics"
    );
    still_serves(&mesh).await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let mesh = TestMesh::start_with(26, &[1], |c| {
        c.max_request_body_bytes = 1024;
    })
    .await;
    let kib = |n: usize| "x".repeat(n * 1024);

    // Declared over the limit: 413 before anything goes upstream.
    let upstream_before = mesh.connects().len();
    let request = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n{}",
        kib(2)
    );
    let answer = raw(&mesh, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    assert_eq!(
        mesh.connects().len(),
        upstream_before,
        "the upstream saw nothing"
    );

    // Streamed past it (the echo app answers only once the body is complete): 413.
    let request = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        kib(2)
    );
    let answer = raw(&mesh, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");

    // Exactly the limit passes, declared or streamed.
    let exact = kib(1);
    for request in [
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{exact}"
        ),
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n400\r\n{exact}\r\n0\r\n\r\n"
        ),
    ] {
        let answer = raw(&mesh, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:.200}");
        assert!(answer.ends_with(&exact), "the body echoed whole");
    }

    // HTTP/2: a stream streaming past the limit is refused; a parallel stream on the same
    // connection completes.
    let (_c, stream) = mesh.tunnel(SocketAddr::new(vip(26), 80)).await.unwrap();
    let (h2, conn) = h2::client::handshake(stream).await.unwrap();
    mesh.tasks.spawn(async move {
        let _ = conn.await;
    });
    let mut h2 = h2.ready().await.unwrap();
    let slow = Request::get("http://web.shop/slow").body(()).unwrap();
    let (slow, _) = h2.send_request(slow, true).unwrap();
    let big = Request::post("http://web.shop/upload").body(()).unwrap();
    let (big, mut body) = h2.send_request(big, false).unwrap();
    body.send_data(Bytes::from(kib(2)), false).unwrap();
    // The echo app answers only once the body is complete, so the upstream has not answered
    // when the limit is passed: 413, not a reset.
    let big = big.await.unwrap();
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A stream declaring more than the limit is refused before its body.
    let declared = Request::post("http://web.shop/upload")
        .header("content-length", "2048")
        .body(())
        .unwrap();
    let (declared, _body) = h2.send_request(declared, false).unwrap();
    assert_eq!(
        declared.await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let slow = slow.await.unwrap();
    assert_eq!(slow.status(), StatusCode::OK, "the other stream is served");
    assert_eq!(requests_with_code(&mesh, 413, 4.0).await, 4.0);
    still_serves(&mesh).await;
}

#[tokio::test]
async fn hostile_http2_is_cut_off() {
    let mesh = TestMesh::start(24, &[1]).await;
    let target = SocketAddr::new(vip(24), 80);

    // Header list far above the limit (an HPACK bomb's effect): refused, not buffered.
    let (_c, stream) = mesh.tunnel(target).await.unwrap();
    let (h2, conn) = h2::client::handshake(stream).await.unwrap();
    mesh.tasks.spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::get("http://web.shop/").body(()).unwrap();
    for i in 0..40 {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-bomb-{i}").as_bytes()).unwrap(),
            http::HeaderValue::from_str(&"x".repeat(4096)).unwrap(),
        );
    }
    let answer = match h2.ready().await {
        Ok(mut ready) => match ready.send_request(request, true) {
            Ok((response, _)) => response.await.map(|r| r.status()),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match answer {
        Ok(status) => assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(error) => assert!(
            error.is_reset() || error.is_go_away() || error.is_io(),
            "{error}"
        ),
    }

    // Garbage after the preface: a connection error, the tunnel closes.
    let (_c, mut stream) = mesh.tunnel(target).await.unwrap();
    let mut garbage = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    garbage.extend_from_slice(&[0, 0, 4, 0xff, 0xff, 0, 0, 0, 1, 1, 2, 3, 4]);
    garbage.extend_from_slice(&[0, 0, 8, 0x1, 0x4, 0, 0, 0, 2]); // HEADERS on an even stream id
    garbage.extend_from_slice(&[0; 8]);
    let answer = raw_exchange(&mut stream, &garbage, Duration::from_secs(3)).await;
    assert!(
        answer.len() < 200,
        "a settings frame and a GOAWAY at most: {}",
        answer.len()
    );

    // Rapid reset: streams opened and cancelled at once; the connection is closed.
    let (_c, stream) = mesh.tunnel(target).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(stream).await.unwrap();
    let driver = tokio::spawn(conn);
    let mut refused = false;
    for _ in 0..2000 {
        let Ok(mut ready) = h2.clone().ready().await else {
            refused = true;
            break;
        };
        let request = Request::get("http://web.shop/slow").body(()).unwrap();
        match ready.send_request(request, true) {
            Ok((_, mut send)) => send.send_reset(h2::Reason::CANCEL),
            Err(_) => {
                refused = true;
                break;
            }
        }
        h2 = ready;
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    assert!(
        refused || matches!(ended, Ok(Ok(Err(_)))),
        "the rapid-reset connection is closed with an error"
    );
    still_serves(&mesh).await;
}
