//! Real mutual TLS over TCP on 127.0.0.1 with certificates from CAs created in temporary
//! directories.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::identity::{CaFiles, LocalCa, LocalCaOptions, create_ca};

/// A mesh CA in a temporary directory.
struct Mesh {
    dir: tempfile::TempDir,
    ca: LocalCa,
}

impl Mesh {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let files = create_ca(
            dir.path(),
            &TrustDomain::default(),
            Duration::from_secs(600),
        )
        .unwrap();
        let ca = LocalCa::load(&files, TrustDomain::default(), LocalCaOptions::default()).unwrap();
        Self { dir, ca }
    }

    /// The same CA, signing for another trust domain.
    fn as_trust_domain(&self, trust_domain: &str) -> LocalCa {
        LocalCa::load(
            &CaFiles::in_dir(self.dir.path()),
            TrustDomain::new(trust_domain).unwrap(),
            LocalCaOptions::default(),
        )
        .unwrap()
    }

    fn cert(&self, who: &str) -> WorkloadCertificate {
        self.ca.issue(&id(who)).unwrap()
    }
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).unwrap()
}

/// The default key exchange, for the tests that are not about it.
const KX: KeyExchange = KeyExchange::PreferPostQuantum;

const CLIENT: &str = "spiffe://cluster.local/ns/front/sa/web";
const SERVER: &str = "spiffe://cluster.local/ns/back/sa/db";

type Handshakes = (
    Result<tokio_rustls::server::TlsStream<TcpStream>, TlsError>,
    Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>,
);

/// Both halves of a handshake over a real TCP connection. A server refusing the client shows on
/// the server side (in TLS 1.3 the client finishes first, and learns on its next read).
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Handshakes {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(server, tcp).await
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        connect(client, addr.ip(), tcp).await
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::join!(accept, connect)
    })
    .await
    .unwrap()
}

/// The rustls error inside a handshake error.
fn rustls_error(err: &TlsError) -> &rustls::Error {
    let TlsError::Handshake { source, .. } = err else {
        panic!("not a handshake error: {err}");
    };
    source
        .get_ref()
        .unwrap()
        .downcast_ref::<rustls::Error>()
        .unwrap()
}

#[tokio::test]
async fn mutual_tls_shows_each_side_the_other_identity() {
    let mesh = Mesh::new();
    let server_config = server_config(&mesh.cert(SERVER), KX).unwrap();
    let client_config = client_config(&mesh.cert(CLIENT), id(SERVER), KX).unwrap();
    let (server, client) = handshake(server_config, client_config).await;
    let (mut server, mut client) = (server.unwrap(), client.unwrap());

    let td = TrustDomain::default();
    assert_eq!(peer_identity(server.get_ref().1, &td).unwrap(), id(CLIENT));
    assert_eq!(peer_identity(client.get_ref().1, &td).unwrap(), id(SERVER));
    let sides: [&rustls::CommonState; 2] = [server.get_ref().1, client.get_ref().1];
    for side in sides {
        assert_eq!(
            side.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let suite = side.negotiated_cipher_suite().unwrap().suite();
        assert!(
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
            ]
            .contains(&suite),
            "{suite:?}"
        );
        assert_eq!(side.alpn_protocol(), Some(ALPN_H2));
    }

    client.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).await.unwrap();
    server.write_all(b"pong").await.unwrap();
    client.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    let mesh = Mesh::new();
    let impostor = "spiffe://cluster.local/ns/back/sa/not-db";
    let server_config = server_config(&mesh.cert(impostor), KX).unwrap();
    let client_config = client_config(&mesh.cert(CLIENT), id(SERVER), KX).unwrap();
    let (server, client) = handshake(server_config, client_config).await;
    let err = client.unwrap_err();
    match err.rejection() {
        Some(TlsError::ServerIdentityMismatch {
            expected,
            presented,
        }) => {
            assert_eq!(
                (expected, presented),
                (&id(SERVER), &vec![impostor.to_owned()])
            );
        }
        other => panic!("unexpected {other:?} from {err}"),
    }
    assert!(err.to_string().contains(impostor), "{err}");
    assert!(server.is_err(), "the server sees the client's alert");
}

