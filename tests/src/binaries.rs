//! Where the binaries under test are.
//!
//! `node-proxy`, `redirect-cni` and `testpod` are found in the cargo target directory next to
//! the running test executable (`target/<profile>/deps/<test>` → `target/<profile>/`), or in
//! `$MARROW_BIN_DIR`. The eBPF object is `<workspace>/target/marrow-ebpf.o`, or
//! `$MARROW_EBPF_OBJECT`. A missing binary panics with the command that builds it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where Debian's containernetworking-plugins are installed.
pub const CNI_BIN_DIR: &str = "/usr/lib/cni";
/// Overrides the directory of `node-proxy`, `redirect-cni` and `testpod`.
pub const BIN_DIR_ENV: &str = "MARROW_BIN_DIR";
/// Overrides the path of the eBPF object.
pub const EBPF_OBJECT_ENV: &str = "MARROW_EBPF_OBJECT";

/// The directory chosen by [`set_bin_dir`], if any.
static BIN_DIR_OVERRIDE: OnceLock<PathBuf> = OnceLock::new();

/// Makes every later fixture of this process use the binaries in `dir` (e.g.
/// `target/release`), ahead of `$MARROW_BIN_DIR` and the test executable's directory. Call it
/// before creating any fixture; it can be set once per process.
///
/// # Errors
/// When it was already set, with the directory that stays in force.
pub fn set_bin_dir(dir: PathBuf) -> Result<(), PathBuf> {
    BIN_DIR_OVERRIDE
        .set(dir)
        .map_err(|_| BIN_DIR_OVERRIDE.get().cloned().unwrap_or_default())
}

/// The directory holding the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = BIN_DIR_OVERRIDE.get() {
        return dir.clone();
    }
    if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("cannot find the running test executable");
    let dir = exe.parent().unwrap_or(Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

fn workspace_binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: run `cargo build --workspace --bins` (or set {BIN_DIR_ENV})",
        path.display()
    );
    path
}

/// The `node-proxy` binary.
pub fn node_proxy() -> PathBuf {
    workspace_binary("node-proxy")
}

/// The `waypoint` binary (the L7 proxy).
pub fn waypoint() -> PathBuf {
    workspace_binary("waypoint")
}

/// The `redirect-cni` plugin binary.
pub fn redirect_cni() -> PathBuf {
    workspace_binary("redirect-cni")
}

/// The `testpod` application binary.
pub fn testpod() -> PathBuf {
    workspace_binary("testpod")
}

/// The compiled eBPF object the proxy loads.
pub fn ebpf_object() -> PathBuf {
    let path = std::env::var_os(EBPF_OBJECT_ENV).map_or_else(
        || {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join("target")
                .join("marrow-ebpf.o")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "{} not found: run `cargo xtask build-ebpf` (or set {EBPF_OBJECT_ENV})",
        path.display()
    );
    path
}

/// `CNI_PATH` for the chains: the Debian plugins, then the workspace's binaries.
pub fn cni_path() -> Vec<PathBuf> {
    vec![PathBuf::from(CNI_BIN_DIR), bin_dir()]
}
