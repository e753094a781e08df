//! Which replica of the controller writes: leader election on a `coordination.k8s.io/v1` Lease,
//! as istiod's deployment controller does (istio/istio `pilot/pkg/leaderelection/
//! leaderelection.go`: `GatewayDeploymentController = "istio-gateway-deployment"`, a Lease,
//! suffixed with the revision: `istio-gateway-deployment-default`), with the timing istiod takes
//! from client-go (`tools/leaderelection`: 15 s lease, 10 s renew deadline, 2 s retry).
//!
//! Invariants: only the holder reconciles; a holder that sees another holder, or cannot renew
//! within the renew deadline, turns `leading` false at once (the loop then writes nothing).
//! Whether another's lease has expired is judged on this replica's clock, from when it last saw
//! the record change (client-go's `observedTime`), so clocks need not agree between replicas.
//! Every write carries the resourceVersion read, so two candidates cannot both take the lease:
//! the loser gets 409 and tries again on its next round.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::{Value, json};
use tokio::sync::watch;
use tracing::{info, warn};

/// The Lease istiod's deployment controller elects on (revision `default`).
pub const LEASE_NAME: &str = "istio-gateway-deployment-default";

/// Why one round of the election failed (the round after tries again).
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A call on the Lease failed; a 409 means another candidate wrote first.
    #[error("{call} lease {namespace}/{name}: {source}")]
    Call {
        /// `reading`, `creating` or `updating`.
        call: &'static str,
        /// The Lease's namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What the client or the API server said.
        source: kube::Error,
    },
    /// The Lease read back is no Lease (no `spec`).
    #[error("lease {namespace}/{name} has no spec")]
    Malformed {
        /// The Lease's namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
}

/// How this replica takes part in the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionSettings {
    /// The Lease's namespace (the controller's own).
    pub namespace: String,
    /// The Lease's name.
    pub lease_name: String,
    /// This replica's name in `holderIdentity` (its pod name).
    pub identity: String,
    /// How long a lease holds without a renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps writing while its renewals fail.
    pub renew_deadline: Duration,
    /// How often a candidate tries, and the holder renews.
    pub retry_period: Duration,
}

impl ElectionSettings {
    /// Candidate `identity` for [`LEASE_NAME`] in `namespace`, with client-go's timing.
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            lease_name: LEASE_NAME.to_owned(),
            identity: identity.to_owned(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the Lease as it finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// There is none: create it, holding it.
    Create,
    /// It holds it: renew.
    Renew,
    /// Nobody holds it, or the holder's lease ran out: take it over.
    TakeOver,
    /// Another holds it and its lease runs: wait.
    Wait,
}

/// The step for a Lease held by `holder` (`None`: no Lease; `Some("")`: released), whose
/// record this replica has seen unchanged for `unchanged_for`, with `duration` as its term.
pub fn step(holder: Option<&str>, me: &str, unchanged_for: Duration, duration: Duration) -> Step {
    match holder {
        None => Step::Create,
        Some(h) if h == me => Step::Renew,
        Some("") => Step::TakeOver,
        Some(_) if unchanged_for >= duration => Step::TakeOver,
        Some(_) => Step::Wait,
    }
}

/// The Lease resource.
fn lease_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("coordination.k8s.io", "v1", "Lease"))
}

/// Now as a Kubernetes MicroTime (`2026-12-07T18:59:02.123456Z`).
fn micro_time() -> String {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = marrow_mesh::objects::timestamp(since.as_secs());
    format!(
        "{}.{:06}Z",
        seconds.trim_end_matches('Z'),
        since.subsec_micros()
    )
}

/// One candidate's view across rounds.
struct Candidate {
    api: Api<DynamicObject>,
    settings: ElectionSettings,
    /// The Lease's resourceVersion last seen, and when it was first seen.
    observed: Option<(String, Instant)>,
}

