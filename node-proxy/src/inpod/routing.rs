//! Routing set-up inside an enrolled pod's netns, so the app's replies to the proxy's
//! source-preserving connections come back to the proxy:
//!
//! - `ip rule pref 10 fwmark 0x53a lookup 100` ahead of the `local` rule (moved to pref 100);
//! - `local 0.0.0.0/0 dev lo table 100` (and `::/0` for IPv6);
//! - `net.ipv4.tcp_fwmark_accept = 1`, so accepted sockets inherit the connection's mark;
//! - `net.ipv4.fwmark_reflect = 1` (and `net.ipv6.fwmark_reflect`), so the kernel's own answers
//!   to a marked packet carry its mark: the RST of a closed app port to the proxy's
//!   source-preserving SYN then follows the fwmark rule back to the proxy (without it the RST
//!   leaves by eth0 towards the client's address and the proxy waits out its connect timeout).
//!
//! Every step is idempotent: re-enrolling or restoring a pod re-applies it safely.

use std::io;

use futures::TryStreamExt;
use marrow_common::{
    INBOUND_ROUTE_TABLE, INBOUND_RULE_PRIORITY, LOCAL_RULE_PRIORITY, PROXY_INBOUND_MARK,
};
use rtnetlink::packet_route::route::{RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder, RuleAddRequest};

use crate::netns::PodNetns;

/// The kernel's `local` routing table id.
const LOCAL_TABLE: u32 = 255;
/// Index of `lo` in every netns.
const LOOPBACK_IFINDEX: u32 = 1;

/// Errors of the pod-netns routing set-up.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The netns could not be entered or the netlink socket opened.
    #[error("entering the pod netns for routing: {0}")]
    Netns(io::Error),
    /// A netlink request failed.
    #[error("{step}: {source}")]
    Netlink {
        /// The step, e.g. "adding fwmark rule (ipv4)".
        step: &'static str,
        /// Cause.
        source: rtnetlink::Error,
    },
    /// Writing a sysctl failed.
    #[error("setting {name} in the pod netns: {source}")]
    Sysctl {
        /// The sysctl, e.g. `net.ipv4.fwmark_reflect`.
        name: &'static str,
        /// Cause.
        source: io::Error,
    },
}

/// The sysctls set to 1 in every enrolled pod's netns, with the families they serve:
/// (name, for IPv4, for IPv6). `tcp_fwmark_accept` lives under `ipv4` but governs TCP accepts
/// of both families.
const SYSCTLS: [(&str, bool, bool); 3] = [
    ("net.ipv4.tcp_fwmark_accept", true, true),
    ("net.ipv4.fwmark_reflect", true, false),
    ("net.ipv6.fwmark_reflect", false, true),
];

/// Applies the routing of an enrolled pod for the families it has.
pub async fn apply(netns: &PodNetns, v4: bool, v6: bool) -> Result<(), RoutingError> {
    for (name, for_v4, for_v6) in SYSCTLS {
        if !((for_v4 && v4) || (for_v6 && v6)) {
            continue;
        }
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        netns
            .run(|| std::fs::write(&path, b"1"))
            .map_err(RoutingError::Netns)?
            .map_err(|source| RoutingError::Sysctl { name, source })?;
    }
    let (connection, handle, _) = netns
        .run(rtnetlink::new_connection)
        .map_err(RoutingError::Netns)?
        .map_err(RoutingError::Netns)?;
    let conn_task = tokio::spawn(connection);
    let result = async {
        if v4 {
            apply_family(&handle, IpVersion::V4).await?;
        }
        if v6 {
            apply_family(&handle, IpVersion::V6).await?;
        }
        Ok(())
    }
    .await;
    conn_task.abort();
    result
}

async fn apply_family(handle: &Handle, version: IpVersion) -> Result<(), RoutingError> {
    let v6 = matches!(version, IpVersion::V6);
    let rules: Vec<RuleMessage> = handle
        .rule()
        .get(version.clone())
        .execute()
        .try_collect()
        .await
        .map_err(|source| RoutingError::Netlink {
            step: "listing rules",
            source,
        })?;

    if !rules.iter().any(is_inbound_rule) {
        let step = "adding the fwmark rule";
        let rule = lookup_rule(handle, INBOUND_RULE_PRIORITY, INBOUND_ROUTE_TABLE);
        add_rule(rule.fw_mark(PROXY_INBOUND_MARK), v6, step).await?;
    }
    if !rules
        .iter()
        .any(|r| is_lookup(r, LOCAL_RULE_PRIORITY, LOCAL_TABLE))
    {
        let step = "adding the local rule at priority 100";
        add_rule(
            lookup_rule(handle, LOCAL_RULE_PRIORITY, LOCAL_TABLE),
            v6,
            step,
        )
        .await?;
    }
    // Only now, with the local table reachable at 100, remove it from priority 0.
    for rule in rules
        .iter()
        .filter(|r| rule_priority(r).unwrap_or(0) == 0 && rule_table(r) == LOCAL_TABLE)
    {
        handle
            .rule()
            .del(rule.clone())
            .execute()
            .await
            .map_err(|source| RoutingError::Netlink {
                step: "moving the local rule",
                source,
            })?;
    }
    let route = if v6 {
        RouteMessageBuilder::<std::net::Ipv6Addr>::new()
            .destination_prefix(std::net::Ipv6Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(INBOUND_ROUTE_TABLE)
            .output_interface(LOOPBACK_IFINDEX)
            .build()
    } else {
        RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(std::net::Ipv4Addr::UNSPECIFIED, 0)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .table_id(INBOUND_ROUTE_TABLE)
            .output_interface(LOOPBACK_IFINDEX)
            .build()
    };
    handle
        .route()
        .add(route)
        .replace()
        .execute()
        .await
        .map_err(|source| RoutingError::Netlink {
            step: "adding the local route to lo",
            source,
        })?;
    Ok(())
}

/// A request for a rule at `priority` that looks up `table`.
fn lookup_rule(handle: &Handle, priority: u32, table: u32) -> RuleAddRequest {
    handle
        .rule()
        .add()
        .priority(priority)
        .table_id(table)
        // Without an explicit action the rule is FR_ACT_UNSPEC, and the kernel answers every
        // lookup that reaches it with EINVAL.
        .action(RuleAction::ToTable)
}

async fn add_rule(rule: RuleAddRequest, v6: bool, step: &'static str) -> Result<(), RoutingError> {
    let result = if v6 {
        rule.v6().execute().await
    } else {
        rule.v4().execute().await
    };
    result.map_err(|source| RoutingError::Netlink { step, source })
}

/// Is `rule` at `priority`, looking up `table`?
fn is_lookup(rule: &RuleMessage, priority: u32, table: u32) -> bool {
    rule_priority(rule) == Some(priority)
        && rule_table(rule) == table
        && rule.header.action == RuleAction::ToTable
}

fn is_inbound_rule(rule: &RuleMessage) -> bool {
    is_lookup(rule, INBOUND_RULE_PRIORITY, INBOUND_ROUTE_TABLE)
        && rule
            .attributes
            .iter()
            .any(|a| matches!(a, RuleAttribute::FwMark(m) if *m == PROXY_INBOUND_MARK))
}

fn rule_priority(rule: &RuleMessage) -> Option<u32> {
    rule.attributes.iter().find_map(|a| match a {
        RuleAttribute::Priority(p) => Some(*p),
        _ => None,
    })
}

fn rule_table(rule: &RuleMessage) -> u32 {
    rule.attributes
        .iter()
        .find_map(|a| match a {
            RuleAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(rule.header.table))
}
