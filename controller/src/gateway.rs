//! A Gateway as the controller reads it: which ones are waypoints (`gatewayClassName:
//! istio-waypoint`), and the names, labels and listeners their objects are rendered from.
//!
//! Invariant: a Gateway that cannot be rendered safely (no name or uid, listeners that are not
//! a list of `{name, port, protocol}`, a name annotation that is no DNS-1123 label) is refused
//! as a whole with the field named; nothing is applied for it, and other Gateways are not
//! affected.

use std::collections::BTreeMap;

use serde_json::Value;

/// The class whose Gateways are waypoints (istio's builtin class for
/// `istio.io/mesh-controller`, pilot/pkg/config/kube/gatewaycommon/classinfo.go).
pub const WAYPOINT_CLASS: &str = "istio-waypoint";
/// Annotation naming the Deployment and Service instead of the Gateway's name.
pub const NAME_OVERRIDE: &str = "gateway.istio.io/name-override";
/// Annotation naming the ServiceAccount instead of the Gateway's name.
pub const SERVICE_ACCOUNT: &str = "gateway.istio.io/service-account";
/// The port and protocol of the one listener a waypoint expects.
pub const HBONE_PORT: u16 = 15008;
/// The protocol of that listener.
pub const HBONE_PROTOCOL: &str = "HBONE";

/// Why a Gateway of the waypoint class is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GatewayError {
    /// No `metadata.name` (or namespace): nothing can be named after it.
    #[error("gateway in namespace {namespace:?} has no metadata.name")]
    NoName {
        /// Its namespace, if any.
        namespace: String,
    },
    /// No `metadata.uid`: the owner references that make its objects go with it need one.
    #[error("gateway {gateway} has no metadata.uid")]
    NoUid {
        /// `namespace/name`.
        gateway: String,
    },
    /// `spec.listeners` is not a list of listeners with a name, a port and a protocol.
    #[error("gateway {gateway}: spec.listeners{field}: {detail}")]
    Listeners {
        /// `namespace/name`.
        gateway: String,
        /// Where in the listeners (`[1].port`).
        field: String,
        /// What is wrong.
        detail: &'static str,
    },
    /// A naming annotation whose value cannot name a Kubernetes object.
    #[error("gateway {gateway}: annotation {annotation}={value:?} is no DNS-1123 label")]
    Annotation {
        /// `namespace/name`.
        gateway: String,
        /// The annotation.
        annotation: &'static str,
        /// Its value.
        value: String,
    },
}

impl GatewayError {
    /// The `reason` label of `marrow_controller_gateways_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            GatewayError::NoName { .. } => "no_name",
            GatewayError::NoUid { .. } => "no_uid",
            GatewayError::Listeners { .. } => "listeners",
            GatewayError::Annotation { .. } => "annotation",
        }
    }
}

/// One listener of a waypoint Gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// `name` (a section name).
    pub name: String,
    /// `port`.
    pub port: u16,
    /// `protocol`, as written (`HBONE`).
    pub protocol: String,
}

impl Listener {
    /// Whether istiod flags it: anything but port 15008 with protocol HBONE
    /// (pilot/pkg/config/kube/gateway/conversion.go `unexpectedWaypointListener`).
    pub fn unexpected(&self) -> bool {
        self.port != HBONE_PORT || self.protocol != HBONE_PROTOCOL
    }
}

/// A Gateway of the waypoint class, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Waypoint {
    /// Its namespace (where its objects go).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid, for owner references.
    pub uid: String,
    /// `metadata.generation`, for `observedGeneration`.
    pub generation: Option<i64>,
    /// `spec.gatewayClassName`.
    pub class: String,
    /// Its labels, copied onto its objects as istiod copies them.
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Name of the Deployment and the Service.
    pub deployment_name: String,
    /// Name of the ServiceAccount (the waypoint's identity `ns/<ns>/sa/<this>`).
    pub service_account: String,
    /// Its listeners, in order.
    pub listeners: Vec<Listener>,
    /// Its `status` as last written.
    pub status: Value,
}

