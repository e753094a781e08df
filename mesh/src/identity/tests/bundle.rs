//! The trust bundle: parsing, reloading from its file, and a root rotation driven through the
//! certificate manager while handshakes go on (old and new roots trusted during the overlap).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::{id, new_ca};
use crate::identity::{
    CertificateManager, CertificateProvider, FetchFuture, HandedCertificate, LocalCa,
    LocalCaOptions, ManagerConfig, Roots, SpiffeId, TrustBundle, watch_file,
};

fn pem_of(ca: &LocalCa) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", ca.root().to_vec()))
}

fn roots_of(cas: &[&LocalCa]) -> Roots {
    Roots::from_der(cas.iter().map(|ca| ca.root().clone()).collect()).unwrap()
}

#[test]
fn a_bundle_must_hold_usable_roots() {
    let empty = Roots::from_pem(b"", "roots.pem").unwrap_err().to_string();
    assert!(
        empty.contains("roots.pem") && empty.contains("no certificate"),
        "{empty}"
    );
    let garbage = "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n";
    let error = Roots::from_pem(garbage.as_bytes(), "roots.pem").unwrap_err();
    assert!(error.to_string().contains("roots.pem"), "{error}");
    let not_a_cert = pem::encode(&pem::Pem::new("CERTIFICATE", b"not DER".to_vec()));
    let error = Roots::from_pem(not_a_cert.as_bytes(), "roots.pem").unwrap_err();
    assert!(error.to_string().contains("trust anchor"), "{error}");
}

#[test]
fn replacing_with_the_same_roots_is_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let (old, new) = (
        new_ca(&a, LocalCaOptions::default()),
        new_ca(&b, LocalCaOptions::default()),
    );
    let bundle = TrustBundle::new(roots_of(&[&old]));
    let changes = bundle.subscribe();
    assert!(!bundle.replace(roots_of(&[&old])));
    assert!(!changes.has_changed().unwrap());
    assert!(bundle.replace(roots_of(&[&old, &new])));
    assert!(changes.has_changed().unwrap());
    assert_eq!(bundle.current().certs().len(), 2);
    let text = bundle.current().pem();
    assert_eq!(
        Roots::from_pem(text.as_bytes(), "pem")
            .unwrap()
            .certs()
            .len(),
        2
    );
}

#[tokio::test]
async fn the_file_is_reloaded_and_a_bad_one_keeps_the_roots_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (
        new_ca(&dir.path().join("a"), LocalCaOptions::default()),
        new_ca(&dir.path().join("b"), LocalCaOptions::default()),
    );
    let file = dir.path().join("root-cert.pem");
    std::fs::write(&file, pem_of(&old)).unwrap();
    let bundle = TrustBundle::new(crate::identity::read_roots(&file).unwrap());
    let task = tokio::spawn(watch_file(
        file.clone(),
        bundle.clone(),
        Duration::from_millis(20),
    ));
    let mut changes = bundle.subscribe();

    std::fs::write(&file, pem_of(&old) + &pem_of(&new)).unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        bundle.current().certs(),
        [old.root().clone(), new.root().clone()]
    );

    // A truncated file (a botched edit) and a missing one change nothing.
    std::fs::write(&file, "-----BEGIN CERTIFICATE-----\nMII").unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::remove_file(&file).unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!changes.has_changed().unwrap());
    assert_eq!(bundle.current().certs().len(), 2);
    task.abort();
}

/// Issues from whichever CA is current: the signing key of a rotation.
struct SwitchableCa {
    ca: Mutex<Arc<LocalCa>>,
    calls: AtomicUsize,
}

impl CertificateProvider for SwitchableCa {
    fn fetch<'a>(&'a self, id: &'a SpiffeId) -> FetchFuture<'a> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let ca = self.ca.lock().unwrap().clone();
        Box::pin(async move { ca.issue(id) })
    }
}

