//! Running the external commands the developer tasks (`cargo xtask`, `marrow-bench`) are made
//! of: printing them, timing them, and turning a failure into an error that names the command.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

/// Variables a process run by `cargo run` (xtask, marrow-bench) inherits that would make a
/// nested cargo use the outer build's toolchain, compiler or target directory instead of its
/// own.
const OUTER_CARGO_VARS: [&str; 4] = [
    "RUSTUP_TOOLCHAIN",
    "RUSTC",
    "RUSTC_WORKSPACE_WRAPPER",
    "CARGO_TARGET_DIR",
];

/// `cargo` of the given rustup toolchain, free of the outer build's settings.
pub fn cargo(toolchain: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", toolchain, "cargo"]);
    for var in OUTER_CARGO_VARS {
        cmd.env_remove(var);
    }
    cmd
}

/// Variables `cargo run` sets for the process it runs (xtask, marrow-bench) that describe that
/// package itself. A nested cargo passes them on to build scripts, and some (ring's) track
/// `CARGO_MANIFEST_DIR`: inherited, it made every `cargo xtask demo` recompile ring, rustls
/// and everything above them.
const OWN_PACKAGE_VARS: [&str; 5] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

/// `cargo` run in the workspace `root`, without the variables that describe the calling
/// package (see [`OWN_PACKAGE_VARS`]).
pub fn workspace_cargo(root: &std::path::Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    for var in OWN_PACKAGE_VARS {
        cmd.env_remove(var);
    }
    for (var, _) in std::env::vars_os() {
        if var.to_string_lossy().starts_with("CARGO_PKG_") {
            cmd.env_remove(var);
        }
    }
    cmd
}

/// `program` run as root with `env` set: directly when we are root, through `sudo` otherwise
/// (which would drop variables set on the `sudo` process itself).
pub fn as_root(program: &str, env: &[(&str, &str)]) -> anyhow::Result<Command> {
    let uid = capture(Command::new("id").arg("-u"))?.context("`id -u` failed")?;
    Ok(if uid.trim() == "0" {
        let mut cmd = Command::new(program);
        cmd.envs(env.iter().copied());
        cmd
    } else {
        let mut cmd = Command::new("sudo");
        cmd.args(env.iter().map(|(key, value)| format!("{key}={value}")))
            .arg(program);
        cmd
    })
}

/// Runs `cmd` with the terminal attached, printing it first; an error if it cannot start or
/// exits unsuccessfully.
pub fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let line = describe(cmd);
    println!("    $ {line}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly for its output: `Some(stdout)` if it succeeded, `None` if it ran and
/// failed, an error if it could not start (e.g. the program is not installed).
pub fn capture(cmd: &mut Command) -> anyhow::Result<Option<String>> {
    let output = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    Ok(output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// Runs `step`, announcing it and reporting how long it took.
pub fn timed<T>(step: &str, f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    println!("==> {step}");
    let started = Instant::now();
    let result = f().with_context(|| format!("while {step}"))?;
    println!("    done in {}", seconds(started.elapsed()));
    Ok(result)
}

/// A duration as seconds with one decimal, e.g. `12.3s`.
pub fn seconds(elapsed: Duration) -> String {
    format!("{:.1}s", elapsed.as_secs_f64())
}

/// `cmd` as a shell-like line, for messages.
fn describe(cmd: &Command) -> String {
    let envs = cmd.get_envs().filter_map(|(key, value)| {
        Some(format!(
            "{}={}",
            key.to_string_lossy(),
            value?.to_string_lossy()
        ))
    });
    let words = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|word| word.to_string_lossy().into_owned());
    envs.chain(words).collect::<Vec<_>>().join(" ")
}
