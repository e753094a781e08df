//! What the controller renders with: the waypoint's image and how its pods reach the CA.
//! The program that runs the controller (`node-proxy ca serve`) reads these from its settings.

/// The field manager of every apply, istiod's default (`PILOT_GATEWAY_API_CONTROLLER_NAME`),
/// so objects move between istiod and marrow without a conflict.
pub const FIELD_MANAGER: &str = "istio.io/gateway-controller";

/// The image waypoints run by default: this release's node-proxy image, which holds the
/// `waypoint` command.
pub const DEFAULT_IMAGE: &str = concat!("marrow/node-proxy:", env!("CARGO_PKG_VERSION"));

/// The controller's settings; [`Default`] is what `node-proxy ca serve` uses with no flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerSettings {
    /// Image of the waypoint container.
    pub image: String,
    /// Its `imagePullPolicy`.
    pub image_pull_policy: String,
    /// SPIFFE trust domain of the waypoints' identities.
    pub trust_domain: String,
    /// The CA waypoints ask for their certificate (`--ca-address` of the node proxies).
    pub ca_address: String,
    /// ConfigMap, in each waypoint's namespace, holding the mesh roots as `root-cert.pem`
    /// (Istio's `istio-ca-root-cert`, which istiod copies into every namespace).
    pub roots_config_map: String,
    /// The audience of the token a waypoint shows the CA.
    pub ca_audience: String,
    /// The cluster's DNS domain (`<svc>.<ns>.svc.<domain>`).
    pub cluster_domain: String,
    /// Field manager of the applies.
    pub field_manager: String,
    /// Leader election among replicas; `None`: this one writes alone (a single replica).
    pub election: Option<crate::leader::ElectionSettings>,
}

impl Default for ControllerSettings {
    fn default() -> Self {
        Self {
            image: DEFAULT_IMAGE.to_owned(),
            image_pull_policy: "IfNotPresent".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            ca_address: "https://marrow-ca.marrow-system.svc:15012".to_owned(),
            roots_config_map: "istio-ca-root-cert".to_owned(),
            ca_audience: "istio-ca".to_owned(),
            cluster_domain: "cluster.local".to_owned(),
            field_manager: FIELD_MANAGER.to_owned(),
            election: None,
        }
    }
}
