//! Per-endpoint policy: which endpoint a try goes to ([`Upstreams::choose`]), what became of it
//! ([`Upstreams::report`]), and the DestinationRule state of each destination
//! ([`Upstreams::destination`]: its load balancer, connection-pool limits and outlier
//! detection, from [`marrow_mesh::resilience`], kept per Service, port and subset across state
//! updates that leave its policy alone). Without a DestinationRule: least-request over the
//! candidates, Envoy's default.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderMap;
use marrow_mesh::resilience::{Destination, Outcome};
use marrow_mesh::traffic::{HashKey, LoadBalancer, ServiceName};
use tokio::time::Instant;

use super::Upstreams;
use crate::route::Target;
use crate::route::retry::Attempt;

/// What a destination's per-endpoint state is kept by: the Service, the service port and the
/// subset (a subset is its own Envoy cluster, with its own breakers and detector).
pub type DestinationKey = (ServiceName, u16, Option<Arc<str>>);

/// What a load balancer may hash on.
#[derive(Clone, Copy, Debug)]
pub struct ChoiceRequest<'a> {
    /// The request headers (as forwarded).
    pub headers: &'a HeaderMap,
    /// The path with its query (as forwarded).
    pub path_and_query: &'a str,
    /// The original client.
    pub client: SocketAddr,
}

impl Upstreams {
    /// The DestinationRule state of `target` as of snapshot `generation`; `None` when no
    /// DestinationRule applies to it (or it is a workload).
    pub fn destination(&self, target: &Target, generation: u64) -> Option<Arc<Destination>> {
        let Target::Service {
            service,
            subset_name,
            policy: Some(policy),
            ..
        } = target
        else {
            return None;
        };
        let key = (
            service.service.clone(),
            service.vip.port(),
            subset_name.clone(),
        );
        Some(
            self.resilience
                .get(&key, generation, || (policy.clone(), service.host())),
        )
    }

    /// The endpoint of `target` the next try goes to; `None` when none is usable.
    ///
    /// A retry avoids the endpoints already `tried` while others remain: Istio sets Envoy's
    /// `previous_hosts` retry host predicate on every route (istio
    /// `pilot/pkg/networking/core/route/retry/retry.go`, `HostSelectionRetryMaxAttempts`) —
    /// but not with a consistent hash (`DefaultConsistentHashPolicy`), where a retry goes to
    /// the same hashed endpoint. Endpoints ejected by outlier detection are skipped unless
    /// too few are healthy (Envoy's panic threshold, Istio's `minHealthPercent`).
    pub fn choose(
        &self,
        target: &Target,
        destination: Option<&Destination>,
        request: &ChoiceRequest<'_>,
        tried: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let endpoints = target.endpoints();
        let Some(destination) = destination else {
            return self.least_request(endpoints, tried, |_| true);
        };
        let now = Instant::now();
        let usable = |e: SocketAddr| destination.usable(endpoints, e, now);
        match &destination.policy().load_balancer {
            // The DestinationRule sets no load balancer: the waypoint's least-request.
            None | Some(LoadBalancer::LeastRequest) => self.least_request(endpoints, tried, usable),
            Some(LoadBalancer::ConsistentHash(key)) => {
                let key = hash_key(key, request);
                destination.balancer.pick(endpoints, key.as_deref(), usable)
            }
            Some(_) => {
                let fresh = |e: SocketAddr| usable(e) && !tried.contains(&e);
                let balancer = &destination.balancer;
                let picked = if tried.is_empty() {
                    balancer.pick(endpoints, None, fresh)
                } else {
                    balancer.pick_again(endpoints, None, fresh)
                };
                picked.or_else(|| balancer.pick_again(endpoints, None, usable))
            }
        }
    }

