//! The certificate manager: locality, sharing one fetch, renewal, and riding out failed renewals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{id, new_ca};
use crate::identity::{
    CertificateManager, CertificateProvider, FetchFuture, IdentityError, LocalCa, LocalCaOptions,
    ManagerConfig, SpiffeId, WorkloadCertificate,
};

/// A local CA that counts fetches, can be made to fail, and answers after a delay.
struct TestProvider {
    ca: LocalCa,
    calls: AtomicUsize,
    failing: AtomicBool,
    delay: Duration,
}

impl TestProvider {
    fn new(ca: LocalCa, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            ca,
            calls: AtomicUsize::new(0),
            failing: AtomicBool::new(false),
            delay,
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl CertificateProvider for TestProvider {
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            if self.failing.load(Ordering::SeqCst) {
                return Err(IdentityError::InvalidCertificate {
                    reason: "the test CA is down".to_owned(),
                });
            }
            self.ca.issue(id)
        })
    }
}

/// Short timings so renewal and retries happen within a test.
fn fast() -> ManagerConfig {
    ManagerConfig {
        fetch_timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    }
}

/// Leaves that live `seconds`, not backdated.
fn short_lived(seconds: u64) -> LocalCaOptions {
    LocalCaOptions {
        validity: Duration::from_secs(seconds),
        backdate: Duration::ZERO,
    }
}

/// Polls `get` until it returns a certificate other than `old` (at most `within`).
async fn next_cert(
    manager: &CertificateManager,
    who: &SpiffeId,
    old: &WorkloadCertificate,
    within: Duration,
) -> Arc<WorkloadCertificate> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let cert = manager.get(who).await.unwrap();
        if cert.leaf() != old.leaf() {
            return cert;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no renewal within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn only_local_identities_are_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let provider = TestProvider::new(
        new_ca(dir.path(), LocalCaOptions::default()),
        Duration::ZERO,
    );
    let manager = CertificateManager::new(provider.clone(), fast());
    let here = id("spiffe://cluster.local/ns/a/sa/here");
    let elsewhere = id("spiffe://cluster.local/ns/a/sa/elsewhere");

    let err = manager.get(&elsewhere).await.unwrap_err();
    assert!(matches!(err, IdentityError::NotLocal { .. }), "{err}");
    assert_eq!(provider.calls(), 0);

    // Two pods share the identity: it stays until the last one leaves.
    manager.allow(here.clone());
    manager.allow(here.clone());
    assert_eq!(manager.get(&here).await.unwrap().id(), &here);
    manager.forbid(&here);
    assert!(manager.get(&here).await.is_ok());
    manager.forbid(&here);
    assert!(!manager.is_allowed(&here));
    let err = manager.get(&here).await.unwrap_err();
    assert!(matches!(err, IdentityError::NotLocal { .. }), "{err}");
    assert!(manager.statuses().is_empty());
}

#[tokio::test]
async fn concurrent_requests_share_one_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), LocalCaOptions::default());
    let provider = TestProvider::new(ca, Duration::from_millis(200));
    let manager = CertificateManager::new(provider.clone(), fast());
    let who = id("spiffe://cluster.local/ns/a/sa/b");
    manager.allow(who.clone());

    let gets = (0..16).map(|_| manager.get(&who));
    let certs = futures::future::try_join_all(gets).await.unwrap();
    assert_eq!(provider.calls(), 1);
    assert!(certs.iter().all(|c| Arc::ptr_eq(c, &certs[0])));
    // Cached afterwards.
    assert!(Arc::ptr_eq(&manager.get(&who).await.unwrap(), &certs[0]));
    assert_eq!(provider.calls(), 1);

    let statuses = manager.statuses();
    assert_eq!(statuses.len(), 1);
    assert_eq!(statuses[0].id, who);
    assert_eq!(statuses[0].not_after, Some(certs[0].not_after()));
    assert_eq!(statuses[0].last_error, None);
}

