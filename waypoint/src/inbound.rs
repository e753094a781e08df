//! HBONE in: mutual TLS as the waypoint's identity, then HTTP/2 CONNECT streams. Each CONNECT
//! names the original destination ([`crate::target`]); a known one is accepted (200) and its
//! bytes handled by protocol — HTTP proxied ([`crate::forward`]), TCP relayed
//! ([`crate::relay`]), undeclared sniffed first ([`crate::sniff`]); any other is refused
//! with 400 and a log line naming it.

use std::net::SocketAddr;
use std::sync::Arc;

use marrow_mesh::drain::Drain;
use marrow_mesh::hbone::{self, IncomingConnect, Refusal};
use marrow_mesh::identity::SpiffeId;
use marrow_mesh::state::protocol::Protocol;
use marrow_mesh::tls;
use tokio::net::{TcpListener, TcpStream};

use crate::client::OriginalClient;
use crate::context::Context;
use crate::outcome::RequestOutcome;
use crate::record::record;
use crate::sniff::{Rewind, Sniffed, sniff};
use crate::target::{self, Destination};

/// Accepts HBONE connections on `listener` until the drain starts.
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, drain: Drain) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = drain.started() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "hbone accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        let connection_drain = drain.clone();
        drain.spawn(async move { connection(tcp, peer, ctx, connection_drain).await });
    }
}

/// One HBONE connection: TLS, then its CONNECT streams.
async fn connection(tcp: TcpStream, peer: SocketAddr, ctx: Arc<Context>, drain: Drain) {
    let _ = tcp.set_nodelay(true);
    let local_ip = tcp.local_addr().map(|a| a.ip().to_canonical()).ok();
    let config = match ctx.server_tls().await {
        Ok(config) => config,
        Err(error) => {
            tracing::warn!(%error, %peer, "no certificate to serve hbone with");
            return;
        }
    };
    let handshake = tokio::time::timeout(ctx.limits.handshake_timeout, tls::accept(config, tcp));
    let stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::info!(%error, %peer, "hbone tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "hbone tls handshake timed out");
            return;
        }
    };
    let identity = match tls::peer_identity(stream.get_ref().1, &ctx.trust_domain) {
        Ok(identity) => identity,
        Err(error) => {
            tracing::info!(%error, %peer, "hbone peer has no usable identity");
            return;
        }
    };
    let own_ips: Vec<std::net::IpAddr> = local_ip.into_iter().collect();
    let streams_drain = drain.clone();
    let result = hbone::serve(
        stream,
        ctx.limits.handshake_timeout,
        drain.started(),
        move |incoming| {
            let ctx = ctx.clone();
            let identity = identity.clone();
            let own_ips = own_ips.clone();
            let drain = streams_drain.clone();
            async move { tunnel(incoming, ctx, identity, peer, &own_ips, drain).await }
        },
    )
    .await;
    if let Err(error) = result {
        tracing::debug!(%error, %peer, "hbone connection ended");
    }
}

/// One CONNECT: resolve the target, then proxy by protocol.
async fn tunnel(
    incoming: IncomingConnect,
    ctx: Arc<Context>,
    identity: SpiffeId,
    peer: SocketAddr,
    own_ips: &[std::net::IpAddr],
    drain: Drain,
) {
    let snap = ctx.state.snapshot();
    let client = OriginalClient::of(
        &incoming.target,
        identity,
        peer,
        &snap,
        ctx.telemetry.cluster_id(),
    );
    let authority = incoming.target.authority;
    let dest = match target::resolve(&snap, &ctx.gateway, authority, own_ips) {
        Ok(dest) => dest,
        Err(error) => {
            tracing::info!(target = %authority, client = %client.identity, %error, "connect refused; answering 400");
            let mut outcome = RequestOutcome::start(
                Some(client.identity.clone()),
                Some(client.addr),
                authority,
                None,
                ctx.trust_domain.clone(),
            );
            outcome.status = 400;
            outcome.flag = Some(marrow_mesh::telemetry::ResponseFlag::NoRoute);
            record(&ctx, outcome);
            incoming.refuse(Refusal::BadRequest);
            return;
        }
    };
    drop(snap);
    let stream = match incoming.accept() {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%error, target = %authority, "answering the connect failed");
            return;
        }
    };
    handle(stream, ctx, dest, client, drain).await;
}

/// Proxies an accepted tunnel by its destination's protocol.
async fn handle(
    mut stream: hbone::H2Stream,
    ctx: Arc<Context>,
    dest: Destination,
    client: OriginalClient,
    drain: Drain,
) {
    match dest.protocol() {
        protocol if protocol.is_http() => {
            crate::forward::serve(stream, ctx, dest, client, drain).await;
        }
        Protocol::Unspecified => {
            let limits = ctx.limits;
            let (sniffed, read) =
                match sniff(&mut stream, limits.sniff_bytes, limits.sniff_timeout).await {
                    Ok(sniffed) => sniffed,
                    Err(error) => {
                        tracing::debug!(%error, "tunnel closed while sniffing");
                        return;
                    }
                };
            let stream = Rewind::new(read, stream);
            match sniffed {
                Sniffed::Http => crate::forward::serve(stream, ctx, dest, client, drain).await,
                Sniffed::Opaque => crate::relay::relay(stream, ctx, dest, client).await,
            }
        }
        _ => crate::relay::relay(stream, ctx, dest, client).await,
    }
}