    /// Least-request (two random choices) over the `usable` endpoints, those not `tried`
    /// while there are any.
    fn least_request(
        &self,
        endpoints: &[SocketAddr],
        tried: &[SocketAddr],
        usable: impl Fn(SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        if tried.is_empty() && endpoints.iter().all(|e| usable(*e)) {
            // The common case: nothing to leave out, no allocation.
            return self.balancer.pick(endpoints);
        }
        let candidates: Vec<SocketAddr> =
            endpoints.iter().copied().filter(|e| usable(*e)).collect();
        let fresh: Vec<SocketAddr> = candidates
            .iter()
            .copied()
            .filter(|e| !tried.contains(e))
            .collect();
        if fresh.is_empty() {
            self.balancer.pick(&candidates)
        } else {
            self.balancer.pick(&fresh)
        }
    }

    /// What became of a try at `endpoint` (one of `target`'s), for outlier detection: an
    /// answer by its status, a failure to connect as Envoy's local-origin connect failure
    /// (503), a reset as 503 and a per-try timeout as 504 (Envoy's `resultToHttpCode`, with
    /// `split_external_local_origin_errors` off, as Istio leaves it).
    pub fn report(
        &self,
        target: &Target,
        destination: Option<&Destination>,
        endpoint: SocketAddr,
        attempt: &Attempt,
    ) {
        tracing::trace!(%endpoint, outcome = %attempt.label(), "try ended");
        let Some(destination) = destination else {
            return;
        };
        let outcome = match attempt {
            Attempt::Answered { status, .. } => Outcome::Status(*status),
            Attempt::ConnectFailure => Outcome::ConnectFailure,
            Attempt::RefusedStream | Attempt::Reset => Outcome::Status(503),
            Attempt::PerTryTimeout => Outcome::Status(504),
        };
        destination.report(target.endpoints(), endpoint, outcome, Instant::now());
    }
}

/// The bytes a consistent hash is taken over, when the request has them (Envoy's hash policy:
/// without its key a request is balanced at random). A cookie is read, never set.
fn hash_key<'a>(key: &HashKey, request: &ChoiceRequest<'a>) -> Option<Cow<'a, [u8]>> {
    match key {
        HashKey::Header(name) => request
            .headers
            .get(name.as_str())
            .map(|v| Cow::Borrowed(v.as_bytes())),
        HashKey::Cookie { name, .. } => request
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then_some(Cow::Borrowed(v.as_bytes()))
            }),
        HashKey::SourceIp => Some(Cow::Owned(match request.client.ip() {
            std::net::IpAddr::V4(ip) => ip.octets().to_vec(),
            std::net::IpAddr::V6(ip) => ip.octets().to_vec(),
        })),
        HashKey::QueryParameter(name) => {
            request
                .path_and_query
                .split_once('?')
                .and_then(|(_, query)| {
                    query.split('&').find_map(|pair| {
                        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                        (k == name).then_some(Cow::Borrowed(v.as_bytes()))
                    })
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(headers: &'a HeaderMap, path: &'a str) -> ChoiceRequest<'a> {
        ChoiceRequest {
            headers,
            path_and_query: path,
            client: "10.0.0.7:40000".parse().unwrap(),
        }
    }

    #[test]
    fn hash_keys_come_from_the_request_or_not_at_all() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "alice".parse().unwrap());
        headers.insert("cookie", "a=1; session=s42; b=2".parse().unwrap());
        let req = request(&headers, "/p?x=1&user=bob");
        let key = |k: HashKey| hash_key(&k, &req).map(|c| c.into_owned());
        assert_eq!(
            key(HashKey::Header("x-user".into())),
            Some(b"alice".to_vec())
        );
        assert_eq!(key(HashKey::Header("x-none".into())), None);
        let cookie = |name: &str| HashKey::Cookie {
            name: name.into(),
            ttl: None,
            path: None,
        };
        assert_eq!(key(cookie("session")), Some(b"s42".to_vec()));
        assert_eq!(key(cookie("sess")), None);
        assert_eq!(key(HashKey::SourceIp), Some(vec![10, 0, 0, 7]));
        assert_eq!(
            key(HashKey::QueryParameter("user".into())),
            Some(b"bob".to_vec())
        );
        assert_eq!(key(HashKey::QueryParameter("u".into())), None);
    }
}