#[tokio::test]
async fn a_replaced_bundle_reaches_the_current_certificate_without_a_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let old = new_ca(&dir.path().join("a"), LocalCaOptions::default());
    let new = new_ca(&dir.path().join("b"), LocalCaOptions::default());
    let bundle = TrustBundle::new(roots_of(&[&old]));
    let provider = Arc::new(SwitchableCa {
        ca: Mutex::new(Arc::new(old)),
        calls: AtomicUsize::new(0),
    });
    let manager = CertificateManager::new(provider.clone(), ManagerConfig::default())
        .with_trust_bundle(bundle.clone());
    let who = id("spiffe://cluster.local/ns/a/sa/b");
    manager.allow(who.clone());
    let first = manager.get(&who).await.unwrap();
    assert_eq!(first.roots().len(), 1);

    bundle.replace(roots_of(&[&provider.ca.lock().unwrap(), &new]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let rerooted = loop {
        let cert = manager.get(&who).await.unwrap();
        if cert.roots().len() == 2 {
            break cert;
        }
        assert!(tokio::time::Instant::now() < deadline, "bundle not applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(rerooted.leaf(), first.leaf(), "same leaf, new roots");
    assert_eq!(rerooted.root_store().len(), 2);
    assert_eq!(provider.calls.load(Ordering::SeqCst), 1, "no new fetch");
}

/// Counts handshakes between two identities of `manager`, each with the certificates current
/// at that moment, until `stop`; returns (succeeded, failed).
async fn handshakes(
    manager: Arc<CertificateManager>,
    client: SpiffeId,
    server: SpiffeId,
    stop: tokio_util::sync::CancellationToken,
) -> (usize, Vec<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut ok, mut failed) = (0, Vec::new());
    while !stop.is_cancelled() {
        let server_cert = manager.get(&server).await.unwrap();
        let client_cert = manager.get(&client).await.unwrap();
        let server_config = crate::tls::server_config(&server_cert, Default::default()).unwrap();
        let client_config =
            crate::tls::client_config(&client_cert, server.clone(), Default::default()).unwrap();
        let accept = async {
            let (tcp, _) = listener.accept().await.unwrap();
            crate::tls::accept(server_config, tcp).await.map(drop)
        };
        let connect = async {
            let tcp = TcpStream::connect(addr).await.unwrap();
            crate::tls::connect(client_config, addr.ip(), tcp)
                .await
                .map(drop)
        };
        match tokio::join!(accept, connect) {
            (Ok(()), Ok(())) => ok += 1,
            (server, client) => failed.push(format!("server: {server:?}; client: {client:?}")),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (ok, failed)
}

/// Rotates the signing CA from `old` to `new` with renewals every ~1 s, handshaking all along.
/// With `overlap`, the bundle trusts both roots from before the switch until every certificate
/// is renewed (the documented procedure); without, it jumps from old to new at the switch.
async fn rotate(overlap: bool) -> (usize, Vec<String>, usize) {
    let dir = tempfile::tempdir().unwrap();
    let short = LocalCaOptions {
        validity: Duration::from_secs(2),
        backdate: Duration::ZERO,
    };
    let old = Arc::new(new_ca(&dir.path().join("old"), short));
    let new = Arc::new(new_ca(&dir.path().join("new"), short));
    let bundle = TrustBundle::new(roots_of(&[&old]));
    let provider = Arc::new(SwitchableCa {
        ca: Mutex::new(old.clone()),
        calls: AtomicUsize::new(0),
    });
    let config = ManagerConfig {
        fetch_timeout: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
    };
    let manager = Arc::new(
        CertificateManager::new(provider.clone(), config).with_trust_bundle(bundle.clone()),
    );
    let (client, server) = (
        id("spiffe://cluster.local/ns/shop/sa/frontend"),
        id("spiffe://cluster.local/ns/shop/sa/api"),
    );
    manager.allow(client.clone());
    manager.allow(server.clone());
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn(handshakes(
        manager.clone(),
        client.clone(),
        server.clone(),
        stop.clone(),
    ));

    tokio::time::sleep(Duration::from_millis(300)).await;
    if overlap {
        bundle.replace(roots_of(&[&old, &new]));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    *provider.ca.lock().unwrap() = new.clone();
    if !overlap {
        bundle.replace(roots_of(&[&new]));
    }
    // Every certificate renews within a lifetime (2 s) of the switch.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for who in [&client, &server] {
        let cert = manager.get(who).await.unwrap();
        assert_eq!(cert.chain().len(), 0);
        let issued_by_new = webpki_chains_to(&cert, &new);
        assert!(issued_by_new, "{who} renewed from the new CA");
    }
    bundle.replace(roots_of(&[&new]));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let (ok, failed) = load.await.unwrap();
    (ok, failed, provider.calls.load(Ordering::SeqCst))
}

/// Whether `cert`'s leaf verifies against `ca`'s root alone.
fn webpki_chains_to(cert: &crate::identity::WorkloadCertificate, ca: &LocalCa) -> bool {
    let mut store = rustls::RootCertStore::empty();
    store.add(ca.root().clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        store.into(),
        crate::tls::provider(),
    )
    .build()
    .unwrap();
    verifier
        .verify_client_cert(cert.leaf(), &[], rustls::pki_types::UnixTime::now())
        .is_ok()
}

#[tokio::test]
async fn a_root_rotation_with_overlap_fails_no_handshake() {
    let (ok, failed, fetches) = rotate(true).await;
    assert!(
        failed.is_empty(),
        "{} failed handshakes: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok >= 50, "only {ok} handshakes");
    assert!(
        fetches >= 4,
        "renewals went on during the rotation ({fetches} fetches)"
    );
}

#[tokio::test]
async fn a_root_switch_without_overlap_breaks_handshakes() {
    // The control for the test above: the same rotation minus the overlap must fail some
    // handshakes (peers holding old-root leaves meet peers trusting only the new root), or the
    // test above could not tell.
    let (ok, failed, _) = rotate(false).await;
    assert!(ok > 0);
    assert!(
        !failed.is_empty(),
        "expected failed handshakes without an overlap"
    );
}

#[tokio::test]
async fn a_handed_over_certificate_is_used_without_a_fetch_and_checked_first() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(new_ca(&dir.path().join("ca"), LocalCaOptions::default()));
    let stranger = new_ca(&dir.path().join("stranger"), LocalCaOptions::default());
    let who = id("spiffe://cluster.local/ns/shop/sa/api");
    let held = HandedCertificate::of(&ca.issue(&who).unwrap());

    let bundle = TrustBundle::new(roots_of(&[&ca]));
    let provider = Arc::new(SwitchableCa {
        ca: Mutex::new(ca.clone()),
        calls: AtomicUsize::new(0),
    });
    let successor = CertificateManager::new(provider.clone(), ManagerConfig::default())
        .with_trust_bundle(bundle);
    assert_eq!(successor.adopt(&held).unwrap(), who);
    successor.allow(who.clone());
    let cert = successor.get(&who).await.unwrap();
    assert_eq!(
        HandedCertificate::of(&cert),
        held,
        "the very certificate, key included"
    );
    assert_eq!(provider.calls.load(Ordering::SeqCst), 0, "no fetch");

    // What the successor refuses: another CA's certificate, a key that is not the leaf's,
    // garbage; and without a trust bundle nothing is taken.
    let foreign = HandedCertificate::of(&stranger.issue(&who).unwrap());
    let error = successor.adopt(&foreign).unwrap_err().to_string();
    assert!(error.contains("trusted root"), "{error}");
    let other_key = HandedCertificate {
        key: HandedCertificate::of(&ca.issue(&who).unwrap()).key,
        ..held.clone()
    };
    let error = successor.adopt(&other_key).unwrap_err().to_string();
    assert!(error.contains("private key"), "{error}");
    let garbage = HandedCertificate {
        leaf: "not PEM".into(),
        ..held.clone()
    };
    assert!(successor.adopt(&garbage).is_err());
    let without_bundle = CertificateManager::new(provider, ManagerConfig::default());
    assert!(without_bundle.adopt(&held).is_err());
}
