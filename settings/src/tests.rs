//! The layers on a small program of its own: what `settings!` declares, each layer over the
//! one below, lists, switches, and errors that name the setting, the value and the layer.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser as _;

use crate::{CONFIG_FILE_ENV, Flags, Origin, Settings, SettingsError, parse, settings};

settings! {
    /// A program with one setting of each shape.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Demo {
        /// Worker threads.
        workers: usize = 2,
            ("workers", "DEMO_WORKERS", parse::COUNT),
        /// Connect timeout, in milliseconds.
        connect_timeout: Duration = Duration::from_secs(1),
            ("connect-timeout-ms", "DEMO_CONNECT_TIMEOUT_MS", parse::MILLIS),
        /// Names of things.
        names: Vec<String> = Vec::new(),
            ("names", "DEMO_NAMES", parse::TEXT_LIST),
        /// Whether to watch.
        watch: bool = false,
            ("watch", "DEMO_WATCH", parse::SWITCH),
    }
}

#[derive(clap::Parser)]
struct Cli {
    #[command(flatten)]
    flags: Flags<Demo>,
}

/// The configuration from `file` (if any), then `env`, then `args`.
fn load(file: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Result<Demo, SettingsError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.yaml");
    let path_text = path.display().to_string();
    let mut env: BTreeMap<&str, &str> = env.iter().copied().collect();
    if let Some(text) = file {
        std::fs::write(&path, text).unwrap();
        env.insert(CONFIG_FILE_ENV, &path_text);
    }
    let cli = Cli::try_parse_from(std::iter::once("demo").chain(args.iter().copied())).unwrap();
    cli.flags.load(&env)
}

#[test]
fn nothing_given_is_the_defaults() {
    assert_eq!(load(None, &[], &[]).unwrap(), Demo::default());
    assert_eq!(Demo::SETTINGS.len(), 4);
    assert_eq!(Demo::SETTINGS[1].flag(), "--connect-timeout-ms");
}

#[test]
fn each_layer_overrides_the_one_below() {
    let file = "workers: 3\nconnect-timeout-ms: 250\nnames: [a, b]\nwatch: true\n";
    let from_file = load(Some(file), &[], &[]).unwrap();
    assert_eq!(
        from_file,
        Demo {
            workers: 3,
            connect_timeout: Duration::from_millis(250),
            names: vec!["a".into(), "b".into()],
            watch: true,
        }
    );
    let env_over_file = load(
        Some(file),
        &[("DEMO_WORKERS", "4"), ("DEMO_NAMES", "c,d")],
        &[],
    )
    .unwrap();
    assert_eq!(env_over_file.workers, 4);
    assert_eq!(env_over_file.names, ["c", "d"], "a list is replaced whole");
    assert_eq!(env_over_file.connect_timeout, Duration::from_millis(250));
    let flag_over_env = load(
        Some(file),
        &[("DEMO_WORKERS", "4")],
        &["--workers", "5", "--names", "e"],
    )
    .unwrap();
    assert_eq!(
        (flag_over_env.workers, flag_over_env.names),
        (5, vec!["e".into()])
    );
}

#[test]
fn a_bad_value_names_setting_value_layer_and_expectation() {
    let error = load(None, &[("DEMO_WORKERS", "lots")], &[]).unwrap_err();
    let SettingsError::Layer {
        setting,
        value,
        origin,
        expected,
        ..
    } = &error
    else {
        panic!("{error:?}")
    };
    assert_eq!(
        (setting.as_str(), value.as_str(), origin, *expected),
        (
            "--workers",
            "lots",
            &Origin::Env("DEMO_WORKERS"),
            "a whole number"
        )
    );
    let text = load(Some("watch: maybe\n"), &[], &[])
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("--watch") && text.contains("maybe") && text.contains("demo.yaml"),
        "{text}"
    );
}

#[test]
fn a_file_that_is_no_map_of_settings_is_refused() {
    for (file, why) in [
        ("- workers\n", "expected a map"),
        ("wrokers: 3\n", "no setting \"wrokers\""),
        ("workers: [1, 2]\n", "expected one value"),
    ] {
        let error = load(Some(file), &[], &[]).unwrap_err();
        assert!(
            matches!(error, SettingsError::File { .. }),
            "{file}: {error:?}"
        );
        assert!(error.to_string().contains(why), "{file}: {error}");
    }
    let empty = load(Some(""), &[], &[]).unwrap();
    assert_eq!(empty, Demo::default(), "an empty file sets nothing");
}

#[test]
fn invalid_names_the_setting_the_value_and_what_is_expected() {
    let text = crate::invalid("--workers", 0, "at least 1").to_string();
    assert_eq!(text, "setting --workers = \"0\": at least 1");
}
