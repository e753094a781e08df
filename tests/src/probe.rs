//! Probes of a pod's HBONE port (15008) from outside the mesh: raw bytes, and a TLS client
//! (rustls, any server certificate accepted and recorded) that speaks just enough HTTP/2 to ask
//! for a `CONNECT` and read the answer. They run in the calling thread's netns: wrap them in
//! [`crate::Netns::run`].
//!
//! A TLS 1.2 ClientHello ([`tls12_client_hello`]) is built by hand, for [`send_raw`]: the
//! server must refuse it before any cryptography happens.
//!
//! The TLS client can present no certificate, one from a CA nobody trusts, or a valid mesh
//! identity ([`ProbeIdentity`]); the last is the control that proves the probe would see a
//! tunnel open if the server let it.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The peer closed (FIN).
    Eof,
    /// The peer reset the connection.
    Reset,
    /// Nothing more arrived before the deadline.
    TimedOut,
    /// Another I/O error.
    Error(String),
}

/// What a raw probe got back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawReply {
    /// The probe's own address (to find the server's log line about it).
    pub local: Option<SocketAddr>,
    /// Everything the server sent.
    pub received: Vec<u8>,
    /// How it ended.
    pub end: End,
}

impl RawReply {
    /// Whether the server closed or reset the connection having sent nothing, or only TLS
    /// alert records.
    pub fn closed_without_answer(&self) -> bool {
        matches!(self.end, End::Eof | End::Reset)
            && crate::sniff::tls_records(&self.received)
                .is_ok_and(|r| r.iter().all(|r| r.content_type == crate::sniff::TLS_ALERT))
    }
}

fn end_of(e: &std::io::Error) -> End {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => {
            End::Reset
        }
        ErrorKind::WouldBlock | ErrorKind::TimedOut => End::TimedOut,
        _ => End::Error(e.to_string()),
    }
}

/// Connects to `addr`, sends `bytes` (keeping the write side open, so a close is the server's
/// verdict on the bytes and not on an early EOF), and reads until the server closes or
/// `timeout` passes.
///
/// # Errors
/// When the TCP connection cannot be made.
pub fn send_raw(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Result<RawReply, String> {
    let mut tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let deadline = Instant::now() + timeout;
    let local = tcp.local_addr().ok();
    tcp.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let mut received = Vec::new();
    if let Err(e) = tcp.write_all(bytes) {
        return Ok(RawReply {
            local,
            received,
            end: end_of(&e),
        });
    }
    let mut buf = [0u8; 4096];
    let end = loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break End::TimedOut;
        };
        tcp.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        match tcp.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => break end_of(&e),
        }
    };
    let _ = tcp.shutdown(Shutdown::Both);
    Ok(RawReply {
        local,
        received,
        end,
    })
}

/// The certificate chain and key a [`TlsProbe`] presents.
#[derive(Debug)]
pub struct ProbeIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// PKCS#8 key of the leaf.
    pub key: PrivateKeyDer<'static>,
}

impl ProbeIdentity {
    /// A leaf for `spiffe_id` signed by the CA in `ca_cert`/`ca_key` (PEM files: the mesh CA
    /// made by `node-proxy ca create`), so a legitimate mesh peer.
    ///
    /// # Panics
    /// When the files cannot be read or used.
    pub fn signed_by(ca_cert: &Path, ca_key: &Path, spiffe_id: &str) -> ProbeIdentity {
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()))
        };
        let key = KeyPair::from_pem(&read(ca_key)).expect("the CA key");
        let issuer = Issuer::from_ca_cert_pem(&read(ca_cert), key).expect("the CA certificate");
        leaf(&issuer, spiffe_id)
    }

    /// A leaf for `spiffe_id` from a brand-new CA that no proxy trusts.
    pub fn from_foreign_ca(spiffe_id: &str) -> ProbeIdentity {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a CA key");
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, "not the mesh CA");
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        leaf(&Issuer::new(params, key), spiffe_id)
    }
}

fn leaf(issuer: &Issuer<'_, KeyPair>, spiffe_id: &str) -> ProbeIdentity {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a leaf key");
    let params = crate::workload_cert::leaf_params(spiffe_id).expect("an IA5 SPIFFE ID");
    let cert = params.signed_by(&key, issuer).expect("signing the leaf");
    ProbeIdentity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// A TLS client probe; see the module documentation.
#[derive(Debug)]
pub struct TlsProbe {
    /// The client certificate, if any.
    pub identity: Option<ProbeIdentity>,
    /// The HTTP/2 request sent after the handshake.
    pub request: H2Request,
    /// Bound on the whole exchange.
    pub timeout: Duration,
}

/// The HTTP/2 request a [`TlsProbe`] sends after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum H2Request {
    /// `CONNECT <target>` (what HBONE serves), with an `x-padding` header of `padding` bytes
    /// when non-zero, spread over CONTINUATION frames.
    Connect {
        /// The `:authority`.
        target: SocketAddr,
        /// Size of the padding header's value.
        padding: usize,
    },
    /// `GET https://<authority>/`, which HBONE does not serve.
    Get {
        /// The `:authority`.
        authority: SocketAddr,
    },
}