impl Candidate {
    fn failed(&self, call: &'static str) -> impl FnOnce(kube::Error) -> LeaseError + '_ {
        move |source| LeaseError::Call {
            call,
            namespace: self.settings.namespace.clone(),
            name: self.settings.lease_name.clone(),
            source,
        }
    }

    /// One round: reads the Lease and creates, renews or takes it over when it may; whether
    /// this replica holds it after the round.
    async fn round(&mut self) -> Result<bool, LeaseError> {
        let s = &self.settings;
        let now = Instant::now();
        let found = self
            .api
            .get_opt(&s.lease_name)
            .await
            .map_err(self.failed("reading"))?;
        let Some(mut lease) = found else {
            let time = micro_time();
            let lease: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": s.lease_name, "namespace": s.namespace},
                "spec": {"holderIdentity": s.identity,
                    "leaseDurationSeconds": s.lease_duration.as_secs(),
                    "acquireTime": time, "renewTime": time, "leaseTransitions": 0}}))
            .map_err(|_| LeaseError::Malformed {
                namespace: s.namespace.clone(),
                name: s.lease_name.clone(),
            })?;
            self.api
                .create(&PostParams::default(), &lease)
                .await
                .map_err(self.failed("creating"))?;
            return Ok(true);
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self
            .observed
            .as_ref()
            .is_none_or(|(seen, _)| *seen != version)
        {
            self.observed = Some((version, now));
        }
        let unchanged_for = self
            .observed
            .as_ref()
            .map_or(Duration::ZERO, |(_, at)| now.duration_since(*at));
        let Some(spec) = lease.data.get_mut("spec").and_then(Value::as_object_mut) else {
            return Err(LeaseError::Malformed {
                namespace: s.namespace.clone(),
                name: s.lease_name.clone(),
            });
        };
        let duration = spec
            .get("leaseDurationSeconds")
            .and_then(Value::as_u64)
            .map_or(s.lease_duration, Duration::from_secs);
        let holder = spec
            .get("holderIdentity")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let time = micro_time();
        match step(Some(&holder), &s.identity, unchanged_for, duration) {
            Step::Wait | Step::Create => return Ok(false),
            Step::Renew => {
                spec.insert("renewTime".into(), json!(time));
            }
            Step::TakeOver => {
                let transitions = spec
                    .get("leaseTransitions")
                    .and_then(Value::as_u64)
                    .unwrap_or(0);
                spec.insert("holderIdentity".into(), json!(s.identity));
                spec.insert(
                    "leaseDurationSeconds".into(),
                    json!(s.lease_duration.as_secs()),
                );
                spec.insert("acquireTime".into(), json!(time));
                spec.insert("renewTime".into(), json!(time));
                spec.insert("leaseTransitions".into(), json!(transitions + 1));
                info!(lease = %s.lease_name, previous = %holder, "taking over the lease");
            }
        }
        let name = s.lease_name.clone();
        self.api
            .replace(&name, &PostParams::default(), &lease)
            .await
            .map_err(self.failed("updating"))?;
        Ok(true)
    }
}

/// Takes part in the election until dropped, telling `leading` whether this replica holds the
/// Lease: true after a round that took or renewed it; false at once when another holds it, or
/// when no renewal succeeded for the renew deadline.
pub async fn run(client: kube::Client, settings: ElectionSettings, leading: watch::Sender<bool>) {
    let api = Api::namespaced_with(client, &settings.namespace, &lease_resource());
    let (retry, deadline) = (settings.retry_period, settings.renew_deadline);
    let mut candidate = Candidate {
        api,
        settings,
        observed: None,
    };
    let mut renewed: Option<Instant> = None;
    loop {
        let holds = match candidate.round().await {
            Ok(holds) => {
                renewed = holds.then(Instant::now);
                holds
            }
            Err(error) => {
                warn!(%error, "leader election round failed");
                renewed.is_some_and(|at| at.elapsed() < deadline)
            }
        };
        leading.send_if_modified(|was| {
            if *was != holds {
                info!(identity = %candidate.settings.identity, leading = holds, "leadership changed");
            }
            std::mem::replace(was, holds) != holds
        });
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_creates_renews_takes_over_or_waits() {
        let term = Duration::from_secs(15);
        let fresh = Duration::from_secs(3);
        let stale = Duration::from_secs(15);
        assert_eq!(step(None, "a", fresh, term), Step::Create);
        assert_eq!(step(Some("a"), "a", stale, term), Step::Renew);
        assert_eq!(step(Some("b"), "a", fresh, term), Step::Wait);
        assert_eq!(step(Some("b"), "a", stale, term), Step::TakeOver);
        assert_eq!(step(Some(""), "a", fresh, term), Step::TakeOver);
    }

    #[test]
    fn the_defaults_are_client_gos_and_the_lease_istiods() {
        let s = ElectionSettings::new("marrow-system", "ca-0");
        assert_eq!(s.lease_name, "istio-gateway-deployment-default");
        assert_eq!(
            (s.lease_duration, s.renew_deadline, s.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        let time = micro_time();
        assert_eq!(time.len(), "2026-12-07T18:59:02.123456Z".len(), "{time}");
    }
}
