//! Facts about the host the harness needs: privileges, the CNI plugins, where cgroup2 and bpffs
//! are mounted.
//!
//! Mount points are always read from `/proc/self/mountinfo`, never assumed: on hybrid hosts
//! cgroup2 lives at `/sys/fs/cgroup/unified`, and bpffs may not be mounted at all.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::binaries::CNI_BIN_DIR;

/// Where the harness mounts bpffs when it is absent.
pub const BPFFS_MOUNT: &str = "/sys/fs/bpf";

/// Why this machine cannot run the namespace tests, or `None` when it can.
///
/// Only three things are checked: root, the Debian CNI plugins, and a mounted cgroup2.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("namespace tests need root (network namespaces, cgroups, bpffs)".to_owned());
    }
    let bridge = Path::new(CNI_BIN_DIR).join("bridge");
    if !bridge.exists() {
        return Some(format!(
            "{} is missing: install the Debian package containernetworking-plugins",
            bridge.display()
        ));
    }
    if cgroup2_root().is_none() {
        return Some(
            "cgroup2 is not mounted (no cgroup2 entry in /proc/self/mountinfo)".to_owned(),
        );
    }
    None
}

/// One line of `/proc/self/mountinfo`, reduced to what the harness needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted, with the kernel's octal escapes decoded.
    pub mount_point: PathBuf,
    /// The filesystem type (`cgroup2`, `bpf`, …).
    pub fstype: String,
}

/// Parses one `/proc/self/mountinfo` line; `None` when it does not have the documented shape.
pub fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let (before, after) = line.split_once(" - ")?;
    let mount_point = before.split(' ').nth(4)?;
    let fstype = after.split(' ').next().filter(|t| !t.is_empty())?;
    Some(Mount {
        mount_point: PathBuf::from(unescape_octal(mount_point)),
        fstype: fstype.to_owned(),
    })
}

/// Decodes the `\ooo` escapes the kernel writes for space, tab, newline and backslash.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// All mounts of this process's mount namespace.
pub fn mounts() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(parse_mountinfo_line)
        .collect()
}

/// Where cgroup2 is mounted (the first cgroup2 mount), if anywhere.
pub fn cgroup2_root() -> Option<PathBuf> {
    mounts()
        .into_iter()
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.mount_point)
}

/// Mounts bpffs at [`BPFFS_MOUNT`] unless a bpf filesystem is already mounted there.
///
/// Serialised within the process so that parallel tests do not stack two mounts.
pub fn ensure_bpffs_mounted() {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mounted = mounts()
        .iter()
        .any(|m| m.fstype == "bpf" && m.mount_point == Path::new(BPFFS_MOUNT));
    if mounted {
        return;
    }
    std::fs::create_dir_all(BPFFS_MOUNT)
        .unwrap_or_else(|e| panic!("cannot create {BPFFS_MOUNT}: {e}"));
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS_MOUNT])
        .status()
        .expect("cannot run mount");
    assert!(
        status.success(),
        "mount -t bpf bpf {BPFFS_MOUNT} failed: {status}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup2_line() {
        let line = "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m.fstype, "cgroup2");
    }

    #[test]
    fn parses_optional_fields_and_escapes() {
        let line = "36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 shared:2 - ext3 /dev/root rw";
        let m = parse_mountinfo_line(line).unwrap();
        assert_eq!(m.mount_point, PathBuf::from("/mnt two"));
        assert_eq!(m.fstype, "ext3");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(parse_mountinfo_line(""), None);
        assert_eq!(parse_mountinfo_line("41 31 0:38 / /x rw"), None);
        assert_eq!(parse_mountinfo_line("41 31 - cgroup2 cgroup2 rw"), None);
        assert_eq!(parse_mountinfo_line("41 31 0:38 / /x rw - "), None);
    }

    #[test]
    fn keeps_a_lone_backslash() {
        assert_eq!(unescape_octal("a\\b\\0"), "a\\b\\0");
        assert_eq!(unescape_octal("\\134x"), "\\x");
    }
}
