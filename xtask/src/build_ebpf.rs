//! `cargo xtask build-ebpf`: builds `ebpf/marrow-ebpf` for `bpfel-unknown-none` and copies the
//! object to `target/marrow-ebpf.o`, where the node proxy and the tests load it from.

use std::{fs, path::PathBuf};

use anyhow::Context as _;
use marrow_tests::command::{self, timed};

use crate::{
    toolchain::{self, EBPF_TOOLCHAIN},
    workspace_root,
};

/// The eBPF crate, relative to the workspace root.
const CRATE_DIR: &str = "ebpf/marrow-ebpf";
/// The crate's binary: the object's file name in its target directory.
const BINARY: &str = "marrow-ebpf";
/// The target triple.
const TARGET: &str = "bpfel-unknown-none";
/// Where the object is copied, relative to the workspace root.
const OBJECT: &str = "target/marrow-ebpf.o";

/// Options of `build-ebpf`.
#[derive(clap::Args, Default)]
pub struct Options {
    /// Build with the dev profile instead of release. Both optimise: the verifier rejects
    /// unoptimised code.
    #[arg(long)]
    debug: bool,
}

/// Builds the object and returns the path it was copied to.
pub fn run(options: &Options) -> anyhow::Result<PathBuf> {
    toolchain::check_ebpf_build()?;
    let root = workspace_root()?;
    let crate_dir = root.join(CRATE_DIR);
    let target_dir = crate_dir.join("target");
    let (profile, profile_dir) = if options.debug {
        ("dev", "debug")
    } else {
        ("release", "release")
    };
    timed(&format!("building {CRATE_DIR} ({profile} profile)"), || {
        command::run(
            command::cargo(EBPF_TOOLCHAIN)
                .current_dir(&crate_dir)
                // `-Z build-std` is unstable; RUSTC_BOOTSTRAP lets stable accept it, so no nightly
                // toolchain is needed.
                .env("RUSTC_BOOTSTRAP", "1")
                // Flags meant for the host (e.g. `-C target-cpu=native`) break the BPF target.
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .args([
                    "build",
                    "--target",
                    TARGET,
                    "-Z",
                    "build-std=core",
                    "--profile",
                    profile,
                ])
                .arg("--target-dir")
                .arg(&target_dir),
        )
    })?;
    let built = target_dir.join(TARGET).join(profile_dir).join(BINARY);
    let object = root.join(OBJECT);
    if let Some(dir) = object.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(object)
}
