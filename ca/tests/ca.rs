//! `node-proxy ca serve` end to end over loopback: the CA served by `ca::serve` (TLS with its
//! self-issued serving certificate), callers checked against the in-process API server replay
//! (TokenReviews, the caller's pod, the pods on its node), driven by the proxy's own Istio CA
//! client and, for requests that client would never send, a raw gRPC client.
#![expect(
    clippy::expect_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

/// Renewal, expiry and a CA outage through the proxy's certificate manager.
#[path = "ca/lifecycle.rs"]
mod lifecycle;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use marrow_ca::{self as ca, CaSettings, CaTelemetry};
use marrow_mesh::identity::istio_ca::IMPERSONATED_IDENTITY;
use marrow_mesh::identity::istio_ca::proto::IstioCertificateRequest;
use marrow_mesh::identity::istio_ca::proto::istio_certificate_service_client::IstioCertificateServiceClient;
use marrow_mesh::identity::{
    CaFiles, CertificateProvider, IstioCa, IstioCaConfig, Roots, SpiffeId, TrustBundle,
    TrustDomain, create_ca,
};
use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
    SanType, SignatureAlgorithm,
};
use replay_apiserver::{ApiServer, objects};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

const NODE: &str = "node-a";
const SERVING_NAME: &str = "marrow-ca.marrow-system.svc";
const CART: &str = "spiffe://cluster.local/ns/shop/sa/cart";
/// A pod of this identity runs on node-b only.
const PG: &str = "spiffe://cluster.local/ns/db/sa/pg";
/// The node proxy on node-a, its token bound to its pod.
const NODE_PROXY_TOKEN: &str = "token-node-proxy-a";
/// The cart workload's own token.
const CART_TOKEN: &str = "token-cart";
/// A node-proxy token for another audience (the API server's).
const WRONG_AUDIENCE_TOKEN: &str = "token-api-audience";
/// A node-proxy token bound to a pod that was replaced by one of the same name.
const STALE_TOKEN: &str = "token-stale-pod";
/// A node-proxy token bound to a pod that no longer exists.
const GONE_TOKEN: &str = "token-gone-pod";
/// A node-proxy token not bound to any pod.
const UNBOUND_TOKEN: &str = "token-unbound";

/// `openssl req -new -newkey rsa:1024 -addext subjectAltName=URI:<CART>`.
const RSA_1024_CSR: &str = include_str!("fixtures/rsa-1024.csr");

/// A running CA, its API server and its files; dropping it stops the CA.
struct Harness {
    api: ApiServer,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    root_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ca::CaError>>,
    telemetry: Arc<CaTelemetry>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

fn pod_uid(namespace: &str, name: &str) -> String {
    format!("uid-{namespace}-{name}")
}

/// The CA's settings in these tests: the defaults, reloading its files every 100 ms.
fn test_settings() -> CaSettings {
    CaSettings {
        reload_interval: Duration::from_millis(100),
        ..CaSettings::default()
    }
}

/// The cluster: a node proxy and `shop/cart` on node-a, `db/pg` on node-b; the tokens above.
async fn start() -> Harness {
    start_with(test_settings()).await
}

/// The same cluster, the CA with `settings`.
async fn start_with(settings: CaSettings) -> Harness {
    // The CA's decisions in the test output (shown for failing tests).
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("node_proxy=info")
        .try_init();
    let api = ApiServer::start().await;
    api.apply(objects::pod(
        "marrow-system",
        "node-proxy-a",
        NODE,
        "192.168.0.10",
        "node-proxy",
    ));
    api.apply(objects::pod("shop", "cart-1", NODE, "10.0.1.5", "cart"));
    api.apply(objects::pod("db", "pg-0", "node-b", "10.0.2.7", "pg"));
    let np_uid = pod_uid("marrow-system", "node-proxy-a");
    let node_proxy = |pod: Option<(&str, &str, &str)>| {
        objects::service_account_user("marrow-system", "node-proxy", pod)
    };
    api.add_token(
        NODE_PROXY_TOKEN,
        &["istio-ca"],
        node_proxy(Some(("node-proxy-a", &np_uid, NODE))),
    );
    api.add_token(
        WRONG_AUDIENCE_TOKEN,
        &["https://kubernetes.default.svc.cluster.local"],
        node_proxy(Some(("node-proxy-a", &np_uid, NODE))),
    );
    api.add_token(
        STALE_TOKEN,
        &["istio-ca"],
        node_proxy(Some(("node-proxy-a", "uid-of-an-earlier-pod", NODE))),
    );
    api.add_token(
        GONE_TOKEN,
        &["istio-ca"],
        node_proxy(Some(("node-proxy-gone", "uid-gone", NODE))),
    );
    api.add_token(UNBOUND_TOKEN, &["istio-ca"], node_proxy(None));
    api.add_token(
        CART_TOKEN,
        &["istio-ca"],
        objects::service_account_user(
            "shop",
            "cart",
            Some(("cart-1", &pod_uid("shop", "cart-1"), NODE)),
        ),
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let files = create_ca(
        &dir.path().join("ca"),
        &TrustDomain::default(),
        Duration::from_secs(86_400 * 365),
    )
    .expect("create the CA");
    let root_pem = std::fs::read_to_string(&files.cert).expect("CA certificate");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let telemetry = Arc::new(CaTelemetry::default());
    let (stop, task) = serve(&api, files, listener, settings.clone(), telemetry.clone());
    Harness {
        api,
        dir,
        addr,
        root_pem,
        stop: Some(stop),
        task,
        telemetry,
    }
}

/// Serves the CA of `files` on `listener`, until the sender is used or dropped.
fn serve(
    api: &ApiServer,
    files: CaFiles,
    listener: tokio::net::TcpListener,
    settings: CaSettings,
    telemetry: Arc<CaTelemetry>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), ca::CaError>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(ca::serve(
        api.client(),
        files,
        settings,
        listener,
        telemetry,
        async {
            let _ = stopped.await;
        },
    ));
    (stop, task)
}

impl Harness {
    /// Stops the CA (an outage: its port refuses connections).
    async fn stop_ca(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("the CA stops");
    }

