//! The gRPC service: TLS with the CA's own serving certificate (swapped in place when the CA
//! files change or it nears expiry, so open connections are never cut), one
//! `CreateCertificate` handler that authorizes, checks the CSR and signs, and the loop that
//! watches the CA files.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::Server;
use tracing::{debug, info, warn};

use super::authorize::{self, Grant, Seen};
use super::signer::{self, Signer};
use super::{CaError, CaSettings, CaTelemetry, csr};
use marrow_mesh::identity::CaFiles;
use marrow_mesh::identity::istio_ca::IMPERSONATED_IDENTITY;
use marrow_mesh::identity::istio_ca::proto::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use marrow_mesh::identity::istio_ca::proto::{IstioCertificateRequest, IstioCertificateResponse};

/// Bound on a client's TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; more connections wait in the listen backlog (a flood of
/// stalled handshakes costs this many tasks, not memory without bound).
const MAX_HANDSHAKES: usize = 256;

/// What the handlers and the reload loop share.
struct Shared {
    /// The CA that signs now.
    signer: ArcSwap<Signer>,
    /// The serving certificate presented now.
    serving: ArcSwap<CertifiedKey>,
    /// Counters and readiness.
    telemetry: Arc<CaTelemetry>,
}

/// Presents the current serving certificate to every client.
#[derive(Debug)]
struct ServingCert(Arc<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.serving.load_full())
    }
}

/// Aborts a task when dropped: the CA's helpers end with [`serve`].
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves the CA on `listener` until `shutdown` completes: loads the CA from `files` (and
/// reloads it when they change), issues itself a serving certificate for
/// [`CaSettings::serving_names`], and answers `CreateCertificate` checking callers with
/// `client`'s API server.
///
/// # Errors
/// When the CA files or the settings are unusable at start, or the server fails.
pub async fn serve(
    client: kube::Client,
    files: CaFiles,
    settings: CaSettings,
    listener: TcpListener,
    telemetry: Arc<CaTelemetry>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CaError> {
    settings.validate()?;
    let now = SystemTime::now();
    let (cert, key) = signer::read(&files)?;
    let signer = Signer::from_bytes(&files, cert, key, now)?;
    let serving = signer.serving(&settings.serving_names, now)?;
    info!(
        ca_not_after = %time::OffsetDateTime::from(signer.not_after()),
        serving_names = %settings.serving_names.join(","),
        "ca loaded"
    );
    telemetry.loaded(signer.not_after());
    let shared = Arc::new(Shared {
        signer: ArcSwap::from_pointee(signer),
        serving: ArcSwap::new(serving.key),
        telemetry,
    });
    let _reload = AbortOnDrop(tokio::spawn(reload(
        files,
        settings.clone(),
        shared.clone(),
        serving.renew_at,
    )));

    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(CaError::Tls)?
    .with_no_client_auth()
    .with_cert_resolver(Arc::new(ServingCert(shared.clone())));
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let (connections, incoming) = tokio::sync::mpsc::channel(64);
    let _accept = AbortOnDrop(tokio::spawn(accept(
        listener,
        TlsAcceptor::from(Arc::new(tls)),
        connections,
    )));
    let mut incoming = incoming;
    let incoming = futures::stream::poll_fn(move |cx| incoming.poll_recv(cx));

    let service = CaService {
        client,
        in_flight: tokio::sync::Semaphore::new(settings.max_concurrent_requests),
        reviews: authorize::ReviewCache::new(settings.token_review_ttl),
        settings: Arc::new(settings),
        shared,
    };
    Server::builder()
        .add_service(IstioCertificateServiceServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(CaError::Serve)
}

/// Accepts connections and hands each to the server once its TLS handshake completes.
async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    connections: tokio::sync::mpsc::Sender<Result<TlsStream<TcpStream>, std::io::Error>>,
) {
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let Ok(permit) = handshakes.clone().acquire_owned().await else {
            return; // Never closed.
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or similar: wait rather than spin.
                warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // gRPC answers in several small writes (headers, message, trailers): without
        // TCP_NODELAY, Nagle's algorithm holds the last one for the client's delayed ACK (40 ms).
        if let Err(e) = stream.set_nodelay(true) {
            debug!(peer = %peer, error = %e, "setting TCP_NODELAY failed");
        }
        let acceptor = acceptor.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await;
            drop(permit);
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = connections.send(Ok(tls)).await;
                }
                Ok(Err(e)) => debug!(peer = %peer, error = %e, "tls handshake failed"),
                Err(_) => debug!(peer = %peer, "tls handshake timed out"),
            }
        });
    }
}