#[tokio::test]
async fn client_refuses_a_server_from_another_ca() {
    let (mesh, other) = (Mesh::new(), Mesh::new());
    let server_config = server_config(&other.cert(SERVER), KX).unwrap();
    let client_config = client_config(&mesh.cert(CLIENT), id(SERVER), KX).unwrap();
    let (_, client) = handshake(server_config, client_config).await;
    let err = client.unwrap_err();
    assert!(
        matches!(rustls_error(&err), rustls::Error::InvalidCertificate(_)),
        "{err}"
    );
    assert!(
        err.rejection().is_none(),
        "refused by the chain, before the SAN: {err}"
    );
}

#[tokio::test]
async fn server_refuses_a_client_without_a_certificate() {
    let mesh = Mesh::new();
    let server_cert = mesh.cert(SERVER);
    let verifier = verifier::ServerIdentity::new(server_cert.root_store().clone(), id(SERVER));
    let mut anonymous = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    anonymous.alpn_protocols = vec![ALPN_H2.to_vec()];
    let (server, client) = handshake(
        server_config(&server_cert, KX).unwrap(),
        Arc::new(anonymous),
    )
    .await;
    let err = server.unwrap_err();
    assert!(
        matches!(rustls_error(&err), rustls::Error::NoCertificatesPresented),
        "{err}"
    );
    assert_client_is_cut_off(client).await;
}

#[tokio::test]
async fn server_refuses_a_client_from_another_ca() {
    let (mesh, other) = (Mesh::new(), Mesh::new());
    let server_config = server_config(&mesh.cert(SERVER), KX).unwrap();
    let client_config = client_config(&other.cert(CLIENT), id(SERVER), KX).unwrap();
    // The client trusts the other CA only, so it would refuse our server first: let it trust
    // both, so that the server's verdict is the one tested.
    let mut roots = (**mesh.cert(CLIENT).root_store()).clone();
    roots.add(other.ca.root().clone()).unwrap();
    let verifier = verifier::ServerIdentity::new(Arc::new(roots), id(SERVER));
    let mut config = (*client_config).clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(verifier));
    let (server, client) = handshake(server_config, Arc::new(config)).await;
    let err = server.unwrap_err();
    assert!(
        matches!(rustls_error(&err), rustls::Error::InvalidCertificate(_)),
        "{err}"
    );
    assert_client_is_cut_off(client).await;
}

#[tokio::test]
async fn server_refuses_a_client_of_another_trust_domain() {
    let mesh = Mesh::new();
    let foreign = mesh
        .as_trust_domain("other.domain")
        .issue(&id("spiffe://other.domain/ns/front/sa/web"))
        .unwrap();
    let server_config = server_config(&mesh.cert(SERVER), KX).unwrap();
    let client_config = client_config(&foreign, id(SERVER), KX).unwrap();
    let (server, client) = handshake(server_config, client_config).await;
    let err = server.unwrap_err();
    assert!(
        matches!(err.rejection(), Some(TlsError::PeerTrustDomain { .. })),
        "{err}"
    );
    assert_client_is_cut_off(client).await;
}

/// The client's handshake "succeeded" but the server refused it: its first read fails or ends.
async fn assert_client_is_cut_off(
    client: Result<tokio_rustls::client::TlsStream<TcpStream>, TlsError>,
) {
    if let Ok(mut client) = client {
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Err(_) | Ok(0)), "{read:?}");
    }
}

/// The ClientHello `config` sends (its handshake message): read raw from a plain TCP listener
/// (no TLS server behind it).
async fn client_hello_of(config: Arc<ClientConfig>) -> Vec<u8> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _ = connect(config, addr.ip(), tcp).await;
    });
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut header = [0u8; 5];
    tcp.read_exact(&mut header).await.unwrap();
    assert_eq!(header[0], 22, "a handshake record");
    let mut record = vec![0u8; usize::from(u16::from_be_bytes([header[3], header[4]]))];
    tcp.read_exact(&mut record).await.unwrap();
    drop(tcp);
    client.await.unwrap();
    record
}

