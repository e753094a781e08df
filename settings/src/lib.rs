//! How every marrow program reads its settings: each setting declared once with [`settings!`]
//! (field, doc, default, flag, `MARROW_*` variable, parser), read from the defaults, then a YAML
//! file (`--config-file`, `MARROW_CONFIG_FILE`), then the environment, then the flags
//! ([`Flags::load`]); a program then validates the result. A bad value is named with its
//! setting, its layer, the value and what is expected ([`SettingsError`]).

mod layers;
pub mod parse;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use layers::{
    CONFIG_FILE_ENV, Env, Flags, Origin, Parser, ProcessEnv, Setting, Settings, Shape,
};

/// Why a configuration cannot be read, or a setting cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A setting has a value that cannot work.
    #[error("setting {setting} = {value:?}: {expected}")]
    Invalid {
        /// Setting name (the flag).
        setting: &'static str,
        /// The offending value.
        value: String,
        /// What is expected.
        expected: &'static str,
    },
    /// A layer gave a setting text that is no value of it.
    #[error("setting {setting} = {value:?} {origin}: expected {expected} ({reason})")]
    Layer {
        /// The setting (its flag).
        setting: String,
        /// The text given.
        value: String,
        /// Where it was given.
        origin: Origin,
        /// What a good value looks like.
        expected: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// The configuration file cannot be read, or is not a map of settings.
    #[error("configuration file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// The error of a setting whose value a program's validation refuses: names the setting (its
/// flag), the value and what is expected.
pub fn invalid(
    setting: &'static str,
    value: impl std::fmt::Display,
    expected: &'static str,
) -> SettingsError {
    SettingsError::Invalid {
        setting,
        value: value.to_string(),
        expected,
    }
}
