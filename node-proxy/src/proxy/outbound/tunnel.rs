//! Carrying a planned connection in HBONE, with L4 traffic management's retry: a failed
//! connect to a Service endpoint is reported to its outlier detector and planned again once,
//! avoiding that endpoint.

use tokio::net::TcpStream;

use super::super::l4::{self, ServiceTry};
use super::super::record::ConnectionRecord;
use super::super::{PodMesh, relay};
use super::{Choice, From, OutboundError, Plan, PodContext, TunnelPlan, passthrough, refuse};
use crate::metrics::RetryLabels;
use marrow_mesh::hbone::pool::{PoolKey, PooledStream};
use marrow_mesh::hbone::{HboneError, TransportFailure};
use marrow_mesh::resilience::Outcome;
use marrow_mesh::telemetry::Reporter;

/// Carries a connection by `plan`; a failed connect to a Service endpoint is planned again,
/// once, avoiding that endpoint (same TCPRoute draw, so the same backend Service), before the
/// client sees a failure. The failed try's record is logged as retried and counted nowhere.
pub(super) async fn carry(
    ctx: &PodContext,
    mesh: &PodMesh,
    client: TcpStream,
    plan: Plan,
    from: From,
) {
    let mut plan = plan;
    loop {
        // Out of its box at once: the box would otherwise live as long as the connection.
        let tunnel_plan = match plan {
            Plan::Tunnel(tunnel_plan) => *tunnel_plan,
            Plan::Passthrough(record, dst) => return passthrough(ctx, client, record, dst).await,
            Plan::Refuse(record, error) => return refuse(record, client, *error),
        };
        match open_tunnel(mesh, tunnel_plan).await {
            Ok((record, stream, service_try)) => {
                // The connection holds its `maxConnections` slot and its least-request count
                // until it ends.
                let _held = service_try;
                return relay(record, client, stream, ctx.settings.tcp_copy).await;
            }
            Err(failed) => {
                let Some(choice) = failed.retry else {
                    return refuse(failed.record, client, failed.error);
                };
                let labels = RetryLabels {
                    reporter: Reporter::Source,
                    destination_service: failed.service,
                    retry_on: "connect-failure",
                };
                mesh.context.metrics.retries.get_or_create(&labels).inc();
                tracing::info!(error = %failed.error, endpoint = ?choice.avoid, "connect failed; retrying on another endpoint");
                failed.record.retried(&failed.error);
                plan = super::plan(ctx, mesh, &mesh.context.state.snapshot(), from, choice);
            }
        }
    }
}

/// A try that did not open its tunnel.
struct Failed {
    record: ConnectionRecord,
    error: OutboundError,
    /// How to try again, when it may be.
    retry: Option<Choice>,
    /// The Service host tried (the retry's label), empty when there is no retry.
    service: String,
}

/// Opens a tunnel for `plan`: this pod's certificate, looked up once (its expiry picks the
/// pooled connection, and a new pooled connection is made with it), a tunnel from the pod's
/// pool within the destination's connect timeout if it sets one. A Service endpoint's outcome
/// goes to its outlier detector.
async fn open_tunnel(
    mesh: &PodMesh,
    plan: TunnelPlan,
) -> Result<(ConnectionRecord, PooledStream, Option<ServiceTry>), Box<Failed>> {
    let TunnelPlan {
        record,
        source,
        server,
        target,
        request,
        service_try,
    } = plan;
    let cert = match mesh.context.certs.get(&source).await {
        Ok(cert) => cert,
        Err(error) => {
            tracing::warn!(%source, %error, "no certificate; refusing");
            mesh.context.metrics.hbone_failed("outbound", "certificate");
            let error = OutboundError::NoCertificate {
                id: source,
                source: error,
            };
            return Err(Box::new(Failed {
                record,
                error,
                retry: None,
                service: String::new(),
            }));
        }
    };
    let certificate_epoch = cert
        .not_after()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let key = PoolKey {
        source,
        destination: target,
        server,
        certificate_epoch,
    };
    let opening = mesh.pool.tunnel(&key, &cert, &request);
    // `connectTimeout` bounds the whole opening here (TCP, TLS and CONNECT on a new pooled
    // connection; the CONNECT alone on a pooled one): the global dial timeout stays in force
    // inside it.
    let opened = match service_try.as_ref().and_then(ServiceTry::connect_timeout) {
        Some(limit) => tokio::time::timeout(limit, opening)
            .await
            .unwrap_or_else(|_| Err(connect_timed_out())),
        None => opening.await,
    };
    match opened {
        Ok(stream) => {
            if let Some(service_try) = &service_try {
                service_try.report(Outcome::Success);
            }
            Ok((record, stream, service_try))
        }
        Err(error) => {
            let connect_failed = l4::is_connect_failure(&error);
            let retry = service_try.filter(|_| connect_failed).and_then(|t| {
                t.report(Outcome::ConnectFailure);
                let elsewhere = t.backend.endpoints.iter().any(|e| *e != t.endpoint);
                (elsewhere && !t.retried).then(|| {
                    (
                        Choice {
                            draw: t.draw,
                            avoid: Some(t.endpoint),
                        },
                        t.backend.host(),
                    )
                })
            });
            let (retry, service) = retry.map_or((None, String::new()), |(c, s)| (Some(c), s));
            Err(Box::new(Failed {
                record,
                error: OutboundError::Tunnel(error),
                retry,
                service,
            }))
        }
    }
}

/// The error of a tunnel not opened within the destination's `connectTimeout`: a transport
/// timeout, as the dial's own.
fn connect_timed_out() -> HboneError {
    HboneError::Transport {
        failure: TransportFailure::ConnectTimeout,
        step: "connect within the destination rule's connectTimeout".into(),
        source: std::io::ErrorKind::TimedOut.into(),
    }
}
