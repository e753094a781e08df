//! Well-behaved traffic through the waypoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{TestMesh, pod_ip, solo_vip, vip};

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "web.shop")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn http1_requests_keep_alive_over_one_upstream_connection() {
    let mesh = TestMesh::start(1, &[1, 2]).await;
    let solo = SocketAddr::new(solo_vip(1), 80);
    let (_client, mut http) = mesh.http1(solo).await;
    for i in 0..10 {
        let response = http.send_request(get(&format!("/item/{i}"))).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["x-echo-path"],
            format!("/item/{i}").as_str()
        );
        assert_eq!(
            response.headers()["x-echo-xff"],
            "10.88.1.10",
            "the original client is appended to x-forwarded-for"
        );
        assert_eq!(
            response.headers()["x-echo-forwarded"],
            "for=\"10.88.1.10:40000\";proto=http"
        );
        response.into_body().collect().await.unwrap();
    }
    // A POST with a content-length, then one chunked.
    let post = Request::post("/upload")
        .header("host", "web.shop")
        .body(Full::new(Bytes::from_static(b"hello waypoint")))
        .unwrap();
    let response = http.send_request(post).await.unwrap();
    assert_eq!(response.headers()["x-echo-method"], "POST");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"hello waypoint");
    assert_eq!(mesh.accepted(), 1, "one HBONE connection to the node proxy");
    assert_eq!(
        mesh.connects().len(),
        1,
        "one upstream HTTP connection (tunnel) carried all the requests"
    );
    let seen = &mesh.connects()[0];
    assert_eq!(seen.authority, SocketAddr::new(pod_ip(1, 1), 8080));
    assert_eq!(seen.peer, mesh.waypoint_id, "the waypoint speaks as itself");
    assert_eq!(
        seen.forwarded.for_addr,
        Some(mesh.client_addr()),
        "the upstream CONNECT names the original client"
    );
    assert_eq!(seen.baggage.service.as_deref(), Some("client"));
    assert_eq!(
        seen.forwarded.host.as_deref(),
        Some("solo.shop.svc.cluster.local")
    );

    // Chunked, on a raw tunnel: the body arrives whole.
    let (_c, mut stream) = mesh.tunnel(solo).await.unwrap();
    stream
        .write_all(
            b"POST /chunked HTTP/1.1\r\nHost: web.shop\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("hello world"), "{text}");
}

#[tokio::test]
async fn least_request_spreads_requests_over_the_endpoints() {
    let mesh = TestMesh::start(2, &[1, 2]).await;
    let web = SocketAddr::new(vip(2), 80);
    let (_client, mut http) = mesh.http1(web).await;
    let mut served: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let response = http.send_request(get("/")).await.unwrap();
        let by = response.headers()["x-served-by"]
            .to_str()
            .unwrap()
            .to_owned();
        response.into_body().collect().await.unwrap();
        *served.entry(by).or_default() += 1;
    }
    assert_eq!(served.len(), 2, "both endpoints served: {served:?}");
    // A request in flight at one endpoint steers most of the next ones to the other.
    let (_c2, mut slow) = mesh.http1(web).await;
    let mut busy = Vec::new();
    for _ in 0..1 {
        busy.push(tokio::spawn(slow.send_request(get("/slow"))));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let balancer = &mesh.waypoint.context.upstreams.balancer;
    let loaded: Vec<SocketAddr> = [1, 2]
        .map(|h| SocketAddr::new(pod_ip(2, h), 8080))
        .into_iter()
        .filter(|e| balancer.active(*e) > 0)
        .collect();
    assert_eq!(
        loaded.len(),
        1,
        "the slow request is counted active at its endpoint"
    );
    for task in busy {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn websocket_upgrades_and_echoes_both_ways() {
    let mesh = TestMesh::start(3, &[1]).await;
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(3), 80)).await;
    let request = Request::get("/ws")
        .header("host", "web.shop")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = http.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["upgrade"], "websocket");
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    for message in [&b"ping"[..], b"a longer frame of bytes"] {
        io.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, message);
    }
}

