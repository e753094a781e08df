use std::io::{IoSliceMut, Read as _, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, connect, recvmsg,
    socket,
};
use prost::Message as _;

use super::config::{NodeSlots, SLOTS, local_config};
use super::zds::proto::{self, Request, Response};
use super::zds::{ZdsError, ZdsServer};
use super::{is_problem, rules};

/// istio/istio `cni/pkg/iptables/testdata/default.golden`: what istio-cni installs in a pod
/// with the default settings (its `TestInvokedTwiceIsIdempotent`/`TestIptables` golden).
const ISTIO_CNI_DEFAULT_GOLDEN: &str = "\
iptables -t mangle -N ISTIO_PRERT
iptables -t nat -N ISTIO_OUTPUT
iptables -t mangle -N ISTIO_OUTPUT
iptables -t mangle -A PREROUTING -j ISTIO_PRERT
iptables -t mangle -A OUTPUT -j ISTIO_OUTPUT
iptables -t nat -A OUTPUT -j ISTIO_OUTPUT
iptables -t mangle -A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff
iptables -t mangle -A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT
iptables -t nat -A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT
iptables -t mangle -A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -i lo -j ACCEPT
iptables -t mangle -A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15008 --tproxy-mark 0x111/0xfff
iptables -t mangle -A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
iptables -t mangle -A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY --on-port 15006 --tproxy-mark 0x111/0xfff
iptables -t mangle -A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask 0xffffffff --ctmask 0xffffffff
iptables -t nat -A ISTIO_OUTPUT ! -o lo -p udp -m udp --dport 53 -j REDIRECT --to-port 15053
iptables -t nat -A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT
iptables -t nat -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT
iptables -t nat -A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001
";

#[test]
fn the_rules_are_istio_cnis_in_pod_rules() {
    let ours = rules::commands();
    for (i, (ours, theirs)) in ours
        .lines()
        .zip(ISTIO_CNI_DEFAULT_GOLDEN.lines())
        .enumerate()
    {
        assert_eq!(ours, theirs, "rule {}", i + 1);
    }
    assert_eq!(ours, ISTIO_CNI_DEFAULT_GOLDEN);
}

#[test]
fn the_restore_input_declares_each_tables_chains_before_its_rules() {
    let input = rules::restore_input();
    let mangle =
        "*mangle\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\n";
    let nat = "*nat\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\n";
    assert!(input.starts_with(mangle), "{input}");
    assert!(input.contains(nat), "{input}");
    assert_eq!(input.matches("COMMIT\n").count(), 2, "{input}");
    // Every append, none lost or doubled.
    let appends = rules::RULES
        .iter()
        .filter(|(_, r)| r.starts_with("-A "))
        .count();
    assert_eq!(
        input.lines().filter(|l| l.starts_with("-A ")).count(),
        appends
    );
    // Within a table, istio-cni's order.
    let redirect = input.find("--to-ports 15001").unwrap_or(0);
    let dns = input.find("--to-port 15053").unwrap_or(usize::MAX);
    assert!(dns < redirect, "{input}");
}

fn slots(index: u8) -> NodeSlots {
    NodeSlots {
        node: format!("bench-ztunnel-{index}"),
        index,
        namespace: "bench".to_owned(),
        service_account: "bench-client".to_owned(),
    }
}

#[test]
fn a_pod_is_named_after_its_address_when_the_config_lists_it() {
    let node = slots(7);
    assert_eq!(
        node.name_of(Ipv4Addr::new(10, 244, 7, 2)).as_deref(),
        Some("pod-10-244-7-2")
    );
    let last = Ipv4Addr::new(10, 244, 7, 1 + SLOTS);
    assert_eq!(node.name_of(last).as_deref(), Some("pod-10-244-7-65"));
    assert_eq!(node.name_of(Ipv4Addr::new(10, 244, 7, 2 + SLOTS)), None);
    assert_eq!(
        node.name_of(Ipv4Addr::new(10, 244, 7, 1)),
        None,
        "the bridge"
    );
    assert_eq!(
        node.name_of(Ipv4Addr::new(10, 244, 8, 2)),
        None,
        "another node"
    );
    assert_eq!(
        node.uid_of("pod-10-244-7-2"),
        "Kubernetes//Pod/bench/pod-10-244-7-2"
    );
}

#[test]
fn the_local_config_lists_every_nodes_workloads_as_hbone() {
    let config = local_config(&[slots(3), slots(4)]);
    let workloads = config["workloads"].as_array().cloned().unwrap_or_default();
    assert_eq!(workloads.len(), 2 * usize::from(SLOTS));
    let first = &workloads[0];
    assert_eq!(first["name"], "pod-10-244-3-2");
    assert_eq!(first["workloadIps"][0], "10.244.3.2");
    assert_eq!(first["protocol"], "HBONE");
    assert_eq!(first["serviceAccount"], "bench-client");
    assert_eq!(first["node"], "bench-ztunnel-3");
    assert_eq!(first["uid"], "Kubernetes//Pod/bench/pod-10-244-3-2");
    assert_eq!(
        workloads[usize::from(SLOTS)]["workloadIps"][0],
        "10.244.4.2"
    );
    assert_eq!(config["services"], serde_json::json!([]));
}

#[test]
fn warnings_and_errors_are_problems() {
    assert!(is_problem(
        "2026-12-08T01:00:00.000000Z\twarn\tinpod::statemanager\tpod not found"
    ));
    assert!(is_problem(
        "2026-12-08T01:00:00.000000Z\terror\taccess\tconnection complete\terror=\"refused\""
    ));
    assert!(!is_problem(
        "2026-12-08T01:00:00.000000Z\tinfo\taccess\tconnection complete"
    ));
    assert!(!is_problem(
        "2026-12-08T01:00:00.000000Z\tinfo\txds\twarn\tnot a level here"
    ));
}

