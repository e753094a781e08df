//! What building the eBPF object needs from the machine, and how to tell whether it is there.
//! `setup` installs what these checks find missing; `build-ebpf` refuses to start without it.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use marrow_tests::command;

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
    let installed = command::capture(Command::new("rustup").args([
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
    let status = command::capture(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
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

/// The guard that keeps `protoc` out of the build: a new machine has none (Debian's
/// `protobuf-compiler` is not installed), and the first command must build there. Istio's CA
/// protocol is compiled by `protox` in `mesh/build.rs` and handed to tonic as descriptors
/// (`compile_fds`); the protobuf code generators below run `protoc` whenever they are given
/// `.proto` files instead. Static on purpose: building with `PROTOC=/bin/false` proves the same
/// but costs a cold build of the build script's dependencies.
#[cfg(test)]
mod no_protoc {
    use std::path::Path;

    /// Protobuf code generators that run `protoc` unless handed compiled descriptors.
    const PROTOC_DRIVERS: [&str; 5] = [
        "prost-build",
        "tonic-build",
        "tonic-prost-build",
        "protobuf-codegen",
        "protoc-rust",
    ];

    /// `(package, driver)` for each package of a `Cargo.lock` that depends on a protoc driver,
    /// the drivers' dependencies on each other left out.
    fn driver_users(lock: &str) -> Vec<(String, String)> {
        let mut users = Vec::new();
        let mut package = String::new();
        let mut in_dependencies = false;
        for line in lock.lines() {
            let line = line.trim();
            if line == "[[package]]" {
                package.clear();
                in_dependencies = false;
            } else if let Some(name) = line.strip_prefix("name = ") {
                package = name.trim_matches('"').to_owned();
            } else if line.starts_with("dependencies = [") {
                in_dependencies = true;
            } else if in_dependencies && line.starts_with(']') {
                in_dependencies = false;
            } else if in_dependencies {
                // ` "name"`, ` "name 1.2.3"` or ` "name 1.2.3 (registry+…)"`.
                let dependency = line
                    .trim_matches(|c| c == '"' || c == ',')
                    .split(' ')
                    .next()
                    .unwrap_or_default();
                if PROTOC_DRIVERS.contains(&dependency)
                    && !PROTOC_DRIVERS.contains(&package.as_str())
                {
                    users.push((package.clone(), dependency.to_owned()));
                }
            }
        }
        users
    }

    /// Why a build script would run `protoc`, or `None` when it would not.
    fn build_script_runs_protoc(source: &str) -> Option<&'static str> {
        let code: String = source
            .lines()
            .map(|line| line.split("//").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n");
        if code.contains("compile_protos(") {
            Some("it calls compile_protos, which runs protoc on the .proto files")
        } else if code.contains("\"protoc\"") {
            Some("it runs protoc by name")
        } else if (code.contains("prost_build") || code.contains("tonic_build"))
            && !code.contains("compile_fds(")
        {
            Some("it generates protobuf code without handing compiled descriptors to compile_fds")
        } else {
            None
        }
    }

    /// The directory of the workspace package named `package` (a package's name need not be
    /// its directory's: `marrow-mesh` lives in `mesh/`), among the root's subdirectories and
    /// `ebpf/`'s.
    fn member_dir(root: &Path, package: &str) -> Option<std::path::PathBuf> {
        let wanted = format!("name = \"{package}\"");
        [root.to_path_buf(), root.join("ebpf")]
            .iter()
            .filter_map(|parent| std::fs::read_dir(parent).ok())
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|dir| {
                std::fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|manifest| {
                    // The `[package]` table's own name, not a dependency's.
                    format!("\n{manifest}")
                        .split("\n[")
                        .find(|table| table.starts_with("package]"))
                        .is_some_and(|table| table.lines().any(|line| line.trim() == wanted))
                })
            })
    }

    /// Everything in the workspace (both lockfiles, every build script) that would need
    /// `protoc`, each named with the reason.
    fn protoc_needs(root: &Path) -> Vec<String> {
        let mut needs = Vec::new();
        for lock in ["Cargo.lock", "ebpf/marrow-ebpf/Cargo.lock"] {
            let text = std::fs::read_to_string(root.join(lock)).unwrap();
            for (package, driver) in driver_users(&text) {
                let build = member_dir(root, &package).map(|dir| dir.join("build.rs"));
                if !build.is_some_and(|build| build.is_file()) {
                    needs.push(format!(
                        "{lock}: {package} depends on {driver}, which runs protoc unless handed \
                         descriptors; it is not a workspace member whose build script is checked here"
                    ));
                }
            }
        }
        for entry in std::fs::read_dir(root).unwrap() {
            let build = entry.unwrap().path().join("build.rs");
            if let Ok(source) = std::fs::read_to_string(&build)
                && let Some(why) = build_script_runs_protoc(&source)
            {
                needs.push(format!("{}: {why}", build.display()));
            }
        }
        needs
    }

    #[test]
    fn the_workspace_builds_without_protoc() {
        let root = crate::workspace_root().unwrap();
        let needs = protoc_needs(&root);
        assert!(
            needs.is_empty(),
            "a new machine has no protoc (compile .proto files with protox and hand the \
             descriptors to compile_fds, as mesh/build.rs does):\n  {}",
            needs.join("\n  ")
        );
        // The check looked at the build script that generates code: the mesh core's.
        let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap();
        assert!(
            driver_users(&lock)
                .iter()
                .any(|(package, _)| package == "marrow-mesh")
        );
        assert_eq!(member_dir(&root, "marrow-mesh"), Some(root.join("mesh")));
    }

    #[test]
    fn packages_that_depend_on_a_protoc_driver() {
        let lock = r#"
[[package]]
name = "node-proxy"
version = "0.1.0"
dependencies = [
 "anyhow",
 "protox",
 "tonic-prost-build",
]

[[package]]
name = "tonic-prost-build"
version = "0.14.2"
dependencies = [
 "prost-build",
 "tonic-build",
]

[[package]]
name = "opentelemetry-proto"
version = "0.30.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
dependencies = [
 "prost-build 0.13.5 (registry+https://github.com/rust-lang/crates.io-index)",
 "tonic",
]

[[package]]
name = "h2"
version = "0.4.12"
dependencies = [
 "bytes",
]
"#;
        assert_eq!(
            driver_users(lock),
            [
                ("node-proxy".to_owned(), "tonic-prost-build".to_owned()),
                ("opentelemetry-proto".to_owned(), "prost-build".to_owned()),
            ]
        );
    }

    #[test]
    fn build_scripts_that_run_protoc() {
        let protox = r#"
// Not compile_protos("…"): that runs protoc.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let descriptors = protox::compile(["istio/v1/auth/ca.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}"#;
        assert_eq!(build_script_runs_protoc(protox), None);
        let protoc = r#"
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::configure().compile_protos(&["proto/ca.proto"], &["proto"])?;
    Ok(())
}"#;
        assert!(build_script_runs_protoc(protoc).is_some());
        let by_name = r#"fn main() { std::process::Command::new("protoc").status().unwrap(); }"#;
        assert!(build_script_runs_protoc(by_name).is_some());
        let config = r#"fn main() { prost_build::Config::new().compile_well_known_types(); }"#;
        assert!(build_script_runs_protoc(config).is_some());
        assert_eq!(build_script_runs_protoc("fn main() {}"), None);
    }
}
