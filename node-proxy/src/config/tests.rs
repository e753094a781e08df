//! Tests of the node proxy's configuration: its layers (file, environment, flags) and its
//! validation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::*;
use marrow_settings::{CONFIG_FILE_ENV, Flags};

/// `node-proxy run`'s flags, as main parses them.
#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    flags: Flags<Config>,
}

/// The configuration `args` and `env` give, over the file `file` holds (if any).
fn load(file: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node-proxy.yaml");
    let mut env: BTreeMap<&str, &str> = env.iter().copied().collect();
    let path_text = path.display().to_string();
    if let Some(text) = file {
        std::fs::write(&path, text).unwrap();
        env.insert(CONFIG_FILE_ENV, &path_text);
    }
    let cli = Cli::try_parse_from(std::iter::once("run").chain(args.iter().copied())).unwrap();
    Ok(cli.flags.load(&env)?)
}

#[test]
fn defaults_are_valid() {
    Config::default().validate().unwrap();
}

#[test]
fn bad_values_name_the_setting() {
    let mut c = Config {
        worker_threads: 0,
        ..Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--worker-threads")
    );
    c = Config {
        bpffs_dir: "rel".into(),
        ..Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--bpffs-dir")
    );
    c = Config {
        readiness_addr: Config::default().metrics_addr,
        ..Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--readiness-addr")
    );
    c = Config {
        cluster_id: String::new(),
        ..Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--cluster-id")
    );
    c = Config {
        cni_socket: PathBuf::from(format!("/{}", "x".repeat(120))),
        ..Config::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--cni-socket")
    );
}

#[test]
fn the_certificate_source_is_one_complete_ca() {
    let remote = Config {
        kube: true,
        ca_address: Some("https://marrow-ca.marrow-system.svc:15012".into()),
        ca_roots: Some("/var/run/secrets/marrow-ca/root-cert.pem".into()),
        ..Config::default()
    };
    remote.validate().unwrap();
    let cases: [(Config, &str, &str); 7] = [
        (
            Config {
                ca_headers: vec![("authorization".into(), "Bearer x".into())],
                ..remote.clone()
            },
            "--ca-header",
            "NAME=VALUE",
        ),
        (
            Config {
                ca_dir: Some("/etc/ca".into()),
                ..remote.clone()
            },
            "--ca-dir",
            "not both",
        ),
        (
            Config {
                ca_roots: None,
                ..remote.clone()
            },
            "--ca-address",
            "--ca-roots",
        ),
        (
            Config {
                ca_address: Some("http://ca:15012".into()),
                ..remote.clone()
            },
            "--ca-address",
            "https://",
        ),
        (
            Config {
                ca_address: None,
                kube: false,
                ..remote.clone()
            },
            "--ca-roots",
            "--ca-address",
        ),
        (
            Config {
                kube: false,
                ..remote.clone()
            },
            "--ca-address",
            "state source",
        ),
        (
            Config {
                ca_roots_poll: Duration::ZERO,
                ..remote.clone()
            },
            "--ca-roots-poll-ms",
            "10..",
        ),
    ];
    for (config, setting, expected) in cases {
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains(setting) && error.contains(expected),
            "{error}"
        );
    }
}

#[test]
fn the_key_exchange_setting_takes_two_values() {
    use marrow_mesh::tls::KeyExchange;
    assert_eq!(
        Config::default().tls_key_exchange,
        KeyExchange::PreferPostQuantum
    );
    assert_eq!(
        parse_key_exchange("post-quantum-only"),
        Ok(KeyExchange::PostQuantumOnly)
    );
    assert_eq!(
        parse_key_exchange(" prefer-post-quantum "),
        Ok(KeyExchange::PreferPostQuantum)
    );
    for bad in ["", "pqc", "Post-Quantum-Only", "x25519"] {
        let error = parse_key_exchange(bad).unwrap_err();
        assert!(
            error.contains("prefer-post-quantum or post-quantum-only"),
            "{bad:?}: {error}"
        );
    }
}

