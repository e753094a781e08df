//! `cargo xtask setup`: installs what building and testing marrow needs on a Debian or Ubuntu
//! machine. Each item is checked first and skipped when present, so a second run is quick and
//! changes nothing.

use std::{process::Command, time::Instant};

use crate::{
    process::{self, timed},
    toolchain::{
        self, BPF_LINKER_LLVM_FEATURE, BPF_LINKER_VERSION, EBPF_TOOLCHAIN, LLVM_PACKAGE,
        LLVM_PREFIX, Linker,
    },
};

/// The apt packages, and what each is for.
const APT_PACKAGES: [(&str, &str); 6] = [
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
        "prometheus",
        "`prometheus` and `promtool`, which check and scrape the proxy's /metrics in tests",
    ),
];

/// Keeps apt from asking questions.
const APT_ENV: [(&str, &str); 1] = [("DEBIAN_FRONTEND", "noninteractive")];

/// Runs the setup.
pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    apt_packages()?;
    rust_src()?;
    bpf_linker()?;
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

/// Debian's package starts a system Prometheus (port 9090) under systemd; the tests run their
/// own in a test namespace, so the service this setup just installed is stopped and disabled.
fn stop_packaged_prometheus() -> anyhow::Result<()> {
    let active = process::capture(Command::new("systemctl").args(["is-enabled", "prometheus"]));
    if matches!(active, Ok(Some(_))) {
        println!("    stopping the packaged prometheus.service (the tests start their own)");
        process::run(process::as_root("systemctl", &[])?.args(["disable", "--now", "prometheus"]))?;
    }
    Ok(())
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
