//! Pure parts: environment, `CNI_ARGS`, configuration, `prevResult`, VERSION, the choice of
//! request and the judgement of answers.

use super::*;

// ---------------------------------------------------------------------------------------------
// Environment

#[test]
fn missing_command_is_code_4() {
    let (outcome, stdout, _) = run(&env(&[]), b"{}");
    assert_error(&outcome, &stdout, 4, &["CNI_COMMAND"]);
    let (outcome, stdout, _) = run(&env(&[("CNI_COMMAND", "")]), b"{}");
    assert_error(&outcome, &stdout, 4, &["CNI_COMMAND"]);
}

#[test]
fn unknown_command_is_code_4_naming_it() {
    let (outcome, stdout, _) = run(&env(&[("CNI_COMMAND", "FROB")]), b"{}");
    assert_error(&outcome, &stdout, 4, &["FROB"]);
    // Names are matched exactly, as the spec spells them.
    assert!(matches!(Command::parse("add"), Err(CniError::UnknownCommand(c)) if c == "add"));
}

#[test]
fn add_lists_every_missing_variable() {
    let vars = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", ""),
    ]);
    let err = Invocation::from_env(&vars).unwrap_err();
    assert_eq!(err.code(), 4);
    let msg = err.to_string();
    assert!(
        msg.contains("CNI_NETNS") && msg.contains("CNI_IFNAME"),
        "{msg}"
    );
    assert!(!msg.contains("CNI_CONTAINERID"), "{msg}");
}

#[test]
fn del_needs_no_netns_nor_pod_args() {
    let mut vars = command_env("DEL");
    vars.remove("CNI_NETNS");
    vars.insert("CNI_ARGS".into(), "garbage-without-equals".into());
    let invocation = Invocation::from_env(&vars).unwrap();
    assert_eq!(
        invocation,
        Invocation::Op(Op::Del {
            attachment: attachment()
        })
    );
}

#[test]
fn status_gc_and_version_need_no_variables() {
    for (command, want) in [
        ("STATUS", Invocation::Op(Op::Status)),
        ("GC", Invocation::Op(Op::Gc)),
        ("VERSION", Invocation::Version),
    ] {
        assert_eq!(
            Invocation::from_env(&env(&[("CNI_COMMAND", command)])).unwrap(),
            want
        );
    }
}

