//! `node-proxy ca serve`'s settings: each declared once ([`ServeConfig`], read through
//! `marrow_settings`' layers), then validated into the [`CaSettings`] the CA runs with.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use marrow_mesh::identity::{DEFAULT_TRUST_DOMAIN, TrustDomain};
use marrow_settings::{parse, settings};

use crate::{CaError, ServiceAccount};

/// The port istiod serves its CA on, and so this CA.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 15012);
/// The audience node proxies' tokens are projected for (Istio's).
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// The node proxies' ServiceAccount.
pub const DEFAULT_NODE_PROXY_ACCOUNTS: &str = "marrow-system/node-proxy";
/// The names of the CA's Service, which its serving certificate carries.
pub const DEFAULT_SERVING_NAMES: &str =
    "marrow-ca.marrow-system.svc,marrow-ca.marrow-system.svc.cluster.local";

/// Where waypoints reach this CA: its Service (ca.yaml), as the node proxies do.
pub const DEFAULT_WAYPOINT_CA_ADDRESS: &str = "https://marrow-ca.marrow-system.svc:15012";

/// The comma-separated `list` as a list.
fn split(list: &str) -> Vec<String> {
    list.split(',').map(str::to_owned).collect()
}

settings! {
    /// Everything `node-proxy ca serve` needs, read as the node proxy's configuration is
    /// (defaults, `--config-file`, `MARROW_*`, flags; see [`marrow_settings`]).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct ServeConfig {
        /// Address to serve gRPC over TLS on.
        listen: SocketAddr = DEFAULT_LISTEN,
            ("listen", "MARROW_CA_LISTEN", parse::ADDR),
        /// Directory of ca-cert.pem and ca-key.pem (the mounted Secret); reloaded when they
        /// change.
        ca_dir: PathBuf = PathBuf::from("/etc/marrow-ca"),
            ("ca-dir", "MARROW_CA_DIR", parse::PATH),
        /// SPIFFE trust domain the CA signs for.
        trust_domain: String = DEFAULT_TRUST_DOMAIN.to_owned(),
            ("trust-domain", "MARROW_TRUST_DOMAIN", parse::TEXT),
        /// ServiceAccounts (`ns/sa`, comma separated) that may ask for the identities of pods
        /// on their own node.
        node_proxy_accounts: Vec<String> = split(DEFAULT_NODE_PROXY_ACCOUNTS),
            ("node-proxy-accounts", "MARROW_CA_NODE_PROXY_ACCOUNTS", parse::TEXT_LIST),
        /// Audience callers' tokens must be issued for.
        audience: String = DEFAULT_AUDIENCE.to_owned(),
            ("audience", "MARROW_CA_AUDIENCE", parse::TEXT),
        /// DNS names (comma separated) of the CA's own serving certificate.
        serving_names: Vec<String> = split(DEFAULT_SERVING_NAMES),
            ("serving-names", "MARROW_CA_SERVING_NAMES", parse::TEXT_LIST),
        /// Longest lifetime of an issued certificate, in seconds.
        max_cert_ttl: Duration = Duration::from_secs(86_400),
            ("max-cert-ttl-secs", "MARROW_CA_MAX_CERT_TTL_SECS", parse::SECS),
        /// Requests checked at once; more are refused with RESOURCE_EXHAUSTED (the proxies
        /// retry with backoff), so a flood of calls does not become a flood on the API server.
        max_concurrent_requests: usize = 64,
            ("max-concurrent-requests", "MARROW_CA_MAX_CONCURRENT_REQUESTS", parse::COUNT),
        /// `/metrics` (Prometheus): issued and refused requests, the CA's expiry.
        metrics_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 15014)),
            ("metrics-addr", "MARROW_CA_METRICS_ADDR", parse::ADDR),
        /// `/healthz/ready`: 200 once a CA is loaded.
        readiness_addr: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 15021)),
            ("readiness-addr", "MARROW_CA_READINESS_ADDR", parse::ADDR),
        /// Run the waypoint controller beside the CA: every Gateway of class istio-waypoint
        /// gets its ServiceAccount, Deployment and Service (off: `false` in the environment or
        /// the file, e.g. where istiod deploys waypoints).
        waypoint_controller: bool = true,
            ("waypoint-controller", "MARROW_CA_WAYPOINT_CONTROLLER", parse::SWITCH),
        /// Image of the waypoints the controller deploys (the node proxy's image: it holds the
        /// `waypoint` command).
        waypoint_image: String = marrow_controller::DEFAULT_IMAGE.to_owned(),
            ("waypoint-image", "MARROW_CA_WAYPOINT_IMAGE", parse::TEXT),
        /// The CA address waypoints ask for their certificate (the node proxies' --ca-address).
        waypoint_ca_address: String = DEFAULT_WAYPOINT_CA_ADDRESS.to_owned(),
            ("waypoint-ca-address", "MARROW_CA_WAYPOINT_CA_ADDRESS", parse::TEXT),
        /// ConfigMap in each waypoint's namespace with the mesh roots as root-cert.pem.
        waypoint_roots_config_map: String = "istio-ca-root-cert".to_owned(),
            ("waypoint-roots-config-map", "MARROW_CA_WAYPOINT_ROOTS_CONFIG_MAP", parse::TEXT),
        /// This replica's name in the waypoint controller's leader election (the pod's name,
        /// from the downward API); the host name when unset.
        pod_name: Option<String> = None,
            ("pod-name", "MARROW_CA_POD_NAME", parse::SOME_TEXT),
        /// Namespace of the controller's Lease (the pod's own).
        pod_namespace: String = "marrow-system".to_owned(),
            ("pod-namespace", "MARROW_CA_POD_NAMESPACE", parse::TEXT),
    }
}