/// The ztunnel side of ZDS, as ztunnel's `src/inpod/protocol.rs` speaks it.
struct FakeZtunnel {
    stream: UnixStream,
}

impl FakeZtunnel {
    fn connect(path: &std::path::Path) -> FakeZtunnel {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(fd.as_raw_fd(), &UnixAddr::new(path).unwrap()).unwrap();
        let mut stream = UnixStream::from(fd);
        let hello = proto::ZdsHello {
            version: proto::Version::V1 as i32,
        };
        stream.write_all(&hello.encode_to_vec()).unwrap();
        FakeZtunnel { stream }
    }

    /// The next request and the descriptor it carried.
    fn receive(&mut self) -> (Request, Option<OwnedFd>) {
        let mut buffer = [0u8; 1024];
        let mut space = nix::cmsg_space!(RawFd);
        let mut iov = [IoSliceMut::new(&mut buffer)];
        let message = recvmsg::<()>(
            self.stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let mut fd = None;
        for cmsg in message.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                assert_eq!(fds.len(), 1, "one descriptor per add");
                // SAFETY: the kernel installed this descriptor for us.
                fd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            }
        }
        let len = message.bytes;
        let request = proto::WorkloadRequest::decode(&buffer[..len]).unwrap();
        (request.payload.unwrap(), fd)
    }

    fn ack(&mut self, error: &str) {
        let response = proto::WorkloadResponse {
            payload: Some(Response::Ack(proto::Ack {
                error: error.to_owned(),
            })),
        };
        self.stream.write_all(&response.encode_to_vec()).unwrap();
    }
}

#[test]
fn zds_hands_a_pods_namespace_over_and_reports_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let mut server = ZdsServer::bind(&path).unwrap();
    let own_netns = std::fs::File::open("/proc/self/ns/net").unwrap();
    let own_inode = own_netns.metadata().unwrap().ino();
    let client_path = path.clone();
    let ztunnel = std::thread::spawn(move || {
        let mut ztunnel = FakeZtunnel::connect(&client_path);
        let (snapshot, fd) = ztunnel.receive();
        assert!(matches!(snapshot, Request::SnapshotSent(_)), "{snapshot:?}");
        assert!(fd.is_none());
        ztunnel.ack("");
        let (add, fd) = ztunnel.receive();
        let Request::Add(add) = add else {
            panic!("expected an add, got {add:?}");
        };
        assert_eq!(add.uid, "Kubernetes//Pod/bench/pod-10-244-3-2");
        let info = add.workload_info.unwrap();
        assert_eq!(
            (info.name.as_str(), info.namespace.as_str()),
            ("pod-10-244-3-2", "bench")
        );
        assert_eq!(info.service_account, "bench-client");
        let fd = fd.expect("an add carries the pod's netns");
        let inode = std::fs::File::from(fd).metadata().unwrap().ino();
        assert_eq!(inode, own_inode, "the descriptor is the namespace we sent");
        ztunnel.ack("");
        let (second, _) = ztunnel.receive();
        assert!(matches!(second, Request::Add(_)), "{second:?}");
        ztunnel.ack("failed to start proxy: address in use");
        // The server hangs up when dropped.
        let mut rest = Vec::new();
        ztunnel.stream.read_to_end(&mut rest).unwrap();
    });
    server.accept(Duration::from_secs(10)).unwrap();
    let info = |name: &str| proto::WorkloadInfo {
        name: name.to_owned(),
        namespace: "bench".to_owned(),
        service_account: "bench-client".to_owned(),
    };
    server
        .add(
            "Kubernetes//Pod/bench/pod-10-244-3-2",
            info("pod-10-244-3-2"),
            own_netns.as_fd(),
            Duration::from_secs(10),
        )
        .unwrap();
    let refused = server
        .add(
            "Kubernetes//Pod/bench/pod-10-244-3-3",
            info("pod-10-244-3-3"),
            own_netns.as_fd(),
            Duration::from_secs(10),
        )
        .unwrap_err();
    match &refused {
        ZdsError::Refused { request, reason } => {
            assert_eq!(request, "add Kubernetes//Pod/bench/pod-10-244-3-3");
            assert!(reason.contains("address in use"), "{reason}");
        }
        other => panic!("expected a refusal, got {other}"),
    }
    drop(server);
    ztunnel.join().unwrap();
    assert!(!path.exists(), "the socket file is removed with the server");
}

#[test]
fn zds_fails_when_ztunnel_does_not_connect_or_speaks_another_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zds.sock");
    let mut server = ZdsServer::bind(&path).unwrap();
    let waited = server.accept(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(waited, ZdsError::NoConnection { .. }), "{waited}");

    let client_path = path.clone();
    let ztunnel = std::thread::spawn(move || {
        let fd = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        connect(fd.as_raw_fd(), &UnixAddr::new(&client_path).unwrap()).unwrap();
        let mut stream = UnixStream::from(fd);
        let hello = proto::ZdsHello { version: 7 };
        stream.write_all(&hello.encode_to_vec()).unwrap();
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest);
    });
    let error = server.accept(Duration::from_secs(10)).unwrap_err();
    assert!(
        matches!(&error, ZdsError::Unexpected { detail, .. } if detail == "version 7"),
        "{error}"
    );
    drop(server);
    ztunnel.join().unwrap();
}
