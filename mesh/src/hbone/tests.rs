use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

const TEST_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(5);

fn request(authority: &str) -> ConnectRequest {
    ConnectRequest {
        authority: authority.parse().unwrap(),
        forwarded: Forwarded {
            for_addr: Some("10.244.1.2:40000".parse().unwrap()),
            host: Some("web.shop.svc.cluster.local".into()),
        },
        baggage: Baggage {
            cluster: Some("Kubernetes".into()),
            namespace: Some("shop".into()),
            workload: Some((crate::objects::WorkloadType::Deployment, "client".into())),
            service: Some("client".into()),
            version: Some("v1".into()),
            ..Baggage::default()
        },
        traceparent: TraceParent::random(),
    }
}

#[test]
fn connect_requests_are_validated() {
    let ok = request("10.0.0.2:8080").to_http().unwrap();
    let target = parse_connect(&ok).unwrap();
    assert_eq!(target.authority, "10.0.0.2:8080".parse().unwrap());
    assert_eq!(
        target.forwarded.for_addr,
        Some("10.244.1.2:40000".parse().unwrap())
    );
    assert_eq!(
        target.forwarded.host.as_deref(),
        Some("web.shop.svc.cluster.local")
    );
    assert_eq!(target.baggage, request("10.0.0.1:80").baggage);
    assert!(target.traceparent.is_some());
    let v6 = request("[fd00::2]:8080").to_http().unwrap();
    assert_eq!(
        parse_connect(&v6).unwrap().authority,
        "[fd00::2]:8080".parse().unwrap()
    );

    let with = |method: http::Method, uri: &str| {
        http::Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .unwrap()
    };
    let cases = [
        (
            with(http::Method::GET, "http://10.0.0.2:8080/"),
            "not CONNECT",
        ),
        (with(http::Method::CONNECT, "web.shop:8080"), "not ip:port"),
        (
            with(http::Method::CONNECT, "10.0.0.2:0"),
            "not a usable destination",
        ),
        (
            with(http::Method::CONNECT, "0.0.0.0:80"),
            "not a usable destination",
        ),
    ];
    for (req, why) in cases {
        let err = parse_connect(&req).unwrap_err();
        assert!(err.contains(why), "{err:?} should say {why:?}");
    }
}

/// An HBONE server on loopback whose handler applies `decide` and echoes accepted tunnels,
/// reporting each target it saw.
async fn server(
    decide: fn(&ConnectTarget) -> Option<Refusal>,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<ConnectTarget>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (io, _) = listener.accept().await.unwrap();
            let seen = seen_tx.clone();
            tokio::spawn(serve(
                io,
                TEST_HANDSHAKE,
                std::future::pending(),
                move |incoming: IncomingConnect| {
                    let seen = seen.clone();
                    async move {
                        let _ = seen.send(incoming.target.clone());
                        if let Some(refusal) = decide(&incoming.target) {
                            incoming.refuse(refusal);
                            return;
                        }
                        let mut tunnel = incoming.accept().unwrap();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = tunnel.read(&mut buf).await.unwrap();
                            if n == 0 {
                                tunnel.shutdown().await.unwrap();
                                return;
                            }
                            tunnel.write_all(&buf[..n]).await.unwrap();
                        }
                    }
                },
            ));
        }
    });
    (addr, seen_rx)
}

async fn client(addr: SocketAddr) -> HboneClient {
    HboneClient::handshake(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_tunnel_carries_bytes_both_ways_past_both_windows() {
    let (addr, mut seen) = server(|_| None).await;
    let client = client(addr).await;
    let req = request("10.0.0.2:8080");
    let tunnel = client.connect(&req).await.unwrap();
    let target = seen.recv().await.unwrap();
    assert_eq!(target.authority, req.authority);
    assert_eq!(target.forwarded, req.forwarded);
    assert_eq!(target.baggage, req.baggage);
    assert_eq!(target.traceparent, Some(req.traceparent));

    // 40 MiB: more than the 16 MiB connection window and the 4 MiB stream window, so this
    // only completes if the reader releases capacity as it consumes.
    let payload: Vec<u8> = (0..40 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(tunnel);
    let expected = payload.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&payload).await.unwrap();
        wr.shutdown().await.unwrap();
    });
    let mut echoed = Vec::new();
    rd.read_to_end(&mut echoed).await.unwrap();
    writer.await.unwrap();
    assert_eq!(echoed.len(), expected.len());
    assert!(echoed == expected, "echoed bytes differ");
}

#[tokio::test]
async fn refusals_reach_the_client_as_statuses() {
    let (addr, _seen) = server(|t| match t.authority.port() {
        401 => Some(Refusal::Denied),
        503 => Some(Refusal::Unavailable),
        _ => None,
    })
    .await;
    let client = client(addr).await;
    for (port, status) in [(401, 401), (503, 503)] {
        let err = client
            .connect(&request(&format!("10.0.0.2:{port}")))
            .await
            .unwrap_err();
        assert!(
            matches!(err, HboneError::Refused(s) if s.as_u16() == status),
            "{err}"
        );
    }
    // The connection survives refusals.
    assert!(client.connect(&request("10.0.0.2:80")).await.is_ok());
}

#[tokio::test]
async fn malformed_requests_get_400_without_reaching_the_handler() {
    let (addr, mut seen) = server(|_| None).await;
    let io = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let get = http::Request::builder()
        .method(http::Method::GET)
        .uri("http://10.0.0.2/")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(get, true).unwrap();
    assert_eq!(
        response.await.unwrap().status(),
        http::StatusCode::BAD_REQUEST
    );
    let mut send = send.ready().await.unwrap();
    let named = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri("web.shop:80")
        .body(())
        .unwrap();
    let (response, _) = send.send_request(named, false).unwrap();
    assert_eq!(
        response.await.unwrap().status(),
        http::StatusCode::BAD_REQUEST
    );
    assert!(seen.try_recv().is_err(), "the handler never saw them");
}

#[tokio::test]
async fn many_tunnels_share_one_connection() {
    let (addr, _seen) = server(|_| None).await;
    let client = std::sync::Arc::new(client(addr).await);
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut tunnel = client.connect(&request("10.0.0.2:8080")).await.unwrap();
            let msg = format!("stream {i}");
            tunnel.write_all(msg.as_bytes()).await.unwrap();
            tunnel.shutdown().await.unwrap();
            let mut back = String::new();
            tunnel.read_to_string(&mut back).await.unwrap();
            assert_eq!(back, msg);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(!client.is_closed());
}

#[tokio::test]
async fn a_closed_peer_is_seen() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        // Serve the handshake, then drop the connection.
        let _ = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            serve(io, TEST_HANDSHAKE, std::future::pending(), |_i| async {}),
        )
        .await;
    });
    let client = client(addr).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while !client.is_closed() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the client notices the peer went away");
    assert!(client.connect(&request("10.0.0.2:80")).await.is_err());
}

#[tokio::test]
async fn a_peer_that_never_speaks_http2_is_dropped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _silent = TcpStream::connect(addr).await.unwrap();
    let (io, _) = listener.accept().await.unwrap();
    let started = std::time::Instant::now();
    let result = serve(
        io,
        std::time::Duration::from_millis(200),
        std::future::pending(),
        |_i| async {},
    )
    .await;
    assert!(
        matches!(result, Err(HboneError::Transport { .. })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "bounded by the timeout"
    );
}