impl H2Request {
    /// A plain `CONNECT <target>`.
    pub fn connect(target: SocketAddr) -> H2Request {
        H2Request::Connect { target, padding: 0 }
    }
}

/// How a [`TlsProbe`] went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsOutcome {
    /// The TCP connection could not be made.
    NoConnection(String),
    /// The handshake failed (an alert from the server, or a close mid-handshake).
    HandshakeFailed(String),
    /// The client finished its handshake, but the server then refused (alert, close or reset)
    /// without sending any HTTP/2.
    RefusedAfterHandshake(String),
    /// The server spoke HTTP/2: `status` of the response (when its HEADERS came), the first
    /// `DATA` bytes of the tunnel (the app's greeting, when it came), and whether the server
    /// reset the stream or sent GOAWAY.
    Answered {
        /// `:status` of the response, when recognised.
        status: Option<u16>,
        /// The tunnel's first bytes.
        data: Vec<u8>,
        /// RST_STREAM on the request's stream, or GOAWAY.
        reset: bool,
    },
    /// Nothing decisive before the deadline.
    TimedOut(String),
}

impl TlsOutcome {
    /// Whether a tunnel opened: a 200, or bytes from the app.
    pub fn tunnel_opened(&self) -> bool {
        matches!(self, TlsOutcome::Answered { status, data, .. }
            if *status == Some(200) || !data.is_empty())
    }
}

/// What a [`TlsProbe`] learnt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsReport {
    /// The probe's own address, once connected.
    pub local: Option<SocketAddr>,
    /// How it went.
    pub outcome: TlsOutcome,
    /// The server's leaf certificate (DER), when the handshake got that far.
    pub server_cert: Option<Vec<u8>>,
}

impl TlsProbe {
    /// Runs the probe against `addr` (a pod's IP and port 15008).
    pub fn run(self, addr: SocketAddr) -> TlsReport {
        let seen = Arc::new(Mutex::new(None));
        let mut local = None;
        let outcome = self.exchange(addr, &seen, &mut local);
        let server_cert = seen.lock().unwrap_or_else(PoisonError::into_inner).take();
        TlsReport {
            local,
            outcome,
            server_cert,
        }
    }

