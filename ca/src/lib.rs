//! `node-proxy ca serve`: a CA speaking Istio's protocol (gRPC
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` over TLS) for clusters without
//! istiod. Node proxies ask it for the certificates of the pods on their node.
//!
//! This module owns who may obtain which identity, and what a certificate it signs says.
//! Invariants:
//! - a caller is who a Kubernetes TokenReview says (audience checked); a workload may obtain
//!   only its own identity; a configured node-proxy account may obtain another identity only
//!   when a pod with that ServiceAccount is scheduled on the node of the pod its token is bound
//!   to ([`authorize`]);
//! - a certificate is built from scratch, never from the CSR's extensions: the CSR's public key
//!   (ECDSA P-256/P-384 or RSA of 2048 bits or more, self-signature verified) and exactly one
//!   URI SAN, the granted SPIFFE ID; not a CA; bounded in time by `--max-cert-ttl-secs` and the
//!   CA's own notAfter ([`csr`]);
//! - the signing key is reloaded when its files change; a broken new pair never replaces a
//!   working one;
//! - the bearer token is never logged nor put in an error.

pub mod authorize;
pub mod csr;
mod server;
mod signer;
mod telemetry;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::Code;

use marrow_mesh::identity::{CaFiles, DEFAULT_TRUST_DOMAIN, SpiffeId, TrustDomain};
use marrow_settings::{parse, settings};

pub use authorize::{Grant, ServiceAccount};
pub use server::serve;
pub use telemetry::{CaTelemetry, RefusalLabels};

/// The port istiod serves its CA on, and so this CA.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15012);
/// The audience node proxies' tokens are projected for (Istio's).
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// The node proxies' ServiceAccount.
pub const DEFAULT_NODE_PROXY_ACCOUNTS: &str = "marrow-system/node-proxy";
/// The names of the CA's Service, which its serving certificate carries.
pub const DEFAULT_SERVING_NAMES: &str =
    "marrow-ca.marrow-system.svc,marrow-ca.marrow-system.svc.cluster.local";

/// The comma-separated `list` as a list.
fn split(list: &str) -> Vec<String> {
    list.split(',').map(str::to_owned).collect()
}

settings! {
    /// Everything `node-proxy ca serve` needs, read as the node proxy's configuration is
    /// (defaults, `--config-file`, `MARROW_*`, flags; see [`marrow_settings`]).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ServeConfig {
        /// Address to serve gRPC over TLS on.
        listen: SocketAddr = DEFAULT_LISTEN,
            ("listen", "MARROW_CA_LISTEN", parse::ADDR),
        /// Directory of ca-cert.pem and ca-key.pem (the mounted Secret); reloaded when they
        /// change.
        ca_dir: PathBuf = PathBuf::from("/etc/marrow-ca"),
            ("ca-dir", "MARROW_CA_DIR", parse::PATH),
        /// SPIFFE trust domain the CA signs for.
        trust_domain: String = DEFAULT_TRUST_DOMAIN.to_owned(),
            ("trust-domain", "MARROW_TRUST_DOMAIN", parse::TEXT),
        /// ServiceAccounts (`ns/sa`, comma separated) that may ask for the identities of pods
        /// on their own node.
        node_proxy_accounts: Vec<String> = split(DEFAULT_NODE_PROXY_ACCOUNTS),
            ("node-proxy-accounts", "MARROW_CA_NODE_PROXY_ACCOUNTS", parse::TEXT_LIST),
        /// Audience callers' tokens must be issued for.
        audience: String = DEFAULT_AUDIENCE.to_owned(),
            ("audience", "MARROW_CA_AUDIENCE", parse::TEXT),
        /// DNS names (comma separated) of the CA's own serving certificate.
        serving_names: Vec<String> = split(DEFAULT_SERVING_NAMES),
            ("serving-names", "MARROW_CA_SERVING_NAMES", parse::TEXT_LIST),
        /// Longest lifetime of an issued certificate, in seconds.
        max_cert_ttl: Duration = Duration::from_secs(86_400),
            ("max-cert-ttl-secs", "MARROW_CA_MAX_CERT_TTL_SECS", parse::SECS),
        /// Requests checked at once; more are refused with RESOURCE_EXHAUSTED (the proxies
        /// retry with backoff), so a flood of calls does not become a flood on the API server.
        max_concurrent_requests: usize = 64,
            ("max-concurrent-requests", "MARROW_CA_MAX_CONCURRENT_REQUESTS", parse::COUNT),
        /// `/metrics` (Prometheus): issued and refused requests, the CA's expiry.
        metrics_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 15014)),
            ("metrics-addr", "MARROW_CA_METRICS_ADDR", parse::ADDR),
        /// `/healthz/ready`: 200 once a CA is loaded.
        readiness_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 15021)),
            ("readiness-addr", "MARROW_CA_READINESS_ADDR", parse::ADDR),
    }
}

impl ServeConfig {
    /// Checks the values can work; a bad one is named with what is expected.
    ///
    /// # Errors
    /// As [`ServeConfig::settings`].
    pub fn validate(&self) -> Result<(), CaError> {
        self.settings().map(drop)
    }

    /// The settings of the signing service, validated.
    ///
    /// # Errors
    /// A setting that cannot work, named with its value and what is expected.
    pub fn settings(&self) -> Result<CaSettings, CaError> {
        let setting =
            |setting: &'static str, value: &str, expected: &'static str| CaError::Setting {
                setting,
                value: value.to_owned(),
                expected,
            };
        let trust_domain = TrustDomain::new(&self.trust_domain).map_err(|_| {
            setting(
                "--trust-domain",
                &self.trust_domain,
                "a SPIFFE trust domain (a-z 0-9 . - _)",
            )
        })?;
        let node_proxy_accounts = self
            .node_proxy_accounts
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                ServiceAccount::parse(a.trim())
                    .ok_or_else(|| setting("--node-proxy-accounts", a, "namespace/serviceaccount"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let settings = CaSettings {
            trust_domain,
            node_proxy_accounts,
            audience: self.audience.clone(),
            serving_names: self
                .serving_names
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            max_cert_ttl: self.max_cert_ttl,
            max_concurrent_requests: self.max_concurrent_requests,
            ..CaSettings::default()
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// What the CA signs for whom; [`Default`] is the flags' defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaSettings {
    /// The trust domain of every identity issued.
    pub trust_domain: TrustDomain,
    /// Accounts that may obtain identities of pods on their own node.
    pub node_proxy_accounts: Vec<ServiceAccount>,
    /// The audience callers' tokens must carry.
    pub audience: String,
    /// DNS names of the CA's own serving certificate.
    pub serving_names: Vec<String>,
    /// Lifetime when the request asks for none.
    pub default_cert_ttl: Duration,
    /// Longest lifetime issued.
    pub max_cert_ttl: Duration,
    /// How far before "now" a certificate starts (peers with slow clocks); at most a tenth of
    /// its lifetime.
    pub backdate: Duration,
    /// How often the CA files are checked for a change.
    pub reload_interval: Duration,
    /// Requests checked at once; more are refused as busy (each costs a TokenReview and two
    /// pod reads, so a flood of calls must not become a flood on the API server).
    pub max_concurrent_requests: usize,
    /// How long an authenticated TokenReview answer is reused for the same token (zero:
    /// never); the pod lookups are done for every request regardless.
    pub token_review_ttl: Duration,
}

impl Default for CaSettings {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::default(),
            node_proxy_accounts: ServiceAccount::parse(DEFAULT_NODE_PROXY_ACCOUNTS)
                .into_iter()
                .collect(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            serving_names: DEFAULT_SERVING_NAMES
                .split(',')
                .map(str::to_owned)
                .collect(),
            default_cert_ttl: Duration::from_secs(24 * 60 * 60),
            max_cert_ttl: Duration::from_secs(24 * 60 * 60),
            backdate: Duration::from_secs(5 * 60),
            reload_interval: Duration::from_secs(5),
            max_concurrent_requests: 64,
            token_review_ttl: Duration::from_secs(60),
        }
    }
}

impl CaSettings {
    /// Checks the values can work; a bad one is named with what is expected.
    pub fn validate(&self) -> Result<(), CaError> {
        let bad = |setting: &'static str, value: String, expected: &'static str| {
            Err(CaError::Setting {
                setting,
                value,
                expected,
            })
        };
        if self.audience.is_empty() {
            return bad("--audience", String::new(), "a non-empty audience");
        }
        if self.serving_names.is_empty() {
            return bad("--serving-names", String::new(), "at least one DNS name");
        }
        let year = Duration::from_secs(366 * 24 * 60 * 60);
        if self.max_cert_ttl < Duration::from_secs(60) || self.max_cert_ttl > year {
            return bad(
                "--max-cert-ttl-secs",
                self.max_cert_ttl.as_secs().to_string(),
                "between 60 seconds and one year",
            );
        }
        if self.default_cert_ttl.is_zero() {
            return bad(
                "default certificate lifetime",
                "0".to_owned(),
                "a positive duration",
            );
        }
        if self.max_concurrent_requests == 0 || self.max_concurrent_requests > 100_000 {
            return bad(
                "--max-concurrent-requests",
                self.max_concurrent_requests.to_string(),
                "1..=100000",
            );
        }
        if self.reload_interval.is_zero() {
            return bad("reload interval", "0".to_owned(), "a positive duration");
        }
        Ok(())
    }
}

/// Why a call or the service failed; each maps to one gRPC code and one `reason` label.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The call carries no `authorization: Bearer` token.
    #[error("no bearer token in the authorization header")]
    MissingToken,
    /// The API server does not authenticate the token.
    #[error("the token is not authenticated: {reason}")]
    TokenRejected {
        /// The API server's reason (never the token).
        reason: String,
    },
    /// The token is not for this CA's audience.
    #[error("the token's audiences {audiences:?} do not include {expected:?}")]
    WrongAudience {
        /// The audiences the review reports.
        audiences: Vec<String>,
        /// This CA's audience.
        expected: String,
    },
    /// The token is not a ServiceAccount's.
    #[error("the caller {username:?} is not a service account")]
    NotServiceAccount {
        /// The user the token authenticates.
        username: String,
    },
    /// The request's impersonated identity is not a SPIFFE ID of a ServiceAccount.
    #[error("the requested identity {value:?} is invalid: {reason}")]
    BadIdentity {
        /// What was asked for.
        value: String,
        /// Why it is refused.
        reason: String,
    },
    /// The requested identity is outside the CA's trust domain.
    #[error("{identity} is outside trust domain {trust_domain}")]
    WrongTrustDomain {
        /// What was asked for.
        identity: String,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// The caller asks for another identity and is not a node proxy.
    #[error("{caller} may only obtain its own identity, not {identity}")]
    NotNodeProxy {
        /// The caller's account.
        caller: String,
        /// What was asked for.
        identity: SpiffeId,
    },
    /// A node proxy's token names no pod, so its node is unknown.
    #[error("token is not bound to a pod, cannot tell the caller's node")]
    NotPodBound,
    /// The pod the token is bound to is gone (or replaced).
    #[error("the caller's pod {namespace}/{pod} {reason}")]
    CallerPodGone {
        /// The pod's namespace.
        namespace: String,
        /// The pod's name.
        pod: String,
        /// Absent, or replaced by a pod with another uid, or not scheduled.
        reason: &'static str,
    },
    /// The token's node claim and the pod's node disagree.
    #[error("the token names node {token_node}, its pod runs on {pod_node}")]
    NodeMismatch {
        /// `authentication.kubernetes.io/node-name` of the token.
        token_node: String,
        /// `spec.nodeName` of the pod.
        pod_node: String,
    },
    /// No live pod of the requested identity is on the caller's node.
    #[error("no running pod with identity {identity} on node {node}")]
    NotOnNode {
        /// What was asked for.
        identity: SpiffeId,
        /// The caller's node.
        node: String,
    },
    /// Too many requests are being checked already (each costs API server calls): the caller
    /// retries later, with backoff.
    #[error("busy: {limit} requests are being checked already, retry later")]
    Busy {
        /// `--max-concurrent-requests`.
        limit: usize,
    },
    /// A call to the Kubernetes API failed (not a denial: the caller may retry).
    #[error("kubernetes api: {call} failed: {source}")]
    KubeApi {
        /// Which call.
        call: &'static str,
        /// Cause.
        source: kube::Error,
    },
    /// The CSR is not a parseable PEM/DER certification request.
    #[error("the CSR is unreadable: {reason}")]
    CsrUnreadable {
        /// What is wrong.
        reason: String,
    },
    /// The CSR's self-signature does not verify.
    #[error("the CSR's signature does not verify: {reason}")]
    CsrSignature {
        /// What the verifier said.
        reason: String,
    },
    /// The CSR's key is of a type or size this CA does not certify.
    #[error("the CSR's key is refused: {reason}")]
    CsrKey {
        /// Which type or size, and what is accepted.
        reason: String,
    },
    /// The CSR's names are not exactly the requested SPIFFE ID.
    #[error("the CSR's names are refused: {reason}")]
    CsrNames {
        /// Which name is wrong or missing.
        reason: String,
    },
    /// The CSR asks for CA powers.
    #[error("the CSR asks for a CA certificate: {reason}")]
    CsrCaRequested {
        /// Which extension asks for it.
        reason: &'static str,
    },
    /// The CA's certificate expires before a certificate could start.
    #[error("the CA certificate expired at {not_after}")]
    CaExpired {
        /// Its notAfter.
        not_after: String,
    },
    /// Building or signing a certificate failed.
    #[error("signing a certificate for {subject}: {source}")]
    Signing {
        /// The SPIFFE ID, or the serving names.
        subject: String,
        /// Cause.
        source: rcgen::Error,
    },
    /// The CA's files cannot be used.
    #[error("CA file {path}: {reason}")]
    CaFiles {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A setting has a value that cannot work.
    #[error("setting {setting} = {value:?}: expected {expected}")]
    Setting {
        /// The flag or setting.
        setting: &'static str,
        /// The offending value.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// No Kubernetes client could be built (no in-cluster account, no usable KUBECONFIG).
    #[error("kubernetes client: {0}")]
    KubeClient(#[source] kube::Error),
    /// The listener could not be bound or read.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The TLS settings or serving certificate are unusable.
    #[error("tls: {0}")]
    Tls(#[source] rustls::Error),
    /// The gRPC server stopped with an error.
    #[error("serving: {0}")]
    Serve(#[source] tonic::transport::Error),
}

impl CaError {
    /// The gRPC code a caller gets.
    pub fn code(&self) -> Code {
        match self {
            CaError::MissingToken
            | CaError::TokenRejected { .. }
            | CaError::WrongAudience { .. }
            | CaError::NotServiceAccount { .. } => Code::Unauthenticated,
            CaError::WrongTrustDomain { .. }
            | CaError::NotNodeProxy { .. }
            | CaError::NotPodBound
            | CaError::CallerPodGone { .. }
            | CaError::NodeMismatch { .. }
            | CaError::NotOnNode { .. } => Code::PermissionDenied,
            CaError::BadIdentity { .. }
            | CaError::CsrUnreadable { .. }
            | CaError::CsrSignature { .. }
            | CaError::CsrKey { .. }
            | CaError::CsrNames { .. }
            | CaError::CsrCaRequested { .. } => Code::InvalidArgument,
            CaError::KubeApi { .. } | CaError::CaExpired { .. } => Code::Unavailable,
            CaError::Busy { .. } => Code::ResourceExhausted,
            CaError::Signing { .. }
            | CaError::CaFiles { .. }
            | CaError::Setting { .. }
            | CaError::KubeClient(_)
            | CaError::Listen { .. }
            | CaError::Tls(_)
            | CaError::Serve(_) => Code::Internal,
        }
    }

    /// A fixed label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            CaError::MissingToken => "missing_token",
            CaError::TokenRejected { .. } => "token_rejected",
            CaError::WrongAudience { .. } => "wrong_audience",
            CaError::NotServiceAccount { .. } => "not_service_account",
            CaError::BadIdentity { .. } => "bad_identity",
            CaError::WrongTrustDomain { .. } => "wrong_trust_domain",
            CaError::NotNodeProxy { .. } => "not_node_proxy",
            CaError::NotPodBound => "not_pod_bound",
            CaError::CallerPodGone { .. } => "caller_pod_gone",
            CaError::NodeMismatch { .. } => "node_mismatch",
            CaError::NotOnNode { .. } => "not_on_node",
            CaError::KubeApi { .. } => "kube_api",
            CaError::Busy { .. } => "busy",
            CaError::CsrUnreadable { .. } => "csr_unreadable",
            CaError::CsrSignature { .. } => "csr_signature",
            CaError::CsrKey { .. } => "csr_key",
            CaError::CsrNames { .. } => "csr_names",
            CaError::CsrCaRequested { .. } => "csr_ca_requested",
            CaError::CaExpired { .. } => "ca_expired",
            CaError::Signing { .. } => "signing",
            CaError::CaFiles { .. } => "ca_files",
            CaError::Setting { .. } => "setting",
            CaError::KubeClient(_) => "kube_client",
            CaError::Listen { .. } => "listen",
            CaError::Tls(_) => "tls",
            CaError::Serve(_) => "serve",
        }
    }
}

impl From<CaError> for tonic::Status {
    fn from(e: CaError) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

/// `node-proxy ca serve`: the settings from `config`, a client for the cluster (in-cluster
/// account, or `KUBECONFIG`), [`serve`] on `--listen` until SIGTERM or SIGINT.
///
/// # Errors
/// As [`serve`], and when the flags, the client or the listener are unusable.
pub async fn run(config: ServeConfig) -> Result<(), CaError> {
    let settings = config.settings()?;
    let client = kube::Client::try_default()
        .await
        .map_err(CaError::KubeClient)?;
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| CaError::Listen {
                addr: addr.to_string(),
                source,
            })
    };
    let listener = bind(config.listen).await?;
    let telemetry = Arc::new(CaTelemetry::default());
    let mut registry = prometheus_client::registry::Registry::default();
    telemetry.register(&mut registry);
    let metrics = tokio::spawn(marrow_mesh::http::serve_metrics(
        bind(config.metrics_addr).await?,
        Arc::new(registry),
    ));
    let readiness = tokio::spawn(marrow_mesh::http::serve_readiness(
        bind(config.readiness_addr).await?,
        telemetry.readiness.clone(),
    ));
    tracing::info!(listen = %config.listen, ca_dir = %config.ca_dir.display(),
        trust_domain = %settings.trust_domain, "ca serving");
    let served = serve(
        client,
        CaFiles::in_dir(&config.ca_dir),
        settings,
        listener,
        telemetry.clone(),
        async {
            marrow_mesh::drain::shutdown_signal().await;
            telemetry.readiness.set(false);
            tracing::info!("ca stopping");
        },
    )
    .await;
    metrics.abort();
    readiness.abort();
    served
}