#[tokio::test]
async fn http2_and_grpc_streams_pass_with_their_trailers() {
    let mesh = TestMesh::start(4, &[1]).await;
    // h2 from the client to a port declared http: upstream speaks HTTP/1.1, as Istio's.
    let (_client, mut h2) = mesh.http2(SocketAddr::new(vip(4), 80)).await;
    let request = Request::post("http://web.shop/h2")
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-echo-version"], "HTTP/1.1");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"over h2");
    // To a port of no declared protocol (`web`, 81): upstream follows the client's version.
    let (_client, mut h2) = mesh.http2(SocketAddr::new(vip(4), 81)).await;
    let request = Request::get("http://web.shop/h2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2.send_request(request).await.unwrap();
    assert_eq!(response.headers()["x-echo-version"], "HTTP/2.0");

    // gRPC on a grpc port: unary-shaped call and a server stream, trailers passed through.
    let (_client, mut grpc) = mesh.http2(SocketAddr::new(vip(4), 9090)).await;
    let call = Request::post("http://web.shop:9090/grpc")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 1, 42])))
        .unwrap();
    let response = grpc.send_request(call).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/grpc");
    let mut body = response.into_body();
    let (mut messages, mut trailers) = (0, None);
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap();
        if let Some(data) = frame.data_ref() {
            messages += data.len() / 6;
        } else if let Ok(t) = frame.into_trailers() {
            trailers = Some(t);
        }
    }
    assert_eq!(messages, 3, "every streamed message arrived");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "done");

    // An HTTP/1.1 client on the grpc port still reaches the app, over h2 upstream.
    let (_client, mut h1) = mesh.http1(SocketAddr::new(vip(4), 9090)).await;
    let response = h1.send_request(get("/")).await.unwrap();
    assert_eq!(response.headers()["x-echo-version"], "HTTP/2.0");
}

#[tokio::test]
async fn tcp_ports_and_undeclared_ports_are_handled_by_what_they_carry() {
    let mesh = TestMesh::start(5, &[1]).await;
    // tcp-echo: relayed at L4.
    let (_c, mut stream) = mesh.tunnel(SocketAddr::new(vip(5), 7000)).await.unwrap();
    let echoed =
        crate::harness::raw_exchange(&mut stream, b"raw bytes\n", Duration::from_millis(300)).await;
    assert_eq!(echoed, "raw bytes\n");

    // Undeclared ("web", "echo"): sniffed. HTTP is proxied as HTTP...
    let (_c, mut http) = mesh.http1(SocketAddr::new(vip(5), 81)).await;
    let response = http.send_request(get("/sniffed")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-echo-xff"],
        "10.88.5.10",
        "proxied as HTTP"
    );
    // ...anything else is relayed.
    let (_c, mut stream) = mesh.tunnel(SocketAddr::new(vip(5), 7001)).await.unwrap();
    let echoed = crate::harness::raw_exchange(
        &mut stream,
        b"\x16\x03\x01 not http",
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(echoed, "\x16\x03\x01 not http");
}

#[tokio::test]
async fn a_service_without_endpoints_answers_503() {
    let mesh = TestMesh::start(6, &[1]).await;
    let (_client, mut http) = mesh
        .http1(SocketAddr::new(crate::harness::empty_vip(6), 80))
        .await;
    let response = http.send_request(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"no healthy upstream");
}

/// A plain HTTP/1.1 GET to a local listener; the status line.
async fn status_line(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    answer.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn readiness_follows_the_certificate_and_metrics_answer() {
    let mesh = TestMesh::start(7, &[1]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let line = status_line(mesh.waypoint.readiness_addr, "/healthz/ready").await;
        if line.contains("200") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let line = status_line(mesh.waypoint.metrics_addr, "/metrics").await;
    assert!(line.contains("200"), "{line}");
}

#[tokio::test]
async fn draining_lets_the_request_in_flight_finish() {
    let mesh = TestMesh::start(8, &[1]).await;
    let (_client, mut http) = mesh.http1(SocketAddr::new(vip(8), 80)).await;
    let slow = tokio::spawn(http.send_request(get("/slow")));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = std::time::Instant::now();
    let left = mesh.waypoint.stop(Duration::from_secs(5)).await;
    let response = slow.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the request in flight finished"
    );
    assert_eq!(left, 0, "every connection closed before the deadline");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(mesh.waypoint.hbone_addr)
            .await
            .is_err(),
        "no new connection is accepted once draining"
    );
}

#[tokio::test]
async fn an_endpoint_that_is_not_the_pods_identity_is_never_sent_a_request() {
    let mesh = TestMesh::start(9, &[crate::harness::IMPOSTOR]).await;
    let (_client, mut http) = mesh.http1(SocketAddr::new(solo_vip(9), 80)).await;
    let response = http.send_request(get("/secret")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("connection failure"),
        "UF: {body:?}"
    );
    assert!(
        mesh.connects().is_empty(),
        "no CONNECT reached the impostor"
    );
}