#[tokio::test]
async fn client_hello_has_no_sni_and_offers_only_tls13_aes_gcm_and_h2() {
    let mesh = Mesh::new();
    let config = client_config(&mesh.cert(CLIENT), id(SERVER), KX).unwrap();
    let record = client_hello_of(config).await;
    let hello = ClientHello::parse(&record);
    assert!(
        hello.extension(0x0000).is_none(),
        "server_name (SNI) must be absent"
    );
    // ALPN: list length, then one protocol "h2".
    assert_eq!(hello.extension(0x0010), Some(&b"\x00\x03\x02h2"[..]));
    // supported_versions: TLS 1.3 only.
    assert_eq!(hello.extension(0x002b), Some(&b"\x02\x03\x04"[..]));
    let mut suites = hello.cipher_suites.clone();
    suites.retain(|&s| s != 0x00ff); // The renegotiation SCSV, if any, is not a suite.
    suites.sort_unstable();
    assert_eq!(
        suites,
        vec![0x1301, 0x1302],
        "TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384"
    );
}

/// A TLS 1.2-only ClientHello (no supported_versions extension) gets a protocol_version alert.
#[tokio::test]
async fn server_refuses_tls12() {
    let mesh = Mesh::new();
    let config = server_config(&mesh.cert(SERVER), KX).unwrap();
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        accept(config, tcp).await.map(drop)
    });
    let mut body = vec![0x03, 0x03]; // client_version TLS 1.2
    body.extend([7u8; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x02, 0xc0, 0x2b]); // TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    body.extend([0x01, 0x00]); // null compression
    // signature_algorithms: ecdsa_secp256r1_sha256 only; no supported_versions.
    body.extend([0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    let mut hello = vec![0x01, 0x00];
    hello.extend(u16::try_from(body.len()).unwrap().to_be_bytes());
    hello.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend(u16::try_from(hello.len()).unwrap().to_be_bytes());
    record.extend(hello);

    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&record).await.unwrap();
    let mut alert = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut alert))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alert.len(), 7, "{alert:?}");
    assert_eq!(
        (alert[0], alert[5], alert[6]),
        (21, 2, 70),
        "fatal protocol_version alert"
    );
    let err = server.await.unwrap().unwrap_err();
    assert!(
        matches!(
            rustls_error(&err),
            rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::SupportedVersionsExtensionRequired
            )
        ),
        "{err}"
    );
}

/// The fields of a ClientHello this test looks at.
struct ClientHello<'a> {
    cipher_suites: Vec<u16>,
    extensions: Vec<(u16, &'a [u8])>,
}

impl<'a> ClientHello<'a> {
    /// Parses the handshake message in `record` (one record, as rustls sends it).
    fn parse(record: &'a [u8]) -> Self {
        let mut r = Reader(record);
        assert_eq!(r.take(1), [1], "ClientHello");
        r.take(3); // length
        r.take(2 + 32); // legacy_version, random
        let session_id = r.take(1)[0];
        r.take(usize::from(session_id));
        let suites = r.vec16();
        let cipher_suites = suites
            .chunks(2)
            .map(|s| u16::from_be_bytes([s[0], s[1]]))
            .collect();
        let compression = r.take(1)[0];
        r.take(usize::from(compression));
        let mut exts = Reader(r.vec16());
        let mut extensions = Vec::new();
        while !exts.0.is_empty() {
            let kind = exts.u16();
            extensions.push((kind, exts.vec16()));
        }
        Self {
            cipher_suites,
            extensions,
        }
    }

    fn extension(&self, kind: u16) -> Option<&'a [u8]> {
        self.extensions
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, v)| *v)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn u16(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_be_bytes([b[0], b[1]])
    }

    fn vec16(&mut self) -> &'a [u8] {
        let n = self.u16();
        self.take(usize::from(n))
    }
}