#[tokio::test]
async fn renews_at_half_life_without_disturbing_live_connections() {
    let dir = tempfile::tempdir().unwrap();
    let ca = new_ca(dir.path(), short_lived(4));
    let client_cert = Arc::new(
        ca.issue(&id("spiffe://cluster.local/ns/c/sa/client"))
            .unwrap(),
    );
    let provider = TestProvider::new(ca, Duration::ZERO);
    let manager = CertificateManager::new(provider.clone(), fast());
    let server_id = id("spiffe://cluster.local/ns/s/sa/server");
    manager.allow(server_id.clone());

    let old = manager.get(&server_id).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let old_config = crate::tls::server_config(&old, Default::default()).unwrap();
    let client_config =
        crate::tls::client_config(&client_cert, server_id.clone(), Default::default()).unwrap();

    // A connection set up with the old certificate, echoing what it reads.
    let accept_config = old_config.clone();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = crate::tls::accept(accept_config, tcp).await.unwrap();
        let mut buf = [0u8; 5];
        for _ in 0..2 {
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
        }
        listener
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut live = crate::tls::connect(client_config.clone(), addr.ip(), tcp)
        .await
        .unwrap();
    live.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    live.read_exact(&mut buf).await.unwrap();

    let new = next_cert(&manager, &server_id, &old, Duration::from_secs(4)).await;
    assert!(provider.calls() >= 2);
    assert!(new.not_after() > old.not_after());
    assert!(!old.is_expired(SystemTime::now()), "renewed before expiry");

    // The live connection carries on after the renewal.
    live.write_all(b"again").await.unwrap();
    live.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"again");
    let listener = server.await.unwrap();

    // A new handshake with the new certificate presents it.
    let new_config = crate::tls::server_config(&new, Default::default()).unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        crate::tls::accept(new_config, tcp).await.map(drop)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = crate::tls::connect(client_config, addr.ip(), tcp)
        .await
        .unwrap();
    let presented = &tls.get_ref().1.peer_certificates().unwrap()[0];
    assert_eq!(presented, new.leaf());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_failed_renewal_keeps_the_old_certificate_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let provider = TestProvider::new(new_ca(dir.path(), short_lived(3)), Duration::ZERO);
    let manager = CertificateManager::new(provider.clone(), fast());
    let who = id("spiffe://cluster.local/ns/a/sa/b");
    manager.allow(who.clone());

    let old = manager.get(&who).await.unwrap();
    provider.failing.store(true, Ordering::SeqCst);

    // Past the renewal time, renewals fail and the old certificate keeps serving.
    let renew_in = old
        .renew_at()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(renew_in + Duration::from_millis(300)).await;
    assert!(!old.is_expired(SystemTime::now()));
    assert!(Arc::ptr_eq(&manager.get(&who).await.unwrap(), &old));
    let status = &manager.statuses()[0];
    assert_eq!(status.not_after, Some(old.not_after()));
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap()
            .contains("the test CA is down")
    );
    let failed_attempts = provider.calls();
    assert!(failed_attempts >= 2, "{failed_attempts}");

    // Once it expires, callers get the error rather than an expired certificate.
    let expired_in = old
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    tokio::time::sleep(expired_in + Duration::from_millis(1100)).await;
    let err = manager.get(&who).await.unwrap_err();
    assert!(
        matches!(&err, IdentityError::Unavailable { source, .. }
            if matches!(**source, IdentityError::InvalidCertificate { .. })),
        "{err}"
    );
    assert_eq!(manager.statuses()[0].not_after, None);

    // The CA comes back: the next caller does not wait out the backoff.
    provider.failing.store(false, Ordering::SeqCst);
    let fresh = manager.get(&who).await.unwrap();
    assert!(!fresh.is_expired(SystemTime::now()));
    assert_ne!(fresh.leaf(), old.leaf());
}

#[tokio::test]
async fn a_provider_answering_for_another_identity_is_refused() {
    struct Liar(LocalCa);
    impl CertificateProvider for Liar {
        fn fetch<'a>(&'a self, _id: &'a SpiffeId) -> FetchFuture<'a> {
            Box::pin(async move { self.0.issue(&id("spiffe://cluster.local/ns/x/sa/other")) })
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let manager = CertificateManager::new(
        Arc::new(Liar(new_ca(dir.path(), LocalCaOptions::default()))),
        fast(),
    );
    let who = id("spiffe://cluster.local/ns/a/sa/b");
    manager.allow(who.clone());
    let err = manager.get(&who).await.unwrap_err();
    assert!(
        matches!(&err, IdentityError::Unavailable { source, .. }
            if matches!(**source, IdentityError::WrongIdentity { .. })),
        "{err}"
    );
}
