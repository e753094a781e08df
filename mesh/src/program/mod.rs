//! The start-up every program over this core shares (the node proxy, the waypoint): the log
//! output, the listeners named by their flags, the certificate source (a local CA, or a CA
//! speaking Istio's protocol with the roots it follows) behind a [`CertificateManager`], and the
//! cluster state's source (a file or the API server) publishing into a [`StateStore`].
//!
//! Where the programs differ on purpose, the difference is a parameter, not a copy: the node
//! proxy counts certificate failures (`on_failure`) and sends the CA extra headers, and only it
//! filters the API server's pods by node. The settings these read are declared once, in
//! [`program_settings!`](crate::program_settings). Every error names the setting it comes from.

mod log_writer;
mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::http::Readiness;
use crate::identity::{
    self, CaFiles, CertificateManager, FailureHook, IdentityError, LocalCa, LocalCaOptions,
    ManagerConfig, TrustBundle, TrustDomain,
};
use crate::state::file::LocalFileSource;
use crate::state::{SourceError, SourceWatch, StateSource, StateStore};

/// What the macro's expansion names, re-exported so a program needs no path of its own.
#[doc(hidden)]
pub mod __private {
    pub use marrow_settings::{parse, settings};
}

/// Why a program could not start one of the shared parts; each names its setting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener cannot be bound.
    #[error("binding {setting} {addr}")]
    Bind {
        /// The flag that names the address.
        setting: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The certificate source named by `setting` cannot be set up.
    #[error("{setting}")]
    CertificateSource {
        /// The flag (`--ca-dir`, `--ca-roots`, `--ca-address`).
        setting: &'static str,
        /// Cause.
        source: IdentityError,
    },
    /// The state source (named by its setting) cannot publish a first version.
    #[error("{setting}")]
    StateSource {
        /// The setting that chose it: `--state-file PATH`, `--kube`.
        setting: String,
        /// Cause.
        source: SourceError,
    },
    /// No Kubernetes configuration was found for `--kube`.
    #[error("--kube: no in-cluster service account and no usable KUBECONFIG")]
    KubeConfig(#[source] kube::config::InferConfigError),
    /// The Kubernetes client cannot be built.
    #[error("--kube: building the client")]
    KubeClient(#[source] kube::Error),
}

/// The log filter installed by [`init_logging`]; replacing it changes what is logged.
pub type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Installs the global log subscriber: stderr, JSON lines with `json`, through a filter from
/// `RUST_LOG` (default `info`). Returns the filter, for an admin API that changes the level at
/// run time. Call once, first thing.
///
/// Lines are written by a thread of their own, in batches ([`log_writer`]): a worker thread
/// serving connections only formats its access-log line. Colours only on a terminal: escape
/// codes in a log file or a collector cost bytes and formatting on every line.
pub fn init_logging(json: bool) -> LogFilter {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::{Layer, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let format = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(log_writer::QueuedStderr::start());
    let format = if json {
        format.json().boxed()
    } else {
        format.boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
    handle
}

/// Binds a listener, naming its flag on failure.
///
/// # Errors
/// [`StartError::Bind`].
pub async fn bind(
    setting: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, StartError> {
    crate::http::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            setting,
            addr,
            source,
        })
}

/// The settings of the certificate source (`--ca-*`, `--cert-ttl-secs`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaSettings {
    /// A local CA's directory (ca-cert.pem, ca-key.pem).
    pub ca_dir: Option<PathBuf>,
    /// A CA speaking Istio's protocol, `https://host:port`.
    pub ca_address: Option<String>,
    /// With `ca_address`: the roots its answers and the peers chain to (PEM).
    pub ca_roots: Option<PathBuf>,
    /// With `ca_address`: the caller's ServiceAccount token.
    pub ca_token_file: PathBuf,
    /// With `ca_address`: the name the CA's certificate must carry (its host when unset).
    pub ca_server_name: Option<String>,
    /// How often `ca_roots` is re-read.
    pub ca_roots_poll: Duration,
    /// With `ca_address`: extra headers on every call (the node proxy's `--ca-header`).
    pub ca_headers: Vec<(String, String)>,
    /// The lifetime of certificates asked for (a remote CA may sign shorter).
    pub cert_ttl: Duration,
}

/// The program's certificates and the CA they come from.
pub struct Certificates {
    /// Fetches, caches and renews them (following the remote CA's roots, when there is one).
    pub manager: Arc<CertificateManager>,
    /// The CA, for logs: its directory or its address.
    pub ca: String,
}

/// The certificate manager over the local CA (`ca_dir`) or the Istio-protocol one
/// (`ca_address` with `ca_roots`, whose file is then followed); `None` without either.
/// `on_failure` hears of every failed fetch or renewal.
///
/// # Errors
/// [`StartError::CertificateSource`] naming `--ca-dir`, `--ca-roots` or `--ca-address`.
pub fn certificates(
    settings: &CaSettings,
    trust_domain: &TrustDomain,
    on_failure: Option<FailureHook>,
) -> Result<Option<Certificates>, StartError> {
    let named =
        |setting: &'static str| move |source| StartError::CertificateSource { setting, source };
    let (provider, bundle, ca): (Arc<dyn identity::CertificateProvider>, _, _) =
        if let Some(ca_dir) = &settings.ca_dir {
            // Backdating guards against peers with slow clocks, but must stay small against
            // the lifetime, or half-life renewal would come due at once.
            let options = LocalCaOptions {
                validity: settings.cert_ttl,
                backdate: LocalCaOptions::default()
                    .backdate
                    .min(settings.cert_ttl / 10),
            };
            let ca = LocalCa::load(&CaFiles::in_dir(ca_dir), trust_domain.clone(), options)
                .map_err(named("--ca-dir"))?;
            (Arc::new(ca), None, ca_dir.display().to_string())
        } else if let (Some(address), Some(roots_file)) = (&settings.ca_address, &settings.ca_roots)
        {
            let bundle =
                TrustBundle::new(identity::read_roots(roots_file).map_err(named("--ca-roots"))?);
            // The caller asks with its own token; the CA decides which identities it may have
            // (marrow-ca's authorize.rs, istiod alike).
            let ca = identity::IstioCa::new(
                identity::IstioCaConfig {
                    address: address.clone(),
                    server_name: settings.ca_server_name.clone(),
                    headers: settings.ca_headers.clone(),
                    token_file: settings.ca_token_file.clone(),
                    validity: settings.cert_ttl,
                    timeout: Duration::from_secs(10),
                },
                bundle.clone(),
            )
            .map_err(named("--ca-address"))?;
            tokio::spawn(identity::watch_file(
                roots_file.clone(),
                bundle.clone(),
                settings.ca_roots_poll,
            ));
            (Arc::new(ca), Some(bundle), address.clone())
        } else {
            return Ok(None);
        };
    let mut manager = CertificateManager::new(provider, ManagerConfig::default());
    if let Some(bundle) = bundle {
        manager = manager.with_trust_bundle(bundle);
    }
    if let Some(hook) = on_failure {
        manager = manager.with_failure_hook(hook);
    }
    Ok(Some(Certificates {
        manager: Arc::new(manager),
        ca,
    }))
}

/// The settings of the cluster state's source (`--state-file`, `--state-poll-ms`, `--kube`,
/// `--root-namespace`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateSettings {
    /// A file of Kubernetes YAML; the API server when unset.
    pub state_file: Option<PathBuf>,
    /// How often the file is checked for a change.
    pub state_poll: Duration,
    /// Istio's root namespace (mesh-wide policies).
    pub root_namespace: String,
    /// From the API server, only this node's pods in full (the node proxy); every pod when
    /// unset (the waypoint serves pods on every node).
    pub node_name: Option<String>,
}

/// The running state: the store the data path reads, and the source feeding it (it stops when
/// the last clone of the watch is dropped).
pub type State = (Arc<StateStore>, Arc<dyn SourceWatch>);

/// Starts the state source into a new store and waits for its first version (the API server:
/// every kind listed once, so nothing serves a half-known cluster); `readiness` then carries
/// the source's status (e.g. failing watchers).
///
/// # Errors
/// [`StartError::StateSource`] naming the source, or the Kubernetes client's errors.
pub async fn start_state(
    settings: &StateSettings,
    readiness: &Readiness,
) -> Result<State, StartError> {
    let state = Arc::new(StateStore::new());
    let source: Box<dyn StateSource> = match &settings.state_file {
        Some(path) => Box::new(
            LocalFileSource::new(path.clone())
                .with_interval(settings.state_poll)
                .with_root_namespace(settings.root_namespace.clone()),
        ),
        None => Box::new(crate::apiserver::KubeSource::new(
            kube_client().await?,
            settings.node_name.clone(),
            &settings.root_namespace,
        )),
    };
    let setting = source.describe();
    let watch: Arc<dyn SourceWatch> = Arc::from(
        source
            .start(state.clone())
            .await
            .map_err(|source| StartError::StateSource { setting, source })?,
    );
    // Readiness must not keep the source running, which stops when the caller drops the watch.
    let weak = Arc::downgrade(&watch);
    readiness.add_detail(Box::new(move || weak.upgrade().and_then(|w| w.detail())));
    Ok((state, watch))
}

/// A client for the API server (in-cluster account, or `KUBECONFIG`) whose calls are not
/// retried: the watchers retry with their own backoff and must see failures to report them.
async fn kube_client() -> Result<kube::Client, StartError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(StartError::KubeConfig)?;
    config.default_retry = false;
    kube::Client::try_from(config).map_err(StartError::KubeClient)
}

#[cfg(test)]
mod tests;
