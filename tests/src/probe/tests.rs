use super::*;

#[test]
fn builds_and_reads_h2_frames() {
    let request = request_bytes(&H2Request::connect("10.244.2.3:8080".parse().unwrap()));
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    assert!(request.starts_with(preface));
    let frames = h2_frames(&request[preface.len()..]);
    assert_eq!(frames.len(), 2);
    assert_eq!((frames[0].kind, frames[0].stream), (4, 0));
    assert_eq!(
        (frames[1].kind, frames[1].flags, frames[1].stream),
        (1, 4, 1),
        "HEADERS, END_HEADERS, stream left open"
    );
    let block = &frames[1].payload;
    assert_eq!(&block[..9], b"\x02\x07CONNECT");
    assert_eq!(&block[9..11], b"\x01\x0f");
    assert_eq!(&block[11..], b"10.244.2.3:8080");
    assert_eq!(
        h2_frames(&request[preface.len()..preface.len() + 12]).len(),
        1
    );

    let get = request_bytes(&H2Request::Get {
        authority: "10.244.2.3:8080".parse().unwrap(),
    });
    let frames = h2_frames(&get[preface.len()..]);
    assert_eq!((frames[1].kind, frames[1].flags), (1, 5), "END_STREAM too");
    assert_eq!(&frames[1].payload[..3], &[0x82, 0x87, 0x84]);
}

#[test]
fn large_header_blocks_continue_in_continuation_frames() {
    let request = request_bytes(&H2Request::Connect {
        target: "10.244.2.3:8080".parse().unwrap(),
        padding: 40_000,
    });
    let frames = h2_frames(&request[24..]);
    let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.kind, f.flags)).collect();
    assert_eq!(kinds, [(4, 0), (1, 0), (9, 0), (9, 4)]);
    assert!(
        frames
            .iter()
            .all(|f| f.payload.len() <= H2_DEFAULT_MAX_FRAME)
    );
    let block: Vec<u8> = frames[1..].iter().flat_map(|f| f.payload.clone()).collect();
    // x-padding: new name, then the length 40000 as a 7-bit-prefix integer.
    let at = 9 + 17;
    assert_eq!(&block[at..at + 11], b"\x00\x09x-padding");
    // 40000 = 127 + 65 + 55 * 128 + 2 * 128^2
    assert_eq!(&block[at + 11..at + 15], &[0x7f, 0xc1, 0xb7, 0x02]);
    assert_eq!(block.len(), at + 15 + 40_000);
}

#[test]
fn reads_response_statuses() {
    let headers = |flags, payload: &[u8]| H2Frame {
        kind: 1,
        flags,
        stream: 1,
        payload: payload.to_vec(),
    };
    assert_eq!(response_status(&headers(4, &[0x88])), Some(200));
    assert_eq!(response_status(&headers(4, b"\x08\x03503")), Some(503));
    assert_eq!(response_status(&headers(4, b"\x48\x03401")), Some(401));
    assert_eq!(
        response_status(&headers(4, &[0x48, 0x83, 0x6c, 0x0c, 0xff])),
        Some(503)
    );
    assert_eq!(
        response_status(&headers(4, &[0x48, 0x82, 0x68, 0x01])),
        Some(401)
    );
    assert_eq!(
        response_status(&headers(0x2c, &[1, 0, 0, 0, 0, 0, 0x8c, 0])),
        Some(400)
    );
    assert_eq!(response_status(&headers(4, &[0xbe])), None);
    assert_eq!(response_status(&headers(0x08, &[])), None);
    assert_eq!(
        response_status(&headers(4, &[0x48, 0x81, 0xfe])),
        None,
        "not a digit"
    );
}

#[test]
fn huffman_digits_decode_and_refuse_other_codes() {
    assert_eq!(huffman_digits(&[0x6c, 0x0c, 0xff]).as_deref(), Some("503"));
    assert_eq!(huffman_digits(&[0x68, 0x01]).as_deref(), Some("401"));
    assert_eq!(huffman_digits(&[0x00, 0x01]).as_deref(), Some("000"));
    assert_eq!(huffman_digits(&[0x00, 0x3f]).as_deref(), Some("00"));
    assert_eq!(huffman_digits(&[]).as_deref(), Some(""));
    assert_eq!(huffman_digits(&[0x80]), None);
}

#[test]
fn probe_identities_carry_the_spiffe_id() {
    let id = "spiffe://cluster.local/ns/shop/sa/client";
    let foreign = ProbeIdentity::from_foreign_ca(id);
    assert!(crate::sniff::find(&foreign.chain[0], id.as_bytes()));

    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = params.self_signed(&ca_key).unwrap();
    let (cert, key) = (
        dir.path().join("ca-cert.pem"),
        dir.path().join("ca-key.pem"),
    );
    std::fs::write(&cert, ca.pem()).unwrap();
    std::fs::write(&key, ca_key.serialize_pem()).unwrap();
    let signed = ProbeIdentity::signed_by(&cert, &key, id);
    assert!(crate::sniff::find(&signed.chain[0], id.as_bytes()));
}

#[test]
fn raw_replies_that_only_alert_count_as_closed() {
    let alert = RawReply {
        local: None,
        received: vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x32],
        end: End::Eof,
    };
    assert!(alert.closed_without_answer());
    let http = RawReply {
        local: None,
        received: b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec(),
        end: End::Eof,
    };
    assert!(!http.closed_without_answer());
    let silent = RawReply {
        local: None,
        received: Vec::new(),
        end: End::TimedOut,
    };
    assert!(!silent.closed_without_answer());
}