#[test]
fn finds_cgroup2_on_hybrid_hosts() {
    let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    assert_eq!(
        cgroup2_mount(text),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    assert_eq!(cgroup2_mount("garbage"), None);
}

#[test]
fn nothing_given_is_the_defaults() {
    assert_eq!(load(None, &[], &[]).unwrap(), Config::default());
    assert_eq!(load(Some(""), &[], &[]).unwrap(), Config::default());
}

#[test]
fn the_file_sets_every_kind_of_value() {
    let file = "\
ebpf-object: /opt/marrow/marrow-ebpf.o
cgroup: /sys/fs/cgroup/marrow
metrics-addr: 127.0.0.1:9020
connect-timeout-ms: 2500
worker-threads: 4
drain-timeout-secs: 5
hbone-no-pool: true
kube: true
ca-address: https://ca.example:15012
ca-roots: /etc/roots.pem
ca-header: [ClusterID=east, Region=eu]
inbound-source-ports: 20000-40000
tls-key-exchange: post-quantum-only
node-name: 1234
state-file: null
";
    let c = load(Some(file), &[], &[]).unwrap();
    assert_eq!(c.ebpf_object, PathBuf::from("/opt/marrow/marrow-ebpf.o"));
    assert_eq!(c.cgroup, Some(PathBuf::from("/sys/fs/cgroup/marrow")));
    assert_eq!(c.metrics_addr, "127.0.0.1:9020".parse().unwrap());
    assert_eq!(c.connect_timeout, Duration::from_millis(2500));
    assert_eq!(c.worker_threads, 4);
    assert_eq!(c.drain_timeout, Duration::from_secs(5));
    assert!(c.hbone_no_pool);
    assert!(!Config::default().hbone_no_pool, "pooling is on by default");
    assert!(c.kube);
    assert_eq!(c.ca_address.as_deref(), Some("https://ca.example:15012"));
    assert_eq!(
        c.ca_headers,
        vec![
            ("ClusterID".to_owned(), "east".to_owned()),
            ("Region".to_owned(), "eu".to_owned())
        ]
    );
    assert_eq!(c.inbound_source_ports, (20000, 40000));
    assert_eq!(
        c.tls_key_exchange,
        marrow_mesh::tls::KeyExchange::PostQuantumOnly
    );
    // A number where a name is expected is the name it spells.
    assert_eq!(c.node_name.as_deref(), Some("1234"));
    assert_eq!(c.state_file, None);
    // What the file does not name keeps its default.
    assert_eq!(c.state_dir, Config::default().state_dir);
    c.validate().unwrap();
}

#[test]
fn the_environment_overrides_the_file() {
    let file = "worker-threads: 4\ndrain-timeout-secs: 5\nca-header: [A=1]\n";
    let env = [
        ("MARROW_WORKER_THREADS", "8"),
        ("MARROW_CA_HEADERS", "B=2,C=3"),
    ];
    let c = load(Some(file), &env, &[]).unwrap();
    assert_eq!(c.worker_threads, 8);
    assert_eq!(c.ca_headers.len(), 2, "a list is replaced whole");
    // Not in the environment: the file's value stays.
    assert_eq!(c.drain_timeout, Duration::from_secs(5));
}

#[test]
fn flags_override_the_environment() {
    let env = [
        ("MARROW_WORKER_THREADS", "8"),
        ("MARROW_ADMIN_ADDR", "127.0.0.1:1500"),
        ("MARROW_KUBE", "false"),
    ];
    let c = load(
        Some("cluster-id: east\n"),
        &env,
        &[
            "--worker-threads",
            "3",
            "--kube",
            "--cluster-id",
            "west",
            "--hbone-no-pool",
        ],
    )
    .unwrap();
    assert_eq!(c.worker_threads, 3);
    assert!(c.hbone_no_pool, "a switch without a value turns it on");
    assert!(c.kube);
    assert_eq!(c.cluster_id, "west");
    // Not on the command line: the environment's value stays.
    assert_eq!(c.admin_addr, "127.0.0.1:1500".parse().unwrap());
}

#[test]
fn the_config_file_comes_from_the_flag_before_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flag.yaml");
    std::fs::write(&path, "worker-threads: 5\n").unwrap();
    let env = BTreeMap::from([(CONFIG_FILE_ENV, "/nonexistent/marrow.yaml")]);
    let cli = Cli::try_parse_from(["run", "--config-file", path.to_str().unwrap()]).unwrap();
    assert_eq!(cli.flags.load(&env).unwrap().worker_threads, 5);
    let missing = Cli::try_parse_from(["run"]).unwrap().flags.load(&env);
    let error = missing.unwrap_err().to_string();
    assert!(error.contains("/nonexistent/marrow.yaml"), "{error}");
}