impl Waypoint {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The host name of its Service, `<name>.<ns>.svc.<domain>`.
    pub fn host(&self, cluster_domain: &str) -> String {
        format!(
            "{}.{}.svc.{cluster_domain}",
            self.deployment_name, self.namespace
        )
    }
}

/// A string map (`labels`, `annotations`); anything else reads as empty (the API server only
/// serves string maps there).
fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `s` is a DNS-1123 label (what a Deployment, Service or ServiceAccount may be named
/// for all three to be valid).
fn dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first() != Some(&b'-')
        && bytes.last() != Some(&b'-')
}

/// Reads a Gateway (as the API server serves it): `Ok(None)` for another class (not ours),
/// the checked waypoint, or why it is refused.
///
/// # Errors
/// A waypoint Gateway that cannot be rendered, naming the field.
pub fn parse(object: &Value) -> Result<Option<Waypoint>, GatewayError> {
    if object["spec"]["gatewayClassName"] != WAYPOINT_CLASS {
        return Ok(None);
    }
    let meta = &object["metadata"];
    let namespace = meta["namespace"].as_str().unwrap_or_default().to_owned();
    let name = match meta["name"].as_str() {
        Some(name) if !name.is_empty() && !namespace.is_empty() => name.to_owned(),
        _ => return Err(GatewayError::NoName { namespace }),
    };
    let gateway = format!("{namespace}/{name}");
    let uid = match meta["uid"].as_str() {
        Some(uid) if !uid.is_empty() => uid.to_owned(),
        _ => return Err(GatewayError::NoUid { gateway }),
    };
    let annotations = string_map(&meta["annotations"]);
    let named = |annotation: &'static str| match annotations.get(annotation) {
        None => Ok(None),
        Some(value) if dns_label(value) => Ok(Some(value.clone())),
        Some(value) => Err(GatewayError::Annotation {
            gateway: gateway.clone(),
            annotation,
            value: value.clone(),
        }),
    };
    // istiod names the objects after the Gateway (no class suffix for waypoints), unless an
    // annotation says otherwise (gatewaycommon/deploymentcontroller.go `configureIstioGateway`).
    // The Gateway's own name must fit a Service name when no override is given.
    let deployment_name = match named(NAME_OVERRIDE)? {
        Some(name) => name,
        None if dns_label(&name) => name.clone(),
        None => {
            return Err(GatewayError::Annotation {
                gateway,
                annotation: NAME_OVERRIDE,
                value: String::new(),
            });
        }
    };
    let service_account = named(SERVICE_ACCOUNT)?.unwrap_or_else(|| deployment_name.clone());
    let listeners = listeners(&gateway, &object["spec"]["listeners"])?;
    Ok(Some(Waypoint {
        namespace,
        name,
        uid,
        generation: meta["generation"].as_i64(),
        class: WAYPOINT_CLASS.to_owned(),
        labels: string_map(&meta["labels"]),
        annotations,
        deployment_name,
        service_account,
        listeners,
        status: object["status"].clone(),
    }))
}

/// `spec.listeners`: a non-empty list (the Gateway API requires one) of listeners.
fn listeners(gateway: &str, value: &Value) -> Result<Vec<Listener>, GatewayError> {
    let bad = |field: String, detail: &'static str| GatewayError::Listeners {
        gateway: gateway.to_owned(),
        field,
        detail,
    };
    let Some(list) = value.as_array() else {
        return Err(bad(String::new(), "expected a list of listeners"));
    };
    if list.is_empty() {
        return Err(bad(String::new(), "expected at least one listener"));
    }
    list.iter()
        .enumerate()
        .map(|(i, l)| {
            let name = l["name"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| bad(format!("[{i}].name"), "expected a non-empty string"))?;
            let port = l["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0)
                .ok_or_else(|| bad(format!("[{i}].port"), "expected a port number 1-65535"))?;
            let protocol = l["protocol"]
                .as_str()
                .filter(|p| !p.is_empty())
                .ok_or_else(|| bad(format!("[{i}].protocol"), "expected a non-empty string"))?;
            Ok(Listener {
                name: name.to_owned(),
                port,
                protocol: protocol.to_owned(),
            })
        })
        .collect()
}
