//! `node-proxy cni install|uninstall|check`: puts redirect-cni on a node and chains it into the
//! node's primary CNI network, as the DaemonSet's installer container does on every node.
//!
//! What it owns on the host: the file `<bin-dir>/redirect-cni`, and one entry
//! `{"type": "redirect-cni", "proxySocket": …}` at the end of the primary network's `plugins`.
//! Invariants:
//! - every write is atomic (temporary file in the same directory, fsync, rename), so the
//!   runtime never reads half a config or executes half a binary;
//! - a config that does not validate (see [`ConfProblem`]) is never written: the error names
//!   the file and the reason;
//! - installing twice changes nothing the second time (the file is not even rewritten);
//!   uninstalling removes exactly redirect-cni's entries and the binary;
//! - `--watch` puts the entry back when the primary CNI rewrites its config, and on SIGTERM
//!   exits removing nothing: a pod must never start uncaptured because an installer stopped.
//!
//! The decisions (which file, what text) are pure functions in [`conf`]; this module does the
//! reading and writing around them.

pub mod conf;
mod files;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use conf::{ChainEntry, ConfProblem, PLUGIN_TYPE, SOCKET_KEY};

/// How often a config that changed under us while rewriting it is retried before giving up
/// (the next `--watch` round tries again).
const CHANGED_RETRIES: usize = 3;

/// Errors of the installer; each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum CniInstallError {
    /// `--socket` is not a path redirect-cni accepts.
    #[error("--socket {0:?}: expected an absolute UTF-8 path shorter than 108 bytes")]
    Socket(PathBuf),
    /// The CNI config directory cannot be listed (missing: is the host path mounted?).
    #[error("listing the CNI config directory {dir}: {source}")]
    ConfDir {
        /// The directory.
        dir: PathBuf,
        /// Cause.
        source: io::Error,
    },
    /// No network config in the directory (the primary CNI has not written one yet).
    #[error(
        "no CNI network config (*.conflist, *.conf, *.json) in {dir}: the primary CNI has not \
         written one yet"
    )]
    NoPrimary {
        /// The directory.
        dir: PathBuf,
    },
    /// A config cannot be chained; it is left untouched.
    #[error("{path}: {problem}; the file is left untouched")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        problem: ConfProblem,
    },
    /// The config changed on disk while it was being rewritten, every time it was tried.
    #[error("{path} kept changing while it was being rewritten; left to the next attempt")]
    Changing {
        /// The file.
        path: PathBuf,
    },
    /// The primary config does not carry redirect-cni with this socket (`check`).
    #[error("{path} does not chain redirect-cni with proxySocket {socket}")]
    NotChained {
        /// The primary config.
        path: PathBuf,
        /// The socket the entry should name.
        socket: String,
    },
    /// The plugin binary is missing from the bin dir (`check`).
    #[error("{0} is missing")]
    NoBinary(PathBuf),
    /// Reading, writing or removing a file failed.
    #[error("{step} {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done, e.g. "reading".
        step: &'static str,
        /// Cause.
        source: io::Error,
    },
}

/// What chaining the primary config did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Chained {
    /// The primary config already chained redirect-cni with this socket; nothing was written.
    Already {
        /// The primary config.
        config: PathBuf,
    },
    /// The entry was added (or its socket corrected).
    Inserted {
        /// The file written.
        config: PathBuf,
        /// The single-plugin config it replaces (removed), when one was converted.
        replaced: Option<PathBuf>,
    },
}

/// What copying the plugin binary did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copied {
    /// The bin dir held the same bytes with mode 0755 already.
    Unchanged,
    /// The binary was (re)written.
    Written,
}

/// What `uninstall` did.
#[derive(Debug, Default)]
pub struct Uninstalled {
    /// Configs that had redirect-cni entries, now without them.
    pub unchained: Vec<PathBuf>,
    /// Configs that could not be read as JSON and were left alone, with the reason.
    pub left_alone: Vec<(PathBuf, String)>,
    /// Whether the plugin binary was there and is now removed.
    pub binary_removed: bool,
}

/// The installer for one node: where the CNI directories are, the plugin to copy, the entry
/// to chain.
#[derive(Clone, Debug)]
pub struct Installer {
    bin_dir: PathBuf,
    conf_dir: PathBuf,
    plugin_binary: PathBuf,
    entry: ChainEntry,
}