#[test]
fn a_bad_value_of_each_kind_names_setting_value_layer_and_expectation() {
    let cases: [(&str, &str, &str, &str); 8] = [
        (
            "MARROW_WORKER_THREADS",
            "many",
            "--worker-threads",
            "a whole number",
        ),
        (
            "MARROW_CONNECT_TIMEOUT_MS",
            "1.5s",
            "--connect-timeout-ms",
            "milliseconds",
        ),
        (
            "MARROW_DRAIN_TIMEOUT_SECS",
            "-1",
            "--drain-timeout-secs",
            "seconds",
        ),
        (
            "MARROW_METRICS_ADDR",
            "localhost",
            "--metrics-addr",
            "IP:PORT",
        ),
        ("MARROW_KUBE", "yes", "--kube", "true or false"),
        (
            "MARROW_INBOUND_SOURCE_PORTS",
            "20000",
            "--inbound-source-ports",
            "LO-HI",
        ),
        (
            "MARROW_TLS_KEY_EXCHANGE",
            "pqc",
            "--tls-key-exchange",
            "post-quantum-only",
        ),
        (
            "MARROW_CA_HEADERS",
            "ClusterID",
            "--ca-header",
            "NAME=VALUE",
        ),
    ];
    for (env, value, setting, expected) in cases {
        let error = load(None, &[(env, value)], &[]).unwrap_err().to_string();
        for part in [setting, value, env, expected] {
            assert!(
                error.contains(part),
                "{env}={value}: {part:?} not in {error}"
            );
        }
    }
    // The same parsers read the file; its errors name the file.
    let error = load(Some("worker-threads: many\n"), &[], &[])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--worker-threads") && error.contains("node-proxy.yaml"),
        "{error}"
    );
}

#[test]
fn a_bad_file_is_refused_naming_it() {
    for (text, expected) in [
        ("worker_threads: 4\n", "no setting \"worker_threads\""),
        ("- 1\n- 2\n", "a map of setting names"),
        ("worker-threads: [1, 2]\n", "expected one value"),
        ("worker-threads: {a: 1}\n", "expected one value"),
        ("worker-threads: [\n", "node-proxy.yaml"),
    ] {
        let error = load(Some(text), &[], &[]).unwrap_err().to_string();
        assert!(error.contains(expected), "{text:?}: {error}");
    }
}

#[test]
fn a_bad_flag_is_refused_by_the_parser() {
    let error = Cli::try_parse_from(["run", "--worker-threads", "many"])
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("--worker-threads"), "{error}");
    assert!(Cli::try_parse_from(["run", "--no-such-flag"]).is_err());
}

#[test]
fn the_readme_example_file_is_valid() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("# node-proxy run --config-file")
        .expect("README shows a configuration file");
    let example = &readme[start..];
    let example = &example[..example.find("```").unwrap()];
    let c = load(Some(example), &[], &[]).unwrap();
    c.validate().unwrap();
    assert!(c.kube);
    assert_eq!(c.connect_timeout, Duration::from_secs(5));
}
