//! The in-pod redirection istio-cni installs in every ambient pod for ztunnel (istio/istio
//! `cni/pkg/iptables/iptables.go`, `AppendInpodRules`, whose output is pinned by
//! `cni/pkg/iptables/testdata/default.golden`; the policy route by `iptables_linux.go`,
//! `AddInpodMarkIPRule`), applied by us in a pod's network namespace before the pod is
//! handed to ztunnel.
//!
//! - Outbound TCP from the app is REDIRECTed to ztunnel's outbound listener, 15001.
//! - Inbound TCP to 15008 (HBONE) is TPROXYed to ztunnel's HBONE listener and any other
//!   inbound TCP to its plaintext listener 15006; TPROXY marks the packets 0x111, and
//!   `ip rule fwmark 0x111/0xfff lookup 100` + `local 0.0.0.0/0 dev lo table 100` deliver them
//!   locally.
//! - ztunnel's own sockets carry mark 0x539 (its `DEFAULT_INPOD_MARK`, 1337), which every rule
//!   skips, and their connections are connmarked 0x111 so replies find their way back.
//! - DNS (UDP 53) goes to ztunnel's DNS proxy on 15053, as istio-cni's default does.
//!
//! IPv4 only: the bench's pods are.

use std::io::Write as _;
use std::process::Stdio;

use anyhow::{Context as _, bail};
use marrow_tests::Pod;

/// The policy-routing table TPROXYed packets are delivered by (istio-cni's
/// `RouteTableInbound`).
const ROUTE_TABLE: &str = "100";
/// The rule's priority (istio-cni's `ip rule add fwmark 0x111/0xfff pref 32764 lookup 100`).
const RULE_PRIORITY: &str = "32764";
/// The TPROXY mark and its mask.
const TPROXY_MARK: &str = "0x111/0xfff";

/// istio-cni's in-pod rules in the order it installs them: (table, rule), where a rule is
/// either `-N CHAIN` or `-A CHAIN …`.
pub const RULES: [(&str, &str); 18] = [
    ("mangle", "-N ISTIO_PRERT"),
    ("nat", "-N ISTIO_OUTPUT"),
    ("mangle", "-N ISTIO_OUTPUT"),
    ("mangle", "-A PREROUTING -j ISTIO_PRERT"),
    ("mangle", "-A OUTPUT -j ISTIO_OUTPUT"),
    ("nat", "-A OUTPUT -j ISTIO_OUTPUT"),
    // ztunnel's own connections (mark 0x539) are remembered in conntrack, so their replies…
    (
        "mangle",
        "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
    ),
    // kubelet's probes arrive SNATed from this link-local address and are left alone.
    (
        "mangle",
        "-A ISTIO_PRERT -s 169.254.7.127 -p tcp -m tcp -j ACCEPT",
    ),
    (
        "nat",
        "-A ISTIO_OUTPUT -d 169.254.7.127 -p tcp -m tcp -j ACCEPT",
    ),
    (
        "mangle",
        "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -i lo -j ACCEPT",
    ),
    (
        "mangle",
        "-A ISTIO_PRERT -p tcp -m tcp --dport 15008 -m mark ! --mark 0x539/0xfff -j TPROXY \
         --on-port 15008 --tproxy-mark 0x111/0xfff",
    ),
    (
        "mangle",
        "-A ISTIO_PRERT -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ),
    (
        "mangle",
        "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j TPROXY \
         --on-port 15006 --tproxy-mark 0x111/0xfff",
    ),
    // …carry it back out (and skip the REDIRECT below).
    (
        "mangle",
        "-A ISTIO_OUTPUT -m connmark --mark 0x111/0xfff -j CONNMARK --restore-mark --nfmask \
         0xffffffff --ctmask 0xffffffff",
    ),
    (
        "nat",
        "-A ISTIO_OUTPUT ! -o lo -p udp -m udp --dport 53 -j REDIRECT --to-port 15053",
    ),
    (
        "nat",
        "-A ISTIO_OUTPUT -p tcp -m mark --mark 0x111/0xfff -j ACCEPT",
    ),
    ("nat", "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -j ACCEPT"),
    (
        "nat",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT \
         --to-ports 15001",
    ),
];

/// [`RULES`] as `iptables -t TABLE RULE` commands, one a line: the form of istio-cni's golden
/// files, which the tests compare them with.
#[cfg(test)]
pub fn commands() -> String {
    RULES
        .iter()
        .map(|(table, rule)| format!("iptables -t {table} {rule}\n"))
        .collect()
}

/// [`RULES`] as `iptables-restore` input: one transaction per table, chains declared first,
/// appends in istio-cni's order.
pub fn restore_input() -> String {
    let mut out = String::new();
    for table in ["mangle", "nat"] {
        out.push_str(&format!("*{table}\n"));
        let rules = RULES.iter().filter(|(t, _)| *t == table);
        for (_, rule) in rules.clone() {
            if let Some(chain) = rule.strip_prefix("-N ") {
                out.push_str(&format!(":{chain} - [0:0]\n"));
            }
        }
        for (_, rule) in rules {
            if rule.starts_with("-A ") {
                out.push_str(rule);
                out.push('\n');
            }
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// Installs the rules and the TPROXY route in `pod`'s network namespace.
pub fn install(pod: &Pod) -> anyhow::Result<()> {
    let mut child = pod
        .netns()
        .command("iptables-restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running iptables-restore (the ztunnel set-up needs `iptables`: run `cargo xtask setup`)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(restore_input().as_bytes())
            .context("writing the rules to iptables-restore")?;
    }
    let out = child
        .wait_with_output()
        .context("waiting for iptables-restore")?;
    if !out.status.success() {
        bail!(
            "iptables-restore in pod {} failed ({}): {}",
            pod.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    pod.netns().ip(&[
        "rule",
        "add",
        "fwmark",
        TPROXY_MARK,
        "pref",
        RULE_PRIORITY,
        "lookup",
        ROUTE_TABLE,
    ]);
    pod.netns().ip(&[
        "route",
        "add",
        "local",
        "0.0.0.0/0",
        "dev",
        "lo",
        "table",
        ROUTE_TABLE,
    ]);
    Ok(())
}