impl Installer {
    /// An installer copying `plugin_binary` into `bin_dir` and chaining an entry for `socket`
    /// into the primary config in `conf_dir`.
    pub fn new(
        bin_dir: PathBuf,
        conf_dir: PathBuf,
        plugin_binary: PathBuf,
        socket: &Path,
    ) -> Result<Self, CniInstallError> {
        let entry =
            ChainEntry::new(socket).ok_or_else(|| CniInstallError::Socket(socket.to_owned()))?;
        Ok(Self {
            bin_dir,
            conf_dir,
            plugin_binary,
            entry,
        })
    }

    /// Where the plugin binary goes: `<bin-dir>/redirect-cni`.
    pub fn installed_binary(&self) -> PathBuf {
        self.bin_dir.join(PLUGIN_TYPE)
    }

    /// Copies the plugin binary and chains the entry: the whole install, once.
    pub fn install(&self) -> Result<(Copied, Chained), CniInstallError> {
        let copied = self.install_binary()?;
        let chained = self.chain()?;
        Ok((copied, chained))
    }

    /// Copies the plugin binary into the bin dir (mode 0755) unless the same bytes are there.
    pub fn install_binary(&self) -> Result<Copied, CniInstallError> {
        let source = std::fs::read(&self.plugin_binary).map_err(|source| CniInstallError::Io {
            path: self.plugin_binary.clone(),
            step: "reading the plugin binary",
            source,
        })?;
        let target = self.installed_binary();
        if files::read_if_present(&target)?.as_deref() == Some(&source[..])
            && files::mode_of(&target) == 0o755
        {
            return Ok(Copied::Unchanged);
        }
        files::write_atomically(&self.bin_dir, PLUGIN_TYPE, &source, 0o755)?;
        Ok(Copied::Written)
    }

    /// Chains the entry into the node's primary config (see [`conf::chain`]).
    pub fn chain(&self) -> Result<Chained, CniInstallError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.chain_once()? {
                Some(chained) => return Ok(chained),
                None if attempts < CHANGED_RETRIES => continue,
                None => {
                    return Err(CniInstallError::Changing {
                        path: self.primary_path()?,
                    });
                }
            }
        }
    }

    /// Whether the binary is in place and the primary config chains the entry; an error says
    /// what is missing. Writes nothing.
    pub fn check(&self) -> Result<PathBuf, CniInstallError> {
        let binary = self.installed_binary();
        if !binary.is_file() {
            return Err(CniInstallError::NoBinary(binary));
        }
        let path = self.primary_path()?;
        let text = read(&path)?;
        match conf::chain(&file_name(&path), &text, &self.entry) {
            Ok(conf::Chain::Unchanged) => Ok(path),
            Ok(conf::Chain::Write { .. }) => Err(CniInstallError::NotChained {
                path,
                socket: self.entry.socket().to_owned(),
            }),
            Err(problem) => Err(CniInstallError::Config { path, problem }),
        }
    }

    /// Installs, then keeps the entry in place until `shutdown` completes: every `interval` the
    /// primary config is checked and re-chained if its CNI rewrote it, and the binary copied
    /// back if it went missing. Problems with the config are logged (each once) and retried;
    /// only failing to copy the binary at start is an error. Removes nothing on shutdown.
    pub async fn watch(
        &self,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CniInstallError> {
        match self.install_binary()? {
            Copied::Written => {
                tracing::info!(binary = %self.installed_binary().display(), "plugin binary installed")
            }
            Copied::Unchanged => {
                tracing::info!(binary = %self.installed_binary().display(), "plugin binary already in place")
            }
        }
        tokio::pin!(shutdown);
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_problem: Option<String> = None;
        loop {
            tokio::select! {
                () = &mut shutdown => {
                    tracing::info!("stopping; the chained entry and the binary stay in place");
                    return Ok(());
                }
                _ = ticks.tick() => {}
            }
            if !self.installed_binary().exists() {
                match self.install_binary() {
                    Ok(_) => {
                        tracing::info!(binary = %self.installed_binary().display(), "plugin binary was missing; copied again")
                    }
                    Err(error) => {
                        tracing::error!(%error, "plugin binary missing and cannot be copied")
                    }
                }
            }
            match self.chain() {
                Ok(chained) => {
                    log_chained(&chained);
                    last_problem = None;
                }
                Err(error) => {
                    let text = error.to_string();
                    if last_problem.as_deref() != Some(&text) {
                        tracing::error!(error = %text, "cannot chain redirect-cni; retrying");
                        last_problem = Some(text);
                    }
                }
            }
        }
    }

    /// One attempt; `None` when the config changed on disk between reading and renaming.
    fn chain_once(&self) -> Result<Option<Chained>, CniInstallError> {
        let path = self.primary_path()?;
        let text = read(&path)?;
        let name = file_name(&path);
        let plan =
            conf::chain(&name, &text, &self.entry).map_err(|problem| CniInstallError::Config {
                path: path.clone(),
                problem,
            })?;
        let conf::Chain::Write {
            file_name: target,
            contents,
            replaces,
        } = plan
        else {
            return Ok(Some(Chained::Already { config: path }));
        };
        // The primary CNI may be rewriting its config right now: do not put back an old
        // version of it. (A write between this check and the rename can still be lost; the
        // next --watch round then re-chains the CNI's newer file only if it dropped our entry.)
        if files::read_if_present(&path)?.as_deref() != Some(&text[..]) {
            return Ok(None);
        }
        let written =
            files::write_atomically(&self.conf_dir, &target, &contents, files::mode_of(&path))?;
        let replaced = match replaces {
            Some(old) if old != target => {
                let old = self.conf_dir.join(old);
                files::remove_if_present(&old)?;
                Some(old)
            }
            _ => None,
        };
        Ok(Some(Chained::Inserted {
            config: written,
            replaced,
        }))
    }

    fn primary_path(&self) -> Result<PathBuf, CniInstallError> {
        primary_config(&self.conf_dir)
    }
}

