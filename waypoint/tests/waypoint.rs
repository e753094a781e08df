//! The waypoint end to end on loopback: a client pod's HBONE tunnel in, HTTP (1.1, 2, gRPC,
//! WebSocket) or TCP through, HBONE out to fake node proxies in front of echo apps; and hostile
//! clients answered without disturbing anyone else.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed step must fail the test loudly"
)]

#[path = "waypoint/authz.rs"]
mod authz;
#[path = "waypoint/destination_rules.rs"]
mod destination_rules;
mod harness;
#[path = "waypoint/hostile.rs"]
mod hostile;
#[path = "waypoint/proxying.rs"]
mod proxying;
#[path = "waypoint/routing.rs"]
mod routing;
#[path = "waypoint/routing_policies.rs"]
mod routing_policies;
#[path = "waypoint/telemetry.rs"]
mod telemetry;