    /// Starts the CA again on the same address.
    async fn restart_ca(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .expect("bind the CA's address again");
        let (stop, task) = serve(
            &self.api,
            CaFiles::in_dir(&self.dir.path().join("ca")),
            listener,
            test_settings(),
            self.telemetry.clone(),
        );
        self.stop = Some(stop);
        self.task = task;
    }

    /// A raw client trusting `root_pem` for the CA's serving name.
    async fn client(&self, root_pem: &str) -> IstioCertificateServiceClient<Channel> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(root_pem))
            .domain_name(SERVING_NAME);
        let channel = Endpoint::from_shared(format!("https://{}", self.addr))
            .expect("endpoint")
            .timeout(Duration::from_secs(10))
            .tls_config(tls)
            .expect("tls")
            .connect()
            .await
            .expect("connect to the CA");
        IstioCertificateServiceClient::new(channel)
    }

    /// One CreateCertificate call with the original root.
    async fn call(
        &self,
        token: Option<&str>,
        csr: String,
        impersonate: Option<&str>,
    ) -> Result<Vec<String>, tonic::Status> {
        call(
            &mut self.client(&self.root_pem).await,
            token,
            csr,
            impersonate,
        )
        .await
    }

    /// The proxy's own client, with `token` in a file and `root_pem` as its roots.
    fn istio_ca(&self, token: &str, root_pem: &str) -> IstioCa {
        self.istio_ca_for(token, root_pem, Duration::from_secs(3600))
    }

    /// The same, asking for certificates that live `validity`.
    fn istio_ca_for(&self, token: &str, root_pem: &str, validity: Duration) -> IstioCa {
        let token_file = self.dir.path().join(format!("{token}.jwt"));
        std::fs::write(&token_file, token).expect("token file");
        let roots = Roots::from_pem(root_pem.as_bytes(), "test roots").expect("roots");
        IstioCa::new(
            IstioCaConfig {
                address: format!("https://127.0.0.1:{}", self.addr.port()),
                server_name: Some(SERVING_NAME.to_owned()),
                token_file,
                validity,
                timeout: Duration::from_secs(10),
                headers: Vec::new(),
            },
            TrustBundle::new(roots),
        )
        .expect("the Istio CA client")
    }
}

async fn call(
    client: &mut IstioCertificateServiceClient<Channel>,
    token: Option<&str>,
    csr: String,
    impersonate: Option<&str>,
) -> Result<Vec<String>, tonic::Status> {
    let metadata = impersonate.map(|id| {
        let mut fields = std::collections::BTreeMap::new();
        fields.insert(
            IMPERSONATED_IDENTITY.to_owned(),
            prost_types::Value {
                kind: Some(prost_types::value::Kind::StringValue(id.to_owned())),
            },
        );
        prost_types::Struct { fields }
    });
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: 3600,
        metadata,
    });
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
    }
    client
        .create_certificate(request)
        .await
        .map(|r| r.into_inner().cert_chain)
}

