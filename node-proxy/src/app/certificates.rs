//! What the node proxy reports about its workload certificates: the per-identity expiry,
//! issue-time and renewal-failure gauges, and the readiness line naming failing renewals.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use marrow_mesh::identity::{CertificateManager, CertificateStatus};

/// Keeps the per-identity certificate gauges current (every 2 s: renewals are minutes or hours
/// apart in production, seconds apart only in tests).
pub async fn export_expiry(certs: Arc<CertificateManager>, metrics: Arc<Metrics>) {
    let unix = |t: std::time::SystemTime| {
        let secs = t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    };
    loop {
        metrics.certificate_expiry.clear();
        metrics.certificate_issued.clear();
        metrics.certificate_renewal_failures.clear();
        for status in certs.statuses() {
            let labels = crate::metrics::IdentityLabels {
                identity: status.id.to_string(),
            };
            metrics
                .certificate_renewal_failures
                .get_or_create(&labels)
                .set(i64::from(status.consecutive_failures));
            if let Some(not_after) = status.not_after {
                metrics
                    .certificate_expiry
                    .get_or_create(&labels)
                    .set(unix(not_after));
            }
            if let Some(not_before) = status.not_before {
                metrics
                    .certificate_issued
                    .get_or_create(&labels)
                    .set(unix(not_before));
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The readiness line about certificates: which identities fail to renew or have expired, the
/// oldest certificate's age; `None` while every renewal succeeds.
pub fn readiness_detail(statuses: &[CertificateStatus]) -> Option<String> {
    let now = std::time::SystemTime::now();
    let failing: Vec<&CertificateStatus> = statuses
        .iter()
        .filter(|s| s.consecutive_failures > 0)
        .collect();
    let worst = failing.iter().max_by_key(|s| s.consecutive_failures)?;
    let expired = failing
        .iter()
        .filter(|s| s.not_after.is_none_or(|t| t < now))
        .count();
    let oldest = statuses
        .iter()
        .filter_map(|s| s.not_before)
        .min()
        .and_then(|t| now.duration_since(t).ok())
        .map(|age| format!(", oldest certificate {}s old", age.as_secs()))
        .unwrap_or_default();
    Some(format!(
        "certificates: {} of {} identities failing to renew, {expired} without a valid \
         certificate{oldest} (e.g. {}: {} failures, last: {})",
        failing.len(),
        statuses.len(),
        worst.id,
        worst.consecutive_failures,
        worst.last_error.as_deref().unwrap_or("-"),
    ))
}
