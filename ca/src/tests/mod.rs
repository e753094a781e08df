//! Tests of the CA service's pure parts.

mod authorize;
mod csr;

use clap::Parser;

use super::{CaSettings, ServeConfig};
use marrow_settings::Flags;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    serve: Flags<ServeConfig>,
}

/// The settings `args` give (no file, an empty environment).
fn settings(args: &[&str]) -> Result<CaSettings, String> {
    let cli = Cli::try_parse_from(std::iter::once("ca").chain(args.iter().copied()))
        .map_err(|e| e.to_string())?;
    let env = std::collections::BTreeMap::new();
    let config = cli.serve.load(&env).map_err(|e| e.to_string())?;
    config.settings().map_err(|e| e.to_string())
}

#[test]
fn flags_default_to_the_documented_settings() {
    assert_eq!(settings(&[]).unwrap(), CaSettings::default());
    let custom = settings(&[
        "--node-proxy-accounts",
        "a/b, c/d",
        "--serving-names",
        "ca.example",
        "--max-cert-ttl-secs",
        "3600",
        "--trust-domain",
        "mesh.example",
    ])
    .unwrap();
    assert_eq!(custom.node_proxy_accounts.len(), 2);
    assert_eq!(custom.node_proxy_accounts[1].to_string(), "c/d");
    assert_eq!(custom.serving_names, vec!["ca.example".to_owned()]);
    assert_eq!(custom.max_cert_ttl.as_secs(), 3600);
    assert_eq!(custom.trust_domain.as_str(), "mesh.example");
}

#[test]
fn bad_flags_name_the_setting() {
    for (args, names) in [
        (
            &["--node-proxy-accounts", "node-proxy"][..],
            "--node-proxy-accounts",
        ),
        (&["--trust-domain", "Not Valid"][..], "--trust-domain"),
        (&["--max-cert-ttl-secs", "10"][..], "--max-cert-ttl-secs"),
        (&["--serving-names", ","][..], "--serving-names"),
        (&["--audience", ""][..], "--audience"),
    ] {
        let e = settings(args).unwrap_err();
        assert!(e.contains(names), "{args:?}: {e}");
    }
}

#[test]
fn a_file_and_the_environment_configure_the_ca_as_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.yaml");
    std::fs::write(&file, "max-cert-ttl-secs: 3600\naudience: from-file\n").unwrap();
    let path = file.display().to_string();
    let env = std::collections::BTreeMap::from([
        ("MARROW_CONFIG_FILE", path.as_str()),
        ("MARROW_CA_AUDIENCE", "from-env"),
    ]);
    let config = Cli::try_parse_from(["ca"])
        .unwrap()
        .serve
        .load(&env)
        .unwrap();
    assert_eq!(config.max_cert_ttl.as_secs(), 3600);
    assert_eq!(config.audience, "from-env");
    assert_eq!(config.settings().unwrap().audience, "from-env");
    let error = Cli::try_parse_from(["ca"])
        .unwrap()
        .serve
        .load(&std::collections::BTreeMap::from([(
            "MARROW_CA_LISTEN",
            ":15012",
        )]))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("--listen") && error.contains("MARROW_CA_LISTEN"),
        "{error}"
    );
}

#[test]
fn the_waypoint_controller_is_on_by_default_and_follows_the_ca() {
    let load = |args: &[&str], env: &[(&str, &str)]| {
        let cli = Cli::try_parse_from(std::iter::once("ca").chain(args.iter().copied())).unwrap();
        let env: std::collections::BTreeMap<&str, &str> = env.iter().copied().collect();
        cli.serve.load(&env).unwrap()
    };
    let on = load(
        &[
            "--trust-domain",
            "mesh.example",
            "--waypoint-image",
            "r/i:1",
        ],
        &[],
    );
    let controller = on.controller_settings().unwrap();
    assert_eq!(controller.image, "r/i:1");
    assert_eq!(controller.trust_domain, "mesh.example");
    assert_eq!(controller.ca_audience, "istio-ca");
    let election = controller.election.unwrap();
    assert_eq!(
        (election.namespace.as_str(), election.identity.as_str()),
        ("marrow-system", "")
    );
    assert_eq!(election.lease_name, "istio-gateway-deployment-default");
    let off = load(&[], &[("MARROW_CA_WAYPOINT_CONTROLLER", "false")]);
    assert_eq!(off.controller_settings(), None);
    // Its settings are checked only when it runs.
    let plain = load(&["--waypoint-ca-address", "http://ca:15012"], &[]);
    let e = plain.settings().unwrap_err().to_string();
    assert!(e.contains("--waypoint-ca-address"), "{e}");
    let plain_off = load(
        &["--waypoint-ca-address", "http://ca:15012"],
        &[("MARROW_CA_WAYPOINT_CONTROLLER", "false")],
    );
    assert!(plain_off.settings().is_ok());
}
