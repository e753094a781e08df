//! L4: a tunnel whose bytes the waypoint does not read (TCP ports, unsniffable traffic) goes
//! whole to one endpoint, bytes both ways.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::client::OriginalClient;
use crate::context::Context;
use crate::outcome::RequestOutcome;
use crate::record::record;
use crate::target::Destination;
use crate::upstream::UpstreamError;

/// Relays `io` to an endpoint of `dest` until either side closes.
pub async fn relay<IO>(mut io: IO, ctx: Arc<Context>, dest: Destination, client: OriginalClient)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut outcome = RequestOutcome::start(
        Some(client.identity.clone()),
        Some(client.addr),
        dest.authority(),
        dest.service().cloned(),
        ctx.trust_domain.clone(),
    );
    let endpoint = match &dest {
        Destination::Service(service) => ctx.upstreams.balancer.pick(&service.endpoints),
        Destination::Workload { addr, .. } => Some(*addr),
    };
    let Some(endpoint) = endpoint else {
        let error = UpstreamError::NoEndpoint(dest.service_host().unwrap_or_default());
        tracing::info!(%error, "no upstream for a tcp tunnel");
        outcome.flag = Some(error.flag());
        record(&ctx, outcome);
        return;
    };
    outcome.upstream = Some(endpoint);
    let _active = ctx.upstreams.balancer.start(endpoint);
    let snap = ctx.state.snapshot();
    let mut upstream = match ctx
        .upstreams
        .tunnel(&snap, endpoint, &client, dest.service_host())
        .await
    {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::info!(%error, "tcp tunnel to the endpoint failed");
            outcome.flag = Some(error.flag());
            record(&ctx, outcome);
            return;
        }
    };
    drop(snap);
    match tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
        Ok((sent, received)) => {
            outcome.bytes_in = sent;
            outcome.bytes_out = received;
        }
        Err(error) => {
            tracing::debug!(%error, "tcp relay ended with an error");
            outcome.flag = Some(marrow_mesh::telemetry::ResponseFlag::UpstreamTermination);
        }
    }
    record(&ctx, outcome);
}
