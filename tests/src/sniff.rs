//! A packet sniffer for the underlay between nodes: an `AF_PACKET` socket bound to one
//! interface inside a node's netns that records the TCP segments of IPv4 and IPv6 frames
//! (addresses, ports, sequence number, flags, payload) until it is stopped. With it:
//! reassembly of one direction of a connection into its byte stream, a search for plaintext
//! across everything seen, and a walk over TLS records, to tell ciphertext from plaintext.
//!
//! Invariants: the socket is opened by a thread that has entered the netns (so it names that
//! namespace's interface), and it is bound before [`Sniffer::start`] returns, so nothing sent
//! afterwards is missed for lack of a socket; dropping the [`Sniffer`] stops the thread and
//! closes the socket. Headers are parsed here, not by the kernel: a frame that does not parse
//! as Ethernet + IPv4/IPv6 + TCP is skipped.

use std::ffi::CString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::netns::Netns;

/// TCP FIN.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK.
pub const TCP_ACK: u8 = 0x10;

/// TLS record type `change_cipher_spec`.
pub const TLS_CHANGE_CIPHER_SPEC: u8 = 20;
/// TLS record type `alert`.
pub const TLS_ALERT: u8 = 21;
/// TLS record type `handshake`.
pub const TLS_HANDSHAKE: u8 = 22;
/// TLS record type `application_data`.
pub const TLS_APPLICATION_DATA: u8 = 23;
/// Largest TLS ciphertext record body (RFC 8446 §5.2: 2^14 + 256).
const TLS_MAX_RECORD: u16 = (1 << 14) + 256;

/// Receive buffer per frame: GSO/GRO frames on a veth can reach 64 KiB and more.
const FRAME_BUFFER: usize = 256 * 1024;
/// Socket receive buffer asked for, so an 8 MiB transfer is not dropped while we copy.
const SOCKET_BUFFER: libc::c_int = 64 * 1024 * 1024;
/// How often the capture thread checks whether it should stop.
const POLL: Duration = Duration::from_millis(100);
/// `SO_RCVBUFFORCE` (asm-generic; root may exceed `rmem_max`).
const SO_RCVBUFFORCE: libc::c_int = 33;
/// `PACKET_STATISTICS` (linux/if_packet.h).
const PACKET_STATISTICS: libc::c_int = 6;

/// One TCP segment seen on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Sequence number.
    pub seq: u32,
    /// The flags byte (`TCP_SYN`, …).
    pub flags: u8,
    /// The TCP payload.
    pub payload: Vec<u8>,
    /// The frame was longer than the receive buffer: the payload is cut.
    pub truncated: bool,
}

/// One direction of a TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
}

impl std::fmt::Display for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.src, self.dst)
    }
}

/// A direction's bytes in sequence order, up to the first hole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    /// The contiguous bytes from the start of the flow (or of the capture).
    pub bytes: Vec<u8>,
    /// Whether bytes are missing after `bytes` (a hole in the capture or a truncated frame).
    pub gap: bool,
}

/// What a sniffer saw.
#[derive(Clone, Debug, Default)]
pub struct Capture {
    /// Every TCP segment, in capture order.
    pub segments: Vec<Segment>,
    /// Frames the kernel dropped because the socket's buffer was full (known once stopped).
    pub dropped: u32,
}

/// A running capture on one interface; stopped (thread joined, socket closed) on drop.
#[derive(Debug)]
pub struct Sniffer {
    ifname: String,
    stop: Arc<AtomicBool>,
    segments: Arc<Mutex<Vec<Segment>>>,
    thread: Option<JoinHandle<Result<u32, String>>>,
}

