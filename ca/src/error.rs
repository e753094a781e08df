//! What goes wrong in the CA, each error with its gRPC code and metric reason.

use std::path::PathBuf;

use marrow_mesh::identity::{SpiffeId, TrustDomain};
use tonic::Code;

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