/// Checks the CA files every `settings.reload_interval`: a changed valid pair replaces the
/// signer and the serving certificate; a changed invalid one is logged once and ignored. The
/// serving certificate is also reissued at half its life.
async fn reload(
    files: CaFiles,
    settings: CaSettings,
    shared: Arc<Shared>,
    mut renew_serving_at: SystemTime,
) {
    let mut refused: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut last_error: Option<String> = None;
    let mut ticks = tokio::time::interval(settings.reload_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = SystemTime::now();
        let (cert, key) = match signer::read(&files) {
            Ok(contents) => contents,
            Err(e) => {
                let message = e.to_string();
                if last_error.as_deref() != Some(message.as_str()) {
                    warn!(error = %message, "ca files unreadable; the current ca keeps signing");
                    last_error = Some(message);
                }
                continue;
            }
        };
        last_error = None;
        let changed = !shared.signer.load().is_from(&cert, &key)
            && refused.as_ref() != Some(&(cert.clone(), key.clone()));
        if changed {
            let loaded =
                Signer::from_bytes(&files, cert.clone(), key.clone(), now).and_then(|signer| {
                    let serving = signer.serving(&settings.serving_names, now)?;
                    Ok((signer, serving))
                });
            match loaded {
                Ok((signer, serving)) => {
                    info!(
                        ca_not_after = %time::OffsetDateTime::from(signer.not_after()),
                        "ca reloaded"
                    );
                    shared.telemetry.loaded(signer.not_after());
                    shared.telemetry.reloads.inc();
                    shared.signer.store(Arc::new(signer));
                    shared.serving.store(serving.key);
                    renew_serving_at = serving.renew_at;
                    refused = None;
                }
                Err(e) => {
                    warn!(error = %e, reason = e.reason(),
                        "new ca files refused; the current ca keeps signing");
                    refused = Some((cert, key));
                }
            }
        }
        if now >= renew_serving_at {
            match shared.signer.load().serving(&settings.serving_names, now) {
                Ok(serving) => {
                    shared.serving.store(serving.key);
                    renew_serving_at = serving.renew_at;
                    info!("serving certificate renewed");
                }
                Err(e) => warn!(error = %e, "renewing the serving certificate failed"),
            }
        }
    }
}

/// `IstioCertificateService` over a kube client and the current CA.
struct CaService {
    client: kube::Client,
    /// Permits for requests being checked (`max_concurrent_requests`).
    in_flight: tokio::sync::Semaphore,
    /// Recent authentications.
    reviews: authorize::ReviewCache,
    settings: Arc<CaSettings>,
    shared: Arc<Shared>,
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
    ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
        let mut seen = Seen::default();
        let result = self.create(request, &mut seen).await;
        let caller = seen.caller.as_ref().map(tracing::field::display);
        let identity = seen.identity.as_ref().map(tracing::field::display);
        let node = seen.node.as_deref();
        match result {
            Ok((cert_chain, not_after)) => {
                self.shared.telemetry.issued.inc();
                info!(caller, node, identity, outcome = "issued",
                    not_after = %time::OffsetDateTime::from(not_after), "certificate issued");
                Ok(tonic::Response::new(IstioCertificateResponse {
                    cert_chain,
                }))
            }
            Err(e) => {
                self.shared.telemetry.refused(e.reason());
                warn!(caller, node, identity, outcome = "refused", reason = e.reason(),
                    error = %e, "certificate refused");
                Err(e.into())
            }
        }
    }
}

impl CaService {
    /// Authorizes, checks the CSR, signs: the response chain and the leaf's notAfter.
    async fn create(
        &self,
        request: tonic::Request<IstioCertificateRequest>,
        seen: &mut Seen,
    ) -> Result<(Vec<String>, SystemTime), CaError> {
        let _permit = self.in_flight.try_acquire().map_err(|_| CaError::Busy {
            limit: self.settings.max_concurrent_requests,
        })?;
        let token = bearer(request.metadata())?;
        let request = request.into_inner();
        let impersonated = impersonated(&request)?;
        let Grant { identity, .. } = authorize::authorize(
            &self.client,
            &self.settings,
            &self.reviews,
            &token,
            impersonated.as_deref(),
            seen,
        )
        .await?;
        let checked = csr::check(&request.csr, &identity)?;
        self.shared.signer.load().issue(
            &checked,
            &identity,
            request.validity_duration,
            &self.settings,
            SystemTime::now(),
        )
    }
}

/// The bearer token of `authorization`.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<String, CaError> {
    let value = metadata
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or(CaError::MissingToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(CaError::MissingToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(CaError::MissingToken);
    }
    Ok(token.to_owned())
}

/// The request's `ImpersonatedIdentity`, when present.
fn impersonated(request: &IstioCertificateRequest) -> Result<Option<String>, CaError> {
    let Some(value) = request
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
    else {
        return Ok(None);
    };
    match &value.kind {
        Some(prost_types::value::Kind::StringValue(s)) => Ok(Some(s.clone())),
        other => Err(CaError::BadIdentity {
            value: format!("{other:?}"),
            reason: format!("{IMPERSONATED_IDENTITY} must be a string"),
        }),
    }
}