impl Sniffer {
    /// Starts capturing every frame in and out of `ifname` in `netns`.
    ///
    /// # Panics
    /// When the socket cannot be opened or bound (no such interface, not root).
    pub fn start(netns: &Netns, ifname: &str) -> Sniffer {
        let ns = netns.open();
        let stop = Arc::new(AtomicBool::new(false));
        let segments = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = channel();
        let thread = {
            let (stop, segments, ifname) = (stop.clone(), segments.clone(), ifname.to_owned());
            std::thread::Builder::new()
                .name(format!("sniff-{ifname}"))
                .spawn(move || {
                    // SAFETY: setns affects only this thread; the fd is valid while `ns` lives.
                    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        let e = std::io::Error::last_os_error();
                        let _ = ready_tx.send(Err(format!("setns: {e}")));
                        return Err(e.to_string());
                    }
                    drop(ns);
                    let socket = match open_socket(&ifname) {
                        Ok(socket) => socket,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e.clone()));
                            return Err(e);
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    capture_loop(&socket, &stop, &segments)?;
                    Ok(dropped(&socket))
                })
                .expect("cannot start the sniffer thread")
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("cannot sniff {ifname} in {}: {e}", netns.name()),
            Err(_) => panic!("the sniffer on {ifname} did not start"),
        }
        Sniffer {
            ifname: ifname.to_owned(),
            stop,
            segments,
            thread: Some(thread),
        }
    }

    /// The interface captured.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// A copy of what has been seen so far (capture continues).
    pub fn snapshot(&self) -> Capture {
        Capture {
            segments: self
                .segments
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            dropped: 0,
        }
    }

    /// Stops the capture and returns everything seen.
    ///
    /// # Panics
    /// When the capture thread failed (its error).
    pub fn stop(mut self) -> Capture {
        let dropped = self
            .join()
            .unwrap_or_else(|e| panic!("sniffer failed: {e}"));
        let segments =
            std::mem::take(&mut *self.segments.lock().unwrap_or_else(PoisonError::into_inner));
        Capture { segments, dropped }
    }

    fn join(&mut self) -> Result<u32, String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err("the capture thread panicked".to_owned())),
            None => Ok(0),
        }
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            eprintln!("warning: sniffer on {}: {e}", self.ifname);
        }
    }
}

/// A packet socket bound to `ifname` (in the calling thread's netns), all protocols, with a
/// large buffer and a receive timeout of [`POLL`].
fn open_socket(ifname: &str) -> Result<OwnedFd, String> {
    let os = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let name = CString::new(ifname).map_err(|_| format!("bad interface name {ifname:?}"))?;
    // SAFETY: plain system calls on values we own; the fd is wrapped at once.
    unsafe {
        // Protocol 0 receives nothing until bind() names the interface and ETH_P_ALL, so no
        // frame of another interface is queued in between.
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(os("socket(AF_PACKET)"));
        }
        let socket = OwnedFd::from_raw_fd(fd);
        let index = libc::if_nametoindex(name.as_ptr());
        if index == 0 {
            return Err(os(&format!("interface {ifname}")));
        }
        let size = SOCKET_BUFFER;
        let size_ptr = (&raw const size).cast();
        let size_len = std::mem::size_of_val(&size) as libc::socklen_t;
        if libc::setsockopt(fd, libc::SOL_SOCKET, SO_RCVBUFFORCE, size_ptr, size_len) != 0 {
            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, size_ptr, size_len);
        }
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: libc::suseconds_t::try_from(POLL.as_micros()).unwrap_or(100_000),
        };
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of_val(&timeout) as libc::socklen_t,
        );
        if rc != 0 {
            return Err(os("SO_RCVTIMEO"));
        }
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = libc::c_int::try_from(index).map_err(|_| "ifindex overflow")?;
        let rc = libc::bind(
            fd,
            (&raw const addr).cast(),
            std::mem::size_of_val(&addr) as libc::socklen_t,
        );
        if rc != 0 {
            return Err(os(&format!("bind to {ifname}")));
        }
        Ok(socket)
    }
}

fn capture_loop(
    socket: &OwnedFd,
    stop: &AtomicBool,
    segments: &Mutex<Vec<Segment>>,
) -> Result<(), String> {
    let mut buf = vec![0u8; FRAME_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: the buffer is ours and `buf.len()` long; MSG_TRUNC makes the result the
        // frame's real length, which may exceed it.
        let n = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        let Ok(len) = usize::try_from(n) else {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(format!("recv: {e}")),
            }
        };
        if let Some(mut segment) = parse_frame(&buf[..len.min(buf.len())]) {
            segment.truncated |= len > buf.len();
            segments
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(segment);
        }
    }
    Ok(())
}

/// Frames dropped for lack of buffer space since the socket opened.
fn dropped(socket: &OwnedFd) -> u32 {
    #[repr(C)]
    struct TpacketStats {
        packets: u32,
        drops: u32,
    }
    let mut stats = TpacketStats {
        packets: 0,
        drops: 0,
    };
    let mut len = std::mem::size_of::<TpacketStats>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `stats`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &raw mut len,
        )
    };
    if rc == 0 { stats.drops } else { 0 }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The TCP segment in an Ethernet frame (VLAN tags skipped), or `None` for anything else or a
/// frame too short for its headers.
pub fn parse_frame(frame: &[u8]) -> Option<Segment> {
    let mut ethertype = be16(frame, 12)?;
    let mut offset = 14;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = be16(frame, offset + 2)?;
        offset += 4;
    }
    let packet = frame.get(offset..)?;
    match ethertype {
        0x0800 => parse_ipv4(packet),
        0x86dd => parse_ipv6(packet),
        _ => None,
    }
}

