//! The SAN rules in real handshakes, with leaves carrying several URI SANs signed by the mesh
//! CA: a server is accepted when any of its URI SANs is the identity expected (as ztunnel); a
//! client must carry exactly one SPIFFE ID, which is its principal.

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use rustls::pki_types::PrivateKeyDer;

use super::*;

/// A leaf of the mesh CA with these URI SANs (server and client use), and its key.
fn leaf(mesh: &Mesh, sans: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let files = CaFiles::in_dir(mesh.dir.path());
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(&files.key).unwrap()).unwrap();
    let ca_pem = std::fs::read_to_string(&files.cert).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = sans
        .iter()
        .map(|s| SanType::URI((*s).try_into().unwrap()))
        .collect();
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

/// A server presenting `sans` (and not asking for a client certificate).
fn server_presenting(mesh: &Mesh, sans: &[&str]) -> Arc<ServerConfig> {
    let (chain, key) = leaf(mesh, sans);
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(config)
}

/// A client presenting `sans`, expecting the server to be [`SERVER`].
fn client_presenting(mesh: &Mesh, sans: &[&str]) -> Arc<ClientConfig> {
    let (chain, key) = leaf(mesh, sans);
    let roots = mesh.cert(CLIENT).root_store().clone();
    let verifier = verifier::ServerIdentity::new(roots, id(SERVER));
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Arc::new(config)
}

const OTHER: &str = "spiffe://cluster.local/ns/back/sa/other";

#[tokio::test]
async fn a_server_with_two_uri_sans_one_expected_is_accepted() {
    let mesh = Mesh::new();
    let client = client_config(&mesh.cert(CLIENT), id(SERVER), KX).unwrap();
    for sans in [[OTHER, SERVER], [SERVER, "https://db.back.svc/"]] {
        let (server, client) = handshake(server_presenting(&mesh, &sans), client.clone()).await;
        client.unwrap_or_else(|e| panic!("{sans:?}: {e}"));
        server.unwrap();
    }
}

#[tokio::test]
async fn a_server_none_of_whose_uri_sans_is_expected_is_refused() {
    let mesh = Mesh::new();
    let client = client_config(&mesh.cert(CLIENT), id(SERVER), KX).unwrap();
    let sans = [OTHER, "spiffe://other.domain/ns/back/sa/db"];
    let (_, client) = handshake(server_presenting(&mesh, &sans), client).await;
    let err = client.unwrap_err();
    match err.rejection() {
        Some(TlsError::ServerIdentityMismatch { presented, .. }) => {
            assert_eq!(presented, &sans.map(str::to_owned));
        }
        other => panic!("unexpected {other:?} from {err}"),
    }
}

#[tokio::test]
async fn a_client_with_one_spiffe_id_is_that_principal() {
    let mesh = Mesh::new();
    let server = server_config(&mesh.cert(SERVER), KX).unwrap();
    // A URI SAN of another scheme is not an identity: ignored.
    let client = client_presenting(&mesh, &["https://front.example/", CLIENT]);
    let (server, client) = handshake(server, client).await;
    let server = server.unwrap();
    client.unwrap();
    assert_eq!(
        peer_identity(server.get_ref().1, &TrustDomain::default()).unwrap(),
        id(CLIENT)
    );
}

#[tokio::test]
async fn a_client_with_two_spiffe_ids_is_refused() {
    let mesh = Mesh::new();
    // Both of the trust domain, or one of another: which one would policy see? Refused
    // either way (ztunnel checks that any is of the trust domain, then takes the first).
    for sans in [
        [CLIENT, OTHER],
        ["spiffe://other.domain/ns/front/sa/web", CLIENT],
    ] {
        let server = server_config(&mesh.cert(SERVER), KX).unwrap();
        let (server, client) = handshake(server, client_presenting(&mesh, &sans)).await;
        let err = server.unwrap_err();
        assert!(
            matches!(
                err.rejection(),
                Some(TlsError::PeerSpiffeIds { count: 2, .. })
            ),
            "{sans:?}: {err}"
        );
        assert_client_is_cut_off(client).await;
    }
}
