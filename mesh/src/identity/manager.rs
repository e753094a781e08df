//! The certificate cache: one certificate per local identity, fetched on demand, renewed at
//! half-life in the background.
//!
//! Ownership: the [`CertificateManager`] owns one renewal task per identity in use; the task owns
//! the only sender of that identity's state, so callers read it without locks (a `watch`
//! channel). Invariants:
//! - only identities registered with [`CertificateManager::allow`] are ever fetched; the node
//!   proxy registers the identity of each pod on its node (once per pod: registrations are
//!   counted, and [`CertificateManager::forbid`] drops the identity with its last pod);
//! - at most one fetch per identity is in flight: concurrent callers wait on the same one;
//! - a certificate is replaced only by a newer one, or by the same one trusting a replaced
//!   trust bundle; a failed renewal keeps the current one serving until it expires (the failure
//!   is logged, counted and retried with backoff). Certificates are shared `Arc`s, so
//!   connections set up with the old one are never disturbed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::{
    CertificateProvider, HandedCertificate, IdentityError, Roots, SpiffeId, TrustBundle,
    WorkloadCertificate,
};

/// Shortest retry delay, whatever the configuration says: a failing provider is never spun on.
const MIN_BACKOFF: Duration = Duration::from_millis(10);

/// Timing of fetches and retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagerConfig {
    /// Bound on one fetch from the provider.
    pub fetch_timeout: Duration,
    /// First delay before retrying a failed fetch (at least 10 ms); doubled after each failure.
    pub initial_backoff: Duration,
    /// Longest delay between retries.
    pub max_backoff: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            fetch_timeout: Duration::from_secs(30),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What the admin endpoint and metrics show of one identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateStatus {
    /// The identity.
    pub id: SpiffeId,
    /// Start of the current certificate's validity; `None` before the first one.
    pub not_before: Option<SystemTime>,
    /// End of the current certificate's validity; `None` before the first one.
    pub not_after: Option<SystemTime>,
    /// Why the last fetch or renewal failed, if it did.
    pub last_error: Option<String>,
    /// Fetches failed since the last success (0 when the last one succeeded).
    pub consecutive_failures: u32,
}

/// The state of one identity, published by its renewal task.
#[derive(Clone)]
enum Slot {
    /// The first fetch is under way.
    Pending,
    /// A certificate (possibly expired, if renewals keep failing) and the last renewal error.
    Ready {
        cert: Arc<WorkloadCertificate>,
        renewal_error: Option<Arc<IdentityError>>,
        failures: u32,
    },
    /// No certificate: the last `failures` fetches failed, the last with this error.
    Failed(Arc<IdentityError>, u32),
}

/// A running renewal task and the ends callers use.
struct Worker {
    slot: watch::Receiver<Slot>,
    /// Wakes a task waiting out a backoff, when a caller needs a certificate now.
    retry_now: Arc<Notify>,
    task: AbortHandle,
}

/// One allowed identity.
struct Entry {
    /// Pods on this node with this identity.
    pods: usize,
    /// Started by the first `get`.
    worker: Option<Worker>,
}

/// Called with each failed fetch (for metrics).
pub type FailureHook = Arc<dyn Fn(&SpiffeId, &IdentityError) + Send + Sync>;

/// Caches, fetches and renews the certificates of this node's workloads.
pub struct CertificateManager {
    provider: Arc<dyn CertificateProvider>,
    config: ManagerConfig,
    /// When set, every certificate handed out trusts these roots (replaced in place when the
    /// bundle changes, without a new fetch).
    bundle: Option<TrustBundle>,
    on_failure: Option<FailureHook>,
    entries: Mutex<HashMap<SpiffeId, Entry>>,
    /// Certificates handed over by the previous proxy (an upgrade), used instead of a first
    /// fetch when their identity's renewal task starts.
    handed: Mutex<HashMap<SpiffeId, Arc<WorkloadCertificate>>>,
}

impl CertificateManager {
    /// A manager fetching from `provider`.
    pub fn new(provider: Arc<dyn CertificateProvider>, config: ManagerConfig) -> Self {
        Self {
            provider,
            config,
            bundle: None,
            on_failure: None,
            entries: Mutex::new(HashMap::new()),
            handed: Mutex::new(HashMap::new()),
        }
    }

