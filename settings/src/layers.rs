//! The layers a program's configuration is read from, lowest first: its defaults, a YAML file
//! (`--config-file`, `MARROW_CONFIG_FILE`), the environment (`MARROW_*`), the flags.
//!
//! A program declares each setting once, with [`settings!`](crate::settings): its
//! field, doc, default, flag name (also its key in the file), environment variable and
//! [`Parser`]. Every layer hands the setting's text to the same parser, so a value means the
//! same wherever it is written, and a bad one is named with its layer. The environment is read
//! through [`Env`], so tests pass a map (`std::env::set_var` is banned by clippy.toml).
//!
//! Invariants: a layer replaces a setting's whole value (a list given by a flag replaces the
//! environment's list); a file key that is no setting is an error, not ignored; the flags
//! count only when given on the command line (clap's reading of the environment only checks
//! and shows it, [`Env`] is the one read).

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches};

use crate::SettingsError;

/// The variable naming the configuration file, when `--config-file` is not given.
pub const CONFIG_FILE_ENV: &str = "MARROW_CONFIG_FILE";

/// How a setting is written on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// A switch without a value (`--kube`); `true` or `false` in the file and the environment.
    Switch,
    /// One value.
    Value,
    /// Repeatable; comma-separated in a flag or the environment, a list or a string in the file.
    List,
}

/// How a setting's text becomes its value.
pub struct Parser<T> {
    /// How it is written on the command line.
    pub shape: Shape,
    /// The placeholder `--help` shows.
    pub value_name: &'static str,
    /// What a good value looks like, for errors.
    pub expected: &'static str,
    /// The value from one layer's text (the last one counts, except for a list).
    pub parse: fn(&[&str]) -> Result<T, String>,
    /// The value as a flag would spell it (`--help`'s default); `None` when unset.
    pub show: fn(&T) -> Option<String>,
}

/// One setting, as the layers see it.
#[derive(Debug)]
pub struct Setting {
    /// The flag without its dashes; also the key in the file.
    pub name: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// Its doc comment, which `--help` shows.
    pub doc: &'static [&'static str],
    /// How it is written on the command line.
    pub shape: Shape,
    /// The placeholder `--help` shows.
    pub value_name: &'static str,
    /// What a good value looks like.
    pub expected: &'static str,
}

impl Setting {
    /// `--name`, as errors and `validate()` call it.
    pub fn flag(&self) -> String {
        format!("--{}", self.name)
    }
}

/// A program's configuration: its settings, declared with
/// [`settings!`](crate::settings).
pub trait Settings: Default + 'static {
    /// Every setting, in the order `--help` lists them.
    const SETTINGS: &'static [Setting];
    /// Sets the setting `name` from one layer's text.
    ///
    /// # Errors
    /// The parser's reason, when the text is no value of the setting.
    fn set(&mut self, name: &str, values: &[&str]) -> Result<(), String>;
    /// The setting `name` as a flag would spell it; `None` when unset.
    fn show(&self, name: &str) -> Option<String>;
}

/// Where a value was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The configuration file.
    File(PathBuf),
    /// An environment variable.
    Env(&'static str),
    /// The command line.
    Flag,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(path) => write!(f, "in {}", path.display()),
            Origin::Env(name) => write!(f, "from {name}"),
            Origin::Flag => f.write_str("on the command line"),
        }
    }
}

/// The process environment, or a map in tests.
pub trait Env {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The environment of this process.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
    }
}

impl Env for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

/// The flags a program was started with (what the command line gave, nothing else), as a
/// clap argument group: `Command::Run(Flags<Config>)`.
pub struct Flags<C> {
    config_file: Option<PathBuf>,
    given: Vec<(&'static str, Vec<String>)>,
    settings: PhantomData<fn() -> C>,
}

impl<C> std::fmt::Debug for Flags<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flags")
            .field("config_file", &self.config_file)
            .field("given", &self.given)
            .finish()
    }
}

impl<C: Settings> Flags<C> {
    /// The configuration: the defaults, then the file (`--config-file`, else
    /// `MARROW_CONFIG_FILE`), then `env`, then these flags. Not yet validated.
    ///
    /// # Errors
    /// When the file cannot be read or holds no setting map, or a value does not parse; the
    /// error names the setting, the value, its layer and what is expected.
    pub fn load(&self, env: &dyn Env) -> Result<C, SettingsError> {
        let mut config = C::default();
        let file = self
            .config_file
            .clone()
            .or_else(|| env.var(CONFIG_FILE_ENV).map(PathBuf::from));
        if let Some(path) = file {
            for (setting, values) in read_file(&path, C::SETTINGS)? {
                apply(&mut config, setting, &values, Origin::File(path.clone()))?;
            }
        }
        for setting in C::SETTINGS {
            let Some(text) = env.var(setting.env) else {
                continue;
            };
            let values = match setting.shape {
                Shape::List => text.split(',').map(str::to_owned).collect(),
                Shape::Switch | Shape::Value => vec![text],
            };
            apply(&mut config, setting, &values, Origin::Env(setting.env))?;
        }
        for (name, values) in &self.given {
            if let Some(setting) = C::SETTINGS.iter().find(|s| s.name == *name) {
                apply(&mut config, setting, values, Origin::Flag)?;
            }
        }
        Ok(config)
    }
}

fn apply<C: Settings>(
    config: &mut C,
    setting: &Setting,
    values: &[String],
    origin: Origin,
) -> Result<(), SettingsError> {
    let texts: Vec<&str> = values.iter().map(String::as_str).collect();
    config
        .set(setting.name, &texts)
        .map_err(|reason| SettingsError::Layer {
            setting: setting.flag(),
            value: values.join(","),
            origin,
            expected: setting.expected,
            reason,
        })
}

