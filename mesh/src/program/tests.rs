//! The shared start-up: the settings rows a program gets, the certificate source each setting
//! chooses (and the setting a failure names), the state source's first version.

use std::time::Duration;

use marrow_settings::{Settings, parse};

use super::{CaSettings, StartError, StateSettings, certificates, start_state};
use crate::http::Readiness;
use crate::identity::{DEFAULT_TRUST_DOMAIN, TrustDomain, create_ca};

crate::program_settings! {
    /// A program with one setting of its own.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Program {
        /// Its own setting.
        own: usize = 7,
            ("own", "MARROW_OWN", parse::COUNT),
    }
}

#[test]
fn a_program_gets_the_shared_rows_after_its_own_with_their_flags_variables_and_defaults() {
    let flags: Vec<(&str, &str)> = Program::SETTINGS.iter().map(|s| (s.name, s.env)).collect();
    assert_eq!(flags[0], ("own", "MARROW_OWN"));
    for shared in [
        ("state-file", "MARROW_STATE_FILE"),
        ("state-poll-ms", "MARROW_STATE_POLL_MS"),
        ("kube", "MARROW_KUBE"),
        ("root-namespace", "MARROW_ROOT_NAMESPACE"),
        ("trust-domain", "MARROW_TRUST_DOMAIN"),
        ("ca-dir", "MARROW_CA_DIR"),
        ("ca-address", "MARROW_CA_ADDRESS"),
        ("ca-roots", "MARROW_CA_ROOTS"),
        ("ca-token-file", "MARROW_CA_TOKEN_FILE"),
        ("ca-server-name", "MARROW_CA_SERVER_NAME"),
        ("ca-roots-poll-ms", "MARROW_CA_ROOTS_POLL_MS"),
        ("cert-ttl-secs", "MARROW_CERT_TTL_SECS"),
    ] {
        assert!(flags.contains(&shared), "{shared:?} in {flags:?}");
    }
    assert!(
        !flags.iter().any(|(name, _)| *name == "ca-header"),
        "the node proxy's own"
    );
    let defaults = Program::default();
    assert_eq!(defaults.own, 7);
    assert_eq!(defaults.ca_settings().cert_ttl, Duration::from_secs(86_400));
    assert_eq!(defaults.ca_settings().ca_roots_poll, Duration::from_secs(5));
    assert_eq!(
        defaults.ca_settings().ca_token_file.to_str(),
        Some("/var/run/secrets/tokens/istio-token")
    );
    assert_eq!(defaults.trust_domain, DEFAULT_TRUST_DOMAIN);
    let state = defaults.state_settings(Some("node-1".into()));
    assert_eq!(
        (
            state.state_poll,
            state.root_namespace.as_str(),
            state.node_name.as_deref()
        ),
        (Duration::from_secs(1), "istio-system", Some("node-1"))
    );

    let mut set = Program::default();
    set.set("ca-dir", &["/etc/ca"]).unwrap();
    set.set("state-poll-ms", &["250"]).unwrap();
    assert_eq!(
        set.ca_settings().ca_dir.as_deref().and_then(|p| p.to_str()),
        Some("/etc/ca")
    );
    assert_eq!(
        set.state_settings(None).state_poll,
        Duration::from_millis(250)
    );
    assert!(set.set("state-poll-ms", &["soon"]).is_err());
}

fn named_setting(result: Result<Option<super::Certificates>, StartError>) -> &'static str {
    match result {
        Err(StartError::CertificateSource { setting, .. }) => setting,
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("no error"),
    }
}

#[tokio::test]
async fn the_ca_settings_choose_the_certificate_source_and_a_failure_names_its_setting() {
    let td = TrustDomain::new("cluster.local").unwrap();
    let none = certificates(&CaSettings::default(), &td, None).unwrap();
    assert!(none.is_none(), "without a CA there are no certificates");

    let dir = tempfile::tempdir().unwrap();
    create_ca(dir.path(), &td, Duration::from_secs(3600)).unwrap();
    let local = CaSettings {
        ca_dir: Some(dir.path().to_path_buf()),
        cert_ttl: Duration::from_secs(600),
        ..CaSettings::default()
    };
    let certs = certificates(&local, &td, None).unwrap().unwrap();
    assert_eq!(certs.ca, dir.path().display().to_string());

    let empty = tempfile::tempdir().unwrap();
    let no_ca = CaSettings {
        ca_dir: Some(empty.path().to_path_buf()),
        ..local.clone()
    };
    assert_eq!(named_setting(certificates(&no_ca, &td, None)), "--ca-dir");

    let remote = CaSettings {
        ca_address: Some("https://ca.example:15012".into()),
        ca_roots: Some(empty.path().join("missing-roots.pem")),
        ..CaSettings::default()
    };
    assert_eq!(
        named_setting(certificates(&remote, &td, None)),
        "--ca-roots"
    );
}

#[tokio::test]
async fn the_state_file_publishes_a_first_version_or_the_error_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: shop}\n\
         spec: {nodeName: node-1, serviceAccountName: a}\n\
         status: {podIPs: [{ip: 10.0.0.1}]}\n",
    )
    .unwrap();
    let settings = StateSettings {
        state_file: Some(path.clone()),
        state_poll: Duration::from_millis(50),
        root_namespace: "istio-system".into(),
        node_name: None,
    };
    let readiness = Readiness::default();
    let (state, _watch) = start_state(&settings, &readiness).await.unwrap();
    assert!(
        state
            .snapshot()
            .workload_by_ip("10.0.0.1".parse().unwrap())
            .is_some()
    );

    let missing = StateSettings {
        state_file: Some(dir.path().join("missing.yaml")),
        ..settings
    };
    match start_state(&missing, &readiness).await {
        Err(error @ StartError::StateSource { .. }) => {
            assert!(error.to_string().starts_with("--state-file "), "{error}");
        }
        Err(other) => panic!("another error: {other}"),
        Ok(_) => panic!("a missing file started"),
    }
}
