//! Whether a pod the CNI enrolls is captured at all: Istio ambient's rule over the state (the
//! pod's and its namespace's `istio.io/dataplane-mode`, host network, sidecar), waiting a
//! little for the state to know a new pod.

use super::context::MeshContext;

/// Whether a pod starting on this node is captured (Istio ambient's rule, see
/// [`marrow_mesh::state::in_mesh`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaptureDecision {
    /// In the mesh: capture it.
    Capture,
    /// Not in the mesh: leave its traffic alone; the reason says which label decided.
    Skip(String),
}

impl MeshContext {
    /// Decides whether the pod `namespace/name` is captured: by the state's record of the pod
    /// (its `istio.io/dataplane-mode` label, its namespace's, host network, sidecar), waiting
    /// up to [`MeshContext::enrollment_wait`] for the record; without one, by the namespace's label.
    pub async fn capture_decision(&self, namespace: &str, name: &str) -> CaptureDecision {
        let deadline = tokio::time::Instant::now() + self.enrollment_wait;
        let mut changes = self.state.subscribe();
        loop {
            let snap = self.state.snapshot();
            if let Some(workload) = snap.workload_by_name(namespace, name) {
                return if snap.in_mesh(workload) {
                    CaptureDecision::Capture
                } else {
                    CaptureDecision::Skip(format!(
                        "pod {namespace}/{name} is not in the ambient mesh (istio.io/dataplane-mode on the pod or its namespace, host network or sidecar)"
                    ))
                };
            }
            let waited = tokio::time::timeout_at(deadline, changes.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                let ambient = snap
                    .namespace(namespace)
                    .is_some_and(marrow_mesh::state::Namespace::ambient);
                return if ambient {
                    CaptureDecision::Capture
                } else {
                    CaptureDecision::Skip(format!(
                        "pod {namespace}/{name}: namespace {namespace} is not labelled istio.io/dataplane-mode=ambient (and the pod is not known yet)"
                    ))
                };
            }
        }
    }
}
