//! The proxy's side of the protocol over time, against `node-proxy ca serve`: the certificate
//! manager renews at half-life before expiry; when the CA goes away, the cached certificate
//! keeps serving handshakes until it expires, open connections go on after that, failures are
//! counted; when the CA is back, renewal recovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use marrow_mesh::identity::{CertificateManager, ManagerConfig, WorkloadCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{CART, NODE_PROXY_TOKEN, id, start};

/// Waits until `manager` hands out a certificate for CART other than `old`.
async fn next_cert(
    manager: &CertificateManager,
    old: &WorkloadCertificate,
    within: Duration,
) -> Arc<WorkloadCertificate> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(cert) = manager.get(&id(CART)).await
            && cert.leaf() != old.leaf()
        {
            return cert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no new certificate within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One mTLS handshake of CART with itself, with `cert` on both ends; returns the client end
/// and the server task echoing what it reads.
async fn connect(
    cert: &WorkloadCertificate,
) -> Result<
    (
        tokio_rustls::client::TlsStream<TcpStream>,
        tokio::task::JoinHandle<()>,
    ),
    marrow_mesh::tls::TlsError,
> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server_config = marrow_mesh::tls::server_config(cert, Default::default())?;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let Ok(mut tls) = marrow_mesh::tls::accept(server_config, tcp).await else {
            return;
        };
        let mut buf = [0u8; 4];
        while tls.read_exact(&mut buf).await.is_ok() {
            if tls.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let client_config = marrow_mesh::tls::client_config(cert, id(CART), Default::default())?;
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = marrow_mesh::tls::connect(client_config, addr.ip(), tcp).await?;
    Ok((tls, server))
}

async fn echo(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, word: &[u8; 4]) {
    tls.write_all(word).await.expect("write");
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, word);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renews_before_expiry_and_rides_out_a_ca_outage() {
    const LIFETIME: Duration = Duration::from_secs(6);
    let mut h = start().await;
    let provider = h.istio_ca_for(NODE_PROXY_TOKEN, &h.root_pem, LIFETIME);
    let failures = Arc::new(AtomicUsize::new(0));
    let counted = failures.clone();
    let manager = CertificateManager::new(
        Arc::new(provider),
        ManagerConfig {
            fetch_timeout: Duration::from_secs(2),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        },
    )
    .with_failure_hook(Arc::new(move |_, error| {
        assert_eq!(error.reason(), "ca_unavailable", "{error}");
        counted.fetch_add(1, Ordering::SeqCst);
    }));
    manager.allow(id(CART));

    // Issued for the lifetime asked (plus a backdate of at most a tenth, and X.509's whole
    // seconds), renewed at half-life by a certificate that lasts longer.
    let first = manager.get(&id(CART)).await.expect("first certificate");
    let lifetime = first
        .not_after()
        .duration_since(first.not_before())
        .expect("lifetime");
    assert!(
        lifetime >= LIFETIME && lifetime <= LIFETIME + LIFETIME / 10 + Duration::from_secs(1),
        "{lifetime:?}"
    );
    let second = next_cert(&manager, &first, LIFETIME).await;
    assert!(second.not_after() > first.not_after());
    assert!(
        !first.is_expired(SystemTime::now()),
        "renewed before the old one expired"
    );
    assert_eq!(failures.load(Ordering::SeqCst), 0);

    // The CA goes away. A connection made now stays up throughout.
    let (mut live, _server) = connect(&second).await.expect("handshake before the outage");
    echo(&mut live, b"pre.").await;
    h.stop_ca().await;

    // Past the renewal time the fetches fail and are counted; the cached certificate keeps
    // serving new handshakes while it is valid.
    let deadline = tokio::time::Instant::now() + LIFETIME;
    while failures.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no failed renewal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = manager.statuses().remove(0);
    assert!(status.consecutive_failures >= 1, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("certificate authority")),
        "{status:?}"
    );
    let cached = manager
        .get(&id(CART))
        .await
        .expect("the cached certificate");
    assert_eq!(cached.leaf(), second.leaf());
    assert!(!cached.is_expired(SystemTime::now()));
    let (mut during, _server2) = connect(&cached).await.expect("handshake during the outage");
    echo(&mut during, b"dur.").await;

    // After expiry there is no certificate to hand out, and the open connections go on.
    let expired_at = second.not_after() + Duration::from_millis(1100);
    if let Ok(wait) = expired_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let error = manager.get(&id(CART)).await.expect_err("expired, CA down");
    assert!(
        error.to_string().contains("expired") || error.to_string().contains("no certificate"),
        "{error}"
    );
    echo(&mut live, b"post").await;
    echo(&mut during, b"post").await;

    // The CA comes back: a fresh certificate, and the failure count resets.
    h.restart_ca().await;
    let third = next_cert(&manager, &second, Duration::from_secs(10)).await;
    assert!(!third.is_expired(SystemTime::now()));
    assert_eq!(manager.statuses()[0].consecutive_failures, 0);
    connect(&third).await.expect("handshake after the outage");
}
