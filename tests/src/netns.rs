//! Named network namespaces (`ip netns add`), deleted on drop.
//!
//! The namespace is entered with `setns()` only: on a fresh thread ([`Netns::run`]) or in a
//! child between fork and exec ([`Netns::command`]). `ip netns exec` is never used because it
//! remounts `/sys` and hides bpffs and the cgroup mounts.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;

use crate::names::NETNS_PREFIX;
use crate::process::command_in;

/// Directory where `ip netns add` bind-mounts named namespaces.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// A named network namespace with `lo` up; `ip netns del` on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `mt-<name>` (the caller passes an already sanitised, unique name). A namespace
    /// left with the same name by a crashed earlier run is deleted first.
    pub fn new(name: &str) -> Netns {
        let name = format!("{NETNS_PREFIX}{name}");
        let path = PathBuf::from(NETNS_RUN_DIR).join(&name);
        if path.exists() {
            eprintln!("removing stale network namespace {name}");
            ip(&["netns", "del", &name]);
        }
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("cannot run ip");
        assert!(
            out.status.success(),
            "ip netns add {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`: what `CNI_NETNS` and `setns()` take.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// Opens the namespace file (close-on-exec).
    pub fn open(&self) -> File {
        File::open(self.path())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.path().display()))
    }

    /// Runs `f` on a fresh OS thread that has entered this namespace, and returns its result.
    /// A panic in `f` is re-raised here.
    pub fn run<T: Send, F: FnOnce() -> T + Send>(&self, f: F) -> T {
        let ns = self.open();
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || {
                // SAFETY: setns on this thread only; the fd is valid while `ns` lives.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert!(
                    rc == 0,
                    "setns into {} failed: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
                drop(ns);
                f()
            });
            handle
                .join()
                .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
        })
    }

    /// A `Command` for `program` that enters this namespace before it execs.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(program, Some(self), None)
    }

    /// Runs `ip <args>` inside this namespace; panics with ip's stderr when it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = self
            .command("ip")
            .args(args)
            .output()
            .expect("cannot run ip");
        assert!(
            out.status.success(),
            "ip {} in {} failed: {}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a sysctl of this namespace (`key` as in `net.ipv4.ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        // /proc/sys/net resolves against the opening thread's network namespace.
        self.run(|| {
            std::fs::write(&path, value)
                .unwrap_or_else(|e| panic!("cannot set {key}={value} in {}: {e}", self.name));
        });
    }

    /// Whether a namespace called `name` (full name, e.g. `mt-foo`) is listed by `ip netns`.
    pub fn exists(name: &str) -> bool {
        PathBuf::from(NETNS_RUN_DIR).join(name).exists()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = try_ip(&["netns", "del", &self.name]) {
            eprintln!(
                "warning: cannot delete network namespace {}: {e}",
                self.name
            );
        }
    }
}

fn try_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

fn ip(args: &[&str]) {
    if let Err(e) = try_ip(args) {
        eprintln!("warning: ip {}: {e}", args.join(" "));
    }
}
