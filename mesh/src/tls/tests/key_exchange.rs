//! The key-exchange settings: what each offers (the ClientHello as sent), what each pair of
//! ends negotiates, and the refusal between a post-quantum-only end and a classic one (a peer on
//! ring, which has no ML-KEM).

use rustls::NamedGroup;
use rustls::crypto::aws_lc_rs::kx_group;

use super::*;

/// `supported_groups` and the groups of `key_share`, from a ClientHello.
fn groups(hello: &ClientHello<'_>) -> (Vec<u16>, Vec<u16>) {
    let mut supported = Reader(hello.extension(0x000a).unwrap());
    let mut list = Reader(supported.vec16());
    let mut offered = Vec::new();
    while !list.0.is_empty() {
        offered.push(list.u16());
    }
    let mut shares = Reader(hello.extension(0x0033).unwrap());
    let mut list = Reader(shares.vec16());
    let mut shared = Vec::new();
    while !list.0.is_empty() {
        shared.push(list.u16());
        list.vec16();
    }
    (offered, shared)
}

const X25519MLKEM768: u16 = 0x11ec;
const X25519: u16 = 0x001d;
const SECP256R1: u16 = 0x0017;
const SECP384R1: u16 = 0x0018;

#[tokio::test]
async fn the_default_offers_the_hybrid_first_and_classic_groups() {
    let mesh = Mesh::new();
    let config = client_config(
        &mesh.cert(CLIENT),
        id(SERVER),
        KeyExchange::PreferPostQuantum,
    );
    let record = client_hello_of(config.unwrap()).await;
    let (offered, shared) = groups(&ClientHello::parse(&record));
    assert_eq!(offered, [X25519MLKEM768, X25519, SECP256R1, SECP384R1]);
    // Shares for the hybrid and for X25519: a classic server answers without a retry.
    assert_eq!(shared, [X25519MLKEM768, X25519]);
}

#[tokio::test]
async fn post_quantum_only_offers_the_hybrid_alone() {
    let mesh = Mesh::new();
    let config = client_config(&mesh.cert(CLIENT), id(SERVER), KeyExchange::PostQuantumOnly);
    let record = client_hello_of(config.unwrap()).await;
    let (offered, shared) = groups(&ClientHello::parse(&record));
    assert_eq!(offered, [X25519MLKEM768]);
    assert_eq!(shared, [X25519MLKEM768]);
}

/// A provider with these groups only (the peers of another make).
fn groups_only(groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: groups,
        ..(*provider()).clone()
    })
}

/// ring's groups, in its order: what a classic peer (marrow before, ztunnel built on ring)
/// offers.
fn classic() -> Arc<CryptoProvider> {
    groups_only(vec![
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
    ])
}

/// ztunnel's default (aws-lc, without rustls' prefer-post-quantum): the hybrid offered last.
fn ztunnel_default() -> Arc<CryptoProvider> {
    groups_only(vec![
        kx_group::X25519,
        kx_group::SECP256R1,
        kx_group::SECP384R1,
        kx_group::X25519MLKEM768,
    ])
}

/// The group both ends negotiated.
fn negotiated(handshakes: Handshakes) -> (NamedGroup, NamedGroup) {
    let (server, client) = handshakes;
    let (server, client) = (server.unwrap(), client.unwrap());
    let group = |side: &CommonState| side.negotiated_key_exchange_group().unwrap().name();
    (group(server.get_ref().1), group(client.get_ref().1))
}

#[tokio::test]
async fn ends_negotiate_the_hybrid_whenever_one_prefers_it() {
    let mesh = Mesh::new();
    let (client_cert, server_cert) = (mesh.cert(CLIENT), mesh.cert(SERVER));
    let ours = |kx| {
        (
            server_config(&server_cert, kx).unwrap(),
            client_config(&client_cert, id(SERVER), kx).unwrap(),
        )
    };
    let (default_server, default_client) = ours(KeyExchange::PreferPostQuantum);
    let (pq_server, pq_client) = ours(KeyExchange::PostQuantumOnly);
    let ztunnel_client = client_config_with(&client_cert, id(SERVER), ztunnel_default()).unwrap();
    let ztunnel_server = server_config_with(&server_cert, ztunnel_default()).unwrap();
    let hybrid = (NamedGroup::X25519MLKEM768, NamedGroup::X25519MLKEM768);
    let classic = (NamedGroup::X25519, NamedGroup::X25519);
    let cases = [
        (
            "default to default",
            default_server.clone(),
            default_client.clone(),
            hybrid,
        ),
        (
            "post-quantum-only to default",
            default_server.clone(),
            pq_client.clone(),
            hybrid,
        ),
        (
            "default to post-quantum-only",
            pq_server.clone(),
            default_client.clone(),
            hybrid,
        ),
        (
            "default to ztunnel's default",
            ztunnel_server,
            default_client,
            hybrid,
        ),
        // The server picks in the client's order: ztunnel's X25519 comes first.
        (
            "ztunnel's default to default",
            default_server,
            ztunnel_client.clone(),
            classic,
        ),
        // After a HelloRetryRequest for the hybrid.
        (
            "ztunnel's default to post-quantum-only",
            pq_server,
            ztunnel_client,
            hybrid,
        ),
    ];
    for (what, server, client, expected) in cases {
        assert_eq!(
            negotiated(handshake(server, client).await),
            expected,
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_post_quantum_only_client_and_a_classic_server_do_not_connect() {
    let mesh = Mesh::new();
    let server = server_config_with(&mesh.cert(SERVER), classic()).unwrap();
    let client = client_config(&mesh.cert(CLIENT), id(SERVER), KeyExchange::PostQuantumOnly);
    let (server, client) = handshake(server, client.unwrap()).await;
    let client = client.unwrap_err();
    assert!(
        matches!(
            &client,
            TlsError::NoCommonKeyExchange { side: "client", offered, .. } if offered == "X25519MLKEM768"
        ),
        "{client}"
    );
    let text = client.to_string();
    assert!(
        text.contains("no key exchange in common") && text.contains("X25519MLKEM768"),
        "{text}"
    );
    let server = server.unwrap_err();
    assert!(
        matches!(&server, TlsError::NoCommonKeyExchange { side: "server", offered, .. }
            if offered == "X25519, secp256r1, secp384r1"),
        "{server}"
    );
}

#[tokio::test]
async fn a_classic_client_and_a_post_quantum_only_server_do_not_connect() {
    let mesh = Mesh::new();
    let server = server_config(&mesh.cert(SERVER), KeyExchange::PostQuantumOnly).unwrap();
    let client = client_config_with(&mesh.cert(CLIENT), id(SERVER), classic()).unwrap();
    let (server, client) = handshake(server, client).await;
    let server = server.unwrap_err();
    assert!(
        matches!(&server, TlsError::NoCommonKeyExchange { side: "server", offered, .. }
            if offered == "X25519MLKEM768"),
        "{server}"
    );
    // The client offered classic groups: a refusal, but not read as a key-exchange one.
    assert!(
        matches!(client, Err(TlsError::Handshake { side: "client", .. })),
        "{client:?}"
    );
}
