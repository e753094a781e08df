//! Who may obtain which identity: the caller from a Kubernetes TokenReview, the caller's node
//! from the pod its token is bound to, and the pods on that node.
//!
//! The decisions are pure functions over what the API server said ([`authenticate`],
//! [`requested_identity`], [`plan`], [`caller_node`], [`check_on_node`]); [`authorize`] only
//! fetches what they need, in that order, and stops at the first refusal.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};

use super::{CaError, CaSettings};
use marrow_mesh::identity::SpiffeId;
pub use marrow_mesh::policy::ServiceAccount;

/// `status.user.extra` key of the pod a bound token belongs to.
pub const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
/// `status.user.extra` key of that pod's uid.
pub const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";
/// `status.user.extra` key of that pod's node (Kubernetes 1.30+).
pub const EXTRA_NODE_NAME: &str = "authentication.kubernetes.io/node-name";
/// Prefix of a ServiceAccount's username.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

/// The pod a bound token was issued for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodBinding {
    /// The pod's name (in the caller's namespace).
    pub name: String,
    /// The pod's uid when the token was issued.
    pub uid: String,
    /// The pod's node as the token states it, when it does.
    pub node: Option<String>,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Its ServiceAccount.
    pub account: ServiceAccount,
    /// Its own identity.
    pub identity: SpiffeId,
    /// The pod its token is bound to, if any.
    pub pod: Option<PodBinding>,
}

/// What [`plan`] says remains to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The caller asks for its own identity: granted.
    Own,
    /// A node proxy asks for another identity: its pod's node must run a pod of it.
    OnNode(PodBinding),
}

/// A granted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// Who asked.
    pub caller: ServiceAccount,
    /// The identity to certify.
    pub identity: SpiffeId,
    /// The caller's node, when it asked on behalf of a pod there.
    pub node: Option<String>,
}

/// What was learnt about a call so far, for its log line.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The caller's account.
    pub caller: Option<ServiceAccount>,
    /// The requested identity.
    pub identity: Option<SpiffeId>,
    /// The caller's node.
    pub node: Option<String>,
}

/// The caller a TokenReview's status describes, if it is an authenticated ServiceAccount token
/// for `audience`.
pub fn authenticate(status: &TokenReviewStatus, settings: &CaSettings) -> Result<Caller, CaError> {
    if status.authenticated != Some(true) {
        return Err(CaError::TokenRejected {
            reason: status
                .error
                .clone()
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "the API server did not authenticate it".to_owned()),
        });
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.contains(&settings.audience) {
        return Err(CaError::WrongAudience {
            audiences,
            expected: settings.audience.clone(),
        });
    }
    let user = status.user.clone().unwrap_or_default();
    let username = user.username.unwrap_or_default();
    let account = username
        .strip_prefix(SERVICE_ACCOUNT_PREFIX)
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .map(|(ns, sa)| ServiceAccount {
            namespace: ns.to_owned(),
            name: sa.to_owned(),
        })
        .ok_or_else(|| CaError::NotServiceAccount {
            username: username.clone(),
        })?;
    let identity = SpiffeId::new(&settings.trust_domain, &account.namespace, &account.name)
        .map_err(|_| CaError::NotServiceAccount {
            username: username.clone(),
        })?;
    let extra = user.extra.unwrap_or_default();
    let single = |key: &str| {
        extra.get(key).and_then(|values| match values.as_slice() {
            [one] if !one.is_empty() => Some(one.clone()),
            _ => None,
        })
    };
    let pod = match (single(EXTRA_POD_NAME), single(EXTRA_POD_UID)) {
        (Some(name), Some(uid)) => Some(PodBinding {
            name,
            uid,
            node: single(EXTRA_NODE_NAME),
        }),
        _ => None,
    };
    Ok(Caller {
        account,
        identity,
        pod,
    })
}

/// The identity asked for: the impersonated one when given, else the caller's own; always in
/// the CA's trust domain.
pub fn requested_identity(
    caller: &Caller,
    impersonated: Option<&str>,
    settings: &CaSettings,
) -> Result<SpiffeId, CaError> {
    let Some(text) = impersonated.filter(|t| !t.is_empty()) else {
        return Ok(caller.identity.clone());
    };
    let identity = SpiffeId::parse(text).map_err(|e| CaError::BadIdentity {
        value: text.to_owned(),
        reason: e.to_string(),
    })?;
    if !identity.is_in(&settings.trust_domain) {
        return Err(CaError::WrongTrustDomain {
            identity: identity.to_string(),
            trust_domain: settings.trust_domain.clone(),
        });
    }
    Ok(identity)
}

/// Whether `caller` may have `requested` outright, or what must be checked on its node.
pub fn plan(caller: &Caller, requested: &SpiffeId, settings: &CaSettings) -> Result<Plan, CaError> {
    if *requested == caller.identity {
        return Ok(Plan::Own);
    }
    if !settings.node_proxy_accounts.contains(&caller.account) {
        return Err(CaError::NotNodeProxy {
            caller: caller.account.to_string(),
            identity: requested.clone(),
        });
    }
    caller
        .pod
        .clone()
        .map(Plan::OnNode)
        .ok_or(CaError::NotPodBound)
}

