//! What building the eBPF object needs from the machine, and how to tell whether it is there.
//! `setup` installs what these checks find missing; `build-ebpf` refuses to start without it.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::process;

/// The rustup toolchain that builds the eBPF crate: stable, with `RUSTC_BOOTSTRAP=1` for
/// `-Z build-std`. Its LLVM (22 for rustc 1.95) must not be newer than bpf-linker's.
pub const EBPF_TOOLCHAIN: &str = "stable";
/// Where the LLVM that bpf-linker is built against and loads at run time lives.
pub const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The apt package that provides [`LLVM_PREFIX`].
pub const LLVM_PACKAGE: &str = "llvm-22-dev";
/// The bpf-linker feature that selects [`LLVM_PREFIX`]'s LLVM (the default is a newer one).
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// The bpf-linker release proven with this toolchain.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Whether bpf-linker can link.
pub enum Linker {
    /// It runs; its version line.
    Ready(String),
    /// It is not on `PATH`.
    Missing,
    /// It is there but does not run; the first line of its complaint.
    Broken(String),
}

/// Probes bpf-linker by asking for its version, which loads libLLVM.
pub fn bpf_linker() -> Linker {
    match Command::new("bpf-linker").arg("--version").output() {
        Err(_) => Linker::Missing,
        Ok(out) if out.status.success() => {
            Linker::Ready(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
        Ok(out) => Linker::Broken(
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("no output")
                .to_owned(),
        ),
    }
}

/// Whether `rust-src` is installed for [`EBPF_TOOLCHAIN`]; `None` if that toolchain is not.
pub fn rust_src_installed() -> anyhow::Result<Option<bool>> {
    let installed = process::capture(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        EBPF_TOOLCHAIN,
    ]))
    .context("rustup is needed")?;
    Ok(installed.map(|list| list.lines().any(|line| line.trim() == "rust-src")))
}

/// Whether an apt package is installed.
pub fn apt_installed(package: &str) -> anyhow::Result<bool> {
    let status = process::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .context("setup supports Debian and Ubuntu only: dpkg-query is missing")?;
    Ok(status.is_some_and(|status| status.trim() == "install ok installed"))
}

/// Checks that `build-ebpf` can run; the error lists everything missing and says what to do.
pub fn check_ebpf_build() -> anyhow::Result<()> {
    let mut missing = Vec::new();
    if !Path::new(LLVM_PREFIX).join("lib").is_dir() {
        missing.push(format!(
            "LLVM 22 ({LLVM_PACKAGE}): {LLVM_PREFIX}/lib does not exist"
        ));
    }
    match bpf_linker() {
        Linker::Ready(_) => {}
        Linker::Missing => missing.push("bpf-linker: not installed (or not on PATH)".to_owned()),
        Linker::Broken(why) => missing.push(format!(
            "bpf-linker: does not run ({why}); it must be built against {LLVM_PACKAGE}"
        )),
    }
    match rust_src_installed() {
        Ok(Some(true)) => {}
        Ok(Some(false)) => missing.push(format!("rust-src: not installed for {EBPF_TOOLCHAIN}")),
        Ok(None) => {
            missing.push(format!(
                "rust-src: the {EBPF_TOOLCHAIN} toolchain is not installed"
            ));
        }
        Err(e) => missing.push(format!("rust-src: {e:#}")),
    }
    if missing.is_empty() {
        return Ok(());
    }
    bail!(
        "cannot build the eBPF object, missing:\n  - {}\nrun `cargo xtask setup`",
        missing.join("\n  - ")
    )
}