    /// Makes every certificate trust `bundle`'s roots for peers, following its replacements
    /// (a root rotation) at once, not only at the next renewal.
    #[must_use]
    pub fn with_trust_bundle(mut self, bundle: TrustBundle) -> Self {
        self.bundle = Some(bundle);
        self
    }

    /// Calls `hook` with every failed fetch or renewal.
    #[must_use]
    pub fn with_failure_hook(mut self, hook: FailureHook) -> Self {
        self.on_failure = Some(hook);
        self
    }

    /// Registers one more pod on this node with identity `id`, so `get(id)` may fetch it.
    pub fn allow(&self, id: SpiffeId) {
        self.lock()
            .entry(id)
            .or_insert(Entry {
                pods: 0,
                worker: None,
            })
            .pods += 1;
    }

    /// Unregisters one pod with identity `id`; with the last one the certificate is dropped and
    /// its renewal stops (connections already using it are unaffected).
    pub fn forbid(&self, id: &SpiffeId) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(id) else {
            return;
        };
        entry.pods = entry.pods.saturating_sub(1);
        if entry.pods == 0
            && let Some(entry) = entries.remove(id)
            && let Some(worker) = entry.worker
        {
            worker.task.abort();
        }
    }

    /// Takes a certificate the previous proxy on this node held (an upgrade), so its identity
    /// needs no fetch until the certificate's half-life: an upgrade during a CA outage keeps
    /// mTLS working, and a rollout does not ask the CA again for every identity. The
    /// certificate must chain to the trust bundle and be valid now; it is handed out only once
    /// a pod with its identity is allowed, like a fetched one.
    ///
    /// # Errors
    /// Without a trust bundle (a local CA reissues instead), or when the parts do not make a
    /// valid certificate trusted by the bundle.
    pub fn adopt(&self, handed: &HandedCertificate) -> Result<SpiffeId, IdentityError> {
        let invalid = |reason: String| IdentityError::InvalidCertificate { reason };
        let (leaf, chain, key) = handed.parts()?;
        let Some(bundle) = &self.bundle else {
            return Err(invalid(
                "no trust bundle to check a handed-over certificate".into(),
            ));
        };
        let roots = bundle.current();
        let cert = WorkloadCertificate::new(leaf, chain, key, roots.certs().to_vec())?;
        roots
            .verify(cert.leaf(), cert.chain())
            .map_err(|e| invalid(format!("handed-over certificate for {}: {e}", cert.id())))?;
        let id = cert.id().clone();
        let mut handed = self.handed.lock().unwrap_or_else(PoisonError::into_inner);
        let newer = handed
            .get(&id)
            .is_none_or(|held| held.not_after() < cert.not_after());
        if newer {
            handed.insert(id.clone(), Arc::new(cert));
        }
        Ok(id)
    }

    /// The valid certificates held now (for handing over to a successor).
    pub fn current(&self) -> Vec<Arc<WorkloadCertificate>> {
        let now = SystemTime::now();
        self.lock()
            .values()
            .filter_map(|entry| match &*entry.worker.as_ref()?.slot.borrow() {
                Slot::Ready { cert, .. } if !cert.is_expired(now) => Some(cert.clone()),
                _ => None,
            })
            .collect()
    }

    /// Whether `id` is the identity of a pod on this node.
    pub fn is_allowed(&self, id: &SpiffeId) -> bool {
        self.lock().contains_key(id)
    }

    /// The current certificate of `id`, fetching it first if needed. Callers waiting at the same
    /// time share one fetch. Must run inside a tokio runtime (the renewal task is spawned on it).
    pub async fn get(&self, id: &SpiffeId) -> Result<Arc<WorkloadCertificate>, IdentityError> {
        // A renewal task that died (a panicking provider) is replaced once.
        for _ in 0..2 {
            let (mut slot, retry_now) = self.subscribe(id)?;
            let mut asked = false;
            loop {
                let current = slot.borrow_and_update().clone();
                match current {
                    Slot::Ready { cert, .. } if !cert.is_expired(SystemTime::now()) => {
                        return Ok(cert);
                    }
                    Slot::Pending => {}
                    Slot::Failed(source, _) if asked => {
                        return Err(IdentityError::Unavailable {
                            id: id.clone(),
                            source,
                        });
                    }
                    Slot::Ready { .. } if asked => {
                        return Err(IdentityError::Expired { id: id.clone() });
                    }
                    Slot::Failed(..) | Slot::Ready { .. } => {
                        // Do not wait out the backoff: try again now, and report that attempt.
                        retry_now.notify_one();
                        asked = true;
                    }
                }
                if slot.changed().await.is_err() {
                    break; // The task is gone: forbidden meanwhile, or it died.
                }
            }
        }
        if !self.is_allowed(id) {
            return Err(IdentityError::NotLocal { id: id.clone() });
        }
        Err(IdentityError::TaskStopped { id: id.clone() })
    }

    /// Every allowed identity with its certificate's validity and last error, sorted by identity.
    pub fn statuses(&self) -> Vec<CertificateStatus> {
        let mut statuses: Vec<CertificateStatus> = self
            .lock()
            .iter()
            .map(|(id, entry)| {
                let mut status = CertificateStatus {
                    id: id.clone(),
                    not_before: None,
                    not_after: None,
                    last_error: None,
                    consecutive_failures: 0,
                };
                if let Some(worker) = &entry.worker {
                    match &*worker.slot.borrow() {
                        Slot::Pending => {}
                        Slot::Ready {
                            cert,
                            renewal_error,
                            failures,
                        } => {
                            status.not_before = Some(cert.not_before());
                            status.not_after = Some(cert.not_after());
                            status.last_error = renewal_error.as_ref().map(|e| e.to_string());
                            status.consecutive_failures = *failures;
                        }
                        Slot::Failed(error, failures) => {
                            status.last_error = Some(error.to_string());
                            status.consecutive_failures = *failures;
                        }
                    }
                }
                status
            })
            .collect();
        statuses.sort_by(|a, b| a.id.cmp(&b.id));
        statuses
    }

    /// The state channel of `id`, starting (or restarting) its renewal task.
    fn subscribe(
        &self,
        id: &SpiffeId,
    ) -> Result<(watch::Receiver<Slot>, Arc<Notify>), IdentityError> {
        let mut entries = self.lock();
        let entry = entries
            .get_mut(id)
            .ok_or_else(|| IdentityError::NotLocal { id: id.clone() })?;
        let worker = match &mut entry.worker {
            Some(worker) if !worker.task.is_finished() => worker,
            stale => stale.insert(self.spawn_worker(id)),
        };
        Ok((worker.slot.clone(), worker.retry_now.clone()))
    }

    fn spawn_worker(&self, id: &SpiffeId) -> Worker {
        let (tx, slot) = watch::channel(Slot::Pending);
        let retry_now = Arc::new(Notify::new());
        let initial = self
            .handed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
            .filter(|cert| !cert.is_expired(SystemTime::now()));
        let task = tokio::spawn(renew(Renewal {
            initial,
            id: id.clone(),
            provider: self.provider.clone(),
            config: self.config,
            bundle: self.bundle.as_ref().map(TrustBundle::subscribe),
            on_failure: self.on_failure.clone(),
            tx,
            retry_now: retry_now.clone(),
        }));
        Worker {
            slot,
            retry_now,
            task: task.abort_handle(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SpiffeId, Entry>> {
        // No code panics while holding the lock; a poisoned map is still consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for CertificateManager {
    fn drop(&mut self) {
        for entry in self.lock().values() {
            if let Some(worker) = &entry.worker {
                worker.task.abort();
            }
        }
    }
}

impl std::fmt::Debug for CertificateManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateManager")
            .field("config", &self.config)
            .field("identities", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// What one identity's renewal task owns.
struct Renewal {
    /// A certificate to start with instead of a fetch (handed over by the previous proxy).
    initial: Option<Arc<WorkloadCertificate>>,
    id: SpiffeId,
    provider: Arc<dyn CertificateProvider>,
    config: ManagerConfig,
    bundle: Option<watch::Receiver<Arc<Roots>>>,
    on_failure: Option<FailureHook>,
    tx: watch::Sender<Slot>,
    retry_now: Arc<Notify>,
}

/// The renewal task of one identity: fetch, publish, sleep until half-life; on failure keep the
/// current certificate if still valid, publish the error otherwise, and retry with backoff (or
/// at once when a caller asks). A replaced trust bundle is put into the current certificate at
/// once.
async fn renew(mut task: Renewal) {
    let initial_backoff = task.config.initial_backoff.max(MIN_BACKOFF);
    let mut backoff = initial_backoff;
    let mut failures: u32 = 0;
    loop {
        let (result, how) = match task.initial.take() {
            Some(cert) => (Ok(cert), "certificate handed over"),
            None => (
                fetch(&*task.provider, &task.id, task.config.fetch_timeout)
                    .await
                    .map(|cert| Arc::new(task.with_current_roots(cert))),
                "certificate issued",
            ),
        };
        match result {
            Ok(mut cert) => {
                let renew_in = cert
                    .renew_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                info!(id = %task.id, not_after = ?cert.not_after(), ?renew_in, "{how}");
                failures = 0;
                task.tx.send_replace(Slot::Ready {
                    cert: cert.clone(),
                    renewal_error: None,
                    failures,
                });
                backoff = initial_backoff;
                let renew_at = tokio::time::Instant::now() + renew_in;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(renew_at) => break,
                        // The wall clock jumped past expiry (a suspended host) while this task
                        // slept on the monotonic clock; other wake-ups are stale requests.
                        () = task.retry_now.notified() => if cert.is_expired(SystemTime::now()) {
                            break;
                        },
                        Some(roots) = bundle_changed(&mut task.bundle) => {
                            info!(id = %task.id, roots = roots.certs().len(),
                                "trust bundle replaced in the current certificate");
                            cert = Arc::new(cert.with_roots(roots));
                            task.tx.send_replace(Slot::Ready {
                                cert: cert.clone(),
                                renewal_error: None,
                                failures,
                            });
                        }
                    }
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if let Some(hook) = &task.on_failure {
                    hook(&task.id, &error);
                }
                let error = Arc::new(error);
                let current = match &*task.tx.borrow() {
                    Slot::Ready { cert, .. } if !cert.is_expired(SystemTime::now()) => {
                        Some(cert.clone())
                    }
                    _ => None,
                };
                if let Some(cert) = current {
                    warn!(id = %task.id, %error, failures, retry_in = ?backoff,
                        not_after = ?cert.not_after(),
                        "certificate renewal failed, the current certificate keeps serving");
                    task.tx.send_replace(Slot::Ready {
                        cert,
                        renewal_error: Some(error),
                        failures,
                    });
                } else {
                    warn!(id = %task.id, %error, failures, retry_in = ?backoff,
                        "certificate fetch failed");
                    task.tx.send_replace(Slot::Failed(error, failures));
                }
                let retry_at = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        () = tokio::time::sleep_until(retry_at) => break,
                        () = task.retry_now.notified() => break,
                        Some(roots) = bundle_changed(&mut task.bundle) => task.reroot(roots),
                    }
                }
                backoff = backoff
                    .saturating_mul(2)
                    .min(task.config.max_backoff.max(initial_backoff));
            }
        }
    }
}

impl Renewal {
    /// `cert`, trusting the bundle's roots in force if there is a bundle.
    fn with_current_roots(&mut self, cert: WorkloadCertificate) -> WorkloadCertificate {
        match &mut self.bundle {
            Some(bundle) => cert.with_roots(bundle.borrow_and_update().clone()),
            None => cert,
        }
    }

    /// Puts `roots` into the published certificate, if there is one (while renewal fails).
    fn reroot(&self, roots: Arc<Roots>) {
        self.tx.send_if_modified(|slot| match slot {
            Slot::Ready { cert, .. } => {
                *cert = Arc::new(cert.with_roots(roots));
                true
            }
            Slot::Pending | Slot::Failed(..) => false,
        });
    }
}

/// The next roots of `bundle`; never resolves without a bundle or once its sender is gone.
async fn bundle_changed(bundle: &mut Option<watch::Receiver<Arc<Roots>>>) -> Option<Arc<Roots>> {
    let Some(receiver) = bundle else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        *bundle = None;
        return std::future::pending().await;
    }
    Some(receiver.borrow_and_update().clone())
}

/// One bounded fetch, checked to be for the identity asked for.
async fn fetch(
    provider: &dyn CertificateProvider,
    id: &SpiffeId,
    timeout: Duration,
) -> Result<WorkloadCertificate, IdentityError> {
    let cert = tokio::time::timeout(timeout, provider.fetch(id))
        .await
        .map_err(|_| IdentityError::FetchTimeout {
            id: id.clone(),
            timeout,
        })??;
    if cert.id() != id {
        return Err(IdentityError::WrongIdentity {
            requested: id.clone(),
            issued: cert.id().clone(),
        });
    }
    Ok(cert)
}