fn parse_ipv4(p: &[u8]) -> Option<Segment> {
    let first = *p.first()?;
    let header = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || header < 20 || p.len() < header {
        return None;
    }
    // Ethernet pads short frames: the IP length says where the packet ends. A GSO packet may
    // carry 0 there (BIG TCP): then the frame's end is the packet's.
    let total = usize::from(be16(p, 2)?);
    let end = match total {
        0 => p.len(),
        t if t < header => return None,
        t => t.min(p.len()),
    };
    if be16(p, 6)? & 0x1fff != 0 || p[9] != 6 {
        return None; // a later fragment, or not TCP
    }
    let src = Ipv4Addr::from(be32(p, 12)?);
    let dst = Ipv4Addr::from(be32(p, 16)?);
    parse_tcp(src.into(), dst.into(), &p[header..end])
}

fn parse_ipv6(p: &[u8]) -> Option<Segment> {
    if p.first()? >> 4 != 6 || p.len() < 40 {
        return None;
    }
    let payload = usize::from(be16(p, 4)?);
    let end = match payload {
        0 => p.len(), // jumbogram / BIG TCP
        n => (40 + n).min(p.len()),
    };
    let src: [u8; 16] = p[8..24].try_into().ok()?;
    let dst: [u8; 16] = p[24..40].try_into().ok()?;
    let mut next = p[6];
    let mut offset = 40;
    loop {
        match next {
            6 => break,
            // hop-by-hop, routing, destination options: (length + 1) * 8 bytes
            0 | 43 | 60 => {
                next = *p.get(offset)?;
                offset += (usize::from(*p.get(offset + 1)?) + 1) * 8;
            }
            _ => return None, // fragments, ESP, other protocols
        }
    }
    parse_tcp(
        Ipv6Addr::from(src).into(),
        Ipv6Addr::from(dst).into(),
        p.get(offset..end)?,
    )
}

fn parse_tcp(src: IpAddr, dst: IpAddr, t: &[u8]) -> Option<Segment> {
    let header = usize::from(*t.get(12)? >> 4) * 4;
    if header < 20 || t.len() < header {
        return None;
    }
    Some(Segment {
        src: SocketAddr::new(src, be16(t, 0)?),
        dst: SocketAddr::new(dst, be16(t, 2)?),
        seq: be32(t, 4)?,
        flags: t[13],
        payload: t[header..].to_vec(),
        truncated: false,
    })
}

impl Capture {
    /// Every direction seen, in order of first appearance.
    pub fn flows(&self) -> Vec<Flow> {
        let mut flows: Vec<Flow> = Vec::new();
        for s in &self.segments {
            let flow = Flow {
                src: s.src,
                dst: s.dst,
            };
            if !flows.contains(&flow) {
                flows.push(flow);
            }
        }
        flows
    }

    /// The directions whose destination port is `port`.
    pub fn flows_to_port(&self, port: u16) -> Vec<Flow> {
        self.flows()
            .into_iter()
            .filter(|f| f.dst.port() == port)
            .collect()
    }

    /// The directions from or to `port`.
    pub fn flows_with_port(&self, port: u16) -> Vec<Flow> {
        self.flows()
            .into_iter()
            .filter(|f| f.dst.port() == port || f.src.port() == port)
            .collect()
    }

    /// The reverse direction's flow.
    pub fn reverse(flow: Flow) -> Flow {
        Flow {
            src: flow.dst,
            dst: flow.src,
        }
    }

    /// Payload bytes of `flow` as seen (retransmissions counted again).
    pub fn payload_len(&self, flow: Flow) -> usize {
        self.of(flow).map(|s| s.payload.len()).sum()
    }

    fn of(&self, flow: Flow) -> impl Iterator<Item = &Segment> {
        self.segments
            .iter()
            .filter(move |s| s.src == flow.src && s.dst == flow.dst)
    }