fn id(text: &str) -> SpiffeId {
    SpiffeId::parse(text).expect("SPIFFE ID")
}

/// A CSR for `uris` with a fresh key of `alg`; `shape` adds to it.
fn csr_for(
    alg: &'static SignatureAlgorithm,
    uris: &[&str],
    shape: impl FnOnce(&mut CertificateParams),
) -> String {
    let key = KeyPair::generate_for(alg).expect("key");
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().expect("URI")))
        .collect();
    shape(&mut params);
    params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .expect("CSR")
}

fn csr(uri: &str) -> String {
    csr_for(&PKCS_ECDSA_P256_SHA256, &[uri], |_| {})
}

fn der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM certificate")
        .to_vec()
}

/// Checks `leaf` names exactly `uri` and is signed by `issuer_pem`'s key.
fn assert_leaf(leaf: &[u8], uri: &str, issuer_pem: &str) {
    let (_, cert) = X509Certificate::from_der(leaf).expect("leaf");
    let san = cert
        .subject_alternative_name()
        .expect("SAN")
        .expect("a SAN");
    assert_eq!(san.value.general_names, vec![GeneralName::URI(uri)]);
    assert!(!cert.is_ca());
    let issuer = der(issuer_pem);
    let (_, issuer) = X509Certificate::from_der(&issuer).expect("issuer");
    cert.verify_signature(Some(issuer.public_key()))
        .expect("the leaf is signed by the CA");
}

