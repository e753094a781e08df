//! Names of the things the harness creates, derived from the test's name.
//!
//! Every name starts with `marrow-test-` or `mt` so that leftovers are recognisable, and names
//! that become interface names stay within the kernel's 15 bytes (`IFNAMSIZ - 1`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of cgroup, bpffs and temporary directory names.
pub const PREFIX: &str = "marrow-test-";
/// Prefix of network namespace names.
pub const NETNS_PREFIX: &str = "mt-";
/// Longest interface name the kernel accepts.
pub const MAX_IFNAME: usize = 15;
/// Longest sanitised test name kept in directory and namespace names.
const MAX_NAME: usize = 40;

/// Lowercases `name` and maps anything but `[a-z0-9-]` to `-`, so it is safe in paths,
/// namespace names and cgroup names; cut to 40 bytes.
///
/// # Panics
/// When nothing is left (an empty name).
pub fn sanitize(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(MAX_NAME)
        .collect();
    let s = s.trim_matches('-').to_owned();
    assert!(
        !s.is_empty(),
        "test resource name {name:?} has no usable characters"
    );
    s
}

/// 32-bit FNV-1a of `s`, as 8 hex digits: a short, stable tag for interface names.
pub fn short_hash(s: &str) -> String {
    let h = s.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{h:08x}")
}

/// An interface name `<prefix><hash of key>`, at most 15 bytes.
///
/// # Panics
/// When `prefix` is longer than 7 bytes.
pub fn ifname(prefix: &str, key: &str) -> String {
    let name = format!("{prefix}{}", short_hash(key));
    assert!(
        name.len() <= MAX_IFNAME,
        "interface name {name} is too long"
    );
    name
}

/// A number unique within this process (starts at 1).
pub fn next_serial() -> u64 {
    static SERIAL: AtomicU64 = AtomicU64::new(1);
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// A random-looking RFC 4122 version-4-shaped UUID, unique per call on this machine
/// (process id, time and a serial; no randomness source needed).
pub fn unique_uuid() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed =
        u128::from(std::process::id()) << 96 ^ nanos ^ u128::from(next_serial()).rotate_left(64);
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c834;
    // splitmix-style scrambling so consecutive ids look unrelated
    x = (x ^ (x >> 67)).wrapping_mul(0xbf58_476d_1ce4_e5b9_94d0_49bb_1331_11eb);
    x ^= x >> 61;
    let hex = format!("{x:032x}");
    format!(
        "{}-{}-4{}-8{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitizes_test_paths() {
        assert_eq!(sanitize("harness::two_pods_talk"), "harness--two-pods-talk");
        assert_eq!(sanitize("A.B"), "a-b");
        assert_eq!(sanitize(&"x".repeat(100)).len(), 40);
    }

    #[test]
    #[should_panic(expected = "no usable characters")]
    fn rejects_empty_names() {
        sanitize("::");
    }

    #[test]
    fn interface_names_fit() {
        let n = ifname("mtbr", "a-very-long-node-name-indeed");
        assert!(n.len() <= MAX_IFNAME);
        assert_ne!(n, ifname("mtbr", "another"));
    }

    #[test]
    fn uuids_are_unique_and_shaped() {
        let a = unique_uuid();
        let b = unique_uuid();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
    }
}