/// The node's primary network config in `conf_dir` (see [`conf::primary`]).
pub fn primary_config(conf_dir: &Path) -> Result<PathBuf, CniInstallError> {
    let names = files::file_names(conf_dir)?;
    conf::primary(names.iter().map(String::as_str))
        .map(|name| conf_dir.join(name))
        .ok_or_else(|| CniInstallError::NoPrimary {
            dir: conf_dir.to_path_buf(),
        })
}

/// Takes redirect-cni out of every network config in `conf_dir` (not only the primary: the
/// primary may have changed since install) and removes `<bin-dir>/redirect-cni`. Files that
/// are not JSON are reported and left alone; nothing else is touched.
pub fn uninstall(bin_dir: &Path, conf_dir: &Path) -> Result<Uninstalled, CniInstallError> {
    let mut done = Uninstalled::default();
    let mut names = files::file_names(conf_dir)?;
    names.sort();
    for name in names.iter().filter(|n| conf::is_config_name(n)) {
        let path = conf_dir.join(name);
        let Some(text) = files::read_if_present(&path)? else {
            continue;
        };
        match conf::unchain(&text) {
            Ok(None) => {}
            Ok(Some(contents)) => {
                files::write_atomically(conf_dir, name, &contents, files::mode_of(&path))?;
                done.unchained.push(path);
            }
            Err(problem) => done.left_alone.push((path, problem.to_string())),
        }
    }
    for name in names.iter().filter(|n| n.ends_with(files::TEMP_SUFFIX)) {
        files::remove_if_present(&conf_dir.join(name))?;
    }
    done.binary_removed = files::remove_if_present(&bin_dir.join(PLUGIN_TYPE))?;
    Ok(done)
}

/// Logs what an install round did.
pub fn log_chained(chained: &Chained) {
    match chained {
        Chained::Already { .. } => {}
        Chained::Inserted {
            config,
            replaced: None,
        } => tracing::info!(config = %config.display(), "redirect-cni chained"),
        Chained::Inserted {
            config,
            replaced: Some(old),
        } => tracing::info!(
            config = %config.display(),
            replaced = %old.display(),
            "single-plugin config converted to a list and redirect-cni chained"
        ),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CniInstallError> {
    std::fs::read(path).map_err(|source| CniInstallError::Io {
        path: path.to_path_buf(),
        step: "reading",
        source,
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
