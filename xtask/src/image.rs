//! `cargo xtask image`: lays out the marrow image's contents in `target/image/`, which the
//! repository's `Dockerfile` copies over a distroless base:
//!
//! | path | what |
//! | --- | --- |
//! | `usr/bin/node-proxy` | the proxy, also the CNI installer (`node-proxy cni install`) |
//! | `usr/bin/waypoint` | the waypoint (L7), which the waypoint controller's Deployments run |
//! | `usr/lib/marrow/redirect-cni` | the plugin the installer copies to the host, linked statically |
//! | `usr/lib/marrow/marrow-ebpf.o` | the kernel programs |
//!
//! The binaries are stripped of debug info (symbols stay). redirect-cni is linked statically
//! because it does not run in the image: the node's container runtime executes it on the host,
//! whose C library may be older than the build machine's.
//!
//! Every build ends with a check, and `--check` runs it alone on an existing layout: files,
//! modes, ELF kinds, static linking, and that both binaries answer (`--version`, CNI
//! `VERSION`). No Docker engine runs on the development machines, so the Dockerfile itself is
//! never built here; this check covers everything it copies.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail, ensure};

use crate::workspace_root;
use marrow_tests::command::{self, timed};

/// The layout's directory, relative to the workspace root.
const IMAGE_DIR: &str = "target/image";
/// The proxy in the image (the Dockerfile's ENTRYPOINT).
const NODE_PROXY: &str = "usr/bin/node-proxy";
/// The waypoint in the image (the command of the Deployments the waypoint controller makes).
const WAYPOINT: &str = "usr/bin/waypoint";
/// The CNI plugin in the image (`node-proxy cni install --plugin-binary`).
const REDIRECT_CNI: &str = "usr/lib/marrow/redirect-cni";
/// The eBPF object in the image (`--ebpf-object`'s default).
const EBPF_OBJECT: &str = "usr/lib/marrow/marrow-ebpf.o";

/// ELF `e_machine` of eBPF objects.
const EM_BPF: u16 = 247;
/// ELF `e_type` of a relocatable object.
const ET_REL: u16 = 1;
/// Program header type of the dynamic loader's path: present only in dynamically linked
/// executables.
const PT_INTERP: u32 = 3;

/// Options of `cargo xtask image`.
#[derive(clap::Args, Default)]
pub struct Options {
    /// Only verify an existing target/image (build nothing).
    #[arg(long)]
    check: bool,
}

/// Builds the binaries and the eBPF object and lays them out (or, with `--check`, verifies the
/// layout); returns the layout's directory.
pub fn run(options: &Options) -> anyhow::Result<PathBuf> {
    let root = workspace_root()?;
    let image = root.join(IMAGE_DIR);
    if !options.check {
        build(&root, &image)?;
    }
    timed(&format!("checking {IMAGE_DIR}"), || {
        check_layout(&image)?;
        check_binaries_answer(&image)
    })?;
    println!("image contents in {}", image.display());
    println!("build the image where a Docker engine runs:");
    println!(
        "    docker build -t marrow/node-proxy:{} {}",
        env!("CARGO_PKG_VERSION"),
        root.display()
    );
    Ok(image)
}

fn build(root: &Path, image: &Path) -> anyhow::Result<()> {
    let object = timed("build the eBPF object", || {
        crate::build_ebpf::run(&crate::build_ebpf::Options::default())
    })?;
    timed("build node-proxy and waypoint (release)", || {
        command::run(command::workspace_cargo(root).args([
            "build",
            "--release",
            "-j2",
            "--bin",
            "node-proxy",
            "--bin",
            "waypoint",
        ]))
    })?;
    let host = host_triple()?;
    timed("build redirect-cni (release, static)", || {
        // With an explicit --target, RUSTFLAGS reach only the target's artifacts, not build
        // scripts or proc macros; the output lands in target/<triple>/release.
        command::run(
            command::workspace_cargo(root)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .args(["build", "--release", "-j2", "--target", &host])
                .args(["--bin", "redirect-cni"]),
        )
    })?;
    if image.exists() {
        fs::remove_dir_all(image).with_context(|| format!("removing {}", image.display()))?;
    }
    let release = root.join("target/release");
    place(&release.join("node-proxy"), &image.join(NODE_PROXY), 0o755)?;
    place(&release.join("waypoint"), &image.join(WAYPOINT), 0o755)?;
    place(
        &root.join("target").join(&host).join("release/redirect-cni"),
        &image.join(REDIRECT_CNI),
        0o755,
    )?;
    place(&object, &image.join(EBPF_OBJECT), 0o644)?;
    for binary in [NODE_PROXY, WAYPOINT, REDIRECT_CNI] {
        strip_debug_info(&image.join(binary))?;
    }
    Ok(())
}

