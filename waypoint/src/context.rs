//! What every tunnel of the waypoint shares: the state, its identity and certificates, the
//! limits on clients and the upstream side.

use std::sync::{Arc, Mutex, PoisonError};

use marrow_mesh::identity::{
    CertificateManager, IdentityError, SpiffeId, TrustDomain, WorkloadCertificate,
};
use marrow_mesh::state::StateStore;
use marrow_mesh::tls::{self, TlsError};
use rustls::ServerConfig;

use crate::config::Limits;
pub use crate::gateway::Gateway;
use crate::telemetry::Telemetry;
use crate::upstream::{DialMap, Upstreams};

/// The waypoint's shared parts.
pub struct Context {
    /// The cluster state.
    pub state: Arc<StateStore>,
    /// The waypoint's certificates (its one identity).
    pub certs: Arc<CertificateManager>,
    /// `spiffe://<td>/ns/<gateway ns>/sa/<sa>`.
    pub identity: SpiffeId,
    /// The waypoint Gateway this proxy serves, for the policies bound to it.
    pub gateway: Gateway,
    /// The mesh's trust domain: clients must be of it.
    pub trust_domain: TrustDomain,
    /// Istio's CLUSTER_ID, for baggage the waypoint fills in.
    pub telemetry: Telemetry,
    /// Bounds on clients.
    pub limits: Limits,
    /// Endpoints, balancing and the HBONE pool.
    pub upstreams: Upstreams,
    /// The TLS server configuration of the current certificate, rebuilt after a renewal.
    server_tls: Mutex<Option<(Arc<WorkloadCertificate>, Arc<ServerConfig>)>>,
}

/// Why the waypoint cannot serve TLS right now.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// No certificate for its identity.
    #[error("the waypoint's certificate: {0}")]
    Certificate(#[from] IdentityError),
    /// The certificate does not make a server configuration.
    #[error("the waypoint's tls configuration: {0}")]
    Config(#[from] TlsError),
}

impl Context {
    /// The shared parts; `dial_map` as [`Upstreams::new`].
    pub fn new(
        state: Arc<StateStore>,
        certs: Arc<CertificateManager>,
        (gateway, identity): (Gateway, SpiffeId),
        trust_domain: TrustDomain,
        telemetry: Telemetry,
        limits: Limits,
        dial_map: Option<DialMap>,
    ) -> Self {
        certs.allow(identity.clone());
        let upstreams = Upstreams::new(
            certs.clone(),
            identity.clone(),
            trust_domain.clone(),
            limits.connect_timeout,
            limits.handshake_timeout,
            dial_map,
            telemetry.resilience.clone(),
        );
        Self {
            state,
            certs,
            identity,
            gateway,
            trust_domain,
            telemetry,
            limits,
            upstreams,
            server_tls: Mutex::new(None),
        }
    }

    /// The TLS configuration of the HBONE listener, for the certificate in force.
    pub async fn server_tls(&self) -> Result<Arc<ServerConfig>, ServerTlsError> {
        let cert = self.certs.get(&self.identity).await?;
        let mut cached = self
            .server_tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((current, config)) = cached.as_ref()
            && Arc::ptr_eq(current, &cert)
        {
            return Ok(config.clone());
        }
        let config = tls::server_config(&cert, tls::KeyExchange::default())?;
        *cached = Some((cert, config.clone()));
        Ok(config)
    }
}

impl Context {
    /// Keeps the tracer on what Istio's Telemetry API in the state says for this waypoint
    /// (else the `--tracing-*` flags), and `marrow_config_refused` on the state's refused
    /// routes: once now, then at every state change, until the state store goes.
    pub async fn follow_telemetry_api(self: Arc<Self>) {
        let mut changes = self.state.subscribe();
        loop {
            let snap = self.state.snapshot();
            self.telemetry.refused.record(snap.traffic());
            self.telemetry
                .apply_telemetry_api(&snap, &self.gateway)
                .await;
            if changes.changed().await.is_err() {
                return;
            }
        }
    }
}
