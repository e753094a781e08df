//! Tests of the hand-off protocol's wire format.

use super::*;

#[test]
fn messages_have_their_wire_names() {
    let json = serde_json::to_string(&Message::Listener {
        direction: WireDirection::Hbone,
        ipv6: true,
    })
    .unwrap();
    assert_eq!(
        json,
        r#"{"type":"listener","direction":"hbone","ipv6":true}"#
    );
    // A proxy from before certificates moved: asks for none, announces none.
    let parsed: Message = serde_json::from_str(r#"{"type":"take_over","version":1}"#).unwrap();
    assert!(matches!(
        parsed,
        Message::TakeOver {
            version: 1,
            certificates: false
        }
    ));
    let parsed: Message = serde_json::from_str(r#"{"type":"done","pods":3}"#).unwrap();
    assert!(matches!(
        parsed,
        Message::Done {
            pods: 3,
            certificates: 0
        }
    ));
    assert!(serde_json::from_str::<Message>(r#"{"type":"take_over"}"#).is_err());
    // This version asks for them; an older predecessor ignores the field and sends none.
    let json = serde_json::to_string(&Message::TakeOver {
        version: 1,
        certificates: true,
    })
    .unwrap();
    assert_eq!(
        json,
        r#"{"type":"take_over","version":1,"certificates":true}"#
    );
}

#[test]
fn nobody_listening_means_no_predecessor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HANDOFF_SOCKET);
    assert!(take_over(&path).unwrap().is_none(), "no socket file");
    // A stale socket file with nobody behind it (a crashed proxy).
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(take_over(&path).unwrap().is_none(), "stale socket file");
}

#[test]
fn only_listening_tcp_sockets_are_accepted_as_listeners() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(listening_tcp(OwnedFd::from(listener)).is_ok());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    assert!(listening_tcp(OwnedFd::from(udp)).is_err());
    let file = std::fs::File::open("/dev/null").unwrap();
    assert!(listening_tcp(OwnedFd::from(file)).is_err());
}