fn assert_refused(result: Result<Vec<String>, tonic::Status>, code: Code, says: &[&str]) {
    let status = result.expect_err("the CA must refuse");
    assert_eq!(status.code(), code, "{status:?}");
    for part in says {
        assert!(
            status.message().contains(part),
            "{:?} should say {part:?}",
            status.message()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issues_the_identity_of_a_pod_on_the_callers_node() {
    let h = start().await;
    // The proxy's own client: TLS to the serving name with the mesh root, the chain checked.
    let ca = h.istio_ca(NODE_PROXY_TOKEN, &h.root_pem);
    let cert = ca.fetch(&id(CART)).await.expect("a certificate for cart");
    assert_eq!(cert.id(), &id(CART));
    assert_leaf(cert.leaf(), CART, &h.root_pem);

    // The raw answer: leaf first, the root last.
    let chain = h
        .call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART))
        .await
        .expect("issued");
    assert_eq!(chain.len(), 2);
    assert_eq!(der(&chain[1]), der(&h.root_pem));
    assert_leaf(&der(&chain[0]), CART, &h.root_pem);

    // What the CA asked the API server.
    let reviews = h.api.token_reviews();
    assert_eq!(reviews.len(), 1, "two requests with one token: one review");
    assert_eq!(reviews[0]["audiences"], serde_json::json!(["istio-ca"]));
    assert_eq!(reviews[0]["token"], NODE_PROXY_TOKEN);
    let requests = h.api.requests();
    for expected in [
        "POST /apis/authentication.k8s.io/v1/tokenreviews?",
        "GET /api/v1/namespaces/marrow-system/pods/node-proxy-a?",
        "GET /api/v1/namespaces/shop/pods?&fieldSelector=spec.nodeName%3Dnode-a",
    ] {
        assert!(
            requests.iter().any(|r| r.starts_with(expected)),
            "{expected} in {requests:#?}"
        );
    }
    // Counted, and the CA's expiry exported; ready.
    assert_eq!(h.telemetry.issued.get(), 2);
    assert!(h.telemetry.ca_expiry.get() > 0);
    assert!(h.telemetry.readiness.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_the_identity_of_a_pod_on_another_node() {
    let h = start().await;
    assert_refused(
        h.call(Some(NODE_PROXY_TOKEN), csr(PG), Some(PG)).await,
        Code::PermissionDenied,
        &[PG, NODE],
    );
    // The proxy's client gets the same refusal.
    let refused = h
        .istio_ca(NODE_PROXY_TOKEN, &h.root_pem)
        .fetch(&id(PG))
        .await
        .expect_err("refused");
    assert!(refused.to_string().contains(NODE), "{refused}");
    let not_on_node = ca::RefusalLabels {
        reason: "not_on_node",
    };
    assert_eq!(h.telemetry.refused.get_or_create(&not_on_node).get(), 2);
    assert_eq!(h.telemetry.issued.get(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_csrs_asking_for_more_than_the_identity() {
    let h = start().await;
    let mut client = h.client(&h.root_pem).await;
    let np = Some(NODE_PROXY_TOKEN);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "an extra DNS SAN",
            csr_for(&PKCS_ECDSA_P256_SHA256, &[CART], |p| {
                p.subject_alt_names
                    .push(SanType::DnsName("cart.shop.svc".try_into().expect("DNS")));
            }),
            "cart.shop.svc",
        ),
        (
            "a second URI SAN",
            csr_for(&PKCS_ECDSA_P256_SHA256, &[CART, PG], |_| {}),
            "2 URI SANs",
        ),
        (
            "CA:TRUE",
            csr_for(&PKCS_ECDSA_P256_SHA256, &[CART], |p| {
                p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }),
            "CA:TRUE",
        ),
        ("an RSA-1024 key", RSA_1024_CSR.to_owned(), "1024 bits"),
        (
            "an Ed25519 key",
            csr_for(&PKCS_ED25519, &[CART], |_| {}),
            "key algorithm",
        ),
        ("garbage", "not a CSR".to_owned(), "unreadable"),
        ("another identity", csr(PG), "not the requested identity"),
    ];
    for (name, pem, says) in cases {
        let result = call(&mut client, np, pem, Some(CART)).await;
        let status = result.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(status.message().contains(says), "{name}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_callers_it_cannot_authenticate() {
    let h = start().await;
    let mut client = h.client(&h.root_pem).await;
    for (name, token) in [
        ("no token", None),
        ("an empty bearer", Some("")),
        ("an unknown token", Some("token-nobody-issued")),
        ("a token for another audience", Some(WRONG_AUDIENCE_TOKEN)),
    ] {
        let result = call(&mut client, token, csr(CART), Some(CART)).await;
        let status = result.expect_err(name);
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
        assert!(
            !status.message().contains(NODE_PROXY_TOKEN),
            "never echo a token"
        );
    }
    // Not a bearer at all.
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr: csr(CART),
        validity_duration: 60,
        metadata: None,
    });
    request.metadata_mut().insert(
        "authorization",
        "Basic dXNlcjpwdw==".parse().expect("header"),
    );
    let status = client.create_certificate(request).await.expect_err("basic");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_obtains_only_its_own_identity() {
    let h = start().await;
    // Impersonation is for node proxies only.
    assert_refused(
        h.call(Some(CART_TOKEN), csr(PG), Some(PG)).await,
        Code::PermissionDenied,
        &["shop/cart", PG],
    );
    // Itself, named or implied, is fine.
    for impersonate in [Some(CART), None] {
        let chain = h
            .call(Some(CART_TOKEN), csr(CART), impersonate)
            .await
            .expect("its own identity");
        assert_leaf(&der(&chain[0]), CART, &h.root_pem);
    }
    // A node proxy asking for itself without impersonation gets its own identity.
    let own = "spiffe://cluster.local/ns/marrow-system/sa/node-proxy";
    let chain = h
        .call(Some(UNBOUND_TOKEN), csr(own), None)
        .await
        .expect("the node proxy's own identity");
    assert_leaf(&der(&chain[0]), own, &h.root_pem);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_node_proxies_whose_node_is_unknown() {
    let h = start().await;
    for (name, token, says) in [
        ("a replaced pod", STALE_TOKEN, "replaced"),
        ("a deleted pod", GONE_TOKEN, "no longer exists"),
        ("no pod binding", UNBOUND_TOKEN, "not bound to a pod"),
    ] {
        let status = h
            .call(Some(token), csr(CART), Some(CART))
            .await
            .expect_err(name);
        assert_eq!(status.code(), Code::PermissionDenied, "{name}: {status:?}");
        assert!(status.message().contains(says), "{name}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_unavailable_not_a_denial() {
    let h = start().await;
    h.api.set_down(true);
    assert_refused(
        h.call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART)).await,
        Code::Unavailable,
        &["TokenReview"],
    );
    h.api.set_down(false);
    h.call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART))
        .await
        .expect("served again");
}

/// Replaces the CA files with those of a new CA; returns its certificate.
async fn replace_ca(files: &CaFiles, scratch: &Path) -> String {
    let new = create_ca(
        scratch,
        &TrustDomain::default(),
        Duration::from_secs(86_400 * 365),
    )
    .expect("a new CA");
    // Key first: for a moment the pair does not match, which must not disturb signing.
    std::fs::write(&files.key, std::fs::read(&new.key).expect("key")).expect("write key");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cert = std::fs::read_to_string(&new.cert).expect("cert");
    std::fs::write(&files.cert, &cert).expect("write cert");
    cert
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_ca_signs_later_certificates() {
    let h = start().await;
    let files = CaFiles::in_dir(&h.dir.path().join("ca"));
    let old_root = h.root_pem.clone();
    h.call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART))
        .await
        .expect("issued by the first CA");

    // A broken certificate file is refused; the loaded CA keeps signing.
    std::fs::write(&files.cert, "garbage").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let chain = h
        .call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART))
        .await
        .expect("still issued by the first CA");
    assert_leaf(&der(&chain[0]), CART, &old_root);

    let new_root = replace_ca(&files, &h.dir.path().join("new")).await;
    // The new CA takes over: its serving certificate and its chains lead to the new root.
    let started = Instant::now();
    let ca = h.istio_ca(NODE_PROXY_TOKEN, &new_root);
    let cert = loop {
        match ca.fetch(&id(CART)).await {
            Ok(cert) => break cert,
            Err(e) if started.elapsed() > Duration::from_secs(10) => {
                panic!("the new CA never took over: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert_leaf(cert.leaf(), CART, &new_root);
    let chain = call(
        &mut h.client(&new_root).await,
        Some(NODE_PROXY_TOKEN),
        csr(CART),
        Some(CART),
    )
    .await
    .expect("issued by the new CA");
    assert_eq!(der(chain.last().expect("root")), der(&new_root));
    assert_ne!(der(&new_root), der(&old_root));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_when_asked() {
    let mut h = start().await;
    h.call(Some(CART_TOKEN), csr(CART), None)
        .await
        .expect("serving");
    let _ = h.stop.take().expect("running").send(());
    let stopped = tokio::time::timeout(Duration::from_secs(10), &mut h.task)
        .await
        .expect("stops within 10 s")
        .expect("the task");
    stopped.expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_without_a_usable_ca() {
    let api = ApiServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let e = ca::serve(
        api.client(),
        CaFiles::in_dir(dir.path()),
        CaSettings::default(),
        listener,
        Arc::default(),
        std::future::pending(),
    )
    .await
    .expect_err("no CA files");
    assert_eq!(e.reason(), "ca_files");
    assert!(e.to_string().contains("ca-cert.pem"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_calls_is_refused_as_busy_not_passed_to_the_api_server() {
    let h = start_with(CaSettings {
        max_concurrent_requests: 1,
        ..test_settings()
    })
    .await;
    // A slow API server: the first call holds the only permit while its review is pending.
    h.api.set_post_delay(Duration::from_secs(3));
    let mut slow = h.client(&h.root_pem).await;
    let first = tokio::spawn(async move {
        call(&mut slow, Some(NODE_PROXY_TOKEN), csr(CART), Some(CART)).await
    });
    while h.api.token_reviews().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_refused(
        h.call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART)).await,
        Code::ResourceExhausted,
        &["busy"],
    );
    assert!(
        !first.is_finished(),
        "refused while the first call waits for its review, not queued behind it"
    );
    first
        .await
        .expect("the first call")
        .expect("the first call is served");
    assert_eq!(
        h.api.token_reviews().len(),
        1,
        "the refused call cost no review"
    );
    let busy = ca::RefusalLabels { reason: "busy" };
    assert_eq!(h.telemetry.refused.get_or_create(&busy).get(), 1);
    // Once the permit is back, calls are served again.
    h.api.set_post_delay(Duration::ZERO);
    h.call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART))
        .await
        .expect("served again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authentication_is_reused_briefly_and_refusals_never() {
    let h = start().await;
    for _ in 0..3 {
        h.call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART))
            .await
            .expect("issued");
    }
    assert_eq!(h.api.token_reviews().len(), 1, "reused within the TTL");
    // The pods are looked up every time: a replaced node-proxy pod is noticed at once.
    let lookups = h
        .api
        .requests()
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/namespaces/marrow-system/pods/node-proxy-a"))
        .count();
    assert_eq!(lookups, 3);
    // A refused token is asked about every time.
    for _ in 0..2 {
        assert_refused(
            h.call(Some("not-a-token"), csr(CART), Some(CART)).await,
            Code::Unauthenticated,
            &[],
        );
    }
    assert_eq!(h.api.token_reviews().len(), 3);

    // Past the TTL (here 1 ms, shorter than any call) the token is reviewed again.
    let h = start_with(CaSettings {
        token_review_ttl: Duration::from_millis(1),
        ..test_settings()
    })
    .await;
    for _ in 0..3 {
        h.call(Some(NODE_PROXY_TOKEN), csr(CART), Some(CART))
            .await
            .expect("issued");
    }
    assert_eq!(h.api.token_reviews().len(), 3, "asked again after the TTL");
}
