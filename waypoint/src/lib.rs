//! marrow's waypoint: the L7 hop Istio ambient puts in front of the Services (or workloads)
//! that opt in. Node proxies send it their traffic over HBONE with `CONNECT <original
//! destination>`; it terminates mutual TLS as `spiffe://<td>/ns/<gateway ns>/sa/<sa>`, reads
//! HTTP/1.1 and HTTP/2 (gRPC included), authorizes and records each request, and forwards it
//! over HBONE to an endpoint chosen least-request, through that endpoint's node proxy.
//!
//! Modules, in the order a tunnel meets them: [`inbound`] (TLS, CONNECT), [`target`] (what the
//! CONNECT names), [`sniff`] (undeclared protocols), [`forward`] (HTTP) or [`relay`] (TCP),
//! [`authz`] and [`outcome`] (the policy and telemetry seams), [`route`] (the routes:
//! backends, rewrites, retries, timeouts, faults, mirrors), [`balance`] and [`upstream`]
//! (the way out). [`app`] assembles the program from its [`config`].

pub mod app;
pub mod authz;
pub mod balance;
pub mod body;
pub mod client;
pub mod config;
pub mod context;
mod error;
pub mod forward;
pub mod gateway;
pub mod guard_io;
pub mod headers;
pub mod inbound;
pub mod outcome;
pub mod record;
pub mod relay;
pub mod route;
pub mod sniff;
pub mod target;
pub mod telemetry;
pub mod upstream;

pub use error::WaypointError;