/// Drops the release profile's line tables from an image binary (node-proxy: ~118 MB to
/// ~27 MB); symbols stay, so backtraces still name functions. Without `strip` the binaries are
/// kept as built.
fn strip_debug_info(binary: &Path) -> anyhow::Result<()> {
    match command::capture(Command::new("strip").arg("--strip-debug").arg(binary)) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => bail!("`strip --strip-debug {}` failed", binary.display()),
        Err(_) => {
            println!(
                "    strip not found (apt-get install binutils): {} keeps its debug line tables",
                binary.display()
            );
            Ok(())
        }
    }
}

fn place(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))
}

fn host_triple() -> anyhow::Result<String> {
    let info = command::capture(Command::new("rustc").arg("-vV"))?.context("`rustc -vV` failed")?;
    info.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc -vV` names no host triple")
}

/// Verifies the files of the layout under `image`: present, modes, ELF kinds, and
/// redirect-cni statically linked. Nothing is run.
pub fn check_layout(image: &Path) -> anyhow::Result<()> {
    for (path, mode) in [
        (NODE_PROXY, 0o755),
        (WAYPOINT, 0o755),
        (REDIRECT_CNI, 0o755),
        (EBPF_OBJECT, 0o644),
    ] {
        let file = image.join(path);
        let meta = fs::metadata(&file).with_context(|| format!("{}: missing", file.display()))?;
        let actual = meta.permissions().mode() & 0o7777;
        ensure!(
            meta.is_file() && actual == mode,
            "{}: expected a file with mode {mode:o}, found mode {actual:o}",
            file.display()
        );
    }
    let elf = |path: &str| -> anyhow::Result<Elf> {
        let file = image.join(path);
        let bytes = fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        Elf::parse(&bytes).with_context(|| format!("{}: not a 64-bit ELF file", file.display()))
    };
    let proxy = elf(NODE_PROXY)?;
    let waypoint = elf(WAYPOINT)?;
    let plugin = elf(REDIRECT_CNI)?;
    let object = elf(EBPF_OBJECT)?;
    ensure!(
        proxy.is_executable() && waypoint.is_executable() && plugin.is_executable(),
        "{NODE_PROXY}, {WAYPOINT} and {REDIRECT_CNI} must be executables"
    );
    ensure!(
        !plugin.has_interpreter,
        "{REDIRECT_CNI} is dynamically linked: the host runs it with its own C library; build it \
         with -C target-feature=+crt-static (`cargo xtask image` does)"
    );
    ensure!(
        object.machine == EM_BPF && object.kind == ET_REL,
        "{EBPF_OBJECT}: expected an eBPF relocatable object, found machine {} type {}",
        object.machine,
        object.kind
    );
    Ok(())
}

/// Runs the binaries of the layout: `node-proxy --version` and `waypoint --version` name this
/// version, and redirect-cni answers the CNI `VERSION` command.
fn check_binaries_answer(image: &Path) -> anyhow::Result<()> {
    let version = command::capture(Command::new(image.join(NODE_PROXY)).arg("--version"))?
        .context("node-proxy --version failed")?;
    ensure!(
        version.trim() == format!("node-proxy {}", env!("CARGO_PKG_VERSION")),
        "node-proxy --version says {version:?}"
    );
    let version = command::capture(Command::new(image.join(WAYPOINT)).arg("--version"))?
        .context("waypoint --version failed")?;
    ensure!(
        version.trim() == format!("waypoint {}", env!("CARGO_PKG_VERSION")),
        "waypoint --version says {version:?}"
    );
    let reply = command::capture(
        Command::new(image.join(REDIRECT_CNI))
            .env_clear()
            .env("CNI_COMMAND", "VERSION"),
    )?
    .context("redirect-cni VERSION failed")?;
    let reply: serde_json::Value =
        serde_json::from_str(&reply).with_context(|| format!("redirect-cni VERSION: {reply}"))?;
    if reply["supportedVersions"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        bail!("redirect-cni VERSION lists no supportedVersions: {reply}");
    }
    Ok(())
}

/// What the check needs from an ELF header.
#[derive(Debug, PartialEq, Eq)]
struct Elf {
    /// `e_type`: 1 relocatable, 2 executable, 3 shared object or PIE.
    kind: u16,
    /// `e_machine`.
    machine: u16,
    /// Whether a `PT_INTERP` program header names a dynamic loader.
    has_interpreter: bool,
}

impl Elf {
    /// Reads a 64-bit little-endian ELF header and its program headers.
    fn parse(bytes: &[u8]) -> Option<Elf> {
        if bytes.get(..6)? != b"\x7fELF\x02\x01" {
            return None;
        }
        let u16_at = |at: usize| Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        let phoff = usize::try_from(u64_at(32)?).ok()?;
        let (phentsize, phnum) = (usize::from(u16_at(54)?), usize::from(u16_at(56)?));
        let mut has_interpreter = false;
        for i in 0..phnum {
            has_interpreter |= u32_at(phoff.checked_add(i.checked_mul(phentsize)?)?)? == PT_INTERP;
        }
        Some(Elf {
            kind: u16_at(16)?,
            machine: u16_at(18)?,
            has_interpreter,
        })
    }

    fn is_executable(&self) -> bool {
        self.kind == 2 || self.kind == 3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with one program header of type `ptype`.
    fn elf(kind: u16, machine: u16, ptype: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 64 + 56];
        bytes[..6].copy_from_slice(b"\x7fELF\x02\x01");
        bytes[16..18].copy_from_slice(&kind.to_le_bytes());
        bytes[18..20].copy_from_slice(&machine.to_le_bytes());
        bytes[32..40].copy_from_slice(&64u64.to_le_bytes());
        bytes[54..56].copy_from_slice(&56u16.to_le_bytes());
        bytes[56..58].copy_from_slice(&1u16.to_le_bytes());
        bytes[64..68].copy_from_slice(&ptype.to_le_bytes());
        bytes
    }

    fn layout(plugin_ptype: u32, object_machine: u16) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, bytes, mode) in [
            (NODE_PROXY, elf(3, 62, PT_INTERP), 0o755),
            (WAYPOINT, elf(3, 62, PT_INTERP), 0o755),
            (REDIRECT_CNI, elf(3, 62, plugin_ptype), 0o755),
            (EBPF_OBJECT, elf(ET_REL, object_machine, 0), 0o644),
        ] {
            let file = dir.path().join(path);
            fs::create_dir_all(file.parent().unwrap()).unwrap();
            fs::write(&file, bytes).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        }
        dir
    }

    #[test]
    fn a_complete_layout_passes() {
        check_layout(layout(1, EM_BPF).path()).unwrap();
    }

    #[test]
    fn a_dynamically_linked_plugin_is_refused() {
        let err = check_layout(layout(PT_INTERP, EM_BPF).path()).unwrap_err();
        assert!(err.to_string().contains("dynamically linked"), "{err:#}");
    }

    #[test]
    fn a_host_object_is_not_the_ebpf_object() {
        let err = check_layout(layout(1, 62).path()).unwrap_err();
        assert!(err.to_string().contains("eBPF relocatable"), "{err:#}");
    }

    #[test]
    fn missing_files_and_wrong_modes_are_named() {
        let dir = layout(1, EM_BPF);
        fs::set_permissions(
            dir.path().join(REDIRECT_CNI),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = check_layout(dir.path()).unwrap_err();
        assert!(
            err.to_string()
                .contains("redirect-cni: expected a file with mode 755"),
            "{err:#}"
        );
        fs::remove_file(dir.path().join(EBPF_OBJECT)).unwrap();
        fs::set_permissions(
            dir.path().join(REDIRECT_CNI),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let err = check_layout(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("marrow-ebpf.o: missing"),
            "{err:#}"
        );
    }

    #[test]
    fn the_real_build_outputs_parse() {
        let root = workspace_root().unwrap();
        let object = root.join("target/marrow-ebpf.o");
        if let Ok(bytes) = fs::read(&object) {
            let elf = Elf::parse(&bytes).unwrap();
            assert_eq!((elf.machine, elf.kind), (EM_BPF, ET_REL));
        }
        assert!(Elf::parse(b"#!/bin/sh\n").is_none());
    }
}
