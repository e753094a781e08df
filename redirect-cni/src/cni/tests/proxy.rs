//! The whole plugin against fake node proxies on temporary `SOCK_SEQPACKET` sockets, and the
//! network-namespace checks.

use super::*;

// ---------------------------------------------------------------------------------------------
// Network namespace

#[test]
fn netns_must_be_a_network_namespace_other_than_ours() {
    assert!(netns::open("/proc/self/ns/net", None).is_ok());
    let err = netns::open("/proc/self/ns/net", Some(own_netns())).unwrap_err();
    assert!(
        matches!(err, CniError::HostNetns { .. }) && err.code() == 4,
        "{err}"
    );
    let err = netns::open("/dev/null", None).unwrap_err();
    assert!(
        matches!(err, CniError::NotANetns { .. }) && err.code() == 4,
        "{err}"
    );
    let err = netns::open("/proc/self/ns/uts", None).unwrap_err();
    assert!(matches!(err, CniError::NotANetns { .. }), "{err}");
    let err = netns::open("/nonexistent/netns", None).unwrap_err();
    assert!(
        err.code() == 5 && err.to_string().contains("/nonexistent/netns"),
        "{err}"
    );
}

#[test]
fn add_into_the_host_namespace_is_refused() {
    let dir = TempDir::new("host-netns");
    let mut log = Vec::new();
    let vars = add_env("/proc/self/ns/net");
    let stdin = config("1.1.0", &dir.socket()).to_string();
    let outcome = Plugin::new(&vars)
        .refusing_netns(own_netns())
        .run(&mut stdin.as_bytes(), &mut log);
    let stdout: Value = serde_json::from_str(outcome.stdout.as_deref().unwrap()).unwrap();
    assert_error(&outcome, &stdout, 4, &["own network namespace"]);
}

// ---------------------------------------------------------------------------------------------
// Against a fake node proxy

#[test]
fn add_enrolls_the_pod_and_passes_prev_result_through() {
    let dir = TempDir::new("add-ok");
    let server = fake_proxy(&dir.socket(), vec![ok()]);
    let (outcome, stdout, log) = run_json(
        &add_env("/proc/self/ns/net"),
        &config("1.1.0", &dir.socket()),
    );
    assert_eq!(outcome.exit_code, 0, "{stdout} {log}");
    let mut want = prev_result();
    want["cniVersion"] = json!("1.1.0");
    assert_eq!(stdout, want);
    assert!(
        log.contains("level=info") && log.contains("c0ffee"),
        "{log}"
    );

    let seen = server.join().unwrap();
    let [
        Received {
            request: Request::Add { version, add },
            netns,
        },
    ] = &seen[..]
    else {
        panic!("expected one add");
    };
    assert_eq!(*version, PROTOCOL_VERSION);
    assert_eq!(
        add.pod,
        PodIdentity {
            uid: "7f3a-11".into(),
            namespace: "shop".into(),
            name: "web-0".into(),
            service_account: None
        }
    );
    assert_eq!(add.attachment, attachment());
    assert_eq!(add.netns_path, "/proc/self/ns/net");
    let want_ips: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
    assert_eq!(add.ips, want_ips);
    assert_eq!(
        *netns,
        Some(own_netns()),
        "the descriptor received is CNI_NETNS"
    );
}

#[test]
fn add_without_proxy_is_code_11_naming_the_socket() {
    let dir = TempDir::new("add-absent");
    let (outcome, stdout, log) = run_json(
        &add_env("/proc/self/ns/net"),
        &config("1.0.0", &dir.socket()),
    );
    let socket = dir.socket().display().to_string();
    assert_error(
        &outcome,
        &stdout,
        11,
        &[&socket, "must not start uncaptured"],
    );
    assert_eq!(stdout["cniVersion"], "1.0.0");
    assert!(log.contains("level=error"), "{log}");
}

#[test]
fn add_refused_by_the_proxy_carries_its_code_and_message() {
    let dir = TempDir::new("add-refused");
    let server = fake_proxy(&dir.socket(), vec![refusal(ErrorKind::Capture, "map full")]);
    let (outcome, stdout, _) = run_json(
        &add_env("/proc/self/ns/net"),
        &config("1.1.0", &dir.socket()),
    );
    assert_error(&outcome, &stdout, 104, &["refused ADD", "map full"]);
    server.join().unwrap();
}

#[test]
fn add_times_out_with_code_11_within_the_bound() {
    let dir = TempDir::new("add-timeout");
    let listener = listen(&dir.socket());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        // Hold the connection open without answering until the test is over.
        let _ = done_rx.recv();
        drop(conn);
    });
    let mut conf = config("1.1.0", &dir.socket());
    conf["proxyTimeoutMs"] = json!(200);
    let started = Instant::now();
    let (outcome, stdout, _) = run_json(&add_env("/proc/self/ns/net"), &conf);
    let elapsed = started.elapsed();
    done_tx.send(()).unwrap();
    server.join().unwrap();
    assert_error(
        &outcome,
        &stdout,
        11,
        &["did not answer within 200 ms", "uncaptured"],
    );
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
}