    /// `flow`'s byte stream: segments placed by sequence number from the SYN (or, when the SYN
    /// was not seen, from the lowest sequence number), duplicates dropped, up to the first hole.
    pub fn stream(&self, flow: Flow) -> Stream {
        let segments: Vec<&Segment> = self.of(flow).collect();
        let data_seq = |s: &Segment| {
            if s.flags & TCP_SYN != 0 {
                s.seq.wrapping_add(1)
            } else {
                s.seq
            }
        };
        let base = match segments.iter().find(|s| s.flags & TCP_SYN != 0) {
            Some(syn) => syn.seq.wrapping_add(1),
            None => {
                let Some(first) = segments.iter().find(|s| !s.payload.is_empty()) else {
                    return Stream {
                        bytes: Vec::new(),
                        gap: false,
                    };
                };
                // The lowest sequence number, counting from the first one seen (mod 2^32).
                let first_seq = first.seq;
                segments
                    .iter()
                    .filter(|s| !s.payload.is_empty())
                    .map(|s| data_seq(s).wrapping_sub(first_seq) as i32)
                    .min()
                    .map_or(first_seq, |d| first_seq.wrapping_add_signed(d))
            }
        };
        let mut pieces: Vec<(u64, &Segment)> = segments
            .iter()
            .filter(|s| !s.payload.is_empty())
            .filter_map(|s| {
                let offset = data_seq(s).wrapping_sub(base);
                // More than 2 GiB "ahead" is a segment from before `base`.
                (offset < 1 << 31).then_some((u64::from(offset), *s))
            })
            .collect();
        pieces.sort_by_key(|(offset, _)| *offset);
        let mut bytes: Vec<u8> = Vec::new();
        let mut gap = false;
        for (offset, segment) in pieces {
            let have = bytes.len() as u64;
            if offset > have {
                gap = true;
                break;
            }
            let skip = usize::try_from(have - offset).unwrap_or(usize::MAX);
            if let Some(new) = segment.payload.get(skip..) {
                bytes.extend_from_slice(new);
            }
            if segment.truncated {
                gap = true;
                break;
            }
        }
        Stream { bytes, gap }
    }

    /// Whether `needle` occurs in any segment's payload or in any flow's reassembled stream
    /// (which catches it split across segments).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.segments.iter().any(|s| find(&s.payload, needle))
            || self
                .flows()
                .into_iter()
                .any(|f| find(&self.stream(f).bytes, needle))
    }

    /// The flows (reassembled) in which `needle` occurs.
    pub fn flows_containing(&self, needle: &[u8]) -> Vec<Flow> {
        self.flows()
            .into_iter()
            .filter(|f| find(&self.stream(*f).bytes, needle))
            .collect()
    }

    /// One line per flow (segments, payload bytes, the first payload bytes in hex), for
    /// assertion messages.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} segments, {} dropped by the kernel\n",
            self.segments.len(),
            self.dropped
        );
        for flow in self.flows() {
            let stream = self.stream(flow);
            let head: String = stream
                .bytes
                .iter()
                .take(12)
                .map(|b| format!("{b:02x}"))
                .collect();
            out.push_str(&format!(
                "  {flow}: {} segments, {} payload bytes, starts {head}{}\n",
                self.of(flow).count(),
                self.payload_len(flow),
                if stream.gap { " (gap)" } else { "" }
            ));
        }
        out
    }
}

/// Whether `needle` occurs in `haystack` (an empty needle always does).
pub fn find(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let mut at = 0;
    while let Some(pos) = haystack[at..].iter().position(|&b| b == first) {
        let start = at + pos;
        if haystack.get(start + 1..start + 1 + rest.len()) == Some(rest) {
            return true;
        }
        at = start + 1;
    }
    false
}

/// A TLS record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsRecord {
    /// Content type (`TLS_HANDSHAKE`, `TLS_APPLICATION_DATA`, …).
    pub content_type: u8,
    /// Record-layer version (`0x0301` on a first ClientHello, else `0x0303`).
    pub version: u16,
    /// Body length.
    pub length: u16,
}

/// Walks `stream` as back-to-back TLS records and returns their headers; a record cut off by
/// the end of the stream ends the walk without error.
///
/// # Errors
/// At the first header that is not a TLS 1.x record (unknown type, version not `03 0x`, body
/// longer than TLS allows), naming its offset and bytes.
pub fn tls_records(stream: &[u8]) -> Result<Vec<TlsRecord>, String> {
    let mut records = Vec::new();
    let mut at = 0;
    while let Some(header) = stream.get(at..at + 5) {
        let record = TlsRecord {
            content_type: header[0],
            version: u16::from_be_bytes([header[1], header[2]]),
            length: u16::from_be_bytes([header[3], header[4]]),
        };
        let known = (TLS_CHANGE_CIPHER_SPEC..=TLS_APPLICATION_DATA).contains(&record.content_type);
        if !known || !(0x0301..=0x0304).contains(&record.version) || record.length > TLS_MAX_RECORD
        {
            return Err(format!(
                "not a TLS record at offset {at}: {:02x?} (after {} records)",
                &stream[at..stream.len().min(at + 16)],
                records.len()
            ));
        }
        records.push(record);
        at += 5 + usize::from(record.length);
    }
    Ok(records)
}

#[cfg(test)]
mod tests;