/// The node of the caller's pod: `pod` is what the API server returns for the binding's name
/// in the caller's namespace (`None`: not found).
pub fn caller_node(
    caller: &Caller,
    binding: &PodBinding,
    pod: Option<&Pod>,
) -> Result<String, CaError> {
    let gone = |reason| CaError::CallerPodGone {
        namespace: caller.account.namespace.clone(),
        pod: binding.name.clone(),
        reason,
    };
    let pod = pod.ok_or_else(|| gone("no longer exists"))?;
    if pod.metadata.uid.as_deref() != Some(binding.uid.as_str()) {
        return Err(gone("was replaced by another pod of the same name"));
    }
    // Bound tokens are issued for the pod's own account; anything else is not this caller.
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|a| !a.is_empty())
        .unwrap_or("default");
    if account != caller.account.name {
        return Err(gone("runs as another service account"));
    }
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| gone("is not scheduled on a node"))?;
    if let Some(token_node) = &binding.node
        && *token_node != node
    {
        return Err(CaError::NodeMismatch {
            token_node: token_node.clone(),
            pod_node: node,
        });
    }
    Ok(node)
}

/// Whether `pods` (those of `requested`'s namespace on `node`) hold a live pod running as
/// `requested`'s ServiceAccount. A pod being deleted may still run: it counts; one that has
/// finished does not.
pub fn check_on_node(requested: &SpiffeId, node: &str, pods: &[Pod]) -> Result<(), CaError> {
    let runs_as = |pod: &Pod| {
        let spec = pod.spec.as_ref();
        let on_node = spec.and_then(|s| s.node_name.as_deref()) == Some(node);
        let account = spec
            .and_then(|s| s.service_account_name.as_deref())
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        let namespace = pod.metadata.namespace.as_deref() == Some(requested.namespace());
        let finished = matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        );
        on_node && namespace && account == requested.service_account() && !finished
    };
    if pods.iter().any(runs_as) {
        Ok(())
    } else {
        Err(CaError::NotOnNode {
            identity: requested.clone(),
            node: node.to_owned(),
        })
    }
}

/// Decides one call: reviews `token`, then fetches the caller's pod and the pods on its node
/// when the decision needs them. `seen` collects what was learnt, for the log line.
pub async fn authorize(
    client: &kube::Client,
    settings: &CaSettings,
    reviews: &ReviewCache,
    token: &str,
    impersonated: Option<&str>,
    seen: &mut Seen,
) -> Result<Grant, CaError> {
    let status = match reviews.get(token) {
        Some(status) => status,
        None => {
            let status = review(client, token, &settings.audience).await?;
            reviews.put(token, &status);
            status
        }
    };
    let caller = authenticate(&status, settings)?;
    seen.caller = Some(caller.account.clone());
    let requested = requested_identity(&caller, impersonated, settings)?;
    seen.identity = Some(requested.clone());
    let binding = match plan(&caller, &requested, settings)? {
        Plan::Own => {
            return Ok(Grant {
                caller: caller.account,
                identity: requested,
                node: None,
            });
        }
        Plan::OnNode(binding) => binding,
    };
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), &caller.account.namespace);
    let pod = pods
        .get_opt(&binding.name)
        .await
        .map_err(|source| CaError::KubeApi {
            call: "getting the caller's pod",
            source,
        })?;
    let node = caller_node(&caller, &binding, pod.as_ref())?;
    seen.node = Some(node.clone());
    let on_node = kube::Api::<Pod>::namespaced(client.clone(), requested.namespace())
        .list(&ListParams::default().fields(&format!("spec.nodeName={node}")))
        .await
        .map_err(|source| CaError::KubeApi {
            call: "listing the pods on the caller's node",
            source,
        })?;
    check_on_node(&requested, &node, &on_node.items)?;
    Ok(Grant {
        caller: caller.account,
        identity: requested,
        node: Some(node),
    })
}

/// Most tokens [`ReviewCache`] holds (one per node proxy and workload asking; a full cache
/// drops what expired, then everything).
const MAX_CACHED_REVIEWS: usize = 10_000;

/// Authenticated TokenReview answers by token, for a short while: a node proxy starting with
/// 50 pods asks for 50 identities with one token, and that should cost one review, not 50.
/// Only authentications are kept (a refusal is asked again), and only the review: the caller's
/// pod and the pods on its node are looked up for every request, so a deleted node-proxy pod
/// is noticed at once.
#[derive(Debug)]
pub struct ReviewCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, TokenReviewStatus)>>,
}

impl ReviewCache {
    /// A cache keeping answers for `ttl` (zero: none).
    pub fn new(ttl: Duration) -> ReviewCache {
        ReviewCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached answer for `token`, if still fresh.
    fn get(&self, token: &str) -> Option<TokenReviewStatus> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let (at, status) = entries.get(token)?;
        (at.elapsed() < self.ttl).then(|| status.clone())
    }

    /// Keeps `status` for `token` if it authenticates.
    fn put(&self, token: &str, status: &TokenReviewStatus) {
        if self.ttl.is_zero() || status.authenticated != Some(true) {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_CACHED_REVIEWS {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= MAX_CACHED_REVIEWS {
                entries.clear();
            }
        }
        entries.insert(token.to_owned(), (Instant::now(), status.clone()));
    }
}

/// Asks the API server about `token` for `audience`.
async fn review(
    client: &kube::Client,
    token: &str,
    audience: &str,
) -> Result<TokenReviewStatus, CaError> {
    let request = TokenReview {
        spec: TokenReviewSpec {
            token: Some(token.to_owned()),
            audiences: Some(vec![audience.to_owned()]),
        },
        ..TokenReview::default()
    };
    let answer = kube::Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &request)
        .await
        .map_err(|source| CaError::KubeApi {
            call: "creating a TokenReview",
            source,
        })?;
    Ok(answer.status.unwrap_or_default())
}
