//! The Istio CA protocol client against an in-process CA built from the real protos (tonic,
//! TLS): issuance with the token and the impersonated identity, and refusal of answers the
//! proxy must not trust (an extra SAN, another identity, a chain to another root), and a CA
//! that is down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::identity::istio_ca::proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use crate::identity::istio_ca::proto::{IstioCertificateRequest, IstioCertificateResponse};
use crate::identity::istio_ca::{IMPERSONATED_IDENTITY, IstioCa, IstioCaConfig, metadata};
use crate::identity::{CertificateProvider, IdentityError, Roots, SpiffeId, TrustBundle};

/// What the test CA does with a CSR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Signs it as asked.
    Honest,
    /// Adds a second URI SAN.
    ExtraSan,
    /// Certifies another identity.
    OtherIdentity,
    /// Signs with a CA the proxy does not trust.
    Untrusted,
}

/// A CA key and its certificate.
struct TestRoot {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn root(name: &str) -> TestRoot {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    TestRoot {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

struct TestCa {
    trusted: TestRoot,
    untrusted: TestRoot,
    mode: Mutex<Mode>,
    /// (authorization header, impersonated identity) of each call.
    seen: Mutex<Vec<(String, String)>>,
    /// The `clusterid` header of each call.
    cluster_ids: Mutex<Vec<String>>,
}

#[tonic::async_trait]
impl IstioCertificateService for Arc<TestCa> {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let cluster_id = request
            .metadata()
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.cluster_ids.lock().unwrap().push(cluster_id);
        let body = request.into_inner();
        let impersonated = body
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        self.seen.lock().unwrap().push((auth, impersonated));
        let mut csr = CertificateSigningRequestParams::from_pem(&body.csr)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        let mode = *self.mode.lock().unwrap();
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        match mode {
            Mode::ExtraSan => csr.params.subject_alt_names.push(SanType::URI(
                "spiffe://cluster.local/ns/kube-system/sa/admin"
                    .try_into()
                    .unwrap(),
            )),
            Mode::OtherIdentity => {
                csr.params.subject_alt_names = vec![SanType::URI(
                    "spiffe://cluster.local/ns/shop/sa/other"
                        .try_into()
                        .unwrap(),
                )];
            }
            Mode::Honest | Mode::Untrusted => {}
        }
        let signer = if mode == Mode::Untrusted {
            &self.untrusted
        } else {
            &self.trusted
        };
        let leaf = csr
            .signed_by(&signer.issuer)
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        Ok(tonic::Response::new(IstioCertificateResponse {
            cert_chain: vec![leaf.pem(), signer.pem.clone()],
        }))
    }
}

/// Starts the CA on a loopback port with a serving certificate for `localhost`.
async fn start(mode: Mode) -> (Arc<TestCa>, std::net::SocketAddr) {
    let ca = Arc::new(TestCa {
        trusted: root("trusted mesh root"),
        untrusted: root("some other root"),
        mode: Mutex::new(mode),
        seen: Mutex::new(Vec::new()),
        cluster_ids: Mutex::new(Vec::new()),
    });
    let serving_key = KeyPair::generate().unwrap();
    let mut serving = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    serving.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let serving_cert = serving.signed_by(&serving_key, &ca.trusted.issuer).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = ServerTlsConfig::new().identity(Identity::from_pem(
        serving_cert.pem(),
        serving_key.serialize_pem(),
    ));
    let service = IstioCertificateServiceServer::new(ca.clone());
    tokio::spawn(async move {
        Server::builder()
            .tls_config(tls)
            .unwrap()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap();
    });
    (ca, addr)
}

fn client(ca: &TestCa, addr: std::net::SocketAddr, token: &std::path::Path) -> IstioCa {
    let roots = Roots::from_pem(ca.trusted.pem.as_bytes(), "test").unwrap();
    IstioCa::new(
        IstioCaConfig {
            address: format!("https://localhost:{}", addr.port()),
            server_name: Some("localhost".into()),
            token_file: token.to_path_buf(),
            validity: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            headers: vec![("ClusterID".into(), "cluster-east".into())],
        },
        TrustBundle::new(roots),
    )
    .unwrap()
}

fn web() -> SpiffeId {
    "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap()
}

#[tokio::test]
async fn issues_with_the_token_and_the_impersonated_identity() {
    let (ca, addr) = start(Mode::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "node-proxy-token\n").unwrap();
    let provider = client(&ca, addr, &token);
    let cert = provider.fetch(&web()).await.unwrap();
    assert_eq!(cert.id(), &web());
    assert!(
        cert.chain().is_empty(),
        "the root is not presented as an intermediate"
    );
    let seen = ca.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![("Bearer node-proxy-token".to_owned(), web().to_string())]
    );
    assert_eq!(*ca.cluster_ids.lock().unwrap(), ["cluster-east"]);
}

#[test]
fn extra_headers_are_checked() {
    assert!(metadata("ClusterID", "Kubernetes").is_ok());
    for (name, value) in [
        ("authorization", "Bearer stolen"),
        ("grpc-timeout", "1S"),
        ("bad name", "x"),
        ("clusterid", "line\nbreak"),
    ] {
        let error = metadata(name, value).unwrap_err().to_string();
        assert!(error.contains(name), "{error}");
    }
}

#[tokio::test]
async fn answers_it_must_not_trust_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    for (mode, expected) in [
        (Mode::ExtraSan, "URI SANs"),
        (Mode::OtherIdentity, "not the requested identity"),
        (Mode::Untrusted, "trusted root"),
    ] {
        let (ca, addr) = start(mode).await;
        let provider = client(&ca, addr, &token);
        match provider.fetch(&web()).await {
            Err(error @ IdentityError::CaAnswer { .. }) => {
                assert!(error.to_string().contains(expected), "{mode:?}: {error}");
            }
            other => panic!(
                "{mode:?}: expected a refusal, got {:?}",
                other.map(|c| c.id().clone())
            ),
        }
    }
}

#[tokio::test]
async fn a_ca_that_is_down_is_an_error_naming_it() {
    let (ca, addr) = start(Mode::Honest).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    // Nothing listens on the port next to the CA's (bound and dropped).
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let provider = client(&ca, free, &token);
    let error = provider.fetch(&web()).await.map(|_| ()).unwrap_err();
    assert!(
        matches!(error, IdentityError::CaUnavailable { .. }),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains(&format!("localhost:{}", free.port())),
        "{error}"
    );
    // And a missing token is named too.
    let provider = client(&ca, addr, &dir.path().join("absent"));
    let error = provider.fetch(&web()).await.map(|_| ()).unwrap_err();
    assert!(error.to_string().contains("absent"), "{error}");
    assert_eq!(error.reason(), "local", "the proxy's side, not the CA's");
    // An empty token is not sent.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let error = client(&ca, addr, &empty)
        .fetch(&web())
        .await
        .map(|_| ())
        .unwrap_err();
    assert!(error.to_string().contains("empty"), "{error}");
    assert!(ca.seen.lock().unwrap().is_empty(), "nothing reached the CA");
}