#[test]
fn del_sends_the_attachment() {
    let dir = TempDir::new("del-ok");
    let server = fake_proxy(&dir.socket(), vec![ok()]);
    let mut vars = command_env("DEL");
    vars.remove("CNI_NETNS");
    let (outcome, stdout, _) = run_json(&vars, &config("1.1.0", &dir.socket()));
    assert_eq!((outcome.exit_code, stdout), (0, Value::Null));
    let seen = server.join().unwrap();
    assert_eq!(
        seen[0].request,
        Request::Del {
            version: PROTOCOL_VERSION,
            attachment: attachment()
        }
    );
    assert_eq!(seen[0].netns, None);
}

#[test]
fn del_without_proxy_succeeds_silently() {
    let dir = TempDir::new("del-absent");
    let (outcome, stdout, log) = run_json(&command_env("DEL"), &config("1.1.0", &dir.socket()));
    assert_eq!(
        outcome,
        Outcome {
            stdout: None,
            exit_code: 0
        }
    );
    assert_eq!(stdout, Value::Null);
    assert!(
        log.contains("level=warn") && log.contains("tolerated"),
        "{log}"
    );
}

#[test]
fn del_of_an_unknown_pod_succeeds() {
    let dir = TempDir::new("del-unknown");
    let server = fake_proxy(
        &dir.socket(),
        vec![refusal(ErrorKind::NotEnrolled, "no such")],
    );
    let (outcome, _, _) = run_json(&command_env("DEL"), &config("1.1.0", &dir.socket()));
    assert_eq!(outcome.exit_code, 0);
    server.join().unwrap();
}

#[test]
fn check_reports_a_pod_that_is_not_enrolled() {
    let dir = TempDir::new("check");
    let server = fake_proxy(
        &dir.socket(),
        vec![ok(), refusal(ErrorKind::NotEnrolled, "c0ffee")],
    );
    let conf = config("1.0.0", &dir.socket());
    let (outcome, stdout, _) = run_json(&command_env("CHECK"), &conf);
    assert_eq!((outcome.exit_code, stdout), (0, Value::Null));
    let (outcome, stdout, _) = run_json(&command_env("CHECK"), &conf);
    assert_error(&outcome, &stdout, 106, &["not enrolled"]);
    let seen = server.join().unwrap();
    assert_eq!(
        seen[1].request,
        Request::Check {
            version: PROTOCOL_VERSION,
            attachment: attachment()
        }
    );
}

#[test]
fn check_without_proxy_is_code_11() {
    let dir = TempDir::new("check-absent");
    let (outcome, stdout, _) = run_json(&command_env("CHECK"), &config("1.1.0", &dir.socket()));
    assert_error(&outcome, &stdout, 11, &["try again later"]);
}

#[test]
fn status_is_silent_when_ready_and_code_50_naming_the_socket_otherwise() {
    let dir = TempDir::new("status");
    let server = fake_proxy(
        &dir.socket(),
        vec![ok(), refusal(ErrorKind::NotReady, "starting")],
    );
    let conf = config("1.1.0", &dir.socket());
    let (outcome, _, _) = run_json(&env(&[("CNI_COMMAND", "STATUS")]), &conf);
    assert_eq!(
        outcome,
        Outcome {
            stdout: None,
            exit_code: 0
        }
    );
    let (outcome, stdout, _) = run_json(&env(&[("CNI_COMMAND", "STATUS")]), &conf);
    assert_error(&outcome, &stdout, 50, &["not available", "starting"]);
    assert_eq!(
        server.join().unwrap()[0].request,
        Request::Status {
            version: PROTOCOL_VERSION
        }
    );

    let absent = TempDir::new("status-absent");
    let (outcome, stdout, _) = run_json(
        &env(&[("CNI_COMMAND", "STATUS")]),
        &config("1.1.0", &absent.socket()),
    );
    assert_error(
        &outcome,
        &stdout,
        50,
        &[&absent.socket().display().to_string()],
    );
}

#[test]
fn gc_sends_the_valid_attachments() {
    let dir = TempDir::new("gc");
    let server = fake_proxy(&dir.socket(), vec![ok()]);
    let mut conf = config("1.1.0", &dir.socket());
    conf[VALID_ATTACHMENTS] = json!([
        {"containerID": "a1", "ifname": "eth0"},
        {"containerID": "b2", "ifname": "net1"}
    ]);
    let (outcome, stdout, _) = run_json(&env(&[("CNI_COMMAND", "GC")]), &conf);
    assert_eq!((outcome.exit_code, stdout), (0, Value::Null));
    let want = vec![
        Attachment {
            container_id: "a1".into(),
            ifname: "eth0".into(),
        },
        Attachment {
            container_id: "b2".into(),
            ifname: "net1".into(),
        },
    ];
    assert_eq!(
        server.join().unwrap()[0].request,
        Request::Gc {
            version: PROTOCOL_VERSION,
            valid: want
        }
    );

    let absent = TempDir::new("gc-absent");
    conf["proxySocket"] = json!(absent.socket());
    let (outcome, stdout, _) = run_json(&env(&[("CNI_COMMAND", "GC")]), &conf);
    assert_error(&outcome, &stdout, 11, &["try again later"]);
}