#[test]
fn peer_identity_requires_one_spiffe_id_of_the_trust_domain() {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let key = KeyPair::generate().unwrap();
    let leaf = |sans: Vec<SanType>| {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().clone()
    };
    let uri = |text: &str| SanType::URI(text.try_into().unwrap());
    let dns = SanType::DnsName("db.back.svc".try_into().unwrap());
    let td = Some("cluster.local");

    let good = leaf(vec![dns.clone(), uri(SERVER)]);
    assert_eq!(spiffe_id_of(&good, td).unwrap(), id(SERVER));
    // URI SANs of other schemes are not identities: ignored.
    let with_https = leaf(vec![uri("https://db.back.svc/"), uri(SERVER)]);
    assert_eq!(spiffe_id_of(&with_https, td).unwrap(), id(SERVER));

    let none = leaf(vec![dns]);
    assert!(matches!(
        spiffe_id_of(&none, td),
        Err(TlsError::PeerSpiffeIds { count: 0, .. })
    ));
    let not_spiffe = leaf(vec![uri("https://db.back.svc/")]);
    assert!(matches!(
        spiffe_id_of(&not_spiffe, td),
        Err(TlsError::PeerSpiffeIds { count: 0, .. })
    ));
    // Two identities: ambiguous, whichever trust domains they are of.
    let two = leaf(vec![uri(SERVER), uri(CLIENT)]);
    let err = spiffe_id_of(&two, td).unwrap_err();
    assert!(
        matches!(err, TlsError::PeerSpiffeIds { count: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(CLIENT), "{err}");
    let other_domain_too = leaf(vec![
        uri("spiffe://other.domain/ns/back/sa/db"),
        uri(SERVER),
    ]);
    assert!(matches!(
        spiffe_id_of(&other_domain_too, td),
        Err(TlsError::PeerSpiffeIds { count: 2, .. })
    ));
    // The scheme in another case is still a claim, and not a valid SPIFFE ID.
    let shouting = leaf(vec![uri("SPIFFE://cluster.local/ns/back/sa/db")]);
    assert!(matches!(
        spiffe_id_of(&shouting, td),
        Err(TlsError::PeerNotSpiffe(_))
    ));
    let shouting_too = leaf(vec![uri("SPIFFE://cluster.local/ns/x/sa/y"), uri(SERVER)]);
    assert!(matches!(
        spiffe_id_of(&shouting_too, td),
        Err(TlsError::PeerSpiffeIds { count: 2, .. })
    ));
    let not_a_workload = leaf(vec![uri("spiffe://cluster.local/some/path")]);
    assert!(matches!(
        spiffe_id_of(&not_a_workload, td),
        Err(TlsError::PeerNotSpiffe(_))
    ));
    let foreign = leaf(vec![uri("spiffe://other.domain/ns/back/sa/db")]);
    let err = spiffe_id_of(&foreign, td).unwrap_err();
    assert!(matches!(err, TlsError::PeerTrustDomain { .. }), "{err}");
    assert!(err.to_string().contains("other.domain"), "{err}");
    let garbage = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    assert!(matches!(
        spiffe_id_of(&garbage, td),
        Err(TlsError::PeerCertificate { .. })
    ));
}

#[test]
fn a_server_is_accepted_when_any_uri_san_is_the_expected_identity() {
    use rcgen::{CertificateParams, KeyPair, SanType};
    let key = KeyPair::generate().unwrap();
    let leaf = |sans: &[&str]| {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans
            .iter()
            .map(|s| SanType::URI((*s).try_into().unwrap()))
            .collect();
        params.self_signed(&key).unwrap().der().clone()
    };
    let expected = id(SERVER);
    let other = "spiffe://cluster.local/ns/back/sa/other";
    for sans in [
        &[SERVER][..],
        &[other, SERVER],
        &[SERVER, other, "https://db.back.svc/"],
    ] {
        server_has_identity(&leaf(sans), &expected).unwrap();
    }
    for sans in [
        &[][..],
        &[other],
        &[
            "https://db.back.svc/",
            "spiffe://other.domain/ns/back/sa/db",
        ],
        // Not the same ID in another case.
        &["SPIFFE://cluster.local/ns/back/sa/db"],
    ] {
        match server_has_identity(&leaf(sans), &expected) {
            Err(TlsError::ServerIdentityMismatch { presented, .. }) => {
                assert_eq!(presented, sans, "{sans:?}");
            }
            other => panic!("{sans:?}: {other:?}"),
        }
    }
}

mod key_exchange;
mod san;