    fn exchange(
        self,
        addr: SocketAddr,
        seen: &Arc<Mutex<Option<Vec<u8>>>>,
        local: &mut Option<SocketAddr>,
    ) -> TlsOutcome {
        let deadline = Instant::now() + self.timeout;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let recorder = Recorder {
            seen: seen.clone(),
            algorithms: provider.signature_verification_algorithms,
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("aws-lc-rs supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(recorder));
        let mut config = match self.identity {
            Some(id) => builder
                .with_client_auth_cert(id.chain, id.key)
                .expect("a usable client certificate"),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.enable_sni = false;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut conn = ClientConnection::new(Arc::new(config), name).expect("a TLS client");
        let mut tcp = match TcpStream::connect_timeout(&addr, self.timeout) {
            Ok(tcp) => tcp,
            Err(e) => return TlsOutcome::NoConnection(format!("{addr}: {e}")),
        };
        *local = tcp.local_addr().ok();
        let set_timeout = |tcp: &TcpStream| {
            let left = deadline.saturating_duration_since(Instant::now());
            let left = Some(left.max(Duration::from_millis(1)));
            tcp.set_read_timeout(left)
                .and_then(|()| tcp.set_write_timeout(left))
        };
        while conn.is_handshaking() {
            if let Err(e) = set_timeout(&tcp).and_then(|()| conn.complete_io(&mut tcp).map(drop)) {
                return match end_of(&e) {
                    End::TimedOut => TlsOutcome::TimedOut(format!("in the handshake: {e}")),
                    _ => TlsOutcome::HandshakeFailed(e.to_string()),
                };
            }
        }
        let request = request_bytes(&self.request);
        let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
        if let Err(e) = tls.write_all(&request).and_then(|()| tls.flush()) {
            return TlsOutcome::RefusedAfterHandshake(format!("writing the request: {e}"));
        }
        let mut received = Vec::new();
        let mut acked = false;
        let mut buf = [0u8; 16 * 1024];
        loop {
            let frames = h2_frames(&received);
            if !acked && frames.iter().any(|f| f.kind == 4 && f.flags & 1 == 0) {
                // ACK the server's SETTINGS, as a real client must.
                acked = true;
                let _ = tls
                    .write_all(&frame(4, 1, 0, &[]))
                    .and_then(|()| tls.flush());
            }
            let status = frames
                .iter()
                .find(|f| f.kind == 1 && f.stream == 1)
                .and_then(response_status);
            let data: Vec<u8> = frames
                .iter()
                .filter(|f| f.kind == 0 && f.stream == 1)
                .flat_map(|f| f.payload.iter().copied())
                .collect();
            let reset = frames
                .iter()
                .any(|f| (f.kind == 3 && f.stream == 1) || f.kind == 7);
            let answered = || TlsOutcome::Answered {
                status,
                data: data.clone(),
                reset,
            };
            if status.is_some_and(|s| s != 200) || !data.is_empty() || reset {
                return answered();
            }
            if let Err(e) = set_timeout(tls.sock) {
                return TlsOutcome::TimedOut(e.to_string());
            }
            match tls.read(&mut buf) {
                Ok(0) if received.is_empty() => {
                    return TlsOutcome::RefusedAfterHandshake("closed".to_owned());
                }
                Ok(0) => return answered(),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if received.is_empty() => {
                    return match end_of(&e) {
                        End::TimedOut => TlsOutcome::TimedOut(format!("waiting for HTTP/2: {e}")),
                        _ => TlsOutcome::RefusedAfterHandshake(e.to_string()),
                    };
                }
                Err(_) => return answered(),
            }
        }
    }
}

/// Accepts any server certificate and keeps the leaf; signatures are still checked, so the
/// server must hold the key of what it presents.
#[derive(Debug)]
struct Recorder {
    seen: Arc<Mutex<Option<Vec<u8>>>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(end_entity.to_vec());
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// An HTTP/2 frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2Frame {
    /// Type (0 DATA, 1 HEADERS, 4 SETTINGS, …).
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id.
    pub stream: u32,
    /// Payload.
    pub payload: Vec<u8>,
}

/// The complete frames at the start of `bytes` (a partial last frame is left out).
pub fn h2_frames(bytes: &[u8]) -> Vec<H2Frame> {
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + 9) {
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let Some(payload) = bytes.get(at + 9..at + 9 + len) else {
            break;
        };
        frames.push(H2Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload: payload.to_vec(),
        });
        at += 9 + len;
    }
    frames
}

/// A TLS 1.2 ClientHello (no `supported_versions` extension, so TLS 1.2 is the highest version
/// offered) with ECDHE-ECDSA/RSA AES-GCM suites, X25519/P-256, ALPN `h2`, and no SNI.
pub fn tls12_client_hello() -> Vec<u8> {
    fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut out = kind.to_be_bytes().to_vec();
        out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(0).to_be_bytes());
        out.extend_from_slice(body);
        out
    }
    let mut extensions = Vec::new();
    extensions.extend(extension(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17])); // supported_groups
    extensions.extend(extension(0x000b, &[1, 0])); // ec_point_formats: uncompressed
    extensions.extend(extension(0x000d, &[0, 6, 4, 3, 8, 4, 4, 1])); // signature_algorithms
    extensions.extend(extension(0x0010, &[0, 3, 2, b'h', b'2'])); // ALPN h2
    let mut body = vec![0x03, 0x03]; // client_version TLS 1.2
    body.extend((0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11))); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0, 8, 0xc0, 0x2b, 0xc0, 0x2f, 0xc0, 0x2c, 0xc0, 0x30]);
    body.extend_from_slice(&[1, 0]); // compression: null
    body.extend_from_slice(&u16::try_from(extensions.len()).unwrap_or(0).to_be_bytes());
    body.extend(extensions);
    let len = u32::try_from(body.len()).unwrap_or(0).to_be_bytes();
    let mut handshake = vec![1, len[1], len[2], len[3]]; // client_hello
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap_or(0).to_be_bytes());
    record.extend(handshake);
    record
}

