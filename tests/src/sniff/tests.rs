use super::*;

const MAC_DST: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const MAC_SRC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn tcp_header(sport: u16, dport: u16, seq: u32, flags: u8, options: usize) -> Vec<u8> {
    let len = 20 + options;
    let mut t = Vec::new();
    t.extend_from_slice(&sport.to_be_bytes());
    t.extend_from_slice(&dport.to_be_bytes());
    t.extend_from_slice(&seq.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes()); // ack
    t.push(u8::try_from(len / 4).unwrap() << 4);
    t.push(flags);
    t.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]); // window, checksum, urgent
    t.extend(std::iter::repeat_n(1u8, options)); // NOPs
    t
}

fn ethernet(ethertype: u16, packet: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&MAC_DST);
    f.extend_from_slice(&MAC_SRC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(packet);
    f
}

fn ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, body: &[u8]) -> Vec<u8> {
    let total = u16::try_from(20 + body.len()).unwrap();
    let mut p = vec![0x45, 0];
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&[0, 1, 0x40, 0, 64, protocol, 0, 0]); // id, DF, ttl, proto, csum
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p.extend_from_slice(body);
    p
}

fn v4_frame(seq: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut tcp = tcp_header(40000, 15008, seq, flags, 12);
    tcp.extend_from_slice(payload);
    ethernet(0x0800, &ipv4([10, 244, 1, 2], [10, 244, 2, 3], 6, &tcp))
}

#[test]
fn parses_an_ipv4_tcp_frame_and_ignores_ethernet_padding() {
    let mut frame = v4_frame(1000, 0x18, b"hello");
    frame.extend_from_slice(&[0u8; 7]); // padding after the IP packet
    let s = parse_frame(&frame).expect("a TCP segment");
    assert_eq!(s.src, "10.244.1.2:40000".parse().unwrap());
    assert_eq!(s.dst, "10.244.2.3:15008".parse().unwrap());
    assert_eq!(s.seq, 1000);
    assert_eq!(s.flags, 0x18);
    assert_eq!(s.payload, b"hello");
}

#[test]
fn parses_vlan_tagged_and_ipv6_with_an_extension_header() {
    let mut tcp = tcp_header(15008, 51000, 7, TCP_SYN, 0);
    tcp.extend_from_slice(b"x");
    // hop-by-hop options (8 bytes) then TCP
    let mut body = vec![6, 0, 0, 0, 0, 0, 0, 0];
    body.extend_from_slice(&tcp);
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    p.extend_from_slice(&[0, 64]); // next header: hop-by-hop, hop limit
    p.extend_from_slice(&"fd00:1::2".parse::<Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&"fd00:2::3".parse::<Ipv6Addr>().unwrap().octets());
    p.extend_from_slice(&body);
    let mut frame = ethernet(0x8100, &[0, 5, 0x86, 0xdd]); // VLAN 5, then IPv6
    frame.extend_from_slice(&p);
    let s = parse_frame(&frame).expect("a TCP segment");
    assert_eq!(s.src, "[fd00:1::2]:15008".parse().unwrap());
    assert_eq!(s.dst.port(), 51000);
    assert_eq!(s.flags, TCP_SYN);
    assert_eq!(s.payload, b"x");
}

#[test]
fn skips_what_is_not_tcp_or_is_cut_short() {
    let udp = ethernet(0x0800, &ipv4([1, 1, 1, 1], [2, 2, 2, 2], 17, &[0u8; 8]));
    assert_eq!(parse_frame(&udp), None);
    assert_eq!(parse_frame(&ethernet(0x0806, &[0u8; 28])), None, "ARP");
    let frame = v4_frame(1, 0x10, b"data");
    for cut in [0, 10, 14, 20, 33, 40] {
        assert_eq!(parse_frame(&frame[..cut]), None, "cut at {cut}");
    }
    let mut bad_offset = frame.clone();
    bad_offset[14 + 20 + 12] = 0x40; // data offset 16 bytes < 20
    assert_eq!(parse_frame(&bad_offset), None);
    let mut fragment = frame.clone();
    fragment[14 + 7] = 0x10; // fragment offset != 0
    assert_eq!(parse_frame(&fragment), None);
    let mut not_v4 = frame;
    not_v4[14] = 0x65;
    assert_eq!(parse_frame(&not_v4), None);
}