/// The settings in the YAML file at `path`: a map from setting names to a value each (a
/// list for a list setting); `null` leaves the setting as it is.
fn read_file(
    path: &std::path::Path,
    settings: &'static [Setting],
) -> Result<Vec<(&'static Setting, Vec<String>)>, SettingsError> {
    let file = |reason: String| SettingsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
    let document: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).map_err(|e| file(e.to_string()))?;
    let map = match document {
        serde_yaml_ng::Value::Null => return Ok(Vec::new()),
        serde_yaml_ng::Value::Mapping(map) => map,
        _ => return Err(file("expected a map of setting names to values".to_owned())),
    };
    let mut found = Vec::new();
    for (key, value) in map {
        let key = scalar(&key).ok_or_else(|| file(format!("a key is not a name: {key:?}")))?;
        let setting = settings.iter().find(|s| s.name == key).ok_or_else(|| {
            file(format!(
                "no setting {key:?} (the keys are the flags without their dashes)"
            ))
        })?;
        let values = match value {
            serde_yaml_ng::Value::Null => continue,
            serde_yaml_ng::Value::Sequence(items) if setting.shape == Shape::List => items
                .iter()
                .map(|item| {
                    scalar(item).ok_or_else(|| file(format!("{key}: a list item is not a value")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            serde_yaml_ng::Value::String(text) if setting.shape == Shape::List => {
                text.split(',').map(str::to_owned).collect()
            }
            other => vec![scalar(&other).ok_or_else(|| {
                file(format!("{key}: expected one value ({})", setting.expected))
            })?],
        };
        found.push((setting, values));
    }
    Ok(found)
}

/// A YAML scalar as a flag would spell it.
fn scalar(value: &serde_yaml_ng::Value) -> Option<String> {
    match value {
        serde_yaml_ng::Value::String(text) => Some(text.clone()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The `--config-file` flag.
const CONFIG_FILE_FLAG: &str = "config-file";

/// The clap argument of `setting`: its flag, variable and doc, checked by its parser.
fn arg<C: Settings>(setting: &'static Setting) -> Arg {
    let mut help = setting
        .doc
        .iter()
        .map(|line| line.trim())
        .collect::<Vec<_>>()
        .join(" ");
    // As clap's derive does: a one-sentence help has no final period.
    if help.ends_with('.') && help.matches(". ").count() == 0 {
        help.pop();
    }
    if let Some(default) = C::default().show(setting.name) {
        help.push_str(&format!(" [default: {default}]"));
    }
    let name = setting.name;
    let check = move |text: &str| -> Result<String, String> {
        C::default().set(name, &[text]).map(|()| text.to_owned())
    };
    let arg = Arg::new(name).long(name).env(setting.env).help(help);
    match setting.shape {
        Shape::Switch => arg.action(ArgAction::SetTrue),
        Shape::Value => arg.value_name(setting.value_name).value_parser(check),
        Shape::List => arg
            .value_name(setting.value_name)
            .value_parser(check)
            .action(ArgAction::Append)
            .value_delimiter(','),
    }
}

impl<C: Settings> clap::Args for Flags<C> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            Arg::new(CONFIG_FILE_FLAG)
                .long(CONFIG_FILE_FLAG)
                .env(CONFIG_FILE_ENV)
                .value_name("PATH")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "A YAML file of settings: keys are these flags without their dashes; \
                     the environment and the flags override it",
                ),
        )
        .args(C::SETTINGS.iter().map(arg::<C>))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl<C: Settings> clap::FromArgMatches for Flags<C> {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let on_command_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let mut given = Vec::new();
        for setting in C::SETTINGS {
            if !on_command_line(setting.name) {
                continue;
            }
            let values = matches
                .get_raw(setting.name)
                .into_iter()
                .flatten()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            given.push((setting.name, values));
        }
        let config_file = if on_command_line(CONFIG_FILE_FLAG) {
            matches.get_one::<PathBuf>(CONFIG_FILE_FLAG).cloned()
        } else {
            None
        };
        Ok(Self {
            config_file,
            given,
            settings: PhantomData,
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

/// Declares a program's configuration once: the struct (fields with their docs), its
/// [`Default`] and its [`Settings`] (flag, variable and parser of each field).
///
/// ```text
/// settings! {
///     /// Everything the program needs.
///     #[derive(Clone, Debug)]
///     pub struct Config {
///         /// Bound on connecting to an upstream, in milliseconds.
///         connect_timeout: Duration = Duration::from_secs(10),
///             ("connect-timeout-ms", "MARROW_CONNECT_TIMEOUT_MS", parse::MILLIS),
///     }
/// }
/// ```
#[macro_export]
macro_rules! settings {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty = $default:expr,
                    ($flag:literal, $env:literal, $parser:expr),
            )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::Settings for $name {
            const SETTINGS: &'static [$crate::Setting] = &[
                $( $crate::Setting {
                    name: $flag,
                    env: $env,
                    doc: &[$($doc),*],
                    shape: $parser.shape,
                    value_name: $parser.value_name,
                    expected: $parser.expected,
                }, )*
            ];

            fn set(&mut self, name: &str, values: &[&str]) -> Result<(), String> {
                match name {
                    $( $flag => self.$field = ($parser.parse)(values)?, )*
                    _ => return Err(format!("no setting {name}")),
                }
                Ok(())
            }

            fn show(&self, name: &str) -> Option<String> {
                match name {
                    $( $flag => ($parser.show)(&self.$field), )*
                    _ => None,
                }
            }
        }
    };
}