/// One HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap_or(0).to_be_bytes();
    let mut out = vec![len[1], len[2], len[3], kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Largest frame payload a client may send before the server's SETTINGS (RFC 9113 §4.2).
const H2_DEFAULT_MAX_FRAME: usize = 16_384;

/// The client preface, an empty SETTINGS and the request's header block on stream 1 (HEADERS,
/// then CONTINUATION frames when it is larger than one frame): HPACK literals without indexing
/// and without Huffman coding. A CONNECT leaves the stream open; a GET ends it.
pub fn request_bytes(request: &H2Request) -> Vec<u8> {
    let mut block = Vec::new();
    let end_stream = match request {
        H2Request::Connect { target, padding } => {
            literal(&mut block, HpackName::Indexed(2), b"CONNECT"); // :method
            literal(
                &mut block,
                HpackName::Indexed(1),
                target.to_string().as_bytes(),
            ); // :authority
            if *padding > 0 {
                literal(
                    &mut block,
                    HpackName::New(b"x-padding"),
                    &vec![b'a'; *padding],
                );
            }
            false
        }
        H2Request::Get { authority } => {
            block.extend_from_slice(&[0x82, 0x87, 0x84]); // :method GET, :scheme https, :path /
            literal(
                &mut block,
                HpackName::Indexed(1),
                authority.to_string().as_bytes(),
            );
            true
        }
    };
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(4, 0, 0, &[]));
    let chunks: Vec<&[u8]> = block.chunks(H2_DEFAULT_MAX_FRAME).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        let mut flags = if last { 0x4 } else { 0 }; // END_HEADERS
        if i == 0 && end_stream {
            flags |= 0x1; // END_STREAM
        }
        let kind = if i == 0 { 1 } else { 9 }; // HEADERS, then CONTINUATION
        out.extend(frame(kind, flags, 1, chunk));
    }
    out
}

/// A header name for [`literal`]: a static-table index or a new name.
enum HpackName<'a> {
    Indexed(usize),
    New(&'a [u8]),
}

/// An HPACK "literal header field without indexing" (RFC 7541 §6.2.2), no Huffman coding.
fn literal(out: &mut Vec<u8>, name: HpackName<'_>, value: &[u8]) {
    match name {
        HpackName::Indexed(index) => hpack_int(out, 4, 0x00, index),
        HpackName::New(name) => {
            out.push(0x00);
            hpack_int(out, 7, 0x00, name.len());
            out.extend_from_slice(name);
        }
    }
    hpack_int(out, 7, 0x00, value.len());
    out.extend_from_slice(value);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1) after the bits in `flags`.
fn hpack_int(out: &mut Vec<u8>, prefix_bits: u32, flags: u8, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// `:status` of a response HEADERS frame, when it is the first field: an indexed static-table
/// status (8-14) or a literal with name index 8, plain or Huffman-coded.
fn response_status(headers: &H2Frame) -> Option<u16> {
    let mut block = headers.payload.as_slice();
    if headers.flags & 0x08 != 0 {
        block = block.get(1..)?; // PADDED: pad length (padding at the end is never read)
    }
    if headers.flags & 0x20 != 0 {
        block = block.get(5..)?; // PRIORITY
    }
    match block.first()? {
        0x88 => Some(200),
        0x89 => Some(204),
        0x8a => Some(206),
        0x8b => Some(304),
        0x8c => Some(400),
        0x8d => Some(404),
        0x8e => Some(500),
        // literal with incremental indexing / without indexing / never indexed, name :status
        0x48 | 0x08 | 0x18 => {
            let len_byte = *block.get(1)?;
            let value = block.get(2..2 + usize::from(len_byte & 0x7f))?;
            let text = if len_byte & 0x80 != 0 {
                huffman_digits(value)?
            } else {
                std::str::from_utf8(value).ok()?.to_owned()
            };
            text.parse().ok()
        }
        _ => None,
    }
}

/// Decodes an HPACK-Huffman string made only of digits (RFC 7541 Appendix B: `0`-`2` are the
/// 5-bit codes 0-2, `3`-`9` the 6-bit codes 0x19-0x1f), with all-ones padding under 8 bits.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let total = bytes.len() * 8;
    let bit = |i: usize| (bytes[i / 8] >> (7 - i % 8)) & 1;
    let take = |at: usize, n: usize| (at..at + n).fold(0u8, |v, i| (v << 1) | bit(i));
    let mut out = String::new();
    let mut at = 0;
    while at < total {
        let left = total - at;
        if left < 8 && (at..total).all(|i| bit(i) == 1) {
            break; // padding
        }
        if left >= 5 && take(at, 5) <= 2 {
            out.push(char::from(b'0' + take(at, 5)));
            at += 5;
        } else if left >= 6 && (0x19..=0x1f).contains(&take(at, 6)) {
            out.push(char::from(b'3' + take(at, 6) - 0x19));
            at += 6;
        } else {
            return None;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests;