fn segment(seq: u32, flags: u8, payload: &[u8]) -> Segment {
    parse_frame(&v4_frame(seq, flags, payload)).unwrap()
}

#[test]
fn reassembles_out_of_order_and_retransmitted_segments() {
    let capture = Capture {
        segments: vec![
            segment(u32::MAX - 1, TCP_SYN, b""), // the stream starts at u32::MAX (wraps)
            segment(u32::MAX, 0x18, b"MARROW-"),
            segment(11, 0x18, b"-MARKER"),   // out of order (offset 12)
            segment(u32::MAX, 0x18, b"MAR"), // partial retransmission
            segment(3, 0x18, b"OW-PLAIN"),   // overlaps (offset 4)
        ],
        dropped: 0,
    };
    let flow = capture.flows()[0];
    let stream = capture.stream(flow);
    assert_eq!(stream.bytes, b"MARROW-PLAIN-MARKER");
    assert!(!stream.gap);
    assert!(capture.contains(b"PLAIN-MARK"), "found across segments");
    assert!(!capture.contains(b"MARKERS"));
    assert_eq!(capture.flows_to_port(15008), vec![flow]);
    assert!(capture.flows_to_port(8080).is_empty());
}

#[test]
fn a_hole_ends_the_stream_and_no_syn_starts_at_the_lowest_sequence() {
    let capture = Capture {
        segments: vec![
            segment(110, 0x18, b"later"),
            segment(100, 0x18, b"0123456789"),
            segment(200, 0x18, b"after a hole"),
        ],
        dropped: 0,
    };
    let stream = capture.stream(capture.flows()[0]);
    assert_eq!(stream.bytes, b"0123456789later");
    assert!(stream.gap);
    assert!(capture.contains(b"after a hole"), "still found per segment");
    assert!(capture.summary().contains("(gap)"));
}

#[test]
fn walks_tls_records_and_refuses_plaintext() {
    let mut stream = vec![0x16, 0x03, 0x01, 0x00, 0x02, 0xaa, 0xbb];
    stream.extend_from_slice(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01]);
    stream.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x03, 1, 2, 3]);
    stream.extend_from_slice(&[0x17, 0x03, 0x03, 0x40, 0x00, 9]); // cut off: fine
    let records = tls_records(&stream).unwrap();
    let types: Vec<u8> = records.iter().map(|r| r.content_type).collect();
    assert_eq!(
        types,
        [
            TLS_HANDSHAKE,
            TLS_CHANGE_CIPHER_SPEC,
            TLS_APPLICATION_DATA,
            TLS_APPLICATION_DATA
        ]
    );
    assert_eq!(records[0].version, 0x0301);
    assert!(tls_records(b"GET / HTTP/1.1\r\n\r\n").is_err());
    assert!(tls_records(b"MARROW-PLAINTEXT").is_err());
    assert!(
        tls_records(&[0x17, 0x03, 0x03, 0xff, 0xff]).is_err(),
        "too long"
    );
    assert!(
        tls_records(&[0x17, 0x02, 0x00, 0, 1, 0]).is_err(),
        "SSL 2 version"
    );
    assert_eq!(tls_records(&[]).unwrap(), vec![]);
}

#[test]
fn find_matches_like_a_substring_search() {
    assert!(find(b"abcabd", b"abd"));
    assert!(!find(b"abcab", b"abd"));
    assert!(find(b"x", b""));
    assert!(!find(b"", b"x"));
}
