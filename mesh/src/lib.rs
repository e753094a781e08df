//! The core every marrow program shares (the node proxy, the CA and the waypoint; the ingress
//! gateway next): who a workload is and how it proves it, the tunnel between proxies, what the
//! cluster looks like and what its policies say.
//!
//! Layers, each importing only from those below it (an xtask test checks there is no circle):
//! [`objects`] (the Kubernetes vocabulary) → [`identity`] → [`tls`] → [`hbone`] → [`dial`]
//! (an HBONE connection to a peer, over TLS);
//! [`objects`] → [`policy`] (pure: parse and evaluate Istio's security objects) and [`traffic`]
//! (pure: routes and DestinationRules) → [`resilience`] (outlier detection, circuit breakers,
//! load balancers: reads traffic, never state) and [`state`] (the
//! snapshot store and its file source) → [`apiserver`] (the Kubernetes source) and [`explain`];
//! [`telemetry`] (Istio's metric labels and response flags, request metrics, access log)
//! reads identity and state; [`trace`] (trace context, spans, OTLP export) reads telemetry;
//! [`http`] (metrics and readiness servers), [`drain`] (shutdown signals) and [`path`] (request
//! path normalization, which [`policy`] matches against) stand alone; [`program`] (the start-up
//! the programs share: logging, listeners, certificates, the state source) sits on top.

pub mod apiserver;
pub mod dial;
pub mod drain;
pub mod explain;
pub mod hbone;
pub mod http;
pub mod identity;
pub mod objects;
pub mod path;
pub mod policy;
pub mod program;
pub mod resilience;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod traffic;