#[test]
fn bad_container_id_and_ifname_are_code_4() {
    for (var, value) in [
        ("CNI_CONTAINERID", "-leading-dash"),
        ("CNI_CONTAINERID", "has space"),
        ("CNI_IFNAME", "this-name-is-too-long"),
        ("CNI_IFNAME", "eth/0"),
        ("CNI_IFNAME", ".."),
    ] {
        let mut vars = command_env("DEL");
        vars.insert(var.into(), value.into());
        let err = Invocation::from_env(&vars).unwrap_err();
        assert_eq!(err.code(), 4, "{var}={value}");
        assert!(err.to_string().contains(var), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// CNI_ARGS

#[test]
fn cni_args_give_the_pod_identity() {
    let args = CniArgs::parse(&format!("{POD_ARGS};K8S_POD_SERVICE_ACCOUNT=web;")).unwrap();
    assert_eq!(
        args.pod_identity().unwrap(),
        PodIdentity {
            uid: "7f3a-11".into(),
            namespace: "shop".into(),
            name: "web-0".into(),
            service_account: Some("web".into()),
        }
    );
    let without_sa = CniArgs::parse(POD_ARGS).unwrap().pod_identity().unwrap();
    assert_eq!(without_sa.service_account, None);
    assert_eq!(CniArgs::parse("").unwrap(), CniArgs::default());
}

#[test]
fn malformed_cni_args_pair_is_code_4_naming_it() {
    for bad in ["K8S_POD_NAME", "K8S_POD_NAME=a;oops", "=value"] {
        let err = CniArgs::parse(bad).unwrap_err();
        assert_eq!(err.code(), 4);
        assert!(
            matches!(&err, CniError::MalformedArg { .. }),
            "{bad}: {err}"
        );
    }
    let mut vars = add_env("/proc/self/ns/net");
    vars.insert("CNI_ARGS".into(), "K8S_POD_NAMESPACE=a;broken".into());
    let (outcome, stdout, _) = run_json(&vars, &config("1.1.0", Path::new("/nonexistent")));
    assert_error(&outcome, &stdout, 4, &["\"broken\""]);
}

#[test]
fn missing_pod_keys_are_code_4_naming_them() {
    let args = CniArgs::parse("K8S_POD_NAMESPACE=shop;K8S_POD_UID=").unwrap();
    let err = args.pod_identity().unwrap_err();
    assert_eq!(err.code(), 4);
    let msg = err.to_string();
    assert!(
        msg.contains("K8S_POD_NAME") && msg.contains("K8S_POD_UID"),
        "{msg}"
    );
    assert!(!msg.contains("K8S_POD_NAMESPACE"), "{msg}");

    let mut vars = add_env("/proc/self/ns/net");
    vars.remove("CNI_ARGS");
    let (outcome, stdout, _) = run_json(&vars, &config("1.1.0", Path::new("/nonexistent")));
    assert_error(&outcome, &stdout, 4, &["K8S_POD_UID"]);
}

// ---------------------------------------------------------------------------------------------
// Network configuration

#[test]
fn config_defaults_and_unknown_keys() {
    let conf = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"n","type":"t","x":{}}"#).unwrap();
    assert_eq!(conf.cni_version, CniVersion::V0_3_1);
    assert_eq!(
        conf.proxy_socket,
        Path::new(marrow_wire::enrollment::DEFAULT_SOCKET_PATH)
    );
    assert_eq!(
        conf.proxy_timeout,
        Duration::from_millis(DEFAULT_TIMEOUT_MS)
    );
    let conf = NetConf::parse(
        config("1.1.0", Path::new("/run/p.sock"))
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(conf.proxy_socket, Path::new("/run/p.sock"));
    assert_eq!(conf.proxy_timeout, Duration::from_millis(2000));
    assert_eq!(conf.name, "k8s-pod-network");
}

#[test]
fn malformed_stdin_is_code_6() {
    for bad in [&b""[..], b"{not json", b"[1,2]", b"\"text\""] {
        let (outcome, stdout, _) = run(&command_env("DEL"), bad);
        assert_error(&outcome, &stdout, 6, &["network configuration"]);
        assert_eq!(stdout["cniVersion"], "1.1.0");
    }
}

#[test]
fn unsupported_version_is_code_1() {
    for version in [json!("0.2.0"), json!("2.0.0"), json!("1.0")] {
        let err = parse_err(&json!({"cniVersion": version, "name": "n"}));
        assert_eq!(err.code(), 1, "{version}");
        assert!(err.to_string().contains("1.1.0"), "{err}");
    }
    assert_eq!(parse_err(&json!({"name": "n"})).code(), 1);
    let (outcome, stdout, _) = run_json(
        &command_env("DEL"),
        &json!({"cniVersion": "9.9.9", "name": "n"}),
    );
    assert_error(&outcome, &stdout, 1, &["9.9.9"]);
    assert_eq!(
        stdout["cniVersion"], "1.1.0",
        "an unsupported version is not echoed"
    );
}

#[test]
fn commands_newer_than_the_config_version_are_code_1() {
    for (command, version) in [("CHECK", "0.3.1"), ("STATUS", "1.0.0"), ("GC", "0.4.0")] {
        let mut conf = config(version, Path::new("/nonexistent"));
        conf[VALID_ATTACHMENTS] = json!([]);
        let (outcome, stdout, _) = run_json(&command_env(command), &conf);
        assert_error(&outcome, &stdout, 1, &[command, version]);
        assert_eq!(stdout["cniVersion"], version);
    }
}

#[test]
fn bad_settings_are_code_7_naming_setting_value_and_rule() {
    let base = json!({"cniVersion": "1.0.0", "name": "net"});
    let cases = [
        ("proxyTimeoutMs", json!(50), "50"),
        ("proxyTimeoutMs", json!(60001), "60001"),
        ("proxyTimeoutMs", json!("abc"), "abc"),
        ("proxyTimeoutMs", json!(200.5), "200.5"),
        ("proxySocket", json!("relative.sock"), "relative.sock"),
        (
            "proxySocket",
            json!(format!("/{}", "a".repeat(120))),
            "aaaa",
        ),
        ("proxySocket", json!(17), "17"),
        ("name", json!("-bad"), "-bad"),
        ("name", json!(""), "\"\""),
        ("cniVersion", json!(1.0), "1.0"),
    ];
    for (setting, value, shown) in cases {
        let mut conf = base.clone();
        conf[setting] = value;
        let err = parse_err(&conf);
        assert_eq!(err.code(), 7, "{setting}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains(setting) && msg.contains(shown) && msg.contains("expected"),
            "{msg}"
        );
    }
    let err = parse_err(&json!({"cniVersion": "1.0.0"}));
    assert!(err.code() == 7 && err.to_string().contains("name"), "{err}");
}

#[test]
fn timeout_bounds_are_inclusive() {
    for ms in [100, 60_000] {
        let conf = json!({"cniVersion": "1.0.0", "name": "n", "proxyTimeoutMs": ms});
        let conf = NetConf::parse(conf.to_string().as_bytes()).unwrap();
        assert_eq!(conf.proxy_timeout, Duration::from_millis(ms));
    }
}

// ---------------------------------------------------------------------------------------------
// prevResult

#[test]
fn add_without_prev_result_is_code_7() {
    let mut conf = config("1.0.0", Path::new("/nonexistent"));
    conf.as_object_mut().unwrap().remove("prevResult");
    let (outcome, stdout, _) = run_json(&add_env("/proc/self/ns/net"), &conf);
    assert_error(
        &outcome,
        &stdout,
        7,
        &["prevResult", "chained", "must follow"],
    );
    let (outcome, stdout, _) = run_json(&command_env("CHECK"), &conf);
    assert_error(&outcome, &stdout, 7, &["CHECK needs prevResult"]);
}

#[test]
fn prev_result_without_ips_is_code_7() {
    for prev in [
        json!({"cniVersion": "1.0.0", "interfaces": []}),
        json!({"ips": []}),
        json!({"ips": null}),
        // Only a host-side address (the bridge's): nothing of the pod.
        json!({
            "interfaces": [{"name": "cni0"}],
            "ips": [{"address": "10.1.0.1/16", "interface": 0}]
        }),
    ] {
        let mut conf = config("1.0.0", Path::new("/nonexistent"));
        conf["prevResult"] = prev.clone();
        let (outcome, stdout, _) = run_json(&add_env("/proc/self/ns/net"), &conf);
        assert_error(&outcome, &stdout, 7, &["no pod IP"]);
    }
}

#[test]
fn malformed_prev_result_is_code_7_naming_the_field() {
    for (prev, field) in [
        (json!("a string"), "prevResult"),
        (json!({"ips": {}}), "prevResult.ips"),
        (
            json!({"ips": [{"address": "10.0.0.300/24"}]}),
            "prevResult.ips[0].address",
        ),
        (
            json!({"ips": [{"address": "10.0.0.3/24"}, {"address": "10.0.0.3/33"}]}),
            "ips[1]",
        ),
        (
            json!({"ips": [{"gateway": "10.0.0.1"}]}),
            "prevResult.ips[0].address",
        ),
    ] {
        let mut conf = config("1.0.0", Path::new("/nonexistent"));
        conf["prevResult"] = prev;
        let (outcome, stdout, _) = run_json(&add_env("/proc/self/ns/net"), &conf);
        assert_error(&outcome, &stdout, 7, &[field]);
    }
}

#[test]
fn pod_ips_come_from_cidrs_in_order_without_duplicates() {
    let conf = NetConf::parse(config("1.0.0", Path::new("/s")).to_string().as_bytes()).unwrap();
    let prev = conf.prev_result(Command::Add).unwrap();
    let want: Vec<IpAddr> = vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
    assert_eq!(prev.pod_ips().unwrap(), want);

    let mut doc = config("0.4.0", Path::new("/s"));
    // 0.4.0 results carry "version"; entries without "interface" count as the pod's.
    doc["prevResult"] = json!({"ips": [
        {"version": "4", "address": "10.0.0.2/24"},
        {"version": "4", "address": "10.0.0.2/24"},
        {"version": "6", "address": "fd00::2"}
    ]});
    let conf = NetConf::parse(doc.to_string().as_bytes()).unwrap();
    let ips = conf.prev_result(Command::Add).unwrap().pod_ips().unwrap();
    assert_eq!(
        ips,
        [
            "10.0.0.2".parse::<IpAddr>().unwrap(),
            "fd00::2".parse().unwrap()
        ]
    );
}

#[test]
fn cidr_addresses() {
    assert_eq!(
        parse_cidr_address("10.0.0.2/24"),
        Some("10.0.0.2".parse().unwrap())
    );
    assert_eq!(
        parse_cidr_address("fd00::2/64"),
        Some("fd00::2".parse().unwrap())
    );
    assert_eq!(
        parse_cidr_address("10.0.0.2/32"),
        Some("10.0.0.2".parse().unwrap())
    );
    for bad in [
        "",
        "/24",
        "10.0.0.2/",
        "10.0.0.2/33",
        "fd00::2/129",
        "10.0.0.2/+8",
        "x/8",
    ] {
        assert_eq!(parse_cidr_address(bad), None, "{bad}");
    }
}

#[test]
fn prev_result_passes_through_with_every_field() {
    let conf = NetConf::parse(config("1.1.0", Path::new("/s")).to_string().as_bytes()).unwrap();
    let out: Value = serde_json::from_str(
        &conf
            .prev_result(Command::Add)
            .unwrap()
            .to_result(CniVersion::V1_1_0),
    )
    .unwrap();
    let mut want = prev_result();
    want["cniVersion"] = json!("1.1.0");
    assert_eq!(out, want);
    assert_eq!(out["dns"]["search"][0], "svc.cluster.local");
    assert_eq!(out["x-vendor"]["nested"][1], 2.5);
}

// ---------------------------------------------------------------------------------------------
// VERSION

#[test]
fn version_echoes_the_config_version_or_the_newest() {
    let supported = json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
    for (stdin, want) in [
        (&br#"{"cniVersion":"1.0.0"}"#[..], "1.0.0"),
        (b"", "1.1.0"),
        (b"not json", "1.1.0"),
        (br#"{"cniVersion":"0.2.0"}"#, "0.2.0"),
    ] {
        let (outcome, stdout, _) = run(&env(&[("CNI_COMMAND", "VERSION")]), stdin);
        assert_eq!(outcome.exit_code, 0);
        assert_eq!(
            stdout,
            json!({"cniVersion": want, "supportedVersions": supported})
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and answers (pure)

#[test]
fn plans_for_each_operation() {
    let mut doc = config("1.1.0", Path::new("/s"));
    doc[VALID_ATTACHMENTS] = json!([{"containerID": "a", "ifname": "eth0", "extra": 1}]);
    let conf = NetConf::parse(doc.to_string().as_bytes()).unwrap();
    let v = PROTOCOL_VERSION;

    let add = Op::Add {
        attachment: attachment(),
        netns: "/var/run/netns/p".into(),
        args: CniArgs::parse(POD_ARGS).unwrap(),
    };
    let plan_add = plan(&add, &conf).unwrap();
    assert_eq!(plan_add.netns.as_deref(), Some("/var/run/netns/p"));
    let Request::Add { version, add } = plan_add.request else {
        panic!("not an add")
    };
    assert_eq!(version, v);
    assert_eq!(add.pod.uid, "7f3a-11");
    assert_eq!(add.netns_path, "/var/run/netns/p");
    assert_eq!(add.ips.len(), 2);

    let cases = [
        (
            Op::Del {
                attachment: attachment(),
            },
            Request::Del {
                version: v,
                attachment: attachment(),
            },
        ),
        (
            Op::Check {
                attachment: attachment(),
            },
            Request::Check {
                version: v,
                attachment: attachment(),
            },
        ),
        (Op::Status, Request::Status { version: v }),
        (
            Op::Gc,
            Request::Gc {
                version: v,
                valid: vec![Attachment {
                    container_id: "a".into(),
                    ifname: "eth0".into(),
                }],
            },
        ),
    ];
    for (op, want) in cases {
        let got = plan(&op, &conf).unwrap();
        assert_eq!((got.request, got.netns, got.reply), (want, None, None));
    }
}

#[test]
fn gc_needs_a_well_formed_valid_attachments_list() {
    for (list, field) in [
        (None, "cni.dev/valid-attachments"),
        (Some(json!({})), "cni.dev/valid-attachments"),
        (Some(json!([{"ifname": "eth0"}])), "[0].containerID"),
        (
            Some(json!([{"containerID": "a", "ifname": 3}])),
            "[0].ifname",
        ),
    ] {
        let mut doc = json!({"cniVersion": "1.1.0", "name": "n"});
        if let Some(list) = list {
            doc[VALID_ATTACHMENTS] = list;
        }
        let conf = NetConf::parse(doc.to_string().as_bytes()).unwrap();
        let err = plan(&Op::Gc, &conf).unwrap_err();
        assert_eq!(err.code(), 7, "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
}

#[test]
fn refusal_codes() {
    let table = [
        (ErrorKind::Malformed, 100),
        (ErrorKind::InvalidPod, 101),
        (ErrorKind::Netns, 102),
        (ErrorKind::PodNetwork, 103),
        (ErrorKind::Capture, 104),
        (ErrorKind::State, 105),
        (ErrorKind::NotEnrolled, 106),
        (ErrorKind::NotReady, 11),
    ];
    for (kind, code) in table {
        assert_eq!(refusal_code(kind), code, "{kind:?}");
    }
}

fn io_err(kind: std::io::ErrorKind) -> std::io::Error {
    std::io::Error::new(kind, "test")
}

#[test]
fn interpret_by_command() {
    let conf =
        NetConf::parse(br#"{"cniVersion":"1.1.0","name":"n","proxyTimeoutMs":300}"#).unwrap();
    let connect = || {
        Err(ProtocolError::Connect {
            path: "/s".into(),
            source: io_err(std::io::ErrorKind::NotFound),
        })
    };
    let timeout = || {
        Err(ProtocolError::Receive(io_err(
            std::io::ErrorKind::WouldBlock,
        )))
    };
    let refused = |kind| Ok(refusal(kind, "why"));
    let code = |command, answer| interpret(command, &conf, answer).unwrap_err().code();

    assert_eq!(
        interpret(Command::Add, &conf, Ok(ok())).unwrap(),
        Handled::Done("done".into())
    );
    assert_eq!(code(Command::Add, connect()), 11);
    assert_eq!(code(Command::Add, timeout()), 11);
    assert_eq!(code(Command::Add, Err(ProtocolError::NoAnswer)), 11);
    assert_eq!(code(Command::Add, Err(ProtocolError::Limit("big"))), 108);
    let garbage = serde_json::from_slice::<Value>(b"}").unwrap_err();
    assert_eq!(code(Command::Add, Err(ProtocolError::Decode(garbage))), 107);
    assert_eq!(code(Command::Add, refused(ErrorKind::Capture)), 104);
    assert_eq!(code(Command::Check, refused(ErrorKind::NotEnrolled)), 106);
    assert_eq!(code(Command::Check, connect()), 11);
    assert_eq!(code(Command::Gc, connect()), 11);
    assert_eq!(code(Command::Status, connect()), 50);
    assert_eq!(code(Command::Status, timeout()), 50);
    assert_eq!(code(Command::Status, refused(ErrorKind::NotReady)), 50);

    for answer in [
        connect(),
        timeout(),
        refused(ErrorKind::NotEnrolled),
        refused(ErrorKind::NotReady),
    ] {
        let handled = interpret(Command::Del, &conf, answer).unwrap();
        assert!(matches!(handled, Handled::Tolerated(_)), "{handled:?}");
    }
    assert_eq!(code(Command::Del, refused(ErrorKind::State)), 105);

    let err = interpret(Command::Add, &conf, timeout()).unwrap_err();
    assert!(err.to_string().contains("300 ms"), "{err}");
}

#[test]
fn error_json_shape() {
    let err = CniError::ProxyUnreachable {
        command: Command::Add,
        socket: "/run/x.sock".into(),
        source: ProtocolError::NoAnswer,
    };
    let out: Value = serde_json::from_str(&err.to_result(CniVersion::V1_0_0)).unwrap();
    assert_eq!(out["cniVersion"], "1.0.0");
    assert_eq!(out["code"], 11);
    assert!(out["msg"].as_str().unwrap().contains("/run/x.sock"));
    assert!(
        out["details"]
            .as_str()
            .unwrap()
            .contains("without answering")
    );
    let out: Value =
        serde_json::from_str(&CniError::NoPodIps.to_result(CniVersion::V1_1_0)).unwrap();
    assert_eq!(out.as_object().unwrap().len(), 3, "no empty details: {out}");
}
