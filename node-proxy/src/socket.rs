//! Socket construction for the data path: in-pod listeners, marked upstream connections,
//! source-preserving (transparent) connections, and `SO_ORIGINAL_DST`.
//!
//! Every function that creates a socket is synchronous and is meant to run inside
//! [`crate::netns::PodNetns::run`]; connecting happens afterwards on the runtime.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// `SO_ORIGINAL_DST` (`SOL_IP`) and `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`) share this number.
const SO_ORIGINAL_DST: libc::c_int = 80;
/// Listen backlog of the in-pod listeners.
const BACKLOG: i32 = 1024;

/// A non-blocking TCP listener with `SO_REUSEADDR` and `SO_REUSEPORT`, so that a new proxy
/// version can bind the same in-pod ports while the old one drains.
pub fn listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// An unconnected, non-blocking TCP socket for `family_of`, carrying `mark`.
pub fn marked_socket(family_of: SocketAddr, mark: u32) -> io::Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(family_of),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    sock.set_mark(mark)?;
    sock.set_tcp_nodelay(true)?;
    Ok(sock)
}

/// A socket bound to `source` (an address that is not local: the client's, with a port the
/// caller chose; see `proxy::source_port`), carrying `mark`. `SO_REUSEADDR` lets the bind
/// succeed over TIME_WAIT and over the proxy's other connections from the same client address;
/// the kernel still refuses a duplicate 4-tuple at `connect()` (`EADDRNOTAVAIL`).
/// `SO_BINDTODEVICE lo` matches the pod-netns route that carries the inbound mark, and lets
/// `tcp_tw_reuse=2` (loopback only) recycle the port once its TIME_WAIT is old enough.
pub fn transparent_socket(source: SocketAddr, mark: u32) -> io::Result<Socket> {
    let sock = marked_socket(source, mark)?;
    match source {
        SocketAddr::V4(_) => sock.set_ip_transparent_v4(true)?,
        SocketAddr::V6(_) => set_ipv6_transparent(&sock)?,
    }
    sock.set_reuse_address(true)?;
    sock.bind_device(Some(b"lo"))?;
    sock.bind(&source.into())?;
    Ok(sock)
}

/// Connects a prepared non-blocking socket on the runtime.
pub async fn connect(sock: Socket, dst: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let std_stream: std::net::TcpStream = sock.into();
    tokio::net::TcpSocket::from_std_stream(std_stream)
        .connect(dst)
        .await
}

/// The destination an outbound connection had before `connect4`/`connect6` redirected it,
/// answered by the `cgroup/getsockopt` program exactly as iptables' `SO_ORIGINAL_DST` would be.
pub fn original_dst(fd: BorrowedFd<'_>, accepted_v6: bool) -> io::Result<SocketAddr> {
    let level = if accepted_v6 {
        libc::SOL_IPV6
    } else {
        libc::SOL_IP
    };
    // SAFETY: `try_init` hands us zeroed storage and its length; getsockopt fills at most that.
    let ((), addr) = unsafe {
        SockAddr::try_init(|storage, len| {
            if libc::getsockopt(fd.as_raw_fd(), level, SO_ORIGINAL_DST, storage.cast(), len) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        })
    }?;
    addr.as_socket().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "original destination is not an IP address",
        )
    })
}

fn set_ipv6_transparent(sock: &Socket) -> io::Result<()> {
    setsockopt_int(sock, libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)
}

fn setsockopt_int(
    sock: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Normalises an IPv4-mapped IPv6 socket address to IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// The loopback listen address of the outbound port for a family.
pub fn outbound_listen_addr(v6: bool) -> SocketAddr {
    let port = marrow_common::OUTBOUND_PORT;
    if v6 {
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, port, 0, 0))
    } else {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
    }
}

/// The wildcard listen address of `port` for a family.
pub fn wildcard_addr(v6: bool, port: u16) -> SocketAddr {
    if v6 {
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0))
    } else {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port))
    }
}

/// Closes a TCP stream with a reset (`SO_LINGER` 0), so that the client sees the same failure
/// it would have seen from the app (refused/reset) instead of a clean end of stream.
pub fn reset(stream: tokio::net::TcpStream) {
    if let Ok(std_stream) = stream.into_std() {
        let sock = Socket::from(std_stream);
        let _ = sock.set_linger(Some(std::time::Duration::ZERO));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_normalised() {
        let mapped: SocketAddr = "[::ffff:10.1.2.3]:80".parse().unwrap();
        assert_eq!(canonical(mapped), "10.1.2.3:80".parse().unwrap());
        let v6: SocketAddr = "[fd00::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn listeners_share_a_port_for_upgrades() {
        let a = listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = a.local_addr().unwrap().port();
        let b = listener(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
        assert!(b.is_ok(), "SO_REUSEPORT lets a second listener bind: {b:?}");
    }

    #[test]
    fn original_dst_without_capture_is_an_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        use std::os::fd::AsFd;
        assert!(original_dst(c.as_fd(), false).is_err());
    }
}
