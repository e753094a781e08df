//! A pod's in-pod listeners (15001 outbound, 15006 plaintext inbound, 15008 HBONE, per address
//! family the pod has), opened inside its network namespace.

use marrow_common::{HBONE_PORT, INBOUND_PORT};

use super::PodListener;
use crate::proxy::Direction;
use crate::socket;

/// The in-pod listeners of one pod.
pub(super) struct Listeners {
    outbound_v4: Option<std::net::TcpListener>,
    inbound_v4: Option<std::net::TcpListener>,
    hbone_v4: Option<std::net::TcpListener>,
    outbound_v6: Option<std::net::TcpListener>,
    inbound_v6: Option<std::net::TcpListener>,
    hbone_v6: Option<std::net::TcpListener>,
}

impl Listeners {
    pub(super) fn into_vec(self) -> Vec<PodListener> {
        [
            (Direction::Outbound, false, self.outbound_v4),
            (Direction::InboundPlaintext, false, self.inbound_v4),
            (Direction::InboundTunnel, false, self.hbone_v4),
            (Direction::Outbound, true, self.outbound_v6),
            (Direction::InboundPlaintext, true, self.inbound_v6),
            (Direction::InboundTunnel, true, self.hbone_v6),
        ]
        .into_iter()
        .filter_map(|(direction, ipv6, socket)| {
            socket.map(|socket| PodListener {
                direction,
                ipv6,
                socket,
            })
        })
        .collect()
    }
}

/// Runs inside the pod netns.
pub(super) fn open_listeners(v4: bool, v6: bool) -> std::io::Result<Listeners> {
    let open = |wanted: bool, addr| {
        if wanted {
            socket::listener(addr).map(Some)
        } else {
            Ok(None)
        }
    };
    Ok(Listeners {
        outbound_v4: open(v4, socket::outbound_listen_addr(false))?,
        inbound_v4: open(v4, socket::wildcard_addr(false, INBOUND_PORT))?,
        hbone_v4: open(v4, socket::wildcard_addr(false, HBONE_PORT))?,
        outbound_v6: open(v6, socket::outbound_listen_addr(true))?,
        inbound_v6: open(v6, socket::wildcard_addr(true, INBOUND_PORT))?,
        hbone_v6: open(v6, socket::wildcard_addr(true, HBONE_PORT))?,
    })
}