impl ServeConfig {
    /// Checks the values can work; a bad one is named with what is expected.
    ///
    /// # Errors
    /// As [`ServeConfig::settings`].
    pub fn validate(&self) -> Result<(), CaError> {
        self.settings().map(drop)
    }

    /// The waypoint controller's settings, or `None` when it is off: the CA's trust domain and
    /// token audience, so the waypoints it deploys get their certificates from this CA; every
    /// replica runs it, the one holding the Lease writes (an empty identity: the caller's to
    /// fill from the host name).
    pub fn controller_settings(&self) -> Option<marrow_controller::ControllerSettings> {
        self.waypoint_controller
            .then(|| marrow_controller::ControllerSettings {
                image: self.waypoint_image.clone(),
                trust_domain: self.trust_domain.clone(),
                ca_address: self.waypoint_ca_address.clone(),
                roots_config_map: self.waypoint_roots_config_map.clone(),
                ca_audience: self.audience.clone(),
                election: Some(marrow_controller::ElectionSettings::new(
                    &self.pod_namespace,
                    self.pod_name.as_deref().unwrap_or_default(),
                )),
                ..marrow_controller::ControllerSettings::default()
            })
    }

    /// The settings of the signing service, validated.
    ///
    /// # Errors
    /// A setting that cannot work, named with its value and what is expected.
    pub fn settings(&self) -> Result<CaSettings, CaError> {
        let setting =
            |setting: &'static str, value: &str, expected: &'static str| CaError::Setting {
                setting,
                value: value.to_owned(),
                expected,
            };
        let trust_domain = TrustDomain::new(&self.trust_domain).map_err(|_| {
            setting(
                "--trust-domain",
                &self.trust_domain,
                "a SPIFFE trust domain (a-z 0-9 . - _)",
            )
        })?;
        let node_proxy_accounts = self
            .node_proxy_accounts
            .iter()
            .filter(|a| !a.trim().is_empty())
            .map(|a| {
                ServiceAccount::parse(a.trim())
                    .ok_or_else(|| setting("--node-proxy-accounts", a, "namespace/serviceaccount"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.waypoint_controller {
            for (flag, value, expected) in [
                (
                    "--waypoint-image",
                    &self.waypoint_image,
                    "an image reference",
                ),
                (
                    "--waypoint-ca-address",
                    &self.waypoint_ca_address,
                    "an https:// URL",
                ),
                (
                    "--waypoint-roots-config-map",
                    &self.waypoint_roots_config_map,
                    "a ConfigMap name",
                ),
            ] {
                let https = flag != "--waypoint-ca-address" || value.starts_with("https://");
                if value.trim().is_empty() || !https {
                    return Err(setting(flag, value, expected));
                }
            }
        }
        let settings = CaSettings {
            trust_domain,
            node_proxy_accounts,
            audience: self.audience.clone(),
            serving_names: self
                .serving_names
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            max_cert_ttl: self.max_cert_ttl,
            max_concurrent_requests: self.max_concurrent_requests,
            ..CaSettings::default()
        };
        settings.validate()?;
        Ok(settings)
    }
}

/// What the CA signs for whom; [`Default`] is the flags' defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaSettings {
    /// The trust domain of every identity issued.
    pub trust_domain: TrustDomain,
    /// Accounts that may obtain identities of pods on their own node.
    pub node_proxy_accounts: Vec<ServiceAccount>,
    /// The audience callers' tokens must carry.
    pub audience: String,
    /// DNS names of the CA's own serving certificate.
    pub serving_names: Vec<String>,
    /// Lifetime when the request asks for none.
    pub default_cert_ttl: Duration,
    /// Longest lifetime issued.
    pub max_cert_ttl: Duration,
    /// How far before "now" a certificate starts (peers with slow clocks); at most a tenth of
    /// its lifetime.
    pub backdate: Duration,
    /// How often the CA files are checked for a change.
    pub reload_interval: Duration,
    /// Requests checked at once; more are refused as busy (each costs a TokenReview and two
    /// pod reads, so a flood of calls must not become a flood on the API server).
    pub max_concurrent_requests: usize,
    /// How long an authenticated TokenReview answer is reused for the same token (zero:
    /// never); the pod lookups are done for every request regardless.
    pub token_review_ttl: Duration,
}

impl Default for CaSettings {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::default(),
            node_proxy_accounts: ServiceAccount::parse(DEFAULT_NODE_PROXY_ACCOUNTS)
                .into_iter()
                .collect(),
            audience: DEFAULT_AUDIENCE.to_owned(),
            serving_names: DEFAULT_SERVING_NAMES
                .split(',')
                .map(str::to_owned)
                .collect(),
            default_cert_ttl: Duration::from_secs(24 * 60 * 60),
            max_cert_ttl: Duration::from_secs(24 * 60 * 60),
            backdate: Duration::from_secs(5 * 60),
            reload_interval: Duration::from_secs(5),
            max_concurrent_requests: 64,
            token_review_ttl: Duration::from_secs(60),
        }
    }
}

impl CaSettings {
    /// Checks the values can work; a bad one is named with what is expected.
    pub fn validate(&self) -> Result<(), CaError> {
        let bad = |setting: &'static str, value: String, expected: &'static str| {
            Err(CaError::Setting {
                setting,
                value,
                expected,
            })
        };
        if self.audience.is_empty() {
            return bad("--audience", String::new(), "a non-empty audience");
        }
        if self.serving_names.is_empty() {
            return bad("--serving-names", String::new(), "at least one DNS name");
        }
        let year = Duration::from_secs(366 * 24 * 60 * 60);
        if self.max_cert_ttl < Duration::from_secs(60) || self.max_cert_ttl > year {
            return bad(
                "--max-cert-ttl-secs",
                self.max_cert_ttl.as_secs().to_string(),
                "between 60 seconds and one year",
            );
        }
        if self.default_cert_ttl.is_zero() {
            return bad(
                "default certificate lifetime",
                "0".to_owned(),
                "a positive duration",
            );
        }
        if self.max_concurrent_requests == 0 || self.max_concurrent_requests > 100_000 {
            return bad(
                "--max-concurrent-requests",
                self.max_concurrent_requests.to_string(),
                "1..=100000",
            );
        }
        if self.reload_interval.is_zero() {
            return bad("reload interval", "0".to_owned(), "a positive duration");
        }
        Ok(())
    }
}
